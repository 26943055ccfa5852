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

pub use github_app::{GithubApp, OAuthClient};

use gradient_domain::forge::Forge;
use gradient_domain::model::CommitState;
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget, InstallationAccess, owner_and_repo};
use serde_json::{Value, json};
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
#[derive(Clone, Debug)]
pub struct HttpForge {
    client: reqwest::Client,
    github_app: Option<std::sync::Arc<GithubApp>>,
}

impl HttpForge {
    pub fn new() -> Result<Self, ForgeError> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("gradient/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ForgeError::Unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            client,
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
        let response = self
            .client
            .post(&request.url)
            .header(request.header.0, request.header.1)
            .json(&request.body)
            .send()
            .await
            .map_err(|e| ForgeError::Unavailable(format!("POST {}: {e}", request.url)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(refusal(&request.url, status, &body))
    }

    async fn installation_token(&self, installation: u64) -> Result<String, ForgeError> {
        match &self.github_app {
            Some(app) => app.installation_token(&self.client, installation).await,
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
pub(crate) fn refusal(url: &str, status: reqwest::StatusCode, body: &str) -> ForgeError {
    let snippet: String = body.chars().take(200).collect();
    let message = format!("POST {url} answered {status}: {snippet}");
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
