//! The paths each cache served last, for its page (`GET /caches/{cache}/stats`): in memory only, bounded, and
//! cheap on the narinfo path (one short lock, no write to the database).
//!
//! Bounds: [`RECENT_HITS`] distinct paths per cache (a path served again moves to the front), for at most
//! [`TRACKED_CACHES`] caches (a new cache beyond that evicts the one whose newest hit is the oldest), so at most
//! 1,024 × 20 store paths (a few MB) whatever the traffic. Each server process keeps its own; a restart starts
//! empty.

use crate::CacheId;
use crate::model::Timestamp;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Distinct paths remembered per cache.
pub const RECENT_HITS: usize = 20;
/// Caches whose hits are remembered at once.
pub const TRACKED_CACHES: usize = 1024;

/// A store path a cache served (its narinfo answered), and when last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheHit {
    pub store_path: String,
    pub at: Timestamp,
}

#[derive(Default)]
pub struct RecentHits {
    caches: Mutex<HashMap<CacheId, VecDeque<CacheHit>>>,
}

impl RecentHits {
    pub fn record(&self, cache: CacheId, store_path: &str, at: Timestamp) {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if !caches.contains_key(&cache) && caches.len() >= TRACKED_CACHES {
            let stalest = caches
                .iter()
                .min_by_key(|(_, hits)| hits.front().map(|h| h.at))
                .map(|(id, _)| *id);
            if let Some(id) = stalest {
                caches.remove(&id);
            }
        }
        let hits = caches.entry(cache).or_default();
        // The entry moved to the front is the path's own, or the oldest one's reused: no allocation once full.
        let hit = match hits.iter().position(|h| h.store_path == store_path) {
            Some(i) => hits.remove(i),
            None if hits.len() >= RECENT_HITS => hits.pop_back().map(|mut oldest| {
                oldest.store_path.clear();
                oldest.store_path.push_str(store_path);
                oldest
            }),
            None => None,
        };
        let mut hit = hit.unwrap_or_else(|| CacheHit {
            store_path: store_path.to_owned(),
            at,
        });
        hit.at = at;
        hits.push_front(hit);
        hits.truncate(RECENT_HITS);
    }

    /// The cache's hits, newest first.
    pub fn of(&self, cache: CacheId) -> Vec<CacheHit> {
        let caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        caches
            .get(&cache)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(secs: i64) -> Timestamp {
        chrono::DateTime::UNIX_EPOCH + TimeDelta::seconds(secs)
    }

    #[test]
    fn newest_first_each_path_once_and_bounded_per_cache() {
        let hits = RecentHits::default();
        let cache = CacheId::new();
        for i in 0..30 {
            hits.record(cache, &format!("/nix/store/p{i}"), t(i));
        }
        hits.record(cache, "/nix/store/p15", t(100));
        let got = hits.of(cache);
        assert_eq!(got.len(), RECENT_HITS);
        assert_eq!(
            got[0],
            CacheHit {
                store_path: "/nix/store/p15".into(),
                at: t(100)
            }
        );
        assert_eq!(got[1].store_path, "/nix/store/p29");
        assert_eq!(
            got.iter().filter(|h| h.store_path == "/nix/store/p15").count(),
            1,
            "a path is listed once"
        );
        assert!(hits.of(CacheId::new()).is_empty(), "another cache has none");
    }

    #[test]
    fn the_stalest_cache_is_forgotten_beyond_the_bound() {
        let hits = RecentHits::default();
        let first = CacheId::new();
        hits.record(first, "/nix/store/old", t(0));
        for i in 1..TRACKED_CACHES as i64 {
            hits.record(CacheId::new(), "/nix/store/x", t(i));
        }
        hits.record(CacheId::new(), "/nix/store/new", t(5000));
        assert!(hits.of(first).is_empty(), "the cache hit longest ago was forgotten");
        assert_eq!(hits.caches.lock().unwrap().len(), TRACKED_CACHES);
    }
}
