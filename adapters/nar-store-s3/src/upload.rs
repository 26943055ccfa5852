//! Uploads: one part buffered at a time, sent as parts of a multipart upload.

use crate::{s3_error, status_error};
use bytes::Bytes;
use gradient_domain::ports::nar_store::{NarStoreError, NarUpload, Result};
use s3::Bucket;
use s3::error::S3Error;
use s3::serde_types::Part;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The multipart uploads of one store (and its clones) under way in this process, by id, with when each last
/// sent a part: their age for `sweep`, by this process's clock rather than the server's `Initiated` (which
/// some S3-compatible servers do not keep).
#[derive(Clone, Debug, Default)]
pub(crate) struct Live(Arc<Mutex<HashMap<String, Instant>>>);

impl Live {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Instant>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn touch(&self, id: &str) {
        self.with(|m| m.insert(id.to_owned(), Instant::now()));
    }

    fn end(&self, id: &str) {
        self.with(|m| m.remove(id));
    }

    /// How long the upload has sent nothing, `None` when it is not one of this process's.
    pub(crate) fn idle(&self, id: &str) -> Option<Duration> {
        self.with(|m| m.get(id).map(Instant::elapsed))
    }
}

/// The first parts' size. S3 wants at least 5 MiB in every part but the last, and at most 10,000 parts.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts double in size every this many, so the 10,000-part limit never caps an object (8 MiB parts alone
/// would stop at 78 GiB) while ordinary NARs keep an 8 MiB buffer.
const PARTS_PER_SIZE: usize = 1000;

const CONTENT_TYPE: &str = "application/octet-stream";

/// An upload to an [`S3NarStore`](crate::S3NarStore). Dropped unfinished, it aborts its multipart upload in
/// the background.
pub struct S3Upload {
    bucket: Arc<Bucket>,
    path: String,
    /// Bytes not sent yet: less than one part between calls.
    buffer: Vec<u8>,
    /// Set once the first part is sent.
    upload_id: Option<String>,
    parts: Vec<Part>,
    size: u64,
    /// Set once committed or aborted, so `Drop` leaves S3 alone.
    finished: bool,
    live: Live,
}

impl std::fmt::Debug for S3Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Upload")
            .field("path", &self.path)
            .field("upload_id", &self.upload_id)
            .field("parts", &self.parts.len())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Maps an error of a request inside a multipart upload: the upload having vanished is `NotFound`.
fn multipart_error(e: S3Error) -> NarStoreError {
    match &e {
        S3Error::HttpFailWithBody(404, body) if body.contains("NoSuchUpload") => NarStoreError::NotFound,
        _ => s3_error(e),
    }
}

/// Whether rust-s3 refused a successful completion: it insists on S3's root element
/// `CompleteMultipartUploadResult`, while some compatible servers (moto) answer with
/// `CompleteMultipartUploadResponse` and the same contents.
fn completed_anyway(e: &S3Error) -> bool {
    matches!(e, S3Error::HttpFailWithBody(200, body)
        if body.contains("<CompleteMultipartUploadResponse") && !body.contains("<Error"))
}

impl S3Upload {
    pub(crate) fn new(bucket: Arc<Bucket>, path: String, live: Live) -> Self {
        Self {
            bucket,
            path,
            buffer: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            size: 0,
            finished: false,
            live,
        }
    }

    fn part_size(&self) -> usize {
        PART_SIZE << (self.parts.len() / PARTS_PER_SIZE).min(6)
    }

    /// Sends `part` as the next part, starting the multipart upload if this is the first.
    async fn send_part(&mut self, part: Vec<u8>) -> Result<()> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let started = self
                    .bucket
                    .initiate_multipart_upload(&self.path, CONTENT_TYPE)
                    .await
                    .map_err(s3_error)?;
                self.upload_id = Some(started.upload_id.clone());
                started.upload_id
            }
        };
        self.live.touch(&upload_id);
        let number =
            u32::try_from(self.parts.len() + 1).map_err(|_| NarStoreError::Unavailable("too many parts".to_owned()))?;
        let sent = self
            .bucket
            .put_multipart_chunk(part, &self.path, number, &upload_id, CONTENT_TYPE)
            .await
            .map_err(multipart_error)?;
        self.parts.push(sent);
        Ok(())
    }
}

impl NarUpload for S3Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.size += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        while self.buffer.len() >= self.part_size() {
            let rest = self.buffer.split_off(self.part_size());
            let part = std::mem::replace(&mut self.buffer, rest);
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn commit(mut self) -> Result<u64> {
        match self.upload_id.clone() {
            None => {
                let response = self
                    .bucket
                    .put_object(&self.path, &self.buffer)
                    .await
                    .map_err(s3_error)?;
                if !(200..300).contains(&response.status_code()) {
                    return Err(status_error("PUT", &self.path, response.status_code()));
                }
            }
            Some(upload_id) => {
                if !self.buffer.is_empty() {
                    let last = std::mem::take(&mut self.buffer);
                    self.send_part(last).await?;
                }
                let parts = std::mem::take(&mut self.parts);
                match self
                    .bucket
                    .complete_multipart_upload(&self.path, &upload_id, parts)
                    .await
                {
                    Ok(response) => match response.status_code() {
                        200..=299 => {}
                        404 => return Err(NarStoreError::NotFound),
                        status => return Err(status_error("POST (complete)", &self.path, status)),
                    },
                    Err(e) if completed_anyway(&e) => {}
                    Err(e) => return Err(multipart_error(e)),
                }
            }
        }
        self.finished = true;
        Ok(self.size)
    }

    async fn abort(mut self) -> Result<()> {
        self.finished = true;
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        self.live.end(&upload_id);
        match self.bucket.abort_upload(&self.path, &upload_id).await {
            Ok(()) => Ok(()),
            // Already gone: aborted by a failed part, or by the bucket's lifecycle rules.
            Err(S3Error::HttpFailWithBody(404, _)) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if let Some(id) = &self.upload_id {
            self.live.end(id);
        }
        if self.finished {
            return;
        }
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        // Best-effort: without a runtime the upload stays until the bucket's lifecycle rules abort it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (bucket, path) = (self.bucket.clone(), std::mem::take(&mut self.path));
            runtime.spawn(async move {
                let _ = bucket.abort_upload(&path, &upload_id).await;
            });
        }
    }
}
