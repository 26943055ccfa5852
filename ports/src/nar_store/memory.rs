//! `NarStore` kept in memory: for service tests, and the reference the contract suite is checked against.
//! Unlike the real adapters it holds whole objects in memory; it is not meant for real data.
//!
//! Like a real backend, an upload's bytes are staged in the store (not in the upload) until `commit`, so an
//! upload that is neither committed, aborted nor dropped (`std::mem::forget`, standing for a process that
//! died) leaves them behind for [`NarStore::sweep`]. Service tests can also make the store fail: full beyond
//! a number of bytes ([`MemoryNarStore::limit_bytes`]) or unavailable ([`MemoryNarStore::set_unavailable`]).

use bytes::{Bytes, BytesMut};
use gradient_domain::ports::nar_store::{
    ByteRange, ByteStream, NarStore, NarStoreError, NarUpload, Result, check_key, clamp_range,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Reads are served in chunks of this size, like the real adapters' streams.
const CHUNK: usize = 64 * 1024;

/// An upload's staged bytes and when it was last written to.
#[derive(Debug)]
struct Staged {
    data: BytesMut,
    touched: Instant,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<String, Bytes>,
    staged: HashMap<u64, Staged>,
    next_upload: u64,
    /// Bytes the store holds at most (objects and staged uploads), when limited.
    limit: Option<u64>,
    unavailable: bool,
}

impl State {
    fn used(&self) -> u64 {
        let objects: usize = self.objects.values().map(Bytes::len).sum();
        let staged: usize = self.staged.values().map(|s| s.data.len()).sum();
        (objects + staged) as u64
    }

    fn available(&self) -> Result<()> {
        if self.unavailable {
            return Err(NarStoreError::Unavailable(
                "the in-memory store is set unavailable".to_owned(),
            ));
        }
        Ok(())
    }
}

/// An in-memory `NarStore`. Clones share the same objects.
#[derive(Clone, Debug, Default)]
pub struct MemoryNarStore {
    state: Arc<Mutex<State>>,
}

impl MemoryNarStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // Every change is a single map operation, so a poisoned lock cannot hide a half-done one.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// From now on, a write that would make the store hold more than `bytes` (objects and uploads in
    /// progress) fails with `Full`, as a full disk does.
    pub fn limit_bytes(&self, bytes: u64) {
        self.with(|s| s.limit = Some(bytes));
    }

    /// Makes every operation fail with `Unavailable` (an unreachable backend) until set back.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.with(|s| s.unavailable = unavailable);
    }

    /// How many uploads hold staged bytes: begun and neither committed, aborted nor dropped.
    pub fn uploads_in_progress(&self) -> usize {
        self.with(|s| s.staged.len())
    }
}

impl NarStore for MemoryNarStore {
    type Upload = MemoryUpload;

    async fn begin(&self, key: &str) -> Result<MemoryUpload> {
        check_key(key)?;
        let id = self.with(|s| {
            s.available()?;
            s.next_upload += 1;
            let id = s.next_upload;
            s.staged.insert(
                id,
                Staged {
                    data: BytesMut::new(),
                    touched: Instant::now(),
                },
            );
            Ok(id)
        })?;
        Ok(MemoryUpload {
            store: self.clone(),
            key: key.to_owned(),
            id,
            finished: false,
        })
    }

    async fn open(&self, key: &str, range: Option<ByteRange>) -> Result<Option<(u64, ByteStream)>> {
        check_key(key)?;
        let Some(object) = self.with(|s| s.available().map(|()| s.objects.get(key).cloned()))? else {
            return Ok(None);
        };
        let size = object.len() as u64;
        let range = clamp_range(range, size);
        // Both bounds are at most `size`, which came from a `usize`.
        let mut rest = object.slice(range.start as usize..range.end as usize);
        let chunks = std::iter::from_fn(move || (!rest.is_empty()).then(|| Ok(rest.split_to(rest.len().min(CHUNK)))));
        let stream: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        Ok(Some((size, stream)))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        self.with(|s| s.available().map(|()| s.objects.get(key).map(|b| b.len() as u64)))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.with(|s| s.available().map(|()| s.objects.remove(key).is_some()))
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64> {
        self.with(|s| {
            s.available()?;
            let before = s.staged.len();
            s.staged.retain(|_, staged| staged.touched.elapsed() < older_than);
            Ok((before - s.staged.len()) as u64)
        })
    }
}

/// An upload to a [`MemoryNarStore`]: its bytes are staged in the store, invisible until `commit`.
#[derive(Debug)]
pub struct MemoryUpload {
    store: MemoryNarStore,
    key: String,
    id: u64,
    /// Set once committed or aborted, so `Drop` leaves the store alone.
    finished: bool,
}

impl NarUpload for MemoryUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let id = self.id;
        self.store.with(|s| {
            s.available()?;
            if let Some(limit) = s.limit
                && s.used() + chunk.len() as u64 > limit
            {
                return Err(NarStoreError::Full(format!(
                    "the in-memory store holds at most {limit} bytes"
                )));
            }
            let staged = s.staged.get_mut(&id).ok_or(NarStoreError::NotFound)?;
            staged.data.extend_from_slice(&chunk);
            staged.touched = Instant::now();
            Ok(())
        })
    }

    async fn commit(mut self) -> Result<u64> {
        let (id, key) = (self.id, std::mem::take(&mut self.key));
        let committed = self.store.with(|s| {
            s.available()?;
            let staged = s.staged.remove(&id).ok_or(NarStoreError::NotFound)?;
            let size = staged.data.len() as u64;
            s.objects.insert(key, staged.data.freeze());
            Ok(size)
        });
        // On failure, dropping `self` discards what was staged.
        self.finished = committed.is_ok();
        committed
    }

    async fn abort(mut self) -> Result<()> {
        self.finished = true;
        let id = self.id;
        self.store.with(|s| s.staged.remove(&id));
        Ok(())
    }
}

impl Drop for MemoryUpload {
    fn drop(&mut self) {
        if !self.finished {
            let id = self.id;
            self.store.with(|s| s.staged.remove(&id));
        }
    }
}
