//! One error shape for the whole API, whatever failed: a use case, request parsing, a size limit, routing.

use gradient_domain::service::ServiceError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// `{"error": true, "message": "<what went wrong>", "code": "<stable_snake_case>"}`
#[derive(Object, Debug)]
pub struct ErrorBody {
    /// Always `true`.
    pub error: bool,
    /// What went wrong, for people.
    pub message: String,
    /// What went wrong, for programs: stable across releases.
    pub code: String,
}

#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed (e.g. invalid JSON or a missing field).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid credentials.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The caller may not do this.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// Absent, or not visible to the caller.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The path does not answer this method; `Allow` lists the methods it does.
    #[oai(status = 405)]
    MethodNotAllowed(Json<ErrorBody>, #[oai(header = "Allow")] String),
    /// Collides with existing state (e.g. the name is taken).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than `maxRequestSize`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not `application/json` (or has no `Content-Type`).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// A value is not acceptable (e.g. an invalid name).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The server failed; details are in its log.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database cannot be reached now (`unavailable`): the same request may work in a moment.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

pub(crate) fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: true,
        message: message.into(),
        code: code.to_owned(),
    })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(body(code, message))
    }

    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::Unprocessable(body(code, message))
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let b = body(e.code(), e.to_string());
        match e {
            ServiceError::Unauthenticated(_) | ServiceError::InvalidCredentials => Self::Unauthorized(b),
            ServiceError::Forbidden(_) | ServiceError::RegistrationDisabled | ServiceError::EmailNotVerified => {
                Self::Forbidden(b)
            }
            ServiceError::NotFound(_) => Self::NotFound(b),
            ServiceError::Conflict { .. } => Self::Conflict(b),
            ServiceError::Invalid { .. } => Self::Unprocessable(b),
            // No operation of the API reaches the NAR store (only `/cache` does, with its own answers): were
            // one to, its failure is this server's.
            // An outage is the operator's to see in the log (and in `/api/v1/health`), not an error report each.
            ServiceError::Unavailable(detail) => {
                tracing::warn!(target: "gradient::web", "the database is unavailable: {detail}");
                Self::Unavailable(b)
            }
            ServiceError::Internal(detail)
            | ServiceError::StorageUnavailable(detail)
            | ServiceError::StorageFull(detail) => {
                tracing::error!(target: "gradient::web", "internal error: {detail}");
                crate::reporting::internal_error("api", &detail);
                Self::Internal(b)
            }
        }
    }
}

/// 429, documented only on the operations that are rate limited.
#[derive(ApiResponse, Debug)]
pub enum TooManyRequests {
    /// Too many attempts: try again after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(
        Json<ErrorBody>,
        /// Seconds to wait before trying again.
        #[oai(header = "Retry-After")]
        u64,
    ),
}

/// The errors of a rate-limited operation (login, registration): [`ApiError`]'s and 429 `rate_limited`.
#[derive(Debug)]
pub enum LimitedError {
    Api(ApiError),
    TooMany(TooManyRequests),
}

impl LimitedError {
    /// 429 `rate_limited`, with `Retry-After`.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let secs = crate::limits::retry_after_secs(wait);
        Self::TooMany(TooManyRequests::TooManyRequests(
            body("rate_limited", format!("too many attempts; try again in {secs} s")),
            secs,
        ))
    }
}

impl poem_openapi::ApiResponse for LimitedError {
    fn meta() -> poem_openapi::registry::MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses.extend(TooManyRequests::meta().responses);
        meta
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        ApiError::register(registry);
        TooManyRequests::register(registry);
    }
}

impl IntoResponse for LimitedError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::TooMany(e) => e.into_response(),
        }
    }
}

impl From<LimitedError> for poem::Error {
    fn from(e: LimitedError) -> Self {
        poem::Error::from_response(e.into_response())
    }
}

impl From<ApiError> for LimitedError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<ServiceError> for LimitedError {
    fn from(e: ServiceError) -> Self {
        Self::Api(e.into())
    }
}

/// Turns any error poem produced outside a handler (unparseable JSON, missing credentials, unknown route,
/// body too large) into the API's error body, keeping its status.
pub fn error_response(err: poem::Error) -> Response {
    let status = err.status();
    let text = err.to_string();
    // A JSON body that does not parse, lacks a required field or has a value of the wrong type.
    let json_body = err.is::<poem_openapi::error::ParseRequestPayloadError>();
    let resp = err.into_response();
    // Errors a handler returned (`ApiError`) already carry the JSON body.
    if resp.content_type().is_some_and(|ct| ct.starts_with("application/json")) {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::BAD_REQUEST if json_body => ("invalid_json", text),
        StatusCode::BAD_REQUEST => ("bad_request", text),
        StatusCode::UNAUTHORIZED => ("unauthenticated", "log in or present an API key".to_owned()),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this endpoint".to_owned()),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "send the body as application/json".to_owned())
        }
        s if s.is_server_error() => {
            tracing::error!(target: "gradient::web", "request failed: {text}");
            ("internal_error", "internal error".to_owned())
        }
        _ => ("bad_request", text),
    };
    let json = serde_json::json!({ "error": true, "message": message, "code": code });
    poem::web::Json(json).with_status(status).into_response()
}
