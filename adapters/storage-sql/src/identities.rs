//! OIDC identities (issuer + subject → user) and sign-ins in progress.

use crate::BeginWrite;
use crate::users::{UserRow, user_columns};
use crate::{SqlStorage, db_error, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::UserId;
use gradient_domain::model::{OidcFlow, OidcIdentity, Timestamp, User};
use gradient_domain::ports::storage::{Identities, Result};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct IdentityRow {
    issuer: String,
    subject: String,
    user_id: Uuid,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct FlowRow {
    state: String,
    binding_hash: String,
    pkce_verifier: String,
    nonce: String,
    link_user: Option<Uuid>,
    expires_at: DateTime<Utc>,
}

const INSERT_IDENTITY: &str =
    "INSERT INTO oidc_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)";

impl Identities for SqlStorage {
    async fn create_oidc_user(&self, user: &User, identity: &OidcIdentity) -> Result<()> {
        let insert_user = concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            sqlx::query(insert_user)
                .bind(user.id.0)
                .bind(user.username.as_str())
                .bind(&user.name)
                .bind(user.email.as_str())
                .bind(user.password_hash.as_deref())
                .bind(user.email_verified)
                .bind(user.created_at)
                .bind(user.managed)
                .execute(&mut *tx)
                .await?;
            sqlx::query(INSERT_IDENTITY)
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .bind(identity.user_id.0)
                .bind(identity.created_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn link_oidc_identity(&self, identity: &OidcIdentity) -> Result<()> {
        with_pool!(self, |p| sqlx::query(INSERT_IDENTITY)
            .bind(&identity.issuer)
            .bind(&identity.subject)
            .bind(identity.user_id.0)
            .bind(identity.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn user_by_oidc_identity(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = (SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2)"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, UserRow>(sql)
            .bind(issuer)
            .bind(subject)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn oidc_identities(&self, user: UserId) -> Result<Vec<OidcIdentity>> {
        let sql = "SELECT issuer, subject, user_id, created_at FROM oidc_identities WHERE user_id = $1 \
                   ORDER BY created_at, issuer, subject";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, IdentityRow>(sql)
            .bind(user.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|r| OidcIdentity {
                issuer: r.issuer,
                subject: r.subject,
                user_id: UserId(r.user_id),
                created_at: r.created_at,
            })
            .collect())
    }

    async fn create_oidc_flow(&self, flow: &OidcFlow) -> Result<()> {
        let sql = "INSERT INTO oidc_flows (state, binding_hash, pkce_verifier, nonce, link_user, expires_at) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(&flow.state)
            .bind(&flow.binding_hash)
            .bind(&flow.pkce_verifier)
            .bind(&flow.nonce)
            .bind(flow.link_user.map(|u| u.0))
            .bind(flow.expires_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn take_oidc_flow(&self, state: &str) -> Result<Option<OidcFlow>> {
        // One statement: of two concurrent takes, only one deletes the row and gets it back.
        let sql = "DELETE FROM oidc_flows WHERE state = $1 \
                   RETURNING state, binding_hash, pkce_verifier, nonce, link_user, expires_at";
        let row = with_pool!(self, |p| sqlx::query_as::<_, FlowRow>(sql)
            .bind(state)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.map(|r| OidcFlow {
            state: r.state,
            binding_hash: r.binding_hash,
            pkce_verifier: r.pkce_verifier,
            nonce: r.nonce,
            link_user: r.link_user.map(UserId),
            expires_at: r.expires_at,
        }))
    }

    async fn delete_expired_oidc_flows(&self, now: Timestamp) -> Result<u64> {
        let sql = "DELETE FROM oidc_flows WHERE expires_at < $1";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)
    }
}
