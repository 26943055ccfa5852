//! Signing in through an OpenID Provider: who gets which account, and linking a provider's account to an
//! existing one. The HTTP flow (redirect to the provider, code exchange, ID token checks) is the server's;
//! these use cases hold the rules.
//!
//! * An account at the provider is its issuer and subject: that pair signs in as one user, whatever its email
//!   says later.
//! * A pair never seen before makes a new account (when registration is enabled), with the provider's
//!   `email_verified` claim as the account's verification (absent means unverified) — unless an account with
//!   that email exists: then the sign-in is refused (`oidc_account_exists`), verified email or not. Nobody's
//!   account is ever taken over by proving an email at a provider.
//! * The owner of that account links the provider's account to it while signed in ([`Gradient::begin_oidc_link`]),
//!   and only when the provider vouches for the account's email (same address, `email_verified` true).
//! * Each flow is single use, expires after [`OIDC_FLOW_LIFETIME`], and is bound to the browser that started it
//!   (the SHA-256 of a random value only its cookie holds).

use super::accounts::Caller;
use super::{Gradient, Result, ServiceError};
use crate::auth;
use crate::model::{OidcFlow, OidcIdentity, Session, User};
use crate::ports::{Clock, Storage, StorageError};
use crate::{Email, Name, SessionId, UserId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;

/// How long a sign-in at the provider may take, from the redirect to the callback.
pub const OIDC_FLOW_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// What the OpenID Provider vouched for about the person signing in: from an ID token whose signature,
/// issuer, audience, expiry and nonce the server checked (and the provider's userinfo for the same subject).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcClaims {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// The provider's `email_verified` claim; absent is `false`.
    pub email_verified: bool,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
}

/// A flow begun: the values the server sends to the provider (`state`, `nonce`, the S256 challenge of
/// `pkce_verifier`) and to the browser (`binding`, in the flow cookie). Only the binding's hash is stored.
#[derive(Clone, Debug)]
pub struct OidcStart {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub binding: String,
}

/// How a flow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OidcOutcome {
    /// Signed in: the session's JWT. `created` when the account was made by this sign-in.
    SignedIn { token: String, user: User, created: bool },
    /// The provider's account now signs in as this (signed-in) user too.
    Linked { user: User },
}

/// 32 random bytes, base64url without padding (43 characters: also a valid PKCE verifier).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn stale_flow() -> ServiceError {
    ServiceError::invalid(
        "oidc_state_invalid",
        "this sign-in is unknown, expired, already used or was started in another browser: start it again",
    )
}

/// A username for a new account from what the provider says: `preferred_username`, else the email's local
/// part, else `name`, lowercased, every run of other characters made one `-`, at most [`Name::MAX_LEN`]
/// characters; `user` when nothing usable is left.
pub fn username_from_claims(claims: &OidcClaims) -> Name {
    let candidates = [
        claims.preferred_username.as_deref(),
        claims.email.as_deref().and_then(|e| e.split('@').next()),
        claims.name.as_deref(),
    ];
    for candidate in candidates.into_iter().flatten() {
        let mut out = String::new();
        for c in candidate.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        let out: String = out.trim_end_matches('-').chars().take(Name::MAX_LEN).collect();
        if let Ok(name) = Name::parse_as(out.trim_end_matches('-'), "username") {
            return name;
        }
    }
    Name::parse("user").expect("a valid name")
}

/// `base` with a suffix that keeps it at most [`Name::MAX_LEN`] characters.
fn with_suffix(base: &Name, suffix: &str) -> Name {
    let keep = Name::MAX_LEN - suffix.len() - 1;
    let stem: String = base.as_str().chars().take(keep).collect();
    Name::parse(&format!("{}-{suffix}", stem.trim_end_matches('-'))).unwrap_or_else(|_| base.clone())
}

/// The display name: the provider's `name` (one line, at most 256 characters), else the username.
fn display_name(claims: &OidcClaims, username: &Name) -> String {
    let name: String = claims
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect();
    let name = name.trim();
    if name.is_empty() {
        username.to_string()
    } else {
        name.to_owned()
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Begins a sign-in at the provider.
    pub async fn begin_oidc_sign_in(&self) -> Result<OidcStart> {
        self.begin_oidc(None).await
    }

    /// Begins linking an account at the provider to the caller's, who must be signed in with a session (an
    /// API key cannot: a script must not attach sign-ins to an account).
    pub async fn begin_oidc_link(&self, caller: &Caller) -> Result<OidcStart> {
        match caller {
            Caller::Session { user, .. } => self.begin_oidc(Some(user.id)).await,
            Caller::Key { .. } => Err(ServiceError::Forbidden(
                "link a single sign-on account from a signed-in session, not with an API key".into(),
            )),
            Caller::Anonymous => Err(ServiceError::Unauthenticated("log in or present an API key".into())),
        }
    }

    async fn begin_oidc(&self, link_user: Option<UserId>) -> Result<OidcStart> {
        let now = self.clock.now();
        self.storage.delete_expired_oidc_flows(now).await?;
        let start = OidcStart {
            state: random_token(),
            nonce: random_token(),
            pkce_verifier: random_token(),
            binding: random_token(),
        };
        self.storage
            .create_oidc_flow(&OidcFlow {
                state: start.state.clone(),
                binding_hash: auth::sha256_hex(start.binding.as_bytes()),
                pkce_verifier: start.pkce_verifier.clone(),
                nonce: start.nonce.clone(),
                link_user,
                expires_at: now + OIDC_FLOW_LIFETIME,
            })
            .await?;
        Ok(start)
    }

    /// Takes the flow a callback names by its `state`, once: a second callback with the same state, one from
    /// another browser (`binding` is the flow cookie's value) and one after the flow expired are refused with
    /// `oidc_state_invalid` — and the flow is gone either way, so it cannot be tried again.
    pub async fn take_oidc_flow(&self, state: &str, binding: Option<&str>) -> Result<OidcFlow> {
        let flow = self.storage.take_oidc_flow(state).await?.ok_or_else(stale_flow)?;
        let bound = binding.is_some_and(|b| {
            auth::secrets_equal(auth::sha256_hex(b.as_bytes()).as_bytes(), flow.binding_hash.as_bytes())
        });
        if !bound || flow.expires_at <= self.clock.now() {
            return Err(stale_flow());
        }
        Ok(flow)
    }

    /// Finishes a flow with what the provider vouched for: signs in (or creates the account), or links.
    pub async fn finish_oidc(&self, flow: &OidcFlow, claims: OidcClaims) -> Result<OidcOutcome> {
        match flow.link_user {
            Some(user) => self.link_oidc(user, claims).await,
            None => self.sign_in_oidc(claims).await,
        }
    }

    async fn link_oidc(&self, user_id: UserId, claims: OidcClaims) -> Result<OidcOutcome> {
        let user = self
            .storage
            .user(user_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound("the account to link no longer exists".into()))?;
        if let Some(holder) = self
            .storage
            .user_by_oidc_identity(&claims.issuer, &claims.subject)
            .await?
        {
            return if holder.id == user.id {
                Ok(OidcOutcome::Linked { user })
            } else {
                Err(identity_taken())
            };
        }
        let email = claims.email.as_deref().map(Email::parse).and_then(|e| e.ok());
        if email.as_ref() != Some(&user.email) {
            return Err(ServiceError::invalid(
                "oidc_email_mismatch",
                format!(
                    "the provider's account has another email address than this account ({}): only an account \
                     with the same address can be linked",
                    user.email
                ),
            ));
        }
        if !claims.email_verified {
            return Err(ServiceError::invalid(
                "oidc_email_unverified",
                "the provider does not vouch for this email address (email_verified is not true): verify it \
                 at the provider, then link again",
            ));
        }
        let identity = OidcIdentity {
            issuer: claims.issuer,
            subject: claims.subject,
            user_id: user.id,
            created_at: self.clock.now(),
        };
        match self.storage.link_oidc_identity(&identity).await {
            Ok(()) => Ok(OidcOutcome::Linked { user }),
            Err(StorageError::Conflict(_)) => Err(identity_taken()),
            Err(e) => Err(e.into()),
        }
    }

    async fn sign_in_oidc(&self, claims: OidcClaims) -> Result<OidcOutcome> {
        if let Some(user) = self
            .storage
            .user_by_oidc_identity(&claims.issuer, &claims.subject)
            .await?
        {
            let token = self.open_oidc_session(&user).await?;
            return Ok(OidcOutcome::SignedIn {
                token,
                user,
                created: false,
            });
        }
        let email = match claims.email.as_deref() {
            None => {
                return Err(ServiceError::invalid(
                    "oidc_email_missing",
                    "the provider shared no email address: the server's OIDC scopes must include `email`",
                ));
            }
            Some(e) => Email::parse(e).map_err(|_| {
                ServiceError::invalid(
                    "oidc_email_missing",
                    format!("the provider's email address '{e}' is not a valid address"),
                )
            })?,
        };
        if self.storage.user_by_email(email.as_str()).await?.is_some() {
            return Err(account_exists());
        }
        if !self.settings.enable_registration {
            return Err(ServiceError::RegistrationDisabled);
        }
        let base = username_from_claims(&claims);
        let now = self.clock.now();
        let mut user = User {
            id: UserId::new(),
            name: display_name(&claims, &base),
            username: base.clone(),
            email,
            password_hash: None,
            email_verified: claims.email_verified,
            created_at: now,
            managed: false,
        };
        let identity = OidcIdentity {
            issuer: claims.issuer.clone(),
            subject: claims.subject.clone(),
            user_id: user.id,
            created_at: now,
        };
        // The provider's username may be taken here: `name-2`, `name-3`, then random suffixes.
        for attempt in 0..8u32 {
            if attempt > 0 {
                let suffix = if attempt < 4 {
                    (attempt + 1).to_string()
                } else {
                    random_token().chars().filter(char::is_ascii_digit).take(6).collect()
                };
                user.username = with_suffix(&base, &suffix);
            }
            if self.storage.user_by_username(&user.username).await?.is_some() {
                continue;
            }
            match self.storage.create_oidc_user(&user, &identity).await {
                Ok(()) => {
                    let token = self.open_oidc_session(&user).await?;
                    return Ok(OidcOutcome::SignedIn {
                        token,
                        user,
                        created: true,
                    });
                }
                Err(StorageError::Conflict(what)) if what == "username" => continue,
                Err(StorageError::Conflict(what)) if what == "email" => return Err(account_exists()),
                // The same account signed in twice at once: the other sign-in made the account.
                Err(StorageError::Conflict(what)) if what == "oidc identity" => {
                    let user = self
                        .storage
                        .user_by_oidc_identity(&claims.issuer, &claims.subject)
                        .await?
                        .ok_or_else(|| ServiceError::Internal("an OIDC identity vanished".into()))?;
                    let token = self.open_oidc_session(&user).await?;
                    return Ok(OidcOutcome::SignedIn {
                        token,
                        user,
                        created: false,
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::conflict(
            "username_taken",
            format!("no free username like '{base}' was found: try again"),
        ))
    }

    async fn open_oidc_session(&self, user: &User) -> Result<String> {
        // `requireVerification` holds for every way in: an account whose address neither the provider vouched
        // for nor a verification link confirmed gets no session (a verification mail can be asked for by address).
        if self.settings.email.require_verification && !user.email_verified {
            return Err(ServiceError::EmailNotVerified);
        }
        let now = self.clock.now();
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.settings.session_lifetime,
        };
        self.storage.create_session(&session).await?;
        Ok(self.tokens.issue(&session))
    }

    /// The provider accounts linked to the caller's account (issuer and subject), oldest first.
    pub async fn oidc_identities(&self, caller: &Caller) -> Result<Vec<OidcIdentity>> {
        let user = caller.require_unrestricted("list linked sign-in accounts")?;
        Ok(self.storage.oidc_identities(user.id).await?)
    }
}

fn account_exists() -> ServiceError {
    ServiceError::conflict(
        "oidc_account_exists",
        "an account with this email address already exists and is not linked to this provider: sign in to it \
         with its password, then link single sign-on from the account page",
    )
}

fn identity_taken() -> ServiceError {
    ServiceError::conflict(
        "oidc_identity_taken",
        "this provider account already signs in as another Gradient account",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(preferred: Option<&str>, email: Option<&str>, name: Option<&str>) -> OidcClaims {
        OidcClaims {
            issuer: "https://idp".into(),
            subject: "s".into(),
            email: email.map(str::to_owned),
            email_verified: false,
            name: name.map(str::to_owned),
            preferred_username: preferred.map(str::to_owned),
        }
    }

    #[test]
    fn usernames_come_from_the_provider_made_valid() {
        let cases = [
            (claims(Some("Alice.Smith"), None, None), "alice-smith"),
            (claims(None, Some("Bob+ci@example.com"), None), "bob-ci"),
            (claims(Some("..."), Some("carol@example.com"), None), "carol"),
            (claims(None, None, Some("Dörte Ünal")), "d-rte-nal"),
            (claims(None, None, Some("李")), "user"),
            (claims(Some("-lead"), None, None), "lead"),
        ];
        for (c, want) in cases {
            assert_eq!(username_from_claims(&c).as_str(), want, "{c:?}");
        }
        let long = "a".repeat(100);
        assert_eq!(
            username_from_claims(&claims(Some(&long), None, None)).as_str().len(),
            Name::MAX_LEN
        );
        let base = Name::parse(&"b".repeat(64)).unwrap();
        assert_eq!(with_suffix(&base, "12").as_str().len(), Name::MAX_LEN);
        assert!(with_suffix(&base, "12").as_str().ends_with("-12"));
    }

    #[test]
    fn display_names_are_one_line() {
        let username = Name::parse("alice").unwrap();
        assert_eq!(
            display_name(&claims(None, None, Some(" Alice\nSmith ")), &username),
            "AliceSmith"
        );
        assert_eq!(display_name(&claims(None, None, None), &username), "alice");
    }
}
