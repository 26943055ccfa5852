//! Where the binary cache keeps NAR files (and any other large blob): a flat namespace of keys, each naming
//! an immutable byte string. Adapters: `nar-store-fs` (a directory) and `nar-store-s3` (an S3 bucket);
//! `gradient-ports` has the in-memory implementation and the contract suite all of them pass.
//!
//! Conventions every implementation MUST follow:
//! * Keys are relative paths such as `<cache-uuid>/nar/<nix32>.nar.zst`; [`check_key`] says which are valid,
//!   and every operation refuses any other key with [`NarStoreError::InvalidKey`] before touching the backend.
//! * "Absent" is `Ok(None)` (or `Ok(false)` for [`NarStore::delete`]), never an error.
//! * Writes are atomic: nothing is visible under a key until [`NarUpload::commit`], which makes the whole
//!   object visible at once, replacing the previous one. A reader that opened the previous object either reads
//!   it whole or fails; it never sees a mix. An upload aborted, failed or dropped leaves nothing behind
//!   (dropping is best-effort cleanup: prefer [`NarUpload::abort`]).
//! * Until `commit`, an upload's bytes live under the adapter's own temporary names, which no key can name
//!   (a directory's `.tmp/`, a bucket's incomplete multipart uploads): a process that dies mid-upload leaves
//!   them there, invisible, and [`NarStore::sweep`] removes them. A swept upload that is still running never
//!   commits a part: its `commit` fails with [`NarStoreError::NotFound`] (or, if it had sent nothing to the
//!   backend yet, commits the whole object).
//! * Data is streamed both ways: an implementation never holds a whole object in memory (a bounded buffer,
//!   such as one multipart part, is fine).
//! * Ranges are clamped to the object, HTTP-style: `(start, end)` reads `start..=min(end, size - 1)`. A range
//!   that selects nothing (`start >= size`, or `end < start`) is not an error: the object is still reported,
//!   with its size and an empty stream, so a caller can answer "416 Range Not Satisfiable" itself.

use bytes::Bytes;
use futures_core::Stream;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Keys longer than this are refused: S3's own limit, so every backend accepts the same keys.
pub const MAX_KEY_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarStoreError {
    /// State an operation needs vanished under it: an upload whose temporary file or multipart upload was
    /// removed by someone else before `commit`. Never used for an absent key: that is `Ok(None)`/`Ok(false)`.
    #[error("not found")]
    NotFound,
    /// The key is not one [`check_key`] accepts. The text names the key and the rule it breaks.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The backend failed (I/O error, disk full, permission denied, unreachable server, HTTP error status,
    /// missing bucket); retrying later may work. The text is for logs only.
    #[error("NAR store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time (a request or I/O timeout); retrying later may work.
    #[error("NAR store timed out")]
    Timeout,
    /// The backend has no room for the write (disk full, quota exceeded); retrying after space is freed may
    /// work. The text is for logs only.
    #[error("NAR store full: {0}")]
    Full(String),
}

pub type Result<T> = std::result::Result<T, NarStoreError>;

/// `(start, inclusive end)` of the bytes to read; `None` as end means "to the end of the object".
pub type ByteRange = (u64, Option<u64>);

/// The bytes of an object, in chunks of the implementation's choosing. An error item ends the stream.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Stores objects under keys.
pub trait NarStore: Send + Sync + 'static {
    type Upload: NarUpload;

    /// Starts an upload to `key`. Nothing is visible under `key` until the upload's `commit`.
    fn begin(&self, key: &str) -> impl Future<Output = Result<Self::Upload>> + Send;

    /// Opens the object under `key`: `Ok(None)` when absent, else its total size and a stream of the requested
    /// bytes: `range`, clamped as the module docs say, or the whole object when `None`.
    fn open(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> impl Future<Output = Result<Option<(u64, ByteStream)>>> + Send;

    /// The object's size in bytes, `Ok(None)` when absent.
    fn size(&self, key: &str) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Deletes the object; `Ok(false)` when it was absent. Readers that already opened it may finish reading.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Removes what uploads neither committed nor aborted left in the backend (a crashed process's temporary
    /// files, incomplete multipart uploads) whose last activity the backend knows of (when the upload began
    /// or, where the backend tracks it, was last written to) is at least `older_than` ago; answers how many.
    /// Never touches a committed object. `Duration::ZERO` removes every one, running uploads included: for a
    /// process starting, when no upload of its own can be running.
    fn sweep(&self, older_than: Duration) -> impl Future<Output = Result<u64>> + Send;

    /// Commits several uploads as one group: once it answers, every object is visible and durable, as if
    /// each had been committed; answers their sizes, in order. Backends that pay per commit for durability
    /// (a directory's fsyncs) pay once per group where they can. On error, each key holds its previous
    /// object or the whole new one (as [`NarUpload::commit`] says), and nothing of an upload that did not
    /// commit remains. By default the uploads commit one after the other.
    fn commit_all(&self, uploads: Vec<Self::Upload>) -> impl Future<Output = Result<Vec<u64>>> + Send {
        async move {
            let mut sizes = Vec::with_capacity(uploads.len());
            let mut uploads = uploads.into_iter();
            while let Some(upload) = uploads.next() {
                match upload.commit().await {
                    Ok(size) => sizes.push(size),
                    Err(e) => {
                        for rest in uploads {
                            let _ = rest.abort().await;
                        }
                        return Err(e);
                    }
                }
            }
            Ok(sizes)
        }
    }
}

/// An upload in progress, from [`NarStore::begin`]. It ends with `commit` or `abort`; dropped without
/// either, it is discarded (best-effort: cleanup that needs I/O may be left to a background task).
pub trait NarUpload: Send {
    /// Appends `chunk` (which may be empty) to the object being written.
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<()>> + Send;

    /// Makes the object visible under its key, replacing an existing one; answers its size. On error no part
    /// of the new object is ever visible: the key holds the previous object (if any) or, when the failure came
    /// after the switch (a lost response, a failed directory sync), the whole new one. Uploading again is safe.
    fn commit(self) -> impl Future<Output = Result<u64>> + Send;

    /// Discards everything written; nothing remains, and an existing object under the key is untouched.
    fn abort(self) -> impl Future<Output = Result<()>> + Send;
}

/// Accepts the keys every backend can store the same way: relative paths of non-empty `/`-separated
/// segments, each of ASCII letters, digits, `.`, `_` and `-`, none starting with `.` (so no `.`, `..` or
/// hidden names, which leaves room for an adapter's own `.tmp/`), at most [`MAX_KEY_LEN`] bytes in all.
pub fn check_key(key: &str) -> Result<()> {
    let invalid = |why: &str| Err(NarStoreError::InvalidKey(format!("{key:?}: {why}")));
    if key.is_empty() {
        return invalid("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("too long");
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return invalid(&format!("character {c:?} not allowed"));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return invalid("empty path segment (leading, trailing or double '/')");
        }
        if segment.starts_with('.') {
            return invalid("path segment starting with '.'");
        }
    }
    Ok(())
}

/// The bytes `range` selects in an object of `size` bytes, as a half-open `start..end` (empty when it selects
/// nothing), following the clamping rule in the module docs.
pub fn clamp_range(range: Option<ByteRange>, size: u64) -> std::ops::Range<u64> {
    let (start, end) = match range {
        None => (0, size),
        Some((start, end)) => {
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            (start.min(size), end)
        }
    };
    if start >= end { start..start } else { start..end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_keys() {
        for key in [
            "a",
            "0c9a5b2e-7d1f-4a53-9a57-58c8b1e7a0f3/nar/1b9p07z77phvv2hf6gm9f28syp39f1ag.nar.zst",
            "x/y_z-1.2",
            "a..b",
            &"k".repeat(MAX_KEY_LEN),
        ] {
            assert_eq!(check_key(key), Ok(()), "{key:?}");
        }
    }

    #[test]
    fn invalid_keys() {
        for key in [
            "",
            "/abs",
            "trailing/",
            "a//b",
            "..",
            "a/../b",
            "./a",
            ".tmp/x",
            "a/.hidden",
            "sp ace",
            "back\\slash",
            "nul\0",
            "é",
            "q?x",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(
                matches!(check_key(key), Err(NarStoreError::InvalidKey(_))),
                "{key:?} must be refused"
            );
        }
    }

    #[test]
    fn ranges_are_clamped() {
        let cases: &[(Option<ByteRange>, u64, std::ops::Range<u64>)] = &[
            (None, 10, 0..10),
            (None, 0, 0..0),
            (Some((0, None)), 10, 0..10),
            (Some((3, None)), 10, 3..10),
            (Some((3, Some(5))), 10, 3..6),
            (Some((9, Some(9))), 10, 9..10),
            (Some((8, Some(100))), 10, 8..10),
            (Some((10, None)), 10, 10..10),
            (Some((15, Some(20))), 10, 10..10),
            (Some((5, Some(4))), 10, 5..5),
            (Some((0, Some(u64::MAX))), 10, 0..10),
            (Some((0, Some(0))), 0, 0..0),
        ];
        for (range, size, expected) in cases {
            assert_eq!(clamp_range(*range, *size), *expected, "{range:?} of {size}");
        }
    }
}
