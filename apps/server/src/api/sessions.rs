//! The caller's sessions, and the permissions an API key can be limited to.

use super::dto::{Reply, ok};
use super::nullable::Nullable;
use super::{Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use gradient_domain::SessionId;
use gradient_domain::permissions::Permission;
use poem_openapi::param::{Path, Query};
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct SessionsApi(pub AppState);

/// One of the caller's sessions (a login). Expired sessions are not listed.
#[derive(Object)]
pub struct SessionView {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When the session was last used, to the minute (written at most once a minute); `null` until then.
    pub last_used_at: Nullable<DateTime<Utc>>,
    /// The `User-Agent` of the login that opened it (at most 256 characters); `null` when it sent none.
    pub user_agent: Nullable<String>,
    /// The session whose token made this request.
    pub current: bool,
}

/// How many sessions were revoked.
#[derive(Object)]
pub struct RevokedSessions {
    pub revoked: u64,
}

/// A permission an API key (or a custom role) can be limited to.
#[derive(Object)]
pub struct PermissionView {
    /// The identifier to send, e.g. `trigger_evaluation`.
    pub name: String,
    pub description: String,
}

#[OpenApi(tag = "Tag::Accounts")]
impl SessionsApi {
    /// The caller's sessions that have not expired, newest first; `current` marks the one making the request.
    /// Not for restricted API keys (403).
    #[oai(path = "/user/sessions", method = "get", operation_id = "list_sessions")]
    async fn list(&self, auth: Token) -> Reply<Vec<SessionView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(self
            .0
            .app
            .sessions(&caller)
            .await?
            .into_iter()
            .map(|s| SessionView {
                id: s.info.session.id.0,
                created_at: s.info.session.created_at,
                expires_at: s.info.session.expires_at,
                last_used_at: s.info.last_used_at.into(),
                user_agent: s.info.user_agent.into(),
                current: s.current,
            })
            .collect())
    }

    /// Revokes the caller's sessions: all of them, or all but the current one with `keep_current=true`. Their
    /// tokens stop working at once.
    #[oai(path = "/user/sessions", method = "delete", operation_id = "delete_sessions")]
    async fn delete_all(&self, auth: Token, keep_current: Query<Option<bool>>) -> Reply<RevokedSessions> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let revoked = self
            .0
            .app
            .revoke_sessions(&caller, keep_current.0.unwrap_or(false))
            .await?;
        ok(RevokedSessions { revoked })
    }

    /// Revokes one of the caller's sessions; its token stops working at once. Another user's session is
    /// answered like a missing one (404).
    #[oai(path = "/user/sessions/:id", method = "delete", operation_id = "delete_session")]
    async fn delete(&self, auth: Token, id: Path<Uuid>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.revoke_session(&caller, SessionId(id.0)).await?;
        ok("revoked".to_owned())
    }

    /// Every permission an API key (or a custom role) can be limited to, with what it allows.
    #[oai(
        path = "/user/keys/permissions",
        method = "get",
        operation_id = "list_key_permissions"
    )]
    async fn permissions(&self, auth: Token) -> Reply<Vec<PermissionView>> {
        self.0.caller(Some(&auth.0.token)).await?.require_user()?;
        ok(Permission::ALL
            .into_iter()
            .map(|p| PermissionView {
                name: p.as_str().to_owned(),
                description: p.description().to_owned(),
            })
            .collect())
    }
}
