//! Email: verifying an account's address, resetting a forgotten password, and mail to an organization's
//! members when a project's health changes (failing, fixed). What is said and to whom is decided in
//! [`crate::mail`]; here the tokens are stored (their hashes), used once, and the mail handed to the mailer.
//!
//! Requests made without an account (resend a verification, forget a password) answer the same whether or not
//! the address or name belongs to an account, and send at most one mail of each kind per account per
//! [`RESEND_INTERVAL`].

use super::{Caller, Gradient, Result, ServiceError};
use crate::auth;
use crate::mail::{self, RESEND_INTERVAL, RESET_LIFETIME, VERIFY_LIFETIME};
use crate::model::{EmailToken, Evaluation, TokenPurpose, User};
use crate::ports::{Clock, Storage};
use crate::{Email, Name};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// What a password reset request answers, whether or not an account has the address.
pub const RESET_REQUESTED: &str =
    "if an account has this address, a mail with a link to set a new password is on its way";

/// How many of a project's evaluations are looked at for the previous ended one.
const HEALTH_WINDOW: u32 = 50;

/// A new token and its stored hash.
fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = auth::sha256_hex(token.as_bytes());
    (token, hash)
}

fn bad_link() -> ServiceError {
    ServiceError::invalid(
        "invalid_token",
        "this link is not valid: it was used already, has expired or is incomplete; ask for a new one",
    )
}

/// The hash of a token as a link carries it, or the answer to a malformed one.
fn token_hash(token: &str) -> Result<String> {
    let token = token.trim();
    if token.is_empty()
        || token.len() > 128
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad_link());
    }
    Ok(auth::sha256_hex(token.as_bytes()))
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// 422 `email_disabled` unless this server sends mail.
    pub fn require_mail(&self) -> Result<()> {
        if self.settings.email.enabled {
            Ok(())
        } else {
            Err(ServiceError::invalid("email_disabled", "this server sends no mail"))
        }
    }

    /// Stores a new token of `purpose` for the user and answers it, unless one was made less than
    /// [`RESEND_INTERVAL`] ago (then `None`: no mail).
    async fn issue_token(&self, user: &User, purpose: TokenPurpose) -> Result<Option<String>> {
        let now = self.clock.now();
        if let Some(last) = self.storage.last_email_token_at(user.id, purpose).await?
            && now - last < RESEND_INTERVAL
        {
            return Ok(None);
        }
        let (token, hash) = new_token();
        let lifetime = match purpose {
            TokenPurpose::VerifyEmail => VERIFY_LIFETIME,
            TokenPurpose::ResetPassword => RESET_LIFETIME,
        };
        self.storage
            .put_email_token(&EmailToken {
                hash,
                user_id: user.id,
                purpose,
                created_at: now,
                expires_at: now + lifetime,
            })
            .await?;
        Ok(Some(token))
    }

    /// Sends the user a verification mail (after registration, or when asked again), unless one went out less
    /// than [`RESEND_INTERVAL`] ago. A mailer that fails is not the caller's error: they can ask again.
    pub(super) async fn send_verification(&self, user: &User) -> Result<()> {
        if !self.settings.email.enabled || user.email_verified {
            return Ok(());
        }
        if let Some(token) = self.issue_token(user, TokenPurpose::VerifyEmail).await? {
            let _ = self
                .mailer
                .send(mail::verification_mail(user, &self.settings.public_url, &token))
                .await;
        }
        Ok(())
    }

    /// Sends a new verification mail to the account with this username or address, when it exists and is not
    /// verified yet. Answers the same in every case (no account is revealed).
    pub async fn resend_verification(&self, loginname: &str) -> Result<()> {
        self.require_mail()?;
        if let Some(user) = self.user_by_loginname(loginname).await? {
            self.send_verification(&user).await?;
        }
        Ok(())
    }

    /// The account a username or address names, if any.
    pub(super) async fn user_by_loginname(&self, loginname: &str) -> Result<Option<User>> {
        let loginname = loginname.trim();
        if let Ok(name) = Name::parse(loginname)
            && let Some(u) = self.storage.user_by_username(&name).await?
        {
            return Ok(Some(u));
        }
        match Email::parse(loginname) {
            Ok(email) => Ok(self.storage.user_by_email(email.as_str()).await?),
            Err(_) => Ok(None),
        }
    }

    /// Verifies the address of the account the token was mailed to; the token works once.
    pub async fn verify_email(&self, token: &str) -> Result<()> {
        let hash = token_hash(token)?;
        let Some(t) = self.storage.take_email_token(&hash, TokenPurpose::VerifyEmail).await? else {
            return Err(bad_link());
        };
        if t.expires_at <= self.clock.now() {
            return Err(bad_link());
        }
        if !self.storage.set_email_verified(t.user_id).await? {
            return Err(bad_link());
        }
        self.storage
            .delete_email_tokens(t.user_id, TokenPurpose::VerifyEmail)
            .await?;
        Ok(())
    }

    /// Mails a password reset link to the account with this address, if there is one (and it has a password
    /// the API may change: not one the declarative state manages). Answers the same in every case.
    pub async fn request_password_reset(&self, email: &str) -> Result<&'static str> {
        self.require_mail()?;
        let Ok(email) = Email::parse(email) else {
            return Err(ServiceError::invalid(
                "invalid_email",
                "give the account's email address",
            ));
        };
        let Some(user) = self.storage.user_by_email(email.as_str()).await? else {
            return Ok(RESET_REQUESTED);
        };
        if user.managed || user.password_hash.is_none() {
            return Ok(RESET_REQUESTED);
        }
        if let Some(token) = self.issue_token(&user, TokenPurpose::ResetPassword).await? {
            let _ = self
                .mailer
                .send(mail::reset_mail(&user, &self.settings.public_url, &token))
                .await;
        }
        Ok(RESET_REQUESTED)
    }

    /// Sets a new password with a reset token (used once): every session of the account ends, its other
    /// reset links stop working, and its address counts as verified (the link reached it).
    pub async fn reset_password(&self, token: &str, password: &str) -> Result<()> {
        let hash = token_hash(token)?;
        // Checked before the token is used, so a refused password does not spend the link.
        auth::check_password_policy(password).map_err(|m| ServiceError::invalid("weak_password", m))?;
        let Some(t) = self
            .storage
            .take_email_token(&hash, TokenPurpose::ResetPassword)
            .await?
        else {
            return Err(bad_link());
        };
        if t.expires_at <= self.clock.now() {
            return Err(bad_link());
        }
        match self.storage.user(t.user_id).await? {
            Some(u) if !u.managed => {}
            _ => return Err(bad_link()),
        }
        if !self
            .storage
            .reset_password(t.user_id, &auth::hash_password(password))
            .await?
        {
            return Err(bad_link());
        }
        self.storage
            .delete_email_tokens(t.user_id, TokenPurpose::ResetPassword)
            .await?;
        Ok(())
    }

    /// Whether the caller gets mail about their organizations' evaluations.
    pub async fn evaluation_mail_setting(&self, caller: &Caller) -> Result<bool> {
        let user = caller.require_user()?;
        Ok(self.storage.evaluation_mail(user.id).await?)
    }

    /// Turns the caller's mail about evaluations on or off (an account setting: not with a restricted key).
    pub async fn set_evaluation_mail_setting(&self, caller: &Caller, wanted: bool) -> Result<bool> {
        let user = caller.require_unrestricted("change account settings")?;
        self.storage.set_evaluation_mail(user.id, wanted).await?;
        Ok(wanted)
    }

    /// How evaluation `e`, which just ended, changed its project's health (see [`mail::health_change`]). A pull
    /// request's evaluation says nothing of the project's branch.
    pub(super) async fn health_change_of(&self, e: &Evaluation) -> Result<Option<mail::HealthChange>> {
        if !mail::tells_health(e.status) || e.pull_request.is_some() {
            return Ok(None);
        }
        // The project's health before: how its latest end before this one came out, whether that was another
        // evaluation's or this one's before a restart.
        let others = self
            .storage
            .evaluations(e.project_id, HEALTH_WINDOW)
            .await?
            .into_iter()
            .filter(|p| {
                p.id != e.id && p.pull_request.is_none() && mail::tells_health(p.status) && p.updated_at <= e.updated_at
            })
            .map(|p| (p.updated_at, p.status));
        let earlier_ends = e
            .transitions
            .iter()
            .take(e.transitions.len().saturating_sub(1))
            .filter(|t| mail::tells_health(t.status))
            .map(|t| (t.at, t.status));
        let previous = others.chain(earlier_ends).max_by_key(|(at, _)| *at).map(|(_, s)| s);
        Ok(mail::health_change(previous, e.status))
    }

    /// After evaluation `e` ended: when it changed its project's health, one mail to each member of the
    /// organization who wants it, and the project's actions that follow what happened. Mail that cannot be
    /// handed over is dropped: the CI loop never waits for or fails on mail.
    /// A pull request's evaluation is the pull request's business, not the project's: no mail, no action.
    pub(super) async fn mail_health_change(&self, e: &Evaluation) -> Result<()> {
        if e.pull_request.is_some() {
            return Ok(());
        }
        if !self.settings.email.enabled && self.storage.actions_of(e.project_id).await?.is_empty() {
            return Ok(());
        }
        let change = self.health_change_of(e).await?;
        let fired = self.fire_actions(e, change).await;
        if !self.settings.email.enabled {
            return fired;
        }
        let Some(change) = change else {
            return fired;
        };
        let Some(project) = self.storage.project_by_id(e.project_id).await? else {
            return fired;
        };
        let Some(org) = self.storage.org(project.org_id).await? else {
            return fired;
        };
        let mut members = Vec::new();
        for m in self.storage.members(org.id).await? {
            if let Some(user) = self.storage.user(m.user_id).await? {
                let wants = self.storage.evaluation_mail(user.id).await?;
                members.push((user, wants));
            }
        }
        for user in mail::recipients(members, self.settings.email.require_verification) {
            let _ = self
                .mailer
                .send(mail::health_mail(
                    &user,
                    &self.settings.public_url,
                    &org,
                    &project,
                    e,
                    change,
                ))
                .await;
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_url_safe_and_only_their_hash_is_kept() {
        let (token, hash) = new_token();
        assert_eq!(token.len(), 43);
        assert_eq!(token_hash(&token).unwrap(), hash);
        assert_ne!(token, hash);
        assert!(token_hash("a b").is_err());
        assert!(token_hash("").is_err());
    }
}
