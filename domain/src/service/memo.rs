//! What the binary cache serves most is the same few answers many times: the cache's record and signed
//! narinfos. They are kept in memory here and dropped whenever this process changes what they derive
//! from, so a hot narinfo costs no database query and no signature.

use crate::model::{Cache, Derivation, JobId, NarFile, Timestamp};
use crate::{CacheId, OrgId, WorkerId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Past this many bytes of narinfos (their text and a fixed [`NARINFO_OVERHEAD`] each, about 20,000 signed
/// narinfos) the memo starts over rather than tracking recency: cheap, and bounded.
pub const MAX_NARINFO_BYTES: usize = 16 * 1024 * 1024;
/// What one remembered narinfo costs besides its text: its key, the map's slot and the shared string's header.
const NARINFO_OVERHEAD: usize = 128;

/// A signed narinfo, or `None` for a path the cache does not hold.
type Narinfo = Option<Arc<str>>;

#[derive(Default)]
pub struct ServeMemo {
    /// Cache records by name, and a generation bumped whenever one is forgotten: a lookup begun before a
    /// change is not remembered after it (else a record read while public could outlive its going private).
    caches: Mutex<CacheRecords>,
    /// `None` remembers that the cache does not hold the path (Nix asks for many missing paths).
    narinfos: Mutex<Narinfos>,
    /// That an organization's job tokens may read (or push to) a cache, as found at a time: a worker asks
    /// for every path it substitutes and pushes. Trusted for [`JOB_ACCESS_TTL`], and dropped at once when
    /// this process changes a subscription, an organization or the cache.
    job_access: Mutex<JobAccess>,
    /// Whether a job was still assigned to the worker its token names, as found at a time: trusted for
    /// [`JOB_ALIVE_TTL`] and dropped when this process ends the job.
    jobs_alive: Mutex<JobsAlive>,
    /// NAR files this process just received, until their narinfo comes: Nix pushes the two back to back, and
    /// the narinfo is checked against the file's record.
    received: Mutex<HashMap<(CacheId, String), NarFile>>,
    /// The paths each cache served last (its page shows them).
    pub(super) recent_hits: super::recent_hits::RecentHits,
    /// Who an API key is, as found at a time: Nix sends its netrc key with every request to a private cache.
    /// Trusted for [`API_KEY_TTL`], and dropped at once when this process deletes a key or applies a state.
    api_keys: Mutex<ApiKeys>,
    /// Which caches an API key may read, as found at a time: Nix sends its netrc key with every narinfo it asks
    /// a private cache for. Trusted for [`API_KEY_TTL`], and dropped at once when this process changes anything
    /// that can take the right away (a key deleted, a member removed, a grant or subscription ended, a cache
    /// changed or deleted, an organization deleted, a state applied).
    reads: Mutex<Reads>,
    read_hits: std::sync::atomic::AtomicU64,
    /// Read rights being asked of storage now (key as sent, cache name): one request asks, the others with
    /// the same question wait for its answer (`Gradient::cache_to_read`).
    pub(super) read_flights: super::flights::Flights<(Box<str>, Box<str>)>,
}

/// Readable caches remembered at most (key and cache pairs); past that, the expired ones are dropped, or all
/// if none is. About 200 bytes each (the key, the cache's name and id, a time; the record itself is taken from
/// the cache-record memo): 2 MB at most, a few kilobytes in practice.
pub const MAX_READS: usize = 10_000;

/// Cache records remembered at most; past that, all are forgotten.
const MAX_CACHES: usize = 10_000;

#[derive(Default)]
struct CacheRecords {
    generation: u64,
    found: HashMap<String, Cache>,
}

/// Memoized read rights: by the API key as sent (so a hit costs no hash of it), then the cache's name; and a
/// generation bumped whenever they are all forgotten, so a check begun before a change is not kept after it.
#[derive(Default)]
struct Reads {
    generation: u64,
    len: usize,
    found: HashMap<Box<str>, ReadsOfKey>,
}

/// One key's readable caches by name, each with its id and when it was found so.
type ReadsOfKey = HashMap<Box<str>, (CacheId, Timestamp)>;

/// How long an API key found valid is trusted without asking storage again (a key deleted by another process
/// stops working within it; at once in this one, see [`ServeMemo::forget_api_keys`]).
pub const API_KEY_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// API keys remembered at most; past that, the expired ones are dropped, or all if none is.
const MAX_API_KEYS: usize = 10_000;

/// Memoized API keys (by the key's hash), and a generation bumped whenever they are all forgotten: a lookup
/// that started before a deletion is not remembered after it.
#[derive(Default)]
struct ApiKeys {
    generation: u64,
    found: HashMap<String, (super::Caller, Timestamp)>,
}

/// Signed narinfos by cache and hash part, and what they cost in bytes together.
#[derive(Default)]
struct Narinfos {
    /// By cache, then hash part (two levels, so a lookup borrows the hash part instead of copying it).
    known: HashMap<CacheId, HashMap<Box<str>, Narinfo>>,
    bytes: usize,
}

fn narinfo_cost(text: &Narinfo) -> usize {
    NARINFO_OVERHEAD + text.as_deref().map_or(0, str::len)
}

/// A received NAR file's record is taken from memory for this long after its upload (well within the grace
/// period before garbage collection may remove a NAR file no narinfo refers to).
pub const RECEIVED_TTL: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Memoized subscription checks, and a generation bumped whenever they are all forgotten: a check that
/// started before a change is not remembered after it.
#[derive(Default)]
struct JobAccess {
    generation: u64,
    /// (org, cache name, for writing) → the cache, when allowed.
    found: HashMap<(OrgId, String, bool), (Cache, Timestamp)>,
}

/// A job's assignment as a token names it: the job, its worker, and when it was assigned (microseconds).
pub type JobAssignment = (JobId, WorkerId, i64);

/// Jobs found assigned (or not) to a worker, at a time; and jobs whose tokens were revoked before they ended.
#[derive(Default)]
struct JobsAlive {
    /// (job, worker, assigned at in microseconds) → assigned so, found at.
    found: HashMap<JobAssignment, (bool, Timestamp)>,
    revoked: std::collections::HashSet<JobId>,
}

/// How long a job found assigned is trusted without asking storage again: a token dies at most this long
/// after its job ends in another process (at once in this one, see [`ServeMemo::forget_job`]).
pub const JOB_ALIVE_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// How long a memoized subscription check holds (a change made by another process shows within it).
pub const JOB_ACCESS_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(10);

impl ServeMemo {
    /// The remembered record of the cache `name`, and the generation to pass to [`Self::remember_cache`] after
    /// reading it anew.
    pub fn cache(&self, name: &str) -> (Option<Cache>, u64) {
        let caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        (caches.found.get(name).cloned(), caches.generation)
    }

    /// Remembers a record read by a lookup begun at `generation`, unless a cache was forgotten since.
    pub fn remember_cache(&self, cache: &Cache, generation: u64) {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if caches.generation != generation {
            return;
        }
        if caches.found.len() >= MAX_CACHES {
            caches.found.clear();
        }
        caches.found.insert(cache.name.to_string(), cache.clone());
    }

    /// A remembered subscription check for the cache as the request names it, and the generation to pass to
    /// [`Self::remember_job_access`] after checking anew.
    pub fn job_access(&self, org: OrgId, name: &str, write: bool, now: Timestamp) -> (Option<Cache>, u64) {
        let access = self.job_access.lock().unwrap_or_else(PoisonError::into_inner);
        let found = access
            .found
            .get(&(org, name.to_owned(), write))
            .filter(|(_, at)| now - *at < JOB_ACCESS_TTL && *at <= now)
            .map(|(cache, _)| cache.clone());
        (found, access.generation)
    }

    /// Remembers a check begun at `generation`, unless everything was forgotten since.
    pub fn remember_job_access(
        &self,
        org: OrgId,
        name: &str,
        write: bool,
        cache: &Cache,
        now: Timestamp,
        generation: u64,
    ) {
        let mut access = self.job_access.lock().unwrap_or_else(PoisonError::into_inner);
        if access.generation != generation {
            return;
        }
        if access.found.len() >= 10_000 {
            access.found.clear();
        }
        access.found.insert((org, name.to_owned(), write), (cache.clone(), now));
    }

    /// Whether the job was found assigned to the worker within [`JOB_ALIVE_TTL`]; `Some(false)` once revoked.
    pub fn job_alive(&self, assignment: JobAssignment, now: Timestamp) -> Option<bool> {
        let jobs = self.jobs_alive.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.revoked.contains(&assignment.0) {
            return Some(false);
        }
        jobs.found
            .get(&assignment)
            .filter(|(_, at)| now - *at < JOB_ALIVE_TTL && *at <= now)
            .map(|(alive, _)| *alive)
    }

    /// Whether the job's token was revoked (its job is being aborted) and the job has not ended since.
    pub fn revoked(&self, job: JobId) -> bool {
        let jobs = self.jobs_alive.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.revoked.contains(&job)
    }

    pub fn remember_job_alive(&self, assignment: JobAssignment, alive: bool, now: Timestamp) {
        let mut jobs = self.jobs_alive.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.found.len() >= 10_000 {
            jobs.found.retain(|_, (_, at)| now - *at < JOB_ALIVE_TTL);
        }
        jobs.found.insert(assignment, (alive, now));
    }

    /// The job ended (or went back to the queue): the next use of its token asks storage.
    pub fn forget_job(&self, job: JobId) {
        let mut jobs = self.jobs_alive.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.found.retain(|(j, _, _), _| *j != job);
        jobs.revoked.remove(&job);
    }

    /// The job is being aborted: its token is dead now, though the job stays assigned until its worker
    /// reports (then [`Self::forget_job`]). A restart forgets this; the job's end still revokes the token.
    pub fn revoke_job(&self, job: JobId) {
        let mut jobs = self.jobs_alive.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.revoked.len() >= 100_000 {
            jobs.revoked.clear();
        }
        jobs.revoked.insert(job);
    }

    /// The caller an API key (by its hash) was found to be within [`API_KEY_TTL`], and the generation to pass
    /// to [`Self::remember_api_key`] after looking it up anew.
    pub fn api_key(&self, hash: &str, now: Timestamp) -> (Option<super::Caller>, u64) {
        let keys = self.api_keys.lock().unwrap_or_else(PoisonError::into_inner);
        let found = keys
            .found
            .get(hash)
            .filter(|(_, at)| now - *at < API_KEY_TTL && *at <= now)
            .map(|(caller, _)| caller.clone());
        (found, keys.generation)
    }

    /// Remembers a lookup begun at `generation`, unless every key was forgotten since.
    pub fn remember_api_key(&self, hash: &str, caller: &super::Caller, now: Timestamp, generation: u64) {
        let mut keys = self.api_keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.generation != generation {
            return;
        }
        if keys.found.len() >= MAX_API_KEYS {
            keys.found.retain(|_, (_, at)| now - *at < API_KEY_TTL);
            if keys.found.len() >= MAX_API_KEYS {
                keys.found.clear();
            }
        }
        keys.found.insert(hash.to_owned(), (caller.clone(), now));
    }

    /// Forgets every API key (a key was deleted, or a state applied): the next use of any asks storage.
    pub fn forget_api_keys(&self) {
        {
            let mut keys = self.api_keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.generation += 1;
            keys.found.clear();
        }
        self.forget_reads();
    }

    /// The cache `name` if the API key `key` (as sent) was found allowed to read it within [`API_KEY_TTL`],
    /// and the generation to pass to [`Self::remember_read`] after checking anew.
    /// The record is the cache-record memo's: a right whose record is no longer remembered is asked anew.
    pub fn read(&self, key: &str, name: &str, now: Timestamp) -> (Option<Cache>, u64) {
        let (id, generation) = {
            let reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            let id = reads
                .found
                .get(key)
                .and_then(|caches| caches.get(name))
                .filter(|(_, at)| now - *at < API_KEY_TTL && *at <= now)
                .map(|(id, _)| *id);
            (id, reads.generation)
        };
        let found = id.and_then(|id| self.cache(name).0.filter(|c| c.id == id));
        if found.is_some() {
            self.read_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (found, generation)
    }

    /// How many read rights were answered from memory since start (a figure for tests and benchmarks).
    pub fn read_hits(&self) -> u64 {
        self.read_hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers that `key` may read `cache` (as the request named it), found by a check begun at
    /// `generation`, unless anything that can revoke it changed since.
    pub fn remember_read(&self, key: &str, name: &str, cache: &Cache, now: Timestamp, generation: u64) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        if reads.generation != generation {
            return;
        }
        if reads.len >= MAX_READS {
            for caches in reads.found.values_mut() {
                caches.retain(|_, (_, at)| now - *at < API_KEY_TTL);
            }
            reads.found.retain(|_, caches| !caches.is_empty());
            reads.len = reads.found.values().map(HashMap::len).sum();
            if reads.len >= MAX_READS {
                reads.found.clear();
                reads.len = 0;
            }
        }
        let caches = reads.found.entry(key.into()).or_default();
        let added = caches.insert(name.into(), (cache.id, now)).is_none();
        reads.len += usize::from(added);
    }

    /// Forgets every remembered read right (see [`ServeMemo::reads`] for when).
    fn forget_reads(&self) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        reads.generation += 1;
        reads.found.clear();
        reads.len = 0;
    }

    /// Forgets every subscription check (when a subscription, a membership or an organization changes: called
    /// before and after the change, so no check straddling it is kept), and with them every read right.
    pub fn forget_job_access(&self) {
        {
            let mut access = self.job_access.lock().unwrap_or_else(PoisonError::into_inner);
            access.generation += 1;
            access.found.clear();
        }
        self.forget_reads();
    }

    /// Forgets a cache and everything served from it (after it changed or was deleted), and every read right.
    /// The read rights go last, so a check that starts meanwhile cannot find the old record still remembered.
    pub fn forget_cache(&self, id: CacheId) {
        {
            let mut access = self.job_access.lock().unwrap_or_else(PoisonError::into_inner);
            access.generation += 1;
            access.found.retain(|_, (c, _)| c.id != id);
        }
        {
            let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
            caches.generation += 1;
            caches.found.retain(|_, c| c.id != id);
        }
        {
            let mut narinfos = self.narinfos.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(gone) = narinfos.known.remove(&id) {
                let freed: usize = gone.values().map(narinfo_cost).sum();
                narinfos.bytes = narinfos.bytes.saturating_sub(freed);
            }
        }
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(c, _), _| *c != id);
        self.forget_reads();
    }

    pub fn narinfo(&self, cache: CacheId, hash_part: &str) -> Option<Option<Arc<str>>> {
        self.narinfos
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .known
            .get(&cache)?
            .get(hash_part)
            .cloned()
    }

    /// Remembers a narinfo (or that the path is missing); past [`MAX_NARINFO_BYTES`] all are forgotten first.
    pub fn remember_narinfo(&self, cache: CacheId, hash_part: &str, text: Option<Arc<str>>) {
        let mut narinfos = self.narinfos.lock().unwrap_or_else(PoisonError::into_inner);
        let cost = narinfo_cost(&text);
        let Narinfos { known, bytes } = &mut *narinfos;
        if let Some(old) = known.get_mut(&cache).and_then(|c| c.remove(hash_part)) {
            *bytes = bytes.saturating_sub(narinfo_cost(&old));
        }
        if *bytes + cost > MAX_NARINFO_BYTES {
            known.clear();
            *bytes = 0;
        }
        known.entry(cache).or_default().insert(hash_part.into(), text);
        *bytes += cost;
    }

    pub fn remember_received(&self, file: &NarFile) {
        let mut received = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        if received.len() >= 10_000 {
            received.clear();
        }
        received.insert((file.cache_id, file.url.clone()), file.clone());
    }

    /// The record of a NAR file received within [`RECEIVED_TTL`] before `now`, forgotten as it is taken.
    pub fn take_received(&self, cache: CacheId, url: &str, now: Timestamp) -> Option<NarFile> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(cache, url.to_owned()))
            .filter(|f| now - f.created_at < RECEIVED_TTL && f.created_at <= now)
    }

    pub fn forget_narinfo(&self, cache: CacheId, hash_part: &str) {
        let mut narinfos = self.narinfos.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = narinfos.known.get_mut(&cache).and_then(|c| c.remove(hash_part));
        if let Some(removed) = removed {
            narinfos.bytes = narinfos.bytes.saturating_sub(narinfo_cost(&removed));
        }
    }
}

/// Past this many derivations the memo starts over: a derivation with its outputs and inputs is about a
/// kilobyte, so the memo stays within about 20 MB, and a few large evaluations fit.
pub const MAX_DERIVATIONS: usize = 20_000;

/// Derivations as each organization stored them, which never change once stored and are never deleted: the
/// scheduler asks for every queued build's inputs at every dispatch, and each job sent needs its outputs.
/// Keyed by organization, as in storage: what one organization's worker reported about a path is never what
/// another organization reads.
#[derive(Default)]
pub struct DerivationMemo {
    known: Mutex<HashMap<(OrgId, String), Arc<Derivation>>>,
}

impl DerivationMemo {
    pub fn get(&self, org: OrgId, drv_path: &str) -> Option<Arc<Derivation>> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(org, drv_path.to_owned()))
            .cloned()
    }

    /// Remembers the organization's derivation; one already remembered is kept (as storage keeps the first).
    pub fn remember(&self, org: OrgId, d: Derivation) -> Arc<Derivation> {
        let mut memo = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() >= MAX_DERIVATIONS {
            memo.clear();
        }
        memo.entry((org, d.drv_path.clone()))
            .or_insert_with(|| Arc::new(d))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;

    #[test]
    fn a_received_nar_file_is_taken_once_and_only_while_fresh() {
        let memo = ServeMemo::default();
        let cache = CacheId(uuid::Uuid::from_u128(1));
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let file = |url: &str| NarFile {
            cache_id: cache,
            url: url.into(),
            compression: Compression::Zstd,
            file_hash: "sha256:x".into(),
            file_size: 1,
            nar_hash: "sha256:y".into(),
            nar_size: 2,
            created_at: at,
        };
        memo.remember_received(&file("nar/a.nar.zst"));
        memo.remember_received(&file("nar/b.nar.zst"));
        let soon = at + chrono::TimeDelta::seconds(1);
        assert_eq!(
            memo.take_received(cache, "nar/a.nar.zst", soon),
            Some(file("nar/a.nar.zst"))
        );
        assert_eq!(memo.take_received(cache, "nar/a.nar.zst", soon), None, "taken once");
        assert_eq!(
            memo.take_received(CacheId(uuid::Uuid::from_u128(2)), "nar/b.nar.zst", soon),
            None
        );
        // Too old: the storage is asked instead.
        assert_eq!(memo.take_received(cache, "nar/b.nar.zst", at + RECEIVED_TTL), None);
        memo.remember_received(&file("nar/c.nar.zst"));
        memo.forget_cache(cache);
        assert_eq!(
            memo.take_received(cache, "nar/c.nar.zst", soon),
            None,
            "forgotten with its cache"
        );
    }

    #[test]
    fn the_narinfo_memo_stays_within_its_bytes_and_starts_over_past_them() {
        let memo = ServeMemo::default();
        let cache = CacheId(uuid::Uuid::from_u128(1));
        let text: Arc<str> = Arc::from("x".repeat(1000));
        let fit = MAX_NARINFO_BYTES / narinfo_cost(&Some(text.clone()));
        for i in 0..fit {
            memo.remember_narinfo(cache, &format!("{i:032}"), Some(text.clone()));
        }
        let bytes = || memo.narinfos.lock().map(|n| n.bytes).unwrap_or_default();
        assert!(bytes() <= MAX_NARINFO_BYTES);
        assert_eq!(memo.narinfo(cache, &format!("{:032}", 0)), Some(Some(text.clone())));
        // Remembering the same path again costs nothing more.
        memo.remember_narinfo(cache, &format!("{:032}", 0), Some(text.clone()));
        assert!(bytes() <= MAX_NARINFO_BYTES);
        assert_eq!(memo.narinfo(cache, &format!("{:032}", 1)), Some(Some(text.clone())));
        // One more does not fit: everything else is forgotten.
        memo.remember_narinfo(cache, "new", Some(text.clone()));
        assert_eq!(memo.narinfo(cache, "new"), Some(Some(text.clone())));
        assert_eq!(memo.narinfo(cache, &format!("{:032}", 1)), None);
        assert_eq!(bytes(), narinfo_cost(&Some(text.clone())));
        memo.forget_narinfo(cache, "new");
        assert_eq!((memo.narinfo(cache, "new"), bytes()), (None, 0));
    }

    #[test]
    fn an_api_key_is_trusted_for_its_ttl_and_forgotten_at_once_when_keys_change() {
        let memo = ServeMemo::default();
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let known = |hash: &str, now| memo.api_key(hash, now).0.is_some();
        let (_, generation) = memo.api_key("h", at);
        memo.remember_api_key("h", &super::super::Caller::Anonymous, at, generation);
        assert!(known("h", at + chrono::TimeDelta::seconds(1)));
        assert!(!known("h", at + API_KEY_TTL), "asked again after its time");
        assert!(!known("other", at));
        memo.forget_api_keys();
        assert!(!known("h", at));
        // A lookup begun before the keys were forgotten is not remembered after.
        let (_, stale) = memo.api_key("h", at);
        memo.forget_api_keys();
        memo.remember_api_key("h", &super::super::Caller::Anonymous, at, stale);
        assert!(!known("h", at));
    }

    /// A cache record of id 1 for the memo tests.
    fn test_cache(name: &str, public: bool, at: Timestamp) -> crate::model::Cache {
        crate::model::Cache {
            id: CacheId(uuid::Uuid::from_u128(1)),
            name: crate::Name::parse(name).expect("a name"),
            display_name: String::new(),
            description: String::new(),
            public,
            priority: 40,
            local_priority: None,
            compression: Compression::None,
            signing_key: crate::crypt::Sealed(String::new()),
            created_by: crate::UserId(uuid::Uuid::from_u128(2)),
            created_at: at,
            managed: false,
        }
    }

    #[test]
    fn a_read_right_holds_for_its_ttl_and_goes_with_any_change_that_can_revoke_it() {
        let memo = ServeMemo::default();
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let cache = test_cache("private", false, at);
        let known = |key: &str, name: &str, now| memo.read(key, name, now).0.is_some();
        let remember = || {
            let (_, generation) = memo.cache("private");
            memo.remember_cache(&cache, generation);
            let (_, generation) = memo.read("GRADk", "private", at);
            memo.remember_read("GRADk", "private", &cache, at, generation);
            assert!(known("GRADk", "private", at));
        };
        remember();
        assert!(known("GRADk", "private", at + chrono::TimeDelta::seconds(1)));
        assert!(
            !known("GRADk", "private", at + API_KEY_TTL),
            "asked again after its time"
        );
        assert!(!known("GRADother", "private", at));
        assert!(!known("GRADk", "other", at));
        memo.forget_api_keys();
        assert!(!known("GRADk", "private", at), "a key deleted");
        remember();
        memo.forget_job_access();
        assert!(!known("GRADk", "private", at), "a member removed, a grant ended");
        remember();
        memo.forget_cache(CacheId(uuid::Uuid::from_u128(99)));
        assert!(!known("GRADk", "private", at), "a cache changed");
        // A check begun before a change is not remembered after it.
        let (_, stale) = memo.read("GRADk", "private", at);
        memo.forget_job_access();
        memo.remember_read("GRADk", "private", &cache, at, stale);
        assert!(!known("GRADk", "private", at));
        // A right is answered only with the record the cache-record memo holds: once the record is forgotten,
        // the right is asked anew.
        remember();
        let hits = memo.read_hits();
        assert!(known("GRADk", "private", at));
        assert_eq!(memo.read_hits(), hits + 1, "a hit is counted");
        memo.caches.lock().map(|mut c| c.found.clear()).unwrap_or_default();
        assert!(!known("GRADk", "private", at));
        assert_eq!(memo.read_hits(), hits + 1, "a miss is not");
        remember();
        let len = || memo.reads.lock().map(|r| r.len).unwrap_or_default();
        // Bounded: past MAX_READS the expired ones go...
        let later = at + API_KEY_TTL;
        for i in 0..MAX_READS - 1 {
            let (_, generation) = memo.read("GRADk", "x", later);
            memo.remember_read(&format!("GRADk{i}"), "private", &cache, later, generation);
        }
        assert_eq!(len(), MAX_READS);
        let (_, generation) = memo.read("GRADk", "x", later);
        memo.remember_read("GRADlast", "private", &cache, later, generation);
        assert_eq!(len(), MAX_READS, "the one expired right dropped, the fresh ones kept");
        assert!(known("GRADk0", "private", later));
        assert!(known("GRADlast", "private", later));
        // ...or all, if none has expired.
        let (_, generation) = memo.read("GRADk", "x", later);
        memo.remember_read("GRADnext", "private", &cache, later, generation);
        assert_eq!(len(), 1);
        assert!(known("GRADnext", "private", later));
        assert!(!known("GRADk0", "private", later));
    }

    #[test]
    fn a_cache_record_read_before_the_cache_changed_is_not_remembered_after() {
        let memo = ServeMemo::default();
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut cache = test_cache("c", true, at);
        // A request reads the record while the cache is public; its owner makes it private meanwhile.
        let (_, generation) = memo.cache("c");
        memo.forget_cache(cache.id);
        memo.remember_cache(&cache, generation);
        assert_eq!(memo.cache("c").0, None, "the public record is not put back");
        let (_, generation) = memo.cache("c");
        cache.public = false;
        memo.remember_cache(&cache, generation);
        assert_eq!(memo.cache("c").0.map(|c| c.public), Some(false));
        // A change to another cache forgets only that one's record.
        memo.forget_cache(CacheId(uuid::Uuid::from_u128(9)));
        assert!(memo.cache("c").0.is_some());
    }
}
