//! A worker's push: the closure of what it built (or evaluated) goes to a Gradient cache, in dependency
//! order, skipping what the cache already holds. Three steps whatever the number of paths: the closure from
//! Nix, one question to the cache, one export stream per [`MAX_EXPORT`] missing paths.

use crate::ports::cache_client::{CacheClient, CacheClientError};
use crate::ports::nix::{MAX_EXPORT, Nix, NixError};
use crate::proto::PushTarget;
use crate::service::MAX_MISSING_QUERY;
use std::collections::{HashMap, HashSet};
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
    push_more_retrying(
        nix,
        cache,
        target,
        paths,
        &mut Default::default(),
        &Default::default(),
        wait,
    )
    .await
}

/// [`push_retrying`] for one of several pushes of the same run (the builds of one Nix run, pushed as they are
/// built): `in_cache` holds the paths known to be in the cache with their closure (what the run's earlier pushes
/// sent or found there), which are neither asked about nor sent again; those of this push join it once it
/// succeeded. A push whose paths are all known asks nothing of Nix or the cache. `may_refer` holds, for paths
/// the run built, every store path each may refer to besides itself (see [`known_closure`]): a push whose closure
/// it answers asks Nix only for the export (one Nix process instead of two); should the cache refuse that push, it
/// is made again at once with the closure from Nix.
pub async fn push_more_retrying<N, C, W, F>(
    nix: &N,
    cache: &C,
    target: &PushTarget,
    paths: &[String],
    in_cache: &mut HashSet<String>,
    may_refer: &HashMap<String, Vec<String>>,
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
    let mut known = known_closure(&paths, in_cache, may_refer);
    loop {
        let attempt = match known.take() {
            Some(closure) => {
                let sent = send_missing(nix, cache, target, &closure, &mut |_| {}).await;
                if let Err(failed) = &sent
                    && !failed.may_pass
                {
                    // Not what Nix would have said, or Nix failed: once more the usual way, asking the cache
                    // about the whole closure again (what the run believed it holds may be what was missing).
                    imported += failed.imported;
                    in_cache.clear();
                    continue;
                }
                sent.inspect(|_| in_cache.extend(closure))
            }
            None => attempt_more(nix, cache, target, &paths, in_cache, &mut |_| {}).await,
        };
        match attempt {
            Ok(n) => return Ok(imported + n),
            Err(failed) => {
                imported += failed.imported;
                match delays.next() {
                    Some(delay) if failed.may_pass => {
                        wait(*delay, &failed.error).await;
                        known = known_closure(&paths, in_cache, may_refer);
                    }
                    _ => return Err(failed.error),
                }
            }
        }
    }
}

/// The part of the closure of `paths` that `in_cache` does not hold, each path after those it may refer to,
/// when `may_refer` tells it: every path of `paths` not in `in_cache` is listed there with the paths it may
/// refer to besides itself (for an output built by Nix: its derivation's build inputs, when it is the
/// derivation's only output, see [`Nix::build_inputs`]), and each of those is in `in_cache` (which holds closures)
/// or itself one of `paths`. `None` otherwise (Nix is asked).
pub fn known_closure(
    paths: &[String],
    in_cache: &HashSet<String>,
    may_refer: &HashMap<String, Vec<String>>,
) -> Option<Vec<String>> {
    let new: HashSet<&str> = paths
        .iter()
        .map(String::as_str)
        .filter(|p| !in_cache.contains(*p))
        .collect();
    for path in &new {
        let refs = may_refer.get(*path)?;
        if !refs.iter().all(|r| in_cache.contains(r) || new.contains(r.as_str())) {
            return None;
        }
    }
    // Each path after those of `new` it may refer to (in the order given otherwise).
    let mut placed: HashSet<&str> = HashSet::new();
    let mut order = Vec::with_capacity(new.len());
    let mut rest: Vec<&str> = paths.iter().map(String::as_str).filter(|p| new.contains(p)).collect();
    rest.dedup();
    while !rest.is_empty() {
        let before = rest.len();
        rest.retain(|path| {
            let ready = may_refer[*path]
                .iter()
                .all(|r| r == path || !new.contains(r.as_str()) || placed.contains(r.as_str()));
            if ready && placed.insert(path) {
                order.push((*path).to_owned());
            }
            !ready
        });
        if rest.len() == before {
            // A cycle: not what a store holds.
            return None;
        }
    }
    Some(order)
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
    in_cache: &mut HashSet<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(p, r)| (p.to_string(), r.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_closure_is_known_when_every_possible_reference_is_in_the_cache_or_pushed_with_it() {
        // A chain a <- b <- c, a already pushed; b and c told in the wrong order.
        let may_refer = refs(&[("a", &[]), ("b", &["a"]), ("c", &["b", "src"])]);
        let in_cache: HashSet<String> = strings(&["a", "src"]).into_iter().collect();
        assert_eq!(
            known_closure(&strings(&["c", "b"]), &in_cache, &may_refer),
            Some(strings(&["b", "c"])),
            "each after what it may refer to, the cache's paths left out"
        );
        assert_eq!(
            known_closure(&strings(&["a", "b", "b"]), &in_cache, &may_refer),
            Some(strings(&["b"]))
        );
        // An input the cache is not known to hold: Nix is asked.
        let none: HashSet<String> = HashSet::new();
        assert_eq!(known_closure(&strings(&["c", "b"]), &none, &may_refer), None);
        assert_eq!(
            known_closure(&strings(&["a", "b", "c"]), &none, &may_refer),
            None,
            "src is neither pushed nor in the cache"
        );
        // A path nothing is known about (a multi-output derivation's, say): Nix is asked.
        assert_eq!(known_closure(&strings(&["b", "x"]), &in_cache, &may_refer), None);
        // Everything already in the cache: nothing to send.
        assert_eq!(known_closure(&strings(&["a"]), &in_cache, &may_refer), Some(vec![]));
        // A cycle is not what Nix builds: Nix is asked.
        let cycle = refs(&[("p", &["q"]), ("q", &["p"])]);
        assert_eq!(known_closure(&strings(&["p", "q"]), &none, &cycle), None);
    }
}
