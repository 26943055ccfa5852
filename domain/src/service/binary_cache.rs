//! The Nix binary cache: who may read and push, what is served (nix-cache-info, signed narinfos, NARs),
//! how a pushed NAR and its narinfo are checked before anything becomes visible, and garbage collection.
//! Byte transport stays in the app; the decisions and checks are here.

use super::{Caller, Gradient, Result, ServiceError};
use crate::Name;
use crate::codec::{CodecError, Compressor, Decompressor};
use crate::model::{Cache, CachedPath, Compression, NarFile};
use crate::nix::export::{ExportEvent, ExportReader, ExportedPath};
use crate::nix::hash::Hash;
use crate::nix::nar::{NarError, NarReader};
use crate::nix::narinfo::NarInfo;
use crate::nix::nix32;
use crate::nix::store_path::{StorePath, is_hash_part};
use crate::ports::nar_store::{ByteStream, NarStore, NarStoreError, NarUpload};
use crate::ports::{Clock, Storage};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

/// A NAR's place in a cache: `nar/<nix32 sha256 of the file>.nar[.zst|.xz]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarUrl {
    pub file_hash: String,
    pub compression: Compression,
}

impl NarUrl {
    pub fn parse(url: &str) -> Option<Self> {
        let file = url.strip_prefix("nar/")?;
        let (hash, compression) = if let Some(h) = file.strip_suffix(".nar.zst") {
            (h, Compression::Zstd)
        } else if let Some(h) = file.strip_suffix(".nar.xz") {
            (h, Compression::Xz)
        } else {
            (file.strip_suffix(".nar")?, Compression::None)
        };
        (hash.len() == 52 && nix32::decode(hash).is_ok()).then(|| Self {
            file_hash: hash.to_owned(),
            compression,
        })
    }
}

/// Where a cache's NAR lives in the NAR store.
pub fn nar_key(cache: &Cache, url: &str) -> String {
    nar_key_of(cache.id, url)
}

/// [`nar_key`] by the cache's id.
fn nar_key_of(cache: crate::CacheId, url: &str) -> String {
    format!("{cache}/{url}")
}

/// Where the `.ls` listing of a cache's NAR lives in the NAR store: next to the NAR, under its key with `.ls`
/// appended (never a NAR's key: those end in `.nar[.zst|.xz]`). It comes and goes with the NAR file.
pub fn listing_key(cache: crate::CacheId, url: &str) -> String {
    format!("{cache}/{url}.ls")
}

/// The store path of a derivation named by its basename (`<hash>-<name>.drv`), as `log/<basename>` asks.
pub fn drv_from_basename(basename: &str) -> Option<StorePath> {
    StorePath::from_basename(basename)
        .ok()
        .filter(|p| p.basename().ends_with(".drv"))
}

/// `nix-cache-info`, with the local priority for clients on `localIps`.
pub fn nix_cache_info(cache: &Cache, client_is_local: bool) -> String {
    let priority = if client_is_local {
        cache.local_priority.unwrap_or(cache.priority)
    } else {
        cache.priority
    };
    format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n")
}

/// What garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub paths: u64,
    pub nar_files: u64,
    /// Uploads a crashed process left in the NAR store (temporary files, incomplete multipart uploads).
    pub uploads: u64,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::invalid(code, message)
}

/// How a NAR store failure reaches the caller: a full store is 507, an unreachable, failing or slow one 503
/// (an upload vanishing under us is one swept from a store that was restarted meanwhile); a refused key is
/// our bug.
fn store_failure(e: NarStoreError) -> ServiceError {
    match e {
        NarStoreError::Full(_) => ServiceError::StorageFull(e.to_string()),
        NarStoreError::Unavailable(_) | NarStoreError::Timeout | NarStoreError::NotFound => {
            ServiceError::StorageUnavailable(e.to_string())
        }
        NarStoreError::InvalidKey(_) => ServiceError::Internal(format!("NAR store: {e}")),
    }
}

/// Why receiving a NAR stopped.
enum Refusal {
    Codec(CodecError),
    Nar(NarError),
}

impl From<CodecError> for Refusal {
    fn from(e: CodecError) -> Self {
        Self::Codec(e)
    }
}

/// How long an uploaded NAR may wait for its narinfo before it is collected. The cutoff is on the file's
/// upload time, so a file whose paths were just collected by TTL (uploaded long ago) goes at once.
pub const ORPHAN_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// How long an upload may go without activity before garbage collection takes it for a crashed process's
/// leftover and sweeps it (S3 counts from when it began, so this is longer than any push should take). At
/// start-up every leftover goes at once ([`Gradient::sweep_uploads_at_start`]).
pub const UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

async fn next<B, E>(body: &mut B) -> Option<std::result::Result<Bytes, E>>
where
    B: futures_core::Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_next(cx)).await
}

/// Whether a credential is an API key (whose read rights are remembered), not a job token (which shares the
/// prefix, and whose rights end with its job) nor a session.
fn is_api_key(credential: &str) -> bool {
    credential.starts_with(crate::auth::API_KEY_PREFIX) && !credential.starts_with(crate::auth::JOB_TOKEN_PREFIX)
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Records that the cache's paths (hash parts) were fetched now, keeping them from garbage collection for
    /// another `cacheTtlHours`. One call per batch of fetches, not per request.
    pub async fn record_fetches(&self, cache: crate::CacheId, hash_parts: &[String]) -> Result<()> {
        self.storage
            .touch_cached_paths(cache, hash_parts, self.clock.now())
            .await?;
        Ok(())
    }

    /// The cache, if the caller may read it. Anonymous callers are asked to authenticate (401) for every
    /// cache that is not public, existing or not, so the answer reveals nothing.
    pub async fn readable_cache(&self, caller: &Caller, name: &str) -> Result<Cache> {
        let (known, generation) = self.memo.cache(name);
        if let Some(cache) = known
            && self.can_read_cache(caller, &cache).await?
        {
            return Ok(cache);
        }
        match self.cache(caller, name).await {
            Ok(cache) => {
                self.memo.remember_cache(&cache, generation);
                Ok(cache)
            }
            Err(ServiceError::NotFound(_)) if caller.user().is_none() => {
                Err(ServiceError::Unauthenticated("this cache needs credentials".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// How many `/cache` read rights of API keys were answered from memory since start (for tests and benchmarks:
    /// that the memo is used at all).
    pub fn cache_read_memo_hits(&self) -> u64 {
        self.memo.read_hits()
    }

    /// The cache `name` as a request's credential (a job token, an API key, a session, or none) may read it:
    /// a job token's organization's rights first, else the session's or key's, as [`Self::readable_cache`]
    /// decides. What an API key may read is remembered for [`super::memo::API_KEY_TTL`] (by the key as sent,
    /// so a hit costs no hash of it and no query), and forgotten at once on any change in this process that
    /// can take the right away (see `ServeMemo::reads`). One request at a time asks storage for a key's right to
    /// a cache; others asking the same meanwhile wait for its answer (a Nix client's parallel requests all find
    /// the remembered right expired at once).
    pub async fn cache_to_read(&self, credential: Option<&str>, name: &str) -> Result<Cache> {
        let key = credential.filter(|c| is_api_key(c));
        // Once, before the check: a right is kept no longer than API_KEY_TTL after what it was decided from.
        let now = self.clock.now();
        let mut generation = None;
        // Held until the answer is remembered: requests asking the same meanwhile wait, then read it. One that
        // waited and still finds nothing (the key is unknown or refused, which is not remembered; a change
        // forgot the answer) asks storage itself: waiting for another turn would line them all up one by one.
        let mut _turn = None;
        if let Some(key) = key {
            let mut waited = false;
            loop {
                let (known, at) = self.memo.read(key, name, now);
                if let Some(cache) = known {
                    return Ok(cache);
                }
                generation = Some(at);
                if waited {
                    break;
                }
                match self.memo.read_flights.take_off((key.into(), name.into())) {
                    super::flights::Turn::Lead(lead) => {
                        _turn = Some(lead);
                        break;
                    }
                    super::flights::Turn::Wait(landing) => {
                        landing.await;
                        waited = true;
                    }
                }
            }
        }
        if let Some(token) = credential
            && let Some(cache) = self.cache_for_job_token(token, name, false).await?
        {
            return Ok(cache);
        }
        let caller = self.cache_caller(credential).await?;
        let cache = self.readable_cache(&caller, name).await?;
        if let (Some(key), Some(generation)) = (key, generation) {
            self.memo.remember_read(key, name, &cache, now, generation);
        }
        Ok(cache)
    }

    /// The cache, if `token` is the job token of a job still assigned and the job's organization may use the
    /// cache so: reading any cache the org reads (a grant, or a public cache it subscribes to); writing only the
    /// push cache named in the token, while it is still the org's push cache. `None` when the token is not a
    /// job token or does not allow it (the caller then falls back to other credentials).
    pub async fn cache_for_job_token(&self, token: &str, name: &str, write: bool) -> Result<Option<Cache>> {
        let now = self.clock.now();
        let Some(claims) = self.tokens.verify_job(token, now) else {
            return Ok(None);
        };
        if !self.job_holds_token(&claims, now).await? {
            return Ok(None);
        }
        let (known, generation) = self.memo.job_access(claims.org, name, write, now);
        let cache = match known {
            Some(cache) => cache,
            None => {
                let Ok(parsed) = Name::parse(name) else { return Ok(None) };
                let Some(cache) = self.storage.cache_by_name(&parsed).await? else {
                    return Ok(None);
                };
                let allowed = self
                    .storage
                    .subscriptions(claims.org)
                    .await?
                    .into_iter()
                    .find(|s| s.cache.id == cache.id)
                    .is_some_and(|s| if write { s.push } else { s.readable() });
                if !allowed {
                    return Ok(None);
                }
                self.memo
                    .remember_job_access(claims.org, name, write, &cache, now, generation);
                cache
            }
        };
        Ok((!write || claims.push == Some(cache.id)).then_some(cache))
    }

    /// Whether the job a token was issued for is still the token's worker's, in the token's organization: still
    /// assigned to it, or back in the queue after that worker was lost and taken by no other worker yet (the
    /// worker may have built it offline and push its outputs before it comes back and is given the job back,
    /// see `scheduler::reclaimable`) — then only while that worker still has a registration in the token's
    /// organization, so a worker the organization removed loses the token with its link. A job token is revoked
    /// when its job ends, is aborted, or goes to another worker. Remembered for [`super::memo::JOB_ALIVE_TTL`].
    async fn job_holds_token(&self, claims: &crate::auth::JobClaims, now: crate::model::Timestamp) -> Result<bool> {
        if let Some(alive) = self
            .memo
            .job_alive((claims.job, claims.worker, claims.assigned_at), now)
        {
            return Ok(alive);
        }
        let alive = match self.storage.job(claims.job).await? {
            Some(j) if j.org_id == claims.org => match j.state {
                crate::model::JobState::Assigned { worker, .. } => worker == claims.worker,
                crate::model::JobState::Queued if j.attempts > 0 => self
                    .storage
                    .worker_registrations_for(claims.worker)
                    .await?
                    .iter()
                    .any(|r| r.org_id == claims.org),
                _ => false,
            },
            _ => false,
        };
        self.memo
            .remember_job_alive((claims.job, claims.worker, claims.assigned_at), alive, now);
        Ok(alive)
    }

    /// Who asks the binary cache, when [`Self::cache_for_job_token`] did not accept the credential: a job token
    /// (wrong cache, not its push cache, job over) is answered as an anonymous request would be, never as a
    /// user; anything else is a session or an API key.
    pub async fn cache_caller(&self, credential: Option<&str>) -> Result<Caller> {
        match credential {
            Some(token) if token.starts_with(crate::auth::JOB_TOKEN_PREFIX) => Ok(Caller::Anonymous),
            token => self.authenticate(token).await,
        }
    }

    /// The cache, if the caller may push to it: its owner, with an unrestricted session or key.
    pub async fn writable_cache(&self, caller: &Caller, name: &str) -> Result<Cache> {
        caller.require_user()?;
        let cache = self.readable_cache(caller, name).await?;
        let user = caller.require_user()?;
        let restricted = caller.is_restricted();
        if cache.created_by != user.id || restricted {
            return Err(ServiceError::Forbidden(format!("you may not push to cache '{name}'")));
        }
        Ok(cache)
    }

    /// The signed narinfo of a path the cache holds.
    pub async fn signed_narinfo(&self, cache: &Cache, hash_part: &str) -> Result<Option<Arc<str>>> {
        // What cannot be a store path's hash part is in no cache: answered without a lookup, and never
        // remembered (a client could otherwise fill the memo with long made-up names).
        if !is_hash_part(hash_part) {
            return Ok(None);
        }
        let text = match self.memo.narinfo(cache.id, hash_part) {
            Some(known) => known,
            None => {
                let text = self.sign_narinfo(cache, hash_part).await?.map(Arc::<str>::from);
                self.memo.remember_narinfo(cache.id, hash_part, text.clone());
                text
            }
        };
        // A hit is remembered for the cache's page; the narinfo's first line names the path.
        if let Some(path) = text
            .as_deref()
            .and_then(|t| t.lines().next())
            .and_then(|l| l.strip_prefix("StorePath: "))
        {
            self.memo.recent_hits.record(cache.id, path, self.clock.now());
        }
        Ok(text)
    }

    async fn sign_narinfo(&self, cache: &Cache, hash_part: &str) -> Result<Option<String>> {
        let Some(p) = self.storage.cached_path(cache.id, hash_part).await? else {
            return Ok(None);
        };
        let broken = |what: &str| ServiceError::Internal(format!("stored path {}: invalid {what}", p.store_path));
        let mut info = NarInfo {
            store_path: StorePath::parse(&p.store_path).map_err(|_| broken("store path"))?,
            url: p.url.clone(),
            compression: p.compression.as_str().to_owned(),
            file_hash: Some(Hash::parse(&p.file_hash).map_err(|_| broken("file hash"))?),
            file_size: Some(p.file_size),
            nar_hash: Hash::parse(&p.nar_hash).map_err(|_| broken("nar hash"))?,
            nar_size: p.nar_size,
            references: p
                .references
                .iter()
                .map(|r| StorePath::from_basename(r))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| broken("reference"))?,
            deriver: p
                .deriver
                .as_deref()
                .map(StorePath::from_basename)
                .transpose()
                .map_err(|_| broken("deriver"))?,
            system: p.system.clone(),
            sigs: Vec::new(),
            ca: p.ca.clone(),
        };
        info.sign(&self.cache_secret_key(cache)?);
        Ok(Some(info.render()))
    }

    /// The record of a NAR file the cache holds.
    pub async fn nar_file(&self, cache: &Cache, url: &str) -> Result<Option<NarFile>> {
        Ok(self.storage.nar_file(cache.id, url).await?)
    }

    /// Receives a pushed NAR file: streams it into the NAR store while hashing it, decompressing it and
    /// checking the NAR inside. It becomes visible (and is recorded) only if the bytes are a valid NAR whose
    /// compressed SHA-256 is the one its URL names; otherwise nothing is kept.
    pub async fn receive_nar<N, B, E>(&self, nars: &N, cache: &Cache, url: &str, mut body: B) -> Result<NarFile>
    where
        N: NarStore,
        B: futures_core::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let nar_url = NarUrl::parse(url).ok_or_else(|| {
            invalid(
                "invalid_nar_url",
                format!("'{url}' is not nar/<nix32 sha256>.nar[.zst|.xz]"),
            )
        })?;
        let mut upload = nars.begin(&nar_key(cache, url)).await.map_err(store_failure)?;
        let mut sha = Sha256::new();
        let mut file_size = 0u64;
        let mut decompressor = Decompressor::new(nar_url.compression);
        let mut reader = NarReader::with_listing();
        let outcome: std::result::Result<(), ServiceError> = async {
            while let Some(chunk) = next(&mut body).await {
                let chunk = chunk.map_err(|e| invalid("upload_failed", format!("reading the upload failed: {e}")))?;
                sha.update(&chunk);
                file_size += chunk.len() as u64;
                decompressor
                    .feed(&chunk, &mut |b: &[u8]| reader.update(b).map_err(Refusal::Nar))
                    .map_err(refusal)?;
                upload.write(chunk).await.map_err(store_failure)?;
            }
            decompressor
                .finish(&mut |b: &[u8]| reader.update(b).map_err(Refusal::Nar))
                .map_err(refusal)
        }
        .await;
        if let Err(e) = outcome {
            let _ = upload.abort().await;
            return Err(e);
        }
        let (summary, listing) = match reader.finish_with_listing() {
            Ok(s) => s,
            Err(e) => {
                let _ = upload.abort().await;
                return Err(invalid("invalid_nar", format!("the upload is not a valid NAR: {e}")));
            }
        };
        let digest: [u8; 32] = sha.finalize().into();
        let actual = nix32::encode(&digest);
        if actual != nar_url.file_hash {
            let _ = upload.abort().await;
            return Err(invalid(
                "hash_mismatch",
                format!(
                    "the file's SHA-256 is {actual}, not the {} its URL names",
                    nar_url.file_hash
                ),
            ));
        }
        let file = NarFile {
            cache_id: cache.id,
            url: url.to_owned(),
            compression: nar_url.compression,
            file_hash: format!("sha256:{actual}"),
            file_size,
            nar_hash: summary.nar_hash.to_string(),
            nar_size: summary.nar_size,
            created_at: self.clock.now(),
        };
        // The record comes first: a crash after the commit then leaves a file garbage collection knows of
        // (an unreferenced NAR file, removed after its grace), never bytes nothing accounts for.
        if let Err(e) = self.storage.put_nar_file(&file).await {
            let _ = upload.abort().await;
            return Err(e.into());
        }
        if let Err(e) = upload.commit().await {
            // The record goes again unless an earlier push of the same bytes is there to back it.
            if let Ok(None) = nars.size(&nar_key(cache, url)).await {
                let _ = self.storage.delete_nar_file(cache.id, url).await;
            }
            return Err(store_failure(e));
        }
        if let Err(e) = store_listing(nars, cache.id, url, listing).await {
            // Bytes a path already stands on stay (an earlier push of the same NAR); otherwise nothing does.
            if let Ok(false) = self.storage.nar_url_in_use(cache.id, url).await {
                delete_nar(nars, cache.id, url).await;
                let _ = self.storage.delete_nar_file(cache.id, url).await;
            }
            return Err(e);
        }
        self.memo.remember_received(&file);
        Ok(file)
    }

    /// Receives a pushed narinfo: it must name the path its URL names and describe exactly the NAR file
    /// received for its `URL:`. The server does not keep the client's signatures; it signs when serving.
    /// A narinfo that contradicts its NAR is refused, and that NAR (unless another path uses it) is deleted.
    pub async fn receive_narinfo<N: NarStore>(
        &self,
        nars: &N,
        cache: &Cache,
        hash_part: &str,
        text: &str,
    ) -> Result<CachedPath> {
        let info = NarInfo::parse(text).map_err(|e| invalid("invalid_narinfo", e.to_string()))?;
        if info.store_path.hash_part() != hash_part {
            return Err(invalid(
                "narinfo_mismatch",
                format!("the narinfo describes {}, not {hash_part}", info.store_path),
            ));
        }
        let received = self.memo.take_received(cache.id, &info.url, self.clock.now());
        let known = match received {
            Some(file) => Some(file),
            // Not received by this process lately: the record may be of a push that never committed (a crash
            // between the two), so the file must be in the NAR store too.
            None => match self.storage.nar_file(cache.id, &info.url).await? {
                Some(file)
                    if nars
                        .size(&nar_key(cache, &file.url))
                        .await
                        .map_err(store_failure)?
                        .is_some() =>
                {
                    Some(file)
                }
                _ => None,
            },
        };
        let file = known.ok_or_else(|| {
            invalid(
                "nar_missing",
                format!("upload {} before the narinfo that refers to it", info.url),
            )
        })?;
        if let Err(problem) = check_against_file(&info, &file) {
            if !self.storage.nar_url_in_use(cache.id, &file.url).await? {
                nars.delete(&nar_key(cache, &file.url)).await.map_err(store_failure)?;
                nars.delete(&listing_key(cache.id, &file.url))
                    .await
                    .map_err(store_failure)?;
                self.storage.delete_nar_file(cache.id, &file.url).await?;
            }
            return Err(invalid("narinfo_mismatch", problem));
        }
        if let Some(existing) = self.storage.cached_path(cache.id, hash_part).await? {
            return same_path(existing, &file.nar_hash);
        }
        let now = self.clock.now();
        let mut references: Vec<String> = info.references.iter().map(|r| r.basename().to_owned()).collect();
        references.sort();
        let path = CachedPath {
            cache_id: cache.id,
            hash_part: hash_part.to_owned(),
            store_path: info.store_path.to_string(),
            url: file.url.clone(),
            compression: file.compression,
            file_hash: file.file_hash.clone(),
            file_size: file.file_size,
            nar_hash: file.nar_hash.clone(),
            nar_size: file.nar_size,
            references,
            deriver: info.deriver.as_ref().map(|d| d.basename().to_owned()),
            system: info.system.clone(),
            ca: info.ca.clone(),
            created_at: now,
            last_fetched_at: now,
        };
        if !self.storage.put_cached_path(&path).await? {
            // Another push of the same path won the race: the first one stays.
            let existing = self.storage.cached_path(cache.id, hash_part).await?;
            return existing.map_or(Ok(path.clone()), |e| same_path(e, &path.nar_hash));
        }
        self.memo.forget_narinfo(cache.id, hash_part);
        Ok(path)
    }

    /// Which of `paths` (store paths) the cache does not hold, in the order asked: what a push must send.
    pub async fn missing_paths(&self, cache: &Cache, paths: &[String]) -> Result<Vec<String>> {
        if paths.len() > MAX_MISSING_QUERY {
            return Err(invalid(
                "too_many_paths",
                format!("ask about at most {MAX_MISSING_QUERY} paths at once"),
            ));
        }
        let mut parsed = Vec::with_capacity(paths.len());
        for path in paths {
            let p = StorePath::parse(path)
                .map_err(|e| invalid("invalid_store_path", format!("'{path}' is not a store path: {e}")))?;
            parsed.push(p.hash_part().to_owned());
        }
        // The memo answers what was asked lately; the rest is one question to storage.
        let remembered: Vec<Option<bool>> = parsed
            .iter()
            .map(|h| self.memo.narinfo(cache.id, h).map(|known| known.is_some()))
            .collect();
        let unknown: Vec<String> = parsed
            .iter()
            .zip(&remembered)
            .filter(|(_, r)| r.is_none())
            .map(|(h, _)| h.clone())
            .collect();
        let held: std::collections::HashSet<String> = self
            .storage
            .held_hash_parts(cache.id, &unknown)
            .await?
            .into_iter()
            .collect();
        Ok(paths
            .iter()
            .zip(parsed.iter().zip(&remembered))
            .filter(|(_, (h, r))| !r.unwrap_or_else(|| held.contains(*h)))
            .map(|(p, _)| p.clone())
            .collect())
    }

    /// Imports the store paths of a `nix-store --export` stream: each NAR is checked, measured and compressed
    /// (in the cache's compression) on the way into the NAR store, and a path is recorded once its NAR and
    /// listing are durable and every path it refers to is in the cache (or earlier in the stream). Paths are
    /// made durable and recorded in batches (group commit): up to [`IMPORT_BATCH_PATHS`] paths or
    /// [`IMPORT_BATCH_BYTES`] (a NAR that large ends its batch), or what is left when the stream ends, are
    /// committed in one group and recorded in one transaction. Paths read whole before a failure stay; the one
    /// being read is discarded. Answers how many were imported.
    pub async fn import_paths<N, B, E>(&self, nars: &N, cache: &Cache, mut body: B) -> Result<u64>
    where
        N: NarStore,
        B: futures_core::Stream<Item = std::result::Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let mut reader = ExportReader::new();
        let mut current: Option<Incoming<N::Upload>> = None;
        let mut imported = HashSet::new();
        let mut batch: Vec<Received<N::Upload>> = Vec::new();
        let outcome: Result<()> = async {
            let mut batch_bytes = 0u64;
            while let Some(chunk) = next(&mut body).await {
                let chunk = chunk.map_err(|e| invalid("upload_failed", format!("reading the upload failed: {e}")))?;
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let (used, event) = reader
                        .advance(rest)
                        .map_err(|e| invalid("invalid_export", e.to_string()))?;
                    match event {
                        Some(ExportEvent::NarStart) => current = Some(Incoming::begin(nars, cache).await?),
                        Some(ExportEvent::Nar(bytes)) => {
                            if let Some(incoming) = current.as_mut() {
                                incoming.feed(bytes).await?;
                            }
                        }
                        Some(ExportEvent::Path(exported)) => {
                            if let Some(mut incoming) = current.take() {
                                if let Err(e) = incoming.end().await {
                                    let _ = incoming.upload.abort().await;
                                    return Err(e);
                                }
                                batch_bytes +=
                                    incoming.file_size + exported.listing.as_ref().map_or(0, |l| l.len() as u64);
                                batch.push(Received { incoming, exported });
                                if batch.len() >= IMPORT_BATCH_PATHS || batch_bytes >= IMPORT_BATCH_BYTES {
                                    self.record_imports(nars, cache, &mut batch, &mut imported).await?;
                                    batch_bytes = 0;
                                }
                            }
                        }
                        Some(ExportEvent::End) | None => {}
                    }
                    rest = &rest[used..];
                }
            }
            reader.finish().map_err(|e| invalid("invalid_export", e.to_string()))?;
            self.record_imports(nars, cache, &mut batch, &mut imported).await
        }
        .await;
        if let Err(e) = outcome {
            if let Some(incoming) = current {
                let _ = incoming.upload.abort().await;
            }
            // The paths read whole before the failure stay (a batch that failed itself is empty by now).
            let _ = self.record_imports(nars, cache, &mut batch, &mut imported).await;
            return Err(e);
        }
        Ok(imported.len() as u64)
    }

    /// Records a batch of imported paths whose NARs have been read whole, in stream order, and empties it:
    /// which of the paths and their references the cache holds is one question (after the memo); the NAR
    /// files are recorded in one transaction, committed (NARs and listings) as one group, and then the paths
    /// are recorded in one transaction. The first path refused (a missing reference, other contents under a
    /// held path) fails the import: the paths before it are recorded, it and those after it discarded.
    async fn record_imports<U: NarUpload>(
        &self,
        nars: &impl NarStore<Upload = U>,
        cache: &Cache,
        batch: &mut Vec<Received<U>>,
        imported: &mut HashSet<String>,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let received = std::mem::take(batch);
        let mut asked = std::collections::BTreeSet::new();
        for r in &received {
            asked.insert(r.exported.path.hash_part());
            for reference in &r.exported.references {
                if !imported.contains(reference.hash_part()) {
                    asked.insert(reference.hash_part());
                }
            }
        }
        let mut held = HashSet::new();
        let mut unknown = Vec::new();
        for hash_part in asked {
            match self.memo.narinfo(cache.id, hash_part) {
                Some(known) => {
                    if known.is_some() {
                        held.insert(hash_part.to_owned());
                    }
                }
                None => unknown.push(hash_part.to_owned()),
            }
        }
        if !unknown.is_empty() {
            match self.storage.held_hash_parts(cache.id, &unknown).await {
                Ok(answer) => held.extend(answer),
                Err(e) => {
                    abort_all(received.into_iter().map(|r| r.incoming.upload)).await;
                    return Err(e.into());
                }
            }
        }
        // Which paths to record, in order, up to the first refused one.
        let mut failure: Option<ServiceError> = None;
        let mut accepted = Vec::with_capacity(received.len());
        let mut discarded = Vec::new();
        let mut in_batch: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for r in received {
            if failure.is_some() {
                discarded.push(r.incoming.upload);
                continue;
            }
            let path = &r.exported.path;
            let hash_part = path.hash_part().to_owned();
            let nar_hash = r.exported.nar_hash.to_string();
            let missing = r
                .exported
                .references
                .iter()
                .find(|x| !(*x == path || imported.contains(x.hash_part()) || held.contains(x.hash_part())));
            if let Some(missing) = missing {
                failure = Some(invalid(
                    "reference_missing",
                    format!("{path} refers to {missing}, which is neither in the cache nor earlier in the stream"),
                ));
                discarded.push(r.incoming.upload);
                continue;
            }
            // Twice in one batch: the first is the one recorded.
            if let Some(first) = in_batch.get(&hash_part) {
                if *first != nar_hash {
                    failure = Some(path_exists(&path.to_string(), first));
                }
                discarded.push(r.incoming.upload);
                continue;
            }
            // Already held: the same contents are a no-op, others are refused; nothing is stored either way.
            if held.contains(&hash_part) {
                match self.storage.cached_path(cache.id, &hash_part).await {
                    Ok(Some(existing)) => {
                        discarded.push(r.incoming.upload);
                        match same_path(existing, &nar_hash) {
                            Ok(_) => {
                                imported.insert(hash_part);
                            }
                            Err(e) => failure = Some(e),
                        }
                        continue;
                    }
                    // Collected meanwhile: imported again.
                    Ok(None) => {}
                    Err(e) => {
                        failure = Some(e.into());
                        discarded.push(r.incoming.upload);
                        continue;
                    }
                }
            }
            imported.insert(hash_part.clone());
            in_batch.insert(hash_part, nar_hash);
            accepted.push(r);
        }
        abort_all(discarded).await;
        if accepted.is_empty() {
            return failure.map_or(Ok(()), Err);
        }
        let now = self.clock.now();
        let compression = cache.compression;
        let mut files = Vec::with_capacity(accepted.len());
        let mut paths = Vec::with_capacity(accepted.len());
        let mut listings = Vec::with_capacity(accepted.len());
        let mut uploads = Vec::with_capacity(2 * accepted.len());
        for Received { incoming, exported } in accepted {
            let Incoming {
                upload,
                url,
                sha,
                file_size,
                ..
            } = incoming;
            let digest: [u8; 32] = sha.finalize().into();
            let file = NarFile {
                cache_id: cache.id,
                url: url.clone(),
                compression,
                file_hash: format!("sha256:{}", nix32::encode(&digest)),
                file_size,
                nar_hash: exported.nar_hash.to_string(),
                nar_size: exported.nar_size,
                created_at: now,
            };
            let mut references: Vec<String> = exported.references.iter().map(|r| r.basename().to_owned()).collect();
            references.sort();
            paths.push(CachedPath {
                cache_id: cache.id,
                hash_part: exported.path.hash_part().to_owned(),
                store_path: exported.path.to_string(),
                url: url.clone(),
                compression,
                file_hash: file.file_hash.clone(),
                file_size,
                nar_hash: file.nar_hash.clone(),
                nar_size: exported.nar_size,
                references,
                deriver: exported.deriver.as_ref().map(|d| d.basename().to_owned()),
                system: None,
                ca: None,
                created_at: now,
                last_fetched_at: now,
            });
            if let Some(listing) = exported.listing {
                listings.push((url, listing));
            }
            files.push(file);
            uploads.push(upload);
        }
        // The files are recorded before they are committed, so a crash in between leaves NAR files collection
        // removes (see `receive_nar`); the paths are recorded only once their NARs and listings are durable.
        if let Err(e) = self.storage.put_nar_files(&files).await {
            abort_all(uploads).await;
            return Err(e.into());
        }
        for (url, listing) in listings {
            let listed = async {
                let mut upload = nars.begin(&listing_key(cache.id, &url)).await?;
                match upload.write(Bytes::from(listing)).await {
                    Ok(()) => Ok(upload),
                    Err(e) => {
                        let _ = upload.abort().await;
                        Err(e)
                    }
                }
            }
            .await;
            match listed {
                Ok(upload) => uploads.push(upload),
                Err(e) => {
                    abort_all(uploads).await;
                    self.forget_nar_files(nars, &files).await;
                    return Err(store_failure(e));
                }
            }
        }
        if let Err(e) = nars.commit_all(uploads).await {
            self.forget_nar_files(nars, &files).await;
            return Err(store_failure(e));
        }
        let stored = self.storage.put_cached_paths(&paths).await?;
        for (path, stored) in paths.iter().zip(stored) {
            if stored {
                self.memo.forget_narinfo(cache.id, &path.hash_part);
                continue;
            }
            // Pushed meanwhile by another request: the first stays, and this NAR file is left to collection.
            if let Some(existing) = self.storage.cached_path(cache.id, &path.hash_part).await?
                && let Err(e) = same_path(existing, &path.nar_hash)
            {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// After a failed group commit: removes what may have reached the NAR store of freshly named files and,
    /// where that worked, their records (best effort: collection removes what is left).
    async fn forget_nar_files<N: NarStore>(&self, nars: &N, files: &[NarFile]) {
        for f in files {
            let nar = nars.delete(&nar_key_of(f.cache_id, &f.url)).await;
            let listing = nars.delete(&listing_key(f.cache_id, &f.url)).await;
            if nar.is_ok() && listing.is_ok() {
                let _ = self.storage.delete_nar_file(f.cache_id, &f.url).await;
            }
        }
    }

    /// The `.ls` listing of a path the cache holds (its size and bytes), `None` when the cache does not hold the
    /// path or the path has no listing (pushed before listings were written, or too large to list): Nix then
    /// reads the NAR itself. The caller checked the cache's read rules.
    pub async fn nar_listing<N: NarStore>(
        &self,
        nars: &N,
        cache: &Cache,
        hash_part: &str,
    ) -> Result<Option<(u64, ByteStream)>> {
        if !is_hash_part(hash_part) {
            return Ok(None);
        }
        let Some(path) = self.storage.cached_path(cache.id, hash_part).await? else {
            return Ok(None);
        };
        nars.open(&listing_key(cache.id, &path.url), None)
            .await
            .map_err(store_failure)
    }

    /// The build log `nix log --store <cache>` asks for (`log/<drv basename>`): the stored log of the
    /// derivation's build by an organization whose push cache this cache is now, since those builds are what
    /// the cache's paths come from; when several such organizations built it, the most recently updated build
    /// with a log. `None` for anything else: a derivation none of them built or whose build has no log yet, or
    /// a name that is not a `.drv`. The caller checked the cache's read rules: whoever reads a cache reads the
    /// logs of the builds that push to it (docs/security.md).
    pub async fn cache_build_log(&self, cache: &Cache, drv_basename: &str) -> Result<Option<super::LogText>> {
        let Some(drv) = drv_from_basename(drv_basename) else {
            return Ok(None);
        };
        let drv_path = drv.to_string();
        let mut builds = Vec::new();
        for subscriber in self.storage.subscribers(cache.id).await? {
            if !subscriber.push {
                continue;
            }
            if let Some(build) = self.storage.build(subscriber.org.id, &drv_path).await? {
                builds.push(build);
            }
        }
        builds.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.0.cmp(&b.id.0)));
        for build in &builds {
            if let Some(log) = self.stored_log(build).await? {
                return Ok(Some(log));
            }
        }
        Ok(None)
    }

    /// Removes paths not fetched since `now - ttl` (when a TTL is set), NAR files no path refers to (after a
    /// grace period for pushes in progress) and uploads left unfinished for [`UPLOAD_GRACE`]. Bytes go first,
    /// then rows, so a crash in between leaves a row the next sweep finishes, never a file nothing accounts
    /// for.
    pub async fn collect_garbage<N: NarStore>(&self, nars: &N, ttl: Option<chrono::TimeDelta>) -> Result<GcReport> {
        const BATCH: u32 = 500;
        let mut report = GcReport::default();
        let now = self.clock.now();
        if let Some(ttl) = ttl {
            loop {
                let stale = self.storage.stale_cached_paths(now - ttl, BATCH).await?;
                for p in &stale {
                    self.storage.delete_cached_path(p.cache_id, &p.hash_part).await?;
                    self.memo.forget_narinfo(p.cache_id, &p.hash_part);
                    report.paths += 1;
                }
                if (stale.len() as u32) < BATCH {
                    break;
                }
            }
        }
        loop {
            let orphans = self.storage.orphan_nar_files(now - ORPHAN_GRACE, BATCH).await?;
            for f in &orphans {
                nars.delete(&format!("{}/{}", f.cache_id, f.url))
                    .await
                    .map_err(store_failure)?;
                nars.delete(&listing_key(f.cache_id, &f.url))
                    .await
                    .map_err(store_failure)?;
                self.storage.delete_nar_file(f.cache_id, &f.url).await?;
                report.nar_files += 1;
            }
            if (orphans.len() as u32) < BATCH {
                break;
            }
        }
        report.uploads = nars.sweep(UPLOAD_GRACE).await.map_err(store_failure)?;
        Ok(report)
    }

    /// Removes every upload a previous run of the server left unfinished in the NAR store (it was killed
    /// mid-push): at start-up, before this process begins any upload of its own. Answers how many.
    pub async fn sweep_uploads_at_start<N: NarStore>(&self, nars: &N) -> Result<u64> {
        nars.sweep(std::time::Duration::ZERO).await.map_err(store_failure)
    }
}

/// Writes a NAR's listing next to it (nothing when it has none).
async fn store_listing<N: NarStore>(nars: &N, cache: crate::CacheId, url: &str, listing: Option<String>) -> Result<()> {
    let Some(listing) = listing else {
        return Ok(());
    };
    let mut upload = nars.begin(&listing_key(cache, url)).await.map_err(store_failure)?;
    if let Err(e) = upload.write(Bytes::from(listing)).await {
        let _ = upload.abort().await;
        return Err(store_failure(e));
    }
    upload.commit().await.map_err(store_failure)?;
    Ok(())
}

/// Removes a NAR and its listing after a failed push (best effort: collection removes what is left).
async fn delete_nar<N: NarStore>(nars: &N, cache: crate::CacheId, url: &str) {
    let _ = nars.delete(&format!("{cache}/{url}")).await;
    let _ = nars.delete(&listing_key(cache, url)).await;
}

/// 409 `path_exists`: the cache (or the stream, earlier) holds `store_path` with other contents.
fn path_exists(store_path: &str, nar_hash: &str) -> ServiceError {
    ServiceError::conflict(
        "path_exists",
        format!("the cache already holds {store_path} with NAR hash {nar_hash}; a path's contents are never replaced"),
    )
}

/// A push of a path the cache already holds: the same NAR is a no-op answering what is held; another NAR is
/// refused (409 `path_exists`). A cache never replaces what it has, so nothing is ever signed over bytes other
/// than those first accepted for a path.
fn same_path(existing: CachedPath, nar_hash: &str) -> Result<CachedPath> {
    if existing.nar_hash == nar_hash {
        Ok(existing)
    } else {
        Err(path_exists(&existing.store_path, &existing.nar_hash))
    }
}

/// Discards uploads (best effort: a leftover is swept).
async fn abort_all<U: NarUpload>(uploads: impl IntoIterator<Item = U>) {
    for upload in uploads {
        let _ = upload.abort().await;
    }
}

/// A path of an import read whole, waiting for its batch to be committed and recorded.
struct Received<U> {
    incoming: Incoming<U>,
    exported: ExportedPath,
}

/// Paths an import commits and records together, at most.
pub const IMPORT_BATCH_PATHS: usize = 64;
/// Compressed bytes (and listings) an import's batch gathers at most before it is committed: a NAR this
/// large ends its batch, so what a batch holds in memory stays bounded whatever the paths' sizes.
pub const IMPORT_BATCH_BYTES: u64 = 2 * 1024 * 1024;

/// Store paths one `missing_paths` question may ask about, at most.
pub const MAX_MISSING_QUERY: usize = 20_000;
/// Compressed bytes an import gathers before writing them to the NAR store.
const IMPORT_WRITE_AT: usize = 256 * 1024;

/// Where compressed bytes go: hashed, counted and gathered for the next write.
fn measure<'a>(
    sha: &'a mut Sha256,
    size: &'a mut u64,
    pending: &'a mut Vec<u8>,
) -> impl FnMut(&[u8]) -> std::result::Result<(), CodecError> + 'a {
    move |b: &[u8]| {
        sha.update(b);
        *size += b.len() as u64;
        pending.extend_from_slice(b);
        Ok(())
    }
}

/// A NAR being imported: compressed into the NAR store under a fresh name (the stream tells which path it
/// is only after it), measured as it goes.
struct Incoming<U> {
    upload: U,
    url: String,
    /// Until the NAR ends: a compressor holds megabytes, and an ended NAR waits for its batch (up to
    /// [`IMPORT_BATCH_PATHS`] of them) without it, so an import holds one at a time.
    compressor: Option<Compressor>,
    sha: Sha256,
    file_size: u64,
    pending: Vec<u8>,
}

impl<U: NarUpload> Incoming<U> {
    async fn begin<N: NarStore<Upload = U>>(nars: &N, cache: &Cache) -> Result<Self> {
        use rand::RngCore;
        let mut name = [0u8; 32];
        // The thread's CSPRNG (seeded from the OS): unguessable names without a system call per path.
        rand::thread_rng().fill_bytes(&mut name);
        let compression = cache.compression;
        let url = format!("nar/{}{}", nix32::encode(&name), compression.nar_suffix());
        let upload = nars.begin(&nar_key(cache, &url)).await.map_err(store_failure)?;
        let compressor = Compressor::new(compression).map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Self {
            upload,
            url,
            compressor: Some(compressor),
            sha: Sha256::new(),
            file_size: 0,
            pending: Vec::new(),
        })
    }

    /// Compresses the next bytes of the NAR.
    async fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        {
            let compressor = self
                .compressor
                .as_mut()
                .ok_or_else(|| ServiceError::Internal("NAR bytes after its end".to_owned()))?;
            let mut sink = measure(&mut self.sha, &mut self.file_size, &mut self.pending);
            compressor
                .feed(bytes, &mut sink)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        self.flush(false).await
    }

    /// Ends the compressed file, lets its compressor go, and writes what is left of the file.
    async fn end(&mut self) -> Result<()> {
        if let Some(mut compressor) = self.compressor.take() {
            let mut sink = measure(&mut self.sha, &mut self.file_size, &mut self.pending);
            compressor
                .finish(&mut sink)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        self.flush(true).await
    }

    async fn flush(&mut self, all: bool) -> Result<()> {
        if self.pending.is_empty() || (!all && self.pending.len() < IMPORT_WRITE_AT) {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.pending));
        self.upload.write(chunk).await.map_err(store_failure)
    }
}

fn refusal(r: Refusal) -> ServiceError {
    match r {
        Refusal::Codec(e) => invalid("invalid_compression", e.to_string()),
        Refusal::Nar(e) => invalid("invalid_nar", format!("the upload is not a valid NAR: {e}")),
    }
}

/// Compares what a narinfo claims with what the server measured.
fn check_against_file(info: &NarInfo, file: &NarFile) -> std::result::Result<(), String> {
    let measured_nar = Hash::parse(&file.nar_hash).map_err(|_| "stored NAR hash is invalid".to_owned())?;
    if info.nar_hash != measured_nar {
        return Err(format!(
            "NarHash {} does not match the uploaded NAR's {}",
            info.nar_hash, file.nar_hash
        ));
    }
    if info.nar_size != file.nar_size {
        return Err(format!(
            "NarSize {} does not match the uploaded NAR's {}",
            info.nar_size, file.nar_size
        ));
    }
    if let Some(h) = &info.file_hash {
        let measured = Hash::parse(&file.file_hash).map_err(|_| "stored file hash is invalid".to_owned())?;
        if *h != measured {
            return Err(format!(
                "FileHash {h} does not match the uploaded file's {}",
                file.file_hash
            ));
        }
    }
    if let Some(size) = info.file_size
        && size != file.file_size
    {
        return Err(format!(
            "FileSize {size} does not match the uploaded file's {}",
            file.file_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_keys_have_their_read_rights_remembered() {
        assert!(is_api_key("GRADabcdef"));
        // A job token's rights end with its job (`forget_job`), which the read memo does not follow.
        assert!(!is_api_key(&format!(
            "{}header.claims.sig",
            crate::auth::JOB_TOKEN_PREFIX
        )));
        assert!(!is_api_key("eyJhbGciOiJIUzI1NiJ9.session.sig"));
        assert!(!is_api_key(""));
    }

    #[test]
    fn nar_urls() {
        let h = "1".repeat(52);
        assert_eq!(
            NarUrl::parse(&format!("nar/{h}.nar.zst")).map(|u| u.compression),
            Some(Compression::Zstd)
        );
        assert_eq!(
            NarUrl::parse(&format!("nar/{h}.nar.xz")).map(|u| u.compression),
            Some(Compression::Xz)
        );
        assert_eq!(
            NarUrl::parse(&format!("nar/{h}.nar")).map(|u| u.compression),
            Some(Compression::None)
        );
        for bad in [
            format!("nar/{h}.nar.gz"),
            format!("{h}.nar"),
            "nar/short.nar".into(),
            format!("nar/../{h}.nar"),
        ] {
            assert!(NarUrl::parse(&bad).is_none(), "{bad}");
        }
        let e = "e".repeat(52);
        assert!(
            NarUrl::parse(&format!("nar/{e}.nar")).is_none(),
            "'e' is not in the nix32 alphabet"
        );
    }
}
