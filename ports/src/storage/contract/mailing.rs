//! Email tokens, verified addresses, password resets and the evaluation mail setting.

use super::support::{hash, new_session, new_user, now, seconds, user};
use gradient_domain::UserId;
use gradient_domain::model::{EmailToken, TokenPurpose};
use gradient_domain::ports::{Storage, StorageError};

fn token(user: UserId, purpose: TokenPurpose, age_secs: i64) -> EmailToken {
    let created_at = now() - seconds(age_secs);
    EmailToken {
        hash: hash(),
        user_id: user,
        purpose,
        created_at,
        expires_at: created_at + seconds(3600),
    }
}

/// A token is taken once, only with its purpose; the newest token's time is known per purpose.
pub async fn email_tokens_are_single_use_per_purpose<S: Storage>(s: &S) {
    let ada = user(s, "ada").await;
    let old = token(ada.id, TokenPurpose::VerifyEmail, 120);
    let new = token(ada.id, TokenPurpose::VerifyEmail, 10);
    let reset = token(ada.id, TokenPurpose::ResetPassword, 300);
    for t in [&old, &new, &reset] {
        s.put_email_token(t).await.expect("put_email_token");
    }
    assert_eq!(
        s.put_email_token(&old).await,
        Err(StorageError::Conflict("email token".into())),
        "a hash is stored once"
    );
    assert_eq!(
        s.last_email_token_at(ada.id, TokenPurpose::VerifyEmail)
            .await
            .expect("last"),
        Some(new.created_at),
        "the newest verification token's time"
    );
    assert_eq!(
        s.last_email_token_at(ada.id, TokenPurpose::ResetPassword)
            .await
            .expect("last"),
        Some(reset.created_at)
    );
    assert_eq!(
        s.take_email_token(&reset.hash, TokenPurpose::VerifyEmail)
            .await
            .expect("take"),
        None,
        "a reset token does not verify an address"
    );
    assert_eq!(
        s.take_email_token(&new.hash, TokenPurpose::VerifyEmail)
            .await
            .expect("take"),
        Some(new.clone()),
        "the token reads back whole"
    );
    assert_eq!(
        s.take_email_token(&new.hash, TokenPurpose::VerifyEmail)
            .await
            .expect("take"),
        None,
        "and only once"
    );
    assert_eq!(
        s.delete_email_tokens(ada.id, TokenPurpose::VerifyEmail)
            .await
            .expect("delete"),
        1,
        "the other verification token"
    );
    assert_eq!(
        s.take_email_token(&old.hash, TokenPurpose::VerifyEmail)
            .await
            .expect("take"),
        None
    );
    assert_eq!(
        s.take_email_token(&reset.hash, TokenPurpose::ResetPassword)
            .await
            .expect("take"),
        Some(reset),
        "deleting one purpose's tokens leaves the other's"
    );
    assert_eq!(
        s.put_email_token(&token(UserId::new(), TokenPurpose::VerifyEmail, 0))
            .await,
        Err(StorageError::NotFound),
        "a token of an unknown user"
    );
}

/// Verifying an address and resetting a password change only that user; a reset ends all their sessions.
pub async fn password_reset_ends_the_users_sessions<S: Storage>(s: &S) {
    let unverified = |prefix| gradient_domain::model::User {
        email_verified: false,
        ..new_user(prefix)
    };
    let (ada, bob) = (unverified("ada"), unverified("bob"));
    s.create_user(&ada).await.expect("create_user");
    s.create_user(&bob).await.expect("create_user");
    let (a1, a2, b1) = (new_session(ada.id), new_session(ada.id), new_session(bob.id));
    for x in [&a1, &a2, &b1] {
        s.create_session(x).await.expect("create_session");
    }
    assert!(s.set_email_verified(bob.id).await.expect("verify"));
    assert!(s.user(bob.id).await.expect("user").expect("bob").email_verified);
    assert!(
        !s.user(ada.id).await.expect("user").expect("ada").email_verified,
        "only bob"
    );
    assert!(
        !s.set_email_verified(UserId::new()).await.expect("verify"),
        "unknown user"
    );

    assert!(s.reset_password(ada.id, "$argon2id$new").await.expect("reset"));
    let after = s.user(ada.id).await.expect("user").expect("ada");
    assert_eq!(after.password_hash.as_deref(), Some("$argon2id$new"));
    assert!(after.email_verified, "the reset link reached the address");
    assert_eq!(s.session(a1.id).await.expect("session"), None, "ada's sessions end");
    assert_eq!(s.session(a2.id).await.expect("session"), None);
    assert_eq!(s.session(b1.id).await.expect("session"), Some(b1), "bob's stays");
    assert_eq!(
        s.user(bob.id).await.expect("user").expect("bob").password_hash,
        bob.password_hash,
        "bob's password stays"
    );
    assert!(
        !s.reset_password(UserId::new(), "x").await.expect("reset"),
        "unknown user"
    );
}

/// Evaluation mail is on unless the user turned it off; the setting belongs to one user.
pub async fn evaluation_mail_is_on_until_turned_off<S: Storage>(s: &S) {
    let ada = user(s, "ada").await;
    let bob = user(s, "bob").await;
    assert!(s.evaluation_mail(ada.id).await.expect("setting"), "on by default");
    s.set_evaluation_mail(ada.id, false).await.expect("off");
    assert!(!s.evaluation_mail(ada.id).await.expect("setting"));
    assert!(s.evaluation_mail(bob.id).await.expect("setting"), "bob's is his own");
    s.set_evaluation_mail(ada.id, false).await.expect("off again");
    s.set_evaluation_mail(ada.id, true).await.expect("on");
    assert!(s.evaluation_mail(ada.id).await.expect("setting"));
    assert_eq!(
        s.set_evaluation_mail(UserId::new(), false).await,
        Err(StorageError::NotFound)
    );
}
