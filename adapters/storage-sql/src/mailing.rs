//! Email tokens (by hash), verified addresses, password resets and the evaluation mail setting.

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::UserId;
use gradient_domain::model::{EmailToken, TokenPurpose};
use gradient_domain::ports::storage::{Mailing, Result, StorageError};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct TokenRow {
    hash: String,
    user_id: Uuid,
    purpose: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl TokenRow {
    fn into_token(self) -> Result<EmailToken> {
        Ok(EmailToken {
            purpose: TokenPurpose::parse(&self.purpose).ok_or_else(|| corrupt("email token purpose", &self.purpose))?,
            hash: self.hash,
            user_id: UserId(self.user_id),
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

impl Mailing for SqlStorage {
    async fn put_email_token(&self, token: &EmailToken) -> Result<()> {
        let sql =
            "INSERT INTO email_tokens (hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(&token.hash)
            .bind(token.user_id.0)
            .bind(token.purpose.as_str())
            .bind(token.created_at)
            .bind(token.expires_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn take_email_token(&self, hash: &str, purpose: TokenPurpose) -> Result<Option<EmailToken>> {
        // One statement: of two requests with the same token, only one gets the row.
        let sql = "DELETE FROM email_tokens WHERE hash = $1 AND purpose = $2 \
                   RETURNING hash, user_id, purpose, created_at, expires_at";
        let row = with_pool!(self, |p| sqlx::query_as::<_, TokenRow>(sql)
            .bind(hash)
            .bind(purpose.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(TokenRow::into_token).transpose()
    }

    async fn last_email_token_at(&self, user: UserId, purpose: TokenPurpose) -> Result<Option<DateTime<Utc>>> {
        let sql = "SELECT created_at FROM email_tokens WHERE user_id = $1 AND purpose = $2 \
                   ORDER BY created_at DESC LIMIT 1";
        with_pool!(self, |p| sqlx::query_scalar::<_, DateTime<Utc>>(sql)
            .bind(user.0)
            .bind(purpose.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)
    }

    async fn delete_email_tokens(&self, user: UserId, purpose: TokenPurpose) -> Result<u64> {
        let sql = "DELETE FROM email_tokens WHERE user_id = $1 AND purpose = $2";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(user.0)
            .bind(purpose.as_str())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)
    }

    async fn set_email_verified(&self, user: UserId) -> Result<bool> {
        let sql = "UPDATE users SET email_verified = TRUE WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(user.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn reset_password(&self, user: UserId, password_hash: &str) -> Result<bool> {
        let set = "UPDATE users SET password_hash = $1, email_verified = TRUE WHERE id = $2";
        let end = "DELETE FROM sessions WHERE user_id = $1";
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(set)
                .bind(password_hash)
                .bind(user.0)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if done == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(end).bind(user.0).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(db_error)
    }

    async fn evaluation_mail(&self, user: UserId) -> Result<bool> {
        let sql = "SELECT 1 FROM evaluation_mail_opt_outs WHERE user_id = $1";
        let out = with_pool!(self, |p| sqlx::query(sql)
            .bind(user.0)
            .fetch_optional(p)
            .await
            .map(|r| r.is_some()))
        .map_err(db_error)?;
        Ok(!out)
    }

    async fn set_evaluation_mail(&self, user: UserId, wanted: bool) -> Result<()> {
        if wanted {
            let exists = "SELECT 1 FROM users WHERE id = $1";
            let found = with_pool!(self, |p| sqlx::query(exists)
                .bind(user.0)
                .fetch_optional(p)
                .await
                .map(|r| r.is_some()))
            .map_err(db_error)?;
            if !found {
                return Err(StorageError::NotFound);
            }
            let sql = "DELETE FROM evaluation_mail_opt_outs WHERE user_id = $1";
            with_pool!(self, |p| sqlx::query(sql).bind(user.0).execute(p).await.map(|_| ())).map_err(db_error)
        } else {
            let sql = "INSERT INTO evaluation_mail_opt_outs (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING";
            with_pool!(self, |p| sqlx::query(sql).bind(user.0).execute(p).await.map(|_| ())).map_err(db_error)
        }
    }
}
