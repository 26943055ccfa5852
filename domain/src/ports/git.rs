//! Reading where a repository's branch points, for polling.

use std::future::Future;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// The repository could not be reached or read (network, authentication, not a repository).
    #[error("git: {0}")]
    Unavailable(String),
}

pub trait Git: Send + Sync + 'static {
    /// The full commit hash the branch points at (the remote's default branch when `branch` is `None`);
    /// `Ok(None)` when the repository has no such branch.
    fn head(
        &self,
        repository: &str,
        branch: Option<&str>,
    ) -> impl Future<Output = Result<Option<String>, GitError>> + Send;
}
