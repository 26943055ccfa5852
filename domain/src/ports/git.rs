//! Reading where a repository's branches point, for polling and for evaluating a branch's head.

pub use crate::deploy_key::RepositoryCredential;
use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The repository could not be reached or read (network, authentication, not a repository).
    #[error("git: {0}")]
    Unavailable(String),
}

/// Where a repository's `HEAD` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHead {
    /// The default branch `HEAD` names (`main` for `refs/heads/main`); `None` when the server does not say
    /// (a detached `HEAD`).
    pub branch: Option<String>,
    /// The full commit hash `HEAD` points at.
    pub commit: String,
}

/// Both operations take the repository's `credential` when it needs one (see [`RepositoryCredential`]): the
/// adapter uses it for that call only and never shows it, in its errors included.
pub trait Git: Send + Sync + 'static {
    /// The full commit hash the branch points at (the remote's default branch when `branch` is `None`);
    /// `Ok(None)` when the repository has no such branch.
    fn head(
        &self,
        repository: &str,
        branch: Option<&str>,
        credential: Option<&RepositoryCredential>,
    ) -> impl Future<Output = Result<Option<String>, GitError>> + Send;

    /// The remote's default branch and its commit (`git ls-remote --symref <url> HEAD`), from any git server,
    /// plain ("dumb") HTTP included; `Ok(None)` when the repository has no `HEAD` commit (an empty repository).
    fn remote_head(
        &self,
        repository: &str,
        credential: Option<&RepositoryCredential>,
    ) -> impl Future<Output = Result<Option<RemoteHead>, GitError>> + Send;
}

/// Reads `git ls-remote --symref <url> HEAD`'s answer: `ref: refs/heads/<branch>\tHEAD`, then
/// `<commit>\tHEAD`. Pure, so every adapter that runs git reads it the same way.
pub fn parse_symref_head(text: &str) -> Option<RemoteHead> {
    let mut branch = None;
    let mut commit = None;
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(left), Some("HEAD")) = (fields.next(), fields.next().map(str::trim)) else {
            continue;
        };
        if let Some(target) = left.strip_prefix("ref: ") {
            // A branch name a project could not name (control characters, over 255 bytes…) is no branch at all.
            branch = target
                .trim()
                .strip_prefix("refs/heads/")
                .filter(|b| crate::names::check_branch(b).is_ok())
                .map(str::to_owned);
        } else if crate::forge::is_commit(left.trim()) && commit.is_none() {
            commit = Some(left.trim().to_lowercase());
        }
    }
    Some(RemoteHead {
        branch,
        commit: commit?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_no_project_could_name_is_none() {
        let commit = "a".repeat(40);
        let text = format!("ref: refs/heads/{}\tHEAD\n{commit}\tHEAD\n", "x".repeat(300));
        assert_eq!(parse_symref_head(&text).map(|h| h.branch), Some(None));
        let text = format!("ref: refs/heads/a\u{1b}[31m\tHEAD\n{commit}\tHEAD\n");
        assert_eq!(parse_symref_head(&text).map(|h| h.branch), Some(None));
    }

    #[test]
    fn the_default_branch_is_read_from_the_symref() {
        let sha = "a95b61bc7a8badd435bc837093364fecc0a97444";
        assert_eq!(
            parse_symref_head(&format!("ref: refs/heads/main\tHEAD\n{sha}\tHEAD\n")),
            Some(RemoteHead {
                branch: Some("main".into()),
                commit: sha.into()
            })
        );
        assert_eq!(
            parse_symref_head(&format!("ref: refs/heads/feature/x\tHEAD\n{sha}\tHEAD\n")).and_then(|h| h.branch),
            Some("feature/x".into())
        );
        // A detached HEAD: the commit, no branch.
        assert_eq!(
            parse_symref_head(&format!("{sha}\tHEAD\n")),
            Some(RemoteHead {
                branch: None,
                commit: sha.into()
            })
        );
        // An empty repository: a symref to a branch that has no commit yet, or nothing at all.
        assert_eq!(parse_symref_head("ref: refs/heads/main\tHEAD\n"), None);
        assert_eq!(parse_symref_head(""), None);
        assert_eq!(parse_symref_head("warning: redirecting\nnot a line\n"), None);
    }
}
