//! A worker's push: the closure of what it built (or evaluated) goes to a Gradient cache, in dependency
//! order, skipping what the cache already holds. Three steps whatever the number of paths: the closure from
//! Nix, one question to the cache, one export stream per [`MAX_EXPORT`] missing paths.

use crate::ports::cache_client::{CacheClient, CacheClientError};
use crate::ports::nix::{MAX_EXPORT, Nix, NixError};
use crate::proto::PushTarget;
use crate::service::MAX_MISSING_QUERY;
use std::future::Future;
use std::time::Duration;

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
    attempt(nix, cache, target, paths, &mut progress)
        .await
        .map_err(|failed| failed.error)
}

/// How long a worker waits before each new attempt of a push that failed for a reason that may pass (the
/// cache unreachable, failing, its storage unavailable or full, its database restarting: anything but a
/// refusal): seven more attempts over about two and a half minutes, then the push fails. A new attempt asks again what the cache lacks, so it sends only
/// what earlier attempts did not get in, and builds nothing again.
pub const PUSH_RETRY_DELAYS: [Duration; 7] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(30),
    Duration::from_secs(30),
    Duration::from_secs(30),
];

/// [`push`], tried again after each of [`PUSH_RETRY_DELAYS`] while it fails for a reason that may pass.
/// `wait(delay, error)` is called before each new attempt and waits `delay` (the caller's timer: the domain
/// has none), telling whoever watches why.
pub async fn push_retrying<N, C, W, F>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    wait: W,
) -> Result<u64, NixError>
where
    N: Nix,
    C: CacheClient,
    W: FnMut(Duration, &NixError) -> F,
    F: Future<Output = ()>,
{
    push_more_retrying(nix, cache, target, paths, &mut Default::default(), wait).await
}

/// [`push_retrying`] for one of several pushes of the same run (the builds of one Nix run, pushed as they are
/// built): `in_cache` holds the paths known to be in the cache with their closure (what the run's earlier pushes
/// sent or found there), which are neither asked about nor sent again; those of this push join it once it
/// succeeded. A push whose paths are all known asks nothing of Nix or the cache.
pub async fn push_more_retrying<N, C, W, F>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    in_cache: &mut std::collections::HashSet<String>,
    mut wait: W,
) -> Result<u64, NixError>
where
    N: Nix,
    C: CacheClient,
    W: FnMut(Duration, &NixError) -> F,
    F: Future<Output = ()>,
{
    let paths: Vec<String> = paths.iter().filter(|p| !in_cache.contains(*p)).cloned().collect();
    let mut delays = PUSH_RETRY_DELAYS.iter();
    let mut imported = 0;
    loop {
        match attempt_more(nix, cache, target, &paths, in_cache, &mut |_| {}).await {
            Ok(n) => return Ok(imported + n),
            Err(failed) => {
                imported += failed.imported;
                match delays.next() {
                    Some(delay) if failed.may_pass => wait(*delay, &failed.error).await,
                    _ => return Err(failed.error),
                }
            }
        }
    }
}

/// Why one attempt of a push failed, and what it got in before.
struct Failed {
    error: NixError,
    /// The cache could not be reached or failed (not a refusal, not Nix): trying again later may work.
    may_pass: bool,
    imported: u64,
}

fn cache_failed(e: CacheClientError, imported: u64) -> Failed {
    Failed {
        may_pass: matches!(e, CacheClientError::Unavailable(_)),
        error: NixError::Push(e.to_string()),
        imported,
    }
}

fn nix_failed(error: NixError, imported: u64) -> Failed {
    Failed {
        error,
        may_pass: false,
        imported,
    }
}

async fn attempt<N: Nix, C: CacheClient>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    progress: &mut impl FnMut(Progress),
) -> Result<u64, Failed> {
    attempt_more(nix, cache, target, paths, &mut Default::default(), progress).await
}

/// One attempt; the closure's paths in `in_cache` are left out, and the whole closure joins it on success.
async fn attempt_more<N: Nix, C: CacheClient>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    in_cache: &mut std::collections::HashSet<String>,
    progress: &mut impl FnMut(Progress),
) -> Result<u64, Failed> {
    if paths.is_empty() {
        return Ok(0);
    }
    let closure = nix.requisites(paths).await.map_err(|e| nix_failed(e, 0))?;
    let unknown: Vec<String> = closure.iter().filter(|p| !in_cache.contains(*p)).cloned().collect();
    let imported = send_missing(nix, cache, target, &unknown, progress).await?;
    in_cache.extend(closure);
    Ok(imported)
}

/// Asks the cache which of `closure` (in dependency order) it lacks and sends those.
async fn send_missing<N: Nix, C: CacheClient>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    closure: &[String],
    progress: &mut impl FnMut(Progress),
) -> Result<u64, Failed> {
    let mut missing = Vec::new();
    for chunk in closure.chunks(MAX_MISSING_QUERY) {
        let lacking = cache.missing(target, chunk).await.map_err(|e| cache_failed(e, 0))?;
        missing.extend(lacking);
    }
    progress(Progress::Missing {
        closure: closure.len(),
        missing: missing.len(),
    });
    // The closure lists each path after those it refers to, and so does every chunk of it in turn.
    let mut imported = 0;
    for chunk in missing.chunks(MAX_EXPORT) {
        let export = nix.export(chunk).await.map_err(|e| nix_failed(e, imported))?;
        imported += cache
            .import(target, export)
            .await
            .map_err(|e| cache_failed(e, imported))?;
        progress(Progress::Sent(chunk.len()));
    }
    Ok(imported)
}
