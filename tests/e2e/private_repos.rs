//! Private repositories over SSH: Debian's OpenSSH `sshd`, started by the test on loopback with its own host
//! key and an `authorized_keys` holding the organization's deploy key (read from the API), serves a git
//! repository with a flake. The server reads its branch head with the key (`git ls-remote`) and the worker
//! fetches it with the key carried by the job; after a rotation the old key is refused, with a clear error, until
//! the new public key is authorized. The private key appears in no log, no answer, no leftover file and not
//! unsealed in the database.

use crate::harness::{Client, Server, free_port};
use crate::pipeline::{git, script_repo, start_worker_with, wait_for_completed, wait_for_end};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Base64 of `openssh-key-v1\0`: the start of every OpenSSH private key file's body.
const PRIVATE_KEY_MAGIC: &str = "b3BlbnNzaC1rZXktdjEA";
const PRIVATE_KEY_ARMOR: &str = "OPENSSH PRIVATE KEY";

/// `sshd -D` on 127.0.0.1:`port`, configured from a directory of its own; killed when dropped.
struct Sshd {
    child: Child,
    log: PathBuf,
    authorized_keys: PathBuf,
}

impl Sshd {
    fn start(dir: &Path, port: u16) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let host_key = dir.join("host_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .output()
            .expect("ssh-keygen runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, "").expect("authorized_keys");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized_keys.display(),
                dir.join("sshd.pid").display(),
            ),
        )
        .expect("sshd_config");
        // sshd wants its privilege separation directory, which Debian's init scripts make.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log = dir.join("sshd.log");
        let child = crate::harness::tied("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .expect("sshd runs (openssh-server, installed by scripts/test)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            log,
            authorized_keys,
        }
    }

    fn authorize(&self, public_key: &str) {
        std::fs::write(&self.authorized_keys, format!("{public_key}\n")).expect("authorized_keys");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.child);
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            found.push(path);
        }
    }
    found
}

fn no_private_key_in(what: &str, text: &str) {
    for needle in [PRIVATE_KEY_ARMOR, PRIVATE_KEY_MAGIC] {
        assert!(!text.contains(needle), "{what} shows a private key:\n{text}");
    }
}

#[tokio::test]
async fn a_repository_served_over_ssh_is_fetched_with_the_organizations_deploy_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    // The server's and the worker's temporary files (the key files among them) go here, to be checked.
    let tmp = root.join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let tmp_var = tmp.to_str().expect("path").to_owned();

    let (work, first) = script_repo(root, "work", "hello", "echo hello > $out");
    let work = PathBuf::from(work.trim_start_matches("file://"));
    let bare = root.join("srv/demo.git");
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("path"),
            bare.to_str().expect("path"),
        ],
    );
    let port = free_port();
    // Apart from the server's and the worker's files, which are searched for private keys at the end (sshd's
    // host key is one).
    let sshd_dir = tempfile::tempdir().expect("tempdir");
    let sshd = Sshd::start(sshd_dir.path(), port);
    let repository = format!("ssh://root@127.0.0.1:{port}{}", bare.display());

    let server = Server::start(root, &[("TMPDIR", tmp_var.as_str())]).await;
    let mut c = Client::new(&server);
    c.register_with_key("ci").await;
    c.acme_with_cache().await;
    let mut answers: Vec<Value> = Vec::new();

    // The key exists from the organization's creation, and reads the same twice.
    let key = c.ok(Method::GET, "/orgs/acme/ssh-key", None).await;
    assert_eq!(c.ok(Method::GET, "/orgs/acme/ssh-key", None).await, key);
    let public_key = key["public_key"].as_str().expect("public key").to_owned();
    assert!(public_key.starts_with("ssh-ed25519 AAAA"), "{key}");
    assert!(public_key.ends_with(" gradient-acme"), "{key}");
    // What ssh-keygen makes of the line is what the API says its fingerprint is.
    let line = root.join("acme.pub");
    std::fs::write(&line, format!("{public_key}\n")).expect("key file");
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&line)
        .output()
        .expect("ssh-keygen");
    let fingerprint = key["fingerprint"].as_str().expect("fingerprint").to_owned();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&fingerprint),
        "{key} vs {}",
        String::from_utf8_lossy(&out.stdout)
    );
    answers.push(key.clone());
    sshd.authorize(&public_key);

    // On its branch, so the commits given below are fetched by that ref (Nix 2.8 looks for `master` otherwise).
    let project = json!({"name": "demo", "repository": repository, "branch": "main", "wildcard": "packages.*.*"});
    answers.push(c.ok(Method::POST, "/projects/acme", Some(project)).await);
    let worker = start_worker_with(&c, root, &server.url, "w", &[("TMPDIR", tmp_var.as_str())]).await;

    // No commit given: the server asks the repository over SSH, with the key, where its default branch is.
    let e = c.ok(Method::POST, "/projects/acme/demo/evaluate", None).await;
    assert_eq!(e["commit"].as_str(), Some(first.as_str()), "{e}");
    let id = e["id"].as_str().expect("id").to_owned();
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    assert_eq!(done["builds"][0]["status"], "Completed", "{done}");
    answers.push(done);
    // sshd saw the organization's key, by its fingerprint.
    assert!(
        sshd.log_text().contains("Accepted publickey for root from 127.0.0.1"),
        "{}",
        sshd.log_text()
    );
    assert!(sshd.log_text().contains(&fingerprint), "{}", sshd.log_text());

    // A rotation: the repository still holds the old public key, so the new key is refused. A new commit, so
    // that Nix cannot answer from its own cache of the first fetch.
    std::fs::write(work.join("more"), "x").expect("write");
    git(&work, &["add", "more"]);
    git(&work, &["commit", "-q", "-m", "more"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", bare.to_str().expect("path"), "main"]);
    let rotated = c.ok(Method::POST, "/orgs/acme/ssh-key/rotate", None).await;
    assert_ne!(rotated["public_key"], key["public_key"]);
    assert_eq!(c.ok(Method::GET, "/orgs/acme/ssh-key", None).await, rotated);
    answers.push(rotated.clone());

    // The server's own read of the branch head is refused: 422, without git's words.
    let (status, refused) = c.call(Method::POST, "/projects/acme/demo/evaluate", None).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["code"], "repository_unreachable", "{refused}");
    answers.push(refused);
    // The worker's fetch is refused: the evaluation fails saying why.
    let e = c
        .ok(
            Method::POST,
            "/projects/acme/demo/evaluate",
            Some(json!({"commit": second})),
        )
        .await;
    let id = e["id"].as_str().expect("id").to_owned();
    let failed = wait_for_end(&c, &server, &id).await;
    assert_eq!(failed["evaluation"]["status"], "Failed", "{failed}");
    let errors = failed["evaluation"]["errors"].to_string();
    assert!(
        errors.contains("Permission denied (publickey)"),
        "the evaluation says the repository refused the key: {failed}"
    );
    answers.push(failed);

    // Once the new public key is in the repository's authorized keys, the same commit is fetched and built.
    sshd.authorize(rotated["public_key"].as_str().expect("public key"));
    let e = c
        .ok(
            Method::POST,
            "/projects/acme/demo/evaluate",
            Some(json!({"commit": second})),
        )
        .await;
    let id = e["id"].as_str().expect("id").to_owned();
    answers.push(wait_for_completed(&c, &server, &id, &worker).await);
    answers.push(c.ok(Method::GET, "/orgs/acme/audit-log", None).await);

    // Nowhere: no answer, no log, no leftover key file, nothing unsealed in the database.
    for a in &answers {
        no_private_key_in("an answer", &a.to_string());
    }
    let (server_log, worker_log) = (server.log.clone(), worker.log.clone());
    worker.kill();
    server.stop();
    no_private_key_in(
        "the server's log",
        &std::fs::read_to_string(server_log).unwrap_or_default(),
    );
    no_private_key_in(
        "the worker's log",
        &std::fs::read_to_string(worker_log).unwrap_or_default(),
    );
    for needle in [PRIVATE_KEY_ARMOR, PRIVATE_KEY_MAGIC] {
        let found = files_containing(root, needle);
        assert!(found.is_empty(), "files hold a private key: {found:?}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("gradient-git-"))
        .collect();
    assert!(leftovers.is_empty(), "key directories left behind: {leftovers:?}");
}
