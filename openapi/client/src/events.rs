//! The live streams as types: an evaluation's progress (`GET /evals/{id}/events`), a build's log
//! (`GET /builds/{id}/log/live`) and an organization's evaluations (`GET /orgs/{org}/events`), each opened by
//! its generated operation and followed across reconnections with `Last-Event-ID`.

use crate::sse::{self, Event};
use crate::{Client, Failure};
use serde::Deserialize;

/// One change of an evaluation or one of its builds, as `GET /evals/{id}/events` sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EvaluationChange {
    Evaluation {
        status: String,
        #[serde(default)]
        errors: Vec<AttributeError>,
    },
    Build {
        drv_path: String,
        status: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttributeError {
    pub attribute: String,
    pub message: String,
}

/// What an evaluation's stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvaluationEvent {
    Change(EvaluationChange),
    /// The evaluation ended with this status (`Completed`, `Failed`, `Aborted`), or `gone`.
    End(String),
}

impl EvaluationEvent {
    fn from_sse(e: &Event) -> Option<Self> {
        match e.event.as_str() {
            "end" => Some(Self::End(e.data.clone())),
            "evaluation" | "build" => serde_json::from_str(&e.data).ok().map(Self::Change),
            _ => None,
        }
    }
}

/// What a build's log stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// More of the log.
    Text(String),
    /// The build ended with this status, or `gone` / `access_revoked`.
    End(String),
}

/// Follows an evaluation's progress until it ends; `on_event` sees every change.
pub async fn follow_evaluation(
    client: &Client,
    evaluation: uuid::Uuid,
    mut on_event: impl FnMut(EvaluationEvent),
) -> Result<(), Failure> {
    let open =
        |last: Option<String>| async move { client.follow_evaluation_events(&evaluation, last.as_deref()).await };
    sse::follow(open, 30, |e| {
        if let Some(event) = EvaluationEvent::from_sse(e) {
            on_event(event);
        }
    })
    .await
}

/// Follows a build's log until the build ends; `on_event` gets the text as it comes.
pub async fn follow_log(client: &Client, build: uuid::Uuid, mut on_event: impl FnMut(LogEvent)) -> Result<(), Failure> {
    let open = |last: Option<String>| async move { client.follow_build_log(&build, last.as_deref()).await };
    sse::follow(open, 30, |e| {
        on_event(match e.event.as_str() {
            "end" => LogEvent::End(e.data.clone()),
            _ => LogEvent::Text(e.data.clone()),
        })
    })
    .await
}

/// A change of one of an organization's evaluations, as `GET /orgs/{org}/events` sends it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OrgChange {
    pub id: uuid::Uuid,
    pub project: String,
    pub status: String,
    pub commit: String,
}

/// Follows an organization's evaluations (first the newest of each project, then every change) until the
/// reader may no longer see it; reconnects with the last id after a dropped connection.
pub async fn follow_org(client: &Client, org: &str, mut on_change: impl FnMut(OrgChange)) -> Result<(), Failure> {
    let open = |last: Option<String>| async move { client.follow_org_events(org, last.as_deref()).await };
    sse::follow(open, u32::MAX, |e| {
        if e.event == "evaluation"
            && let Ok(change) = serde_json::from_str(&e.data)
        {
            on_change(change);
        }
    })
    .await
}
