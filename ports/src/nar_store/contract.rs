//! The NAR store contract: what every `NarStore` implementation must do, as scenarios.
//!
//! Each scenario is a `pub async fn name<S: NarStore>(s: &S)` that writes under fresh random keys and panics
//! with a message saying which rule was broken, so scenarios also pass on a store shared with other tests;
//! [`nar_store_contract!`](crate::nar_store_contract) nevertheless gives each one a fresh store.
//!
//! The scenario list lives in one place: the `nar_store_contract!` macro below. A scenario not listed there is
//! not run by any adapter.

use bytes::Bytes;
use futures_util::StreamExt;
use gradient_domain::ports::nar_store::{ByteRange, ByteStream, NarStore, NarStoreError, NarUpload};
use std::time::Duration;
use uuid::Uuid;

/// Runs the NAR store contract suite: one `#[tokio::test]` per scenario, each on a fresh store.
///
/// `$fresh` is an async function (or any expression callable with no arguments and returning a future) that
/// yields a new, empty store implementing `NarStore`. The calling crate needs `tokio` (features `macros` and
/// `rt`) as a dev-dependency.
///
/// ```ignore
/// // tests/conformance.rs of an adapter
/// async fn fresh_fs() -> gradient_nar_store_fs::FsNarStore { /* ... */ }
///
/// mod nar_fs {
///     gradient_ports::nar_store_contract!(crate::fresh_fs);
/// }
/// ```
#[macro_export]
macro_rules! nar_store_contract {
    ($fresh:expr) => {
        $crate::__nar_store_contract_tests!(
            $fresh;
            chunks_read_back_byte_exact,
            empty_object_round_trips,
            nothing_is_visible_before_commit,
            abort_leaves_nothing,
            dropped_upload_leaves_nothing,
            commit_replaces_the_object,
            last_commit_wins_between_uploads_to_one_key,
            range_from_a_start,
            range_with_start_and_end,
            range_of_the_last_byte,
            range_end_past_the_object_is_clamped,
            range_selecting_nothing_is_empty,
            absent_objects_are_none,
            size_is_the_committed_length,
            delete_removes_only_that_object,
            large_object_round_trips_in_chunks,
            concurrent_uploads_to_different_keys,
            invalid_keys_are_refused,
            uncommitted_uploads_are_invisible_and_swept,
            a_swept_upload_never_commits_a_part,
            commit_all_makes_every_object_visible,
            commit_all_with_a_swept_upload_fails_and_keeps_every_key_whole,
        );
    };
}

/// Expands to one test per scenario; use [`nar_store_contract!`](crate::nar_store_contract) instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __nar_store_contract_tests {
    ($fresh:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let store = ($fresh)().await;
                $crate::nar_store::contract::$scenario(&store).await;
            }
        )+
    };
}

const MIB: usize = 1024 * 1024;

/// A fresh key shaped like the cache's: `<cache-uuid>/nar/<hash>.nar.zst`.
pub fn key() -> String {
    format!("{}/nar/{}.nar.zst", Uuid::new_v4(), Uuid::new_v4().simple())
}

/// The byte at `offset` of the pseudo-random object numbered `seed`; objects with different seeds differ
/// almost everywhere, so a mix-up between two objects or a misplaced chunk cannot go unnoticed.
fn byte_at(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(32))
        .wrapping_add(seed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

/// Bytes `start..end` of object `seed`.
pub fn pattern(seed: u64, start: usize, end: usize) -> Vec<u8> {
    (start..end).map(|o| byte_at(seed, o as u64)).collect()
}

/// Writes `data` in chunks of `chunk` bytes and commits; answers what `commit` answered.
pub async fn put<S: NarStore>(s: &S, key: &str, data: &[u8], chunk: usize) -> u64 {
    let mut upload = s.begin(key).await.expect("begin");
    for part in data.chunks(chunk.max(1)) {
        upload.write(Bytes::copy_from_slice(part)).await.expect("write");
    }
    upload.commit().await.expect("commit")
}

/// Reads a stream to its end.
pub async fn collect(mut stream: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("the stream yields no error"));
    }
    out
}

/// Opens `key` with `range` and reads it whole: `None` when absent.
pub async fn read<S: NarStore>(s: &S, key: &str, range: Option<ByteRange>) -> Option<(u64, Vec<u8>)> {
    match s.open(key, range).await.expect("open") {
        Some((size, stream)) => Some((size, collect(stream).await)),
        None => None,
    }
}

/// Asserts `key` holds exactly `data`, through `open` and `size`.
async fn assert_holds<S: NarStore>(s: &S, key: &str, data: &[u8], why: &str) {
    let (size, bytes) = read(s, key, None)
        .await
        .unwrap_or_else(|| panic!("{why}: {key} is absent"));
    assert_eq!(size, data.len() as u64, "{why}: open reports the object's size");
    assert!(
        bytes == data,
        "{why}: {key} reads back {} bytes that differ from the {} written",
        bytes.len(),
        data.len()
    );
    assert_eq!(s.size(key).await.expect("size"), Some(data.len() as u64), "{why}: size");
}

async fn assert_absent<S: NarStore>(s: &S, key: &str, why: &str) {
    assert!(
        read(s, key, None).await.is_none(),
        "{why}: open finds nothing under {key}"
    );
    assert_eq!(
        s.size(key).await.expect("size"),
        None,
        "{why}: size finds nothing under {key}"
    );
}

pub async fn chunks_read_back_byte_exact<S: NarStore>(s: &S) {
    let key = key();
    let data = pattern(1, 0, 100_000);
    let mut upload = s.begin(&key).await.expect("begin");
    // Uneven chunks, an empty one among them.
    for (a, b) in [(0, 1), (1, 1), (1, 4096), (4096, 70_000), (70_000, 100_000)] {
        upload.write(Bytes::copy_from_slice(&data[a..b])).await.expect("write");
    }
    assert_eq!(
        upload.commit().await.expect("commit"),
        100_000,
        "commit answers the object's size"
    );
    assert_holds(s, &key, &data, "after commit").await;
}

pub async fn empty_object_round_trips<S: NarStore>(s: &S) {
    let key = key();
    let upload = s.begin(&key).await.expect("begin");
    assert_eq!(upload.commit().await.expect("commit"), 0);
    assert_holds(s, &key, &[], "an empty object is present, not absent").await;
}

pub async fn nothing_is_visible_before_commit<S: NarStore>(s: &S) {
    let key = key();
    let data = pattern(2, 0, 10_000);
    let mut upload = s.begin(&key).await.expect("begin");
    upload.write(Bytes::copy_from_slice(&data)).await.expect("write");
    assert_absent(s, &key, "before commit").await;
    upload.commit().await.expect("commit");
    assert_holds(s, &key, &data, "after commit").await;
}

pub async fn abort_leaves_nothing<S: NarStore>(s: &S) {
    let key = key();
    let mut upload = s.begin(&key).await.expect("begin");
    upload.write(Bytes::from(pattern(3, 0, 10_000))).await.expect("write");
    upload.abort().await.expect("abort");
    assert_absent(s, &key, "after abort").await;

    // Aborting a replacement keeps the object it would have replaced.
    let old = pattern(4, 0, 5_000);
    put(s, &key, &old, 1000).await;
    let mut upload = s.begin(&key).await.expect("begin");
    upload.write(Bytes::from(pattern(5, 0, 7_000))).await.expect("write");
    upload.abort().await.expect("abort");
    assert_holds(s, &key, &old, "an aborted replacement").await;
}

pub async fn dropped_upload_leaves_nothing<S: NarStore>(s: &S) {
    let key = key();
    let mut upload = s.begin(&key).await.expect("begin");
    upload.write(Bytes::from(pattern(6, 0, 10_000))).await.expect("write");
    drop(upload);
    assert_absent(s, &key, "after dropping an upload").await;
    // The key is still usable.
    let data = pattern(7, 0, 3_000);
    put(s, &key, &data, 1000).await;
    assert_holds(s, &key, &data, "an upload after a dropped one").await;
}

pub async fn commit_replaces_the_object<S: NarStore>(s: &S) {
    let key = key();
    let long = pattern(8, 0, 50_000);
    let short = pattern(9, 0, 20_000);
    put(s, &key, &long, 7_000).await;
    let mut upload = s.begin(&key).await.expect("begin");
    upload.write(Bytes::copy_from_slice(&short)).await.expect("write");
    assert_holds(s, &key, &long, "the old object stays until the replacement commits").await;
    assert_eq!(upload.commit().await.expect("commit"), 20_000);
    assert_holds(
        s,
        &key,
        &short,
        "a shorter replacement leaves nothing of the old object",
    )
    .await;
}

pub async fn last_commit_wins_between_uploads_to_one_key<S: NarStore>(s: &S) {
    let key = key();
    let first = pattern(10, 0, 30_000);
    let second = pattern(11, 0, 40_000);
    let mut a = s.begin(&key).await.expect("begin a");
    let mut b = s.begin(&key).await.expect("begin b");
    a.write(Bytes::copy_from_slice(&first)).await.expect("write a");
    b.write(Bytes::copy_from_slice(&second)).await.expect("write b");
    a.commit().await.expect("commit a");
    assert_holds(s, &key, &first, "the first commit").await;
    b.commit().await.expect("commit b");
    assert_holds(s, &key, &second, "the second commit replaces the first").await;
}

/// An object of 1000 bytes for the range scenarios.
async fn ranged_object<S: NarStore>(s: &S) -> (String, Vec<u8>) {
    let key = key();
    let data = pattern(12, 0, 1000);
    put(s, &key, &data, 300).await;
    (key, data)
}

async fn assert_range<S: NarStore>(s: &S, key: &str, range: (u64, Option<u64>), expected: &[u8]) {
    let (size, bytes) = read(s, key, Some(range)).await.expect("the object is present");
    assert_eq!(size, 1000, "{range:?}: open reports the whole object's size");
    assert!(
        bytes == expected,
        "{range:?}: read {} bytes, expected {}{}",
        bytes.len(),
        expected.len(),
        if bytes.len() == expected.len() {
            " (contents differ)"
        } else {
            ""
        }
    );
}

pub async fn range_from_a_start<S: NarStore>(s: &S) {
    let (key, data) = ranged_object(s).await;
    assert_range(s, &key, (0, None), &data).await;
    assert_range(s, &key, (10, None), &data[10..]).await;
    assert_range(s, &key, (999, None), &data[999..]).await;
}

pub async fn range_with_start_and_end<S: NarStore>(s: &S) {
    let (key, data) = ranged_object(s).await;
    assert_range(s, &key, (10, Some(19)), &data[10..20]).await;
    assert_range(s, &key, (0, Some(0)), &data[..1]).await;
    assert_range(s, &key, (0, Some(999)), &data).await;
}

pub async fn range_of_the_last_byte<S: NarStore>(s: &S) {
    let (key, data) = ranged_object(s).await;
    assert_range(s, &key, (999, Some(999)), &data[999..]).await;
}

pub async fn range_end_past_the_object_is_clamped<S: NarStore>(s: &S) {
    let (key, data) = ranged_object(s).await;
    assert_range(s, &key, (990, Some(5000)), &data[990..]).await;
    assert_range(s, &key, (0, Some(u64::MAX)), &data).await;
}

pub async fn range_selecting_nothing_is_empty<S: NarStore>(s: &S) {
    let (key, _) = ranged_object(s).await;
    assert_range(s, &key, (1000, None), &[]).await;
    assert_range(s, &key, (1000, Some(1000)), &[]).await;
    assert_range(s, &key, (5000, Some(6000)), &[]).await;
    assert_range(s, &key, (u64::MAX, None), &[]).await;
    assert_range(s, &key, (20, Some(10)), &[]).await;

    let empty = self::key();
    put(s, &empty, &[], 1).await;
    let (size, bytes) = read(s, &empty, Some((0, None)))
        .await
        .expect("an empty object is present");
    assert_eq!((size, bytes.len()), (0, 0), "any range of an empty object is empty");
}

pub async fn absent_objects_are_none<S: NarStore>(s: &S) {
    let key = key();
    assert_absent(s, &key, "a key never written").await;
    assert!(
        read(s, &key, Some((0, Some(10)))).await.is_none(),
        "a ranged open of an absent key is None"
    );
    assert!(
        !s.delete(&key).await.expect("delete"),
        "deleting an absent key answers false"
    );
    // A key below an existing object is absent too (on a filesystem, a path through a file).
    put(s, &key, b"abc", 1).await;
    assert_absent(s, &format!("{key}/more"), "a key below an object").await;
    assert!(
        !s.delete(&format!("{key}/more")).await.expect("delete"),
        "deleting a key below an object"
    );
}

pub async fn size_is_the_committed_length<S: NarStore>(s: &S) {
    for len in [1, 4095, 4096, 65_536, 65_537, 200_001] {
        let key = key();
        assert_eq!(
            put(s, &key, &pattern(13, 0, len), 10_000).await,
            len as u64,
            "commit answers {len}"
        );
        assert_eq!(
            s.size(&key).await.expect("size"),
            Some(len as u64),
            "size of a {len}-byte object"
        );
    }
}

pub async fn delete_removes_only_that_object<S: NarStore>(s: &S) {
    let dir = Uuid::new_v4();
    let (a, b) = (format!("{dir}/nar/a.nar"), format!("{dir}/nar/b.nar"));
    let (data_a, data_b) = (pattern(14, 0, 2000), pattern(15, 0, 3000));
    put(s, &a, &data_a, 500).await;
    put(s, &b, &data_b, 500).await;
    assert!(
        s.delete(&a).await.expect("delete"),
        "deleting a present key answers true"
    );
    assert_absent(s, &a, "after delete").await;
    assert!(!s.delete(&a).await.expect("delete"), "deleting it again answers false");
    assert_holds(s, &b, &data_b, "a sibling of the deleted object").await;
    // The key can be written again.
    put(s, &a, &data_b, 500).await;
    assert_holds(s, &a, &data_b, "a deleted key written again").await;
}

pub async fn large_object_round_trips_in_chunks<S: NarStore>(s: &S) {
    const SIZE: usize = 20 * MIB;
    let key = key();
    let mut upload = s.begin(&key).await.expect("begin");
    for start in (0..SIZE).step_by(MIB) {
        upload
            .write(Bytes::from(pattern(16, start, start + MIB)))
            .await
            .expect("write");
    }
    assert_eq!(upload.commit().await.expect("commit"), SIZE as u64);
    assert_eq!(s.size(&key).await.expect("size"), Some(SIZE as u64));

    // Read it back chunk by chunk, checking each byte where it lands, without collecting it.
    let (size, mut stream) = s.open(&key, None).await.expect("open").expect("present");
    assert_eq!(size, SIZE as u64);
    let (mut offset, mut chunks) = (0usize, 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the stream yields no error");
        assert!(
            chunk[..] == pattern(16, offset, offset + chunk.len())[..],
            "bytes {offset}..{} differ",
            offset + chunk.len()
        );
        offset += chunk.len();
        chunks += 1;
    }
    assert_eq!(offset, SIZE, "the whole object is read");
    assert!(chunks > 1, "a 20 MiB object is streamed, not handed over in one piece");

    // Ranges across the 8 MiB and 16 MiB marks, where multipart uploads usually split parts.
    for mark in [8 * MIB, 16 * MIB] {
        let (start, end) = (mark - 100, mark + 100);
        let (_, bytes) = read(s, &key, Some((start as u64, Some(end as u64 - 1))))
            .await
            .expect("present");
        assert!(bytes == pattern(16, start, end), "bytes {start}..{end}");
    }
}

pub async fn concurrent_uploads_to_different_keys<S: NarStore>(s: &S) {
    let uploads = (0..4u64).map(|i| async move {
        let key = key();
        let data = pattern(100 + i, 0, 150_000 + i as usize * 1000);
        let mut upload = s.begin(&key).await.expect("begin");
        for part in data.chunks(16 * 1024) {
            upload.write(Bytes::copy_from_slice(part)).await.expect("write");
        }
        upload.commit().await.expect("commit");
        (key, data)
    });
    let written = futures_util::future::join_all(uploads).await;
    for (key, data) in &written {
        assert_holds(s, key, data, "one of several concurrent uploads").await;
    }
}

pub async fn invalid_keys_are_refused<S: NarStore>(s: &S) {
    let refused = |r: Result<(), NarStoreError>| matches!(r, Err(NarStoreError::InvalidKey(_)));
    for key in [
        "",
        "/abs",
        "a//b",
        "trailing/",
        "..",
        "a/../b",
        "./a",
        ".tmp/x",
        "a b",
        "a\\b",
        "é",
        "a?b",
    ] {
        assert!(refused(s.begin(key).await.map(drop)), "begin refuses {key:?}");
        assert!(refused(s.open(key, None).await.map(drop)), "open refuses {key:?}");
        assert!(refused(s.size(key).await.map(drop)), "size refuses {key:?}");
        assert!(refused(s.delete(key).await.map(drop)), "delete refuses {key:?}");
    }
}

/// What an upload sends before its process dies: more than any adapter keeps in memory (a directory's
/// adapter spills past 1 MiB, S3's sends 8 MiB parts), so it reaches the backend's temporary names.
const SPILLED: usize = 9 * MIB;

/// Begins an upload to `key` and writes [`SPILLED`] bytes of object `seed`.
async fn spilled_upload<S: NarStore>(s: &S, key: &str, seed: u64) -> S::Upload {
    let mut upload = s.begin(key).await.expect("begin");
    for start in (0..SPILLED).step_by(MIB) {
        upload
            .write(Bytes::from(pattern(seed, start, start + MIB)))
            .await
            .expect("write");
    }
    upload
}

/// A process killed mid-upload (neither commit, abort nor drop runs: `mem::forget`) leaves nothing visible,
/// and `sweep` removes what it left once it is old enough, and nothing else.
pub async fn uncommitted_uploads_are_invisible_and_swept<S: NarStore>(s: &S) {
    let (kept, crashed) = (key(), key());
    let data = pattern(20, 0, 5_000);
    put(s, &kept, &data, 1_000).await;
    std::mem::forget(spilled_upload(s, &crashed, 21).await);
    assert_absent(s, &crashed, "an upload whose process died").await;
    assert_eq!(
        s.sweep(Duration::from_secs(3600)).await.expect("sweep"),
        0,
        "a sweep of what is older than an hour leaves an upload just begun"
    );
    assert_eq!(
        s.sweep(Duration::ZERO).await.expect("sweep"),
        1,
        "a sweep of everything removes the dead upload's leftovers"
    );
    assert_eq!(
        s.sweep(Duration::ZERO).await.expect("sweep"),
        0,
        "nothing is left to sweep"
    );
    assert_absent(s, &crashed, "after the sweep").await;
    assert_holds(s, &kept, &data, "a committed object is never swept").await;
    // The key is still usable.
    put(s, &crashed, &data, 1_000).await;
    assert_holds(s, &crashed, &data, "an upload after a swept one").await;
}

/// An upload swept while still running fails at commit and leaves the key as it was.
pub async fn a_swept_upload_never_commits_a_part<S: NarStore>(s: &S) {
    let key = key();
    let old = pattern(22, 0, 3_000);
    put(s, &key, &old, 1_000).await;
    let mut upload = spilled_upload(s, &key, 23).await;
    assert!(
        s.sweep(Duration::ZERO).await.expect("sweep") >= 1,
        "the running upload's temporary state is swept"
    );
    // Writing on may already notice; committing must.
    let wrote = upload.write(Bytes::from(pattern(23, SPILLED, SPILLED + MIB))).await;
    assert!(
        matches!(wrote, Ok(()) | Err(NarStoreError::NotFound)),
        "a write after the sweep: {wrote:?}"
    );
    if wrote.is_ok() {
        let committed = upload.commit().await;
        assert!(
            matches!(committed, Err(NarStoreError::NotFound)),
            "a swept upload's commit answers NotFound, not {committed:?}"
        );
    } else {
        let _ = upload.abort().await;
    }
    assert_holds(s, &key, &old, "the key keeps its object after a swept replacement").await;
}

/// A group commit (what an import does for a batch of paths) makes every object visible whole, answers their
/// sizes in order, replaces an existing object, takes a large (spilled) upload among small ones, leaves
/// nothing for a sweep, and commits an empty group as nothing.
pub async fn commit_all_makes_every_object_visible<S: NarStore>(s: &S) {
    assert_eq!(
        s.commit_all(Vec::new()).await.expect("commit_all of nothing"),
        Vec::<u64>::new()
    );
    let replaced = key();
    put(s, &replaced, &pattern(30, 0, 9_000), 1_000).await;
    let mut objects: Vec<(String, Vec<u8>)> = (0..5u64)
        .map(|i| (key(), pattern(31 + i, 0, 600 + i as usize * 97)))
        .collect();
    objects.push((replaced.clone(), pattern(36, 0, 4_000)));
    objects.push((key(), Vec::new()));
    let mut uploads = Vec::new();
    for (key, data) in &objects {
        let mut upload = s.begin(key).await.expect("begin");
        for part in data.chunks(256) {
            upload.write(Bytes::copy_from_slice(part)).await.expect("write");
        }
        uploads.push(upload);
    }
    let large = key();
    uploads.push(spilled_upload(s, &large, 37).await);
    for (key, _) in &objects {
        if key != &replaced {
            assert_absent(s, key, "before the group commits").await;
        }
    }
    let sizes = s.commit_all(uploads).await.expect("commit_all");
    let mut expected: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
    expected.push(SPILLED as u64);
    assert_eq!(sizes, expected, "commit_all answers each object's size, in order");
    for (key, data) in &objects {
        assert_holds(s, key, data, "after the group commits").await;
    }
    assert_holds(s, &large, &pattern(37, 0, SPILLED), "a spilled upload in the group").await;
    assert_eq!(
        s.sweep(Duration::ZERO).await.expect("sweep"),
        0,
        "a group commit leaves nothing to sweep"
    );
}

/// A group with an upload swept while running fails, and every key of the group holds either its previous
/// object or the whole new one; nothing is left to sweep.
pub async fn commit_all_with_a_swept_upload_fails_and_keeps_every_key_whole<S: NarStore>(s: &S) {
    let (small, swept) = (key(), key());
    let old = pattern(40, 0, 2_000);
    put(s, &swept, &old, 1_000).await;
    let data = pattern(41, 0, 1_500);
    let mut first = s.begin(&small).await.expect("begin");
    first.write(Bytes::copy_from_slice(&data)).await.expect("write");
    let mut second = spilled_upload(s, &swept, 42).await;
    s.sweep(Duration::ZERO).await.expect("sweep");
    if second
        .write(Bytes::from(pattern(42, SPILLED, SPILLED + 10)))
        .await
        .is_err()
    {
        // The backend noticed the sweep already: the group cannot be tried.
        let _ = second.abort().await;
        let _ = first.abort().await;
        return;
    }
    let done = s.commit_all(vec![first, second]).await;
    assert!(done.is_err(), "a group with a swept upload fails, not {done:?}");
    assert_holds(s, &swept, &old, "the swept upload's key keeps its object").await;
    match read(s, &small, None).await {
        None => {}
        Some((_, bytes)) => assert!(bytes == data, "the other key holds the whole new object or nothing"),
    }
    assert_eq!(
        s.sweep(Duration::ZERO).await.expect("sweep"),
        0,
        "nothing of the group is left behind"
    );
}
