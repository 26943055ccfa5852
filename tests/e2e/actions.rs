//! Schedules and actions end to end: a real evaluation that fails and is then fixed posts signed webhooks to a
//! small HTTP receiver the test runs on loopback (the harness's server allows local addresses), which answers 500
//! once and is tried again; the delivery log shows both attempts. A project with a schedule is evaluated again
//! without any new commit.

use crate::harness::Server;
use crate::pipeline::{commit_flake, evaluate, git, org_with_project, start_worker, wait_for_end};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "the-receivers-shared-secret";

/// One request the receiver got: its headers (names lowercase) and body.
type Request = (Vec<(String, String)>, Vec<u8>);
type Got = Arc<Mutex<Vec<Request>>>;

/// An HTTP receiver on loopback answering 500 to its first request and 200 to the others; answers its URL.
async fn receiver(got: Got) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let status = {
                    let mut got = got.lock().expect("lock");
                    got.push((headers, buf[head_end..].to_vec()));
                    if got.len() == 1 { 500 } else { 200 }
                };
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/hook")
}

/// Waits until the receiver got `n` requests (or fails after a while).
async fn received(got: &Got, n: usize, server: &Server) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = got.lock().expect("lock").clone();
        if now.len() >= n {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} webhook requests arrived\n{}",
            now.len(),
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Checks the signature header with the secret, as a receiver would.
fn signed(headers: &[(String, String)], body: &[u8]) -> bool {
    let Some(sig) = header(headers, "x-gradient-signature").and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    hex::decode(sig).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

/// A flake whose one package passes or fails, new at every call.
fn flake(passes: bool) -> String {
    let script = if passes {
        "echo ok > $out"
    } else {
        "echo failing on purpose; exit 1"
    };
    format!(
        r#"{{
  outputs = {{ self }}: let system = "x86_64-linux"; in {{
    packages.${{system}}.p = derivation {{
      name = "p"; inherit system; builder = "/bin/sh"; nonce = "{}"; args = [ "-c" "{script}" ];
    }};
  }};
}}
"#,
        uuid::Uuid::new_v4().simple()
    )
}

fn commit(repo: &Path, flake: &str) -> String {
    std::fs::write(repo.join("flake.nix"), flake).expect("flake.nix");
    git(repo, &["commit", "-q", "-am", "change"]);
    git(repo, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn a_project_that_fails_and_is_fixed_posts_signed_webhooks_retried_after_a_500() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got: Got = Arc::default();
    let url = receiver(got.clone()).await;
    let (repository, failing) = commit_flake(dir.path(), "hook-repo", &flake(false));
    let repo = dir.path().join("hook-repo");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let action = c
        .ok(
            Method::POST,
            "/projects/acme/demo/actions",
            Some(json!({"name": "receiver", "kind": "webhook", "url": url, "secret": SECRET})),
        )
        .await;
    assert_eq!(action["secret"], SECRET, "the secret given is answered once");
    let id = action["id"].as_str().expect("id").to_owned();
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;

    let eval = evaluate(&c, &failing).await;
    assert_eq!(wait_for_end(&c, &server, &eval).await["evaluation"]["status"], "Failed");
    // The receiver answers 500 first: the same delivery comes again, after the backoff.
    let first_two = received(&got, 2, &server).await;
    for (headers, body) in &first_two {
        assert!(
            signed(headers, body),
            "HMAC-SHA256 of the body under the secret: {headers:?}"
        );
        assert_eq!(header(headers, "x-gradient-event"), Some("failed"));
        let v: Value = serde_json::from_slice(body).expect("JSON body");
        assert_eq!(v["event"], "failed");
        assert_eq!(v["evaluation"]["id"], eval.as_str());
        assert_eq!(v["evaluation"]["commit"], failing.as_str());
        assert_eq!(v["evaluation"]["status"], "Failed");
    }
    assert_eq!(first_two[0].1, first_two[1].1, "a retry sends the same body");
    assert_eq!(
        header(&first_two[0].0, "x-gradient-delivery"),
        header(&first_two[1].0, "x-gradient-delivery")
    );

    let fixed = commit(&repo, &flake(true));
    let eval = evaluate(&c, &fixed).await;
    let e = wait_for_end(&c, &server, &eval).await;
    assert_eq!(e["evaluation"]["status"], "Completed", "{e}\n{}", worker.log_text());
    let all = received(&got, 3, &server).await;
    assert!(signed(&all[2].0, &all[2].1));
    assert_eq!(header(&all[2].0, "x-gradient-event"), Some("fixed"));

    // The delivery log: the fix delivered at once, the failure on its second attempt after a 500.
    let log = c
        .ok(
            Method::GET,
            &format!("/projects/acme/demo/actions/{id}/deliveries"),
            None,
        )
        .await;
    let log = log.as_array().expect("list").clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        (
            log[0]["event"].clone(),
            log[0]["state"].clone(),
            log[0]["attempts"].clone(),
            log[0]["status_code"].clone()
        ),
        (json!("fixed"), json!("delivered"), json!(1), json!(200))
    );
    assert_eq!(
        (
            log[1]["event"].clone(),
            log[1]["state"].clone(),
            log[1]["attempts"].clone(),
            log[1]["status_code"].clone()
        ),
        (json!("failed"), json!("delivered"), json!(2), json!(200))
    );
    // A member reads the action, never its secret.
    let listed = c.ok(Method::GET, "/projects/acme/demo/actions", None).await;
    assert_eq!(listed[0]["secret"], Value::Null);
    assert!(!listed.to_string().contains(SECRET));
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn a_scheduled_project_is_evaluated_again_without_a_new_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, head) = commit_flake(dir.path(), "sched-repo", &flake(true));
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    // Every 10 seconds (a six-field expression with seconds); the branch never moves.
    c.ok(
        Method::PATCH,
        "/projects/acme/demo",
        Some(json!({"branch": "main", "schedule": "*/10 * * * * *"})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let first_two: Vec<String> = loop {
        let list = c.ok(Method::GET, "/projects/acme/demo/evaluations", None).await;
        // Newest first: the two oldest scheduled evaluations.
        let ids: Vec<String> = list
            .as_array()
            .expect("list")
            .iter()
            .rev()
            .filter(|e| e["trigger"] == "Schedule")
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .take(2)
            .collect();
        if ids.len() == 2 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "no two scheduled evaluations: {list}\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in &first_two {
        let e = wait_for_end(&c, &server, id).await;
        assert_eq!(
            e["evaluation"]["commit"],
            head.as_str(),
            "the same commit, evaluated again"
        );
        assert_eq!(e["evaluation"]["status"], "Completed", "{e}\n{}", worker.log_text());
    }
    c.ok(Method::PATCH, "/projects/acme/demo", Some(json!({"schedule": null})))
        .await;
    worker.kill();
    server.stop();
}
