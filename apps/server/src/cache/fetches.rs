//! Fetch times for TTL garbage collection, recorded in memory and written in one batch per cache every
//! interval, so serving a narinfo never waits for a database write.
//!
//! Bounded: at most [`MAX_PENDING`] paths wait for the next flush (a few MB); a fetch of another path past that
//! is not recorded (the path keeps the fetch time recorded before, and its next fetch after the flush counts).

use gradient_domain::CacheId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Paths waiting for the next flush at most, over all caches.
pub const MAX_PENDING: usize = 100_000;

#[derive(Default)]
pub struct FetchLog {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    paths: HashMap<CacheId, HashSet<String>>,
    count: usize,
}

impl FetchLog {
    pub fn record(&self, cache: CacheId, hash_part: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Pending { paths, count } = &mut *pending;
        let paths = paths.entry(cache).or_default();
        // A path fetched again since the last flush costs nothing (and no copy of its name).
        if *count < MAX_PENDING && !paths.contains(hash_part) {
            paths.insert(hash_part.to_owned());
            *count += 1;
        }
    }

    /// Takes everything recorded since the last call.
    pub fn drain(&self) -> HashMap<CacheId, HashSet<String>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_path_once_per_batch() {
        let log = FetchLog::default();
        let cache = CacheId::new();
        log.record(cache, "a");
        log.record(cache, "a");
        log.record(cache, "b");
        let batch = log.drain();
        assert_eq!(batch[&cache].len(), 2);
        assert!(log.drain().is_empty());
    }

    #[test]
    fn holds_at_most_max_pending_paths_until_drained() {
        let log = FetchLog::default();
        let (a, b) = (CacheId::new(), CacheId::new());
        for i in 0..MAX_PENDING {
            log.record(if i % 2 == 0 { a } else { b }, &i.to_string());
        }
        log.record(a, "one more");
        log.record(a, "0");
        let batch = log.drain();
        assert_eq!(batch.values().map(HashSet::len).sum::<usize>(), MAX_PENDING);
        assert!(!batch[&a].contains("one more"));
        log.record(a, "one more");
        assert!(log.drain()[&a].contains("one more"), "recorded again after the flush");
    }
}
