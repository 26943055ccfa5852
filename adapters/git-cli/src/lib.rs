//! The Git port on the `git` command line: `git ls-remote` answers where a branch points without cloning, and
//! `git ls-remote --symref <url> HEAD` which branch is the default one (smart and plain "dumb" HTTP alike).
//!
//! The repository is a user's URL, so git is held to the server's [`NetworkPolicy`]:
//! - only the transports https, http, ssh and git are allowed (`file` too with `allow_local`), through
//!   `GIT_ALLOW_PROTOCOL` and `protocol.allow=never`, with `GIT_PROTOCOL_FROM_USER=0`: no `ext::`, no
//!   `fd::`, no remote helpers;
//! - the host is resolved first and every address it resolves to must be permitted; for http(s) git (curl)
//!   is pinned to exactly those addresses (`http.curloptResolve`), so it cannot resolve the name again to
//!   something else, and redirects are not followed (`http.followRedirects=false`); ssh connects to the
//!   first checked address (`-o HostName=<address>`), still matching the name in the operator's ssh
//!   configuration and `known_hosts` (`-o HostKeyAlias=<name>`). git:// connects by name after the check.

use gradient_domain::ports::git::{self, Git, GitError, RemoteHead, RepositoryCredential};
use gradient_domain::reach::{self, Host, NetworkPolicy, Transport};
use gradient_process::git_access::GitAccess;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::process::Command;

/// How long asking a remote may take (resolving its name, then running git).
const TIMEOUT: Duration = Duration::from_secs(30);

/// How many git processes this server process runs at once (the poller and `evaluate` without a commit
/// together): callers asking the API for many evaluations at once wait their turn instead of filling the
/// machine with git processes.
const MAX_RUNNING: usize = 16;
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_RUNNING);

#[derive(Clone, Debug, Default)]
pub struct GitCli {
    policy: NetworkPolicy,
}

impl GitCli {
    /// Git held to `policy` (see the module's documentation).
    pub fn new(policy: NetworkPolicy) -> Self {
        Self { policy }
    }

    /// The addresses `host` resolves to, all of them permitted; an error naming the first that is not.
    async fn resolve(&self, repository: &str, host: &str, port: u16) -> Result<Vec<IpAddr>, GitError> {
        let found: Vec<SocketAddr> = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                GitError::Unavailable(format!(
                    "{repository}: {host} not resolved within {}s",
                    TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| GitError::Unavailable(format!("{repository}: cannot resolve {host}: {e}")))?
            .collect();
        if found.is_empty() {
            return Err(GitError::Unavailable(format!("{repository}: {host} has no address")));
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for a in found {
            self.policy
                .check(a.ip())
                .map_err(|why| GitError::Unavailable(format!("{repository}: {host} resolves to {}: {why}", a.ip())))?;
            if !addresses.contains(&a.ip()) {
                addresses.push(a.ip());
            }
        }
        Ok(addresses)
    }
}

/// Where git must connect, so that it does not resolve the name again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pin {
    /// curl's `host:port:address[,address]` (`http.curloptResolve`).
    Curl(String),
    /// ssh to `address`, known as `name`.
    Ssh { name: String, address: IpAddr },
}

impl Pin {
    /// The pin for a remote whose host `name` resolved to `addresses` (all checked), if its transport takes one.
    fn of(transport: Transport, name: &str, port: u16, addresses: &[IpAddr]) -> Option<Pin> {
        match transport {
            Transport::Https | Transport::Http => {
                let list: Vec<String> = addresses
                    .iter()
                    .map(|a| match a {
                        IpAddr::V6(v6) => format!("[{v6}]"),
                        v4 => v4.to_string(),
                    })
                    .collect();
                Some(Pin::Curl(format!("{name}:{port}:{}", list.join(","))))
            }
            Transport::Ssh => addresses.first().map(|&address| Pin::Ssh {
                name: name.to_owned(),
                address,
            }),
            Transport::Git | Transport::File => None,
        }
    }
}

impl GitCli {
    /// `git ls-remote` restricted to the allowed transports, without redirects, pinned when given.
    #[cfg(test)]
    fn ls_remote(&self, url: &str, reference: &str, pin: Option<&Pin>) -> Command {
        self.ls_remote_with(&[], url, reference, pin, &GitAccess::none())
    }

    /// [`Self::ls_remote`] with `options` (such as `--symref`) before the URL, and the repository's credential
    /// (`access`, made with [`ssh_options`] for an SSH key).
    fn ls_remote_with(
        &self,
        options: &[&str],
        url: &str,
        reference: &str,
        pin: Option<&Pin>,
        access: &GitAccess,
    ) -> Command {
        let mut protocols = vec!["https", "http", "ssh", "git"];
        if self.policy.allow_local {
            protocols.push("file");
        }
        gradient_process::reset_for_children();
        let mut cmd = Command::new("git");
        cmd.args(["-c", "protocol.allow=never", "-c", "http.followRedirects=false"]);
        for p in &protocols {
            cmd.args(["-c", &format!("protocol.{p}.allow=always")]);
        }
        if let Some(Pin::Curl(r)) = pin {
            cmd.args(["-c", &format!("http.curloptResolve={r}")]);
        }
        let ssh = match ssh_options(pin).as_str() {
            "" => "ssh -o BatchMode=yes".to_owned(),
            o => format!("ssh -o BatchMode=yes {o}"),
        };
        cmd.arg("ls-remote")
            .args(options)
            .args(["--", url, reference])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_SSH_COMMAND", ssh)
            .env("GIT_SSH_VARIANT", "ssh")
            .env("GIT_ALLOW_PROTOCOL", protocols.join(":"))
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .envs(access.env().iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        cmd
    }
}

/// The options that send ssh to the pinned address under the name's host key. The name and address come from
/// the checked URL (letters, digits, `-`, `_`, `.`) and the resolver, so they are safe in the shell command git
/// runs for ssh.
fn ssh_options(pin: Option<&Pin>) -> String {
    match pin {
        Some(Pin::Ssh { name, address }) => format!("-o HostName={address} -o HostKeyAlias={name}"),
        _ => String::new(),
    }
}

/// What git needs to use `credential` for `repository` this once (an SSH key only for SSH URLs, a token only
/// for https ones); the files go when it is dropped.
fn access_for(
    repository: &str,
    transport: Transport,
    credential: Option<&RepositoryCredential>,
    pin: Option<&Pin>,
) -> Result<GitAccess, GitError> {
    Ok(match (credential, transport) {
        (Some(RepositoryCredential::SshKey { private_key }), Transport::Ssh) => {
            GitAccess::ssh_key(private_key, &ssh_options(pin))
                .map_err(|e| GitError::Unavailable(format!("{repository}: cannot write the SSH key: {e}")))?
        }
        (Some(RepositoryCredential::HttpsToken { token }), Transport::Https) => {
            GitAccess::https_token_for(repository, token).unwrap_or_else(GitAccess::none)
        }
        _ => GitAccess::none(),
    })
}

impl GitCli {
    /// Runs `git ls-remote [options] <repository> <reference>` once the repository passed the network policy
    /// (checked, resolved and pinned); answers its output.
    async fn ask(
        &self,
        repository: &str,
        options: &[&str],
        reference: &str,
        credential: Option<&RepositoryCredential>,
    ) -> Result<String, GitError> {
        let remote = reach::parse_remote(repository)
            .ok_or_else(|| GitError::Unavailable(format!("'{repository}' is not a repository URL")))?;
        reach::check_remote(&remote, &self.policy)
            .map_err(|why| GitError::Unavailable(format!("{repository}: {why}")))?;
        // One time limit for everything: waiting for a turn, resolving the name, and git itself. A turn is taken
        // before resolving, so names that never resolve cannot hold more than the limit's worth of lookups.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let late = || GitError::Unavailable(format!("{repository}: no answer within {}s", TIMEOUT.as_secs()));
        let _turn = tokio::time::timeout_at(deadline, RUNNING.acquire())
            .await
            .map_err(|_| GitError::Unavailable(format!("{repository}: too many git requests at once; try again")))?
            .map_err(|_| GitError::Unavailable("the git limit is closed".into()))?;
        let mut pin = None;
        if let Host::Name(name) = &remote.host {
            let addresses = tokio::time::timeout_at(deadline, self.resolve(repository, name, remote.port))
                .await
                .map_err(|_| late())??;
            pin = Pin::of(remote.transport, name, remote.port, &addresses);
        }
        let access = access_for(repository, remote.transport, credential, pin.as_ref())?;
        let mut cmd = self.ls_remote_with(options, &remote.git_url, reference, pin.as_ref(), &access);
        let out = tokio::time::timeout_at(deadline, cmd.output())
            .await
            .map_err(|_| late())?
            .map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(GitError::Unavailable(format!("{repository}: {}", err.trim())));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Git for GitCli {
    async fn head(
        &self,
        repository: &str,
        branch: Option<&str>,
        credential: Option<&RepositoryCredential>,
    ) -> Result<Option<String>, GitError> {
        let reference = match branch {
            Some(b) => format!("refs/heads/{b}"),
            None => "HEAD".to_owned(),
        };
        let text = self.ask(repository, &[], &reference, credential).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .find(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_owned))
    }

    async fn remote_head(
        &self,
        repository: &str,
        credential: Option<&RepositoryCredential>,
    ) -> Result<Option<RemoteHead>, GitError> {
        let text = self.ask(repository, &["--symref"], "HEAD", credential).await?;
        Ok(git::parse_symref_head(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs git in `dir` as a test author; answers what it printed.
    pub(super) fn git(dir: &std::path::Path, args: &[&str]) -> String {
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
        let cli = GitCli::new(NetworkPolicy::ALLOW_ALL);
        assert_eq!(
            cli.head(&url, Some("main"), None).await.unwrap().as_deref(),
            Some(one.as_str())
        );
        assert_eq!(cli.head(&url, None, None).await.unwrap().as_deref(), Some(one.as_str()));
        assert_eq!(cli.head(&url, Some("nope"), None).await.unwrap(), None);
        std::fs::write(dir.path().join("f"), "2").unwrap();
        git(dir.path(), &["commit", "-q", "-am", "two"]);
        let two = git(dir.path(), &["rev-parse", "HEAD"]);
        assert_eq!(
            cli.head(&url, Some("main"), None).await.unwrap().as_deref(),
            Some(two.as_str())
        );
        assert!(cli.head("file:///nonexistent/repo", None, None).await.is_err());
    }
}

#[cfg(test)]
mod default_branch {
    use super::tests::git;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A bare repository whose default branch is `trunk` (neither `main` nor `master`), with one commit on it
    /// and another branch; answers the bare repository's path and the commit of `trunk`.
    fn bare_repo(root: &std::path::Path) -> (std::path::PathBuf, String) {
        let work = root.join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "trunk"]);
        std::fs::write(work.join("f"), "1").unwrap();
        git(&work, &["add", "f"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        let trunk = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "-b", "other"]);
        git(&work, &["commit", "-q", "--allow-empty", "-m", "two"]);
        git(&work, &["checkout", "-q", "trunk"]);
        let bare = root.join("srv").join("r.git");
        git(
            root,
            &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()],
        );
        git(&bare, &["update-server-info"]);
        (bare, trunk)
    }

    /// A plain static file server over `root` on loopback (no git on the server side: "dumb" HTTP); answers
    /// its port.
    async fn static_files(root: std::path::PathBuf) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let root = root.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = request.split_whitespace().nth(1).unwrap_or("/");
                    let path = path.split('?').next().unwrap_or_default().trim_start_matches('/');
                    let file = (!path.contains(".."))
                        .then(|| std::fs::read(root.join(path)).ok())
                        .flatten();
                    let reply = match file {
                        Some(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = socket.write_all(&reply).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn the_default_branch_is_what_head_names_on_a_local_repository() {
        let dir = tempfile::tempdir().unwrap();
        let (bare, trunk) = bare_repo(dir.path());
        let cli = GitCli::new(NetworkPolicy::ALLOW_ALL);
        let head = cli
            .remote_head(&format!("file://{}", bare.display()), None)
            .await
            .unwrap()
            .expect("a head");
        assert_eq!(
            head,
            RemoteHead {
                branch: Some("trunk".into()),
                commit: trunk
            }
        );
        let empty = dir.path().join("empty.git");
        git(
            dir.path(),
            &["init", "-q", "--bare", "-b", "main", empty.to_str().unwrap()],
        );
        assert_eq!(
            cli.remote_head(&format!("file://{}", empty.display()), None)
                .await
                .unwrap(),
            None
        );
        assert!(cli.remote_head("file:///nonexistent/repo", None).await.is_err());
        // The policy holds here too.
        let refused = GitCli::default()
            .remote_head(&format!("file://{}", bare.display()), None)
            .await
            .expect_err("local repositories are refused by default");
        assert!(refused.to_string().contains("not allowed"), "{refused}");
    }

    #[tokio::test]
    async fn the_default_branch_is_read_from_a_plain_static_http_server() {
        let dir = tempfile::tempdir().unwrap();
        let (_, trunk) = bare_repo(dir.path());
        let port = static_files(dir.path().join("srv")).await;
        let cli = GitCli::new(NetworkPolicy::ALLOW_ALL);
        let url = format!("http://127.0.0.1:{port}/r.git");
        assert_eq!(
            cli.remote_head(&url, None).await.unwrap(),
            Some(RemoteHead {
                branch: Some("trunk".into()),
                commit: trunk.clone()
            })
        );
        assert_eq!(cli.head(&url, Some("trunk"), None).await.unwrap(), Some(trunk));
        assert!(
            cli.remote_head(&format!("http://127.0.0.1:{port}/missing.git"), None)
                .await
                .is_err()
        );
    }
}

#[cfg(test)]
mod policy {
    use super::*;

    #[tokio::test]
    async fn local_repositories_are_refused_before_git_runs() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let git = GitCli::default();
        for url in [
            format!("file://{}", dir.path().display()),
            format!("git+file://{}", dir.path().display()),
            "http://127.0.0.1:9/a.git".to_owned(),
            "http://[::1]:9/a.git".to_owned(),
            "http://169.254.169.254/a.git".to_owned(),
            "git@127.0.0.1:a/b.git".to_owned(),
            "http://localhost:9/a.git".to_owned(),
        ] {
            let e = git.head(&url, None, None).await.expect_err(&url).to_string();
            assert!(e.contains("not allowed"), "{url}: {e}");
        }
        for url in ["ext::sh -c true", "fd::3"] {
            assert!(git.head(url, None, None).await.is_err(), "{url}");
        }
    }

    #[tokio::test]
    async fn names_are_judged_by_the_addresses_they_resolve_to() {
        let git = GitCli::default();
        let e = git
            .resolve("r", "localhost", 80)
            .await
            .expect_err("localhost resolves to loopback");
        assert!(e.to_string().contains("loopback"), "{e}");
        let allowed = GitCli::new(NetworkPolicy::ALLOW_ALL);
        let addresses = allowed.resolve("r", "localhost", 80).await.expect("allowed");
        assert!(addresses.iter().all(IpAddr::is_loopback), "{addresses:?}");
    }

    #[tokio::test]
    async fn git_itself_refuses_the_file_transport_when_local_is_not_allowed() {
        // Even if a URL got past the check, the git the adapter runs would not open a local repository.
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let url = format!("file://{}", dir.path().display());
        let out = GitCli::default().ls_remote(&url, "HEAD", None).output().await.unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("transport 'file' not allowed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod pinning {
    use super::*;

    /// A loopback listener that answers every connection with a 404; answers its port and a receiver of
    /// the request lines it saw.
    async fn listener() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let first = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(first);
                let _ = socket
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn git_connects_to_the_pinned_address_not_to_what_the_name_resolves_to() {
        let (port, mut seen) = listener().await;
        // `.invalid` never resolves: git reaches the listener only through the pin.
        let url = format!("http://gradient-pin.invalid:{port}/a.git");
        let pin = Pin::of(
            Transport::Http,
            "gradient-pin.invalid",
            port,
            &["127.0.0.1".parse().unwrap()],
        );
        let out = GitCli::default()
            .ls_remote(&url, "HEAD", pin.as_ref())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "the listener is no git server");
        let request = seen.try_recv().expect("git connected to the pinned address");
        assert!(request.starts_with("GET /a.git/info/refs"), "{request}");
    }

    #[tokio::test]
    async fn ssh_connects_to_the_pinned_address() {
        if std::process::Command::new("ssh").arg("-V").output().is_err() {
            eprintln!("no ssh client: skipped");
            return;
        }
        let (port, mut seen) = listener().await;
        let url = format!("ssh://git@gradient-pin.invalid:{port}/a.git");
        let pin = Pin::of(
            Transport::Ssh,
            "gradient-pin.invalid",
            port,
            &["127.0.0.1".parse().unwrap()],
        );
        let out = GitCli::default()
            .ls_remote(&url, "HEAD", pin.as_ref())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "the listener is no ssh server");
        assert!(seen.try_recv().is_ok(), "ssh connected to the pinned address");
    }

    #[tokio::test]
    async fn an_allowed_local_name_is_resolved_checked_and_reached() {
        let (port, mut seen) = listener().await;
        let cli = GitCli::new(NetworkPolicy::ALLOW_ALL);
        assert!(
            cli.head(&format!("http://localhost:{port}/a.git"), None, None)
                .await
                .is_err()
        );
        assert!(seen.try_recv().is_ok(), "the allowed repository was reached");
    }
}

#[cfg(test)]
mod ssh_pinning {
    use super::*;

    #[test]
    fn ssh_is_sent_to_the_checked_address_under_the_names_host_key() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            Pin::of(Transport::Https, "git.example.com", 443, &[v4, v6]),
            Some(Pin::Curl("git.example.com:443:192.0.2.7,[2001:db8::7]".into()))
        );
        assert_eq!(Pin::of(Transport::Git, "git.example.com", 9418, &[v4]), None);
        let pin = Pin::of(Transport::Ssh, "git.example.com", 22, &[v6, v4]);
        let cmd = GitCli::default().ls_remote("git@git.example.com:a/b.git", "HEAD", pin.as_ref());
        let ssh = cmd
            .as_std()
            .get_envs()
            .find(|(k, _)| *k == "GIT_SSH_COMMAND")
            .and_then(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned());
        assert_eq!(
            ssh.as_deref(),
            Some("ssh -o BatchMode=yes -o HostName=2001:db8::7 -o HostKeyAlias=git.example.com")
        );
    }
}

#[cfg(test)]
mod deploy_keys {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn openssh_reads_the_generated_private_key_as_the_public_keys_pair() {
        if std::process::Command::new("ssh-keygen").arg("-?").output().is_err() {
            eprintln!("no ssh-keygen: skipped");
            return;
        }
        let key = gradient_domain::deploy_key::generate("acme");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, &key.private).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // `-y` prints the public key with the file's comment.
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), key.public);
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&file)
            .output()
            .unwrap();
        let fingerprint = gradient_domain::deploy_key::fingerprint(&key.public).unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&fingerprint),
            "{} vs {fingerprint}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
