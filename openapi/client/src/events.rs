//! The live streams as types: an evaluation's progress (`GET /evals/{id}/events`) and a build's log
//! (`GET /builds/{id}/log/live`), each followed across reconnections with `Last-Event-ID`.

use crate::sse::{self, Event};
use crate::{Client, ClientInfo, Failure};
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
    let url = format!("{}/evals/{evaluation}/events", client.baseurl());
    sse::follow(client.client(), &url, None, 30, |e| {
        if let Some(event) = EvaluationEvent::from_sse(e) {
            on_event(event);
        }
    })
    .await
    .map_err(Failure::from)
}

/// Follows a build's log until the build ends; `on_event` gets the text as it comes.
pub async fn follow_log(client: &Client, build: uuid::Uuid, mut on_event: impl FnMut(LogEvent)) -> Result<(), Failure> {
    let url = format!("{}/builds/{build}/log/live", client.baseurl());
    sse::follow(client.client(), &url, None, 30, |e| {
        on_event(match e.event.as_str() {
            "end" => LogEvent::End(e.data.clone()),
            _ => LogEvent::Text(e.data.clone()),
        })
    })
    .await
    .map_err(Failure::from)
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
    let url = format!("{}/orgs/{org}/events", client.baseurl());
    sse::follow(client.client(), &url, None, u32::MAX, |e| {
        if e.event == "evaluation"
            && let Ok(change) = serde_json::from_str(&e.data)
        {
            on_change(change);
        }
    })
    .await
    .map_err(Failure::from)
}
