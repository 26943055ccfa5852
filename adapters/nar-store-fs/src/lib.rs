//! The NAR store port on a local directory: each object is the file `<root>/<key>`.
//!
//! Uploads write to a uniquely named file `<root>/.tmp/<random>-<n>.part` (keys cannot start a segment with `.`, so
//! no key lands there), which `commit` flushes, fsyncs and renames over the key's path: a rename within one
//! filesystem is atomic, so readers see the old object or the new one, never a part. `commit_all` does the same for a group of uploads with
//! their fsyncs several at once and one fsync per directory, so a group of small objects costs little more than one. Readers keep reading
//! the file they opened even if it is replaced or deleted meanwhile. A process that dies mid-upload leaves its
//! `.part` file; `sweep` removes those not written to for the age it is given. A full disk (or quota) is
//! `Full`, and the failed upload's file is removed like any other's.
//!
//! Unlike S3's flat namespace, a key here cannot be both an object and the directory of other keys (`a` and
//! `a/b`): committing the second fails with `Unavailable`. Gradient's keys never do that. Deleting an object
//! leaves its (possibly empty) directories in place.

use bytes::Bytes;
use gradient_domain::ports::nar_store::{
    ByteRange, ByteStream, NarStore, NarStoreError, NarUpload, Result, check_key, clamp_range,
};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::fs;

/// Read size for downloads: large enough that a fast client is not held back by per-chunk overhead (one
/// `pread` and one trip to the blocking pool per chunk), small enough that many concurrent downloads stay
/// cheap (8 at once reading hold 2 MiB).
pub const READ_CHUNK: usize = 256 * 1024;

/// Where uploads in progress live, below the root.
const TMP_DIR: &str = ".tmp";

/// A `NarStore` on a directory. Clones share the same directory.
#[derive(Clone, Debug)]
pub struct FsNarStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Temporary files are `<prefix>-<n>.part`: a random prefix per store opened (so two processes on one
    /// root never collide) and a counter its clones share (no random draw, so no system call, per upload).
    prefix: Arc<str>,
    uploads: Arc<AtomicU64>,
}

impl FsNarStore {
    /// Opens the store at `root`, creating the directory if needed. `Unavailable` when the directory cannot
    /// be created or written. Temporary files a crashed process left stay until a `sweep`.
    pub async fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        let dir = tmp.clone();
        blocking(move || private_dirs(&dir))
            .await?
            .map_err(|e| io_error(&tmp, e))?;
        Ok(Self {
            root,
            tmp,
            prefix: uuid::Uuid::new_v4().simple().to_string().into(),
            uploads: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The directory objects are stored under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Whether `e` means "nothing under this path" (a missing file, or a path going through a file).
fn absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn io_error(path: &Path, e: std::io::Error) -> NarStoreError {
    match e.kind() {
        ErrorKind::TimedOut => NarStoreError::Timeout,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            NarStoreError::Full(format!("{}: {e}", path.display()))
        }
        _ => NarStoreError::Unavailable(format!("{}: {e}", path.display())),
    }
}

impl NarStore for FsNarStore {
    type Upload = FsUpload;

    async fn begin(&self, key: &str) -> Result<FsUpload> {
        let target = self.path(key)?;
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let temp = self.tmp.join(format!("{}-{n}.part", self.prefix));
        Ok(FsUpload {
            pending: Vec::new(),
            pending_len: 0,
            file: None,
            temp,
            target,
            size: 0,
            finished: false,
        })
    }

    async fn open(&self, key: &str, range: Option<ByteRange>) -> Result<Option<(u64, ByteStream)>> {
        let path = self.path(key)?;
        let opened = {
            let at = path.clone();
            blocking(move || -> std::io::Result<Option<(std::fs::File, u64)>> {
                let file = match std::fs::File::open(&at) {
                    Ok(file) => file,
                    Err(e) if absent(&e) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let meta = file.metadata()?;
                Ok(meta.is_file().then_some((file, meta.len())))
            })
            .await?
            .map_err(|e| io_error(&path, e))?
        };
        // The size of the file just opened: a replacement renamed over the path afterwards does not change it.
        let Some((file, size)) = opened else {
            return Ok(None);
        };
        let range = clamp_range(range, size);
        let chunks = futures_util::stream::try_unfold(
            (file, range.start, range.end, path),
            |(file, at, end, path)| async move {
                if at >= end {
                    return Ok(None);
                }
                let want = (end - at).min(READ_CHUNK as u64) as usize;
                // Taken here, on the runtime's few threads, not on a blocking thread: the allocator's per-thread
                // arenas of the many blocking threads never hold download buffers.
                let mut buf = pool::take(want);
                // What the page cache holds is read right here; only a read that would wait for the disk goes
                // to the blocking pool (a thread hop per chunk otherwise).
                let (file, read) = match read_cached(&file, at, &mut buf) {
                    Some(Ok(n)) => (file, Ok(buf.into_bytes(n))),
                    Some(Err(e)) => (file, Err(e)),
                    None => {
                        blocking(move || {
                            let read = read_at(&file, at, buf);
                            (file, read)
                        })
                        .await?
                    }
                };
                let chunk = read.map_err(|e| io_error(&path, e))?;
                if chunk.is_empty() {
                    // The file is shorter than when it was opened: end short of the promised length.
                    return Err(io_error(&path, ErrorKind::UnexpectedEof.into()));
                }
                let next = at + chunk.len() as u64;
                Ok(Some((chunk, (file, next, end, path))))
            },
        );
        Ok(Some((size, Box::pin(chunks))))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file().then_some(meta.len())),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            // A directory is where keys below it live, not an object.
            Err(e) if absent(&e) || e.kind() == ErrorKind::IsADirectory => Ok(false),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    async fn commit_all(&self, mut uploads: Vec<FsUpload>) -> Result<Vec<u64>> {
        if uploads.is_empty() {
            return Ok(Vec::new());
        }
        blocking(move || commit_group(&mut uploads)).await?
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64> {
        let mut entries = fs::read_dir(&self.tmp).await.map_err(|e| io_error(&self.tmp, e))?;
        let now = SystemTime::now();
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(&self.tmp, e))? {
            let Ok(meta) = entry.metadata().await else {
                continue; // removed meanwhile
            };
            // A modification time ahead of the clock counts as written just now.
            let idle = meta
                .modified()
                .map(|m| now.duration_since(m).unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::MAX);
            if !meta.is_file() || idle < older_than {
                continue;
            }
            match fs::remove_file(entry.path()).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&entry.path(), e)),
            }
        }
        Ok(removed)
    }
}

/// Bytes an upload keeps in memory before it starts its temporary file. Most NARs are smaller: they reach
/// the disk in one go at `commit` (one trip to the blocking thread pool instead of one per step).
pub const SPILL_AT: usize = 1024 * 1024;

/// An upload to an [`FsNarStore`]: bytes in memory, then (past [`SPILL_AT`]) a temporary file, until
/// `commit`. Dropped unfinished, it removes its temporary file.
#[derive(Debug)]
pub struct FsUpload {
    /// Written but not yet in the temporary file: the chunks as they came (no copy), `pending_len` bytes.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The temporary file, once opened.
    file: Option<std::fs::File>,
    temp: PathBuf,
    target: PathBuf,
    size: u64,
    /// Set once committed or aborted, so `Drop` leaves the file system alone.
    finished: bool,
}

/// Appends `chunks` to the temporary file, creating it first if needed (blocking).
fn append(file: Option<std::fs::File>, temp: &Path, chunks: &[Bytes]) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let mut file = match file {
        Some(f) => f,
        None => {
            use std::os::unix::fs::OpenOptionsExt;
            // Owner-only: NARs may hold private build outputs, whatever the process's umask.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(temp)?
        }
    };
    for chunk in chunks {
        file.write_all(chunk)?;
    }
    Ok(file)
}

/// Creates `dir` and its missing parents owner-only (0700); directories that exist are left as they are.
fn private_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// `buf.len()` bytes of `file` from `offset` (fewer only at its end), read straight into the buffer the
/// download sends: one copy from the page cache, no intermediate buffer. Blocking.
/// Fills `buf` from `offset`, waiting for the disk if need be; fewer bytes only at the end of the file.
fn read_at(file: &std::fs::File, offset: u64, mut buf: pool::Buf) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let want = buf.as_mut().len();
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf.as_mut()[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.into_bytes(filled))
}

/// Whether reads that would block are refused (`RWF_NOWAIT`) here; cleared the first time the kernel or
/// filesystem says it does not support that, so every later read goes to the blocking pool directly.
static NOWAIT_WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Fills `buf` from `offset` when the page cache holds all of it (`preadv2` with `RWF_NOWAIT`, which fails
/// rather than wait for the disk): `Some(Ok(len))`; `None` when it must be read from the disk (or part of it).
fn read_cached(file: &std::fs::File, offset: u64, buf: &mut pool::Buf) -> Option<std::io::Result<usize>> {
    use std::sync::atomic::Ordering;
    if !NOWAIT_WORKS.load(Ordering::Relaxed) {
        return None;
    }
    let want = buf.as_mut().len();
    let read = rustix::io::preadv2(
        file,
        &mut [std::io::IoSliceMut::new(buf.as_mut())],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    match read {
        Ok(n) if n == want => Some(Ok(n)),
        // Part of it is cached (or the file ended early): the blocking read finds out which.
        Ok(_) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => None,
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL) => {
            NOWAIT_WORKS.store(false, Ordering::Relaxed);
            None
        }
        Err(e) => Some(Err(e.into())),
    }
}

/// Download buffers, reused: a chunk handed to a connection comes back here when the connection has sent it
/// (its `Bytes` is dropped), so a download neither zeroes nor allocates a fresh buffer per chunk. At most
/// [`pool::KEPT`] idle buffers are kept ([`READ_CHUNK`] each); more in use than that are freed when they come back.
mod pool {
    use super::READ_CHUNK;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// Idle buffers kept: 2 MiB at most (a download holds about two while it runs).
    pub const KEPT: usize = 8;

    static IDLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// A buffer of [`READ_CHUNK`] bytes (fewer when `want` is smaller: short reads at the end of a file use
    /// their own), returned to the pool when dropped.
    pub struct Buf {
        bytes: Vec<u8>,
        len: usize,
    }

    pub fn take(want: usize) -> Buf {
        let reused = if want == READ_CHUNK {
            IDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
        } else {
            None
        };
        let bytes = reused.unwrap_or_else(|| vec![0; want]);
        Buf { bytes, len: 0 }
    }

    impl Buf {
        pub fn as_mut(&mut self) -> &mut [u8] {
            &mut self.bytes
        }

        /// The first `len` bytes, sent without copying; the buffer comes back when they are dropped.
        pub fn into_bytes(mut self, len: usize) -> Bytes {
            self.len = len.min(self.bytes.len());
            Bytes::from_owner(self)
        }
    }

    impl AsRef<[u8]> for Buf {
        fn as_ref(&self) -> &[u8] {
            &self.bytes[..self.len]
        }
    }

    impl Drop for Buf {
        fn drop(&mut self) {
            if self.bytes.len() != READ_CHUNK {
                return;
            }
            let mut idle = IDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < KEPT {
                idle.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

/// Commits `uploads` together (blocking): every temporary file is completed, then all are synced (several at
/// once, see [`sync_files`]), renamed over their keys, and each
/// directory that gained a name is synced once. An upload renamed is marked finished; on error the others
/// are left to their `Drop`, which removes their temporary files.
fn commit_group(uploads: &mut [FsUpload]) -> Result<Vec<u64>> {
    let mut files = Vec::with_capacity(uploads.len());
    for upload in uploads.iter_mut() {
        let pending = std::mem::take(&mut upload.pending);
        upload.pending_len = 0;
        let file = append(upload.file.take(), &upload.temp, &pending).map_err(|e| io_error(&upload.temp, e))?;
        files.push(file);
    }
    let synced: Vec<(std::fs::File, &Path)> = files
        .into_iter()
        .zip(uploads.iter().map(|u| u.temp.as_path()))
        .collect();
    sync_files(&synced)?;
    drop(synced);
    let mut dirs = std::collections::BTreeSet::new();
    for upload in uploads.iter_mut() {
        let parent = upload.target.parent().unwrap_or(&upload.target).to_owned();
        if !dirs.contains(&parent) {
            private_dirs(&parent).map_err(|e| io_error(&parent, e))?;
            dirs.insert(parent);
        }
        std::fs::rename(&upload.temp, &upload.target).map_err(|e| match e.kind() {
            ErrorKind::NotFound => NarStoreError::NotFound,
            _ => io_error(&upload.target, e),
        })?;
        // Renamed: nothing is left to remove, whatever follows.
        upload.finished = true;
    }
    // A rename is durable once the directory holding the new name is synced.
    for dir in &dirs {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))?;
    }
    Ok(uploads.iter().map(|u| u.size).collect())
}

/// Threads that sync a group's files at once, at most.
const SYNC_THREADS: usize = 8;

/// Syncs every file (blocking), several at once: a journaling file system folds syncs that wait together into
/// one journal commit, so a group costs a few commits' time rather than one per file. Every file is synced.
fn sync_files(files: &[(std::fs::File, &Path)]) -> Result<()> {
    let sync = |group: &[(std::fs::File, &Path)]| -> Result<()> {
        group
            .iter()
            .try_for_each(|(file, path)| file.sync_all().map_err(|e| io_error(path, e)))
    };
    if files.len() <= 1 {
        return sync(files);
    }
    let per_thread = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let running: Vec<_> = files
            .chunks(per_thread)
            .map(|group| scope.spawn(move || sync(group)))
            .collect();
        running.into_iter().try_for_each(|thread| {
            thread
                .join()
                .unwrap_or_else(|_| Err(NarStoreError::Unavailable("a file sync thread panicked".to_owned())))
        })
    })
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NarStoreError::Unavailable(format!("file task failed: {e}")))
}

impl NarUpload for FsUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.finished {
            return Err(NarStoreError::Unavailable("upload already finished".to_owned()));
        }
        self.size += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= SPILL_AT {
            self.pending_len = 0;
            let (file, temp, bytes) = (self.file.take(), self.temp.clone(), std::mem::take(&mut self.pending));
            let written = blocking(move || append(file, &temp, &bytes)).await?;
            self.file = Some(written.map_err(|e| io_error(&self.temp, e))?);
        }
        Ok(())
    }

    async fn commit(self) -> Result<u64> {
        let mut uploads = vec![self];
        blocking(move || commit_group(&mut uploads))
            .await?
            .map(|sizes| sizes[0])
    }

    async fn abort(mut self) -> Result<()> {
        drop(self.file.take());
        self.pending = Vec::new();
        self.pending_len = 0;
        self.finished = true;
        match fs::remove_file(&self.temp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&self.temp, e)),
        }
    }
}

impl Drop for FsUpload {
    fn drop(&mut self) {
        if !self.finished {
            // Best-effort and synchronous: unlinking one file is quick, and there may be no runtime left to
            // hand it to. An open handle still being written to is harmless once the name is gone.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
