//! What caches hold: NAR file records and cached paths (narinfos).

use super::support::{
    cache, cached_path, grant, long_ago, nar_file, new_cached_path, new_nar_file, org, seconds, user,
};
use gradient_domain::CacheId;
use gradient_domain::model::{CachedPath, Compression, NarFile};
use gradient_domain::ports::{Storage, StorageError};

/// The urls of the files in `listed` that are among `ours`, in listed order (other scenarios' rows ignored).
fn urls(listed: &[NarFile], ours: &[&NarFile]) -> Vec<String> {
    listed
        .iter()
        .filter(|f| ours.iter().any(|o| o.cache_id == f.cache_id && o.url == f.url))
        .map(|f| f.url.clone())
        .collect()
}

/// The hash parts of the paths in `listed` that are among `ours`, in listed order.
fn hash_parts(listed: &[CachedPath], ours: &[&CachedPath]) -> Vec<String> {
    listed
        .iter()
        .filter(|p| {
            ours.iter()
                .any(|o| o.cache_id == p.cache_id && o.hash_part == p.hash_part)
        })
        .map(|p| p.hash_part.clone())
        .collect()
}

/// A NAR file record reads back whole, with every compression and sizes above 2^32.
pub async fn nar_file_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let zstd = new_nar_file(main.id);
    let mut xz = new_nar_file(main.id);
    xz.url = xz.url.replace(".nar.zst", ".nar.xz");
    xz.compression = Compression::Xz;
    xz.file_size = u64::from(u32::MAX) + 1;
    xz.nar_size = 1 << 40;
    xz.created_at = zstd.created_at - seconds(60);
    let mut plain = new_nar_file(main.id);
    plain.url = plain.url.replace(".nar.zst", ".nar");
    plain.compression = Compression::None;
    plain.file_size = 0;
    plain.nar_size = 0;
    for file in [&zstd, &xz, &plain] {
        s.put_nar_file(file).await.expect("put_nar_file");
    }
    for file in [&zstd, &xz, &plain] {
        assert_eq!(
            s.nar_file(main.id, &file.url).await.expect("nar_file"),
            Some(file.clone()),
            "nar file {} reads back whole",
            file.url
        );
    }
    assert_eq!(
        s.nar_file(main.id, &zstd.url)
            .await
            .expect("nar_file")
            .map(|f| f.file_size),
        Some(5_000_000_000),
        "a 5 GB size survives"
    );
}

/// Putting a NAR file record again under the same url replaces it; the same url in another cache is another
/// record.
pub async fn put_nar_file_replaces_by_url<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let first = nar_file(s, main.id).await;
    let elsewhere = NarFile {
        cache_id: other.id,
        ..first.clone()
    };
    s.put_nar_file(&elsewhere).await.expect("put_nar_file in another cache");
    let replacement = NarFile {
        url: first.url.clone(),
        compression: Compression::Xz,
        file_size: 7_000_000_000,
        created_at: first.created_at + seconds(5),
        ..new_nar_file(main.id)
    };
    s.put_nar_file(&replacement).await.expect("put_nar_file again");
    assert_eq!(
        s.nar_file(main.id, &first.url).await.expect("nar_file"),
        Some(replacement),
        "the second put replaced the first, every field"
    );
    assert_eq!(
        s.nar_file(other.id, &first.url).await.expect("nar_file"),
        Some(elsewhere),
        "the same url in another cache is untouched"
    );
}

/// A cached path reads back whole: sizes above 2^32, references in order, optional fields set or not.
pub async fn cached_path_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let file = nar_file(s, main.id).await;
    let full = new_cached_path(&file, "hello-2.12");
    let mut bare = new_cached_path(&file, "source");
    bare.references = vec![];
    bare.deriver = None;
    bare.system = None;
    bare.ca = None;
    bare.compression = Compression::None;
    bare.file_size = u64::from(u32::MAX) + 7;
    bare.nar_size = 3;
    bare.last_fetched_at = bare.created_at + seconds(3600);
    let mut one = new_cached_path(&file, "one-reference");
    one.references.truncate(1);
    one.compression = Compression::Xz;
    one.deriver = None;
    one.created_at = full.created_at - seconds(86_400);
    for path in [&full, &bare, &one] {
        s.put_cached_path(path).await.expect("put_cached_path");
    }
    for path in [&full, &bare, &one] {
        assert_eq!(
            s.cached_path(main.id, &path.hash_part).await.expect("cached_path"),
            Some(path.clone()),
            "cached path {} reads back whole",
            path.store_path
        );
    }
    let read = s.cached_path(main.id, &full.hash_part).await.expect("cached_path");
    assert_eq!(
        read.as_ref().map(|p| (p.file_size, p.nar_size)),
        Some((5_000_000_000, 12_000_000_000)),
        "sizes above 2^32 survive"
    );
    assert_eq!(
        read.map(|p| p.references),
        Some(full.references.clone()),
        "references keep their order"
    );
}

/// A cache never replaces what it has: putting a path again under the same hash part leaves the first
/// narinfo, every field, and answers false; the same hash part in another cache is its own.
pub async fn put_cached_path_keeps_the_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let first = cached_path(s, main.id, "hello").await;
    let elsewhere = CachedPath {
        cache_id: other.id,
        ..first.clone()
    };
    assert!(
        s.put_cached_path(&elsewhere)
            .await
            .expect("put_cached_path in another cache"),
        "the same path in another cache is new there"
    );
    let rebuilt = nar_file(s, main.id).await;
    let replacement = CachedPath {
        hash_part: first.hash_part.clone(),
        store_path: first.store_path.clone(),
        references: vec![],
        deriver: None,
        ca: None,
        created_at: first.created_at + seconds(10),
        last_fetched_at: first.created_at + seconds(20),
        ..new_cached_path(&rebuilt, "hello")
    };
    assert!(
        !s.put_cached_path(&replacement).await.expect("put_cached_path again"),
        "a second put reports the path was there"
    );
    assert_eq!(
        s.cached_path(main.id, &first.hash_part).await.expect("cached_path"),
        Some(first.clone()),
        "the first narinfo stays, every field"
    );
    assert!(
        !s.nar_url_in_use(main.id, &rebuilt.url).await.expect("nar_url_in_use"),
        "the refused narinfo's url is not in use"
    );
    assert_eq!(
        s.cached_path(other.id, &first.hash_part).await.expect("cached_path"),
        Some(elsewhere),
        "the same hash part in another cache is untouched"
    );
    assert_eq!(
        s.cache_usage(main.id).await.expect("cache_usage"),
        (1, first.file_size),
        "counted once"
    );
}

/// A batch of NAR file records and then of paths (what an import records at once) is stored whole, each
/// read back as put; a path whose hash part is held already, or comes twice in the batch, keeps the first
/// and answers false in its place; an empty batch is nothing.
pub async fn batches_of_nar_files_and_paths_are_stored_whole<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let held = cached_path(s, main.id, "held").await;
    let files: Vec<NarFile> = (0..3).map(|_| new_nar_file(main.id)).collect();
    s.put_nar_files(&files).await.expect("put_nar_files");
    s.put_nar_files(&[]).await.expect("put_nar_files of nothing");
    for f in &files {
        assert_eq!(
            s.nar_file(main.id, &f.url).await.expect("nar_file"),
            Some(f.clone()),
            "every file of the batch reads back whole"
        );
    }
    let a = new_cached_path(&files[0], "a");
    let b = new_cached_path(&files[1], "b");
    let again_held = CachedPath {
        hash_part: held.hash_part.clone(),
        store_path: held.store_path.clone(),
        ..new_cached_path(&files[2], "held")
    };
    let b_twice = CachedPath {
        url: files[2].url.clone(),
        ..b.clone()
    };
    assert_eq!(
        s.put_cached_paths(&[a.clone(), again_held, b.clone(), b_twice])
            .await
            .expect("put_cached_paths"),
        vec![true, false, true, false],
        "new paths are stored; one held or earlier in the batch is not"
    );
    assert_eq!(
        s.put_cached_paths(&[]).await.expect("put_cached_paths of nothing"),
        Vec::<bool>::new()
    );
    for (path, expected) in [(&a, &a), (&b, &b), (&held, &held)] {
        assert_eq!(
            s.cached_path(main.id, &path.hash_part).await.expect("cached_path"),
            Some(expected.clone()),
            "{} reads back as first put",
            path.store_path
        );
    }
    assert!(
        !s.nar_url_in_use(main.id, &files[2].url).await.expect("nar_url_in_use"),
        "the refused paths' file is not in use"
    );
}

/// A batch naming a cache that does not exist is refused with NotFound, and nothing of it is stored, not even
/// the rows of caches that exist.
pub async fn batches_with_an_unknown_cache_store_nothing<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let ghost = CacheId::new();
    let ours = new_nar_file(main.id);
    assert_eq!(
        s.put_nar_files(&[ours.clone(), new_nar_file(ghost)]).await,
        Err(StorageError::NotFound)
    );
    assert_eq!(
        s.nar_file(main.id, &ours.url).await.expect("nar_file"),
        None,
        "the batch's other file is not stored"
    );
    let file = nar_file(s, main.id).await;
    let path = new_cached_path(&file, "kept-out");
    let lost = CachedPath {
        cache_id: ghost,
        ..new_cached_path(&file, "ghost")
    };
    assert_eq!(
        s.put_cached_paths(&[path.clone(), lost]).await,
        Err(StorageError::NotFound)
    );
    assert_eq!(
        s.cached_path(main.id, &path.hash_part).await.expect("cached_path"),
        None,
        "the batch's other path is not stored"
    );
}

/// Contents of a cache that does not exist are refused with NotFound and not stored.
pub async fn cache_contents_of_unknown_cache_are_not_found<S: Storage>(s: &S) {
    let ghost = CacheId::new();
    let file = new_nar_file(ghost);
    assert_eq!(
        s.put_nar_file(&file).await,
        Err(StorageError::NotFound),
        "nar file of an unknown cache"
    );
    assert_eq!(
        s.nar_file(ghost, &file.url).await.expect("nar_file"),
        None,
        "no row for the refused nar file"
    );
    let path = new_cached_path(&file, "hello");
    assert_eq!(
        s.put_cached_path(&path).await,
        Err(StorageError::NotFound),
        "cached path of an unknown cache"
    );
    assert_eq!(
        s.cached_path(ghost, &path.hash_part).await.expect("cached_path"),
        None,
        "no row for the refused cached path"
    );
    assert!(
        !s.nar_url_in_use(ghost, &file.url).await.expect("nar_url_in_use"),
        "the refused path refers to nothing"
    );
}

/// Reads of contents that do not exist are empty, deletes report false, touches update nothing.
pub async fn absent_cache_contents_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let empty = cache(s, "empty", alice.id, false).await;
    let file = new_nar_file(empty.id);
    let path = new_cached_path(&file, "hello");
    for cache in [empty.id, CacheId::new()] {
        assert_eq!(
            s.nar_file(cache, &file.url).await.expect("nar_file"),
            None,
            "no nar file"
        );
        assert!(
            !s.delete_nar_file(cache, &file.url).await.expect("delete_nar_file"),
            "deleting an absent nar file"
        );
        assert_eq!(
            s.cached_path(cache, &path.hash_part).await.expect("cached_path"),
            None,
            "no cached path"
        );
        assert!(
            !s.delete_cached_path(cache, &path.hash_part)
                .await
                .expect("delete_cached_path"),
            "deleting an absent cached path"
        );
        assert!(
            !s.nar_url_in_use(cache, &file.url).await.expect("nar_url_in_use"),
            "no path refers to the url"
        );
        assert_eq!(
            s.touch_cached_paths(cache, std::slice::from_ref(&path.hash_part), path.created_at)
                .await
                .expect("touch_cached_paths"),
            0,
            "touching an absent path updates nothing"
        );
        assert_eq!(
            s.cache_usage(cache).await.expect("cache_usage"),
            (0, 0),
            "an empty or unknown cache uses nothing"
        );
    }
}

/// A url is in use while a path of the same cache refers to it; a path in another cache does not count.
pub async fn nar_url_in_use_is_per_cache<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let path = cached_path(s, main.id, "hello").await;
    let unreferenced = nar_file(s, main.id).await;
    let same_url_elsewhere = NarFile {
        url: path.url.clone(),
        ..new_nar_file(other.id)
    };
    s.put_nar_file(&same_url_elsewhere)
        .await
        .expect("put_nar_file with the same url in another cache");
    assert!(
        s.nar_url_in_use(main.id, &path.url).await.expect("nar_url_in_use"),
        "the path's url in its cache"
    );
    assert!(
        !s.nar_url_in_use(other.id, &path.url).await.expect("nar_url_in_use"),
        "the same url in another cache"
    );
    assert!(
        !s.nar_url_in_use(main.id, &unreferenced.url)
            .await
            .expect("nar_url_in_use"),
        "a file no path refers to"
    );
}

/// `held_hash_parts` answers, in one question of any size, which hash parts the cache itself holds.
pub async fn held_hash_parts_are_those_of_the_cache_only<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let a = cached_path(s, main.id, "a").await;
    let b = cached_path(s, main.id, "b").await;
    let elsewhere = cached_path(s, other.id, "c").await;
    // More than one chunk of any sensible batch size, with duplicates.
    let mut asked: Vec<String> = (0..1500).map(|i| format!("{i:032}")).collect();
    asked.extend([
        a.hash_part.clone(),
        b.hash_part.clone(),
        a.hash_part.clone(),
        elsewhere.hash_part.clone(),
    ]);
    let mut held = s.held_hash_parts(main.id, &asked).await.expect("held_hash_parts");
    held.sort();
    let mut want = vec![a.hash_part.clone(), b.hash_part.clone()];
    want.sort();
    assert_eq!(
        held, want,
        "each held one once; another cache's path is not this cache's"
    );
    assert!(
        s.held_hash_parts(main.id, &[])
            .await
            .expect("held_hash_parts")
            .is_empty(),
        "nothing asked"
    );
}

/// Orphans are the NAR files no path of their own cache refers to, created strictly before the cutoff.
pub async fn orphan_nar_files_are_unreferenced_and_older_than_the_cutoff<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let base = long_ago();
    let at = |n: i64| base + seconds(n);

    let put = |file: NarFile| async move {
        s.put_nar_file(&file).await.expect("put_nar_file");
        file
    };
    let referenced = put(NarFile {
        created_at: at(1),
        ..new_nar_file(main.id)
    })
    .await;
    let referrer = new_cached_path(&referenced, "hello");
    s.put_cached_path(&referrer).await.expect("put_cached_path");
    let orphan = put(NarFile {
        created_at: at(2),
        ..new_nar_file(main.id)
    })
    .await;
    // Same url as the referenced file, but in a cache where no path refers to it.
    let orphan_elsewhere = put(NarFile {
        cache_id: other.id,
        created_at: at(3),
        ..referenced.clone()
    })
    .await;
    let at_cutoff = put(NarFile {
        created_at: at(10),
        ..new_nar_file(main.id)
    })
    .await;
    let recent = put(NarFile {
        created_at: at(20),
        ..new_nar_file(main.id)
    })
    .await;
    let ours = [&referenced, &orphan, &orphan_elsewhere, &at_cutoff, &recent];

    let found = s.orphan_nar_files(at(10), 1000).await.expect("orphan_nar_files");
    assert_eq!(
        urls(&found, &ours),
        vec![orphan.url.clone(), orphan_elsewhere.url.clone()],
        "unreferenced files created before the cutoff, oldest first"
    );
    assert!(
        found.contains(&orphan_elsewhere),
        "the orphan of the other cache is listed whole, with its cache"
    );
    assert!(
        !found
            .iter()
            .any(|f| f.cache_id == referenced.cache_id && f.url == referenced.url),
        "a referenced file is not an orphan"
    );

    assert!(
        s.delete_cached_path(main.id, &referrer.hash_part)
            .await
            .expect("delete_cached_path"),
        "the referring path is deleted"
    );
    assert_eq!(
        urls(
            &s.orphan_nar_files(at(10), 1000).await.expect("orphan_nar_files"),
            &ours
        ),
        vec![referenced.url.clone(), orphan.url.clone(), orphan_elsewhere.url.clone()],
        "a file no path refers to any more is an orphan"
    );
    assert_eq!(
        s.orphan_nar_files(at(1), 1000)
            .await
            .expect("orphan_nar_files")
            .iter()
            .filter(|f| ours.iter().any(|o| o.url == f.url))
            .count(),
        0,
        "the cutoff is exclusive: nothing of ours was created before the first file"
    );
}

/// Orphans come oldest first, at most `limit` of them.
pub async fn orphan_nar_files_are_oldest_first_and_limited<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let base = long_ago();
    // Put out of order, alternating caches.
    let mut files = Vec::new();
    for (n, cache) in [(4, main.id), (1, other.id), (3, main.id), (2, other.id), (5, main.id)] {
        let file = NarFile {
            created_at: base + seconds(n),
            ..new_nar_file(cache)
        };
        s.put_nar_file(&file).await.expect("put_nar_file");
        files.push(file);
    }
    let mut oldest_first = files.clone();
    oldest_first.sort_by_key(|f| f.created_at);
    let cutoff = base + seconds(100);

    assert_eq!(
        s.orphan_nar_files(cutoff, 3).await.expect("orphan_nar_files"),
        oldest_first[..3].to_vec(),
        "the three oldest, whole, oldest first"
    );
    assert_eq!(
        s.orphan_nar_files(cutoff, 5).await.expect("orphan_nar_files"),
        oldest_first,
        "all five"
    );
    assert_eq!(
        s.orphan_nar_files(cutoff, 0).await.expect("orphan_nar_files"),
        vec![],
        "a limit of zero"
    );
}

/// Touching paths sets only their `last_fetched_at`, in the given cache; unknown hash parts are ignored and
/// the answer counts the paths updated.
pub async fn touching_cached_paths_records_only_their_last_fetch<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let first = cached_path(s, main.id, "first").await;
    let second = cached_path(s, main.id, "second").await;
    let untouched = cached_path(s, main.id, "untouched").await;
    let same_elsewhere = CachedPath {
        cache_id: other.id,
        ..first.clone()
    };
    s.put_cached_path(&same_elsewhere).await.expect("put_cached_path");
    let at = first.created_at + seconds(90);
    let batch = vec![
        first.hash_part.clone(),
        "0000000000000000000000000000000z".to_owned(),
        second.hash_part.clone(),
    ];
    assert_eq!(
        s.touch_cached_paths(main.id, &batch, at)
            .await
            .expect("touch_cached_paths"),
        2,
        "two known paths updated"
    );
    for path in [&first, &second] {
        assert_eq!(
            s.cached_path(main.id, &path.hash_part).await.expect("cached_path"),
            Some(CachedPath {
                last_fetched_at: at,
                ..path.clone()
            }),
            "only last_fetched_at changed"
        );
    }
    assert_eq!(
        s.cached_path(main.id, &untouched.hash_part).await.expect("cached_path"),
        Some(untouched),
        "a path not in the batch is untouched"
    );
    assert_eq!(
        s.cached_path(other.id, &first.hash_part).await.expect("cached_path"),
        Some(same_elsewhere),
        "the same hash part in another cache is untouched"
    );
    assert_eq!(
        s.touch_cached_paths(main.id, &[], at)
            .await
            .expect("touch_cached_paths"),
        0,
        "an empty batch"
    );
    let later = at + seconds(30);
    assert_eq!(
        s.touch_cached_paths(main.id, &[first.hash_part.clone(), first.hash_part.clone()], later)
            .await
            .expect("touch_cached_paths"),
        1,
        "a hash part given twice is one path updated"
    );
    assert_eq!(
        s.cached_path(main.id, &first.hash_part)
            .await
            .expect("cached_path")
            .map(|p| p.last_fetched_at),
        Some(later),
        "touched again"
    );
}

/// Stale paths, of any cache, are those last fetched strictly before the cutoff, least recently fetched first,
/// at most `limit`.
pub async fn stale_cached_paths_are_least_recently_fetched_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let base = long_ago();
    let mut paths = Vec::new();
    for (n, cache) in [(3, main.id), (1, other.id), (4, other.id), (2, main.id), (10, main.id)] {
        let file = nar_file(s, cache).await;
        let path = CachedPath {
            last_fetched_at: base + seconds(n),
            created_at: base,
            ..new_cached_path(&file, "stale")
        };
        s.put_cached_path(&path).await.expect("put_cached_path");
        paths.push(path);
    }
    let mut least_recent_first = paths.clone();
    least_recent_first.sort_by_key(|p| p.last_fetched_at);
    let cutoff = base + seconds(10);

    assert_eq!(
        s.stale_cached_paths(cutoff, 100).await.expect("stale_cached_paths"),
        least_recent_first[..4].to_vec(),
        "the four fetched before the cutoff (exclusive), whole, least recently fetched first"
    );
    assert_eq!(
        s.stale_cached_paths(cutoff, 2).await.expect("stale_cached_paths"),
        least_recent_first[..2].to_vec(),
        "at most the limit"
    );
    assert_eq!(
        s.stale_cached_paths(cutoff, 0).await.expect("stale_cached_paths"),
        vec![],
        "a limit of zero"
    );

    // A fetch makes a path fresh again.
    let oldest = &least_recent_first[0];
    s.touch_cached_paths(oldest.cache_id, std::slice::from_ref(&oldest.hash_part), cutoff)
        .await
        .expect("touch_cached_paths");
    let ours: Vec<&CachedPath> = paths.iter().collect();
    assert_eq!(
        hash_parts(
            &s.stale_cached_paths(cutoff, 100).await.expect("stale_cached_paths"),
            &ours
        ),
        least_recent_first[1..4]
            .iter()
            .map(|p| p.hash_part.clone())
            .collect::<Vec<_>>(),
        "a path fetched at the cutoff is no longer stale"
    );
}

/// Deleting a NAR file record or a path deletes that row only: the file's referrers stay, and the path's
/// file stays (and becomes an orphan).
pub async fn delete_nar_file_and_cached_path_remove_only_that_row<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let path = cached_path(s, main.id, "hello").await;
    let file = s
        .nar_file(main.id, &path.url)
        .await
        .expect("nar_file")
        .expect("the path's file is stored");
    let twin_file = NarFile {
        cache_id: other.id,
        ..file.clone()
    };
    s.put_nar_file(&twin_file).await.expect("put_nar_file");
    let twin_path = CachedPath {
        cache_id: other.id,
        ..path.clone()
    };
    s.put_cached_path(&twin_path).await.expect("put_cached_path");

    assert!(
        s.delete_cached_path(main.id, &path.hash_part)
            .await
            .expect("delete_cached_path"),
        "deleting a stored path"
    );
    assert_eq!(
        s.cached_path(main.id, &path.hash_part).await.expect("cached_path"),
        None,
        "the path is gone"
    );
    assert!(
        !s.delete_cached_path(main.id, &path.hash_part)
            .await
            .expect("delete_cached_path"),
        "deleting it again reports false"
    );
    assert_eq!(
        s.nar_file(main.id, &file.url).await.expect("nar_file"),
        Some(file.clone()),
        "its file stays"
    );
    assert!(
        !s.nar_url_in_use(main.id, &file.url).await.expect("nar_url_in_use"),
        "and is no longer in use"
    );

    assert!(
        s.delete_nar_file(main.id, &file.url).await.expect("delete_nar_file"),
        "deleting a stored file"
    );
    assert_eq!(
        s.nar_file(main.id, &file.url).await.expect("nar_file"),
        None,
        "the file is gone"
    );
    assert!(
        !s.delete_nar_file(main.id, &file.url).await.expect("delete_nar_file"),
        "deleting it again reports false"
    );

    assert_eq!(
        s.nar_file(other.id, &file.url).await.expect("nar_file"),
        Some(twin_file),
        "the same url in another cache stays"
    );
    assert_eq!(
        s.cached_path(other.id, &path.hash_part).await.expect("cached_path"),
        Some(twin_path),
        "the same hash part in another cache stays"
    );
    assert!(
        s.nar_url_in_use(other.id, &file.url).await.expect("nar_url_in_use"),
        "and is still in use there"
    );
}

/// Deleting a cache deletes its NAR file records and cached paths, and no other cache's.
pub async fn delete_cache_removes_its_contents<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = cache(s, "doomed", alice.id, false).await;
    let kept = cache(s, "kept", alice.id, false).await;
    let base = long_ago();
    let mut rows = Vec::new();
    for cache in [doomed.id, kept.id] {
        let file = NarFile {
            created_at: base,
            ..new_nar_file(cache)
        };
        s.put_nar_file(&file).await.expect("put_nar_file");
        let path = CachedPath {
            last_fetched_at: base,
            ..new_cached_path(&file, "hello")
        };
        s.put_cached_path(&path).await.expect("put_cached_path");
        let orphan = NarFile {
            created_at: base,
            ..new_nar_file(cache)
        };
        s.put_nar_file(&orphan).await.expect("put_nar_file");
        rows.push((file, path, orphan));
    }
    let [
        (doomed_file, doomed_path, doomed_orphan),
        (kept_file, kept_path, kept_orphan),
    ] = <[_; 2]>::try_from(rows).expect("two caches");

    assert!(
        s.delete_cache(doomed.id).await.expect("delete_cache"),
        "deleting an existing cache"
    );
    for file in [&doomed_file, &doomed_orphan] {
        assert_eq!(
            s.nar_file(doomed.id, &file.url).await.expect("nar_file"),
            None,
            "the deleted cache's nar files are gone"
        );
    }
    assert_eq!(
        s.cached_path(doomed.id, &doomed_path.hash_part)
            .await
            .expect("cached_path"),
        None,
        "the deleted cache's paths are gone"
    );
    assert!(
        !s.nar_url_in_use(doomed.id, &doomed_file.url)
            .await
            .expect("nar_url_in_use"),
        "nothing refers to its files"
    );
    assert_eq!(
        s.cache_usage(doomed.id).await.expect("cache_usage"),
        (0, 0),
        "the deleted cache uses nothing"
    );
    let cutoff = base + seconds(1);
    assert_eq!(
        urls(
            &s.orphan_nar_files(cutoff, 1000).await.expect("orphan_nar_files"),
            &[&doomed_file, &doomed_orphan, &kept_file, &kept_orphan]
        ),
        vec![kept_orphan.url.clone()],
        "only the kept cache's orphan remains to collect"
    );
    assert_eq!(
        hash_parts(
            &s.stale_cached_paths(cutoff, 1000).await.expect("stale_cached_paths"),
            &[&doomed_path, &kept_path]
        ),
        vec![kept_path.hash_part.clone()],
        "only the kept cache's path remains stale"
    );

    assert_eq!(
        s.nar_file(kept.id, &kept_file.url).await.expect("nar_file"),
        Some(kept_file),
        "the other cache's file is untouched"
    );
    assert_eq!(
        s.cached_path(kept.id, &kept_path.hash_part).await.expect("cached_path"),
        Some(kept_path.clone()),
        "the other cache's path is untouched"
    );
    assert_eq!(
        s.cache_usage(kept.id).await.expect("cache_usage"),
        (1, kept_path.file_size),
        "the other cache's usage"
    );
}

/// Deleting an organization leaves the caches it subscribed to, and their contents, alone.
pub async fn delete_org_keeps_subscribed_cache_contents<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let shared = cache(s, "shared", alice.id, false).await;
    assert!(
        s.subscribe(&grant(acme.id, shared.id)).await.expect("subscribe"),
        "a new subscription"
    );
    let path = cached_path(s, shared.id, "hello").await;
    let file = s.nar_file(shared.id, &path.url).await.expect("nar_file");
    assert!(s.delete_org(acme.id).await.expect("delete_org"), "deleting the org");
    assert_eq!(
        s.cached_path(shared.id, &path.hash_part).await.expect("cached_path"),
        Some(path.clone()),
        "the cache's path stays"
    );
    assert_eq!(
        s.nar_file(shared.id, &path.url).await.expect("nar_file"),
        file,
        "the cache's nar file stays"
    );
    assert_eq!(
        s.cache_usage(shared.id).await.expect("cache_usage"),
        (1, path.file_size),
        "its usage is unchanged"
    );
    assert_eq!(
        s.cache(shared.id).await.expect("cache"),
        Some(shared),
        "the cache itself stays"
    );
}

/// A cache's usage is its number of paths and the sum of their compressed sizes; NAR files no path refers to
/// and other caches' paths do not count.
pub async fn cache_usage_counts_paths_and_their_file_sizes<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let main = cache(s, "main", alice.id, false).await;
    let other = cache(s, "other", alice.id, false).await;
    let big = cached_path(s, main.id, "big").await;
    let file = nar_file(s, main.id).await;
    let small = CachedPath {
        file_size: 1_234,
        nar_size: 99_999,
        ..new_cached_path(&file, "small")
    };
    s.put_cached_path(&small).await.expect("put_cached_path");
    // Shares the big path's file: each path counts its own size.
    let sharing = new_cached_path(
        &s.nar_file(main.id, &big.url)
            .await
            .expect("nar_file")
            .expect("the big path's file"),
        "sharing",
    );
    s.put_cached_path(&sharing).await.expect("put_cached_path");
    nar_file(s, main.id).await;
    cached_path(s, other.id, "elsewhere").await;

    assert_eq!(
        s.cache_usage(main.id).await.expect("cache_usage"),
        (3, 5_000_000_000 + 1_234 + 5_000_000_000),
        "three paths, their file sizes summed beyond 2^32"
    );
    assert!(
        s.delete_cached_path(main.id, &big.hash_part)
            .await
            .expect("delete_cached_path"),
        "deleting a path"
    );
    assert_eq!(
        s.cache_usage(main.id).await.expect("cache_usage"),
        (2, 5_000_000_000 + 1_234),
        "the deleted path no longer counts"
    );
    assert_eq!(
        s.cache_usage(other.id).await.expect("cache_usage"),
        (1, 5_000_000_000),
        "the other cache"
    );
}
