//! The NAR store contract on a directory, plus what only the filesystem adapter can get wrong: where files
//! land, temporary files left behind, chunk sizes, and data surviving a new store on the same root.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::StreamExt;
use gradient_domain::ports::nar_store::{ByteRange, ByteStream, NarStore, NarStoreError, NarUpload, Result};
use gradient_nar_store_fs::{FsNarStore, FsUpload};
use gradient_ports::nar_store::contract::{key, pattern, put, read};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tempfile::TempDir;

/// A store on a temporary directory that is removed with it.
struct TestStore {
    store: FsNarStore,
    _dir: TempDir,
}

impl NarStore for TestStore {
    type Upload = FsUpload;

    async fn begin(&self, key: &str) -> Result<FsUpload> {
        self.store.begin(key).await
    }

    async fn open(&self, key: &str, range: Option<ByteRange>) -> Result<Option<(u64, ByteStream)>> {
        self.store.open(key, range).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        self.store.size(key).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.store.delete(key).await
    }

    async fn sweep(&self, older_than: Duration) -> Result<u64> {
        self.store.sweep(older_than).await
    }
}

async fn fresh_fs() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store = FsNarStore::new(dir.path().join("nars")).await.unwrap();
    TestStore { store, _dir: dir }
}

mod nar_fs {
    gradient_ports::nar_store_contract!(crate::fresh_fs);
}

fn temp_files(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// NARs may hold private build outputs: every file and directory the store creates is its owner's only,
/// whatever the umask.
#[tokio::test]
async fn nar_files_and_directories_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = fresh_fs().await;
    let key = key();
    put(&s, &key, &pattern(2, 0, 300_000), 100_000).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = s.store.root();
    let file = root.join(&key);
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    let mut dir = file.parent().unwrap();
    while dir.starts_with(root) {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        dir = dir.parent().unwrap();
    }
    assert_eq!(mode(&root.join(".tmp")), 0o700);
}

#[tokio::test]
async fn objects_are_files_named_by_their_key() {
    let s = fresh_fs().await;
    let key = key();
    let data = pattern(1, 0, 5000);
    put(&s, &key, &data, 1000).await;
    assert_eq!(std::fs::read(s.store.root().join(&key)).unwrap(), data);
}

#[tokio::test]
async fn no_temporary_file_outlives_its_upload() {
    let s = fresh_fs().await;
    let root = s.store.root().to_owned();
    let large = || Bytes::from(vec![7u8; gradient_nar_store_fs::SPILL_AT + 1]);

    // A small upload stays in memory until it is committed.
    let mut upload = s.begin(&key()).await.unwrap();
    upload.write(Bytes::from_static(b"abc")).await.unwrap();
    assert!(temp_files(&root).is_empty(), "a small upload in progress");
    upload.commit().await.unwrap();
    assert!(temp_files(&root).is_empty(), "after a small commit");

    // A large one goes to its temporary file as it comes.
    let mut upload = s.begin(&key()).await.unwrap();
    upload.write(large()).await.unwrap();
    assert_eq!(
        temp_files(&root).len(),
        1,
        "a large upload in progress has its temporary file"
    );
    upload.commit().await.unwrap();
    assert!(temp_files(&root).is_empty(), "after commit");

    let mut upload = s.begin(&key()).await.unwrap();
    upload.write(large()).await.unwrap();
    upload.abort().await.unwrap();
    assert!(temp_files(&root).is_empty(), "after abort");

    let mut upload = s.begin(&key()).await.unwrap();
    upload.write(large()).await.unwrap();
    drop(upload);
    assert!(temp_files(&root).is_empty(), "after drop");
}

#[tokio::test]
async fn reads_are_streamed_in_bounded_chunks() {
    let s = fresh_fs().await;
    let key = key();
    put(&s, &key, &pattern(2, 0, 1_000_000), 100_000).await;
    let (_, mut stream) = s.open(&key, Some((1, None))).await.unwrap().unwrap();
    let (mut chunks, mut total) = (0, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(
            chunk.len() <= gradient_nar_store_fs::READ_CHUNK,
            "a chunk of {} bytes",
            chunk.len()
        );
        chunks += 1;
        total += chunk.len();
    }
    assert_eq!(total, 999_999);
    assert!(chunks >= 999_999 / gradient_nar_store_fs::READ_CHUNK, "{chunks} chunks");
}

#[tokio::test]
async fn a_file_no_longer_in_the_page_cache_reads_the_same() {
    // Chunks the page cache holds are read on the runtime's thread; the others (here: all of them, dropped
    // from the cache) from the disk on the blocking pool. Both give the same bytes, ranges included.
    let s = fresh_fs().await;
    let key = key();
    let data = pattern(5, 0, 3 * gradient_nar_store_fs::READ_CHUNK + 12_345);
    put(&s, &key, &data, 70_000).await;
    let drop_cached = || {
        let file = std::fs::File::open(s.store.root().join(&key)).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    };
    drop_cached();
    assert!(read(&s, &key, None).await.unwrap().1 == data);
    drop_cached();
    let from = gradient_nar_store_fs::READ_CHUNK as u64 - 7;
    let (_, part) = read(&s, &key, Some((from, Some(from + 300_000)))).await.unwrap();
    assert!(part[..] == data[from as usize..=(from + 300_000) as usize]);
    // And again while it is cached.
    assert!(read(&s, &key, None).await.unwrap().1 == data);
}

#[tokio::test]
async fn a_reader_keeps_the_object_it_opened() {
    let s = fresh_fs().await;
    let key = key();
    let (old, new) = (pattern(3, 0, 300_000), pattern(4, 0, 1000));
    put(&s, &key, &old, 50_000).await;
    let (size, stream) = s.open(&key, None).await.unwrap().unwrap();
    put(&s, &key, &new, 500).await;
    assert_eq!(size, 300_000);
    assert!(gradient_ports::nar_store::contract::collect(stream).await == old);
    assert_eq!(read(&s, &key, None).await.unwrap().1, new);
}

#[tokio::test]
async fn objects_survive_a_new_store_on_the_same_root() {
    let s = fresh_fs().await;
    let key = key();
    let data = pattern(5, 0, 10_000);
    put(&s, &key, &data, 4096).await;
    let again = FsNarStore::new(s.store.root()).await.unwrap();
    assert_eq!(read(&again, &key, None).await.unwrap(), (10_000, data));
}

/// Temporary files are `.tmp/*.part`; a sweep removes those idle for its age, opening a store removes none.
#[tokio::test]
async fn a_sweep_removes_temporary_files_idle_for_its_age() {
    let s = fresh_fs().await;
    let root = s.store.root().to_owned();
    let mut upload = s.begin(&key()).await.unwrap();
    upload
        .write(Bytes::from(vec![1u8; gradient_nar_store_fs::SPILL_AT]))
        .await
        .unwrap();
    let names = temp_files(&root);
    assert!(
        names.len() == 1 && names[0].ends_with(".part"),
        "an upload's temporary file: {names:?}"
    );
    std::mem::forget(upload);
    let stale = root.join(".tmp/old.part");
    std::fs::write(&stale, b"x").unwrap();
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    FsNarStore::new(&root).await.unwrap();
    assert_eq!(temp_files(&root).len(), 2, "opening a store removes nothing");
    assert_eq!(s.sweep(Duration::from_secs(24 * 60 * 60)).await.unwrap(), 1);
    assert_eq!(temp_files(&root), names, "only the file idle for a day went");
    assert_eq!(s.sweep(Duration::ZERO).await.unwrap(), 1);
    assert!(temp_files(&root).is_empty());
}

#[tokio::test]
async fn an_unusable_root_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    assert!(matches!(
        FsNarStore::new(&file).await,
        Err(gradient_domain::ports::nar_store::NarStoreError::Unavailable(_))
    ));
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk is `Full`, whether the write or the commit meets it; the failed upload leaves no temporary
/// file and what the store held is still there. Needs to mount a 2 MiB tmpfs (root): says so and passes
/// otherwise.
#[tokio::test]
async fn a_full_disk_is_full_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        println!("SKIPPED: cannot mount a tmpfs here ({mounted:?})");
        return;
    }
    let _mounted = Mounted(small.clone());
    let store = FsNarStore::new(&small).await.unwrap();
    let kept = key();
    let data = pattern(30, 0, 100_000);
    put(&store, &kept, &data, 10_000).await;

    // A large upload meets the full disk in a write (it spills to its temporary file past SPILL_AT).
    let mut upload = store.begin(&key()).await.unwrap();
    let mut refused = None;
    for i in 0..4 {
        let chunk = gradient_nar_store_fs::SPILL_AT;
        if let Err(e) = upload.write(Bytes::from(pattern(31, i * chunk, (i + 1) * chunk))).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("3 MiB do not fit in 2");
    upload.abort().await.unwrap();
    assert!(matches!(e, NarStoreError::Full(_)), "a write on a full disk: {e:?}");
    assert!(temp_files(&small).is_empty(), "no temporary file is left after a write");

    // A small one (kept in memory until then) meets it at commit.
    let filler = key();
    put(&store, &filler, &pattern(32, 0, 1_700_000), 100_000).await;
    let mut upload = store.begin(&key()).await.unwrap();
    upload.write(Bytes::from(pattern(33, 0, 800_000))).await.unwrap();
    let e = upload.commit().await.unwrap_err();
    assert!(matches!(e, NarStoreError::Full(_)), "a commit on a full disk: {e:?}");
    assert!(
        temp_files(&small).is_empty(),
        "no temporary file is left after a commit"
    );
    assert_eq!(
        read(&store, &kept, None).await.unwrap().1,
        data,
        "the object held stays"
    );
}
