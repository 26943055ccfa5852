//! Workers registered under organizations.

use super::support::{conflict, new_worker_registration, org, seconds, user, worker_registration};
use gradient_domain::model::WorkerRegistration;
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, PeerId, WorkerId};

/// A registration reads back whole by peer id, in its organization's list and in its worker's list.
pub async fn worker_registration_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let registration = new_worker_registration(acme.id, WorkerId::new());
    s.create_worker_registration(&registration)
        .await
        .expect("create_worker_registration");
    assert_eq!(
        s.worker_registration(registration.peer_id)
            .await
            .expect("worker_registration"),
        Some(registration.clone()),
        "by peer id"
    );
    assert_eq!(
        s.worker_registrations(acme.id).await.expect("worker_registrations"),
        vec![registration.clone()],
        "the org's registrations"
    );
    assert_eq!(
        s.worker_registrations_for(registration.worker_id)
            .await
            .expect("worker_registrations_for"),
        vec![registration],
        "the worker's registrations"
    );
}

/// A listening worker's URL is kept with its registration and read back by every query, the list of all
/// registrations included (which the server's dialer reads).
pub async fn a_listening_worker_url_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let listening = WorkerRegistration {
        url: Some("wss://builder.example.com:3100/proto".to_owned()),
        ..new_worker_registration(acme.id, WorkerId::new())
    };
    let dialing = new_worker_registration(acme.id, WorkerId::new());
    for r in [&listening, &dialing] {
        s.create_worker_registration(r)
            .await
            .expect("create_worker_registration");
    }
    assert_eq!(
        s.worker_registration(listening.peer_id)
            .await
            .expect("worker_registration"),
        Some(listening.clone())
    );
    assert_eq!(
        s.worker_registrations_for(listening.worker_id)
            .await
            .expect("worker_registrations_for"),
        vec![listening.clone()]
    );
    let all = s.all_worker_registrations().await.expect("all_worker_registrations");
    let url_of = |peer: PeerId| all.iter().find(|r| r.peer_id == peer).map(|r| r.url.clone());
    assert_eq!(url_of(listening.peer_id), Some(listening.url.clone()));
    assert_eq!(url_of(dialing.peer_id), Some(None));
}

/// Nothing registered answers None or an empty list.
pub async fn absent_worker_registrations_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    assert_eq!(
        s.worker_registration(PeerId::new()).await.expect("worker_registration"),
        None,
        "unknown peer id"
    );
    assert_eq!(
        s.worker_registrations(acme.id).await.expect("worker_registrations"),
        vec![],
        "an org without workers"
    );
    assert_eq!(
        s.worker_registrations(OrgId::new())
            .await
            .expect("worker_registrations"),
        vec![],
        "an unknown org"
    );
    assert_eq!(
        s.worker_registrations_for(WorkerId::new())
            .await
            .expect("worker_registrations_for"),
        vec![],
        "an unknown worker"
    );
    assert!(
        !s.delete_worker_registration(acme.id, PeerId::new())
            .await
            .expect("delete_worker_registration"),
        "deleting an unknown registration"
    );
}

/// A registration must belong to an existing organization.
pub async fn worker_registration_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    let registration = new_worker_registration(OrgId::new(), WorkerId::new());
    assert_eq!(
        s.create_worker_registration(&registration).await,
        Err(StorageError::NotFound),
        "registration under an unknown org"
    );
    assert_eq!(
        s.worker_registration(registration.peer_id)
            .await
            .expect("worker_registration"),
        None,
        "no row for the refused registration"
    );
    assert_eq!(
        s.worker_registrations_for(registration.worker_id)
            .await
            .expect("worker_registrations_for"),
        vec![],
        "the worker has no registrations"
    );
}

/// A worker is registered at most once per organization: a second registration is Conflict("worker
/// registration") and changes nothing, while another organization may register the same worker.
pub async fn worker_registered_twice_in_an_org_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let worker = WorkerId::new();
    let first = worker_registration(s, acme.id, worker).await;
    let again = new_worker_registration(acme.id, worker);
    assert_eq!(
        s.create_worker_registration(&again).await,
        Err(conflict("worker registration")),
        "the same worker in the same org"
    );
    assert_eq!(
        s.worker_registration(again.peer_id).await.expect("worker_registration"),
        None,
        "no row for the refused registration"
    );
    assert_eq!(
        s.worker_registrations(acme.id).await.expect("worker_registrations"),
        vec![first.clone()],
        "acme still has the first registration only"
    );
    let elsewhere = worker_registration(s, other.id, worker).await;
    assert_eq!(
        s.worker_registrations_for(worker)
            .await
            .expect("worker_registrations_for")
            .len(),
        2,
        "the worker is registered in both orgs: {first:?}, {elsewhere:?}"
    );
}

/// Peer ids are unique across organizations: a taken one is Conflict("peer id") and changes nothing. It is
/// reported even when the worker is also already registered in that organization.
pub async fn taken_peer_id_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let original = worker_registration(s, acme.id, WorkerId::new()).await;
    let copy = WorkerRegistration {
        peer_id: original.peer_id,
        ..new_worker_registration(other.id, WorkerId::new())
    };
    assert_eq!(
        s.create_worker_registration(&copy).await,
        Err(conflict("peer id")),
        "a taken peer id in another org"
    );
    assert_eq!(
        s.worker_registrations(other.id).await.expect("worker_registrations"),
        vec![],
        "nothing registered in the other org"
    );
    assert_eq!(
        s.worker_registrations_for(copy.worker_id)
            .await
            .expect("worker_registrations_for"),
        vec![],
        "the refused worker has no registrations"
    );
    assert_eq!(
        s.worker_registration(original.peer_id)
            .await
            .expect("worker_registration"),
        Some(original.clone()),
        "the peer id still finds the original"
    );
    let both = WorkerRegistration {
        proof_key: gradient_domain::crypt::Sealed("another".to_owned()),
        ..original.clone()
    };
    assert_eq!(
        s.create_worker_registration(&both).await,
        Err(conflict("peer id")),
        "the peer id is reported before the worker registration"
    );
}

/// An organization's registrations are listed oldest first, ties by peer id, and only its own; a worker's
/// are listed the same way across organizations.
pub async fn worker_registrations_are_listed_oldest_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let base = super::support::now();
    let shared = WorkerId::new();
    // Created out of order; two at the same time.
    let mut ours = Vec::new();
    for (n, worker) in [
        (3, WorkerId::new()),
        (1, shared),
        (2, WorkerId::new()),
        (2, WorkerId::new()),
    ] {
        let registration = WorkerRegistration {
            created_at: base - seconds(n),
            ..new_worker_registration(acme.id, worker)
        };
        s.create_worker_registration(&registration)
            .await
            .expect("create_worker_registration");
        ours.push(registration);
    }
    let foreign = WorkerRegistration {
        created_at: base - seconds(10),
        ..new_worker_registration(other.id, shared)
    };
    s.create_worker_registration(&foreign)
        .await
        .expect("create_worker_registration");
    let mut expected = ours.clone();
    expected.sort_by_key(|r| (r.created_at, r.peer_id));
    assert_eq!(
        s.worker_registrations(acme.id).await.expect("worker_registrations"),
        expected,
        "acme's registrations, oldest first, ties by peer id"
    );
    let shared_in_acme = ours
        .iter()
        .find(|r| r.worker_id == shared)
        .cloned()
        .expect("shared worker registered in acme");
    assert_eq!(
        s.worker_registrations_for(shared)
            .await
            .expect("worker_registrations_for"),
        vec![foreign.clone(), shared_in_acme],
        "the shared worker's registrations in both orgs, oldest first"
    );
    assert_eq!(
        s.worker_registrations(other.id).await.expect("worker_registrations"),
        vec![foreign],
        "the other org's registration"
    );
}

/// A registration is deleted only through its own organization.
pub async fn delete_worker_registration_only_within_its_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let worker = WorkerId::new();
    let doomed = worker_registration(s, acme.id, worker).await;
    let kept = worker_registration(s, acme.id, WorkerId::new()).await;
    let elsewhere = worker_registration(s, other.id, worker).await;
    assert!(
        !s.delete_worker_registration(other.id, doomed.peer_id)
            .await
            .expect("delete_worker_registration"),
        "deleting through another org"
    );
    assert_eq!(
        s.worker_registration(doomed.peer_id)
            .await
            .expect("worker_registration"),
        Some(doomed.clone()),
        "the registration is still there"
    );
    assert!(
        s.delete_worker_registration(acme.id, doomed.peer_id)
            .await
            .expect("delete_worker_registration"),
        "deleting through its org"
    );
    assert_eq!(
        s.worker_registration(doomed.peer_id)
            .await
            .expect("worker_registration"),
        None,
        "the registration is gone"
    );
    assert!(
        !s.delete_worker_registration(acme.id, doomed.peer_id)
            .await
            .expect("delete_worker_registration"),
        "deleting it again"
    );
    assert_eq!(
        s.worker_registrations(acme.id).await.expect("worker_registrations"),
        vec![kept],
        "acme's other registration is kept"
    );
    assert_eq!(
        s.worker_registrations_for(worker)
            .await
            .expect("worker_registrations_for"),
        vec![elsewhere],
        "the worker's registration in the other org is kept"
    );
    s.create_worker_registration(&new_worker_registration(acme.id, worker))
        .await
        .expect("the worker may register in acme again");
}

/// Deleting an organization deletes its worker registrations, and only its own.
pub async fn delete_org_removes_its_worker_registrations<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    let worker = WorkerId::new();
    let gone = worker_registration(s, doomed.id, worker).await;
    let stays = worker_registration(s, kept.id, worker).await;
    assert!(s.delete_org(doomed.id).await.expect("delete_org"), "deleting the org");
    assert_eq!(
        s.worker_registration(gone.peer_id).await.expect("worker_registration"),
        None,
        "its registration is gone"
    );
    assert_eq!(
        s.worker_registrations(doomed.id).await.expect("worker_registrations"),
        vec![],
        "it lists none"
    );
    assert_eq!(
        s.worker_registrations_for(worker)
            .await
            .expect("worker_registrations_for"),
        vec![stays],
        "the worker's registration in the other org is kept"
    );
}

/// Every registration is listed across organizations; a proof key is replaced only while it still holds what
/// the caller read (so two servers sealing at once cannot lose a change), and the rest of the row stays.
pub async fn worker_proof_keys_are_replaced_only_if_unchanged<S: Storage>(s: &S) {
    use gradient_domain::crypt::Sealed;
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let a = worker_registration(s, acme.id, WorkerId::new()).await;
    let b = worker_registration(s, other.id, WorkerId::new()).await;
    let all = s.all_worker_registrations().await.expect("all_worker_registrations");
    assert!(all.contains(&a) && all.contains(&b), "both organizations' rows");
    let sealed = Sealed("v1:sealed".to_owned());
    assert!(
        !s.set_worker_proof_key(a.peer_id, &Sealed("not what is stored".to_owned()), &sealed)
            .await
            .expect("set_worker_proof_key"),
        "a stale read changes nothing"
    );
    assert!(
        s.set_worker_proof_key(a.peer_id, &a.proof_key, &sealed)
            .await
            .expect("set_worker_proof_key")
    );
    assert_eq!(
        s.worker_registration(a.peer_id).await.expect("worker_registration"),
        Some(WorkerRegistration {
            proof_key: sealed.clone(),
            ..a.clone()
        })
    );
    assert_eq!(
        s.worker_registration(b.peer_id).await.expect("worker_registration"),
        Some(b.clone()),
        "the other row is untouched"
    );
    assert!(
        !s.set_worker_proof_key(PeerId::new(), &a.proof_key, &sealed)
            .await
            .expect("set_worker_proof_key"),
        "an unknown peer"
    );
}
