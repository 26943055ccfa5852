#![allow(clippy::unwrap_used)]
//! Worker registrations: what the database holds cannot answer a challenge.

mod common;

use gradient_domain::crypt::Sealed;
use gradient_domain::model::WorkerRegistration;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::storage::Workers;
use gradient_domain::proto::{
    Challenge, HandshakePolicy, Hello, PROTOCOL_VERSION, answer_challenge, check_answers, proof_key,
};
use gradient_domain::service::Settings;
use gradient_domain::{PeerId, WorkerId};
use std::collections::BTreeMap;

fn hello(worker: WorkerId) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        worker_id: worker,
        capabilities: Default::default(),
        systems: vec![],
        features: vec![],
        max_concurrent_builds: 1,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        held_jobs: vec![],
        server_nonce: None,
    }
}

/// A registration is stored sealed; a row stored before sealing (the key as hex) is sealed by the start-up
/// step and then proves its token again, while the stored text alone never does.
#[tokio::test]
async fn proof_keys_are_stored_sealed_and_old_rows_are_sealed_at_start_up() {
    let app = common::app(SystemClock, Settings::default());
    let caller = common::signed_up(&app, "alice").await;
    let org = common::org(&app, &caller, "o").await;
    let worker = WorkerId::new();
    let token = gradient_domain::service::generate_token();
    let new = app
        .register_worker(&caller, "o", &worker.0.to_string(), Some(token.clone()), None)
        .await
        .unwrap()
        .registration;
    let key_hex = hex::encode(proof_key(&token));
    assert!(new.proof_key.0.starts_with("v1:"), "sealed: {:?}", new.proof_key);
    assert!(!new.proof_key.0.contains(&key_hex));

    // A row as an older version stored it.
    let old_worker = WorkerId::new();
    let legacy = WorkerRegistration {
        managed: false,
        peer_id: PeerId::new(),
        org_id: org.id,
        worker_id: old_worker,
        proof_key: Sealed(key_hex.clone()),
        created_at: gradient_domain::model::truncate_to_micros(chrono::Utc::now()),
        url: None,
    };
    app.storage.create_worker_registration(&legacy).await.unwrap();
    let nonce = gradient_domain::proto::nonce_from_bytes(&[3; 32]);
    let answer = |peer| {
        answer_challenge(
            &Challenge {
                nonce: nonce.clone(),
                peers: vec![peer],
                server_proofs: vec![],
            },
            &BTreeMap::new(),
            Some(&token),
        )
    };
    let check = |rows: &[WorkerRegistration], w| {
        check_answers(
            &hello(w),
            rows,
            &nonce,
            &answer(rows[0].peer_id),
            &HandshakePolicy::default(),
            &app.crypt,
        )
    };
    assert!(
        check(std::slice::from_ref(&legacy), old_worker).is_err(),
        "unsealed rows never verify"
    );

    assert_eq!(app.seal_worker_proof_keys().await.unwrap(), 1);
    assert_eq!(app.seal_worker_proof_keys().await.unwrap(), 0, "nothing left to seal");
    let sealed = app.storage.worker_registration(legacy.peer_id).await.unwrap().unwrap();
    assert!(sealed.proof_key.0.starts_with("v1:") && !sealed.proof_key.0.contains(&key_hex));
    assert!(
        check(std::slice::from_ref(&sealed), old_worker).is_ok(),
        "the worker's token proves it"
    );
    let fresh = app.storage.worker_registration(new.peer_id).await.unwrap().unwrap();
    assert_eq!(fresh, new, "sealed rows are left alone");
    assert!(check(std::slice::from_ref(&fresh), worker).is_ok());
}

/// The overview of an organization shows its workers and queue; a worker shared with another organization shows
/// only this organization's jobs, the queue counts only its jobs, and an outsider learns nothing.
#[tokio::test]
async fn the_fleet_overview_shows_only_the_organizations_own_jobs() {
    use gradient_domain::model::{JobId, JobKind, JobRecord, JobState};
    use gradient_domain::ports::storage::Queue;
    use gradient_domain::scheduler::WorkerInfo;
    use gradient_domain::service::ServiceError;

    let app = common::app(SystemClock, Settings::default());
    let alice = common::signed_up(&app, "alice").await;
    let bob = common::signed_up(&app, "bob").await;
    let mallory = common::signed_up(&app, "mallory").await;
    let ours = common::org(&app, &alice, "ours").await;
    let theirs = common::org(&app, &bob, "theirs").await;
    let shared = WorkerId::new();
    let idle = WorkerId::new();
    for (caller, org, worker) in [
        (&alice, "ours", shared),
        (&bob, "theirs", shared),
        (&alice, "ours", idle),
    ] {
        app.register_worker(caller, org, &worker.0.to_string(), None, None)
            .await
            .unwrap();
    }
    let now = gradient_domain::model::truncate_to_micros(chrono::Utc::now());
    let job = |org, drv: &str, system: &str| JobRecord {
        id: JobId(uuid::Uuid::new_v4()),
        org_id: org,
        kind: JobKind::Build {
            derivation: drv.into(),
            system: system.into(),
            required_features: vec![],
        },
        state: JobState::Queued,
        created_at: now,
        attempts: 0,
    };
    let running_ours = app
        .storage
        .enqueue_job(&job(ours.id, "/nix/store/a-ours.drv", "x86_64-linux"))
        .await
        .unwrap();
    let running_theirs = app
        .storage
        .enqueue_job(&job(theirs.id, "/nix/store/b-theirs.drv", "aarch64-linux"))
        .await
        .unwrap();
    app.storage
        .enqueue_job(&job(ours.id, "/nix/store/c-waits.drv", "x86_64-linux"))
        .await
        .unwrap();
    app.storage
        .enqueue_job(&job(theirs.id, "/nix/store/d-waits.drv", "riscv64-linux"))
        .await
        .unwrap();
    for j in [&running_ours, &running_theirs] {
        assert!(app.storage.assign_job(j.id, shared, now).await.unwrap());
    }
    app.fleet.connect_proved(WorkerInfo {
        id: shared,
        capabilities: Default::default(),
        systems: vec!["x86_64-linux".into(), "aarch64-linux".into()],
        features: vec!["kvm".into()],
        max_concurrent_builds: 4,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        orgs: [ours.id, theirs.id].into_iter().collect(),
        pushing: Default::default(),
    });

    let o = app.fleet_overview(&alice, "ours").await.unwrap();
    assert_eq!(o.workers.len(), 2);
    let live = o
        .workers
        .iter()
        .find(|w| w.registration.worker_id == shared)
        .and_then(|w| w.live.clone());
    let live = live.expect("the shared worker is connected");
    assert_eq!(live.build_slots, 4);
    let jobs: Vec<&JobId> = live.jobs.iter().map(|j| &j.job.id).collect();
    assert_eq!(
        jobs,
        [&running_ours.id],
        "only this organization's job on the shared worker"
    );
    assert!(
        o.workers
            .iter()
            .any(|w| w.registration.worker_id == idle && w.live.is_none())
    );
    assert_eq!((o.queue.queued, o.queue.running), (1, 1));
    let systems: Vec<&str> = o.queue.systems.iter().map(|s| s.system.as_str()).collect();
    assert_eq!(systems, ["x86_64-linux"], "no system of the other organization's jobs");

    let hidden = app.fleet_overview(&mallory, "ours").await.unwrap_err();
    assert!(matches!(hidden, ServiceError::NotFound(_)), "{hidden:?}");
}

/// The server dials every registered listening worker for as long as it is registered: one organization's
/// registrations cannot take more than their share of the dialer.
#[tokio::test]
async fn an_organization_registers_a_bounded_number_of_listening_workers() {
    use gradient_domain::service::{MAX_LISTENING_WORKERS_PER_ORG, ServiceError};
    let app = common::app(SystemClock, Settings::default());
    let caller = common::signed_up(&app, "alice").await;
    common::org(&app, &caller, "o").await;
    for n in 0..MAX_LISTENING_WORKERS_PER_ORG {
        let url = format!("ws://builder-{n}.example.com:3100/proto");
        app.register_worker(&caller, "o", &WorkerId::new().0.to_string(), None, Some(url))
            .await
            .unwrap();
    }
    let refused = app
        .register_worker(
            &caller,
            "o",
            &WorkerId::new().0.to_string(),
            None,
            Some("ws://one-more.example.com:3100/proto".into()),
        )
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&refused, ServiceError::Conflict { code, .. } if *code == "too_many_listening_workers"),
        "{refused:?}"
    );
    // Workers that dial the server are not limited by this.
    app.register_worker(&caller, "o", &WorkerId::new().0.to_string(), None, None)
        .await
        .unwrap();
}
