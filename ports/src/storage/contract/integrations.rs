//! Organizations' forge integrations: webhook secrets.

use super::support::{now, org, user};
use gradient_domain::OrgId;
use gradient_domain::crypt::Sealed;
use gradient_domain::ports::{Storage, StorageError};

/// A stored webhook secret reads back as written, per organization.
pub async fn webhook_secret_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        None,
        "no secret before one is set"
    );
    let sealed = Sealed("v1:first".to_owned());
    s.set_webhook_secret(acme.id, &sealed, now())
        .await
        .expect("set_webhook_secret");
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        Some(sealed),
        "the secret reads back"
    );
    assert_eq!(
        s.webhook_secret(other.id).await.expect("webhook_secret"),
        None,
        "other organizations have none"
    );
}

/// Setting a secret again replaces the previous one.
pub async fn set_webhook_secret_replaces<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    s.set_webhook_secret(acme.id, &Sealed("v1:first".to_owned()), now())
        .await
        .expect("set_webhook_secret");
    s.set_webhook_secret(acme.id, &Sealed("v1:second".to_owned()), now())
        .await
        .expect("set_webhook_secret replaces");
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        Some(Sealed("v1:second".to_owned())),
        "the newer secret is kept"
    );
}

/// A secret of an unknown organization is NotFound, and nothing is stored.
pub async fn webhook_secret_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    let ghost = OrgId::new();
    assert_eq!(
        s.set_webhook_secret(ghost, &Sealed("v1:x".to_owned()), now()).await,
        Err(StorageError::NotFound),
        "set_webhook_secret of an unknown org"
    );
    assert_eq!(s.webhook_secret(ghost).await.expect("webhook_secret"), None);
}

/// Deleting an organization deletes its webhook secret, and only its.
pub async fn delete_org_removes_its_webhook_secret<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    for o in [doomed.id, kept.id] {
        s.set_webhook_secret(o, &Sealed(format!("v1:{}", o.0)), now())
            .await
            .expect("set_webhook_secret");
    }
    assert!(s.delete_org(doomed.id).await.expect("delete_org"));
    assert_eq!(
        s.webhook_secret(doomed.id).await.expect("webhook_secret"),
        None,
        "the deleted org's secret is gone"
    );
    assert_eq!(
        s.webhook_secret(kept.id).await.expect("webhook_secret"),
        Some(Sealed(format!("v1:{}", kept.id.0))),
        "the other org's secret is kept"
    );
}
