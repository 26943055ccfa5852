//! The NAR store port on an S3-compatible object store (AWS S3, MinIO, Garage, R2, ...): each object is
//! `<prefix>/<key>` in one bucket.
//!
//! Uploads buffer one part at a time and send it as a part of a multipart upload, which S3 only turns into
//! an object on completion: nothing is visible before `commit`. Objects that fit in one part are sent with a
//! single PUT at commit instead. An upload dropped unfinished aborts its multipart upload from a background
//! task when a Tokio runtime is still there. The ones a crash leaves behind (incomplete multipart uploads under
//! the prefix, of keys a Gradient server writes: `<cache id>/…`) are what `sweep` aborts: this process's own as old as their last part, others as old as S3's
//! `Initiated` says (moto answers a fixed date in 2010, so there they always count as old); a lifecycle rule aborting incomplete multipart
//! uploads after a day does the same for a bucket no Gradient sweeps any more. An HTTP 507 (a full
//! S3-compatible server, e.g. MinIO's disks) is `Full`.
//!
//! Reads ask for the object's size and ETag, then GET the wanted range with `If-Match` on that ETag, so a
//! stream never mixes two versions of an object; the body is passed on as it arrives.

mod upload;

use bytes::Bytes;
use futures_util::StreamExt;
use gradient_domain::ports::nar_store::{
    ByteRange, ByteStream, NarStore, NarStoreError, NarUpload, Result, check_key, clamp_range,
};
use s3::Bucket;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::region::Region;
use s3::request::DataStream;
use std::sync::Arc;
use std::time::Duration;

pub use upload::S3Upload;

/// Longest wait for any request but a download, which can last as long as its reader takes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the next piece of a download's body while the reader is waiting for it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often `open` retries when the object changes between finding its size and reading it.
const OPEN_ATTEMPTS: usize = 3;

/// Where and how to reach the bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The server's base URL, e.g. `https://s3.example.com` or `http://127.0.0.1:9000`. Empty for AWS, whose
    /// endpoint follows from the region.
    pub endpoint: String,
    /// e.g. `us-east-1`; anything the server accepts when it is not AWS.
    pub region: String,
    pub bucket: String,
    /// Prepended (with a `/`) to every key, so several stores can share a bucket; empty for none. It must
    /// itself be a valid key (see `check_key`), or empty.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key`; most self-hosted servers
    /// need it.
    pub path_style: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .finish()
    }
}

/// A `NarStore` on an S3 bucket. Clones share the same HTTP client.
#[derive(Clone)]
pub struct S3NarStore {
    /// For every request but downloads: bounded by `REQUEST_TIMEOUT`.
    bucket: Arc<Bucket>,
    /// For downloads: no overall deadline, `IDLE_TIMEOUT` between pieces instead.
    reader: Arc<Bucket>,
    /// The multipart uploads this process has under way, by id, with when each last sent a part.
    live: upload::Live,
    /// Empty, or ending with `/`.
    prefix: String,
}

impl std::fmt::Debug for S3NarStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3NarStore")
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3NarStore {
    /// Connects to the bucket and checks that it can be read: `Unavailable` (saying why) when the server
    /// cannot be reached, refuses the credentials, or has no such bucket; `InvalidKey` for a bad prefix.
    pub async fn new(config: S3Config) -> Result<Self> {
        let prefix = match config.prefix.trim_matches('/') {
            "" => String::new(),
            prefix => {
                check_key(prefix)?;
                format!("{prefix}/")
            }
        };
        let region = if config.endpoint.is_empty() {
            config
                .region
                .parse::<Region>()
                .map_err(|e| NarStoreError::Unavailable(format!("region {:?}: {e}", config.region)))?
        } else {
            Region::Custom {
                region: config.region.clone(),
                endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            }
        };
        let credentials = Credentials::new(Some(&config.access_key), Some(&config.secret_key), None, None, None)
            .map_err(|e| NarStoreError::Unavailable(format!("S3 credentials: {e}")))?;
        let mut bucket = *Bucket::new(&config.bucket, region, credentials).map_err(s3_error)?;
        if config.path_style {
            bucket.set_path_style();
        }
        bucket.set_request_timeout(Some(REQUEST_TIMEOUT));
        let mut reader = bucket.clone();
        reader.set_request_timeout(None);
        let store = Self {
            bucket: Arc::new(bucket),
            reader: Arc::new(reader),
            prefix,
            live: upload::Live::default(),
        };
        store.probe().await?;
        Ok(store)
    }

    fn path(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Reads a key no object can have (keys cannot start with `.`): S3 answers "no such key" when the bucket
    /// is there and readable, and something else otherwise.
    async fn probe(&self) -> Result<()> {
        let path = format!("{}.gradient-probe", self.prefix);
        let response = self.bucket.get_object(&path).await.map_err(s3_error)?;
        let status = response.status_code();
        let body = String::from_utf8_lossy(response.as_slice());
        let bucket = self.bucket.name();
        match status {
            200..=299 => Ok(()),
            404 if body.contains("NoSuchBucket") => Err(NarStoreError::Unavailable(format!(
                "S3 bucket {bucket:?} does not exist"
            ))),
            404 => Ok(()),
            403 => Err(NarStoreError::Unavailable(format!(
                "S3 refused access to bucket {bucket:?}: check the access key, secret key and region"
            ))),
            _ => Err(status_error("GET", &path, status)),
        }
    }

    /// The object's size and ETag, `None` when absent.
    async fn head(&self, path: &str) -> Result<Option<(u64, Option<String>)>> {
        let (head, status) = self.bucket.head_object(path).await.map_err(s3_error)?;
        match status {
            404 => Ok(None),
            200..=299 => {
                let size = head
                    .content_length
                    .and_then(|l| u64::try_from(l).ok())
                    .ok_or_else(|| NarStoreError::Unavailable(format!("HEAD {path}: no valid Content-Length")))?;
                Ok(Some((size, head.e_tag)))
            }
            _ => Err(status_error("HEAD", path, status)),
        }
    }
}

/// How rust-s3's errors map onto the port's.
pub(crate) fn s3_error(e: S3Error) -> NarStoreError {
    match &e {
        S3Error::Reqwest(r) if r.is_timeout() => NarStoreError::Timeout,
        S3Error::HttpFailWithBody(507, _) => NarStoreError::Full(format!("S3: {e}")),
        _ => NarStoreError::Unavailable(format!("S3: {e}")),
    }
}

pub(crate) fn status_error(method: &str, path: &str, status: u16) -> NarStoreError {
    let message = format!("S3 {method} {path}: HTTP {status}");
    if status == 507 {
        NarStoreError::Full(message)
    } else {
        NarStoreError::Unavailable(message)
    }
}

/// The time an S3 listing gives (`2026-12-05T17:45:00.000Z`) as a system time; `None` when unreadable.
fn s3_time(text: &str) -> Option<std::time::SystemTime> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    let millis = u64::try_from(at.timestamp_millis()).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_millis(millis))
}

/// Whether `value` can go in an HTTP header as is (rust-s3 panics on one that cannot).
fn header_safe(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The body of a download, with a deadline on each wait for the next piece.
fn body_stream(body: DataStream) -> ByteStream {
    Box::pin(futures_util::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(e))) => Some((Err(s3_error(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(NarStoreError::Timeout), None)),
        }
    }))
}

fn empty_stream() -> ByteStream {
    Box::pin(futures_util::stream::empty::<Result<Bytes>>())
}

/// Commits of one group (`commit_all`) sent at once, at most.
const COMMITS_IN_FLIGHT: usize = 8;

impl NarStore for S3NarStore {
    type Upload = S3Upload;

    async fn begin(&self, key: &str) -> Result<S3Upload> {
        let path = self.path(key)?;
        Ok(S3Upload::new(self.bucket.clone(), path, self.live.clone()))
    }

    async fn open(&self, key: &str, range: Option<ByteRange>) -> Result<Option<(u64, ByteStream)>> {
        let path = self.path(key)?;
        for _ in 0..OPEN_ATTEMPTS {
            let Some((size, etag)) = self.head(&path).await? else {
                return Ok(None);
            };
            let wanted = clamp_range(range, size);
            if wanted.is_empty() {
                return Ok(Some((size, empty_stream())));
            }
            let whole = wanted.start == 0 && wanted.end == size;
            let mut reader = (*self.reader).clone();
            if !whole {
                reader.add_header("range", &format!("bytes={}-{}", wanted.start, wanted.end - 1));
            }
            if let Some(etag) = etag.filter(|e| header_safe(e)) {
                reader.add_header("if-match", &etag);
            }
            let response = reader.get_object_stream(&path).await.map_err(s3_error)?;
            match response.status_code {
                200 if whole => return Ok(Some((size, body_stream(response.bytes)))),
                206 if !whole => return Ok(Some((size, body_stream(response.bytes)))),
                200 => {
                    return Err(NarStoreError::Unavailable(format!(
                        "S3 GET {path}: the server ignored the Range header"
                    )));
                }
                // Replaced (412) or deleted (404) since the HEAD: look again.
                404 | 412 => continue,
                status => return Err(status_error("GET", &path, status)),
            }
        }
        Err(NarStoreError::Unavailable(format!(
            "S3 GET {path}: the object kept changing while being opened"
        )))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        Ok(self.head(&path).await?.map(|(size, _)| size))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        // S3 deletes absent keys without complaint, so whether there was something comes from a HEAD first.
        if self.head(&path).await?.is_none() {
            return Ok(false);
        }
        let response = self.bucket.delete_object(&path).await.map_err(s3_error)?;
        match response.status_code() {
            200..=299 => Ok(true),
            404 => Ok(false),
            status => Err(status_error("DELETE", &path, status)),
        }
    }

    async fn commit_all(&self, uploads: Vec<S3Upload>) -> Result<Vec<u64>> {
        // Each commit is its own request (the upload's completion is its commit): several in flight at once,
        // answers in order. A failed one fails the group; the others are committed or not, each whole.
        let done: Vec<Result<u64>> = futures_util::stream::iter(uploads)
            .map(|u| u.commit())
            .buffered(COMMITS_IN_FLIGHT)
            .collect()
            .await;
        done.into_iter().collect()
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64> {
        let prefix = (!self.prefix.is_empty()).then_some(self.prefix.as_str());
        let pages = self
            .bucket
            .list_multiparts_uploads(prefix, None)
            .await
            .map_err(s3_error)?;
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        // Only uploads of keys a Gradient server writes (`<cache id>/…`): a bucket without a prefix may hold
        // other programs' uploads, which are theirs to finish.
        let ours = |key: &str| {
            key.strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(first, _)| {
                    first.len() == 36 && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                })
        };
        for upload in pages.iter().flat_map(|p| &p.uploads).filter(|u| ours(&u.key)) {
            // This process's own uploads are as old as their last part; others (a crashed process's) as S3
            // says they are, an unreadable time counting as old.
            let age = match self.live.idle(&upload.id) {
                Some(idle) => idle,
                None => s3_time(&upload.initiated)
                    .map_or(Duration::MAX, |at| now.duration_since(at).unwrap_or(Duration::ZERO)),
            };
            if age < older_than {
                continue;
            }
            match self.bucket.abort_upload(&upload.key, &upload.id).await {
                Ok(()) => removed += 1,
                // Completed or aborted meanwhile.
                Err(S3Error::HttpFailWithBody(404, _)) => {}
                Err(e) => return Err(s3_error(e)),
            }
        }
        Ok(removed)
    }
}
