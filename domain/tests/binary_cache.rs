#![allow(clippy::unwrap_used)]
//! The binary cache use cases over the in-memory storage and NAR store, with a clock the test moves:
//! what a push must prove before it is kept, and what garbage collection removes and when.

mod common;

use bytes::Bytes;
use chrono::TimeDelta;
use common::ManualClock;
use common::export::{body, exported, int, nar_of};
use gradient_domain::WorkerId;
use gradient_domain::model::{Cache, JobId, JobKind, JobRecord, JobState, Timestamp};
use gradient_domain::nix::hash::sha256_of;
use gradient_domain::nix::narinfo::NarInfo;
use gradient_domain::nix::nix32;
use gradient_domain::ports::Clock;
use gradient_domain::ports::nar_store::NarStore;
use gradient_domain::ports::storage::{CacheContents, Caches, Queue, Run};
use gradient_domain::service::{Caller, NewCache, ServiceError, Settings, nar_key};
use gradient_ports::nar_store::MemoryNarStore;

type App = common::TestApp<ManualClock>;

async fn setup() -> (App, ManualClock, MemoryNarStore, Cache, Caller) {
    let clock = ManualClock::new();
    let app = common::app(
        clock.clone(),
        Settings {
            domain: "cache.example.com:3000".into(),
            ..Settings::default()
        },
    );
    let caller = common::signed_up(&app, "owner").await;
    let cache = app
        .create_cache(
            &caller,
            NewCache {
                name: "main".into(),
                ..NewCache::default()
            },
        )
        .await
        .unwrap();
    (app, clock, MemoryNarStore::new(), cache, caller)
}

const PATH: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello";

/// Pushes a path as `nix copy` does (NAR, then narinfo); answers the NAR's url.
async fn push(app: &App, nars: &MemoryNarStore, cache: &Cache, contents: &[u8]) -> String {
    let nar = nar_of(contents);
    let file = zstd::bulk::compress(&nar, 3).unwrap();
    let url = format!("nar/{}.nar.zst", nix32::encode(&sha256_of(&file).bytes));
    app.receive_nar(nars, cache, &url, body(file.clone())).await.unwrap();
    let narinfo = format!(
        "StorePath: {PATH}\nURL: {url}\nCompression: zstd\nFileHash: sha256:{}\nFileSize: {}\nNarHash: sha256:{}\nNarSize: {}\nReferences: \n",
        nix32::encode(&sha256_of(&file).bytes),
        file.len(),
        nix32::encode(&sha256_of(&nar).bytes),
        nar.len()
    );
    app.receive_narinfo(nars, cache, &PATH[11..43], &narinfo).await.unwrap();
    url
}

#[tokio::test]
async fn a_pushed_path_is_served_signed_by_the_cache_key() {
    let (app, _, nars, cache, _) = setup().await;
    let url = push(&app, &nars, &cache, b"hello world").await;
    let text = app
        .signed_narinfo(&cache, &PATH[11..43])
        .await
        .unwrap()
        .expect("served");
    let info = NarInfo::parse(&text).unwrap();
    assert_eq!(info.url, url);
    let key = app.cache_secret_key(&cache).unwrap().public();
    assert!(key.name().starts_with("cache.example.com-main"), "{}", key.name());
    assert!(info.verify(&key), "{text}");
    assert!(nars.size(&nar_key(&cache, &url)).await.unwrap().is_some());
}

#[tokio::test]
async fn served_paths_are_the_caches_recent_hits_and_misses_are_not() {
    let (app, clock, nars, cache, owner) = setup().await;
    push(&app, &nars, &cache, b"hello world").await;
    assert!(
        app.cache_stats(&owner, "main").await.unwrap().recent_hits.is_empty(),
        "nothing served yet"
    );
    app.signed_narinfo(&cache, &PATH[11..43])
        .await
        .unwrap()
        .expect("served");
    let missing = "11111111111111111111111111111111";
    assert_eq!(app.signed_narinfo(&cache, missing).await.unwrap(), None);
    let first = clock.now();
    clock.advance(chrono::TimeDelta::seconds(30));
    // Served again (from memory this time): listed once, with the newer time.
    app.signed_narinfo(&cache, &PATH[11..43])
        .await
        .unwrap()
        .expect("served");
    let stats = app.cache_stats(&owner, "main").await.unwrap();
    assert_eq!(stats.recent_hits.len(), 1, "{:?}", stats.recent_hits);
    assert_eq!(stats.recent_hits[0].store_path, PATH);
    assert_eq!(stats.recent_hits[0].at, first + chrono::TimeDelta::seconds(30));
}

#[tokio::test]
async fn a_name_that_cannot_be_a_store_path_hash_is_missing_without_a_lookup() {
    let (app, _clock, nars, cache, _owner) = setup().await;
    push(&app, &nars, &cache, b"hello world").await;
    // Storage answers nothing now: a name that needed it would fail instead of being missing.
    app.storage.go_down_after(Some(0));
    for name in [
        "x".repeat(60_000),
        "e".repeat(32),
        PATH[11..42].to_owned(),
        String::new(),
    ] {
        assert_eq!(app.signed_narinfo(&cache, &name).await.unwrap(), None, "{name:.40}");
        assert!(
            app.nar_listing(&nars, &cache, &name).await.unwrap().is_none(),
            "{name:.40}"
        );
    }
    app.storage.go_down_after(None);
    assert!(app.signed_narinfo(&cache, &PATH[11..43]).await.unwrap().is_some());
}

#[tokio::test]
async fn a_narinfo_without_its_nar_or_lying_about_it_is_refused() {
    let (app, _, nars, cache, _) = setup().await;
    let nar = nar_of(b"data");
    let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
    let lying = format!(
        "StorePath: {PATH}\nURL: {url}\nCompression: none\nNarHash: sha256:{}\nNarSize: {}\nReferences: \n",
        nix32::encode(&sha256_of(&nar).bytes),
        nar.len()
    );
    let e = app
        .receive_narinfo(&nars, &cache, &PATH[11..43], &lying)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "nar_missing");
    app.receive_nar(&nars, &cache, &url, body(nar.clone())).await.unwrap();
    let lying = lying.replace(&format!("NarSize: {}", nar.len()), "NarSize: 1");
    let e = app
        .receive_narinfo(&nars, &cache, &PATH[11..43], &lying)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            ServiceError::Invalid {
                code: "narinfo_mismatch",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        nars.size(&nar_key(&cache, &url)).await.unwrap(),
        None,
        "the contradicted NAR is deleted"
    );
    assert_eq!(app.storage.nar_file(cache.id, &url).await.unwrap(), None);
    assert_eq!(app.signed_narinfo(&cache, &PATH[11..43]).await.unwrap(), None);
}

#[tokio::test]
async fn paths_not_fetched_within_the_ttl_are_collected_with_their_bytes() {
    let (app, clock, nars, cache, _) = setup().await;
    let url = push(&app, &nars, &cache, b"old").await;
    let ttl = Some(TimeDelta::hours(336));

    clock.advance(TimeDelta::hours(300));
    assert_eq!(
        app.collect_garbage(&nars, ttl).await.unwrap().paths,
        0,
        "within the TTL"
    );
    // A fetch (recorded in a batch) renews the path.
    app.storage
        .touch_cached_paths(cache.id, &[PATH[11..43].to_owned()], clock.now())
        .await
        .unwrap();
    clock.advance(TimeDelta::hours(300));
    assert_eq!(
        app.collect_garbage(&nars, ttl).await.unwrap().paths,
        0,
        "fetched 300 h ago"
    );
    assert_eq!(app.collect_garbage(&nars, None).await.unwrap().paths, 0, "TTL off");

    clock.advance(TimeDelta::hours(37));
    let report = app.collect_garbage(&nars, ttl).await.unwrap();
    assert_eq!((report.paths, report.nar_files), (1, 1));
    assert_eq!(app.signed_narinfo(&cache, &PATH[11..43]).await.unwrap(), None);
    assert_eq!(
        nars.size(&nar_key(&cache, &url)).await.unwrap(),
        None,
        "bytes and rows go together"
    );
    assert_eq!(app.storage.nar_file(cache.id, &url).await.unwrap(), None);
}

#[tokio::test]
async fn nars_no_narinfo_refers_to_are_collected_after_a_grace_period() {
    let (app, clock, nars, cache, _) = setup().await;
    let nar = nar_of(b"orphan");
    let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
    app.receive_nar(&nars, &cache, &url, body(nar)).await.unwrap();
    clock.advance(TimeDelta::minutes(30));
    assert_eq!(
        app.collect_garbage(&nars, None).await.unwrap().nar_files,
        0,
        "a push may still be in progress"
    );
    clock.advance(TimeDelta::minutes(31));
    assert_eq!(app.collect_garbage(&nars, None).await.unwrap().nar_files, 1);
    assert_eq!(nars.size(&nar_key(&cache, &url)).await.unwrap(), None);
}

#[tokio::test]
async fn uploads_that_are_not_what_they_claim_leave_nothing() {
    let (app, _, nars, cache, _) = setup().await;
    let nar = nar_of(b"payload");
    let wrong = format!("nar/{}.nar", "1".repeat(52));
    let e = app
        .receive_nar(&nars, &cache, &wrong, body(nar.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "hash_mismatch");
    assert_eq!(nars.size(&nar_key(&cache, &wrong)).await.unwrap(), None);
    let mut truncated = nar.clone();
    truncated.truncate(nar.len() - 8);
    let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&truncated).bytes));
    let e = app.receive_nar(&nars, &cache, &url, body(truncated)).await.unwrap_err();
    assert_eq!(e.code(), "invalid_nar");
    assert_eq!(nars.size(&nar_key(&cache, &url)).await.unwrap(), None);
    let not_zstd = b"plainly not zstd".to_vec();
    let url = format!("nar/{}.nar.zst", nix32::encode(&sha256_of(&not_zstd).bytes));
    let e = app.receive_nar(&nars, &cache, &url, body(not_zstd)).await.unwrap_err();
    assert_eq!(e.code(), "invalid_compression");
    assert_eq!(nars.size(&nar_key(&cache, &url)).await.unwrap(), None);
}

/// A build job of `org`, assigned to `worker`.
async fn assigned_job(app: &App, org: gradient_domain::OrgId, worker: WorkerId) -> (JobId, Timestamp) {
    let job = JobRecord {
        id: JobId::new(),
        org_id: org,
        kind: JobKind::Build {
            derivation: format!("/nix/store/{}-x.drv", "a".repeat(32)),
            system: "x86_64-linux".into(),
            required_features: vec![],
        },
        state: JobState::Queued,
        created_at: app.clock.now(),
        attempts: 0,
    };
    app.storage.enqueue_job(&job).await.unwrap();
    let at = app.clock.now();
    assert!(app.storage.assign_job(job.id, worker, at).await.unwrap());
    (job.id, at)
}

#[tokio::test]
async fn a_job_token_reads_its_orgs_caches_and_pushes_only_to_its_push_cache_while_its_job_is_assigned() {
    let (app, clock, _nars, cache, caller) = setup().await;
    let org = common::org(&app, &caller, "acme").await;
    app.create_cache(
        &caller,
        NewCache {
            name: "spare".into(),
            ..NewCache::default()
        },
    )
    .await
    .unwrap();
    let worker = WorkerId::new();
    let (job, at) = assigned_job(&app, org.id, worker).await;
    let token = app.tokens.issue_job(
        org.id,
        job,
        (worker, at),
        Some(cache.id),
        clock.now() + TimeDelta::hours(1),
    );
    let reads = |name: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            app.cache_for_job_token(token, name, false)
                .await
                .unwrap()
                .map(|c| c.name.to_string())
        }
    };
    let writes = |name: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            app.cache_for_job_token(token, name, true)
                .await
                .unwrap()
                .map(|c| c.name.to_string())
        }
    };
    assert_eq!(reads("main").await, None, "not subscribed");
    app.subscribe(&caller, "acme", "main").await.unwrap();
    app.subscribe(&caller, "acme", "spare").await.unwrap();
    // Asked twice: the second answer comes from memory, and is the same.
    for _ in 0..2 {
        assert_eq!(reads("main").await.as_deref(), Some("main"));
        assert_eq!(reads("spare").await.as_deref(), Some("spare"));
        assert_eq!(writes("main").await, None, "a subscription is no push cache");
    }
    app.set_push_cache(&caller, "acme", "main").await.unwrap();
    assert_eq!(
        writes("main").await.as_deref(),
        Some("main"),
        "the push cache the token names"
    );
    app.set_push_cache(&caller, "acme", "spare").await.unwrap();
    assert_eq!(
        writes("spare").await,
        None,
        "the org's new push cache is not the token's"
    );
    assert_eq!(writes("main").await, None, "nor the old one any more");
    app.set_push_cache(&caller, "acme", "main").await.unwrap();
    assert_eq!(writes("main").await.as_deref(), Some("main"));

    // Another org's job cannot use the token's rights, and a token for another worker is dead.
    let stolen = app.tokens.issue_job(
        org.id,
        job,
        (WorkerId::new(), at),
        Some(cache.id),
        clock.now() + TimeDelta::hours(1),
    );
    assert_eq!(
        app.cache_for_job_token(&stolen, "main", false).await.unwrap(),
        None,
        "not the job's worker"
    );

    app.unsubscribe(&caller, "acme", "main").await.unwrap();
    assert_eq!(reads("main").await, None, "unsubscribing revokes at once");
    assert_eq!(writes("main").await, None, "and the push with it");
    assert!(
        app.cache_for_job_token("GRADJOB.not-a-token", "spare", false)
            .await
            .unwrap()
            .is_none()
    );

    // The job ends: its token dies with it (within the liveness memo's few seconds in another process; at once
    // here, where the job ended).
    assert_eq!(reads("spare").await.as_deref(), Some("spare"));
    app.record_job_finished(
        job,
        worker,
        &[org.id].into(),
        gradient_domain::proto::JobOutcome::Success,
        None,
    )
    .await
    .unwrap();
    assert_eq!(reads("spare").await, None, "the job is over");

    let (job, at) = assigned_job(&app, org.id, worker).await;
    let token = app
        .tokens
        .issue_job(org.id, job, (worker, at), None, clock.now() + TimeDelta::hours(1));
    assert!(app.cache_for_job_token(&token, "spare", false).await.unwrap().is_some());
    // Requeued (its worker was lost): the token lives while no other worker took the job and its worker is still
    // registered in the organization, since that worker may have built offline and push before it comes back;
    // given back to that worker, it still lives.
    let registration = app
        .register_worker(&caller, "acme", &worker.0.to_string(), None, None)
        .await
        .unwrap()
        .registration;
    app.storage.requeue_jobs(worker, &[job]).await.unwrap();
    clock.advance(TimeDelta::seconds(3));
    assert!(
        app.cache_for_job_token(&token, "spare", false).await.unwrap().is_some(),
        "queued again, nobody else's yet"
    );
    let again = clock.now();
    assert!(app.storage.assign_job(job, worker, again).await.unwrap());
    clock.advance(TimeDelta::seconds(3));
    assert!(
        app.cache_for_job_token(&token, "spare", false).await.unwrap().is_some(),
        "the same worker's again"
    );
    // Taken by another worker: the token dies.
    app.storage.requeue_jobs(worker, &[job]).await.unwrap();
    let other = WorkerId::new();
    assert!(app.storage.assign_job(job, other, clock.now()).await.unwrap());
    clock.advance(TimeDelta::seconds(3));
    assert!(
        app.cache_for_job_token(&token, "spare", false).await.unwrap().is_none(),
        "another worker's job"
    );
    app.storage.requeue_jobs(other, &[job]).await.unwrap();
    assert!(app.storage.assign_job(job, worker, clock.now()).await.unwrap());
    let again = clock.now();
    let token = app
        .tokens
        .issue_job(org.id, job, (worker, again), None, clock.now() + TimeDelta::hours(1));
    assert!(app.cache_for_job_token(&token, "spare", false).await.unwrap().is_some());
    clock.advance(TimeDelta::hours(2));
    assert!(
        app.cache_for_job_token(&token, "spare", false).await.unwrap().is_none(),
        "expired"
    );

    // The organization removes the worker: the token of its job waiting in the queue dies with the registration.
    let run = Run::of(&app.storage.job(job).await.unwrap().unwrap()).unwrap();
    assert_eq!(run.worker, worker);
    assert!(app.storage.finish_job(run, true).await.unwrap());
    let (job, at) = assigned_job(&app, org.id, worker).await;
    let token = app
        .tokens
        .issue_job(org.id, job, (worker, at), None, clock.now() + TimeDelta::hours(1));
    app.storage.requeue_jobs(worker, &[job]).await.unwrap();
    clock.advance(TimeDelta::seconds(3));
    assert!(app.cache_for_job_token(&token, "spare", false).await.unwrap().is_some());
    app.delete_worker_registration(&caller, "acme", &registration.peer_id.0.to_string())
        .await
        .unwrap();
    clock.advance(TimeDelta::seconds(3));
    assert!(
        app.cache_for_job_token(&token, "spare", false).await.unwrap().is_none(),
        "a removed worker's queued job"
    );
}

#[tokio::test]
async fn subscriptions_grant_reads_only_as_the_cache_owner_chooses() {
    let (app, _clock, _nars, _cache, owner) = setup().await;
    let mallory = common::signed_up(&app, "mallory").await;
    let theirs = common::org(&app, &mallory, "theirs").await;
    let public = app
        .create_cache(
            &owner,
            NewCache {
                name: "public".into(),
                public: true,
                ..NewCache::default()
            },
        )
        .await
        .unwrap();
    // A private cache mallory cannot see: as if it did not exist.
    let e = app.subscribe(&mallory, "theirs", "main").await.unwrap_err();
    assert_eq!(e.code(), "not_found");
    // A public cache: subscribed, but not granted, and never a push cache for her.
    app.subscribe(&mallory, "theirs", "public").await.unwrap();
    let subs = app.subscriptions(&mallory, "theirs").await.unwrap();
    assert_eq!(
        subs.iter().map(|s| (s.granted, s.push)).collect::<Vec<_>>(),
        vec![(false, false)]
    );
    let e = app.set_push_cache(&mallory, "theirs", "public").await.unwrap_err();
    assert_eq!(e.code(), "forbidden");
    // The owner sees the subscription and ends it.
    let subscribers = app.cache_subscribers(&owner, "public").await.unwrap();
    assert_eq!(
        subscribers.iter().map(|s| (s.org.id, s.granted)).collect::<Vec<_>>(),
        vec![(theirs.id, false)]
    );
    let e = app.cache_subscribers(&mallory, "public").await.unwrap_err();
    assert_eq!(e.code(), "forbidden", "only the owner lists a cache's subscribers");
    app.revoke_subscriber(&owner, "public", "theirs").await.unwrap();
    assert!(app.subscriptions(&mallory, "theirs").await.unwrap().is_empty());

    // A member who can read a private cache through an org cannot pass it on to an org of her own.
    let acme = common::org(&app, &owner, "acme").await;
    app.subscribe(&owner, "acme", "main").await.unwrap();
    app.set_member(&owner, "acme", "mallory", "View").await.unwrap();
    assert!(
        app.cache(&mallory, "main").await.is_ok(),
        "she reads it as a member of acme"
    );
    let e = app.subscribe(&mallory, "theirs", "main").await.unwrap_err();
    assert_eq!(e.code(), "forbidden");
    app.remove_member(&owner, "acme", "mallory").await.unwrap();
    assert_eq!(
        app.cache(&mallory, "main").await.unwrap_err().code(),
        "not_found",
        "removed from acme, she reads nothing of it"
    );
    let _ = (acme, public);

    // A member's cache lent to the organization goes with the member.
    app.set_member(&owner, "acme", "mallory", "Admin").await.unwrap();
    app.create_cache(
        &mallory,
        NewCache {
            name: "hers".into(),
            ..NewCache::default()
        },
    )
    .await
    .unwrap();
    app.set_push_cache(&mallory, "acme", "hers").await.unwrap();
    assert_eq!(
        app.push_cache(&owner, "acme")
            .await
            .unwrap()
            .map(|c| c.name.to_string())
            .as_deref(),
        Some("hers")
    );
    app.remove_member(&owner, "acme", "mallory").await.unwrap();
    assert_eq!(
        app.push_cache(&owner, "acme").await.unwrap(),
        None,
        "no push to an outsider's cache"
    );
    assert!(
        app.subscriptions(&owner, "acme")
            .await
            .unwrap()
            .iter()
            .all(|s| s.cache.name.as_str() != "hers"),
        "nor trust of its key"
    );

    // A public cache subscribed without a grant is read only while public.
    app.subscribe(&mallory, "theirs", "public").await.unwrap();
    app.update_cache(
        &owner,
        "public",
        gradient_domain::service::CacheChanges {
            public: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(app.cache(&mallory, "public").await.unwrap_err().code(), "not_found");
    let subs = app.storage.subscriptions(theirs.id).await.unwrap();
    assert!(subs.iter().all(|s| !s.readable()), "the subscription reads nothing now");
    assert!(
        app.subscriptions(&mallory, "theirs").await.unwrap().is_empty(),
        "nor does her org's list show the now private cache"
    );
    // A public organization's list shows a visitor only the caches the visitor may read.
    app.create_org(
        &owner,
        gradient_domain::service::NewOrg {
            name: "open".into(),
            display_name: None,
            description: None,
            public: true,
        },
    )
    .await
    .unwrap();
    app.subscribe(&owner, "open", "main").await.unwrap();
    let names = |subs: Vec<gradient_domain::model::SubscribedCache>| {
        subs.into_iter().map(|s| s.cache.name.to_string()).collect::<Vec<_>>()
    };
    let visitor = common::signed_up(&app, "visitor").await;
    assert!(names(app.subscriptions(&visitor, "open").await.unwrap()).is_empty());
    assert_eq!(names(app.subscriptions(&owner, "open").await.unwrap()), ["main"]);
    app.set_push_cache(&owner, "open", "main").await.unwrap();
    assert_eq!(
        app.push_cache(&visitor, "open").await.unwrap(),
        None,
        "nor its push cache"
    );
    assert!(app.push_cache(&owner, "open").await.unwrap().is_some());
}

#[tokio::test]
async fn a_cache_never_replaces_a_path_it_holds() {
    let (app, _clock, nars, cache, _caller) = setup().await;
    let path = format!("/nix/store/{}-hello", "b".repeat(32));
    let hash_part = "b".repeat(32);
    let push = |contents: &'static [u8]| {
        let (app, nars, cache, path, hash_part) = (&app, &nars, &cache, &path, &hash_part);
        async move {
            let nar = nar_of(contents);
            let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
            let file = app.receive_nar(nars, cache, &url, body(nar.clone())).await.unwrap();
            let info = format!(
                "StorePath: {path}\nURL: {url}\nCompression: none\nFileHash: {}\nFileSize: {}\nNarHash: {}\nNarSize: {}\nReferences: \n",
                file.file_hash, file.file_size, file.nar_hash, file.nar_size
            );
            app.receive_narinfo(nars, cache, hash_part, &info).await
        }
    };
    let first = push(b"the real thing").await.unwrap();
    let signed = app.signed_narinfo(&cache, &hash_part).await.unwrap().unwrap();
    let again = push(b"the real thing").await.unwrap();
    assert_eq!(again, first, "the same contents again are a no-op");
    let e = push(b"something else").await.unwrap_err();
    assert_eq!(e.code(), "path_exists");
    assert!(matches!(e, ServiceError::Conflict { .. }));
    assert_eq!(
        app.storage.cached_path(cache.id, &hash_part).await.unwrap(),
        Some(first),
        "nothing changed"
    );
    assert_eq!(app.signed_narinfo(&cache, &hash_part).await.unwrap().unwrap(), signed);

    // The same through an export stream.
    let mut stream = Vec::new();
    exported(&mut stream, &path, &nar_of(b"something else"), &[], "");
    int(&mut stream, 0);
    let e = app.import_paths(&nars, &cache, body(stream)).await.unwrap_err();
    assert_eq!(e.code(), "path_exists");
    let mut stream = Vec::new();
    exported(&mut stream, &path, &nar_of(b"the real thing"), &[], "");
    int(&mut stream, 0);
    app.import_paths(&nars, &cache, body(stream)).await.unwrap();
    assert_eq!(app.signed_narinfo(&cache, &hash_part).await.unwrap().unwrap(), signed);
}

const OTHER: &str = "/nix/store/9876543210abcdfghijklmnpqrsvwxyz-refers";
const DRV: &str = "/nix/store/abcdfghijklmnpqrsvwxyz0123456789-refers.drv";

#[tokio::test]
async fn an_imported_path_is_stored_in_the_cache_compression_and_described_by_what_was_measured() {
    let (app, _, nars, _, caller) = setup().await;
    for compression in [
        gradient_domain::model::Compression::Xz,
        gradient_domain::model::Compression::None,
    ] {
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
        let (nar_a, nar_b) = (nar_of(&[42; 100_000]), nar_of(b"refers"));
        let mut stream = Vec::new();
        exported(&mut stream, PATH, &nar_a, &[], "");
        exported(&mut stream, OTHER, &nar_b, &[PATH, OTHER], DRV);
        int(&mut stream, 0);
        let paths = [PATH.to_owned(), OTHER.to_owned()];
        assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), paths);
        assert_eq!(app.import_paths(&nars, &cache, body(stream)).await.unwrap(), 2);
        assert!(app.missing_paths(&cache, &paths).await.unwrap().is_empty());

        let key = app.cache_secret_key(&cache).unwrap().public();
        for (path, nar) in [(PATH, &nar_a), (OTHER, &nar_b)] {
            let text = app
                .signed_narinfo(&cache, &path[11..43])
                .await
                .unwrap()
                .expect("served");
            let info = NarInfo::parse(&text).unwrap();
            assert!(info.verify(&key), "{text}");
            assert_eq!(info.compression, compression.as_str());
            assert_eq!(
                info.nar_hash.to_string(),
                format!("sha256:{}", nix32::encode(&sha256_of(nar).bytes))
            );
            assert_eq!(info.nar_size, nar.len() as u64);
            // The file is what FileHash and FileSize say, and holds the NAR.
            let (size, mut file) = nars
                .open(&nar_key(&cache, &info.url), None)
                .await
                .unwrap()
                .expect("stored");
            let mut bytes = Vec::new();
            while let Some(chunk) = std::future::poll_fn(|cx| futures_core::Stream::poll_next(file.as_mut(), cx)).await
            {
                bytes.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(Some(size), info.file_size);
            assert_eq!(
                info.file_hash.map(|h| h.to_string()),
                Some(format!("sha256:{}", nix32::encode(&sha256_of(&bytes).bytes)))
            );
            let unpacked = match compression {
                gradient_domain::model::Compression::Xz => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&bytes[..]), &mut out).unwrap();
                    out
                }
                _ => bytes.clone(),
            };
            assert_eq!(&unpacked, nar);
            if path == OTHER {
                let refs: Vec<String> = info.references.iter().map(ToString::to_string).collect();
                assert_eq!(refs, [PATH, OTHER]);
                assert_eq!(info.deriver.map(|d| d.to_string()).as_deref(), Some(DRV));
            }
        }
    }
}

#[tokio::test]
async fn an_import_refuses_a_path_whose_references_are_missing_and_keeps_those_before() {
    let (app, _, nars, cache, _) = setup().await;
    let mut stream = Vec::new();
    exported(&mut stream, OTHER, &nar_of(b"refers"), &[PATH], "");
    int(&mut stream, 0);
    let err = app.import_paths(&nars, &cache, body(stream)).await.unwrap_err();
    assert_eq!(err.code(), "reference_missing");
    let paths = [PATH.to_owned(), OTHER.to_owned()];
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), paths);

    // The first path complete, the second cut short: the first stays, nothing of the second does.
    let mut stream = Vec::new();
    exported(&mut stream, PATH, &nar_of(b"first"), &[], "");
    let whole = stream.len();
    exported(&mut stream, OTHER, &nar_of(&[1; 5000]), &[PATH], "");
    stream.truncate(whole + 3000);
    let err = app.import_paths(&nars, &cache, body(stream)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_export");
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), [OTHER.to_owned()]);

    let err = app.missing_paths(&cache, &["not/a/path".to_owned()]).await.unwrap_err();
    assert_eq!(err.code(), "invalid_store_path");
}

#[tokio::test]
async fn a_narinfo_with_an_invalid_content_address_is_refused_before_it_is_signed() {
    let (app, _, nars, cache, _) = setup().await;
    let nar = nar_of(b"ca data");
    let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
    app.receive_nar(&nars, &cache, &url, body(nar.clone())).await.unwrap();
    let narinfo = |ca: &str| {
        format!(
            "StorePath: {PATH}\nURL: {url}\nCompression: none\nNarHash: sha256:{}\nNarSize: {}\nReferences: \nCA: {ca}\n",
            nix32::encode(&sha256_of(&nar).bytes),
            nar.len()
        )
    };
    for bad in [
        "anything",
        "fixed:r:sha256:not-a-hash",
        "text:sha1:0000000000000000000000000000000000000000",
        "fixed:r:sha256:0hpcnirn9lxbzw7kc18apxl0c7gflk1kbyfbbfc04yc5kscdnvzc\u{7}",
    ] {
        let e = app
            .receive_narinfo(&nars, &cache, &PATH[11..43], &narinfo(bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_narinfo", "{bad:?}: {e}");
        assert_eq!(
            app.signed_narinfo(&cache, &PATH[11..43]).await.unwrap(),
            None,
            "{bad:?}: nothing is signed"
        );
    }
    let good = "fixed:r:sha256:0hpcnirn9lxbzw7kc18apxl0c7gflk1kbyfbbfc04yc5kscdnvzc";
    app.receive_narinfo(&nars, &cache, &PATH[11..43], &narinfo(good))
        .await
        .unwrap();
    let served = app
        .signed_narinfo(&cache, &PATH[11..43])
        .await
        .unwrap()
        .expect("served");
    assert!(served.contains(&format!("\nCA: {good}\n")), "{served}");
}

/// A build of `drv` by the organization `org`, with `log` stored.
async fn built_with_log(app: &App, caller: &Caller, org: &gradient_domain::model::Org, drv: &str, log: &str) {
    use gradient_domain::model::{BuildLog, Derivation, Evaluation, EvaluationTrigger, Transition};
    use gradient_domain::ports::storage::Evaluations;
    use gradient_domain::status::EvaluationStatus;
    let project = common::project(app, caller, &org.name.to_string(), "p", "https://example.com/r.git").await;
    let at = app.clock.now();
    let evaluation = Evaluation {
        id: gradient_domain::EvaluationId::new(),
        project_id: project.id,
        commit: "0".repeat(40),
        branch: Some("main".into()),
        trigger: EvaluationTrigger::Poll,
        pull_request: None,
        status: EvaluationStatus::Queued,
        errors: vec![],
        transitions: vec![Transition {
            status: EvaluationStatus::Queued,
            at,
        }],
        created_at: at,
        updated_at: at,
    };
    app.storage.create_evaluation(&evaluation).await.unwrap();
    let derivation = Derivation {
        drv_path: drv.into(),
        system: "x86_64-linux".into(),
        required_features: vec![],
        outputs: [("out".to_owned(), format!("/nix/store/{}-x", "b".repeat(32)))].into(),
        inputs: vec![],
    };
    app.storage.put_derivations(org.id, &[derivation]).await.unwrap();
    let build = app
        .storage
        .link_builds(evaluation.id, org.id, &[drv.to_owned()], at)
        .await
        .unwrap()
        .remove(0);
    app.storage
        .put_build_log(&BuildLog {
            build_id: build.id,
            compressed: gradient_domain::logs::compress(log).unwrap(),
            size: log.len() as u64,
            omitted: 0,
            created_at: at,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cache_serves_the_build_logs_of_the_organizations_that_push_to_it_only() {
    let (app, _clock, _nars, cache, owner) = setup().await;
    let drv = format!("/nix/store/{}-x.drv", "a".repeat(32));
    let basename = &drv["/nix/store/".len()..];
    let acme = common::org(&app, &owner, "acme").await;
    let readers = common::org(&app, &owner, "readers").await;
    let mallory = common::signed_up(&app, "mallory").await;
    let theirs = common::org(&app, &mallory, "theirs").await;
    // acme pushes to the cache; readers only read it; theirs has nothing to do with it. All built the same .drv.
    app.subscribe(&owner, "acme", "main").await.unwrap();
    app.set_push_cache(&owner, "acme", "main").await.unwrap();
    app.subscribe(&owner, "readers", "main").await.unwrap();
    assert_eq!(
        app.cache_build_log(&cache, basename).await.unwrap(),
        None,
        "nobody built it yet"
    );
    built_with_log(&app, &mallory, &theirs, &drv, "mallory's build\n").await;
    built_with_log(&app, &owner, &readers, &drv, "a reader's build\n").await;
    assert_eq!(
        app.cache_build_log(&cache, basename).await.unwrap(),
        None,
        "only the builds of organizations pushing to the cache"
    );
    built_with_log(&app, &owner, &acme, &drv, "acme's build\n").await;
    let log = app
        .cache_build_log(&cache, basename)
        .await
        .unwrap()
        .expect("acme's log");
    assert_eq!(log.text, "acme's build\n");
    // Not a derivation, or not a store path at all: nothing.
    for name in [&basename[..basename.len() - 4], "x.drv", "../x.drv", ""] {
        assert_eq!(app.cache_build_log(&cache, name).await.unwrap(), None, "{name}");
    }
    // Once acme no longer pushes here, its logs are no longer the cache's.
    app.clear_push_cache(&owner, "acme").await.unwrap();
    assert_eq!(app.cache_build_log(&cache, basename).await.unwrap(), None);
}

#[tokio::test]
async fn an_accepted_nar_gets_its_listing_next_to_it_which_goes_with_it() {
    let (app, clock, nars, cache, _) = setup().await;
    let url = push(&app, &nars, &cache, b"hello world").await;
    let read = |hash: &'static str| {
        let (app, nars, cache) = (&app, &nars, &cache);
        async move {
            let (size, mut stream) = app.nar_listing(nars, cache, hash).await.unwrap()?;
            let mut text = Vec::new();
            while let Some(chunk) =
                std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await
            {
                text.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(size, text.len() as u64);
            Some(String::from_utf8(text).unwrap())
        }
    };
    assert_eq!(
        read(&PATH[11..43]).await.as_deref(),
        Some(r#"{"version":1,"root":{"type":"regular","size":11,"narOffset":96}}"#)
    );
    assert!(nars.size(&format!("{}/{url}.ls", cache.id)).await.unwrap().is_some());
    assert_eq!(
        read("00000000000000000000000000000000").await,
        None,
        "a path the cache lacks"
    );

    // An imported path has one too.
    let other = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-other";
    let mut stream = Vec::new();
    exported(&mut stream, other, &nar_of(b"imported"), &[], "");
    int(&mut stream, 0);
    assert_eq!(app.import_paths(&nars, &cache, body(stream)).await.unwrap(), 1);
    assert_eq!(
        read(&other[11..43]).await.as_deref(),
        Some(r#"{"version":1,"root":{"type":"regular","size":8,"narOffset":96}}"#)
    );

    // Collected with its NAR.
    clock.advance(TimeDelta::hours(400));
    let report = app.collect_garbage(&nars, Some(TimeDelta::hours(336))).await.unwrap();
    assert_eq!(report.nar_files, 2);
    assert_eq!(nars.size(&format!("{}/{url}.ls", cache.id)).await.unwrap(), None);
}

#[tokio::test]
async fn a_full_or_unavailable_nar_store_refuses_pushes_typed_and_keeps_nothing_of_them() {
    let (app, _, nars, cache, _) = setup().await;
    let mut first = Vec::new();
    exported(&mut first, PATH, &nar_of(b"first"), &[], "");
    int(&mut first, 0);
    assert_eq!(app.import_paths(&nars, &cache, body(first)).await.unwrap(), 1);
    let paths = [PATH.to_owned(), OTHER.to_owned()];

    // Full: an import and a NAR upload are 507 `insufficient_storage`; nothing is recorded or staged.
    nars.limit_bytes(nars_used(&nars, &cache, &app).await + 10_000);
    let mut big = Vec::new();
    exported(&mut big, OTHER, &nar_of(&pseudo_random(200_000)), &[PATH], "");
    int(&mut big, 0);
    let e = app.import_paths(&nars, &cache, body(big)).await.unwrap_err();
    assert!(matches!(e, ServiceError::StorageFull(_)), "{e:?}");
    assert_eq!(e.code(), "insufficient_storage");
    let nar = nar_of(&pseudo_random(100_000));
    let url = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
    let e = app.receive_nar(&nars, &cache, &url, body(nar)).await.unwrap_err();
    assert_eq!(e.code(), "insufficient_storage");
    assert_eq!(
        app.nar_file(&cache, &url).await.unwrap(),
        None,
        "no record of the refused NAR"
    );
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), [OTHER.to_owned()]);
    assert_eq!(nars.uploads_in_progress(), 0, "nothing staged is left behind");
    // What the cache holds is still served.
    assert!(app.signed_narinfo(&cache, &PATH[11..43]).await.unwrap().is_some());

    // Unavailable: 503 `storage_unavailable`, the same nothing kept.
    nars.limit_bytes(u64::MAX);
    nars.set_unavailable(true);
    let mut other = Vec::new();
    exported(&mut other, OTHER, &nar_of(b"other"), &[PATH], "");
    int(&mut other, 0);
    let e = app.import_paths(&nars, &cache, body(other.clone())).await.unwrap_err();
    assert!(matches!(e, ServiceError::StorageUnavailable(_)), "{e:?}");
    assert_eq!(e.code(), "storage_unavailable");
    assert_eq!(nars.uploads_in_progress(), 0);
    nars.set_unavailable(false);
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), [OTHER.to_owned()]);
    assert_eq!(
        app.import_paths(&nars, &cache, body(other)).await.unwrap(),
        1,
        "it works again"
    );
}

#[tokio::test]
async fn uploads_left_by_a_crash_are_swept_at_start_and_by_collection_once_idle() {
    let (app, _, nars, cache, _) = setup().await;
    let mut upload = nars.begin(&nar_key(&cache, "nar/crashed.nar")).await.unwrap();
    gradient_domain::ports::nar_store::NarUpload::write(&mut upload, Bytes::from_static(b"partial"))
        .await
        .unwrap();
    std::mem::forget(upload);
    assert_eq!(
        app.collect_garbage(&nars, None).await.unwrap().uploads,
        0,
        "collection leaves an upload active within the last day"
    );
    assert_eq!(app.sweep_uploads_at_start(&nars).await.unwrap(), 1);
    assert_eq!(nars.uploads_in_progress(), 0);
}

#[tokio::test]
async fn a_narinfo_for_a_recorded_nar_the_store_lacks_is_refused() {
    let (app, _, nars, cache, _) = setup().await;
    let url = push(&app, &nars, &cache, b"hello world").await;
    // The record of a second NAR whose bytes never reached the store (a crash between the two), as a
    // narinfo from another process (not the one that received the NAR) would find it.
    let nar = nar_of(b"never stored");
    let lost = format!("nar/{}.nar", nix32::encode(&sha256_of(&nar).bytes));
    let mut file = app.nar_file(&cache, &url).await.unwrap().unwrap();
    file.url = lost.clone();
    file.nar_hash = format!("sha256:{}", nix32::encode(&sha256_of(&nar).bytes));
    file.nar_size = nar.len() as u64;
    file.compression = gradient_domain::model::Compression::None;
    app.storage.put_nar_file(&file).await.unwrap();
    let other = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-other";
    let narinfo = format!(
        "StorePath: {other}\nURL: {lost}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
        file.nar_hash, file.nar_size
    );
    let e = app
        .receive_narinfo(&nars, &cache, &other[11..43], &narinfo)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "nar_missing");
}

/// Bytes that do not compress.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What the NAR store holds now (the cache's one path), roughly: its NAR and listing.
async fn nars_used(nars: &MemoryNarStore, cache: &Cache, app: &App) -> u64 {
    let info = app.signed_narinfo(cache, &PATH[11..43]).await.unwrap().unwrap();
    let url = NarInfo::parse(&info).unwrap().url;
    nars.size(&nar_key(cache, &url)).await.unwrap().unwrap_or(0)
        + nars
            .size(&format!("{}.ls", nar_key(cache, &url)))
            .await
            .unwrap()
            .unwrap_or(0)
}

/// The store path numbered `i` of a long import: `/nix/store/<hash>-p<i>`.
fn numbered(i: usize) -> String {
    let mut seed = [7u8; 20];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    format!("/nix/store/{}-p{i}", nix32::encode(&seed))
}

#[tokio::test]
async fn an_import_of_several_batches_records_every_path_with_its_nar_and_listing() {
    use gradient_domain::service::{IMPORT_BATCH_BYTES, IMPORT_BATCH_PATHS};
    let (app, _, nars, cache, _) = setup().await;
    // More paths than two batches hold, each referring to the one before it (in its batch or an earlier
    // one), with a NAR larger than a batch's bytes among them, which ends its batch.
    let count = 2 * IMPORT_BATCH_PATHS + 7;
    let big = IMPORT_BATCH_PATHS + 3;
    let paths: Vec<String> = (0..count).map(numbered).collect();
    let mut stream = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let contents = if i == big {
            pseudo_random(IMPORT_BATCH_BYTES as usize + 100_000)
        } else {
            format!("path {i}").into_bytes()
        };
        let refs: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec![paths[i - 1].as_str(), path.as_str()]
        };
        exported(&mut stream, path, &nar_of(&contents), &refs, "");
    }
    int(&mut stream, 0);
    assert_eq!(
        app.import_paths(&nars, &cache, body(stream)).await.unwrap(),
        count as u64
    );
    assert!(app.missing_paths(&cache, &paths).await.unwrap().is_empty());
    for (i, path) in paths.iter().enumerate() {
        let text = app
            .signed_narinfo(&cache, &path[11..43])
            .await
            .unwrap()
            .expect("served");
        let info = NarInfo::parse(&text).unwrap();
        if i > 0 {
            assert_eq!(info.references.len(), 2, "{text}");
        }
        assert!(
            nars.size(&nar_key(&cache, &info.url)).await.unwrap().is_some(),
            "{path}: its NAR"
        );
        assert!(
            nars.size(&format!("{}.ls", nar_key(&cache, &info.url)))
                .await
                .unwrap()
                .is_some(),
            "{path}: its listing"
        );
    }
    assert_eq!(nars.uploads_in_progress(), 0);
    let unreferenced = app
        .storage
        .orphan_nar_files(app.clock.now() + TimeDelta::days(1), 1000)
        .await
        .unwrap();
    assert_eq!(unreferenced, vec![], "every NAR file recorded is a path's");
}

#[tokio::test]
async fn a_path_refused_within_a_batch_keeps_the_paths_before_it_and_nothing_of_it_or_after() {
    let (app, _, nars, cache, _) = setup().await;
    let paths: Vec<String> = (0..10).map(numbered).collect();
    let mut stream = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        // The sixth refers to a path neither in the cache nor earlier in the stream: a later one.
        let refs: Vec<&str> = if i == 5 { vec![paths[8].as_str()] } else { vec![] };
        exported(&mut stream, path, &nar_of(format!("path {i}").as_bytes()), &refs, "");
    }
    int(&mut stream, 0);
    let e = app.import_paths(&nars, &cache, body(stream)).await.unwrap_err();
    assert_eq!(e.code(), "reference_missing", "{e}");
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), paths[5..].to_vec());
    assert_eq!(
        nars.uploads_in_progress(),
        0,
        "nothing of the refused paths is left staged"
    );
    let unreferenced = app
        .storage
        .orphan_nar_files(app.clock.now() + TimeDelta::days(1), 1000)
        .await
        .unwrap();
    assert_eq!(unreferenced, vec![], "no NAR file was recorded for a refused path");

    // A path twice in one stream: the same contents count once; other contents are refused, keeping the
    // first and what came before.
    let mut stream = Vec::new();
    exported(&mut stream, &paths[5], &nar_of(b"path 5"), &[], "");
    exported(&mut stream, &paths[5], &nar_of(b"path 5"), &[], "");
    exported(&mut stream, &paths[6], &nar_of(b"path 6"), &[], "");
    int(&mut stream, 0);
    assert_eq!(app.import_paths(&nars, &cache, body(stream)).await.unwrap(), 2);
    let mut stream = Vec::new();
    exported(&mut stream, &paths[7], &nar_of(b"path 7"), &[], "");
    exported(&mut stream, &paths[7], &nar_of(b"not path 7"), &[], "");
    exported(&mut stream, &paths[8], &nar_of(b"path 8"), &[], "");
    int(&mut stream, 0);
    let e = app.import_paths(&nars, &cache, body(stream)).await.unwrap_err();
    assert_eq!(e.code(), "path_exists", "{e}");
    assert_eq!(app.missing_paths(&cache, &paths).await.unwrap(), paths[8..].to_vec());
    let text = app.signed_narinfo(&cache, &paths[7][11..43]).await.unwrap().unwrap();
    assert!(
        text.contains(&format!(
            "NarHash: sha256:{}",
            nix32::encode(&sha256_of(&nar_of(b"path 7")).bytes)
        )),
        "the first contents stay: {text}"
    );
    assert_eq!(nars.uploads_in_progress(), 0);
}

/// A body that makes the NAR store unavailable once its last byte has been read: the paths are whole, but
/// their group commit fails.
struct ThenUnavailable<I> {
    chunks: I,
    nars: MemoryNarStore,
}
impl<I: Iterator<Item = Result<Bytes, std::io::Error>> + Unpin> futures_core::Stream for ThenUnavailable<I> {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.chunks.next();
        if next.is_none() {
            self.nars.set_unavailable(true);
        }
        std::task::Poll::Ready(next)
    }
}

#[tokio::test]
async fn paths_whose_batch_cannot_be_made_durable_are_not_recorded_and_collection_removes_their_files() {
    let (app, clock, nars, cache, _) = setup().await;
    let paths: Vec<String> = (0..3).map(numbered).collect();
    let mut stream = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        exported(&mut stream, path, &nar_of(format!("path {i}").as_bytes()), &[], "");
    }
    int(&mut stream, 0);
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        stream.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let body = ThenUnavailable {
        chunks: chunks.into_iter(),
        nars: nars.clone(),
    };
    let e = app.import_paths(&nars, &cache, body).await.unwrap_err();
    assert_eq!(e.code(), "storage_unavailable", "{e}");
    nars.set_unavailable(false);
    assert_eq!(
        app.missing_paths(&cache, &paths).await.unwrap(),
        paths,
        "nothing is recorded"
    );
    assert_eq!(nars.uploads_in_progress(), 0, "nothing is left staged");
    // What the failed batch recorded of its files goes with collection.
    clock.advance(TimeDelta::hours(2));
    app.collect_garbage(&nars, None).await.unwrap();
    let unreferenced = app
        .storage
        .orphan_nar_files(app.clock.now() + TimeDelta::days(1), 1000)
        .await
        .unwrap();
    assert_eq!(unreferenced, vec![]);
}
