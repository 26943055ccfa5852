//! Signing in through an OpenID Provider: who gets which account, linking, and the flow's single use.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ManualClock, app, signed_up};
use gradient_domain::service::{Caller, OIDC_FLOW_LIFETIME, OidcClaims, OidcOutcome, ServiceError, Settings};

const ISSUER: &str = "https://idp.example.com";

fn claims(subject: &str, email: &str, verified: bool) -> OidcClaims {
    OidcClaims {
        issuer: ISSUER.into(),
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: verified,
        name: Some("Dana Scully".into()),
        preferred_username: Some("dana".into()),
    }
}

fn code(r: Result<impl std::fmt::Debug, ServiceError>) -> &'static str {
    r.expect_err("refused").code()
}

#[tokio::test]
async fn a_new_identity_makes_an_account_and_signs_in_as_it_again() {
    let t = app(ManualClock::new(), Settings::default());
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert_eq!(flow.nonce, start.nonce);
    assert_eq!(flow.pkce_verifier, start.pkce_verifier);
    let OidcOutcome::SignedIn { token, user, created } = t
        .finish_oidc(&flow, claims("sub-1", "Dana@Example.com", false))
        .await
        .unwrap()
    else {
        panic!("signed in")
    };
    assert!(created);
    assert_eq!(user.username.as_str(), "dana");
    assert_eq!(user.email.as_str(), "dana@example.com");
    assert!(!user.email_verified, "email_verified is the provider's claim");
    assert_eq!(user.password_hash, None);
    let caller = t.authenticate(Some(&token)).await.unwrap();
    assert_eq!(caller.user_id(), Some(user.id));

    // Later: the same subject at the same issuer, whatever its email now, is the same account.
    let again = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&again.state, Some(&again.binding)).await.unwrap();
    let OidcOutcome::SignedIn {
        user: same, created, ..
    } = t
        .finish_oidc(&flow, claims("sub-1", "dana@fbi.example.com", true))
        .await
        .unwrap()
    else {
        panic!("signed in")
    };
    assert!(!created);
    assert_eq!(same.id, user.id);

    // A verified address at the provider makes a verified account; a taken username gets a suffix.
    let third = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&third.state, Some(&third.binding)).await.unwrap();
    let OidcOutcome::SignedIn { user: other, .. } = t
        .finish_oidc(&flow, claims("sub-2", "dana2@example.com", true))
        .await
        .unwrap()
    else {
        panic!("signed in")
    };
    assert_ne!(other.id, user.id);
    assert_eq!(other.username.as_str(), "dana-2");
    assert!(other.email_verified);
}

#[tokio::test]
async fn a_flow_is_single_use_bound_to_its_browser_and_expires() {
    let clock = ManualClock::new();
    let t = app(clock.clone(), Settings::default());
    let start = t.begin_oidc_sign_in().await.unwrap();
    assert_ne!(start.state, start.nonce);
    assert!(start.pkce_verifier.len() >= 43, "RFC 7636: 43 to 128 characters");
    assert_eq!(
        code(t.take_oidc_flow("not-a-state", Some(&start.binding)).await),
        "oidc_state_invalid"
    );
    t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert_eq!(
        code(t.take_oidc_flow(&start.state, Some(&start.binding)).await),
        "oidc_state_invalid",
        "a replayed callback"
    );

    let other_browser = t.begin_oidc_sign_in().await.unwrap();
    assert_eq!(
        code(t.take_oidc_flow(&other_browser.state, Some("another-browser")).await),
        "oidc_state_invalid"
    );
    assert_eq!(
        code(
            t.take_oidc_flow(&other_browser.state, Some(&other_browser.binding))
                .await
        ),
        "oidc_state_invalid",
        "a refused callback used the flow up"
    );
    let no_cookie = t.begin_oidc_sign_in().await.unwrap();
    assert_eq!(
        code(t.take_oidc_flow(&no_cookie.state, None).await),
        "oidc_state_invalid"
    );

    let late = t.begin_oidc_sign_in().await.unwrap();
    clock.advance(OIDC_FLOW_LIFETIME + chrono::TimeDelta::seconds(1));
    assert_eq!(
        code(t.take_oidc_flow(&late.state, Some(&late.binding)).await),
        "oidc_state_invalid",
        "expired"
    );
}

#[tokio::test]
async fn an_existing_account_is_never_taken_over_and_only_its_owner_links_it() {
    let t = app(ManualClock::new(), Settings::default());
    let owner = signed_up(&t, "fox").await;
    let owner_id = owner.user_id().unwrap();

    // Signing in with the account's email, verified or not, is refused and links nothing.
    for verified in [false, true] {
        let start = t.begin_oidc_sign_in().await.unwrap();
        let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
        assert_eq!(
            code(
                t.finish_oidc(&flow, claims("fox-at-idp", "fox@example.com", verified))
                    .await
            ),
            "oidc_account_exists"
        );
    }
    assert!(t.oidc_identities(&owner).await.unwrap().is_empty());

    // Only a signed-in session may start a link.
    assert_eq!(code(t.begin_oidc_link(&Caller::Anonymous).await), "unauthenticated");

    // The owner links, but only with the provider vouching for the same address.
    let link = |c: OidcClaims| {
        let t = &t;
        let owner = owner.clone();
        async move {
            let start = t.begin_oidc_link(&owner).await.unwrap();
            let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
            assert_eq!(flow.link_user, owner.user_id());
            t.finish_oidc(&flow, c).await
        }
    };
    assert_eq!(
        code(link(claims("fox-at-idp", "fox@example.com", false)).await),
        "oidc_email_unverified"
    );
    assert_eq!(
        code(link(claims("fox-at-idp", "someone@example.com", true)).await),
        "oidc_email_mismatch"
    );
    assert!(t.oidc_identities(&owner).await.unwrap().is_empty(), "nothing linked");
    let OidcOutcome::Linked { user } = link(claims("fox-at-idp", "FOX@example.com", true)).await.unwrap() else {
        panic!("linked")
    };
    assert_eq!(user.id, owner_id);
    let linked = t.oidc_identities(&owner).await.unwrap();
    assert_eq!(
        linked
            .iter()
            .map(|i| (i.issuer.as_str(), i.subject.as_str()))
            .collect::<Vec<_>>(),
        [(ISSUER, "fox-at-idp")]
    );

    // Now the provider's account signs in as the owner.
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    let OidcOutcome::SignedIn { user, created, .. } = t
        .finish_oidc(&flow, claims("fox-at-idp", "fox@example.com", true))
        .await
        .unwrap()
    else {
        panic!("signed in")
    };
    assert_eq!((user.id, created), (owner_id, false));

    // Another user cannot link the same provider account.
    let other = signed_up(&t, "skinner").await;
    let start = t.begin_oidc_link(&other).await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert_eq!(
        code(
            t.finish_oidc(&flow, claims("fox-at-idp", "skinner@example.com", true))
                .await
        ),
        "oidc_identity_taken"
    );
}

#[tokio::test]
async fn new_accounts_need_an_email_and_open_registration() {
    let t = app(
        ManualClock::new(),
        Settings {
            enable_registration: false,
            ..Settings::default()
        },
    );
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert_eq!(
        code(t.finish_oidc(&flow, claims("new", "new@example.com", true)).await),
        "registration_disabled"
    );
    let t = app(ManualClock::new(), Settings::default());
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    let mut no_email = claims("new", "x@example.com", true);
    no_email.email = None;
    assert_eq!(code(t.finish_oidc(&flow, no_email).await), "oidc_email_missing");
}

#[tokio::test]
async fn required_oidc_refuses_password_login_and_registration() {
    let t = app(
        ManualClock::new(),
        Settings {
            oidc_required: true,
            ..Settings::default()
        },
    );
    assert_eq!(code(t.login("anyone", "password123").await), "forbidden");
    assert_eq!(
        code(
            t.register(gradient_domain::service::Registration {
                username: "x".into(),
                name: "x".into(),
                email: "x@example.com".into(),
                password: "password123".into(),
            })
            .await
        ),
        "registration_disabled"
    );
    // OIDC still makes accounts.
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert!(matches!(
        t.finish_oidc(&flow, claims("new", "new@example.com", true)).await,
        Ok(OidcOutcome::SignedIn { created: true, .. })
    ));
}

/// `requireVerification` holds for single sign-on too: an account whose provider did not vouch for its address
/// gets no session until the address is verified; one the provider vouched for signs in.
#[tokio::test]
async fn required_verification_holds_for_single_sign_on() {
    let settings = Settings {
        email: gradient_domain::service::EmailSettings {
            enabled: true,
            require_verification: true,
        },
        ..Settings::default()
    };
    let t = app(ManualClock::new(), settings);
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert_eq!(
        code(t.finish_oidc(&flow, claims("sub-1", "dana@example.com", false)).await),
        "email_not_verified"
    );
    let start = t.begin_oidc_sign_in().await.unwrap();
    let flow = t.take_oidc_flow(&start.state, Some(&start.binding)).await.unwrap();
    assert!(matches!(
        t.finish_oidc(&flow, claims("sub-2", "fox@example.com", true)).await,
        Ok(OidcOutcome::SignedIn { .. })
    ));
}
