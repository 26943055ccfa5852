//! A worker's push: the closure of what it built (or evaluated) goes to a Gradient cache, in dependency
//! order, skipping what the cache already holds. Three steps whatever the number of paths: the closure from
//! Nix, one question to the cache, one export stream per [`MAX_EXPORT`] missing paths.

use crate::ports::cache_client::CacheClient;
use crate::ports::nix::{MAX_EXPORT, Nix, NixError};
use crate::proto::PushTarget;
use crate::service::MAX_MISSING_QUERY;

/// How far a push is, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The cache answered: of the closure's paths, this many are missing and will be sent.
    Missing { closure: usize, missing: usize },
    /// This many more paths were sent and imported.
    Sent(usize),
}

/// Pushes `paths` and their closures; answers how many paths the cache imported. Fails with
/// [`NixError::Push`] when Nix cannot list or export a path or the cache refuses or fails.
pub async fn push<N: Nix, C: CacheClient>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
) -> Result<u64, NixError> {
    push_reporting(nix, cache, target, paths, |_| {}).await
}

/// [`push`], telling `progress` what the cache lacks and each stream sent.
pub async fn push_reporting<N: Nix, C: CacheClient>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    mut progress: impl FnMut(Progress),
) -> Result<u64, NixError> {
    if paths.is_empty() {
        return Ok(0);
    }
    let closure = nix.requisites(paths).await?;
    let mut missing = Vec::new();
    for chunk in closure.chunks(MAX_MISSING_QUERY) {
        let lacking = cache
            .missing(target, chunk)
            .await
            .map_err(|e| NixError::Push(e.to_string()))?;
        missing.extend(lacking);
    }
    progress(Progress::Missing {
        closure: closure.len(),
        missing: missing.len(),
    });
    // The closure lists each path after those it refers to, and so does every chunk of it in turn.
    let mut imported = 0;
    for chunk in missing.chunks(MAX_EXPORT) {
        let export = nix.export(chunk).await?;
        imported += cache
            .import(target, export)
            .await
            .map_err(|e| NixError::Push(e.to_string()))?;
        progress(Progress::Sent(chunk.len()));
    }
    Ok(imported)
}
