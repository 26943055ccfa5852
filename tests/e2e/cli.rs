//! The `gradient` CLI against a real server and a real worker, as a user's shell runs it: standard input
//! not a terminal, so `eval --watch` prints one line per finished build. Build it first
//! (`cargo build -p gradient-cli`; `scripts/test` does).

use crate::harness::{Client, Server, server_binary};
use crate::nix::{NIX_CONFIG, build_closure, substitute};
use crate::pipeline::{script_repo, start_worker};
use reqwest::Method;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `gradient args…` with its configuration in `dir`, feeding `stdin`.
fn gradient(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let bin = server_binary().with_file_name("gradient");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p gradient-cli` first",
        bin.display()
    );
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GRADIENT_CONFIG", dir.join("gradient.toml"))
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gradient runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("gradient ends")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `gradient args…` that must succeed; answers its standard output.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = gradient(dir, args, "");
    assert_eq!(out.status.code(), Some(0), "gradient {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = ok(dir, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("gradient {args:?} printed no JSON ({e}): {out}"))
}

#[tokio::test]
async fn the_cli_logs_in_evaluates_follows_logs_and_uses_and_pushes_a_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let server = Server::start(home, &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("alice").await;

    // Login with the key on standard input; the file keeps it, readable by the user only.
    let out = gradient(home, &["login", &server.url, "--name", "local"], &format!("{key}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("as alice"),
        "{}",
        text(&out)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(home.join("gradient.toml")).expect("config written");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert!(ok(home, &["whoami"]).contains("alice on local"));

    // Organization, cache and projects, made with the CLI.
    ok(home, &["org", "create", "acme", "--display-name", "ACME"]);
    assert_eq!(json(home, &["org", "show", "acme"])["display_name"], "ACME");
    ok(home, &["cache", "create", "main"]);
    c.ok(Method::PUT, "/orgs/acme/push-cache/main", None).await;
    let (green, _) = script_repo(home, "green-repo", "green", "echo green > $out");
    let (red, _) = script_repo(home, "red-repo", "red", "echo this build fails on purpose; exit 1");
    for (name, repo) in [("green", &green), ("red", &red)] {
        let project = format!("acme/{name}");
        ok(
            home,
            &[
                "project",
                "create",
                &project,
                "--repository",
                repo,
                "--wildcard",
                "packages.*.*",
            ],
        );
    }
    let listed = ok(home, &["project", "list", "acme"]);
    assert!(listed.contains("green") && listed.contains("red"), "{listed}");
    let _worker = start_worker(&c, home, &server.url, "one").await;
    let workers = json(home, &["worker", "list", "acme"]);
    assert_eq!(workers[0]["connected"], true, "{workers}");
    assert!(
        workers[0]["systems"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "x86_64-linux")),
        "the connected worker's systems: {workers}"
    );

    // A green flake: exit 0, one line for its finished build.
    let out = gradient(home, &["eval", "acme/green", "--watch"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Completed\t/nix/store/") && l.ends_with("-green.drv")),
        "{}",
        text(&out)
    );

    // A failing flake: exit 1, and the failed build's log.
    let out = gradient(home, &["eval", "acme/red", "--watch"], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Failed\t/nix/store/"),
        "{}",
        text(&out)
    );
    let evals = json(home, &["evals", "acme/red"]);
    let red_eval = evals[0]["id"].as_str().expect("an evaluation").to_owned();
    assert_eq!(evals[0]["status"], "Failed");
    let failed = json(home, &["builds", &red_eval, "--failed"]);
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{failed}");
    let build = failed[0]["id"].as_str().expect("a build").to_owned();
    let out = gradient(home, &["log", &build, "--follow"], "");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("this build fails on purpose"),
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1), "the build failed: {}", text(&out));

    // `cache use`, then a fresh store substitutes the green output with signatures required.
    let green_eval = json(home, &["evals", "acme/green"])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let green_build = json(home, &["builds", &green_eval])[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let detail = c.ok(Method::GET, &format!("/builds/{green_build}"), None).await;
    let output = detail["derivation"]["outputs"]["out"]
        .as_str()
        .expect("out path")
        .to_owned();
    let nix_conf = home.join("nix.conf");
    std::fs::write(&nix_conf, "substituters =\n").expect("nix.conf");
    let netrc = home.join("netrc");
    ok(
        home,
        &[
            "cache",
            "use",
            "main",
            "--nix-conf",
            nix_conf.to_str().expect("path"),
            "--netrc",
            netrc.to_str().expect("path"),
        ],
    );
    let written = std::fs::read_to_string(&nix_conf).expect("nix.conf");
    assert!(
        written.contains(&format!("extra-substituters = {}/cache/main", server.url)),
        "{written}"
    );
    let fresh = home.join("fresh-store");
    let out = Command::new("nix")
        .args(["build", "--no-link", "--store", fresh.to_str().expect("path"), &output])
        .env("NIX_USER_CONF_FILES", &nix_conf)
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command flakes\nrequire-sigs = true\nnarinfo-cache-negative-ttl = 0\n",
        )
        .env("HOME", home)
        .output()
        .expect("nix runs");
    assert!(out.status.success(), "substituting {output}: {}", text(&out));
    assert!(
        fresh.join(output.trim_start_matches('/')).exists(),
        "{output} is in the fresh store"
    );

    // `cache push` of a local closure: then another fresh store substitutes all of it.
    let closure = build_closure(home, "cli", 1);
    let top = closure.last().expect("a top path").clone();
    let pushed = json(home, &["cache", "push", "main", &top]);
    assert_eq!(pushed["imported"], closure.len() as u64, "{pushed}");
    let again = json(home, &["cache", "push", "main", &top]);
    assert_eq!(again["imported"], 0, "nothing is sent twice: {again}");
    let public_key = ok(home, &["cache", "use", "main", "--print", "--json"]);
    let public_key: Value = serde_json::from_str(&public_key).expect("JSON");
    let other = home.join("other-store");
    let paths: Vec<&str> = closure.iter().map(String::as_str).collect();
    let out = substitute(
        &format!("{}/cache/main", server.url),
        other.to_str().expect("path"),
        netrc.exists().then_some(netrc.to_str()).flatten(),
        public_key["trusted_public_key"].as_str().expect("key"),
        &paths,
    );
    assert!(out.status.success(), "{}", text(&out));

    assert!(ok(home, &["logout"]).contains("local"));
    let out = gradient(home, &["whoami"], "");
    assert_eq!(out.status.code(), Some(2), "logged out: {}", text(&out));
}

#[tokio::test]
async fn usage_errors_exit_2_and_an_unreachable_server_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let out = gradient(home, &["eval"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = gradient(home, &["whoami"], "");
    assert_eq!(out.status.code(), Some(2), "not logged in: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gradient login"),
        "{}",
        text(&out)
    );

    // A server that is not there: login cannot reach it.
    let port = crate::harness::free_port();
    let out = gradient(home, &["login", &format!("http://127.0.0.1:{port}")], "GRADkey\n");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
    assert!(stderr.contains("Could not reach the server"), "{stderr}");
}

#[tokio::test]
async fn the_overview_shows_a_running_build_on_its_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let server = Server::start(home, &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("bob").await;
    c.acme_with_cache().await;
    let (repo, _) = crate::pipeline::slow_repo(home, 8);
    let project = serde_json::json!({"name": "slow", "repository": repo, "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let _worker = start_worker(&c, home, &server.url, "one").await;
    let out = gradient(home, &["login", &server.url], &format!("{key}\n"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    ok(home, &["eval", "acme/slow"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let workers = json(home, &["worker", "list", "acme"]);
        let jobs = workers[0]["jobs"].as_array().cloned().unwrap_or_default();
        if jobs
            .iter()
            .any(|j| j["kind"] == "build" && j["subject"].as_str().is_some_and(|s| s.ends_with("-slow.drv")))
        {
            let overview = c.ok(Method::GET, "/orgs/acme/overview", None).await;
            // The evaluation's job may still hold the worker while it pushes the `.drv` files.
            let systems = overview["queue"]["systems"].as_array().cloned().unwrap_or_default();
            let linux = systems.iter().find(|s| s["system"] == "x86_64-linux");
            assert_eq!(linux.map(|s| s["running"].clone()), Some(1.into()), "{overview}");
            assert!(
                overview["queue"]["running"].as_u64().is_some_and(|n| n >= 1),
                "{overview}"
            );
            assert_eq!(
                overview["workers"][0]["build_slots"].as_u64().map(|n| n > 0),
                Some(true),
                "{overview}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow build never showed on its worker: {workers}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Reads `resp`'s events until one satisfies `done` (or 60 s pass); answers (type, data, id) of each.
async fn events_until(
    resp: &mut reqwest::Response,
    done: impl Fn(&(String, String, String)) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut buffer, mut events) = (String::new(), Vec::new());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else {
            panic!("the stream ended or stalled before the awaited event: {events:?}");
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut kind, mut data, mut id) = (String::from("message"), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                }
            }
            if data.is_empty() {
                continue;
            }
            let event = (kind, data, id);
            let stop = done(&event);
            events.push(event);
            if stop {
                return events;
            }
        }
    }
}

#[tokio::test]
async fn the_org_event_stream_reports_evaluation_changes_resumes_and_hides_from_outsiders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let server = Server::start(home, &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("dora").await;
    c.acme_with_cache().await;
    let (repo, _) = script_repo(home, "events-repo", "quick", "echo quick > $out");
    let project = serde_json::json!({"name": "demo", "repository": repo, "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let url = format!("{}/api/v1/orgs/acme/events", server.url);
    let http = reqwest::Client::new();

    let mut outsider = Client::new(&server);
    let other = outsider.register_with_key("eve").await;
    let hidden = http.get(&url).bearer_auth(&other).send().await.expect("request");
    assert_eq!(
        hidden.status().as_u16(),
        404,
        "an outsider learns nothing of a private organization"
    );
    let anonymous = http.get(&url).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 404);

    let mut stream = http.get(&url).bearer_auth(&key).send().await.expect("request");
    assert_eq!(stream.status().as_u16(), 200);
    let _worker = start_worker(&c, home, &server.url, "one").await;
    let queued = c.ok(Method::POST, "/projects/acme/demo/evaluate", None).await;
    let id = queued["id"].as_str().expect("id").to_owned();
    let seen = events_until(&mut stream, |(_, data, _)| {
        data.contains(&id) && data.contains("\"status\":\"Completed\"")
    })
    .await;
    let first = &seen[0];
    assert_eq!(first.0, "evaluation", "{seen:?}");
    let body: Value = serde_json::from_str(&first.1).expect("JSON");
    assert_eq!(
        (body["project"].as_str(), body["id"].as_str()),
        (Some("demo"), Some(id.as_str())),
        "{seen:?}"
    );
    drop(stream);

    // Resuming after the last event seen: nothing old again, the next change comes.
    let last = seen.last().expect("an event").2.clone();
    let mut resumed = http
        .get(&url)
        .bearer_auth(&key)
        .header("Last-Event-ID", &last)
        .send()
        .await
        .expect("request");
    let again = c.ok(Method::POST, "/projects/acme/demo/evaluate", None).await;
    let again = again["id"].as_str().expect("id").to_owned();
    let next = events_until(&mut resumed, |(_, data, _)| data.contains(&again)).await;
    assert!(
        next.iter().all(|(_, data, _)| !data.contains(&id)),
        "an old change again: {next:?}"
    );
}
