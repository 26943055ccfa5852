//! The forge port: reporting a commit status to GitHub, Gitea/Forgejo or GitLab, and the GitHub App's
//! installation tokens.

use crate::forge::Forge;
use crate::model::CommitState;
use std::future::Future;

/// Where a status goes: the forge, its API base URL, the access token (opened) and the project's repository
/// URL (the owner and name are taken from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeTarget {
    pub forge: Forge,
    pub api_url: String,
    pub token: String,
    pub repository_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The forge could not be reached or failed (connection refused, timeout, 5xx): worth retrying.
    #[error("forge unavailable: {0}")]
    Unavailable(String),
    /// The forge refused the status (4xx: bad token, unknown repository, ...).
    #[error("forge rejected the status: {0}")]
    Rejected(String),
}

pub trait ForgeApi {
    /// Sets the commit's status (context/name `gradient`), with a link and a short description.
    fn set_status(
        &self,
        target: &ForgeTarget,
        commit: &str,
        state: CommitState,
        target_url: &str,
        description: &str,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// An access token of the GitHub App's installation `installation`, to report statuses with. The adapter
    /// signs the App's JWT with its private key, exchanges it for the installation's token and keeps the
    /// token until shortly before it expires. `Unavailable` when GitHub cannot be reached or fails,
    /// `Rejected` when it refuses (unknown installation, wrong key) or no App is configured.
    fn installation_token(&self, installation: u64) -> impl Future<Output = Result<String, ForgeError>> + Send;

    /// What GitHub says about the user whose browser GitHub handed the OAuth `code` (the App's setup URL gets
    /// one after an installation when the App requests user authorization), and the App's installation
    /// `installation`: the adapter exchanges the code for the user's token with the App's client id and
    /// secret, and asks GitHub with that token. `Ok(None)` when the installation is not among those the user
    /// can access. `Rejected` when GitHub refuses the code (wrong, expired or already used) or the App has no
    /// client secret configured; `Unavailable` when GitHub cannot be reached or fails.
    fn github_installation_access(
        &self,
        code: &str,
        installation: u64,
    ) -> impl Future<Output = Result<Option<InstallationAccess>, ForgeError>> + Send {
        let _ = (code, installation);
        async { Err(ForgeError::Rejected("no GitHub App is configured".into())) }
    }
}

/// What GitHub says a user may do with an installation of the App (see
/// [`ForgeApi::github_installation_access`]); [`crate::github_app::may_link`] decides from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallationAccess {
    /// The user's login, lowercase.
    pub user: String,
    /// The installation's account's login, lowercase.
    pub account: String,
    /// Whether that account is an organization (else it is a user's account).
    pub account_is_org: bool,
    /// For an organization: the user's role in it (`admin`, `member`) when the membership is active.
    pub org_role: Option<String>,
}

/// The owner and repository name of a repository URL, for the forges' status APIs, from its normalized form
/// ([`crate::forge::normalize_repository_url`]: lowercase, which the forges' APIs accept): the last two path
/// segments (`https://git.example.com/acme/web.git` → `("acme", "web")`), or, with `full_path`, everything
/// before the last segment as the owner (GitLab's nested groups). None when the URL has fewer than two
/// path segments.
pub fn owner_and_repo(repository_url: &str, full_path: bool) -> Option<(String, String)> {
    let normalized = crate::forge::normalize_repository_url(repository_url)?;
    let (_host, path) = normalized.split_once('/')?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (repo, owners) = segments.split_last()?;
    let owner = if full_path {
        owners.join("/")
    } else {
        (*owners.last()?).to_owned()
    };
    if owner.is_empty() {
        return None;
    }
    Some((owner, (*repo).to_owned()))
}

/// What [`InstallationTokens::repository_token`] answers.
pub type TokenAnswer<'a> = std::pin::Pin<Box<dyn Future<Output = Result<String, ForgeError>> + Send + 'a>>;

/// The GitHub App's installation tokens, for fetching the repositories an installation covers over https (the
/// server's `git ls-remote`, and an evaluation job's fetch). Held as `dyn` by the use cases, like the mailer;
/// [`NoInstallationTokens`] without an App. The apps implement it over [`ForgeApi::installation_token`].
pub trait InstallationTokens: Send + Sync {
    fn repository_token(&self, installation: u64) -> TokenAnswer<'_>;
}

/// No GitHub App: no token.
pub struct NoInstallationTokens;

impl InstallationTokens for NoInstallationTokens {
    fn repository_token(&self, _: u64) -> TokenAnswer<'_> {
        Box::pin(async { Err(ForgeError::Rejected("no GitHub App is configured".into())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_repo_come_from_the_repository_url() {
        let pair = |o: &str, r: &str| Some((o.to_owned(), r.to_owned()));
        assert_eq!(
            owner_and_repo("https://github.com/Acme/Web.git", false),
            pair("acme", "web")
        );
        assert_eq!(
            owner_and_repo("git@git.example.com:acme/web.git", false),
            pair("acme", "web")
        );
        assert_eq!(
            owner_and_repo("ssh://git@host:22/acme/web/", false),
            pair("acme", "web")
        );
        assert_eq!(
            owner_and_repo("https://host/gitea/acme/web", false),
            pair("acme", "web")
        );
        assert_eq!(
            owner_and_repo("https://gitlab.com/group/sub/web.git", true),
            pair("group/sub", "web")
        );
        assert_eq!(owner_and_repo("https://host/web", false), None);
        assert_eq!(owner_and_repo("not a url", false), None);
    }
}
