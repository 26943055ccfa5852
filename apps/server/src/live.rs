//! A build's log as Server-Sent Events while it runs: `GET /api/v1/evals/{id}/log?drv=<.drv path>`, or by the
//! build's id, `GET /api/v1/builds/{id}/log/live`.
//! Each event carries the new text and, as its id, the byte offset after it, so a client that reconnects with
//! `Last-Event-ID` resumes where it left off. When the build has ended the stored log is sent (to a client
//! that saw none of it) and an `end` event closes the stream.
//!
//! Every stream checks every [`RECHECK`] that its viewer may still see it (the token still authenticates, the
//! organization is still visible to them: a member removed, a key deleted, a session ended, an organization
//! made private): when not, an `end` event with `access_revoked` closes it. Errors before the stream starts
//! are the API's JSON error body.

use crate::api::ApiError;
use crate::state::AppState;
use futures_util::StreamExt;
use gradient_domain::service::{Caller, ServiceError};
use gradient_domain::{BuildId, EvaluationId};
use poem::web::sse::{Event, SSE};
use poem::{IntoResponse, Request, Response};
use std::time::Duration;

struct LogQuery {
    drv: String,
}

const POLL: Duration = Duration::from_millis(250);

/// How often a stream checks that its viewer may still see what it streams.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The request's bearer token, if any.
fn bearer(req: &Request) -> Option<String> {
    req.header("authorization")
        .and_then(crate::bearer_token)
        .map(str::to_owned)
}

/// Who calls, from the request's bearer token (none: anonymous).
async fn caller(state: &AppState, req: &Request) -> Result<Caller, ServiceError> {
    state.app.authenticate(bearer(req).as_deref()).await
}

/// What a stream shows, for the access recheck.
#[derive(Clone, Copy, Debug)]
enum Watched {
    Evaluation(EvaluationId),
    Build(BuildId),
}

/// Whether the bearer of `token` may still see `watched`: the token is authenticated again (a deleted key or
/// an ended session fails) and the domain decides visibility again (a removed member or an organization made
/// private fails). A failure to decide counts as no.
async fn still_allowed(state: &AppState, token: Option<&str>, watched: Watched) -> bool {
    let Ok(caller) = state.app.authenticate(token).await else {
        return false;
    };
    match watched {
        Watched::Evaluation(id) => state.app.evaluation_for(&caller, id).await.is_ok(),
        Watched::Build(id) => state.app.build_for(&caller, id).await.is_ok(),
    }
}

/// `events`, ended by an `end` event `access_revoked` at the first [`RECHECK`] that finds the viewer may no
/// longer see `watched`, even while `events` is waiting for something to send.
fn guarded<S>(
    state: AppState,
    token: Option<String>,
    watched: Watched,
    events: S,
) -> impl futures_util::Stream<Item = Event> + Send + 'static
where
    S: futures_util::Stream<Item = Event> + Send + 'static,
{
    let first = tokio::time::Instant::now() + RECHECK;
    futures_util::stream::unfold((Box::pin(events), Some(first)), move |(mut events, next)| {
        let (state, token) = (state.clone(), token.clone());
        async move {
            let mut next = next?;
            loop {
                tokio::select! {
                    // Dropping a pending `next()` keeps the stream's own state: nothing is lost.
                    event = events.next() => return event.map(|e| (e, (events, Some(next)))),
                    () = tokio::time::sleep_until(next) => {
                        if !still_allowed(&state, token.as_deref(), watched).await {
                            let end = Event::message("access_revoked").event_type("end");
                            return Some((end, (events, None)));
                        }
                        next = tokio::time::Instant::now() + RECHECK;
                    }
                }
            }
        }
    })
}

pub async fn build_log(state: &AppState, req: &Request, id: uuid::Uuid, drv: String) -> Response {
    let q = LogQuery { drv };
    let found = async {
        let caller = caller(state, req).await?;
        state.app.evaluation_for(&caller, EvaluationId(id)).await
    }
    .await;
    let (_, builds) = match found {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(build) = builds.into_iter().find(|b| b.drv_path == q.drv) else {
        let e = ServiceError::NotFound(format!("the evaluation has no build of {}", q.drv));
        return ApiError::from(e).into_response();
    };
    stream_log(state, req, Watched::Evaluation(EvaluationId(id)), build.org_id, q.drv)
}

/// The same stream for a build by id: `GET /api/v1/builds/{id}/log/live`.
pub async fn build_log_by_id(state: &AppState, req: &Request, id: uuid::Uuid) -> Response {
    let found = async {
        let caller = caller(state, req).await?;
        state.app.build_for(&caller, gradient_domain::BuildId(id)).await
    }
    .await;
    match found {
        Ok((build, _)) => stream_log(state, req, Watched::Build(BuildId(id)), build.org_id, build.drv_path),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A build's log as events, from `Last-Event-ID` on: live while it runs, then the stored log (to a reader
/// that saw none of it) and an `end` event with its status.
fn stream_log(state: &AppState, req: &Request, watched: Watched, org: gradient_domain::OrgId, drv: String) -> Response {
    let offset: usize = req
        .header("last-event-id")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let (guard_state, token) = (state.clone(), bearer(req));
    let state = state.clone();
    // (offset, finished) carried from one event to the next.
    let stream = futures_util::stream::unfold((offset, false), move |(offset, finished)| {
        let (state, drv) = (state.clone(), drv.clone());
        async move {
            if finished {
                return None;
            }
            loop {
                if let Some((text, end)) = state.fleet.logs.read(org, &drv, offset) {
                    if !text.is_empty() {
                        return Some((Event::message(text).id(end.to_string()), (end, false)));
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                match state.app.build_now(org, &drv).await {
                    Ok(Some(b)) if b.status.is_terminal() => {
                        let (stored, omitted) = match state.app.stored_log(&b).await {
                            Ok(Some(log)) => (log.text, log.omitted),
                            _ => (String::new(), 0),
                        };
                        // What the reader has not seen yet: all of it, or the end the live log had no time
                        // to show (a stored log that lost nothing is the live log's final state, offsets
                        // alike).
                        let rest = match offset {
                            0 => stored.as_str(),
                            _ if omitted == 0 => stored.get(offset..).unwrap_or_default(),
                            _ => "",
                        };
                        if !rest.is_empty() {
                            return Some((
                                Event::message(rest.to_owned()).id(stored.len().to_string()),
                                (stored.len(), false),
                            ));
                        }
                        return Some((Event::message(b.status.as_str()).event_type("end"), (offset, true)));
                    }
                    Ok(Some(_)) => tokio::time::sleep(POLL).await,
                    Ok(None) | Err(_) => return Some((Event::message("gone").event_type("end"), (offset, true))),
                }
            }
        }
    });
    let stream = guarded(guard_state, token, watched, stream);
    SSE::new(stream).keep_alive(Duration::from_secs(15)).into_response()
}

/// Where a reader of an evaluation's events is: the change time (microseconds since the epoch) and the key
/// (empty for the evaluation itself, the `.drv` path for a build) of the last change it got. Changes are sent
/// in (time, key) order, so the ids of one stream are unique and strictly increasing, and a reader resuming
/// with `Last-Event-ID` gets exactly the changes after that one, even when many changed at the same time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    at: i64,
    key: String,
}

impl Cursor {
    /// The event id: `<at>` for the evaluation, `<at><drv path>` for a build (`.drv` paths start with `/`).
    fn id(&self) -> String {
        format!("{}{}", self.at, self.key)
    }

    /// Reads an id written by [`Cursor::id`]; `None` for anything else (the stream starts from the beginning).
    fn parse(id: &str) -> Option<Cursor> {
        let id = id.trim();
        let (at, key) = id.find('/').map_or((id, ""), |i| id.split_at(i));
        Some(Cursor {
            at: at.parse().ok()?,
            key: key.to_owned(),
        })
    }
}

/// The events for what changed after `after` (everything when `None`), in id order.
fn evaluation_changes(
    e: &gradient_domain::model::Evaluation,
    builds: &[gradient_domain::model::Build],
    after: Option<&Cursor>,
) -> Vec<(Cursor, Event)> {
    let mut changes: Vec<(Cursor, Event)> = Vec::new();
    let evaluation = Cursor {
        at: e.updated_at.timestamp_micros(),
        key: String::new(),
    };
    if after.is_none_or(|a| evaluation > *a) {
        let body = serde_json::json!({"kind": "evaluation", "status": e.status.as_str(),
            "errors": e.errors.iter().map(|x| serde_json::json!({"attribute": x.attribute, "message": x.message})).collect::<Vec<_>>()});
        changes.push((evaluation, Event::message(body.to_string()).event_type("evaluation")));
    }
    for b in builds {
        let at = Cursor {
            at: b.updated_at.timestamp_micros(),
            key: b.drv_path.clone(),
        };
        if after.is_none_or(|a| at > *a) {
            let body = serde_json::json!({"kind": "build", "drv_path": b.drv_path, "status": b.status.as_str()});
            changes.push((at, Event::message(body.to_string()).event_type("build")));
        }
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    changes
        .into_iter()
        .map(|(cursor, event)| {
            let id = cursor.id();
            (cursor, event.id(id))
        })
        .collect()
}

/// An evaluation's progress as Server-Sent Events: `GET /api/v1/evals/{id}/events`. Each event is the JSON of
/// the evaluation or of one of its builds that changed; its id is the change's time (microseconds since the
/// epoch), followed for a build by its `.drv` path ([`Cursor`]): unique and increasing within the stream, so
/// `Last-Event-ID` resumes right after the last change seen. The stream ends with an `end` event once the
/// evaluation has ended.
pub async fn evaluation_events(state: &AppState, req: &Request, id: uuid::Uuid) -> Response {
    let caller = match caller(state, req).await {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(e) = state.app.evaluation_for(&caller, EvaluationId(id)).await {
        return ApiError::from(e).into_response();
    }
    let since: Option<Cursor> = req.header("last-event-id").and_then(Cursor::parse);
    let (guard_state, token) = (state.clone(), bearer(req));
    let state = state.clone();
    let stream = futures_util::stream::unfold(
        (since, std::collections::VecDeque::<Event>::new(), false),
        move |(since, mut pending, finished)| {
            let (state, caller) = (state.clone(), caller.clone());
            async move {
                loop {
                    if let Some(event) = pending.pop_front() {
                        return Some((event, (since, pending, finished)));
                    }
                    if finished {
                        return None;
                    }
                    let Ok((e, builds)) = state.app.evaluation_for(&caller, EvaluationId(id)).await else {
                        return Some((Event::message("gone").event_type("end"), (since, pending, true)));
                    };
                    let changes = evaluation_changes(&e, &builds, since.as_ref());
                    let newest = changes.last().map(|(c, _)| c.clone()).or_else(|| since.clone());
                    pending = changes.into_iter().map(|(_, ev)| ev).collect();
                    let ended = e.status.is_terminal() && builds.iter().all(|b| b.status.is_terminal());
                    if ended {
                        pending.push_back(Event::message(e.status.as_str()).event_type("end"));
                    }
                    let Some(event) = pending.pop_front() else {
                        tokio::time::sleep(POLL).await;
                        continue;
                    };
                    return Some((event, (newest, pending, ended)));
                }
            }
        },
    );
    let stream = guarded(guard_state, token, Watched::Evaluation(EvaluationId(id)), stream);
    SSE::new(stream).keep_alive(Duration::from_secs(15)).into_response()
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn event_ids_are_read_back_and_ordered_by_time_then_key() {
        let evaluation = Cursor {
            at: 17,
            key: String::new(),
        };
        let build = Cursor {
            at: 17,
            key: "/nix/store/aaaa-a.drv".into(),
        };
        let later = Cursor {
            at: 18,
            key: String::new(),
        };
        for c in [&evaluation, &build, &later] {
            assert_eq!(Cursor::parse(&c.id()).as_ref(), Some(c));
        }
        assert_eq!(build.id(), "17/nix/store/aaaa-a.drv");
        assert!(evaluation < build && build < later);
        assert_eq!(Cursor::parse("nonsense"), None);
        assert_eq!(Cursor::parse(""), None);
    }
}
