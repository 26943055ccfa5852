//! Gradient's HTTP API as Rust. The operations and types are generated from `openapi/gradient.json` by
//! progenitor (see `build.rs`): an API change that the document records and a caller does not follow fails
//! to compile. By hand here is only what the document cannot say: how to connect with a credential, what a
//! failure means for a person (the error body, an unreachable server), and the typed Server-Sent Event
//! streams (`events`).

pub mod events;
pub mod sse;

#[allow(
    clippy::all,
    clippy::unwrap_used,
    unused_imports,
    irrefutable_let_patterns,
    mismatched_lifetime_syntaxes
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}
pub use generated::*;
pub use progenitor_client::ClientInfo;

use std::time::Duration;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the server at `server` (`https://gradient.example.com`), authenticated with `token` (an API
/// key or a session token) when given.
pub fn connect(server: &str, token: Option<&str>) -> Result<Client, Failure> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Failure::Usage("the API key contains characters a header cannot carry".into()))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .default_headers(headers)
        .user_agent(concat!("gradient-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    Ok(Client::new_with_client(&api_base(server), http))
}

/// Where the API lives under a server's address.
pub fn api_base(server: &str) -> String {
    format!("{}/api/v1", server.trim_end_matches('/'))
}

/// A binary cache's address as Nix uses it (`substituters`), under a server's address.
pub fn cache_url(server: &str, cache: &str) -> String {
    format!("{}/cache/{cache}", server.trim_end_matches('/'))
}

/// What went wrong with a request, sorted by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The server could not be reached (connection refused, DNS, TLS, timeout).
    #[error("could not reach the server ({0})")]
    Unreachable(String),
    /// The server answered with its error body.
    #[error("{message}")]
    Refused { status: u16, code: String, message: String },
    /// The server answered something the document does not describe.
    #[error("the server answered unexpectedly ({0})")]
    Unexpected(String),
    /// The caller asked for something impossible before any request was sent.
    #[error("{0}")]
    Usage(String),
}

impl From<progenitor_client::Error<types::ErrorBody>> for Failure {
    fn from(e: progenitor_client::Error<types::ErrorBody>) -> Self {
        use progenitor_client::Error as E;
        match e {
            E::ErrorResponse(r) => Failure::Refused {
                status: r.status().as_u16(),
                code: r.code.clone(),
                message: r.message.clone(),
            },
            E::CommunicationError(e) => Failure::Unreachable(sentence_of(&e)),
            E::InvalidRequest(m) => Failure::Usage(m),
            other => Failure::Unexpected(other.to_string()),
        }
    }
}

/// A reqwest error with its innermost cause, which names what actually failed (e.g. "Connection refused").
fn sentence_of(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
