//! Commit statuses end to end: a fake Gitea on loopback records the status POSTs the real server sends while
//! real workers evaluate and build a flake; a forge that answers 500 is retried and the failure is visible on
//! the evaluation meanwhile.

use crate::harness::{Client, Server};
use crate::pipeline::{evaluate, flake_repo, org_with_project, slow_repo, start_worker, wait_for_end};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One status POST the fake forge received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) path: String,
    pub(crate) authorization: String,
    pub(crate) body: Value,
    /// The HTTP status it was answered with.
    pub(crate) answered: u16,
}

/// A Gitea-like status API on loopback: records every request and answers 500 to the first `failures`.
#[derive(Clone)]
pub(crate) struct FakeForge {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeForge {
    pub(crate) async fn start(failures: u32) -> FakeForge {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        tokio::spawn(async move {
            let mut remaining = failures;
            while let Ok((mut socket, _)) = listener.accept().await {
                let Some((head, body)) = read_request(&mut socket).await else {
                    continue;
                };
                let answered = if remaining > 0 {
                    remaining -= 1;
                    500
                } else {
                    201
                };
                let mut lines = head.lines();
                let path = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let authorization = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
                log.lock().expect("lock").push(Received {
                    path,
                    authorization,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    answered,
                });
                let answer = format!(
                    "HTTP/1.1 {answered} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        FakeForge { url, received }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

/// Reads one HTTP/1.1 request: its head and its body (by Content-Length).
pub(crate) async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if raw.len() >= end + 4 + length {
            return Some((head, raw[end + 4..end + 4 + length].to_vec()));
        }
    }
}

/// An org `acme` with a project on `repository` selecting `wildcard`, whose statuses go to `forge`.
async fn org_with_forge(server: &Server, repository: &str, wildcard: &str, forge: &FakeForge) -> Client {
    let c = org_with_project(server, repository, wildcard).await;
    let set = c
        .ok(
            Method::PUT,
            "/orgs/acme/forge",
            Some(json!({"forge": "gitea", "api_url": forge.url, "token": "forge-token"})),
        )
        .await;
    assert_eq!(
        set,
        json!({"forge": "gitea", "api_url": forge.url, "managed": false}),
        "the token is never answered"
    );
    let got = c.ok(Method::GET, "/orgs/acme/forge", None).await;
    assert_eq!(got, set);
    c
}

/// Waits until `done` holds for the evaluation detail.
pub(crate) async fn wait_for(
    c: &Client,
    server: &Server,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
        if done(&e) {
            return e;
        }
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        assert!(Instant::now() < deadline, "{what}: {e}\nserver log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn all_delivered(e: &Value) -> bool {
    e["statuses"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s["delivered"] == true))
}

#[tokio::test]
async fn a_failing_check_reports_pending_then_failure_to_the_forge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let forge = FakeForge::start(0).await;
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_forge(&server, &repository, "packages.*.*, checks.*.*", &forge).await;
    let worker = start_worker(&c, dir.path(), &server.url, "one").await;
    let id = evaluate(&c, &commit).await;
    let done = wait_for_end(&c, &server, &id).await;
    assert_eq!(done["evaluation"]["status"], "Failed", "{done}");
    // Failed because of the check: the packages were built.
    let built = done["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .filter(|b| b["status"] == "Completed")
        .count();
    assert_eq!(built, 4, "{done}");
    let done = wait_for(&c, &server, &id, "the statuses were not delivered", all_delivered).await;

    let received = forge.received();
    let states: Vec<&str> = received
        .iter()
        .map(|r| r.body["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["pending", "failure"], "{received:?}");
    let target_url = format!("{}/api/v1/evals/{id}", server.url);
    for r in &received {
        assert!(
            r.path.starts_with("/api/v1/repos/") && r.path.ends_with(&format!("/repo/statuses/{commit}")),
            "{r:?}"
        );
        assert_eq!(r.authorization, "token forge-token");
        assert_eq!(r.body["target_url"], target_url.as_str());
        assert_eq!(r.body["context"], "gradient");
        assert_eq!(r.answered, 201);
    }
    let statuses = done["statuses"].as_array().expect("statuses");
    assert_eq!(statuses.len(), 2, "{done}");
    assert!(
        statuses.iter().all(|s| s["attempts"] == 0 && s["last_error"].is_null()),
        "{done}"
    );
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn a_forge_that_fails_is_retried_and_the_failure_is_visible_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = slow_repo(dir.path(), 12);
    let forge = FakeForge::start(1).await;
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_forge(&server, &repository, "packages.*.*", &forge).await;
    let worker = start_worker(&c, dir.path(), &server.url, "one").await;
    let id = evaluate(&c, &commit).await;

    // The forge answered 500 to the pending status: the evaluation shows it, undelivered.
    let failing = wait_for(&c, &server, &id, "the failed attempt is not visible", |e| {
        e["statuses"][0]["attempts"] == 1
    })
    .await;
    let pending = &failing["statuses"][0];
    assert_eq!(pending["state"], "pending", "{failing}");
    assert!(
        pending["last_error"].as_str().unwrap_or_default().contains("500"),
        "{failing}"
    );

    let done = wait_for_end(&c, &server, &id).await;
    assert_eq!(done["evaluation"]["status"], "Completed", "{done}");
    let done = wait_for(&c, &server, &id, "the statuses were not delivered", all_delivered).await;
    let statuses = done["statuses"].as_array().expect("statuses");
    assert_eq!(statuses[0]["state"], "pending");
    assert_eq!(statuses[0]["attempts"], 1, "the failed attempt stays visible: {done}");
    assert_eq!(statuses[1]["state"], "success");

    let received: Vec<(String, u16)> = forge
        .received()
        .iter()
        .map(|r| (r.body["state"].as_str().unwrap_or_default().to_owned(), r.answered))
        .collect();
    assert_eq!(
        received,
        [
            ("pending".to_owned(), 500),
            ("pending".to_owned(), 201),
            ("success".to_owned(), 201)
        ],
        "retried, then delivered"
    );
    worker.kill();
    server.stop();
}
