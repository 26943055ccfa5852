//! Email tokens and the evaluation mail setting, in memory.

use super::MemoryStorage;
use gradient_domain::UserId;
use gradient_domain::model::{EmailToken, Timestamp, TokenPurpose};
use gradient_domain::ports::storage::{Mailing, Result, StorageError};

impl Mailing for MemoryStorage {
    async fn put_email_token(&self, token: &EmailToken) -> Result<()> {
        self.with(|s| {
            if !s.users.contains_key(&token.user_id) {
                return Err(StorageError::NotFound);
            }
            if s.email_tokens.contains_key(&token.hash) {
                return Err(StorageError::Conflict("email token".into()));
            }
            s.email_tokens.insert(token.hash.clone(), token.clone());
            Ok(())
        })
    }

    async fn take_email_token(&self, hash: &str, purpose: TokenPurpose) -> Result<Option<EmailToken>> {
        self.with(|s| {
            if s.email_tokens.get(hash).is_some_and(|t| t.purpose == purpose) {
                Ok(s.email_tokens.remove(hash))
            } else {
                Ok(None)
            }
        })
    }

    async fn last_email_token_at(&self, user: UserId, purpose: TokenPurpose) -> Result<Option<Timestamp>> {
        self.with(|s| {
            Ok(s.email_tokens
                .values()
                .filter(|t| t.user_id == user && t.purpose == purpose)
                .map(|t| t.created_at)
                .max())
        })
    }

    async fn delete_email_tokens(&self, user: UserId, purpose: TokenPurpose) -> Result<u64> {
        self.with(|s| {
            let before = s.email_tokens.len();
            s.email_tokens
                .retain(|_, t| !(t.user_id == user && t.purpose == purpose));
            Ok((before - s.email_tokens.len()) as u64)
        })
    }

    async fn set_email_verified(&self, user: UserId) -> Result<bool> {
        self.with(|s| Ok(s.users.get_mut(&user).map(|u| u.email_verified = true).is_some()))
    }

    async fn reset_password(&self, user: UserId, password_hash: &str) -> Result<bool> {
        self.with(|s| {
            let Some(u) = s.users.get_mut(&user) else {
                return Ok(false);
            };
            u.password_hash = Some(password_hash.to_owned());
            u.email_verified = true;
            s.sessions.retain(|_, x| x.user_id != user);
            Ok(true)
        })
    }

    async fn evaluation_mail(&self, user: UserId) -> Result<bool> {
        self.with(|s| Ok(!s.no_evaluation_mail.contains(&user)))
    }

    async fn set_evaluation_mail(&self, user: UserId, wanted: bool) -> Result<()> {
        self.with(|s| {
            if !s.users.contains_key(&user) {
                return Err(StorageError::NotFound);
            }
            if wanted {
                s.no_evaluation_mail.remove(&user);
            } else {
                s.no_evaluation_mail.insert(user);
            }
            Ok(())
        })
    }
}
