//! Fetch times for TTL garbage collection, recorded in memory and written in one batch per cache every
//! interval, so serving a narinfo never waits for a database write.

use gradient_domain::CacheId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct FetchLog {
    pending: Mutex<HashMap<CacheId, HashSet<String>>>,
}

impl FetchLog {
    pub fn record(&self, cache: CacheId, hash_part: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.entry(cache).or_default().insert(hash_part.to_owned());
    }

    /// Takes everything recorded since the last call.
    pub fn drain(&self) -> HashMap<CacheId, HashSet<String>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
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
}
