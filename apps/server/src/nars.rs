//! The NAR store chosen at start-up from `GRADIENT_NAR_STORE`: a directory (`file:///path`, the default
//! `<baseDir>/nars`) or an S3 bucket (`s3://bucket/prefix`). One delegating enum instead of `dyn`.

use bytes::Bytes;
use gradient_domain::ports::nar_store::{ByteStream, NarStore, NarStoreError, NarUpload, Result};
use gradient_nar_store_fs::FsNarStore;
use gradient_nar_store_s3::{S3Config, S3NarStore};

#[derive(Clone, Debug)]
pub enum NarStorage {
    Fs(FsNarStore),
    S3(S3NarStore),
}

pub enum Upload {
    Fs(<FsNarStore as NarStore>::Upload),
    S3(<S3NarStore as NarStore>::Upload),
}

impl NarStorage {
    pub async fn fs(root: std::path::PathBuf) -> Result<Self> {
        Ok(Self::Fs(FsNarStore::new(root).await?))
    }

    pub async fn s3(config: S3Config) -> Result<Self> {
        Ok(Self::S3(S3NarStore::new(config).await?))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fs(_) => "filesystem",
            Self::S3(_) => "S3",
        }
    }
}

impl NarStore for NarStorage {
    type Upload = Upload;

    async fn begin(&self, key: &str) -> Result<Upload> {
        Ok(match self {
            Self::Fs(s) => Upload::Fs(s.begin(key).await?),
            Self::S3(s) => Upload::S3(s.begin(key).await?),
        })
    }

    async fn open(&self, key: &str, range: Option<(u64, Option<u64>)>) -> Result<Option<(u64, ByteStream)>> {
        match self {
            Self::Fs(s) => s.open(key, range).await,
            Self::S3(s) => s.open(key, range).await,
        }
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match self {
            Self::Fs(s) => s.size(key).await,
            Self::S3(s) => s.size(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        match self {
            Self::Fs(s) => s.delete(key).await,
            Self::S3(s) => s.delete(key).await,
        }
    }

    async fn sweep(&self, older_than: std::time::Duration) -> Result<u64> {
        match self {
            Self::Fs(s) => s.sweep(older_than).await,
            Self::S3(s) => s.sweep(older_than).await,
        }
    }

    async fn commit_all(&self, uploads: Vec<Upload>) -> Result<Vec<u64>> {
        // Every upload came from this store's `begin`, so each is of its kind.
        let other = || NarStoreError::Unavailable("an upload of another NAR store".to_owned());
        match self {
            Self::Fs(s) => {
                let uploads = uploads.into_iter().map(|u| match u {
                    Upload::Fs(u) => Ok(u),
                    Upload::S3(_) => Err(other()),
                });
                s.commit_all(uploads.collect::<Result<_>>()?).await
            }
            Self::S3(s) => {
                let uploads = uploads.into_iter().map(|u| match u {
                    Upload::S3(u) => Ok(u),
                    Upload::Fs(_) => Err(other()),
                });
                s.commit_all(uploads.collect::<Result<_>>()?).await
            }
        }
    }
}

impl NarUpload for Upload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        match self {
            Self::Fs(u) => u.write(chunk).await,
            Self::S3(u) => u.write(chunk).await,
        }
    }

    async fn commit(self) -> Result<u64> {
        match self {
            Self::Fs(u) => u.commit().await,
            Self::S3(u) => u.commit().await,
        }
    }

    async fn abort(self) -> Result<()> {
        match self {
            Self::Fs(u) => u.abort().await,
            Self::S3(u) => u.abort().await,
        }
    }
}
