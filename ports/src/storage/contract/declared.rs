//! Declarative state: a plan's writes run in one transaction, and managed rows are listed.

use super::support::{
    ADMIN, VIEW, conflict, membership, new_api_key, new_cache, new_org, new_project, new_role, new_user,
    new_worker_registration, now, org, user,
};
use gradient_domain::WorkerId;
use gradient_domain::crypt::Sealed;
use gradient_domain::forge::Forge;
use gradient_domain::model::{ForgeConnection, RoleRef};
use gradient_domain::ports::storage::StateWrite;
use gradient_domain::ports::{Storage, StorageError};

/// A batch creates every kind of managed row; each reads back through the port's usual reads, an organization
/// put by the batch has only the members the batch gives it, and the managed lists name the rows.
pub async fn state_writes_create_managed_rows<S: Storage>(s: &S) {
    let mut alice = new_user("alice");
    alice.managed = true;
    let mut bob = new_user("bob");
    bob.managed = true;
    let mut acme = new_org("acme", alice.id, false);
    acme.managed = true;
    let mut role = new_role(acme.id, "deployers");
    role.managed = true;
    let mut project = new_project(acme.id, "web", alice.id);
    project.managed = true;
    let mut cache = new_cache("main", alice.id, false);
    cache.managed = true;
    let mut key = new_api_key(bob.id, "ci");
    key.managed = true;
    let mut worker = new_worker_registration(acme.id, WorkerId::new());
    worker.managed = true;
    let connection = ForgeConnection {
        org_id: acme.id,
        forge: Forge::Gitea,
        api_url: "https://gitea.example.com".into(),
        token: Sealed("v1:token".into()),
        managed: true,
    };
    let writes = vec![
        StateWrite::PutUser(alice.clone()),
        StateWrite::PutUser(bob.clone()),
        StateWrite::PutOrg(acme.clone()),
        StateWrite::PutRole(role.clone()),
        StateWrite::SetMembership(membership(acme.id, bob.id, RoleRef::Custom(role.id))),
        StateWrite::PutProject(project.clone()),
        StateWrite::PutCache(cache.clone()),
        StateWrite::Grant {
            org: acme.id,
            cache: cache.id,
        },
        StateWrite::SetPushCache {
            org: acme.id,
            cache: Some(cache.id),
        },
        StateWrite::PutApiKey(key.clone()),
        StateWrite::PutWorkerRegistration(worker.clone()),
        StateWrite::PutWebhookSecret {
            org: acme.id,
            secret: Sealed("v1:hook".into()),
            managed: true,
        },
        StateWrite::PutForgeConnection(connection.clone()),
    ];
    s.apply_state(&writes, now()).await.expect("apply_state");

    assert_eq!(s.user(alice.id).await.expect("user"), Some(alice.clone()), "user");
    assert_eq!(s.org(acme.id).await.expect("org"), Some(acme.clone()), "org");
    let members: Vec<_> = s
        .members(acme.id)
        .await
        .expect("members")
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert_eq!(
        members,
        vec![(bob.id, RoleRef::Custom(role.id))],
        "only the members the batch gives (the creator is not made Admin)"
    );
    assert_eq!(s.role(role.id).await.expect("role"), Some(role.clone()), "role");
    assert_eq!(
        s.project_by_id(project.id).await.expect("project"),
        Some(project.clone()),
        "project"
    );
    assert_eq!(s.cache(cache.id).await.expect("cache"), Some(cache.clone()), "cache");
    let subs = s.subscriptions(acme.id).await.expect("subscriptions");
    assert_eq!(subs.len(), 1, "one subscription");
    assert!(subs[0].granted && subs[0].push, "granted and the push cache");
    assert_eq!(
        s.api_keys(bob.id).await.expect("api_keys"),
        vec![key.clone()],
        "api key"
    );
    assert_eq!(
        s.worker_registration(worker.peer_id).await.expect("worker"),
        Some(worker.clone()),
        "worker registration"
    );
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        Some(Sealed("v1:hook".into()))
    );
    assert!(s.webhook_secret_managed(acme.id).await.expect("webhook_secret_managed"));
    assert_eq!(
        s.forge_connection(acme.id).await.expect("forge"),
        Some(connection.clone())
    );

    let m = s.managed_entities().await.expect("managed_entities");
    assert!(m.users.contains(&alice) && m.users.contains(&bob), "managed users");
    assert!(m.orgs.contains(&acme), "managed orgs");
    assert!(m.roles.contains(&role), "managed roles");
    assert!(m.projects.contains(&project), "managed projects");
    assert!(m.caches.contains(&cache), "managed caches");
    assert!(m.api_keys.contains(&key), "managed keys");
    assert!(m.workers.contains(&worker), "managed workers");
    assert!(m.webhook_secrets.contains(&acme.id), "managed webhook secrets");
    assert!(m.forge_connections.contains(&connection), "managed forge connections");
}

/// A `Put…` of an existing row updates it (the fields it names and `managed`), and unmanaged rows leave the
/// managed lists; deletes remove rows, and deleting what is absent is no error.
pub async fn state_writes_update_unmanage_and_delete<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let mut adopted = acme.clone();
    adopted.description = "declared".into();
    adopted.managed = true;
    let mut renamed = alice.clone();
    renamed.name = "Alice Declared".into();
    renamed.password_hash = None;
    renamed.managed = true;
    s.apply_state(
        &[
            StateWrite::PutOrg(adopted.clone()),
            StateWrite::PutUser(renamed.clone()),
        ],
        now(),
    )
    .await
    .expect("adopting");
    assert_eq!(s.org(acme.id).await.expect("org"), Some(adopted.clone()), "org adopted");
    assert_eq!(
        s.user(alice.id).await.expect("user"),
        Some(renamed.clone()),
        "user adopted"
    );
    assert_eq!(
        s.membership(acme.id, alice.id).await.expect("membership"),
        Some(ADMIN),
        "updating an organization keeps its members"
    );

    let mut released = adopted.clone();
    released.managed = false;
    s.apply_state(&[StateWrite::PutOrg(released.clone())], now())
        .await
        .expect("unmanaging");
    let m = s.managed_entities().await.expect("managed_entities");
    assert!(
        !m.orgs.iter().any(|o| o.id == acme.id),
        "an unmanaged org is not listed"
    );
    assert!(m.users.iter().any(|u| u.id == alice.id), "the user still is");

    let bob = user(s, "bob").await;
    let project = new_project(acme.id, "web", alice.id);
    s.create_project(&project).await.expect("create_project");
    s.set_membership(&membership(acme.id, bob.id, VIEW))
        .await
        .expect("set_membership");
    s.apply_state(
        &[
            StateWrite::DeleteMembership {
                org: acme.id,
                user: bob.id,
            },
            StateWrite::DeleteProject(project.id),
            StateWrite::DeleteProject(project.id),
            StateWrite::DeleteUser(bob.id),
        ],
        now(),
    )
    .await
    .expect("deleting, twice included");
    assert_eq!(
        s.project_by_id(project.id).await.expect("project"),
        None,
        "project deleted"
    );
    assert_eq!(s.user(bob.id).await.expect("user"), None, "user deleted");
    assert_eq!(s.membership(acme.id, bob.id).await.expect("membership"), None);
}

/// The batch is all or nothing: when a write fails, its error is answered and none of the writes before it
/// is kept.
pub async fn state_writes_are_all_or_nothing<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let newcomer = new_user("newcomer");
    let mut changed = acme.clone();
    changed.public = true;
    let cache = new_cache("main", alice.id, false);
    // Push to a cache the organization was never granted: NotFound.
    let writes = [
        StateWrite::PutUser(newcomer.clone()),
        StateWrite::PutOrg(changed),
        StateWrite::PutCache(cache.clone()),
        StateWrite::SetPushCache {
            org: acme.id,
            cache: Some(cache.id),
        },
    ];
    assert_eq!(
        s.apply_state(&writes, now()).await,
        Err(StorageError::NotFound),
        "a push cache that is no grant"
    );
    assert_eq!(
        s.user(newcomer.id).await.expect("user"),
        None,
        "the new user was rolled back"
    );
    assert_eq!(
        s.org(acme.id).await.expect("org"),
        Some(acme.clone()),
        "the org change was rolled back"
    );
    assert_eq!(
        s.cache(cache.id).await.expect("cache"),
        None,
        "the new cache was rolled back"
    );

    // A role still held, and a user who created an organization, cannot be deleted.
    let mut held = new_role(acme.id, "held");
    held.managed = true;
    s.create_role(&held).await.expect("create_role");
    let bob = user(s, "bob").await;
    s.set_membership(&membership(acme.id, bob.id, RoleRef::Custom(held.id)))
        .await
        .expect("set_membership");
    let other = new_user("other");
    let attempt = [StateWrite::PutUser(other.clone()), StateWrite::DeleteRole(held.id)];
    assert_eq!(s.apply_state(&attempt, now()).await, Err(conflict("role in use")));
    assert_eq!(s.user(other.id).await.expect("user"), None, "rolled back");
    let attempt = [StateWrite::PutUser(other.clone()), StateWrite::DeleteUser(alice.id)];
    assert_eq!(
        s.apply_state(&attempt, now()).await,
        Err(StorageError::NotFound),
        "the creator of acme"
    );
    assert_eq!(s.user(other.id).await.expect("user"), None, "rolled back");
    assert!(s.user(alice.id).await.expect("user").is_some(), "alice stays");
}
