//! The OpenID Provider as the server talks to it (`oidc.*`), with the `openidconnect` crate: discovery
//! (`<discoveryUrl>/.well-known/openid-configuration` and its key set), the authorization URL (code flow, S256
//! PKCE challenge, state, nonce, the configured scopes), and the callback's code exchange, whose ID token is
//! checked (signature against the provider's keys, issuer, audience, expiry, nonce, access token hash) before
//! its claims go to the domain. Who gets which account is the domain's (`service/oidc.rs`).
//!
//! Discovery runs at start-up; when the provider cannot be reached then, start-up fails if OIDC is required
//! and otherwise retries at the next sign-in. The metadata and keys are fetched again after an hour, and at
//! once when an ID token names a key the server does not know (the provider rotated its keys).

use gradient_domain::model::OidcFlow;
use gradient_domain::service::{OidcClaims, OidcStart};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// How long discovered metadata and keys are used before they are fetched again.
const REFRESH_AFTER: Duration = Duration::from_secs(3600);
/// Each request to the provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of the callback under the public URL, as the provider must know it (its redirect URI).
pub const CALLBACK_PATH: &str = "/api/v1/auth/oidc/callback";

/// What the operator configured.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// The issuer: `discoveryUrl` without a trailing `/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE only).
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// `<publicUrl>/api/v1/auth/oidc/callback`.
    pub redirect_url: String,
    pub icon_url: Option<String>,
}

/// The issuer a `discoveryUrl` names: the URL itself, or the one its discovery document is under. Kept as
/// written otherwise (a trailing `/` too): the provider's metadata must name exactly this issuer.
pub fn issuer_of(discovery_url: &str) -> String {
    let url = discovery_url.trim();
    url.strip_suffix("/.well-known/openid-configuration")
        .unwrap_or(url)
        .to_owned()
}

/// The provider, discovered (or not yet).
pub struct Oidc {
    pub settings: OidcSettings,
    http: reqwest::Client,
    discovered: Mutex<Option<(Arc<Client>, Instant)>>,
}

/// Why talking to the provider failed: for the log (the person signing in is told the sign-in failed).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("OIDC discovery at {issuer}: {problem}")]
    Discovery { issuer: String, problem: String },
    /// The provider refused the code or answered something that is not a valid token response.
    #[error("the OpenID Provider's token endpoint: {0}")]
    Exchange(String),
    /// The ID token is missing or failed a check (signature, issuer, audience, expiry, nonce).
    #[error("the OpenID Provider's ID token: {0}")]
    IdToken(String),
    #[error("the OpenID Provider's userinfo endpoint: {0}")]
    UserInfo(String),
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Result<Self, String> {
        // Never following redirects: the provider's answers are used as they are (no SSRF through a redirect).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("gradient/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| chain(&e))?;
        Ok(Self {
            settings,
            http,
            discovered: Mutex::new(None),
        })
    }

    /// Fetches the provider's metadata and keys (again).
    async fn discover(&self) -> Result<Arc<Client>, OidcError> {
        let failed = |problem: String| OidcError::Discovery {
            issuer: self.settings.issuer.clone(),
            problem,
        };
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| failed(chain(&e)))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| failed(chain(&e)))?;
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone()).map_err(|e| failed(chain(&e)))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            self.settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        Ok(Arc::new(client))
    }

    /// The discovered provider: fetched when never fetched, older than [`REFRESH_AFTER`] or when `refresh`.
    /// A failed refresh keeps what was discovered before.
    async fn client(&self, refresh: bool) -> Result<Arc<Client>, OidcError> {
        let mut discovered = self.discovered.lock().await;
        match &*discovered {
            Some((client, at)) if !refresh && at.elapsed() < REFRESH_AFTER => Ok(client.clone()),
            old => match self.discover().await {
                Ok(client) => {
                    *discovered = Some((client.clone(), Instant::now()));
                    Ok(client)
                }
                Err(e) => match old {
                    Some((client, _)) => {
                        tracing::warn!(target: "gradient::web", "{e}; using the metadata discovered before");
                        Ok(client.clone())
                    }
                    None => Err(e),
                },
            },
        }
    }

    /// Discovers the provider now (start-up).
    pub async fn check(&self) -> Result<(), OidcError> {
        self.client(true).await.map(|_| ())
    }

    /// Where to send the browser: the provider's authorization endpoint with the flow's state, nonce and S256
    /// challenge.
    pub async fn authorize_url(&self, start: &OidcStart) -> Result<String, OidcError> {
        let client = self.client(false).await?;
        let verifier = PkceCodeVerifier::new(start.pkce_verifier.clone());
        let (state, nonce) = (start.state.clone(), start.nonce.clone());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
        for scope in self.settings.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        Ok(request.url().0.to_string())
    }

    /// Exchanges the callback's code (with the flow's PKCE verifier) and checks the ID token (with the flow's
    /// nonce); what it lacks of the email and names is asked of the userinfo endpoint, for the same subject.
    pub async fn claims(&self, code: &str, flow: &OidcFlow) -> Result<OidcClaims, OidcError> {
        let client = self.client(false).await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(chain(&e)))?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(chain(&e)))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response holds no ID token".into()))?;
        let nonce = Nonce::new(flow.nonce.clone());
        let (client, claims): (Arc<Client>, CoreIdTokenClaims) =
            match id_token.claims(&client.id_token_verifier(), &nonce) {
                Ok(claims) => (client.clone(), claims.clone()),
                // Signed with a key the server does not know yet: the provider may have rotated its keys.
                Err(first) => {
                    let fresh = self.client(true).await?;
                    let claims = id_token
                        .claims(&fresh.id_token_verifier(), &nonce)
                        .map_err(|_| OidcError::IdToken(chain(&first)))?
                        .clone();
                    (fresh, claims)
                }
            };
        if let Some(expected) = claims.access_token_hash() {
            let verifier = client.id_token_verifier();
            let alg = id_token.signing_alg().map_err(|e| OidcError::IdToken(chain(&e)))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| OidcError::IdToken(chain(&e)))?;
            let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
                .map_err(|e| OidcError::IdToken(chain(&e)))?;
            if actual != *expected {
                return Err(OidcError::IdToken(
                    "the access token does not match its hash (at_hash)".into(),
                ));
            }
        }
        let mut out = OidcClaims {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
            preferred_username: claims.preferred_username().map(|u| u.as_str().to_owned()),
        };
        // Many providers put only `sub` in the ID token and the rest behind the userinfo endpoint.
        if out.email.is_none() || out.name.is_none() {
            let request = client.user_info(response.access_token().to_owned(), Some(claims.subject().clone()));
            if let Ok(request) = request {
                let info: CoreUserInfoClaims = request
                    .request_async(&self.http)
                    .await
                    .map_err(|e| OidcError::UserInfo(chain(&e)))?;
                if out.email.is_none() {
                    out.email = info.email().map(|e| e.as_str().to_owned());
                    out.email_verified = info.email_verified().unwrap_or(false);
                }
                out.name = out
                    .name
                    .or_else(|| info.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()));
                out.preferred_username = out
                    .preferred_username
                    .or_else(|| info.preferred_username().map(|u| u.as_str().to_owned()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_is_the_discovery_url_without_its_document() {
        for (url, issuer) in [
            ("https://auth.example.com", "https://auth.example.com"),
            ("https://tenant.example.com/", "https://tenant.example.com/"),
            (
                "https://kc.example.com/realms/ci/.well-known/openid-configuration",
                "https://kc.example.com/realms/ci",
            ),
        ] {
            assert_eq!(issuer_of(url), issuer);
        }
    }
}
