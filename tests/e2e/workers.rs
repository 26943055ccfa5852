//! Workers on the real `/proto` link: registration, the challenge-response handshake with the peers file,
//! the documented refusals, connection limits, bad frames, and revocation.

use crate::harness::{Client, Server, Worker};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

async fn org_with_admin(server: &Server) -> Client {
    let mut c = Client::new(server);
    c.register_with_key("admin").await;
    c.ok(Method::POST, "/orgs", Some(json!({"name": "builders"}))).await;
    c
}

async fn register(c: &Client, worker_id: &str) -> (String, String) {
    let r = c
        .ok(
            Method::POST,
            "/orgs/builders/workers",
            Some(json!({"worker_id": worker_id})),
        )
        .await;
    (
        r["peer_id"].as_str().expect("peer").to_owned(),
        r["token"].as_str().expect("token").to_owned(),
    )
}

fn peers_file(dir: &Path, name: &str, lines: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, lines).expect("peers file");
    f.to_str().expect("path").to_owned()
}

async fn connected(c: &Client) -> Vec<bool> {
    let list = c.ok(Method::GET, "/orgs/builders/workers", None).await;
    list.as_array()
        .expect("list")
        .iter()
        .map(|w| w["connected"] == true)
        .collect()
}

async fn wait_connected(c: &Client, want: Vec<bool>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = connected(c).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connected flags stayed {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker_vars<'a>(url: &'a str, id: &'a str, peers: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("GRADIENT_SERVER_URL", url),
        ("GRADIENT_WORKER_ID", id),
        ("GRADIENT_PEERS_FILE", peers),
        ("GRADIENT_CAPABILITIES_BUILD", "true"),
    ]
}

#[tokio::test]
async fn registration_validates_its_input_and_hides_generated_tokens_only_when_supplied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_admin(&server).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (peer, token) = register(&c, &id).await;
    assert_eq!(token.len(), 64, "48 random bytes in base64");
    assert!(uuid::Uuid::parse_str(&peer).is_ok());
    let (status, v) = c
        .call(Method::POST, "/orgs/builders/workers", Some(json!({"worker_id": id})))
        .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("worker_registered")));
    let own = "c2VjcmV0LXRva2VuLW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmctLS0tLS0tLQ==";
    let r = c
        .ok(
            Method::POST,
            "/orgs/builders/workers",
            Some(json!({"worker_id": uuid::Uuid::new_v4().to_string(), "token": own})),
        )
        .await;
    assert!(r.get("token").is_none(), "a caller-supplied token is not echoed: {r}");
    for (body, code) in [
        (json!({"worker_id": "not-a-uuid"}), "invalid_worker_id"),
        (
            json!({"worker_id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}),
            "invalid_worker_id",
        ),
        (
            json!({"worker_id": uuid::Uuid::new_v4().to_string(), "token": "c2hvcnQ="}),
            "invalid_token",
        ),
    ] {
        let (status, v) = c.call(Method::POST, "/orgs/builders/workers", Some(body)).await;
        assert_eq!((status, v["code"].as_str()), (422, Some(code)), "{v}");
    }
    assert_eq!(connected(&c).await, vec![false, false]);
    server.stop();
}

#[tokio::test]
async fn a_registered_worker_connects_and_deleting_its_registration_disconnects_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_admin(&server).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (peer, token) = register(&c, &id).await;
    let peers = peers_file(dir.path(), "peers", &format!("# registration\n{peer}:{token}\n"));
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let worker = Worker::start(dir.path(), "a", &worker_vars(&url, &id, &peers));
    wait_connected(&c, vec![true]).await;

    // A second process with the same id is refused; the first stays connected.
    let twin = Worker::start(dir.path(), "twin", &worker_vars(&url, &id, &peers));
    twin.wait_for_log("duplicate_connection").await;
    assert_eq!(connected(&c).await, vec![true]);
    twin.kill();

    c.ok(Method::DELETE, &format!("/orgs/builders/workers/{peer}"), None)
        .await;
    worker.wait_for_log("revoked").await;
    assert!(
        c.ok(Method::GET, "/orgs/builders/workers", None)
            .await
            .as_array()
            .expect("list")
            .is_empty()
    );
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn deleting_an_organization_disconnects_its_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_admin(&server).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (peer, token) = register(&c, &id).await;
    let peers = peers_file(dir.path(), "peers", &format!("{peer}:{token}\n"));
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let worker = Worker::start(dir.path(), "a", &worker_vars(&url, &id, &peers));
    wait_connected(&c, vec![true]).await;
    c.ok(Method::DELETE, "/orgs/builders", None).await;
    worker.wait_for_log("revoked").await;
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn wrong_tokens_unknown_workers_and_malformed_peers_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_admin(&server).await;
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let id = uuid::Uuid::new_v4().to_string();
    let (peer, _) = register(&c, &id).await;
    let wrong = peers_file(dir.path(), "wrong", &format!("{peer}:{}\n", "A".repeat(64)));
    let w = Worker::start(dir.path(), "wrong", &worker_vars(&url, &id, &wrong));
    w.wait_for_log("bad_tokens").await;
    assert_eq!(connected(&c).await, vec![false]);
    w.kill();

    let stranger = uuid::Uuid::new_v4().to_string();
    let w = Worker::start(dir.path(), "stranger", &worker_vars(&url, &stranger, &wrong));
    w.wait_for_log("unknown_worker").await;
    w.kill();

    let bad = peers_file(dir.path(), "bad-peers", "# ok\nnot a line\n");
    let w = Worker::start(dir.path(), "bad", &worker_vars(&url, &id, &bad));
    w.wait_for_log("bad-peers:2:").await;
    w.kill();
    server.stop();
}

#[tokio::test]
async fn the_wildcard_peer_answers_any_challenge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_admin(&server).await;
    let id = uuid::Uuid::new_v4().to_string();
    let token = "c2VjcmV0LXRva2VuLW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmctLS0tLS0tLQ==";
    c.ok(
        Method::POST,
        "/orgs/builders/workers",
        Some(json!({"worker_id": id, "token": token})),
    )
    .await;
    let peers = peers_file(dir.path(), "any", &format!("*:{token}\n"));
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let w = Worker::start(dir.path(), "any", &worker_vars(&url, &id, &peers));
    wait_connected(&c, vec![true]).await;
    w.kill();
    wait_connected(&c, vec![false]).await;
    server.stop();
}

#[tokio::test]
async fn connection_limits_and_bad_frames_affect_only_the_offending_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[("GRADIENT_MAX_PROTO_CONNECTIONS", "2")]).await;
    let c = org_with_admin(&server).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (peer, token) = register(&c, &id).await;
    let peers = peers_file(dir.path(), "peers", &format!("{peer}:{token}\n"));
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let worker = Worker::start(dir.path(), "good", &worker_vars(&url, &id, &peers));
    wait_connected(&c, vec![true]).await;

    // A malformed frame closes that connection with a reason.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    ws.send(Message::text("{this is not json")).await.expect("send");
    assert_eq!(close_reason(&mut ws).await.as_deref(), Some("malformed_frame"));

    // An oversized frame too, however large (past what the transport reads whole as well).
    for size in [2 * 1024 * 1024, 9 * 1024 * 1024, 64 * 1024 * 1024] {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
        let _ = ws.send(Message::text("x".repeat(size))).await;
        assert_eq!(
            close_reason(&mut ws).await.as_deref(),
            Some("frame_too_large"),
            "a frame of {size} bytes"
        );
    }

    // Idle sockets that never say hello fill only the pool of connections in their handshake (16 with
    // maxProtoConnections = 2); past it, an upgrade is refused with 503 and Retry-After: 10.
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(tokio_tungstenite::connect_async(&url).await.expect("idle socket").0);
    }
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503);
            assert_eq!(
                resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                Some("10")
            );
        }
        other => panic!("expected 503, got {:?}", other.map(|(_, r)| r.status())),
    }
    // They hold none of the two links' slots: a second registered worker still connects (once the idle
    // sockets are closed at their handshake deadline, its retry gets in).
    let second_id = uuid::Uuid::new_v4().to_string();
    let (second_peer, second_token) = register(&c, &second_id).await;
    let second_peers = peers_file(dir.path(), "second", &format!("{second_peer}:{second_token}\n"));
    let second = Worker::start(dir.path(), "second", &worker_vars(&url, &second_id, &second_peers));
    // An idle socket is closed at the deadline, with the documented reason.
    assert_eq!(close_reason(&mut idle[0]).await.as_deref(), Some("handshake_timeout"));
    wait_connected(&c, vec![true, true]).await;
    second.kill();
    wait_connected(&c, vec![true, false]).await;
    assert_eq!(connected(&c).await, vec![true, false], "the good worker never noticed");
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn a_server_that_is_not_discoverable_refuses_upgrades() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[("GRADIENT_DISCOVERABLE", "false")]).await;
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    server.stop();
}

/// Reads until the server closes; answers the close reason.
async fn close_reason<S>(ws: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.reason.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                assert!(v["type"] == "rejected", "unexpected message {t}");
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

#[tokio::test]
async fn the_co_located_worker_is_registered_in_every_new_organization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = uuid::Uuid::new_v4().to_string();
    let token = "c2VjcmV0LXRva2VuLW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmctLS0tLS0tLQ==";
    let token_file = dir.path().join("local-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let vars = [
        ("GRADIENT_LOCAL_WORKER_ID", id.as_str()),
        ("GRADIENT_LOCAL_WORKER_TOKEN_FILE", token_file.to_str().expect("path")),
    ];
    let server = Server::start(dir.path(), &vars).await;
    let c = org_with_admin(&server).await;
    let list = c.ok(Method::GET, "/orgs/builders/workers", None).await;
    assert_eq!(
        list[0]["worker_id"],
        id.as_str(),
        "registered when the organization was created: {list}"
    );
    let peers = peers_file(dir.path(), "local-peers", &format!("*:{token}\n"));
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let w = Worker::start(dir.path(), "local", &worker_vars(&url, &id, &peers));
    wait_connected(&c, vec![true]).await;
    // Nobody registers the server's own worker id with a token of their own (to take its place on the link).
    let peer = list[0]["peer_id"].as_str().expect("peer").to_owned();
    c.ok(Method::DELETE, &format!("/orgs/builders/workers/{peer}"), None)
        .await;
    let (status, answer) = c
        .call(Method::POST, "/orgs/builders/workers", Some(json!({"worker_id": id})))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("worker_id_reserved")),
        "{answer}"
    );
    w.kill();
    server.stop();
}

#[tokio::test]
async fn a_hello_of_another_protocol_version_is_refused_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let url = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let hello = json!({"type": "hello", "version": 99, "something_new": true});
    ws.send(Message::text(hello.to_string())).await.expect("send");
    assert_eq!(close_reason(&mut ws).await.as_deref(), Some("version_mismatch"));
    server.stop();
}
