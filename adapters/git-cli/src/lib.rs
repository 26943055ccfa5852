//! The Git port on the `git` command line: `git ls-remote` answers where a branch points without cloning.

use gradient_domain::ports::git::{Git, GitError};
use std::time::Duration;
use tokio::process::Command;

/// How long asking a remote may take.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default)]
pub struct GitCli;

impl Git for GitCli {
    async fn head(&self, repository: &str, branch: Option<&str>) -> Result<Option<String>, GitError> {
        let reference = match branch {
            Some(b) => format!("refs/heads/{b}"),
            None => "HEAD".to_owned(),
        };
        let mut cmd = Command::new("git");
        cmd.args(["ls-remote", "--", repository, &reference])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .kill_on_drop(true);
        let out = tokio::time::timeout(TIMEOUT, cmd.output())
            .await
            .map_err(|_| GitError::Unavailable(format!("{repository}: no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(GitError::Unavailable(format!("{repository}: {}", err.trim())));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .find(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn heads_of_branches_and_the_default_branch() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("f"), "1").unwrap();
        git(dir.path(), &["add", "f"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        let one = git(dir.path(), &["rev-parse", "HEAD"]);
        let url = format!("file://{}", dir.path().display());
        assert_eq!(
            GitCli.head(&url, Some("main")).await.unwrap().as_deref(),
            Some(one.as_str())
        );
        assert_eq!(GitCli.head(&url, None).await.unwrap().as_deref(), Some(one.as_str()));
        assert_eq!(GitCli.head(&url, Some("nope")).await.unwrap(), None);
        std::fs::write(dir.path().join("f"), "2").unwrap();
        git(dir.path(), &["commit", "-q", "-am", "two"]);
        let two = git(dir.path(), &["rev-parse", "HEAD"]);
        assert_eq!(
            GitCli.head(&url, Some("main")).await.unwrap().as_deref(),
            Some(two.as_str())
        );
        assert!(GitCli.head("file:///nonexistent/repo", None).await.is_err());
    }
}
