//! A repository credential made usable by a `git` (or a Nix that runs git) for one call, then removed.
//!
//! * An SSH key is written to a file readable only by this user (0600) in a fresh directory of its own
//!   (0700), and `GIT_SSH_COMMAND` is set to an `ssh` that offers that key and no other
//!   (`-i <file> -o IdentitiesOnly=yes`, no agent), in batch mode (no prompt). Host keys: a host the machine
//!   already knows (`~/.ssh/known_hosts`, `/etc/ssh/ssh_known_hosts`) must present the key it is known by; an
//!   unknown host is accepted and recorded only in a `known_hosts` file in the same directory
//!   (`StrictHostKeyChecking=accept-new`), which goes with it. A fetch is of a commit named by its hash, which
//!   git verifies, so an impostor host cannot change what is built; pinning a forge's host key is the operator's
//!   (add it to the system's `known_hosts`).
//! * An https token becomes an `Authorization: Basic` header (`x-access-token:<token>`) that git sends to that
//!   repository's origin only (`http.<origin>/.extraHeader`, through `GIT_CONFIG_COUNT`), never to other
//!   hosts (a flake's other inputs) and never on a command line.
//!
//! Dropping the [`GitAccess`] deletes the directory and the key in it.

use base64::Engine;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

/// The environment a git process needs to use a credential, and the files behind it (deleted on drop).
pub struct GitAccess {
    env: Vec<(OsString, OsString)>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for GitAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GitAccess(…)")
    }
}

impl GitAccess {
    /// Nothing to add: the URL alone.
    pub fn none() -> Self {
        Self {
            env: Vec::new(),
            _dir: None,
        }
    }

    /// The private key file `private_key` (OpenSSH format) for `ssh`, with `ssh_options` (such as
    /// `-o HostName=…`, shell-safe) before the key's own.
    pub fn ssh_key(private_key: &str, ssh_options: &str) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gradient-git-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let path = dir.path();
        let text = path
            .to_str()
            .filter(|p| !p.contains('\''))
            .ok_or_else(|| std::io::Error::other("the temporary directory's path cannot be quoted for ssh"))?
            .to_owned();
        let key = path.join("key");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?;
        file.write_all(private_key.as_bytes())?;
        if !private_key.ends_with('\n') {
            file.write_all(b"\n")?;
        }
        file.sync_all()?;
        let command = ssh_command(&text, ssh_options);
        Ok(Self {
            env: vec![
                ("GIT_SSH_COMMAND".into(), command.into()),
                ("GIT_SSH_VARIANT".into(), "ssh".into()),
            ],
            _dir: Some(dir),
        })
    }

    /// `token` sent as HTTP basic credentials to `origin` (`https://host[:port]`) only. Entries this process's
    /// own environment gives git (`GIT_CONFIG_COUNT`, e.g. an operator's `insteadOf`) are kept: the header is
    /// one more.
    pub fn https_token(origin: &str, token: &str) -> Self {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
        let n: u32 = std::env::var("GIT_CONFIG_COUNT")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Self {
            env: vec![
                ("GIT_CONFIG_COUNT".into(), (n + 1).to_string().into()),
                (
                    format!("GIT_CONFIG_KEY_{n}").into(),
                    format!("http.{}/.extraHeader", origin.trim_end_matches('/')).into(),
                ),
                (
                    format!("GIT_CONFIG_VALUE_{n}").into(),
                    format!("Authorization: Basic {basic}").into(),
                ),
            ],
            _dir: None,
        }
    }

    /// `token` for the https repository `repository` (`https://host/…` or `git+https://…`), sent to its origin
    /// only; `None` when the URL is not https.
    pub fn https_token_for(repository: &str, token: &str) -> Option<Self> {
        let url = repository.trim().strip_prefix("git+").unwrap_or(repository.trim());
        let rest = url.strip_prefix("https://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        (!host.is_empty()).then(|| Self::https_token(&format!("https://{host}"), token))
    }

    /// The variables to set on the process.
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// Whether this adds anything (a credential) to the URL.
    pub fn is_some(&self) -> bool {
        !self.env.is_empty()
    }
}

/// The `ssh` command git runs with the key in `dir` (a path without `'`).
fn ssh_command(dir: &str, ssh_options: &str) -> String {
    let mut command = "ssh -o BatchMode=yes".to_owned();
    if !ssh_options.is_empty() {
        command.push(' ');
        command.push_str(ssh_options);
    }
    command.push_str(&format!(
        " -i '{dir}/key' -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=accept-new \
         -o 'UserKnownHostsFile={dir}/known_hosts ~/.ssh/known_hosts'"
    ));
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_file_is_private_and_goes_with_the_value() {
        let access = GitAccess::ssh_key("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n", "-o Port=22").unwrap();
        let command = access
            .env()
            .iter()
            .find(|(k, _)| k == "GIT_SSH_COMMAND")
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap();
        assert!(command.starts_with("ssh -o BatchMode=yes -o Port=22 -i '"), "{command}");
        assert!(command.contains("IdentitiesOnly=yes"));
        assert!(
            !command.contains("secret"),
            "the key is in a file, never in the command"
        );
        let dir = command.split('\'').nth(1).unwrap().trim_end_matches("/key").to_owned();
        let key = std::path::Path::new(&dir).join("key");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(std::fs::read_to_string(&key).unwrap().contains("secret"));
        drop(access);
        assert!(!key.exists() && !std::path::Path::new(&dir).exists(), "deleted on drop");
    }

    #[test]
    fn a_token_is_a_header_for_its_origin_only() {
        let access = GitAccess::https_token("https://github.com/", "ghs_abc");
        let env: Vec<(String, String)> = access
            .env()
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            env,
            [
                ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
                (
                    "GIT_CONFIG_KEY_0".to_owned(),
                    "http.https://github.com/.extraHeader".to_owned()
                ),
                // base64("x-access-token:ghs_abc")
                (
                    "GIT_CONFIG_VALUE_0".to_owned(),
                    "Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hzX2FiYw==".to_owned()
                ),
            ]
        );
        assert!(!GitAccess::none().is_some());
        let scoped = GitAccess::https_token_for("git+https://user@ghe.example.com:8443/a/b.git", "t").unwrap();
        assert_eq!(scoped.env()[1].1, "http.https://ghe.example.com:8443/.extraHeader");
        assert!(GitAccess::https_token_for("ssh://git@github.com/a/b", "t").is_none());
    }
}
