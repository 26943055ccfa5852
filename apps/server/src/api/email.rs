//! Email: verifying an address, asking for another verification mail, resetting a forgotten password, and the
//! user's evaluation mail setting. The links in the mails open the web UI's pages (`/verify-email`,
//! `/reset-password`), which call these operations.

use super::dto::{Reply, ok};
use super::errors::LimitedError;
use super::{Tag, Token};
use crate::state::AppState;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

pub struct EmailApi(pub AppState);

type Limited<T> = Result<Json<super::dto::Envelope<T>>, LimitedError>;

#[derive(Object)]
pub struct VerifyEmailRequest {
    /// The token of the link in the verification mail.
    pub token: String,
}

#[derive(Object)]
pub struct ResendVerificationRequest {
    /// The account's username or email address.
    pub loginname: String,
}

#[derive(Object)]
pub struct ForgotPasswordRequest {
    /// The account's email address.
    pub email: String,
}

#[derive(Object)]
pub struct ResetPasswordRequest {
    /// The token of the link in the password reset mail.
    pub token: String,
    /// The new password: at least 8 characters.
    pub password: String,
}

/// The user's mail settings.
#[derive(Object)]
pub struct MailSettings {
    /// Mail when a project of one of the user's organizations starts failing or is fixed.
    pub evaluation_mail: bool,
}

#[OpenApi(tag = "Tag::Accounts")]
impl EmailApi {
    /// Verifies the account's address with the token of the verification mail's link; the link works once.
    #[oai(path = "/auth/email/verify", method = "post", operation_id = "verify_email")]
    async fn verify(&self, body: Json<VerifyEmailRequest>) -> Reply<String> {
        self.0.app.verify_email(&body.0.token).await?;
        ok("the address is verified".to_owned())
    }

    /// Sends a new verification mail to the account with this username or address, if it exists and is not
    /// verified; answers the same either way. At most one mail a minute per account; rate limited per client
    /// address (429 with `Retry-After`).
    #[oai(path = "/auth/email/resend", method = "post", operation_id = "resend_verification")]
    async fn resend(&self, req: &poem::Request, body: Json<ResendVerificationRequest>) -> Limited<String> {
        self.0.app.require_mail()?;
        let client = crate::limits::client_ip(req, &self.0.http.trusted_proxies);
        self.0.limits.mail(client).map_err(LimitedError::rate_limited)?;
        self.0.app.resend_verification(&body.0.loginname).await?;
        Ok(ok(
            "if this account exists and its address is not verified yet, a verification mail is on its way".to_owned(),
        )?)
    }

    /// Mails a link to set a new password to the account with this address, if there is one; answers the same
    /// either way. At most one mail a minute per account; rate limited per client address (429 with
    /// `Retry-After`).
    #[oai(path = "/auth/password/forgot", method = "post", operation_id = "forgot_password")]
    async fn forgot(&self, req: &poem::Request, body: Json<ForgotPasswordRequest>) -> Limited<String> {
        self.0.app.require_mail()?;
        let client = crate::limits::client_ip(req, &self.0.http.trusted_proxies);
        self.0.limits.mail(client).map_err(LimitedError::rate_limited)?;
        Ok(ok(self.0.app.request_password_reset(&body.0.email).await?.to_owned())?)
    }

    /// Sets a new password with the token of the reset mail's link (it works once). Every session of the
    /// account ends; log in again with the new password.
    #[oai(path = "/auth/password/reset", method = "post", operation_id = "reset_password")]
    async fn reset(&self, body: Json<ResetPasswordRequest>) -> Reply<String> {
        self.0.app.reset_password(&body.0.token, &body.0.password).await?;
        ok("the password is set; log in with it".to_owned())
    }

    /// The logged-in user's mail settings.
    #[oai(path = "/user/mail", method = "get", operation_id = "get_mail_settings")]
    async fn settings(&self, auth: Token) -> Reply<MailSettings> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(MailSettings {
            evaluation_mail: self.0.app.evaluation_mail_setting(&caller).await?,
        })
    }

    /// Changes the logged-in user's mail settings (not with a restricted API key).
    #[oai(path = "/user/mail", method = "put", operation_id = "set_mail_settings")]
    async fn set_settings(&self, auth: Token, body: Json<MailSettings>) -> Reply<MailSettings> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(MailSettings {
            evaluation_mail: self
                .0
                .app
                .set_evaluation_mail_setting(&caller, body.0.evaluation_mail)
                .await?,
        })
    }
}
