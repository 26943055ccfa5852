//! How a worker fills a Gradient binary cache: it asks which store paths the cache lacks, then sends them as
//! one `nix-store --export` stream, instead of three requests per path. Adapter: `cache-http` (the
//! `/cache/{cache}/missing` and `/cache/{cache}/import` endpoints); its contract runs against a real server
//! in the end-to-end suite.
//!
//! Conventions every implementation MUST follow:
//! * The target names the cache (`https://host/cache/<name>`) and the credential to push with.
//! * A refusal by the cache (bad credentials, a stream it rejects) is [`CacheClientError::Refused`] with the
//!   cache's own message; a cache that cannot be reached or fails is [`CacheClientError::Unavailable`].
//! * An import is not retried: the stream is consumed once.

use super::nix::ExportStream;
use crate::proto::PushTarget;
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheClientError {
    /// The cache answered with a refusal (4xx): the status and its message.
    #[error("the cache refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The cache could not be reached, failed (5xx), or the stream to send failed.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, CacheClientError>;

pub trait CacheClient: Send + Sync + 'static {
    /// Which of `paths` the cache lacks, in the order given.
    fn missing(&self, target: &PushTarget, paths: &[String]) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Sends an export stream (each path after those it refers to, unless the cache has them) and answers how
    /// many paths the cache imported.
    fn import(&self, target: &PushTarget, export: ExportStream) -> impl Future<Output = Result<u64>> + Send;
}
