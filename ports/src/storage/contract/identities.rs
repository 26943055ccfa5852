//! OIDC identities (issuer + subject → user) and sign-ins in progress.

use super::support::{conflict, hash, new_user, now, seconds, user};
use gradient_domain::UserId;
use gradient_domain::model::{OidcFlow, OidcIdentity, Timestamp};
use gradient_domain::ports::{Storage, StorageError};

fn identity(user: UserId, issuer: &str) -> OidcIdentity {
    OidcIdentity {
        issuer: issuer.to_owned(),
        subject: hash(),
        user_id: user,
        created_at: now(),
    }
}

fn flow(link_user: Option<UserId>, expires_at: Timestamp) -> OidcFlow {
    OidcFlow {
        state: hash(),
        binding_hash: hash(),
        pkce_verifier: hash(),
        nonce: hash(),
        link_user,
        expires_at,
    }
}

/// A user created with an identity is found by its issuer and subject, and lists it; the same subject at
/// another issuer is someone else.
pub async fn oidc_user_round_trips_by_issuer_and_subject<S: Storage>(s: &S) {
    let mut new = new_user("oidc");
    new.password_hash = None;
    new.email_verified = false;
    let id = identity(new.id, "https://idp.example.com");
    s.create_oidc_user(&new, &id).await.expect("create_oidc_user");
    assert_eq!(
        s.user(new.id).await.expect("user"),
        Some(new.clone()),
        "the user is created"
    );
    assert_eq!(
        s.user_by_oidc_identity(&id.issuer, &id.subject)
            .await
            .expect("by identity"),
        Some(new.clone()),
        "found by issuer and subject"
    );
    assert_eq!(
        s.user_by_oidc_identity("https://other.example.com", &id.subject)
            .await
            .expect("by identity"),
        None,
        "the same subject at another issuer is not this user"
    );
    assert_eq!(
        s.user_by_oidc_identity(&id.issuer, &hash()).await.expect("by identity"),
        None,
        "an unknown subject is None"
    );
    assert_eq!(s.oidc_identities(new.id).await.expect("identities"), vec![id]);
}

/// A taken issuer and subject, username or email refuses the whole creation: no user, no identity.
pub async fn oidc_user_creation_conflicts_leave_nothing<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let taken = identity(alice.id, "https://idp.example.com");
    s.link_oidc_identity(&taken).await.expect("link");

    let mut again = new_user("bob");
    let mut same_identity = taken.clone();
    same_identity.user_id = again.id;
    assert_eq!(
        s.create_oidc_user(&again, &same_identity).await,
        Err(conflict("oidc identity")),
        "a taken issuer and subject"
    );
    assert_eq!(s.user(again.id).await.expect("user"), None, "no user was created");

    again.email = alice.email.clone();
    let fresh = identity(again.id, "https://idp.example.com");
    assert_eq!(
        s.create_oidc_user(&again, &fresh).await,
        Err(conflict("email")),
        "a taken email"
    );
    assert_eq!(s.user(again.id).await.expect("user"), None, "no user was created");
    assert_eq!(
        s.user_by_oidc_identity(&fresh.issuer, &fresh.subject)
            .await
            .expect("by identity"),
        None,
        "no identity was linked"
    );
}

/// Linking adds an identity to an existing user, once; an unknown user is NotFound; identities list oldest
/// first.
pub async fn oidc_identities_link_once_and_list_oldest_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let mut first = identity(alice.id, "https://b.example.com");
    first.created_at = now() - seconds(10);
    let second = identity(alice.id, "https://a.example.com");
    s.link_oidc_identity(&second).await.expect("link second");
    s.link_oidc_identity(&first).await.expect("link first");
    assert_eq!(
        s.oidc_identities(alice.id).await.expect("identities"),
        vec![first.clone(), second.clone()],
        "oldest first"
    );
    let bob = user(s, "bob").await;
    let mut stolen = first.clone();
    stolen.user_id = bob.id;
    assert_eq!(
        s.link_oidc_identity(&stolen).await,
        Err(conflict("oidc identity")),
        "an identity links to one user only"
    );
    assert_eq!(
        s.user_by_oidc_identity(&first.issuer, &first.subject)
            .await
            .expect("by identity"),
        Some(alice.clone()),
        "it still signs in as its first user"
    );
    assert_eq!(
        s.link_oidc_identity(&identity(UserId::new(), "https://a.example.com"))
            .await,
        Err(StorageError::NotFound),
        "an unknown user"
    );
    assert_eq!(s.oidc_identities(bob.id).await.expect("identities"), vec![]);
}

/// A flow is taken once: the second take is None. Expired flows are deleted by the sweep, others kept.
pub async fn oidc_flows_are_taken_once_and_expire<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let live = flow(Some(alice.id), now() + seconds(600));
    s.create_oidc_flow(&live).await.expect("create flow");
    assert_eq!(
        s.create_oidc_flow(&live).await,
        Err(conflict("oidc flow")),
        "a state is used once"
    );
    assert_eq!(
        s.create_oidc_flow(&flow(Some(UserId::new()), now() + seconds(600)))
            .await,
        Err(StorageError::NotFound),
        "a link flow for an unknown user"
    );
    let expired = flow(None, now() - seconds(1));
    s.create_oidc_flow(&expired).await.expect("create expired flow");
    assert!(
        s.delete_expired_oidc_flows(now()).await.expect("sweep") >= 1,
        "the expired flow is swept"
    );
    assert_eq!(s.take_oidc_flow(&expired.state).await.expect("take"), None, "swept");
    assert_eq!(
        s.take_oidc_flow(&live.state).await.expect("take"),
        Some(live.clone()),
        "the live flow reads back whole"
    );
    assert_eq!(s.take_oidc_flow(&live.state).await.expect("take"), None, "taken once");
}
