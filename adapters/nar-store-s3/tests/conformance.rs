//! The NAR store contract on a real S3-compatible server, plus what only the S3 adapter can get wrong: the
//! prefix, multipart uploads left behind, and reporting a missing bucket or bad credentials at start-up.
//!
//! These tests need `GRADIENT_TEST_S3_ENDPOINT`: the URL of an S3-compatible server that accepts any
//! credentials and lets them create buckets, such as moto (`moto_server -H 127.0.0.1 -p 9090`); each test
//! gets a bucket of its own. `scripts/test` starts one and sets it.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use gradient_domain::ports::nar_store::{NarStore, NarStoreError, NarUpload};
use gradient_nar_store_s3::{S3Config, S3NarStore};
use gradient_ports::nar_store::contract::{key, pattern, put, read};
use s3::creds::Credentials;
use s3::{Bucket, BucketConfiguration, Region};

const ENDPOINT_VAR: &str = "GRADIENT_TEST_S3_ENDPOINT";

fn endpoint() -> String {
    std::env::var(ENDPOINT_VAR).unwrap_or_else(|_| {
        panic!(
            "{ENDPOINT_VAR} is not set: point it at an S3-compatible server that lets any credentials create \
             buckets, e.g. run `pip install 'moto[server]' && moto_server -H 127.0.0.1 -p 9090` and set \
             {ENDPOINT_VAR}=http://127.0.0.1:9090 (scripts/test does both)"
        )
    })
}

/// rust-s3 creates buckets with a LocationConstraint naming the region unless RUST_S3_SKIP_LOCATION_CONSTRAINT
/// is set, and moto refuses `us-east-1` as a constraint (AWS's default region has none) but also a missing
/// one for any other region. So: us-east-1 when the variable is set (as `scripts/test` does), another region
/// when not. Either way every request is signed for the region the bucket is in.
fn region_name() -> &'static str {
    match std::env::var("RUST_S3_SKIP_LOCATION_CONSTRAINT").as_deref() {
        Ok("true" | "1") => "us-east-1",
        _ => "eu-west-1",
    }
}

fn credentials() -> Credentials {
    Credentials::new(Some("test"), Some("test"), None, None, None).unwrap()
}

fn region() -> Region {
    Region::Custom {
        region: region_name().to_owned(),
        endpoint: endpoint(),
    }
}

/// Creates a bucket with a fresh name and answers a client for it.
async fn new_bucket() -> Box<Bucket> {
    let name = format!("gradient-test-{}", uuid::Uuid::new_v4().simple());
    let created = Bucket::create_with_path_style(&name, region(), credentials(), BucketConfiguration::default())
        .await
        .unwrap();
    assert!(
        created.success(),
        "creating bucket {name}: HTTP {} {}",
        created.response_code,
        created.response_text
    );
    created.bucket
}

fn config(bucket: &Bucket, prefix: &str) -> S3Config {
    S3Config {
        endpoint: endpoint(),
        region: region_name().to_owned(),
        bucket: bucket.name(),
        prefix: prefix.to_owned(),
        access_key: "test".to_owned(),
        secret_key: "test".to_owned(),
        path_style: true,
    }
}

async fn fresh_s3() -> S3NarStore {
    let bucket = new_bucket().await;
    S3NarStore::new(config(&bucket, "cache")).await.unwrap()
}

mod nar_s3 {
    gradient_ports::nar_store_contract!(crate::fresh_s3);
}

async fn object_names(bucket: &Bucket) -> Vec<String> {
    let pages = bucket.list(String::new(), None).await.unwrap();
    pages.into_iter().flat_map(|p| p.contents).map(|o| o.key).collect()
}

async fn open_multipart_uploads(bucket: &Bucket) -> usize {
    let pages = bucket.list_multiparts_uploads(None, None).await.unwrap();
    pages.iter().map(|p| p.uploads.len()).sum()
}

#[tokio::test]
async fn objects_live_under_the_prefix() {
    let bucket = new_bucket().await;
    let store = S3NarStore::new(config(&bucket, "/some/prefix/")).await.unwrap();
    let key = key();
    put(&store, &key, b"hello", 2).await;
    assert_eq!(object_names(&bucket).await, vec![format!("some/prefix/{key}")]);

    let unprefixed = S3NarStore::new(config(&bucket, "")).await.unwrap();
    assert_eq!(
        read(&unprefixed, &format!("some/prefix/{key}"), None).await.unwrap().1,
        b"hello"
    );
    assert!(read(&unprefixed, &key, None).await.is_none());
}

#[tokio::test]
async fn no_multipart_upload_outlives_its_upload() {
    let bucket = new_bucket().await;
    let store = S3NarStore::new(config(&bucket, "")).await.unwrap();
    let big = Bytes::from(pattern(1, 0, 9 * 1024 * 1024));

    let mut upload = store.begin(&key()).await.unwrap();
    upload.write(big.clone()).await.unwrap();
    assert_eq!(open_multipart_uploads(&bucket).await, 1, "a part was sent");
    upload.commit().await.unwrap();
    assert_eq!(open_multipart_uploads(&bucket).await, 0, "after commit");

    let mut upload = store.begin(&key()).await.unwrap();
    upload.write(big.clone()).await.unwrap();
    upload.abort().await.unwrap();
    assert_eq!(open_multipart_uploads(&bucket).await, 0, "after abort");

    let mut upload = store.begin(&key()).await.unwrap();
    upload.write(big).await.unwrap();
    drop(upload);
    // The abort runs in the background.
    for _ in 0..50 {
        if open_multipart_uploads(&bucket).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(open_multipart_uploads(&bucket).await, 0, "after drop");
    assert_eq!(object_names(&bucket).await.len(), 1, "only the committed object exists");
}

#[tokio::test]
async fn a_missing_bucket_is_reported_at_start() {
    let bucket = new_bucket().await;
    let mut config = config(&bucket, "");
    config.bucket = format!("gradient-missing-{}", uuid::Uuid::new_v4().simple());
    match S3NarStore::new(config).await {
        Err(NarStoreError::Unavailable(why)) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("expected Unavailable, got {:?}", other.map(drop)),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bucket = new_bucket().await;
    let mut config = config(&bucket, "");
    config.endpoint = format!("http://127.0.0.1:{port}");
    assert!(matches!(
        S3NarStore::new(config).await,
        Err(NarStoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_invalid_prefix_is_refused() {
    let bucket = new_bucket().await;
    assert!(matches!(
        S3NarStore::new(config(&bucket, "a/../b")).await,
        Err(NarStoreError::InvalidKey(_))
    ));
}

/// What a killed process left (its store gone without commit, abort or drop) is swept by the next one.
#[tokio::test]
async fn a_new_store_sweeps_the_multipart_uploads_a_killed_one_left() {
    let bucket = new_bucket().await;
    let crashed = S3NarStore::new(config(&bucket, "cache")).await.unwrap();
    let mut upload = crashed.begin(&key()).await.unwrap();
    upload.write(Bytes::from(pattern(1, 0, 9 * 1024 * 1024))).await.unwrap();
    std::mem::forget(upload);
    drop(crashed);
    assert_eq!(open_multipart_uploads(&bucket).await, 1, "the killed upload is left");
    let other_prefix = S3NarStore::new(config(&bucket, "other")).await.unwrap();
    assert_eq!(
        other_prefix.sweep(std::time::Duration::ZERO).await.unwrap(),
        0,
        "a store sweeps only its prefix"
    );
    let restarted = S3NarStore::new(config(&bucket, "cache")).await.unwrap();
    assert_eq!(restarted.sweep(std::time::Duration::ZERO).await.unwrap(), 1);
    assert_eq!(open_multipart_uploads(&bucket).await, 0);
}
