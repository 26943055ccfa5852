//! Users, sessions and API keys.

use super::support::{conflict, hash, name, new_api_key, new_session, new_user, now, seconds, user};
use gradient_domain::model::ApiKey;
use gradient_domain::permissions::{KeyScope, Permission};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{ApiKeyId, Email, OrgId, SessionId, UserId};

/// A user reads back whole by id, username and email, with and without a password.
pub async fn user_round_trips<S: Storage>(s: &S) {
    let with_password = new_user("alice");
    let oidc_only = user_without_password();
    for user in [&with_password, &oidc_only] {
        s.create_user(user).await.expect("create_user");
        assert_eq!(s.user(user.id).await.expect("user"), Some(user.clone()), "user by id");
        assert_eq!(
            s.user_by_username(&user.username).await.expect("user_by_username"),
            Some(user.clone()),
            "user by username"
        );
        assert_eq!(
            s.user_by_email(user.email.as_str()).await.expect("user_by_email"),
            Some(user.clone()),
            "user by email"
        );
    }
}

fn user_without_password() -> gradient_domain::model::User {
    let mut user = new_user("oidc");
    user.password_hash = None;
    user.email_verified = false;
    user
}

/// Looking up a user that does not exist is `None`, not an error.
pub async fn absent_users_are_none<S: Storage>(s: &S) {
    assert_eq!(s.user(UserId::new()).await.expect("user"), None, "unknown user id");
    let unknown = name("nobody");
    assert_eq!(
        s.user_by_username(&unknown).await.expect("user_by_username"),
        None,
        "unknown username"
    );
    assert_eq!(
        s.user_by_email(&format!("{unknown}@example.com"))
            .await
            .expect("user_by_email"),
        None,
        "unknown email"
    );
}

/// `user_by_email` compares the stored (lowercase) email exactly; callers normalise first.
pub async fn user_by_email_matches_exactly<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let shouted = alice.email.as_str().to_uppercase();
    assert_eq!(
        s.user_by_email(&shouted).await.expect("user_by_email"),
        None,
        "email lookup is exact"
    );
    let normalised = Email::parse(&shouted).expect("valid email");
    assert_eq!(
        s.user_by_email(normalised.as_str()).await.expect("user_by_email"),
        Some(alice),
        "the normalised email finds the user"
    );
}

/// A second user with a taken username is refused with Conflict("username") and leaves no trace.
pub async fn taken_username_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let mut imposter = new_user("imposter");
    imposter.username = alice.username.clone();
    assert_eq!(
        s.create_user(&imposter).await,
        Err(conflict("username")),
        "create_user with a taken username"
    );
    assert_eq!(
        s.user(alice.id).await.expect("user"),
        Some(alice.clone()),
        "the original user is intact"
    );
    assert_eq!(
        s.user(imposter.id).await.expect("user"),
        None,
        "no row for the refused user"
    );
    assert_eq!(
        s.user_by_email(imposter.email.as_str()).await.expect("user_by_email"),
        None,
        "the refused user's email is not stored"
    );
}

/// A second user with a taken email is refused with Conflict("email") and leaves no trace.
pub async fn taken_email_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let mut imposter = new_user("imposter");
    imposter.email = alice.email.clone();
    assert_eq!(
        s.create_user(&imposter).await,
        Err(conflict("email")),
        "create_user with a taken email"
    );
    assert_eq!(
        s.user_by_email(alice.email.as_str()).await.expect("user_by_email"),
        Some(alice),
        "the email still finds the original user"
    );
    assert_eq!(
        s.user(imposter.id).await.expect("user"),
        None,
        "no row for the refused user"
    );
    assert_eq!(
        s.user_by_username(&imposter.username).await.expect("user_by_username"),
        None,
        "the refused user's username is not stored"
    );
}

/// A session reads back whole; deleting it reports whether it existed.
pub async fn session_round_trips_and_deletes<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let session = new_session(alice.id);
    let other = new_session(alice.id);
    s.create_session(&session).await.expect("create_session");
    s.create_session(&other)
        .await
        .expect("create_session of a second session");
    assert_eq!(
        s.session(session.id).await.expect("session"),
        Some(session.clone()),
        "session by id"
    );
    assert_eq!(
        s.session(SessionId::new()).await.expect("session"),
        None,
        "unknown session"
    );
    assert!(
        s.delete_session(session.id).await.expect("delete_session"),
        "deleting an existing session"
    );
    assert_eq!(
        s.session(session.id).await.expect("session"),
        None,
        "a deleted session is gone"
    );
    assert!(
        !s.delete_session(session.id).await.expect("delete_session"),
        "deleting it again reports false"
    );
    assert_eq!(
        s.session(other.id).await.expect("session"),
        Some(other),
        "the other session is untouched"
    );
}

/// A session must belong to an existing user.
pub async fn session_of_unknown_user_is_not_found<S: Storage>(s: &S) {
    let session = new_session(UserId::new());
    assert_eq!(
        s.create_session(&session).await,
        Err(StorageError::NotFound),
        "session of an unknown user"
    );
    assert_eq!(
        s.session(session.id).await.expect("session"),
        None,
        "no row for the refused session"
    );
}

/// API keys read back whole by hash and in the owner's list, whatever their scope.
pub async fn api_key_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let unscoped = new_api_key(alice.id, "laptop");
    let mut scoped = new_api_key(alice.id, "ci");
    scoped.scope = KeyScope {
        organization: Some(OrgId::new()),
        permissions: Some(
            [Permission::ViewOrg, Permission::TriggerEvaluation]
                .into_iter()
                .collect(),
        ),
    };
    scoped.created_at = unscoped.created_at + seconds(1);
    scoped.last_used_at = Some(scoped.created_at + seconds(60));
    let mut org_only = new_api_key(alice.id, "org only");
    org_only.scope = KeyScope {
        organization: Some(OrgId::new()),
        permissions: None,
    };
    org_only.created_at = unscoped.created_at + seconds(2);
    let mut no_permissions = new_api_key(alice.id, "read nothing");
    no_permissions.scope = KeyScope {
        organization: None,
        permissions: Some(Default::default()),
    };
    no_permissions.created_at = unscoped.created_at + seconds(3);
    let keys = [unscoped, scoped, org_only, no_permissions];
    for key in &keys {
        s.create_api_key(key).await.expect("create_api_key");
        assert_eq!(
            s.api_key_by_hash(&key.hash).await.expect("api_key_by_hash"),
            Some(key.clone()),
            "by hash"
        );
    }
    assert_eq!(
        s.api_keys(alice.id).await.expect("api_keys"),
        keys.to_vec(),
        "the owner's keys"
    );
}

/// A user's keys are listed oldest first (ties by id), and only theirs.
pub async fn api_keys_are_listed_oldest_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let start = now();
    let mut newest = new_api_key(alice.id, "newest");
    newest.created_at = start + seconds(20);
    let mut oldest = new_api_key(alice.id, "oldest");
    oldest.created_at = start;
    let mut twin_a = new_api_key(alice.id, "twin a");
    let mut twin_b = new_api_key(alice.id, "twin b");
    twin_a.created_at = start + seconds(10);
    twin_b.created_at = start + seconds(10);
    let bobs = new_api_key(bob.id, "bob's");
    for key in [&newest, &twin_a, &bobs, &oldest, &twin_b] {
        s.create_api_key(key).await.expect("create_api_key");
    }
    let mut twins = [twin_a, twin_b];
    twins.sort_by_key(|k| k.id);
    let [first_twin, second_twin] = twins;
    assert_eq!(
        s.api_keys(alice.id).await.expect("api_keys"),
        vec![oldest, first_twin, second_twin, newest],
        "alice's keys, by creation time then id"
    );
    assert_eq!(s.api_keys(bob.id).await.expect("api_keys"), vec![bobs], "bob's keys");
    assert_eq!(
        s.api_keys(UserId::new()).await.expect("api_keys"),
        vec![],
        "an unknown user has no keys"
    );
    assert_eq!(
        s.api_key_by_hash(&hash()).await.expect("api_key_by_hash"),
        None,
        "unknown hash"
    );
}

/// An API key must belong to an existing user.
pub async fn api_key_of_unknown_user_is_not_found<S: Storage>(s: &S) {
    let key = new_api_key(UserId::new(), "orphan");
    assert_eq!(
        s.create_api_key(&key).await,
        Err(StorageError::NotFound),
        "key of an unknown user"
    );
    assert_eq!(
        s.api_key_by_hash(&key.hash).await.expect("api_key_by_hash"),
        None,
        "no row for the refused key"
    );
}

/// A hash can be stored once, whoever owns the second key; the refusal leaves no trace.
pub async fn taken_api_key_hash_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let original = new_api_key(alice.id, "original");
    s.create_api_key(&original).await.expect("create_api_key");
    for owner in [alice.id, bob.id] {
        let mut copy = new_api_key(owner, "copy");
        copy.hash = original.hash.clone();
        assert_eq!(
            s.create_api_key(&copy).await,
            Err(conflict("api key")),
            "create_api_key with a taken hash"
        );
    }
    assert_eq!(
        s.api_key_by_hash(&original.hash).await.expect("api_key_by_hash"),
        Some(original.clone()),
        "the hash still finds the original key"
    );
    assert_eq!(
        s.api_keys(alice.id).await.expect("api_keys"),
        vec![original],
        "alice has only her original key"
    );
    assert_eq!(s.api_keys(bob.id).await.expect("api_keys"), vec![], "bob has no key");
}

/// Only the owner can delete a key; deleting reports whether something was deleted.
pub async fn api_key_is_deleted_only_by_its_owner<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let mallory = user(s, "mallory").await;
    let key = new_api_key(alice.id, "laptop");
    let kept = new_api_key(alice.id, "desktop");
    s.create_api_key(&key).await.expect("create_api_key");
    s.create_api_key(&kept).await.expect("create_api_key");
    assert!(
        !s.delete_api_key(mallory.id, key.id).await.expect("delete_api_key"),
        "someone else's key"
    );
    assert_eq!(
        s.api_key_by_hash(&key.hash).await.expect("api_key_by_hash"),
        Some(key.clone()),
        "a key is kept when someone else tries to delete it"
    );
    assert!(
        s.delete_api_key(alice.id, key.id).await.expect("delete_api_key"),
        "the owner deletes the key"
    );
    assert_eq!(
        s.api_key_by_hash(&key.hash).await.expect("api_key_by_hash"),
        None,
        "a deleted key is gone"
    );
    assert!(
        !s.delete_api_key(alice.id, key.id).await.expect("delete_api_key"),
        "deleting it again"
    );
    assert!(
        !s.delete_api_key(alice.id, ApiKeyId::new())
            .await
            .expect("delete_api_key"),
        "an unknown key"
    );
    assert_eq!(
        s.api_keys(alice.id).await.expect("api_keys"),
        vec![kept],
        "the other key is untouched"
    );
}

pub async fn touching_an_api_key_records_only_its_last_use<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let key = new_api_key(alice.id, "laptop");
    s.create_api_key(&key).await.expect("create_api_key");
    let at = key.created_at + chrono::TimeDelta::seconds(90);
    assert!(
        s.touch_api_key(key.id, at).await.expect("touch_api_key"),
        "the key exists"
    );
    let read = s.api_key_by_hash(&key.hash).await.expect("api_key_by_hash");
    assert_eq!(
        read,
        Some(ApiKey {
            last_used_at: Some(at),
            ..key.clone()
        }),
        "only last_used_at changed"
    );
    assert!(
        !s.touch_api_key(ApiKeyId::new(), at).await.expect("touch_api_key"),
        "an unknown key"
    );
}
