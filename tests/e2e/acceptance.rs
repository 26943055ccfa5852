//! The CI loop as a user meets it, with real parts only: a git repository served over HTTP on loopback, a signed
//! Gitea push webhook, a real `gradient-worker` building with Nix, the signed binary cache, a fake Gitea status
//! API on loopback, and a fresh Nix store substituting the outputs with signatures required. A second push that
//! changes one leaf rebuilds only what depends on it.

use crate::harness::{Client, Server};
use crate::hooks::{deliver, hmac_hex};
use crate::nix::substitute;
use crate::pipeline::{git, start_worker, wait_for_end};
use crate::statuses::FakeForge;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The flake: a chain a ← b ← c, a derivation with two outputs, a failing check and a check depending on it.
/// `leaf` is what `a` prints, so changing it changes a, b and c and nothing else.
fn flake(nonce: &str, leaf: &str) -> String {
    r#"{
  outputs = { self }: let
    system = "x86_64-linux";
    d = attrs: derivation ({ inherit system; builder = "/bin/sh"; nonce = "NONCE"; } // attrs);
    a = d { name = "a"; args = [ "-c" "echo building a; echo LEAF > $out" ]; };
    b = d { name = "b"; dep = a; args = [ "-c" "echo building b; cat $dep > $out; echo b >> $out" ]; };
    c = d { name = "c"; dep = b; args = [ "-c" "echo building c; cat $dep > $out; echo c >> $out" ]; };
    two = d { name = "two"; outputs = [ "out" "dev" ]; args = [ "-c" "echo x > $out; echo y > $dev" ]; };
    fails = d { name = "fails"; args = [ "-c" "echo this check fails on purpose; exit 1" ]; };
    after = d { name = "after"; dep = fails; args = [ "-c" "echo $dep > $out" ]; };
  in {
    packages.${system} = { inherit a b c two; };
    checks.${system} = { inherit fails after; };
  };
}
"#
    .replace("NONCE", nonce)
    .replace("LEAF", leaf)
}

/// A bare repository served by a plain static HTTP server (git's "dumb" HTTP protocol), as a forge would
/// serve it, and the working copy commits are made in.
pub(crate) struct HttpRepo {
    pub(crate) work: std::path::PathBuf,
    pub(crate) bare: std::path::PathBuf,
    pub(crate) url: String,
    server: Child,
}

impl HttpRepo {
    pub(crate) fn start(dir: &Path) -> HttpRepo {
        let work = dir.join("work");
        let served = dir.join("served");
        std::fs::create_dir_all(&work).expect("mkdir");
        std::fs::create_dir_all(&served).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        let bare = served.join("acme").join("demo.git");
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(
            dir,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().expect("path")],
        );
        let port = crate::harness::free_port();
        let server = crate::harness::tied("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(&served)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serves the repository");
        HttpRepo {
            work,
            bare,
            url: format!("http://127.0.0.1:{port}/acme/demo.git"),
            server,
        }
    }

    /// Commits `flake.nix` and pushes it; answers the commit.
    pub(crate) fn push(&self, flake: &str, message: &str) -> String {
        std::fs::write(self.work.join("flake.nix"), flake).expect("flake.nix");
        git(&self.work, &["add", "flake.nix"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", self.bare.to_str().expect("path"), "main"]);
        git(&self.bare, &["update-server-info"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub(crate) async fn wait_until_served(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let info = format!("{}/info/refs", self.url);
        loop {
            if reqwest::get(&info).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "the git HTTP server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for HttpRepo {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.server);
    }
}

/// A Gitea push delivery for `commit` of the repository at `clone_url`, exactly as signed.
fn push_event(commit: &str, before: &str, clone_url: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": commit,
        "repository": {"name": "demo", "full_name": "acme/demo", "clone_url": clone_url, "default_branch": "main"},
        "pusher": {"login": "alice"}
    }))
    .expect("json")
}

/// Sends the signed push and answers the one evaluation it queued.
async fn signed_push(c: &Client, secret: &str, body: &[u8]) -> String {
    let sig = hmac_hex(secret, body);
    let (status, v) = deliver(
        c,
        "/hooks/gitea/acme",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig)],
        body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let queued = v["message"]["queued"].as_array().expect("queued").clone();
    assert_eq!(queued.len(), 1, "{v}");
    queued[0].as_str().expect("id").to_owned()
}

/// The evaluation's builds by derivation name (`a`, `two`, ...).
async fn builds_by_name(c: &Client, id: &str) -> std::collections::BTreeMap<String, Value> {
    let list = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
    list.as_array()
        .expect("builds")
        .iter()
        .map(|b| {
            let path = b["drv_path"].as_str().expect("drv_path");
            let name = path.trim_end_matches(".drv").split_once('-').expect("name").1;
            (name.to_owned(), b.clone())
        })
        .collect()
}

fn times_built(build: &Value) -> usize {
    build["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .filter(|t| t["status"] == "Building")
        .count()
}

/// Waits until every status report of the evaluation is delivered.
async fn statuses_delivered(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
        let statuses = e["statuses"].as_array().cloned().unwrap_or_default();
        if statuses.len() >= 2 && statuses.iter().all(|s| s["delivered"] == true) {
            return e;
        }
        assert!(Instant::now() < deadline, "statuses not delivered: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_signed_push_is_built_cached_reported_and_substituted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = HttpRepo::start(dir.path());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let first = repo.push(&flake(&nonce, "one"), "first");
    repo.wait_until_served().await;

    let forge = FakeForge::start(0).await;
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("alice").await;
    let public_key = c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repo.url, "wildcard": "packages.*.*, checks.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    c.ok(
        Method::PUT,
        "/orgs/acme/forge",
        Some(json!({"forge": "gitea", "api_url": forge.url, "token": "forge-token"})),
    )
    .await;
    let secret = c.ok(Method::POST, "/orgs/acme/webhook-secret", None).await;
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    let worker = start_worker(&c, dir.path(), &server.url, "one").await;

    // The same push with a wrong signature: 401, nothing queued.
    let body = push_event(&first, "0000000000000000000000000000000000000000", &repo.url);
    let wrong = hmac_hex("not-the-secret", &body);
    let (status, v) = deliver(
        &c,
        "/hooks/gitea/acme",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &wrong)],
        &body,
    )
    .await;
    assert_eq!(status, 401, "{v}");
    assert_eq!(v["error"], true, "{v}");
    let none = c.ok(Method::GET, "/projects/acme/demo/evaluations", None).await;
    assert_eq!(none, json!([]), "nothing was queued");

    // The signed push: evaluated, built, failing check reported as a failure on the commit.
    let id = signed_push(&c, &secret, &body).await;
    let done = wait_for_end(&c, &server, &id).await;
    let worker_log = worker.log_text();
    assert_eq!(done["evaluation"]["status"], "Failed", "{done}\n{worker_log}");
    assert_eq!(done["evaluation"]["commit"], first.as_str());
    assert_eq!(done["evaluation"]["trigger"], "Webhook", "{done}");
    let builds = builds_by_name(&c, &id).await;
    assert_eq!(builds.len(), 6, "{done}\n{worker_log}");
    for name in ["a", "b", "c", "two"] {
        assert_eq!(builds[name]["status"], "Completed", "{name}: {builds:?}\n{worker_log}");
    }
    assert_eq!(builds["fails"]["status"], "Failed", "{builds:?}");
    assert_eq!(builds["after"]["status"], "DependencyFailed", "{builds:?}");
    let fails_id = builds["fails"]["id"].as_str().expect("id");
    let (status, log) = c.text(&format!("/builds/{fails_id}/log")).await;
    assert_eq!(status, 200, "{log}");
    assert!(
        log.contains("this check fails on purpose"),
        "the failing build shows its log: {log}"
    );

    let reported = statuses_delivered(&c, &id).await;
    let received = forge.received();
    let states: Vec<&str> = received.iter().filter_map(|r| r.body["state"].as_str()).collect();
    assert_eq!(states, ["pending", "failure"], "{received:?}\n{reported}");
    for r in &received {
        assert_eq!(r.path, format!("/api/v1/repos/acme/demo/statuses/{first}"), "{r:?}");
        assert_eq!(r.authorization, "token forge-token");
        assert_eq!(r.body["target_url"], format!("{}/api/v1/evals/{id}", server.url));
    }

    // A fresh store substitutes every successful output (both outputs of `two`), signatures required.
    let mut outputs = Vec::new();
    for name in ["a", "b", "c", "two"] {
        let build_id = builds[name]["id"].as_str().expect("id");
        let detail = c.ok(Method::GET, &format!("/builds/{build_id}"), None).await;
        for path in detail["derivation"]["outputs"].as_object().expect("outputs").values() {
            outputs.push(path.as_str().expect("path").to_owned());
        }
    }
    assert_eq!(outputs.len(), 5, "{outputs:?}");
    let netrc = dir.path().join("netrc-client");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let fresh = dir.path().join("client-store");
    let cache_url = format!("{}/cache/main", server.url);
    let wanted: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let out = substitute(
        &cache_url,
        fresh.to_str().expect("path"),
        netrc.to_str(),
        &public_key,
        &wanted,
    );
    assert!(
        out.status.success(),
        "substituting {outputs:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &outputs {
        let relative = path.trim_start_matches('/');
        assert!(fresh.join(relative).exists(), "{path} is in the fresh store");
    }

    // A second commit changing the leaf `a`: a, b and c are built again, everything else is reused.
    let second = repo.push(&flake(&nonce, "two"), "second");
    let body = push_event(&second, &first, &repo.url);
    let id2 = signed_push(&c, &secret, &body).await;
    let done2 = wait_for_end(&c, &server, &id2).await;
    assert_eq!(
        done2["evaluation"]["status"], "Failed",
        "the check still fails: {done2}"
    );
    let again = builds_by_name(&c, &id2).await;
    for name in ["a", "b", "c"] {
        assert_ne!(again[name]["id"], builds[name]["id"], "{name} is a new derivation");
        assert_eq!(again[name]["status"], "Completed", "{name}: {again:?}");
        assert_eq!(again[name]["reused"], false, "{name}");
        assert_eq!(times_built(&again[name]), 1, "{name} was built: {again:?}");
    }
    for name in ["two", "fails", "after"] {
        assert_eq!(again[name]["id"], builds[name]["id"], "{name} is the same build");
        assert_eq!(again[name]["reused"], true, "{name}: {again:?}");
        assert_eq!(again[name]["status"], builds[name]["status"], "{name}");
        assert_eq!(
            times_built(&again[name]),
            times_built(&builds[name]),
            "{name} was not built again: {again:?}"
        );
    }
    let build_jobs = worker.log_text().matches("running build job").count();
    // `after` goes out with `fails` when they are handed out in one round (it joins the check it needs); it
    // fails in the queue instead when `fails` has already failed.
    assert!(
        build_jobs == 5 + 3 || build_jobs == 6 + 3,
        "a, b, c, two, fails (and after) for the first push; a, b and c for the second: {build_jobs}\n{}",
        worker.log_text()
    );
    let reported = statuses_delivered(&c, &id2).await;
    let states: Vec<String> = forge
        .received()
        .iter()
        .filter(|r| r.path.ends_with(&second))
        .filter_map(|r| r.body["state"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(states, ["pending", "failure"], "{reported}");

    worker.kill();
    server.stop();
}
