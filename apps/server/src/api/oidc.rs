//! Single sign-on through the OpenID Provider (`oidc.*`): the browser is sent to the provider and comes back
//! to the callback, which answers the web UI's `/signin/oidc` page with the session token (or the error) in
//! the URL's fragment, which never reaches a server or its logs. The flow is bound to the browser by a cookie
//! holding a random value (its hash is stored with the flow), scoped to `/api/v1/auth/oidc`, `HttpOnly`,
//! `SameSite=Lax` (the provider's redirect is a top-level GET), `Secure` when the public URL is https, and
//! cleared by the callback.

use super::dto::{Envelope, Reply, ok};
use super::{ApiError, Tag, Token};
use crate::oidc::OidcError;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use gradient_domain::service::{OIDC_FLOW_LIFETIME, OidcOutcome, OidcStart, ServiceError};
use openidconnect::url::form_urlencoded;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

pub struct OidcApi(pub AppState);

const COOKIE: &str = "gradient_oidc";
const COOKIE_PATH: &str = "/api/v1/auth/oidc";
/// The web UI's page that finishes a sign-in (reads the fragment).
const LANDING: &str = "/signin/oidc";

/// A redirect of the browser.
#[derive(ApiResponse)]
pub enum Redirect {
    /// Go to `Location`: the OpenID Provider (sign-in), or the web UI's `/signin/oidc` page (callback) with
    /// `#token=<session token>`, `#linked=1` or `#error=<code>&message=<text>` in the fragment. `Set-Cookie`
    /// sets or clears the flow's cookie.
    #[oai(status = 303)]
    SeeOther(
        #[oai(header = "Location")] String,
        #[oai(header = "Set-Cookie")] String,
        #[oai(header = "Cache-Control")] String,
    ),
}

/// Where to send the browser to link an account at the provider.
#[derive(Object)]
pub struct OidcRedirect {
    /// The OpenID Provider's authorization URL; the browser must go there itself (it carries the flow cookie
    /// this answer set).
    pub url: String,
}

/// A link begun.
#[derive(ApiResponse)]
pub enum LinkStarted {
    /// Send the browser to `message.url`. `Set-Cookie` binds the flow to this browser.
    #[oai(status = 200)]
    Ok(Json<Envelope<OidcRedirect>>, #[oai(header = "Set-Cookie")] String),
}

/// An account at the OpenID Provider that signs in as this user.
#[derive(Object)]
pub struct OidcIdentityView {
    /// The provider (its issuer URL).
    pub issuer: String,
    /// The account's subject identifier at the provider.
    pub subject: String,
    pub created_at: DateTime<Utc>,
}

fn disabled() -> ApiError {
    ServiceError::NotFound("single sign-on (OIDC) is not enabled on this server".into()).into()
}

/// `Name=value` with the flow cookie's attributes; `max_age` 0 clears it.
fn cookie(state: &AppState, value: &str, max_age: i64) -> String {
    let secure = if state.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

fn set_cookie(state: &AppState, start: &OidcStart) -> String {
    cookie(state, &start.binding, OIDC_FLOW_LIFETIME.num_seconds())
}

/// The flow cookie's value, from the request's `Cookie` headers.
fn binding(req: &poem::Request) -> Option<String> {
    req.headers()
        .get_all(poem::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// A one-line, bounded text from the provider, for the person reading the error.
fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

impl OidcApi {
    fn back(&self, fragment: &[(&str, &str)]) -> Redirect {
        let mut f = form_urlencoded::Serializer::new(String::new());
        for (k, v) in fragment {
            f.append_pair(k, v);
        }
        Redirect::SeeOther(
            format!("{LANDING}#{}", f.finish()),
            cookie(&self.0, "", 0),
            "no-store".into(),
        )
    }

    fn failed(&self, code: &str, message: &str) -> Redirect {
        self.back(&[("error", code), ("message", message)])
    }

    fn provider_failed(&self, e: &OidcError) -> Redirect {
        tracing::warn!(target: "gradient::web", "OIDC sign-in failed: {e}");
        self.failed(
            "oidc_provider_error",
            "the single sign-on provider's answer could not be used; try again, or ask the operator to look at the \
             server's log",
        )
    }
}

#[OpenApi(tag = "Tag::Accounts")]
impl OidcApi {
    /// Starts a sign-in with the OpenID Provider (single sign-on): redirects the browser to the provider
    /// (authorization code flow with PKCE S256, state and nonce). 404 when OIDC is not enabled. The account
    /// it signs in as is the one linked to the provider's account (issuer and subject); a new one is made
    /// when none is and no account has its email address (`oidc_account_exists` otherwise: the owner links it
    /// from the account page).
    #[oai(path = "/auth/oidc/login", method = "get", operation_id = "oidc_login")]
    async fn login(&self) -> Result<Redirect, ApiError> {
        let Some(oidc) = &self.0.oidc else {
            return Err(disabled());
        };
        let start = self.0.app.begin_oidc_sign_in().await?;
        match oidc.authorize_url(&start).await {
            Ok(url) => Ok(Redirect::SeeOther(url, set_cookie(&self.0, &start), "no-store".into())),
            Err(e) => Ok(self.provider_failed(&e)),
        }
    }

    /// Where the OpenID Provider sends the browser back (its redirect URI: `<publicUrl>/api/v1/auth/oidc/callback`).
    /// Answers a redirect to the web UI's `/signin/oidc` page with `#token=<session token>` (signed in),
    /// `#linked=1` (an account at the provider linked to the signed-in user) or `#error=<code>&message=<text>`:
    /// `oidc_state_invalid` (unknown, expired or already used state, or a browser other than the one that
    /// started the flow), `oidc_denied` (the provider refused), `oidc_provider_error`, `oidc_account_exists`,
    /// `oidc_email_missing`, `oidc_email_unverified`, `oidc_email_mismatch`, `oidc_identity_taken`,
    /// `registration_disabled`. 404 when OIDC is not enabled.
    #[oai(path = "/auth/oidc/callback", method = "get", operation_id = "oidc_callback")]
    async fn callback(
        &self,
        req: &poem::Request,
        /// The authorization code.
        code: Query<Option<String>>,
        state: Query<Option<String>>,
        /// Set by the provider when it refused.
        error: Query<Option<String>>,
        error_description: Query<Option<String>>,
    ) -> Result<Redirect, ApiError> {
        let Some(oidc) = &self.0.oidc else {
            return Err(disabled());
        };
        let Some(state) = state.0 else {
            return Ok(self.failed("oidc_state_invalid", "the provider's answer carries no state"));
        };
        let flow = match self.0.app.take_oidc_flow(&state, binding(req).as_deref()).await {
            Ok(flow) => flow,
            Err(e) => return Ok(self.failed(e.code(), &e.to_string())),
        };
        if let Some(error) = error.0 {
            let text = match error_description.0 {
                Some(d) => format!("the single sign-on provider refused: {} ({})", shown(&d), shown(&error)),
                None => format!("the single sign-on provider refused: {}", shown(&error)),
            };
            return Ok(self.failed("oidc_denied", &text));
        }
        let Some(code) = code.0 else {
            return Ok(self.failed("oidc_provider_error", "the provider's answer carries no code"));
        };
        let claims = match oidc.claims(&code, &flow).await {
            Ok(claims) => claims,
            Err(e) => return Ok(self.provider_failed(&e)),
        };
        match self.0.app.finish_oidc(&flow, claims).await {
            Ok(OidcOutcome::SignedIn { token, .. }) => {
                // The sessions list shows which browser opened each session, as for a password login.
                self.0
                    .app
                    .note_session_client(&token, req.header(poem::http::header::USER_AGENT))
                    .await?;
                Ok(self.back(&[("token", &token)]))
            }
            Ok(OidcOutcome::Linked { .. }) => Ok(self.back(&[("linked", "1")])),
            Err(e) => {
                if let ServiceError::Internal(detail) | ServiceError::Unavailable(detail) = &e {
                    tracing::error!(target: "gradient::web", "internal error: {detail}");
                    crate::reporting::internal_error("api", detail);
                }
                Ok(self.failed(e.code(), &e.to_string()))
            }
        }
    }

    /// Starts linking an account at the OpenID Provider to the signed-in user's (a session, not an API key:
    /// 403). Answers the provider's URL, for the browser to go to; the callback then links, when the provider
    /// vouches for this account's email address (`email_verified`), and the provider's account signs in as
    /// this one from then on. 404 when OIDC is not enabled.
    #[oai(path = "/user/oidc/link", method = "post", operation_id = "oidc_link")]
    async fn link(&self, auth: Token) -> Result<LinkStarted, ApiError> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let Some(oidc) = &self.0.oidc else {
            return Err(disabled());
        };
        let start = self.0.app.begin_oidc_link(&caller).await?;
        let url = oidc
            .authorize_url(&start)
            .await
            .map_err(|e| ApiError::from(ServiceError::Internal(e.to_string())))?;
        Ok(LinkStarted::Ok(
            Json(Envelope {
                error: false,
                message: OidcRedirect { url },
            }),
            set_cookie(&self.0, &start),
        ))
    }

    /// The accounts at the OpenID Provider that sign in as this user.
    #[oai(path = "/user/oidc", method = "get", operation_id = "list_oidc_identities")]
    async fn identities(&self, auth: Token) -> Reply<Vec<OidcIdentityView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(self
            .0
            .app
            .oidc_identities(&caller)
            .await?
            .into_iter()
            .map(|i| OidcIdentityView {
                issuer: i.issuer,
                subject: i.subject,
                created_at: i.created_at,
            })
            .collect())
    }
}
