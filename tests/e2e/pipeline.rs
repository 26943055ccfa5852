//! The CI loop end to end with real parts: a git repository holding a flake, a real server, two real
//! `gradient-worker` processes running the real `nix`, and a real Nix client substituting the results.

use crate::harness::{Client, Server, Worker};
use crate::nix::{NIX_CONFIG, nix, substitute};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Commits `flake` as `flake.nix` of a new repository `dir/name`; answers its `file://` URL and the commit.
pub(crate) fn commit_flake(dir: &Path, name: &str, flake: &str) -> (String, String) {
    let repo = dir.join(name);
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("flake.nix"), flake).expect("flake.nix");
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "flake.nix"]);
    git(&repo, &["commit", "-q", "-m", name]);
    (format!("file://{}", repo.display()), git(&repo, &["rev-parse", "HEAD"]))
}

/// A repository whose flake has a chain a ← b ← c, a two-output derivation, a failing check and a check
/// depending on it. A nonce makes every run's derivations new.
pub(crate) fn flake_repo(dir: &Path) -> (String, String) {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let flake = r#"{
  outputs = { self }: let
    system = "x86_64-linux";
    mk = name: script: deps: derivation {
      inherit name system;
      builder = "/bin/sh";
      nonce = "NONCE";
      args = [ "-c" script ];
    } // deps;
    a = derivation { name = "a"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; args = [ "-c" "echo building a; echo a > $out" ]; };
    b = derivation { name = "b"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; dep = a; args = [ "-c" "echo building b; echo $dep > $out" ]; };
    c = derivation { name = "c"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; dep = b; args = [ "-c" "echo building c; echo $dep > $out" ]; };
    two = derivation { name = "two"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; outputs = [ "out" "dev" ]; args = [ "-c" "echo x > $out; echo y > $dev" ]; };
    fails = derivation { name = "fails"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; args = [ "-c" "echo this check fails on purpose; exit 1" ]; };
    after = derivation { name = "after"; inherit system; builder = "/bin/sh"; nonce = "NONCE"; dep = fails; args = [ "-c" "echo $dep > $out" ]; };
  in {
    packages.${system} = { inherit a b c two; };
    checks.${system} = { inherit fails after; };
  };
}
"#
    .replace("NONCE", &nonce);
    commit_flake(dir, "repo", &flake)
}

/// Evaluates project `acme/demo` at `commit`; answers the evaluation's id.
pub(crate) async fn evaluate(c: &Client, commit: &str) -> String {
    let e = c
        .ok(
            Method::POST,
            "/projects/acme/demo/evaluate",
            Some(json!({"commit": commit})),
        )
        .await;
    e["id"].as_str().expect("id").to_owned()
}

pub(crate) async fn wait_for_end(c: &Client, server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let e = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
        let status = e["evaluation"]["status"].as_str().unwrap_or_default().to_owned();
        if ["Completed", "Failed", "Aborted"].contains(&status.as_str()) {
            return e;
        }
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the evaluation did not end: {e}\nserver log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for the evaluation to end and checks that it completed (showing the worker's log if not).
pub(crate) async fn wait_for_completed(c: &Client, server: &Server, id: &str, worker: &Worker) -> Value {
    let done = wait_for_end(c, server, id).await;
    assert_eq!(
        done["evaluation"]["status"],
        "Completed",
        "{done}\n{}",
        worker.log_text()
    );
    done
}

#[tokio::test]
async fn two_workers_evaluate_and_build_a_flake_into_the_signed_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("ci").await;
    let public_key = c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repository, "wildcard": "packages.*.*, checks.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;

    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let mut workers = Vec::new();
    for name in ["one", "two"] {
        let id = uuid::Uuid::new_v4().to_string();
        let r = c
            .ok(Method::POST, "/orgs/acme/workers", Some(json!({"worker_id": id})))
            .await;
        let peers = dir.path().join(format!("peers-{name}"));
        std::fs::write(
            &peers,
            format!(
                "{}:{}\n",
                r["peer_id"].as_str().expect("peer"),
                r["token"].as_str().expect("token")
            ),
        )
        .expect("peers");
        let vars = [
            ("GRADIENT_SERVER_URL", url.as_str()),
            ("GRADIENT_WORKER_ID", id.as_str()),
            ("GRADIENT_PEERS_FILE", peers.to_str().expect("path")),
            ("GRADIENT_CAPABILITIES_FETCH", "true"),
            ("GRADIENT_CAPABILITIES_EVAL", "true"),
            ("GRADIENT_CAPABILITIES_BUILD", "true"),
            ("GRADIENT_MAX_CONCURRENT_BUILDS", "2"),
            ("NIX_CONFIG", NIX_CONFIG),
        ];
        let w = Worker::start(dir.path(), name, &vars);
        w.wait_for_log("connected to").await;
        workers.push(w);
    }

    let id = evaluate(&c, &commit).await;
    let done = wait_for_end(&c, &server, &id).await;
    let logs: String = workers.iter().map(|w| w.log_text()).collect();
    assert_eq!(
        done["evaluation"]["status"], "Failed",
        "a check fails, so the evaluation fails: {done}\n{logs}"
    );
    let builds = done["builds"].as_array().expect("builds");
    let status_of = |name: &str| -> String {
        builds
            .iter()
            .find(|b| {
                b["drv_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("-{name}.drv")))
            })
            .and_then(|b| b["status"].as_str())
            .unwrap_or("missing")
            .to_owned()
    };
    for name in ["a", "b", "c", "two"] {
        assert_eq!(status_of(name), "Completed", "{name}: {done}\n{logs}");
    }
    assert_eq!(status_of("fails"), "Failed", "{done}");
    assert_eq!(status_of("after"), "DependencyFailed", "{done}");
    // The builds' list names the attributes, and each build has its timestamps, derivation and stored log.
    let listed = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
    let listed = listed.as_array().expect("builds");
    assert_eq!(listed.len(), builds.len(), "{listed:?}");
    let item = |name: &str| -> Value {
        listed
            .iter()
            .find(|b| {
                b["drv_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("-{name}.drv")))
            })
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {listed:?}"))
    };
    assert_eq!(item("fails")["attributes"], json!(["checks.x86_64-linux.fails"]));
    assert_eq!(item("a")["attributes"], json!(["packages.x86_64-linux.a"]));
    let fails = item("fails");
    let fails_id = fails["id"].as_str().expect("id");
    let statuses: Vec<&str> = fails["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses, ["Queued", "Building", "Failed"], "{fails}");
    assert!(
        fails["started_at"].is_string() && fails["finished_at"].is_string(),
        "{fails}"
    );
    let detail = c.ok(Method::GET, &format!("/builds/{fails_id}"), None).await;
    assert_eq!(detail["build"]["status"], "Failed");
    assert_eq!(detail["derivation"]["system"], "x86_64-linux");
    assert!(
        detail["derivation"]["outputs"]["out"]
            .as_str()
            .is_some_and(|p| p.ends_with("-fails"))
    );
    let (status, fails_log) = c.text(&format!("/builds/{fails_id}/log")).await;
    assert_eq!(status, 200, "{fails_log}");
    assert!(
        fails_log.contains("this check fails on purpose"),
        "the failing build's log is kept: {fails_log:?}"
    );
    let after_id = item("after")["id"].as_str().expect("id").to_owned();
    let (status, body) = c.text(&format!("/builds/{after_id}/log")).await;
    assert_eq!(status, 404, "a build that never ran has no log: {body}");
    let eval_statuses: Vec<&str> = done["evaluation"]["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        eval_statuses,
        ["Queued", "Fetching", "Evaluating", "Building", "Failed"],
        "{done}"
    );
    // Both workers did part of the work.
    for w in &workers {
        assert!(w.log_text().contains("running build job"), "{}", w.log_text());
    }

    // A fresh store substitutes the top of the chain from the cache, signatures required.
    let c_drv = builds
        .iter()
        .find_map(|b| b["drv_path"].as_str().filter(|p| p.ends_with("-c.drv")))
        .expect("c")
        .to_owned();
    let out = nix(&["show-derivation", &c_drv]);
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    let c_out = shown[&c_drv]["outputs"]["out"]["path"]
        .as_str()
        .expect("out path")
        .to_owned();
    let netrc = dir.path().join("netrc-client");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let fresh = dir.path().join("client-store");
    let cache_url = format!("{}/cache/main", server.url);
    let fresh = fresh.to_str().expect("path");
    let out = substitute(&cache_url, fresh, netrc.to_str(), &public_key, &[&c_out]);
    assert!(
        out.status.success(),
        "substituting {c_out}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in workers {
        w.kill();
    }
    server.stop();
}

/// A repository whose flake has one package, `name`, built by the shell `script` (which writes `$out`); a fresh
/// nonce makes it a derivation no store has yet. Answers the repository's URL and commit.
pub(crate) fn script_repo(dir: &Path, repo: &str, name: &str, script: &str) -> (String, String) {
    let flake = format!(
        r#"{{
  outputs = {{ self }}: {{
    packages.x86_64-linux.{name} = derivation {{
      name = "{name}"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "{}";
      args = [ "-c" "{script}" ];
    }};
  }};
}}
"#,
        uuid::Uuid::new_v4().simple()
    );
    commit_flake(dir, repo, &flake)
}

/// A repository whose only package takes a few seconds to build.
pub(crate) fn slow_repo(dir: &Path, secs: u32) -> (String, String) {
    let script = format!("echo starting; /usr/bin/sleep {secs}; echo done > $out");
    script_repo(dir, "slow-repo", "slow", &script)
}

/// An org `acme` with a cache and a project `demo` on `repository` selecting `wildcard`.
pub(crate) async fn org_with_project(server: &Server, repository: &str, wildcard: &str) -> Client {
    let mut c = Client::new(server);
    c.register_with_key("ci").await;
    c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repository, "wildcard": wildcard});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    c
}

pub(crate) async fn start_worker(c: &Client, dir: &Path, server_url: &str, name: &str) -> Worker {
    start_worker_with(c, dir, server_url, name, &[]).await
}

/// [`start_worker`] with extra environment variables.
pub(crate) async fn start_worker_with(
    c: &Client,
    dir: &Path,
    server_url: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> Worker {
    start_worker_as(c, dir, server_url, name, extra, false).await
}

async fn start_worker_as(
    c: &Client,
    dir: &Path,
    server_url: &str,
    name: &str,
    extra: &[(&str, &str)],
    background_job: bool,
) -> Worker {
    let id = uuid::Uuid::new_v4().to_string();
    let r = c
        .ok(Method::POST, "/orgs/acme/workers", Some(json!({"worker_id": id})))
        .await;
    let peers = dir.join(format!("peers-{name}"));
    std::fs::write(
        &peers,
        format!(
            "{}:{}\n",
            r["peer_id"].as_str().expect("peer"),
            r["token"].as_str().expect("token")
        ),
    )
    .expect("peers");
    // A server behind a TLS terminator (`https://…`) is dialed over wss://.
    let url = match server_url.strip_prefix("https://") {
        Some(host) => format!("wss://{host}/proto"),
        None => format!("ws://{}/proto", server_url.trim_start_matches("http://")),
    };
    let vars = [
        ("GRADIENT_SERVER_URL", url.as_str()),
        ("GRADIENT_WORKER_ID", id.as_str()),
        ("GRADIENT_PEERS_FILE", peers.to_str().expect("path")),
        ("GRADIENT_CAPABILITIES_FETCH", "true"),
        ("GRADIENT_CAPABILITIES_EVAL", "true"),
        ("GRADIENT_CAPABILITIES_BUILD", "true"),
        ("NIX_CONFIG", NIX_CONFIG),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().chain(extra).copied().collect();
    let w = if background_job {
        Worker::start_as_background_job(dir, name, &vars)
    } else {
        Worker::start(dir, name, &vars)
    };
    w.wait_for_log("connected to").await;
    w
}

#[tokio::test]
async fn a_worker_killed_mid_build_is_lost_and_another_worker_finishes_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = slow_repo(dir.path(), 8);
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let first = start_worker(&c, dir.path(), &server.url, "first").await;
    let id = evaluate(&c, &commit).await;
    first.wait_for_log("running build job").await;
    first.sigkill();
    // The lost worker's build says Queued again (not Building while its job waits) within the lost-after time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(32);
    loop {
        let builds = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
        let statuses: Vec<&str> = builds
            .as_array()
            .expect("builds")
            .iter()
            .filter_map(|b| b["status"].as_str())
            .collect();
        if statuses == ["Queued"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lost worker's build still says {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let second = start_worker(&c, dir.path(), &server.url, "second").await;
    wait_for_completed(&c, &server, &id, &second).await;
    assert!(
        second.log_text().contains("running build job"),
        "the second worker took the build over"
    );
    second.kill();
    server.stop();
}

#[tokio::test]
async fn a_server_restart_mid_build_loses_no_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = slow_repo(dir.path(), 6);
    let port = crate::harness::free_port();
    let server = Server::start_on(dir.path(), port, &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    worker.wait_for_log("running build job").await;
    server.stop();
    let server = Server::start_on(dir.path(), port, &[]).await;
    let token = c.token.clone();
    let mut c = Client::new(&server);
    c.token = token;
    wait_for_completed(&c, &server, &id, &worker).await;
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn aborting_an_evaluation_stops_its_running_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The builder's command line is this test's own, so that its process can be found.
    // It would run 12 s; stopped, it is gone within 2 s, with the Nix that ran it, even though the worker was
    // started as a script's background job (SIGINT ignored: Nix must not inherit that).
    let sleep = format!("sleep 12.{}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000);
    let (repository, commit) = script_repo(
        dir.path(),
        "abort-repo",
        "slow",
        &format!("/usr/bin/{sleep}; echo done > $out"),
    );
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker_as(&c, dir.path(), &server.url, "w", &[], true).await;
    let id = evaluate(&c, &commit).await;
    // The worker's running Nix processes (its children named nix…, zombies left out).
    let nix_children = || {
        let out = Command::new("ps")
            .args(["-o", "stat=,pid=,args=", "--ppid", &worker.pid().to_string()])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('Z') && l.split_whitespace().nth(2).is_some_and(|p| p.contains("nix")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let running = || {
        Command::new("pgrep")
            .args(["-f", &sleep])
            .output()
            .expect("pgrep")
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running() {
        assert!(
            Instant::now() < deadline,
            "the build never started\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nix_running = nix_children();
    let nix_pid = nix_running
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no Nix process of the worker runs the build"));
    // It reacts to SIGINT and SIGQUIT, which the worker has ignored.
    let status = std::fs::read_to_string(format!("/proc/{nix_pid}/status")).expect("Nix's status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn");
    assert_eq!(
        ignored & 0b110,
        0,
        "Nix ({nix_running}) ignores SIGINT or SIGQUIT: {ignored:x}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    let aborted = c
        .ok(Method::POST, &format!("/evals/{id}"), Some(json!({"method": "abort"})))
        .await;
    assert_eq!(aborted["status"], "Aborted");
    worker.wait_for_log("aborting job").await;
    loop {
        if !running() && nix_children().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2 s after the abort, the builder runs: {}, the worker's Nix processes: {:?}",
            running(),
            nix_children()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
    assert_eq!(done["builds"][0]["status"], "Aborted", "{done}");
    let (status, v) = c
        .call(Method::POST, &format!("/evals/{id}"), Some(json!({"method": "abort"})))
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("already_finished")));
    let (status, v) = c
        .call(Method::POST, &format!("/evals/{id}"), Some(json!({"method": "dance"})))
        .await;
    assert_eq!((status, v["code"].as_str()), (422, Some("unknown_method")));
    // The aborted build is built again for the next evaluation that needs it.
    let again = wait_for_end(&c, &server, &evaluate(&c, &commit).await).await;
    assert_eq!(again["evaluation"]["status"], "Completed", "{again}");
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn failed_builds_can_be_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("allowed-to-pass");
    let flake = format!(
        r#"{{
  outputs = {{ self }}: let
    system = "x86_64-linux";
    flaky = derivation {{
      name = "flaky"; inherit system; builder = "/bin/sh"; nonce = "{nonce}";
      args = [ "-c" "if [ -e {flag} ]; then echo ok > $out; else echo not yet; exit 1; fi" ];
    }};
    after = derivation {{ name = "after"; inherit system; builder = "/bin/sh"; dep = flaky; args = [ "-c" "echo $dep > $out" ]; }};
  in {{ packages.${{system}} = {{ inherit flaky after; }}; }};
}}
"#,
        nonce = uuid::Uuid::new_v4().simple(),
        flag = flag.display()
    );
    let (repository, commit) = commit_flake(dir.path(), "restart-repo", &flake);
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    let first = wait_for_end(&c, &server, &id).await;
    assert_eq!(first["evaluation"]["status"], "Failed", "{first}");
    let (status, v) = c
        .call(Method::POST, &format!("/evals/{id}"), Some(json!({"method": "abort"})))
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("already_finished")));

    std::fs::write(&flag, "yes").expect("flag");
    let restarted = c
        .ok(
            Method::POST,
            &format!("/evals/{id}"),
            Some(json!({"method": "restart"})),
        )
        .await;
    assert_eq!(restarted["status"], "Building");
    let second = wait_for_end(&c, &server, &id).await;
    assert_eq!(
        second["evaluation"]["status"],
        "Completed",
        "{second}\n{}",
        worker.log_text()
    );
    assert!(
        second["builds"]
            .as_array()
            .expect("builds")
            .iter()
            .all(|b| b["status"] == "Completed"),
        "{second}"
    );
    let (status, v) = c
        .call(
            Method::POST,
            &format!("/evals/{id}"),
            Some(json!({"method": "restart"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("nothing_to_restart")));
    worker.kill();
    server.stop();
}

/// A chain handed to one worker at once, whose middle link fails: the worker's Nix builds what it can in one run,
/// the failed link ends Failed, the links after it DependencyFailed (never run: no log), and a restart builds the
/// rest once the link is fixed.
#[tokio::test]
async fn a_chain_with_a_failing_link_ends_dependency_failed_after_it_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("link2-may-pass");
    let flake = format!(
        r#"{{
  outputs = {{ self }}: let
    system = "x86_64-linux";
    link = i: derivation {{
      name = "link${{toString i}}"; inherit system; builder = "/bin/sh"; nonce = "{nonce}";
      prev = if i == 0 then "" else link (i - 1);
      args = [ "-c" (if i == 2 then "if [ -e {flag} ]; then echo 2 $prev > $out; else echo link2 fails; exit 1; fi"
                     else "echo ${{toString i}} $prev > $out") ];
    }};
  in {{ packages.${{system}}.top = link 5; }};
}}
"#,
        nonce = uuid::Uuid::new_v4().simple(),
        flag = flag.display()
    );
    let (repository, commit) = commit_flake(dir.path(), "chain-repo", &flake);
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    let done = wait_for_end(&c, &server, &id).await;
    assert_eq!(done["evaluation"]["status"], "Failed", "{done}");
    let builds = done["builds"].as_array().expect("builds").clone();
    let link = |i: usize| -> Value {
        builds
            .iter()
            .find(|b| {
                b["drv_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("-link{i}.drv")))
            })
            .cloned()
            .unwrap_or_else(|| panic!("link{i} in {builds:?}"))
    };
    let want = [
        "Completed",
        "Completed",
        "Failed",
        "DependencyFailed",
        "DependencyFailed",
        "DependencyFailed",
    ];
    for (i, want) in want.iter().enumerate() {
        assert_eq!(link(i)["status"], *want, "link{i}: {done}\n{}", worker.log_text());
    }
    let link3 = link(3)["id"].as_str().expect("id").to_owned();
    let (status, body) = c.text(&format!("/builds/{link3}/log")).await;
    assert_eq!(status, 404, "a link that never ran has no log: {body}");
    let link2 = link(2)["id"].as_str().expect("id").to_owned();
    let (status, body) = c.text(&format!("/builds/{link2}/log")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("link2 fails"), "{body}");
    // The failed link's root cause groups the three it broke.
    let diff = c.ok(Method::GET, &format!("/evals/{id}/diff"), None).await;
    let causes = diff["root_causes"].as_array().expect("root causes");
    assert_eq!(causes.len(), 1, "{diff}");
    assert!(
        causes[0]["cause"]["drv_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("-link2.drv")),
        "{diff}"
    );
    assert_eq!(causes[0]["dependents"].as_array().map(Vec::len), Some(3), "{diff}");

    std::fs::write(&flag, "yes").expect("flag");
    c.ok(
        Method::POST,
        &format!("/evals/{id}"),
        Some(json!({"method": "restart"})),
    )
    .await;
    wait_for_completed(&c, &server, &id, &worker).await;
    worker.kill();
    server.stop();
}

/// Reads a Server-Sent Events stream until its `end` event; answers (event type, id, data) triples.
async fn read_events(mut resp: reqwest::Response) -> Vec<(String, String, String)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(30), resp.chunk())
            .await
            .expect("events in time");
        let Some(chunk) = chunk.expect("stream") else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            let (mut kind, mut id, mut data) = ("message".to_owned(), String::new(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if data.is_empty() && kind == "message" {
                continue; // keep-alive
            }
            let end = kind == "end";
            events.push((kind, id, data.join("\n")));
            if end {
                return events;
            }
        }
    }
    panic!("no end event: {events:?}");
}

#[tokio::test]
async fn a_running_builds_log_streams_live_and_resumes_from_the_last_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "echo first line; /usr/bin/sleep 2; echo second line; /usr/bin/sleep 2; echo done > $out";
    let (repository, commit) = script_repo(dir.path(), "talk-repo", "talk", script);
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    worker.wait_for_log("running build job").await;
    let detail = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
    let drv = detail["builds"][0]["drv_path"].as_str().expect("drv").to_owned();
    let http = reqwest::Client::new();
    let token = c.token.clone().expect("token");
    let url = format!("{}/api/v1/evals/{id}/log", server.url);
    // The same stream by the build's id, read at the same time.
    let build_id = detail["builds"][0]["id"].as_str().expect("build id").to_owned();
    let by_id = http
        .get(format!("{}/api/v1/builds/{build_id}/log/live", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(by_id.status(), 200);
    let by_id = tokio::spawn(read_events(by_id));
    let live = http
        .get(&url)
        .query(&[("drv", &drv)])
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(live.status(), 200);
    let events = read_events(live).await;
    let text: String = events
        .iter()
        .filter(|e| e.0 == "message")
        .map(|e| e.2.clone() + "\n")
        .collect();
    assert!(
        text.contains("first line") && text.contains("second line"),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|e| (e.0.as_str(), e.2.as_str())),
        Some(("end", "Completed"))
    );
    let messages: Vec<_> = events.iter().filter(|e| e.0 == "message").collect();
    assert!(
        messages.len() >= 2,
        "the log arrived in pieces as the build ran: {events:?}"
    );

    let by_id = by_id.await.expect("reader");
    let by_id_text: String = by_id.iter().filter(|e| e.0 == "message").map(|e| e.2.clone()).collect();
    assert!(
        by_id_text.contains("first line") && by_id_text.contains("second line"),
        "{by_id:?}"
    );
    assert!(
        by_id.iter().filter(|e| e.0 == "message").count() >= 2,
        "live: {by_id:?}"
    );
    assert_eq!(by_id.last().map(|e| e.0.as_str()), Some("end"));
    let unknown = http
        .get(format!(
            "{}/api/v1/builds/{}/log/live",
            server.url,
            uuid::Uuid::new_v4()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(unknown.status(), 404);

    // Resuming from the last id sends nothing twice.
    let last_id = messages.last().map(|e| e.1.clone()).expect("id");
    let again = http
        .get(&url)
        .query(&[("drv", &drv)])
        .bearer_auth(&token)
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .expect("GET");
    let events = read_events(again).await;
    assert_eq!(events.iter().filter(|e| e.0 == "message").count(), 0, "{events:?}");

    // The evaluation's events: its state and its build's, then the end; resuming skips what was seen.
    wait_for_end(&c, &server, &id).await;
    let events_url = format!("{}/api/v1/evals/{id}/events", server.url);
    let all = read_events(http.get(&events_url).bearer_auth(&token).send().await.expect("GET")).await;
    assert!(
        all.iter().any(|e| e.0 == "evaluation" && e.2.contains("\"Completed\"")),
        "{all:?}"
    );
    assert!(all.iter().any(|e| e.0 == "build" && e.2.contains(&drv)), "{all:?}");
    assert_eq!(
        all.last().map(|e| (e.0.as_str(), e.2.as_str())),
        Some(("end", "Completed"))
    );
    let last_id = all
        .iter()
        .rev()
        .find(|e| e.0 != "end")
        .map(|e| e.1.clone())
        .expect("an id");
    let resumed = http
        .get(&events_url)
        .bearer_auth(&token)
        .header("Last-Event-ID", &last_id)
        .send()
        .await
        .expect("GET");
    let resumed = read_events(resumed).await;
    assert_eq!(resumed.len(), 1, "only the end: {resumed:?}");

    // Afterwards, a new reader gets the stored log, then the end.
    let late = http
        .get(&url)
        .query(&[("drv", &drv)])
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    let events = read_events(late).await;
    assert!(events[0].2.contains("second line"), "{events:?}");
    let (status, _) = c
        .call(Method::GET, "/evals/00000000-0000-4000-8000-000000000000", None)
        .await;
    assert_eq!(status, 404);
    let missing = http
        .get(&url)
        .query(&[("drv", "/nix/store/nope.drv")])
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn a_polled_project_is_evaluated_at_each_new_commit_of_its_branch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, first) = slow_repo(dir.path(), 1);
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    c.register_with_key("poller").await;
    c.ok(Method::POST, "/orgs", Some(json!({"name": "acme"}))).await;
    let project = json!({"name": "polled", "repository": repository, "branch": "main", "poll_interval_secs": 1});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let commits = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["commit"].as_str().map(str::to_owned))
            .collect()
    };
    let wait_for = |want: String| {
        let c = &c;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let list = c.ok(Method::GET, "/projects/acme/polled/evaluations", None).await;
                if commits(&list).first() == Some(&want) {
                    return list;
                }
                assert!(Instant::now() < deadline, "no evaluation of {want}: {list}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let list = wait_for(first.clone()).await;
    assert_eq!(list[0]["status"], "Queued");

    let repo = dir.path().join("slow-repo");
    std::fs::write(repo.join("README"), "more").expect("write");
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "more"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    wait_for(second.clone()).await;
    // Several more polls of an unchanged branch queue nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = c.ok(Method::GET, "/projects/acme/polled/evaluations", None).await;
    assert_eq!(
        commits(&list),
        vec![second, first],
        "one evaluation per new commit, none repeated"
    );
    server.stop();
}

#[tokio::test]
async fn a_huge_build_log_is_stored_capped_with_its_start_end_and_a_visible_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    // About 2.5 MB of log: far over what is kept.
    let flake = r#"{
  outputs = { self }: {
    packages.x86_64-linux.chatty = derivation {
      name = "chatty"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "NONCE";
      args = [ "-c" "i=0; while [ $i -lt 40000 ]; do echo \"line $i of a long build log that goes on and on\"; i=$((i+1)); done; echo done > $out" ];
    };
  };
}
"#
    .replace("NONCE", &nonce);
    let (repository, commit) = commit_flake(dir.path(), "chatty", &flake);
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "one").await;
    let id = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    let build = done["builds"][0]["id"].as_str().expect("build id").to_owned();

    let resp = reqwest::Client::new()
        .get(format!("{}/builds/{build}/log", c.base))
        .bearer_auth(c.token.as_deref().expect("key"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let omitted: u64 = resp
        .headers()
        .get("x-gradient-log-omitted")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("the omitted byte count");
    let log = resp.text().await.expect("body");
    assert!(
        log.starts_with("line 0 of a long build log"),
        "the start is kept: {}",
        &log[..80]
    );
    assert!(log.contains("line 39999 of a long build log"), "the end is kept");
    assert!(
        log.contains(&format!("[gradient: {omitted} bytes of this log were left out here]")),
        "the cut is visible"
    );
    assert!(omitted > 1_000_000, "{omitted}");
    assert!(log.len() < 600 * 1024, "capped: {} bytes", log.len());
    worker.kill();
    server.stop();
}

/// `GRADIENT_MAX_NIXDAEMON_CONNECTIONS=1`: the worker evaluates, builds and pushes a whole flake with the real
/// Nix, never running two Nix processes at once. Each `nix`, `nix-store` and `nix-instantiate` on its `PATH`
/// wraps the real one and writes `+` when it starts and `-` when it ends.
#[tokio::test]
async fn a_worker_runs_no_more_nix_processes_at_once_than_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let wrappers = dir.path().join("counting-nix");
    std::fs::create_dir_all(&wrappers).expect("mkdir");
    let log = dir.path().join("nix-processes");
    for program in ["nix", "nix-store", "nix-instantiate"] {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .expect("sh");
        let real = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!real.is_empty(), "{program} is on PATH");
        let script = format!(
            "#!/bin/sh\necho + >> {log}\n{real} \"$@\"\nrc=$?\necho - >> {log}\nexit $rc\n",
            log = log.display()
        );
        let bin = wrappers.join(program);
        std::fs::write(&bin, script).expect("wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!("{}:{}", wrappers.display(), std::env::var("PATH").unwrap_or_default());
    let worker = start_worker_with(
        &c,
        dir.path(),
        &server.url,
        "bounded",
        &[("PATH", path.as_str()), ("GRADIENT_MAX_NIXDAEMON_CONNECTIONS", "1")],
    )
    .await;
    let id = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    assert_eq!(done["builds"].as_array().map(Vec::len), Some(4), "{done}");
    let text = std::fs::read_to_string(&log).expect("the wrappers ran");
    let (mut now, mut most, mut started) = (0i32, 0i32, 0);
    for line in text.lines() {
        if line == "+" {
            now += 1;
            started += 1;
        } else {
            now -= 1;
        }
        most = most.max(now);
    }
    assert!(
        started >= 5,
        "evaluation, builds and pushes ran Nix: {started} processes"
    );
    assert_eq!(most, 1, "Nix processes at once");
}

/// `GRADIENT_MAX_EVALUATIONS_PER_WORKER=1`: the worker evaluates in evaluator subprocesses of its own (its
/// binary again), a fresh one for each evaluation. A `nix` on its `PATH` wraps the real one and writes, for
/// each `nix eval`, the process that started it and that process's parent.
#[tokio::test]
async fn the_worker_replaces_its_evaluator_process_after_its_evaluations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let wrappers = dir.path().join("evaluator-nix");
    std::fs::create_dir_all(&wrappers).expect("mkdir");
    let log = dir.path().join("evaluators");
    let out = Command::new("sh").args(["-c", "command -v nix"]).output().expect("sh");
    let real = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" eval \"*) echo \"$PPID $(cut -d' ' -f4 /proc/$PPID/stat)\" >> {log};; esac\n\
         exec {real} \"$@\"\n",
        log = log.display()
    );
    let bin = wrappers.join("nix");
    std::fs::write(&bin, script).expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", wrappers.display(), std::env::var("PATH").unwrap_or_default());
    let worker = start_worker_with(
        &c,
        dir.path(),
        &server.url,
        "recycling",
        &[("PATH", path.as_str()), ("GRADIENT_MAX_EVALUATIONS_PER_WORKER", "1")],
    )
    .await;
    let mut evaluators = Vec::new();
    for _ in 0..2 {
        let id = evaluate(&c, &commit).await;
        wait_for_completed(&c, &server, &id, &worker).await;
        let text = std::fs::read_to_string(&log).expect("the wrapper ran");
        std::fs::remove_file(&log).expect("rm");
        let mut pairs: Vec<(u32, u32)> = text
            .lines()
            .map(|l| {
                let mut it = l.split_whitespace().map(|x| x.parse::<u32>().expect("pid"));
                (it.next().expect("pid"), it.next().expect("ppid"))
            })
            .collect();
        pairs.dedup();
        assert_eq!(pairs.len(), 1, "one evaluator process per evaluation: {pairs:?}");
        let (evaluator, parent) = pairs[0];
        assert_ne!(evaluator, worker.pid(), "not evaluated in the worker's own process");
        assert_eq!(parent, worker.pid(), "the evaluator is the worker's child");
        evaluators.push(evaluator);
    }
    assert_ne!(
        evaluators[0], evaluators[1],
        "a fresh evaluator for the second evaluation"
    );
}

#[tokio::test]
async fn a_quick_build_is_cached_and_completed_while_a_slow_one_of_its_nix_run_still_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `slow` waits for this file; `quick` (on top of `base`) is quick. All three go in one Nix run.
    let gate = dir.path().join("gate");
    let flake = format!(
        r#"{{
  outputs = {{ self }}: let
    mk = name: script: extra: derivation ({{
      inherit name; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "{}"; args = [ "-c" script ];
    }} // extra);
    base = mk "base" "echo base > $out" {{ }};
  in {{
    packages.x86_64-linux = {{
      quick = mk "quick" "echo quick $dep > $out" {{ dep = base; }};
      slow = mk "slow" "while [ ! -e {} ]; do /usr/bin/sleep 0.1; done; echo slow > $out" {{ }};
    }};
  }};
}}
"#,
        uuid::Uuid::new_v4().simple(),
        gate.display()
    );
    let (repository, commit) = commit_flake(dir.path(), "repo", &flake);
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("ci").await;
    let public_key = c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repository, "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    let status_of = |e: &Value, name: &str| -> String {
        e["builds"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| {
                b["drv_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("-{name}.drv")))
            })
            .and_then(|b| b["status"].as_str())
            .unwrap_or("missing")
            .to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let e = loop {
        let e = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
        if status_of(&e, "quick") == "Completed" {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "quick never completed while slow waits: {e}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status_of(&e, "base"), "Completed", "{e}");
    assert_eq!(status_of(&e, "slow"), "Building", "{e}");
    // Its output, with its closure, is served by the cache already (signatures required).
    let quick_drv = e["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .find_map(|b| b["drv_path"].as_str().filter(|p| p.ends_with("-quick.drv")))
        .expect("quick")
        .to_owned();
    let shown: Value = serde_json::from_slice(&nix(&["show-derivation", &quick_drv]).stdout).expect("json");
    let quick_out = shown[&quick_drv]["outputs"]["out"]["path"]
        .as_str()
        .expect("out path")
        .to_owned();
    let netrc = dir.path().join("netrc-client");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let fresh = dir.path().join("client-store");
    let out = substitute(
        &format!("{}/cache/main", server.url),
        fresh.to_str().expect("path"),
        netrc.to_str(),
        &public_key,
        &[&quick_out],
    );
    assert!(
        out.status.success(),
        "substituting {quick_out}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&gate, "go").expect("gate");
    wait_for_completed(&c, &server, &id, &worker).await;
    // One Nix run built all three (its line is written once its last job is reported).
    worker.wait_for_log("batch of 3 build(s)").await;
    worker.kill();
    server.stop();
}
