use super::Timestamp;
use crate::permissions::KeyScope;
use crate::{ApiKeyId, Email, Name, SessionId, UserId};

/// A person who logs in to Gradient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: Name,
    /// Display name.
    pub name: String,
    pub email: Email,
    /// argon2id PHC string; `None` for users who only log in through OIDC.
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub created_at: Timestamp,
    /// Declared in the server's declarative state (`docs/state.md`): only the state document changes it.
    pub managed: bool,
}

/// A login: the JWT a user holds names one of these, and logging out deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A long-lived token (`GRAD…`) for scripts, CI and Nix clients. Only its SHA-256 is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    /// Lowercase hex SHA-256 of the secret part of the token (without the `GRAD` prefix).
    pub hash: String,
    pub scope: KeyScope,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// Declared in the server's declarative state: the API cannot delete it.
    pub managed: bool,
}

/// A session as its owner's list of sessions shows it: when it was last used (recorded at most once a minute)
/// and the `User-Agent` of the login that opened it, when the login said one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session: Session,
    pub last_used_at: Option<Timestamp>,
    pub user_agent: Option<String>,
}

/// An account at an OpenID Provider that signs in as a Gradient user: the provider (its issuer URL) and the
/// account's subject there, which together never change and are never reused (OIDC Core §5.7). Emails and
/// names can change at the provider; this pair cannot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
    pub user_id: UserId,
    pub created_at: Timestamp,
}

/// A sign-in (or link) through the OpenID Provider in progress: what the callback needs to finish it. Made
/// when the browser is sent to the provider, taken (and so deleted) by the callback: single use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcFlow {
    /// The `state` parameter sent to the provider and returned by it on the callback.
    pub state: String,
    /// SHA-256 (hex) of the random value in the browser's flow cookie: the callback must come from the
    /// browser that started the flow.
    pub binding_hash: String,
    /// The PKCE code verifier (the provider was sent its S256 challenge).
    pub pkce_verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The signed-in user linking the provider's account to theirs; `None` for a sign-in.
    pub link_user: Option<UserId>,
    pub expires_at: Timestamp,
}
