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
        .register_worker(&caller, "o", &worker.0.to_string(), Some(token.clone()))
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
    };
    app.storage.create_worker_registration(&legacy).await.unwrap();
    let nonce = gradient_domain::proto::nonce_from_bytes(&[3; 32]);
    let answer = |peer| {
        answer_challenge(
            &Challenge {
                nonce: nonce.clone(),
                peers: vec![peer],
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
