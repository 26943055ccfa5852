//! The live streams (Server-Sent Events) as operations of the OpenAPI document, so clients generated from it
//! know them (`text/event-stream`). The streaming itself is `crate::live`; an error before a stream starts is
//! the API's JSON error, as everywhere.

use super::{ApiError, MaybeToken, Tag};
use crate::state::AppState;
use poem::{IntoResponse, Request, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi};
use uuid::Uuid;

pub struct StreamsApi(pub AppState);

/// One event of a stream, as a client's SSE parser reads it.
#[derive(Object)]
pub struct ServerSentEvent {
    /// The event type: absent for a plain message (log text), else `evaluation`, `build` or `end`.
    pub event: Option<String>,
    /// The event's data: log text, or JSON for `evaluation` and `build` events, or the final word of `end`.
    pub data: String,
    /// Where the stream is: send it back as `Last-Event-ID` to resume after this event.
    pub id: Option<String>,
}

/// A stream of Server-Sent Events (`text/event-stream`).
pub struct EventStream(Response);

impl ApiResponse for EventStream {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Server-Sent Events until an `end` event; every event has an `id` to resume from \
                              with `Last-Event-ID`.",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "text/event-stream",
                    schema: ServerSentEvent::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        ServerSentEvent::register(registry);
    }
}

impl IntoResponse for EventStream {
    fn into_response(self) -> Response {
        self.0
    }
}

#[OpenApi(tag = "Tag::Projects")]
impl StreamsApi {
    /// An evaluation's progress: an `evaluation` event (`{"kind","status","errors"}`) or a `build` event
    /// (`{"kind","drv_path","status"}`) per change, in order; an `end` event (data: the final status, `gone`,
    /// or `access_revoked` when the reader may no longer see it) closes the stream.
    #[oai(
        path = "/evals/:id/events",
        method = "get",
        operation_id = "follow_evaluation_events"
    )]
    async fn evaluation_events(
        &self,
        _auth: MaybeToken,
        id: Path<Uuid>,
        /// The `id` of the last event seen: the stream resumes right after it.
        #[oai(name = "Last-Event-ID")]
        _last_event_id: Header<Option<String>>,
        req: &Request,
    ) -> Result<EventStream, ApiError> {
        Ok(EventStream(crate::live::evaluation_events(&self.0, req, id.0).await))
    }

    /// A build's log while it runs, then what was stored: each event is new text, its `id` the byte offset
    /// after it; an `end` event (data: the build's status) closes the stream.
    #[oai(path = "/builds/:id/log/live", method = "get", operation_id = "follow_build_log")]
    async fn build_log_live(
        &self,
        _auth: MaybeToken,
        id: Path<Uuid>,
        /// The byte offset to resume from (the `id` of the last event seen).
        #[oai(name = "Last-Event-ID")]
        _last_event_id: Header<Option<String>>,
        req: &Request,
    ) -> Result<EventStream, ApiError> {
        Ok(EventStream(crate::live::build_log_by_id(&self.0, req, id.0).await))
    }

    /// An organization's evaluations: at first the newest of each project, then an `evaluation` event
    /// (`{"kind","id","project","status","commit","updated_at"}`) per change, oldest first; an `end` event
    /// `access_revoked` closes it when the reader may no longer see the organization.
    #[oai(path = "/orgs/:org/events", method = "get", operation_id = "follow_org_events")]
    async fn org_events(
        &self,
        _auth: MaybeToken,
        org: Path<String>,
        /// The `id` of the last event seen: the stream resumes with the changes after it.
        #[oai(name = "Last-Event-ID")]
        _last_event_id: Header<Option<String>>,
        req: &Request,
    ) -> Result<EventStream, ApiError> {
        Ok(EventStream(crate::org_events::org_events(&self.0, req, org.0).await))
    }

    /// The same log stream, for the evaluation's build of a `.drv`.
    #[oai(
        path = "/evals/:id/log",
        method = "get",
        operation_id = "follow_evaluation_build_log"
    )]
    async fn evaluation_build_log(
        &self,
        _auth: MaybeToken,
        id: Path<Uuid>,
        /// The build's `.drv` path.
        drv: Query<String>,
        /// The byte offset to resume from (the `id` of the last event seen).
        #[oai(name = "Last-Event-ID")]
        _last_event_id: Header<Option<String>>,
        req: &Request,
    ) -> Result<EventStream, ApiError> {
        Ok(EventStream(crate::live::build_log(&self.0, req, id.0, drv.0).await))
    }
}
