//! Listening workers (`GRADIENT_DISCOVERABLE`): the server dials the URL a registration names, the server
//! proves a registration's key before the worker proves anything, the link is redialled when it drops, and a
//! worker holding its `GRADIENT_MAX_PROTO_CONNECTIONS` answers 503 with `Retry-After`.

use crate::harness::{Client, Server, Worker, free_port};
use crate::nix::NIX_CONFIG;
use crate::pipeline::{evaluate, flake_repo, start_worker_with, wait_for_completed};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Registers a listening worker at `url` in `acme` and starts it (building only) on `port`; answers it once the
/// server has dialed it and the handshake is done.
pub(crate) async fn start_listening_worker(c: &Client, dir: &Path, name: &str, id: &str, port: u16) -> Worker {
    let url = format!("ws://127.0.0.1:{port}/proto");
    let r = c
        .ok(
            Method::POST,
            "/orgs/acme/workers",
            Some(json!({"worker_id": id, "url": url})),
        )
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
    start_listening(dir, name, id, port, peers.to_str().expect("path"), &[])
}

pub(crate) fn start_listening(
    dir: &Path,
    name: &str,
    id: &str,
    port: u16,
    peers: &str,
    extra: &[(&str, &str)],
) -> Worker {
    let port = port.to_string();
    let vars = [
        ("GRADIENT_DISCOVERABLE", "true"),
        ("GRADIENT_LISTEN_ADDR", "127.0.0.1"),
        ("GRADIENT_PORT", port.as_str()),
        ("GRADIENT_WORKER_ID", id),
        ("GRADIENT_PEERS_FILE", peers),
        ("GRADIENT_CAPABILITIES_BUILD", "true"),
        ("GRADIENT_LOG_LEVEL_PROTO", "debug"),
        ("NIX_CONFIG", NIX_CONFIG),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().chain(extra).copied().collect();
    Worker::start(dir, name, &vars)
}

async fn workers_of_acme(c: &Client) -> Vec<Value> {
    c.ok(Method::GET, "/orgs/acme/workers", None)
        .await
        .as_array()
        .expect("list")
        .clone()
}

pub(crate) async fn wait_until_connected(c: &Client, id: &str, worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = workers_of_acme(c).await;
        if list.iter().any(|w| w["worker_id"] == id && w["connected"] == true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "worker {id} never connected: {list:?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One worker dials the server and evaluates; the other listens, is dialed by the server and builds: the same
/// flake goes through both links into the cache. Then the listening worker restarts and the server dials it
/// again.
#[tokio::test]
async fn a_dialing_and_a_listening_worker_build_the_same_flake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    c.register_with_key("ci").await;
    c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repository, "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;

    // The dialing worker evaluates only, the listening one builds only: both links carry the flake's jobs.
    let dialing = start_worker_with(
        &c,
        dir.path(),
        &server.url,
        "dialing",
        &[("GRADIENT_CAPABILITIES_BUILD", "false")],
    )
    .await;
    let port = free_port();
    let id = uuid::Uuid::new_v4().to_string();
    let listening = start_listening_worker(&c, dir.path(), "listening", &id, port).await;
    listening.wait_for_log("connected to the server").await;
    wait_until_connected(&c, &id, &listening).await;
    let listed = workers_of_acme(&c).await;
    let entry = listed.iter().find(|w| w["worker_id"] == id.as_str()).expect("listed");
    assert_eq!(entry["url"], format!("ws://127.0.0.1:{port}/proto"));
    assert!(
        listed
            .iter()
            .any(|w| w["worker_id"] != id.as_str() && w["url"].is_null()),
        "{listed:?}"
    );

    let eval = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &eval, &listening).await;
    let builds = done["builds"].as_array().expect("builds");
    assert_eq!(builds.len(), 4, "{done}");
    assert!(builds.iter().all(|b| b["status"] == "Completed"), "{done}");
    assert!(
        listening.log_text().contains("running build job"),
        "the listening worker built: {}",
        listening.log_text()
    );
    assert!(dialing.log_text().contains("running evaluation job"));
    assert!(!dialing.log_text().contains("running build job"));

    // The listening worker goes away and comes back: the server notices and dials it again.
    let peers = dir.path().join("peers-listening");
    listening.kill();
    let deadline = Instant::now() + Duration::from_secs(45);
    while workers_of_acme(&c)
        .await
        .iter()
        .any(|w| w["worker_id"] == id.as_str() && w["connected"] == true)
    {
        assert!(Instant::now() < deadline, "the lost link was never noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = start_listening(
        dir.path(),
        "listening-again",
        &id,
        port,
        peers.to_str().expect("path"),
        &[],
    );
    wait_until_connected(&c, &id, &again).await;
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(log.contains(&format!("worker {id} connected")), "{log}");
}

/// A listening worker proves nothing to whoever connects before that side proves a registration's key, and
/// holds at most `GRADIENT_MAX_PROTO_CONNECTIONS` connections: the next is answered 503 with `Retry-After`.
#[tokio::test]
async fn a_listening_worker_makes_the_dialer_prove_itself_and_answers_503_when_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let id = uuid::Uuid::new_v4().to_string();
    let peer = uuid::Uuid::new_v4();
    let peers = dir.path().join("peers");
    std::fs::write(&peers, format!("{peer}:a-token-the-impostor-does-not-know\n")).expect("peers");
    let worker = start_listening(
        dir.path(),
        "alone",
        &id,
        port,
        peers.to_str().expect("path"),
        &[("GRADIENT_MAX_PROTO_CONNECTIONS", "1")],
    );
    worker.wait_for_log("listening on ws://").await;
    let url = format!("ws://127.0.0.1:{port}/proto");
    // An impostor connects: the worker speaks first, asking it to prove a key over a fresh nonce.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["worker_id"], id.as_str());
    let nonce = hello["server_nonce"].as_str().expect("server_nonce").to_owned();
    assert_eq!(nonce.len(), 44, "base64 of 32 bytes: {nonce}");

    // While it holds the one connection allowed, another is refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(&url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "10");
        }
        other => panic!("expected 503, got {other:?}"),
    }

    // A challenge with a made-up server proof: the worker closes without proving anything.
    let challenge = json!({
        "type": "challenge",
        "nonce": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "peers": [peer],
        "server_proofs": [{"peer_id": peer, "proof": "00".repeat(32)}],
    });
    ws.send(Message::text(challenge.to_string())).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time");
    match answer {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
        Some(Ok(m)) => panic!("the worker answered an impostor: {m:?}"),
    }
    worker.wait_for_log("proved no registration's key").await;
    // The slot is free again: the next connection gets a hello.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect again");
    assert_eq!(next_json(&mut ws).await["type"], "hello");
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

/// Registering a listening worker's URL follows the network policy: without the operator's allowance the
/// server never dials loopback, link-local or `localhost`, and anything but ws:// or wss:// is refused.
#[tokio::test]
async fn worker_urls_are_held_to_the_network_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "false")]).await;
    let mut c = Client::new(&server);
    c.register_with_key("ci").await;
    c.ok(Method::POST, "/orgs", Some(json!({"name": "acme"}))).await;
    for (url, code) in [
        ("ws://127.0.0.1:3100/proto", "worker_url_not_allowed"),
        ("ws://localhost:3100/proto", "worker_url_not_allowed"),
        ("wss://169.254.169.254/proto", "worker_url_not_allowed"),
        ("http://builder.example.com/proto", "invalid_worker_url"),
    ] {
        let id = uuid::Uuid::new_v4().to_string();
        let (status, body) = c
            .call(
                Method::POST,
                "/orgs/acme/workers",
                Some(json!({"worker_id": id, "url": url})),
            )
            .await;
        assert_eq!((status, body["code"].as_str()), (422, Some(code)), "{url}: {body}");
    }
    let id = uuid::Uuid::new_v4().to_string();
    c.ok(
        Method::POST,
        "/orgs/acme/workers",
        Some(json!({"worker_id": id, "url": "wss://builder.example.com/proto"})),
    )
    .await;
}
