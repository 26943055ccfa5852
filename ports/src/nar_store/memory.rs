//! `NarStore` kept in memory: for service tests, and the reference the contract suite is checked against.
//! Unlike the real adapters it holds whole objects in memory; it is not meant for real data.

use bytes::{Bytes, BytesMut};
use gradient_domain::ports::nar_store::{ByteRange, ByteStream, NarStore, NarUpload, Result, check_key, clamp_range};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Reads are served in chunks of this size, like the real adapters' streams.
const CHUNK: usize = 64 * 1024;

/// An in-memory `NarStore`. Clones share the same objects.
#[derive(Clone, Debug, Default)]
pub struct MemoryNarStore {
    objects: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl MemoryNarStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Bytes>) -> T) -> T {
        // Every change is a single map operation, so a poisoned lock cannot hide a half-done one.
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut objects)
    }
}

impl NarStore for MemoryNarStore {
    type Upload = MemoryUpload;

    async fn begin(&self, key: &str) -> Result<MemoryUpload> {
        check_key(key)?;
        Ok(MemoryUpload {
            store: self.clone(),
            key: key.to_owned(),
            data: BytesMut::new(),
        })
    }

    async fn open(&self, key: &str, range: Option<ByteRange>) -> Result<Option<(u64, ByteStream)>> {
        check_key(key)?;
        let Some(object) = self.with(|o| o.get(key).cloned()) else {
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
        Ok(self.with(|o| o.get(key).map(|b| b.len() as u64)))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        Ok(self.with(|o| o.remove(key).is_some()))
    }
}

/// An upload to a [`MemoryNarStore`]: the bytes stay private to it until `commit`.
#[derive(Debug)]
pub struct MemoryUpload {
    store: MemoryNarStore,
    key: String,
    data: BytesMut,
}

impl NarUpload for MemoryUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self) -> Result<u64> {
        let size = self.data.len() as u64;
        let data = self.data.freeze();
        self.store.with(|o| o.insert(self.key, data));
        Ok(size)
    }

    async fn abort(self) -> Result<()> {
        Ok(())
    }
}
