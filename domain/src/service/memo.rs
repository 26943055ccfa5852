//! What the binary cache serves most is the same few answers many times: the cache's record and signed
//! narinfos. They are kept in memory here and dropped whenever this process changes what they derive
//! from, so a hot narinfo costs no database query and no signature.

use crate::CacheId;
use crate::model::Cache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Past this many narinfos the memo starts over rather than tracking recency: cheap, and bounded.
const MAX_NARINFOS: usize = 100_000;

/// A signed narinfo, or `None` for a path the cache does not hold.
type Narinfo = Option<Arc<str>>;

#[derive(Default)]
pub struct ServeMemo {
    caches: Mutex<HashMap<String, Cache>>,
    /// `None` remembers that the cache does not hold the path (Nix asks for many missing paths).
    narinfos: Mutex<HashMap<(CacheId, String), Narinfo>>,
}

impl ServeMemo {
    pub fn cache(&self, name: &str) -> Option<Cache> {
        self.caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn remember_cache(&self, cache: &Cache) {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if caches.len() >= 10_000 {
            caches.clear();
        }
        caches.insert(cache.name.to_string(), cache.clone());
    }

    /// Forgets a cache and everything served from it (after it changed or was deleted).
    pub fn forget_cache(&self, id: CacheId) {
        self.caches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, c| c.id != id);
        self.narinfos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(c, _), _| *c != id);
    }

    pub fn narinfo(&self, cache: CacheId, hash_part: &str) -> Option<Option<Arc<str>>> {
        self.narinfos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(cache, hash_part.to_owned()))
            .cloned()
    }

    pub fn remember_narinfo(&self, cache: CacheId, hash_part: &str, text: Option<Arc<str>>) {
        let mut narinfos = self.narinfos.lock().unwrap_or_else(PoisonError::into_inner);
        if narinfos.len() >= MAX_NARINFOS {
            narinfos.clear();
        }
        narinfos.insert((cache, hash_part.to_owned()), text);
    }

    pub fn forget_narinfo(&self, cache: CacheId, hash_part: &str) {
        self.narinfos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(cache, hash_part.to_owned()));
    }
}
