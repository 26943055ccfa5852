//! An organization's activity as Server-Sent Events: `GET /api/v1/orgs/{org}/events` (an operation of the
//! OpenAPI document through `api/streams.rs`, like the other streams). At first (no `Last-Event-ID`) it sends the newest evaluations of every
//! project ([`PER_PROJECT`] each), then one `evaluation` event for every change of one, oldest change first.
//! Each event's id is the change's time in microseconds and the evaluation's id (`<micros>:<uuid>`), so a
//! reader reconnecting with `Last-Event-ID` gets only later changes. The caller is authenticated and
//! visibility decided again at every poll: a reader who may no longer see the organization gets an `end`
//! event `access_revoked` and the stream closes. `gradient-tui` refreshes its overview at each event.

use crate::api::ApiError;
use crate::state::AppState;
use gradient_domain::model::{Evaluation, Project};
use poem::web::sse::{Event, SSE};
use poem::{IntoResponse, Request, Response};
use std::collections::VecDeque;
use std::time::Duration;

/// The evaluations of each project the stream watches.
pub const PER_PROJECT: u32 = 20;
const POLL: Duration = Duration::from_secs(1);

/// Where a reader is: the time of the last change it got and that evaluation's id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    at: i64,
    id: uuid::Uuid,
}

impl Cursor {
    fn of(e: &Evaluation) -> Cursor {
        Cursor {
            at: e.updated_at.timestamp_micros(),
            id: e.id.0,
        }
    }

    fn id(&self) -> String {
        format!("{}:{}", self.at, self.id)
    }

    /// Reads an id written by [`Cursor::id`]; `None` for anything else (the stream starts from the beginning).
    fn parse(s: &str) -> Option<Cursor> {
        let (at, id) = s.trim().split_once(':')?;
        Some(Cursor {
            at: at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

fn event(project: &Project, e: &Evaluation, cursor: &Cursor) -> Event {
    let body = serde_json::json!({
        "kind": "evaluation",
        "id": e.id.0,
        "project": project.name.as_str(),
        "status": e.status.as_str(),
        "commit": e.commit,
        "updated_at": e.updated_at,
    });
    Event::message(body.to_string())
        .event_type("evaluation")
        .id(cursor.id())
}

/// The changes after `since`, oldest first, and the newest cursor.
fn changes(list: &[(Project, Evaluation)], since: Option<&Cursor>) -> (Vec<Event>, Option<Cursor>) {
    let mut newest = since.cloned();
    let mut events = Vec::new();
    let mut sorted: Vec<(Cursor, &Project, &Evaluation)> = list.iter().map(|(p, e)| (Cursor::of(e), p, e)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (cursor, p, e) in sorted {
        if since.is_none_or(|s| cursor > *s) {
            events.push(event(p, e, &cursor));
            newest = Some(cursor);
        }
    }
    (events, newest)
}

fn bearer(req: &Request) -> Option<String> {
    req.header("authorization")
        .and_then(crate::bearer_token)
        .map(str::to_owned)
}

/// The stream for `org`, or the API's JSON error when the caller may not see it (as a missing organization).
pub async fn org_events(state: &AppState, req: &Request, org: String) -> Response {
    let state = state.clone();
    let token = bearer(req);
    let first = async {
        let caller = state.app.authenticate(token.as_deref()).await?;
        state.app.org_evaluations(&caller, &org, PER_PROJECT).await
    }
    .await;
    if let Err(e) = first {
        return ApiError::from(e).into_response();
    }
    let since = req.header("last-event-id").and_then(Cursor::parse);
    let stream = futures_util::stream::unfold(
        (since, VecDeque::<Event>::new(), false),
        move |(mut since, mut pending, mut ended)| {
            let (state, token, org) = (state.clone(), token.clone(), org.clone());
            async move {
                loop {
                    if let Some(e) = pending.pop_front() {
                        return Some((e, (since, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    let seen = match state.app.authenticate(token.as_deref()).await {
                        Ok(caller) => state.app.org_evaluations(&caller, &org, PER_PROJECT).await.ok(),
                        Err(_) => None,
                    };
                    let Some(list) = seen else {
                        pending.push_back(Event::message("access_revoked").event_type("end"));
                        ended = true;
                        continue;
                    };
                    let (events, newest) = changes(&list, since.as_ref());
                    since = newest;
                    pending.extend(events);
                    if pending.is_empty() {
                        tokio::time::sleep(POLL).await;
                    }
                }
            }
        },
    );
    SSE::new(stream).keep_alive(Duration::from_secs(15)).into_response()
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn event_ids_read_back_and_order_by_time_then_id() {
        let a = Cursor {
            at: 5,
            id: uuid::Uuid::from_u128(2),
        };
        let b = Cursor {
            at: 5,
            id: uuid::Uuid::from_u128(3),
        };
        assert_eq!(Cursor::parse(&a.id()), Some(a.clone()));
        assert!(a < b);
        assert_eq!(Cursor::parse("nonsense"), None);
        assert_eq!(Cursor::parse("5:not-a-uuid"), None);
    }
}
