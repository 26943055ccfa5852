#![allow(clippy::unwrap_used)]
//! What an import holds in memory while its batches gather: a compressor (megabytes each) only for the NAR
//! being read, never one per path waiting for its batch. Alone in its test binary: the count of compressors
//! alive at once is the process's, and no other test compresses meanwhile.

mod common;

use common::ManualClock;
use common::export::{body, exported, int, nar_of};
use gradient_domain::codec::compressors_peak;
use gradient_domain::model::Compression;
use gradient_domain::nix::nix32;
use gradient_domain::service::{IMPORT_BATCH_PATHS, NewCache, Settings};
use gradient_ports::nar_store::MemoryNarStore;

fn numbered(i: usize) -> String {
    let mut seed = [9u8; 20];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    format!("/nix/store/{}-p{i}", nix32::encode(&seed))
}

#[tokio::test]
async fn an_import_of_many_small_paths_holds_one_compressor_at_a_time() {
    let app = common::app(ManualClock::new(), Settings::default());
    let caller = common::signed_up(&app, "owner").await;
    let nars = MemoryNarStore::new();
    for compression in [Compression::Zstd, Compression::Xz] {
        let cache = app
            .create_cache(
                &caller,
                NewCache {
                    name: compression.as_str().into(),
                    compression: Some(compression),
                    ..NewCache::default()
                },
            )
            .await
            .unwrap();
        // Small paths as a CI run pushes them (one line each), more than two batches' worth, in one stream.
        let count = 2 * IMPORT_BATCH_PATHS + 7;
        let paths: Vec<String> = (0..count).map(numbered).collect();
        let mut stream = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            exported(&mut stream, path, &nar_of(format!("{i}\n").as_bytes()), &[], "");
        }
        int(&mut stream, 0);
        assert_eq!(
            app.import_paths(&nars, &cache, body(stream)).await.unwrap(),
            count as u64
        );
        assert!(app.missing_paths(&cache, &paths).await.unwrap().is_empty());
    }
    // Each was let go when its NAR ended, before its batch was recorded (it was IMPORT_BATCH_PATHS at once).
    assert_eq!(compressors_peak(), 1);
}
