//! Registration, login, sessions and API keys.

use super::{Gradient, Result, ServiceError, check_text, refuse_managed};
use crate::auth::{self, NewApiKeyToken};
use crate::model::{ApiKey, Session, User};
use crate::permissions::{KeyScope, PermissionSet};
use crate::ports::{Clock, Storage};
use crate::{ApiKeyId, Email, Name, OrgId, SessionId, UserId};

/// Who is asking.
#[derive(Clone, Debug)]
pub enum Caller {
    Anonymous,
    /// Logged in with a session token.
    Session {
        user: User,
        session: SessionId,
    },
    /// Authenticated with an API key, limited to its scope.
    Key {
        user: User,
        scope: KeyScope,
    },
}

impl Caller {
    pub fn user(&self) -> Option<&User> {
        match self {
            Self::Anonymous => None,
            Self::Session { user, .. } | Self::Key { user, .. } => Some(user),
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        self.user().map(|u| u.id)
    }

    pub fn scope(&self) -> Option<&KeyScope> {
        match self {
            Self::Key { scope, .. } => Some(scope),
            _ => None,
        }
    }

    /// Whether the caller uses an API key limited to an organization or to some permissions. Such a key
    /// acts only inside organizations: it cannot create organizations, caches or keys, or own caches.
    pub fn is_restricted(&self) -> bool {
        self.scope()
            .is_some_and(|s| s.organization.is_some() || s.permissions.is_some())
    }

    /// The user, when they act with all of their rights (a session or an unrestricted key); 401 for anonymous
    /// callers, 403 for restricted keys.
    pub fn require_unrestricted(&self, what: &str) -> Result<&User> {
        let user = self.require_user()?;
        if self.is_restricted() {
            return Err(ServiceError::Forbidden(format!("a restricted API key cannot {what}")));
        }
        Ok(user)
    }

    /// The user, or 401 for anonymous callers.
    pub fn require_user(&self) -> Result<&User> {
        self.user()
            .ok_or_else(|| ServiceError::Unauthenticated("log in or present an API key".into()))
    }
}

/// What a new user gives.
#[derive(Clone, Debug)]
pub struct Registration {
    pub username: String,
    pub name: String,
    pub email: String,
    pub password: String,
}

/// What a new API key may do.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub organization: Option<String>,
    pub permissions: Option<PermissionSet>,
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Resolves a bearer token (session JWT or `GRAD…` API key) to a caller. No token is anonymous;
    /// a token that is invalid, expired, revoked or unknown is refused rather than treated as anonymous.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Caller> {
        let Some(token) = bearer else {
            return Ok(Caller::Anonymous);
        };
        let unauthenticated = || ServiceError::Unauthenticated("the token is invalid, expired or revoked".into());
        if let Some(hash) = auth::api_key_hash(token) {
            // A key found valid a moment ago is trusted for a moment more (`memo::API_KEY_TTL`).
            let now = self.clock.now();
            let (known, generation) = self.memo.api_key(&hash, now);
            if let Some(caller) = known {
                return Ok(caller);
            }
            let key = self.storage.api_key_by_hash(&hash).await?.ok_or_else(unauthenticated)?;
            let user = self.storage.user(key.user_id).await?.ok_or_else(unauthenticated)?;
            // Record the use, at most once a minute per key so busy clients do not write on every request.
            if key
                .last_used_at
                .is_none_or(|last| now - last >= chrono::TimeDelta::minutes(1))
            {
                self.storage.touch_api_key(key.id, now).await?;
            }
            let caller = Caller::Key { user, scope: key.scope };
            self.memo.remember_api_key(&hash, &caller, now, generation);
            return Ok(caller);
        }
        let now = self.clock.now();
        let claims = self.tokens.verify(token, now).ok_or_else(unauthenticated)?;
        let info = self
            .storage
            .session_info(claims.sid)
            .await?
            .ok_or_else(unauthenticated)?;
        let session = &info.session;
        if session.user_id != claims.sub || session.expires_at <= now {
            return Err(unauthenticated());
        }
        self.note_session_use(&info, now).await?;
        let user = self.storage.user(session.user_id).await?.ok_or_else(unauthenticated)?;
        Ok(Caller::Session {
            user,
            session: session.id,
        })
    }

    pub async fn register(&self, r: Registration) -> Result<User> {
        if !self.settings.enable_registration || self.settings.oidc_required {
            return Err(ServiceError::RegistrationDisabled);
        }
        let username = Name::parse_as(r.username.trim_matches(' '), "username")?;
        let email = Email::parse(&r.email)?;
        check_text("name", &r.name, 256)?;
        auth::check_password_policy(&r.password).map_err(|m| ServiceError::invalid("weak_password", m))?;
        let user = User {
            managed: false,
            id: UserId::new(),
            username,
            name: r.name.trim().to_owned(),
            email,
            password_hash: Some(auth::hash_password(&r.password)),
            email_verified: false,
            created_at: self.clock.now(),
        };
        self.storage.create_user(&user).await.map_err(|e| match e {
            crate::ports::StorageError::Conflict(what) if what == "email" => {
                ServiceError::conflict("email_taken", "an account with this email already exists")
            }
            crate::ports::StorageError::Conflict(_) => {
                ServiceError::conflict("username_taken", format!("the username '{}' is taken", user.username))
            }
            other => other.into(),
        })?;
        // The account exists whatever happens to its mail: a verification mail can be asked for again.
        let _ = self.send_verification(&user).await;
        Ok(user)
    }

    /// Checks a username-or-email and password and opens a session; answers the session's JWT.
    pub async fn login(&self, loginname: &str, password: &str) -> Result<String> {
        if self.settings.oidc_required {
            return Err(ServiceError::Forbidden(
                "password login is disabled: log in with OIDC".into(),
            ));
        }
        let loginname = loginname.trim();
        let user = match Name::parse(loginname) {
            Ok(name) => self.storage.user_by_username(&name).await?,
            Err(_) => None,
        };
        let user = match (user, Email::parse(loginname)) {
            (Some(u), _) => Some(u),
            (None, Ok(email)) => self.storage.user_by_email(email.as_str()).await?,
            // Not an address at all (e.g. it holds a NUL): no account has it.
            (None, Err(_)) => None,
        };
        // Verify against a dummy hash for unknown users so both failures take the same time.
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.as_deref())
            .unwrap_or(auth::dummy_password_hash());
        let ok = auth::verify_password(password, hash);
        let user = match user {
            Some(u) if ok && u.password_hash.is_some() => u,
            _ => return Err(ServiceError::InvalidCredentials),
        };
        // Said only to whoever knows the password.
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

    /// Revokes the caller's session. API keys are revoked by deleting them, not by logging out.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        match caller {
            Caller::Session { session, .. } => {
                self.storage.delete_session(*session).await?;
                Ok(())
            }
            Caller::Key { .. } => Err(ServiceError::invalid(
                "not_a_session",
                "API keys are not sessions; delete the key to revoke it",
            )),
            Caller::Anonymous => Err(ServiceError::Unauthenticated("not logged in".into())),
        }
    }

    /// The caller's API keys; a restricted key may not see them (it could learn of wider keys).
    pub async fn api_keys(&self, caller: &Caller) -> Result<Vec<ApiKey>> {
        let user = caller.require_unrestricted("list API keys")?;
        Ok(self.storage.api_keys(user.id).await?)
    }

    /// Creates an API key; the token is in the answer and nowhere else. A key may only be created from a
    /// session, or from a key that is not itself restricted, so a narrow key cannot mint a wider one.
    pub async fn create_api_key(&self, caller: &Caller, new: NewKey) -> Result<(ApiKey, String)> {
        let user = caller.require_unrestricted("create API keys")?;
        check_text("name", &new.name, 128)?;
        let name = new.name.trim();
        if name.is_empty() {
            return Err(ServiceError::invalid("invalid_input", "the key needs a name"));
        }
        check_text("name", name, 128)?;
        let organization = match new.organization {
            Some(org) => Some(self.org_id_for_key(caller, &org).await?),
            None => None,
        };
        let NewApiKeyToken { token, hash } = auth::generate_api_key();
        let key = ApiKey {
            managed: false,
            id: ApiKeyId::new(),
            user_id: user.id,
            name: name.to_owned(),
            hash,
            scope: KeyScope {
                organization,
                permissions: new.permissions,
            },
            created_at: self.clock.now(),
            last_used_at: None,
        };
        self.storage.create_api_key(&key).await?;
        if let Some(org) = key.scope.organization
            && self.storage.membership(org, user.id).await?.is_some()
        {
            // A member's key pinned to the organization is recorded in its log, by name and permissions (never the
            // token). A key pinned to a public organization by an outsider is not: outsiders must not be able to
            // write into (and so push old entries out of) an organization's log.
            self.audit(
                caller,
                org,
                crate::model::AuditAction::ApiKeyCreated,
                format!("API key '{}' of '{}'", key.name, user.username),
                key_permissions(&key),
            )
            .await?;
        }
        Ok((key, token))
    }

    async fn org_id_for_key(&self, caller: &Caller, org: &str) -> Result<OrgId> {
        let org = self.visible_org(caller, org).await?;
        Ok(org.id)
    }

    pub async fn delete_api_key(&self, caller: &Caller, id: ApiKeyId) -> Result<()> {
        let user = caller.require_unrestricted("delete API keys")?;
        let key = self.storage.api_keys(user.id).await?.into_iter().find(|k| k.id == id);
        if let Some(key) = &key {
            refuse_managed(key.managed, format_args!("API key '{}'", key.name))?;
        }
        self.memo.forget_api_keys();
        let deleted = self.storage.delete_api_key(user.id, id).await;
        self.memo.forget_api_keys();
        if deleted? {
            if let Some(key) = key
                && let Some(org) = key.scope.organization
                && self.storage.org(org).await?.is_some()
                && self.storage.membership(org, user.id).await?.is_some()
            {
                self.audit(
                    caller,
                    org,
                    crate::model::AuditAction::ApiKeyDeleted,
                    format!("API key '{}' of '{}'", key.name, user.username),
                    "",
                )
                .await?;
            }
            Ok(())
        } else {
            Err(ServiceError::NotFound("no such API key".into()))
        }
    }
}

/// What an audit entry says of a key's permissions.
fn key_permissions(key: &ApiKey) -> String {
    match &key.scope.permissions {
        Some(perms) => perms.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", "),
        None => "all of the owner's permissions".to_owned(),
    }
}
