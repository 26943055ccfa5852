//! The GitHub App's installation tokens: the App authenticates as itself with a JWT signed with its private key
//! (RS256; `iat` a minute in the past against clock drift, `exp` 9 minutes ahead, GitHub accepting at most
//! 10; `iss` the App id), exchanges it with `POST {api}/app/installations/{id}/access_tokens` for an
//! installation token, and keeps that token in memory until [`REFRESH_BEFORE`] its `expires_at` (tokens live
//! an hour).
//!
//! To link an installation to a Gradient organization, [`GithubApp::installation_access`] proves who the
//! user is: the OAuth `code` GitHub handed the user's browser is exchanged at
//! `POST {web}/login/oauth/access_token` (with the App's client id and secret) for the user's token, with
//! which `GET {api}/user`, `GET {api}/user/installations` (paged) and, for an organization's installation,
//! `GET {api}/user/memberships/orgs/{org}` tell who the user is, whether they can access the installation
//! and their role in its organization. The user's token is used for these calls only and never kept.

use gradient_domain::ports::forge::{ForgeError, InstallationAccess};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token is fetched again this long before it expires.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How far in the past the JWT says it was issued (GitHub's advice against clock drift).
const ISSUED_BEFORE: Duration = Duration::from_secs(60);

/// How long the JWT is valid from now (GitHub refuses more than 10 minutes).
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// The claims of the App's JWT.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppClaims {
    pub iat: u64,
    pub exp: u64,
    /// The App id, as a string (a JWT issuer is a string; GitHub takes the App id or its client id).
    pub iss: String,
}

struct CachedToken {
    token: String,
    /// When it must be fetched again: [`REFRESH_BEFORE`] its expiry.
    refresh_at: SystemTime,
}

/// The App's identity and its installations' tokens.
pub struct GithubApp {
    app_id: u64,
    api_url: String,
    /// The OAuth client (id, secret) and GitHub's web URL, which codes are exchanged with.
    oauth: Option<OAuthClient>,
    key: EncodingKey,
    tokens: Mutex<HashMap<u64, CachedToken>>,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// The App's OAuth client: its client id and secret, and GitHub's web URL (`https://github.com`).
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub web_url: String,
}

#[derive(Deserialize)]
struct UserToken {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct Login {
    login: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct UserInstallation {
    id: u64,
    account: Login,
}

#[derive(Deserialize)]
struct UserInstallations {
    installations: Vec<UserInstallation>,
}

#[derive(Deserialize)]
struct Membership {
    state: String,
    role: String,
}

/// At most this many pages of 100 installations are read.
const MAX_INSTALLATION_PAGES: u32 = 10;

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    expires_at: Option<String>,
}

fn seconds_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl GithubApp {
    /// The App `app_id` with its private key (PEM: PKCS#1 `RSA PRIVATE KEY`, as GitHub hands it out, or PKCS#8
    /// `PRIVATE KEY`), whose API is at `api_url`. Fails, with one line saying why, when the key is not an RSA
    /// private key or cannot sign.
    pub fn new(app_id: u64, private_key_pem: &str, api_url: &str) -> Result<Self, String> {
        let pem = private_key_pem.trim();
        let not_a_key = |why: String| format!("not an RSA private key in PEM format ({why})");
        if !pem.starts_with("-----BEGIN ") {
            return Err(not_a_key("no -----BEGIN line".into()));
        }
        let key = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| not_a_key(format!("PKCS#1: {e}")))?
        } else {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| not_a_key(e.to_string()))?
        };
        let der = key
            .to_pkcs1_der()
            .map_err(|e| format!("the RSA private key cannot be encoded: {e}"))?;
        let app = Self {
            app_id,
            api_url: api_url.trim().trim_end_matches('/').to_owned(),
            oauth: None,
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            tokens: Mutex::default(),
        };
        app.jwt(SystemTime::now())
            .map_err(|e| format!("the RSA private key cannot sign: {e}"))?;
        Ok(app)
    }

    /// The App's API base URL, without a trailing slash.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The same App, able to check users' OAuth codes with `oauth`.
    pub fn with_oauth(self, oauth: OAuthClient) -> Self {
        Self {
            oauth: Some(OAuthClient {
                web_url: oauth.web_url.trim().trim_end_matches('/').to_owned(),
                ..oauth
            }),
            ..self
        }
    }

    /// A GET of GitHub's API with the user's token, read as `T`; `Ok(None)` for 403 and 404.
    async fn get_as_user<T: serde::de::DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        token: &str,
        path: &str,
    ) -> Result<Option<T>, ForgeError> {
        let url = format!("{}{path}", self.api_url);
        let request = client
            .get(&url)
            .bearer_auth(token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        json_answer(request, &format!("GET {url}"), ABSENT).await
    }

    /// What GitHub says about the user who was handed `code` and the installation (see the module's
    /// documentation).
    pub async fn installation_access(
        &self,
        client: &reqwest::Client,
        code: &str,
        installation: u64,
    ) -> Result<Option<InstallationAccess>, ForgeError> {
        let oauth = self
            .oauth
            .as_ref()
            .ok_or_else(|| ForgeError::Rejected("the GitHub App's client id and secret are not configured".into()))?;
        let url = format!("{}/login/oauth/access_token", oauth.web_url);
        let request = client
            .post(&url)
            .header("Accept", "application/json")
            .json(&serde_json::json!({
                "client_id": oauth.client_id,
                "client_secret": oauth.client_secret,
                "code": code,
            }));
        let answer: UserToken = json_answer(request, &format!("POST {url}"), &[])
            .await?
            .ok_or_else(|| ForgeError::Unavailable(format!("POST {url} answered nothing")))?;
        let token = match answer {
            UserToken {
                access_token: Some(token),
                ..
            } if !token.is_empty() => token,
            UserToken {
                error,
                error_description,
                ..
            } => {
                return Err(ForgeError::Rejected(format!(
                    "{}: {}",
                    error.unwrap_or_else(|| "no token".into()),
                    error_description.unwrap_or_default()
                )));
            }
        };
        let unexpected =
            |what: &str| ForgeError::Rejected(format!("GitHub did not answer {what} with the user's token"));
        let user: Login = self
            .get_as_user(client, &token, "/user")
            .await?
            .ok_or_else(|| unexpected("GET /user"))?;
        let mut found = None;
        for page in 1..=MAX_INSTALLATION_PAGES {
            let list: UserInstallations = self
                .get_as_user(client, &token, &format!("/user/installations?per_page=100&page={page}"))
                .await?
                .ok_or_else(|| unexpected("GET /user/installations"))?;
            let last = list.installations.len() < 100;
            found = list.installations.into_iter().find(|i| i.id == installation);
            if found.is_some() || last {
                break;
            }
        }
        let Some(found) = found else {
            return Ok(None);
        };
        let account = found.account.login.to_ascii_lowercase();
        let account_is_org = found.account.kind.as_deref() == Some("Organization");
        let org_role = if account_is_org {
            let membership: Option<Membership> = self
                .get_as_user(client, &token, &format!("/user/memberships/orgs/{account}"))
                .await?;
            membership.filter(|m| m.state == "active").map(|m| m.role)
        } else {
            None
        };
        Ok(Some(InstallationAccess {
            user: user.login.to_ascii_lowercase(),
            account,
            account_is_org,
            org_role,
        }))
    }

    /// The App's JWT as of `now` (see the module's documentation).
    pub fn jwt(&self, now: SystemTime) -> Result<String, ForgeError> {
        let now = seconds_since_epoch(now);
        let claims = AppClaims {
            iat: now.saturating_sub(ISSUED_BEFORE.as_secs()),
            exp: now + JWT_LIFETIME.as_secs(),
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| ForgeError::Rejected(format!("signing the GitHub App's JWT: {e}")))
    }

    fn cached(&self, installation: u64, now: SystemTime) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens
            .get(&installation)
            .filter(|t| now < t.refresh_at)
            .map(|t| t.token.clone())
    }

    /// The installation's token: the cached one while it has more than [`REFRESH_BEFORE`] to live, else a new
    /// one from GitHub (unreachable, 5xx and 429 are `Unavailable`; other refusals `Rejected`).
    pub async fn installation_token(&self, client: &reqwest::Client, installation: u64) -> Result<String, ForgeError> {
        if let Some(token) = self.cached(installation, SystemTime::now()) {
            return Ok(token);
        }
        let url = format!("{}/app/installations/{installation}/access_tokens", self.api_url);
        let jwt = self.jwt(SystemTime::now())?;
        let request = client
            .post(&url)
            .bearer_auth(jwt)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        let answer: AccessToken = json_answer(request, &format!("POST {url}"), &[])
            .await?
            .ok_or_else(|| ForgeError::Unavailable(format!("POST {url} answered nothing")))?;
        // Kept until shortly before it expires; an answer without a readable expiry is used once.
        let expires = answer
            .expires_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| u64::try_from(t.timestamp()).ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        if let Some(refresh_at) = expires.and_then(|e| e.checked_sub(REFRESH_BEFORE)) {
            let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            tokens.insert(
                installation,
                CachedToken {
                    token: answer.token.clone(),
                    refresh_at,
                },
            );
        }
        Ok(answer.token)
    }
}

/// Statuses GitHub answers for something the token may not see or that does not exist.
const ABSENT: &[reqwest::StatusCode] = &[reqwest::StatusCode::NOT_FOUND, reqwest::StatusCode::FORBIDDEN];

/// Sends `request` (described as `what`, e.g. `GET <url>`) and reads its JSON answer: `Ok(None)` for a status in
/// `absent`; other refusals as [`crate::refusal`] classifies them; an answer that is not the JSON expected is
/// `Unavailable`.
async fn json_answer<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    what: &str,
    absent: &[reqwest::StatusCode],
) -> Result<Option<T>, ForgeError> {
    let response = request
        .send()
        .await
        .map_err(|e| ForgeError::Unavailable(format!("{what}: {e}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| ForgeError::Unavailable(format!("{what}: reading the answer: {e}")))?;
    if absent.contains(&status) {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(crate::refusal(what, status, &body));
    }
    serde_json::from_str(&body)
        .map(Some)
        .map_err(|e| ForgeError::Unavailable(format!("{what} answered something unexpected: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_not_rsa_private_keys_are_refused_in_one_line() {
        for pem in [
            "",
            "not a key",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            // An Ed25519 key in PKCS#8.
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINguaJIdhFQlgTk/2wXuAoc18yHhGZ0wEgAnaYxeUNES\n-----END PRIVATE KEY-----\n",
        ] {
            let e = GithubApp::new(1, pem, "https://api.github.com").expect_err(pem);
            assert!(e.starts_with("not an RSA private key"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
