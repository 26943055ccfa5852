//! The forge port over HTTP: a commit status is one POST to the forge's status API.
//!
//! | Forge           | Request                                                          | Token header            |
//! |-----------------|------------------------------------------------------------------|-------------------------|
//! | GitHub          | `POST {api}/repos/{owner}/{repo}/statuses/{sha}`                 | `Authorization: Bearer` |
//! | Gitea / Forgejo | `POST {api}/api/v1/repos/{owner}/{repo}/statuses/{sha}`          | `Authorization: token`  |
//! | GitLab          | `POST {api}/api/v4/projects/{owner%2Frepo}/statuses/{sha}`       | `PRIVATE-TOKEN`         |
//!
//! GitHub and Gitea take `{state, target_url, description, context: "gradient"}` with the states pending,
//! success, failure and error; GitLab takes `{state, target_url, description, name: "gradient"}` with pending,
//! success and failed (failure and error both map to failed). Unreachable forges, timeouts, 5xx and 429 are
//! [`ForgeError::Unavailable`]; other refusals are [`ForgeError::Rejected`].
//!
//! With a GitHub App ([`HttpForge::with_github_app`]), installation tokens are made as [`github_app`]
//! describes.

pub mod github_app;
mod webhook;

pub use github_app::{GithubApp, OAuthClient};

use gradient_domain::forge::Forge;
use gradient_domain::model::CommitState;
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget, InstallationAccess, owner_and_repo};
use gradient_domain::reach::NetworkPolicy;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The name statuses are reported under.
pub const CONTEXT: &str = "gradient";

/// How long one status request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One status request, as built from a target (pure, so it is tested without a forge).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRequest {
    pub url: String,
    pub header: (&'static str, String),
    pub body: Value,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds the request that sets `commit`'s status on the target's forge.
pub fn status_request(
    target: &ForgeTarget,
    commit: &str,
    state: CommitState,
    target_url: &str,
    description: &str,
) -> Result<StatusRequest, ForgeError> {
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ForgeError::Rejected(format!("'{commit}' is not a commit hash")));
    }
    let api = target.api_url.trim_end_matches('/');
    let gitlab = target.forge == Forge::GitLab;
    let (owner, repo) = owner_and_repo(&target.repository_url, gitlab)
        .ok_or_else(|| ForgeError::Rejected(format!("no owner and repository in '{}'", target.repository_url)))?;
    let request = match target.forge {
        Forge::GitHub | Forge::Gitea | Forge::Forgejo => {
            let (prefix, header) = if target.forge == Forge::GitHub {
                ("", ("Authorization", format!("Bearer {}", target.token)))
            } else {
                ("/api/v1", ("Authorization", format!("token {}", target.token)))
            };
            StatusRequest {
                url: format!(
                    "{api}{prefix}/repos/{}/{}/statuses/{commit}",
                    percent_encode(&owner),
                    percent_encode(&repo)
                ),
                header,
                body: json!({
                    "state": state.as_str(),
                    "target_url": target_url,
                    "description": description,
                    "context": CONTEXT,
                }),
            }
        }
        Forge::GitLab => {
            let state = match state {
                CommitState::Pending => "pending",
                CommitState::Success => "success",
                CommitState::Failure | CommitState::Error => "failed",
            };
            StatusRequest {
                url: format!(
                    "{api}/api/v4/projects/{}/statuses/{commit}",
                    percent_encode(&format!("{owner}/{repo}"))
                ),
                header: ("PRIVATE-TOKEN", target.token.clone()),
                body: json!({
                    "state": state,
                    "target_url": target_url,
                    "description": description,
                    "name": CONTEXT,
                }),
            }
        }
    };
    Ok(request)
}

/// The forge port over HTTP(S).
///
/// Status requests go through a client that connects only to addresses the [`NetworkPolicy`] permits: a
/// literal address in the URL (or in a redirect) is checked before connecting, and names are resolved by
/// [`PolicyResolver`], which drops forbidden addresses, so the address checked is the address connected to.
/// The GitHub App's API (operator configuration) is trusted: its token exchange and the statuses sent to
/// it use a client without that filter.
#[derive(Clone, Debug)]
pub struct HttpForge {
    client: reqwest::Client,
    trusted: reqwest::Client,
    outgoing: reqwest::Client,
    policy: NetworkPolicy,
    github_app: Option<std::sync::Arc<GithubApp>>,
}

/// Resolves names with the system resolver and keeps only the addresses the policy permits; fails when
/// none is left, saying why.
#[derive(Debug)]
pub struct PolicyResolver(pub NetworkPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusals.push(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusals.first().cloned().unwrap_or_else(|| "no address".into());
                return Err(format!("{host} resolves to no allowed address: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Refuses a URL whose host is a literal address the policy forbids (names are left to the resolver).
fn check_literal(url: &reqwest::Url, policy: &NetworkPolicy) -> Result<(), String> {
    let Some(host) = url.host_str() else {
        return Err(format!("{url} has no host"));
    };
    // The URL parser has already turned every numeric form of an IPv4 address into dotted quads.
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match literal.parse::<IpAddr>() {
        Ok(ip) => policy.check(ip),
        Err(_) => Ok(()),
    }
}

/// An error with its causes, which reqwest keeps out of its own message.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl HttpForge {
    /// A forge client that connects only where `policy` permits (the GitHub App's API excepted).
    pub fn new(policy: NetworkPolicy) -> Result<Self, ForgeError> {
        let build = |guarded: bool| {
            let mut builder = reqwest::Client::builder()
                .timeout(TIMEOUT)
                .user_agent(concat!("gradient/", env!("CARGO_PKG_VERSION")));
            if guarded {
                builder = builder
                    .dns_resolver(std::sync::Arc::new(PolicyResolver(policy)))
                    .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                        if attempt.previous().len() >= 5 {
                            return attempt.error("too many redirects");
                        }
                        match check_literal(attempt.url(), &policy) {
                            Ok(()) => attempt.follow(),
                            Err(why) => attempt.error(format!("redirect refused: {why}")),
                        }
                    }));
            }
            builder
                .build()
                .map_err(|e| ForgeError::Unavailable(format!("building the HTTP client: {e}")))
        };
        // Outgoing webhooks (the webhook port, `webhook.rs`): the same resolver, no redirect followed.
        let outgoing = reqwest::Client::builder()
            .timeout(webhook::TIMEOUT)
            .user_agent(concat!("gradient/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(std::sync::Arc::new(PolicyResolver(policy)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForgeError::Unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client: build(true)?,
            trusted: build(false)?,
            outgoing,
            policy,
            github_app: None,
        })
    }

    /// The same, making installation tokens of `app` (clones share its cached tokens).
    pub fn with_github_app(self, app: std::sync::Arc<GithubApp>) -> Self {
        Self {
            github_app: Some(app),
            ..self
        }
    }

    /// The client for a request to `api_url`: the unfiltered one for the GitHub App's own API only.
    fn client_for(&self, api_url: &str) -> &reqwest::Client {
        let api_url = api_url.trim().trim_end_matches('/');
        match &self.github_app {
            Some(app) if app.api_url() == api_url => &self.trusted,
            _ => &self.client,
        }
    }
}

impl ForgeApi for HttpForge {
    async fn set_status(
        &self,
        target: &ForgeTarget,
        commit: &str,
        state: CommitState,
        target_url: &str,
        description: &str,
    ) -> Result<(), ForgeError> {
        let request = status_request(target, commit, state, target_url, description)?;
        let client = self.client_for(&target.api_url);
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| ForgeError::Rejected(format!("'{}' is not a URL: {e}", request.url)))?;
        if std::ptr::eq(client, &self.client) {
            check_literal(&url, &self.policy)
                .map_err(|why| ForgeError::Rejected(format!("POST {}: {why}", request.url)))?;
        }
        let response = client
            .post(url)
            .header(request.header.0, request.header.1)
            .json(&request.body)
            .send()
            .await
            .map_err(|e| ForgeError::Unavailable(format!("POST {}: {}", request.url, with_causes(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(refusal(&format!("POST {}", request.url), status, &body))
    }

    async fn installation_token(&self, installation: u64) -> Result<String, ForgeError> {
        match &self.github_app {
            Some(app) => app.installation_token(&self.trusted, installation).await,
            None => Err(ForgeError::Rejected("no GitHub App is configured".into())),
        }
    }

    async fn github_installation_access(
        &self,
        code: &str,
        installation: u64,
    ) -> Result<Option<InstallationAccess>, ForgeError> {
        match &self.github_app {
            Some(app) => app.installation_access(&self.client, code, installation).await,
            None => Err(ForgeError::Rejected("no GitHub App is configured".into())),
        }
    }
}

/// A forge's answer other than success: worth retrying (server error, rate limit) or not (anything else).
/// `what` names the request (`POST <url>`).
pub(crate) fn refusal(what: &str, status: reqwest::StatusCode, body: &str) -> ForgeError {
    let snippet: String = body.chars().take(200).collect();
    let message = format!("{what} answered {status}: {snippet}");
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        ForgeError::Unavailable(message)
    } else {
        ForgeError::Rejected(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn target(forge: Forge, api_url: &str, repository_url: &str) -> ForgeTarget {
        ForgeTarget {
            forge,
            api_url: api_url.to_owned(),
            token: "tok".to_owned(),
            repository_url: repository_url.to_owned(),
        }
    }

    #[test]
    fn github_statuses() {
        let t = target(
            Forge::GitHub,
            "https://api.github.com/",
            "https://github.com/acme/web.git",
        );
        let r = status_request(&t, SHA, CommitState::Failure, "https://ci/e/1", "failed").expect("request");
        assert_eq!(r.url, format!("https://api.github.com/repos/acme/web/statuses/{SHA}"));
        assert_eq!(r.header, ("Authorization", "Bearer tok".to_owned()));
        assert_eq!(
            r.body,
            json!({"state": "failure", "target_url": "https://ci/e/1", "description": "failed", "context": "gradient"})
        );
    }

    #[test]
    fn gitea_and_forgejo_statuses() {
        for forge in [Forge::Gitea, Forge::Forgejo] {
            let t = target(forge, "https://git.example.com", "git@git.example.com:acme/web.git");
            let r = status_request(&t, SHA, CommitState::Error, "u", "d").expect("request");
            assert_eq!(
                r.url,
                format!("https://git.example.com/api/v1/repos/acme/web/statuses/{SHA}")
            );
            assert_eq!(r.header, ("Authorization", "token tok".to_owned()));
            assert_eq!(r.body["state"], "error");
            assert_eq!(r.body["context"], "gradient");
        }
    }

    #[test]
    fn gitlab_statuses() {
        let t = target(
            Forge::GitLab,
            "https://gitlab.com",
            "https://gitlab.com/group/sub/web.git",
        );
        let r = status_request(&t, SHA, CommitState::Pending, "u", "d").expect("request");
        assert_eq!(
            r.url,
            format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Fweb/statuses/{SHA}")
        );
        assert_eq!(r.header, ("PRIVATE-TOKEN", "tok".to_owned()));
        assert_eq!(
            r.body,
            json!({"state": "pending", "target_url": "u", "description": "d", "name": "gradient"})
        );
        for (state, expected) in [
            (CommitState::Success, "success"),
            (CommitState::Failure, "failed"),
            (CommitState::Error, "failed"),
        ] {
            let r = status_request(&t, SHA, state, "u", "d").expect("request");
            assert_eq!(r.body["state"], expected);
        }
    }

    #[test]
    fn literal_addresses_are_checked_before_connecting() {
        let default = NetworkPolicy::default();
        let deny_private = NetworkPolicy {
            deny_private: true,
            ..default
        };
        let ok = |url: &str, policy: &NetworkPolicy| check_literal(&reqwest::Url::parse(url).unwrap(), policy).is_ok();
        for url in [
            "http://127.0.0.1:3000/api",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0.0.0.0/",
        ] {
            assert!(!ok(url, &default), "{url}");
            assert!(ok(url, &NetworkPolicy::ALLOW_ALL), "{url}");
        }
        assert!(ok("http://10.0.0.1/", &default));
        assert!(!ok("http://10.0.0.1/", &deny_private));
        assert!(!ok("http://[fd00::1]/", &deny_private));
        // Names are left to the resolver.
        assert!(ok("http://localhost/", &default));
        assert!(ok("https://api.github.com/", &deny_private));
    }

    #[test]
    fn bad_commits_and_repositories_are_rejected() {
        let t = target(Forge::GitHub, "https://api.github.com", "https://github.com/acme/web");
        assert!(matches!(
            status_request(&t, "../../x", CommitState::Pending, "u", "d"),
            Err(ForgeError::Rejected(_))
        ));
        let t = target(Forge::GitHub, "https://api.github.com", "https://github.com/web");
        assert!(matches!(
            status_request(&t, SHA, CommitState::Pending, "u", "d"),
            Err(ForgeError::Rejected(_))
        ));
    }
}
