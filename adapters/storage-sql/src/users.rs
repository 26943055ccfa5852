//! Users, sessions and API keys.

use crate::{SqlStorage, corrupt, db_error, from_json, stored_name, to_json, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::model::{ApiKey, Session, SessionInfo, User};
use gradient_domain::permissions::KeyScope;
use gradient_domain::ports::storage::{Result, Users};
use gradient_domain::{ApiKeyId, Email, Name, SessionId, UserId};
use uuid::Uuid;

macro_rules! user_columns {
    () => {
        "id, username, name, email, password_hash, email_verified, created_at, managed"
    };
}
pub(crate) use user_columns;

macro_rules! api_key_columns {
    () => {
        "id, user_id, name, hash, scope, created_at, last_used_at, managed"
    };
}
pub(crate) use api_key_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    username: String,
    name: String,
    email: String,
    password_hash: Option<String>,
    email_verified: bool,
    created_at: DateTime<Utc>,
    managed: bool,
}

impl UserRow {
    pub(crate) fn into_user(self) -> Result<User> {
        Ok(User {
            id: UserId(self.id),
            username: stored_name(&self.username, "username")?,
            name: self.name,
            email: Email::parse(&self.email).map_err(|e| corrupt("email", e))?,
            password_hash: self.password_hash,
            email_verified: self.email_verified,
            created_at: self.created_at,
            managed: self.managed,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SessionInfoRow {
    id: Uuid,
    user_id: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    user_agent: Option<String>,
}

impl SessionInfoRow {
    fn into_info(self) -> SessionInfo {
        SessionInfo {
            session: Session {
                id: SessionId(self.id),
                user_id: UserId(self.user_id),
                created_at: self.created_at,
                expires_at: self.expires_at,
            },
            last_used_at: self.last_used_at,
            user_agent: self.user_agent,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    hash: String,
    scope: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    managed: bool,
}

impl ApiKeyRow {
    pub(crate) fn into_key(self) -> Result<ApiKey> {
        Ok(ApiKey {
            id: ApiKeyId(self.id),
            user_id: UserId(self.user_id),
            name: self.name,
            hash: self.hash,
            scope: from_json::<KeyScope>(&self.scope, "api key scope")?,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            managed: self.managed,
        })
    }
}

impl Users for SqlStorage {
    async fn create_user(&self, user: &User) -> Result<()> {
        let sql = concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        with_pool!(self, |p| sqlx::query(sql)
            .bind(user.id.0)
            .bind(user.username.as_str())
            .bind(&user.name)
            .bind(user.email.as_str())
            .bind(user.password_hash.as_deref())
            .bind(user.email_verified)
            .bind(user.created_at)
            .bind(user.managed)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, UserRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_username(&self, username: &Name) -> Result<Option<User>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, UserRow>(sql)
            .bind(username.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE email = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, UserRow>(sql)
            .bind(email)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        let sql = "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(session.id.0)
            .bind(session.user_id.0)
            .bind(session.created_at)
            .bind(session.expires_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn session(&self, id: SessionId) -> Result<Option<Session>> {
        let sql = "SELECT id, user_id, created_at, expires_at FROM sessions WHERE id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, SessionRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.map(|r| Session {
            id: SessionId(r.id),
            user_id: UserId(r.user_id),
            created_at: r.created_at,
            expires_at: r.expires_at,
        }))
    }

    async fn delete_session(&self, id: SessionId) -> Result<bool> {
        let sql = "DELETE FROM sessions WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn session_info(&self, id: SessionId) -> Result<Option<SessionInfo>> {
        let sql = "SELECT id, user_id, created_at, expires_at, last_used_at, user_agent FROM sessions WHERE id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, SessionInfoRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.map(SessionInfoRow::into_info))
    }

    async fn sessions_of(&self, user: UserId, now: chrono::DateTime<Utc>) -> Result<Vec<SessionInfo>> {
        let sql = "SELECT id, user_id, created_at, expires_at, last_used_at, user_agent FROM sessions \
                   WHERE user_id = $1 AND expires_at > $2 ORDER BY created_at DESC, id DESC";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, SessionInfoRow>(sql)
            .bind(user.0)
            .bind(now)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows.into_iter().map(SessionInfoRow::into_info).collect())
    }

    async fn touch_session(&self, id: SessionId, at: chrono::DateTime<Utc>) -> Result<bool> {
        let sql = "UPDATE sessions SET last_used_at = $2 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn set_session_user_agent(&self, id: SessionId, user_agent: &str) -> Result<bool> {
        let sql = "UPDATE sessions SET user_agent = $2 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(user_agent)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn delete_sessions_of(&self, user: UserId, keep: Option<SessionId>) -> Result<u64> {
        let done = match keep {
            Some(keep) => {
                let sql = "DELETE FROM sessions WHERE user_id = $1 AND id <> $2";
                with_pool!(self, |p| sqlx::query(sql)
                    .bind(user.0)
                    .bind(keep.0)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()))
            }
            None => {
                let sql = "DELETE FROM sessions WHERE user_id = $1";
                with_pool!(self, |p| sqlx::query(sql)
                    .bind(user.0)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected()))
            }
        }
        .map_err(db_error)?;
        Ok(done)
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        let sql = concat!(
            "INSERT INTO api_keys (",
            api_key_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        let scope = to_json(&key.scope)?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(key.id.0)
            .bind(key.user_id.0)
            .bind(&key.name)
            .bind(&key.hash)
            .bind(&scope)
            .bind(key.created_at)
            .bind(key.last_used_at)
            .bind(key.managed)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn api_keys(&self, user: UserId) -> Result<Vec<ApiKey>> {
        let sql = concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ApiKeyRow>(sql)
            .bind(user.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(ApiKeyRow::into_key).collect()
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>> {
        let sql = concat!("SELECT ", api_key_columns!(), " FROM api_keys WHERE hash = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, ApiKeyRow>(sql)
            .bind(hash)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(ApiKeyRow::into_key).transpose()
    }

    async fn delete_api_key(&self, user: UserId, id: ApiKeyId) -> Result<bool> {
        let sql = "DELETE FROM api_keys WHERE id = $1 AND user_id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(user.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<bool> {
        let sql = "UPDATE api_keys SET last_used_at = $1 WHERE id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(at)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }
}
