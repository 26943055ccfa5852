//! Tenant boundaries with the real server, real Nix and a real worker link: another tenant tries to poison a
//! cache it does not own (issue #11's scenario), for a public and a private victim cache. Mallory has only an
//! account of her own: she subscribes her org to the victim's cache where she can, registers a worker, takes the
//! job token from the `assign` message, and pushes a different NAR for a path the victim's cache holds, with
//! every push route. The victim's narinfo and NAR stay as they were and still substitute with `require-sigs`.

use crate::harness::{Client, Server};
use crate::nix::{build_closure, nix_ok, nix_store, substitute};
use futures_util::{SinkExt, StreamExt};
use gradient_domain::nix::hash::sha256_of;
use gradient_domain::nix::nix32;
use gradient_domain::proto::{
    self, Capabilities, Hello, Job, JobOutcome, PROTOCOL_VERSION, ServerMessage, WorkerMessage, answer_challenge,
};
use gradient_domain::{PeerId, WorkerId};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Link = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A worker of Mallory's own, speaking `/proto` by hand so the test sees the job token as any worker does.
async fn connect_worker(server: &Server, worker: WorkerId, peer: PeerId, token: &str) -> Link {
    let url = format!("{}/proto", server.url.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("connect");
    let hello = WorkerMessage::Hello(Hello {
        version: PROTOCOL_VERSION,
        worker_id: worker,
        capabilities: Capabilities {
            fetch: true,
            eval: true,
            build: true,
            sign: false,
        },
        systems: vec!["x86_64-linux".into()],
        features: vec![],
        max_concurrent_builds: 1,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        held_jobs: vec![],
        server_nonce: None,
    });
    send(&mut ws, &hello).await;
    let ServerMessage::Challenge(challenge) = receive(&mut ws).await else {
        panic!("no challenge")
    };
    let tokens = BTreeMap::from([(peer, token.to_owned())]);
    send(
        &mut ws,
        &WorkerMessage::ChallengeResponse(answer_challenge(&challenge, &tokens, None)),
    )
    .await;
    let ServerMessage::Welcome(_) = receive(&mut ws).await else {
        panic!("not welcomed")
    };
    ws
}

async fn send(ws: &mut Link, msg: &WorkerMessage) {
    let text = proto::encode(msg).expect("encode");
    ws.send(Message::text(text)).await.expect("send");
}

/// The next protocol message (heartbeats skipped).
async fn receive(ws: &mut Link) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            match proto::decode_server(&text).expect("decode") {
                ServerMessage::Heartbeat => continue,
                msg => return msg,
            }
        }
    }
}

/// A NAR of `contents` as one regular file (what `nix-store --dump` writes for a file).
fn nar_of(dir: &Path, contents: &str) -> Vec<u8> {
    let file = dir.join("payload");
    std::fs::write(&file, contents).expect("payload");
    let out = nix_store(&["--dump", file.to_str().expect("path")]);
    assert!(out.status.success());
    out.stdout
}

fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    int(out, s.len() as u64);
    out.extend_from_slice(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

/// A `nix-store --export` stream claiming `nar` is the contents of `path`.
fn export_of(path: &str, nar: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    int(&mut out, 1);
    out.extend_from_slice(nar);
    int(&mut out, 0x4558_494e);
    string(&mut out, path.as_bytes());
    int(&mut out, 0);
    string(&mut out, b"");
    int(&mut out, 0);
    int(&mut out, 0);
    out
}

/// Every way to push `nar` as the contents of `path` into `cache_url` with `token`: the statuses answered.
async fn push_everything(cache_url: &str, token: &str, path: &str, nar: &[u8]) -> Vec<u16> {
    let http = reqwest::Client::new();
    let file_hash = nix32::encode(&sha256_of(nar).bytes);
    let url = format!("nar/{file_hash}.nar");
    let hash_part = &Path::new(path).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let narinfo = format!(
        "StorePath: {path}\nURL: {url}\nCompression: none\nFileHash: sha256:{file_hash}\nFileSize: {size}\n\
         NarHash: sha256:{file_hash}\nNarSize: {size}\nReferences: \n",
        size = nar.len()
    );
    let mut statuses = Vec::new();
    for (method, route, body) in [
        (Method::PUT, url.clone(), nar.to_vec()),
        (Method::PUT, format!("{hash_part}.narinfo"), narinfo.into_bytes()),
        (Method::POST, "missing".to_owned(), format!("{path}\n").into_bytes()),
        (Method::POST, "import".to_owned(), export_of(path, nar)),
    ] {
        let resp = http
            .request(method, format!("{cache_url}/{route}"))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .expect("push request");
        statuses.push(resp.status().as_u16());
    }
    statuses
}

async fn narinfo_text(cache_url: &str, key: &str, path: &str) -> (u16, String) {
    let hash_part = &Path::new(path).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let resp = reqwest::Client::new()
        .get(format!("{cache_url}/{hash_part}.narinfo"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET narinfo");
    (resp.status().as_u16(), resp.text().await.expect("text"))
}

async fn another_tenant_cannot_poison(public: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;

    // The victim pushes a closure into a cache of their own.
    let mut victim = Client::new(&server);
    let victim_key = victim.register_with_key("victim").await;
    victim
        .ok(
            Method::POST,
            "/caches",
            Some(json!({"name": "vcache", "public": public})),
        )
        .await;
    let public_key = victim.ok(Method::GET, "/caches/vcache/public-key", None).await;
    let public_key = public_key.as_str().expect("key").to_owned();
    let netrc = dir.path().join("netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login v password {victim_key}\n")).expect("netrc");
    let netrc = netrc.to_str().expect("path").to_owned();
    let vcache = format!("{}/cache/vcache", server.url);
    let paths = build_closure(dir.path(), if public { "victim-pub" } else { "victim-priv" }, 1);
    let to = format!("{vcache}?compression=zstd");
    let mut push = vec!["copy", "--to", &to, "--option", "netrc-file", &netrc];
    push.extend(paths.iter().map(String::as_str));
    nix_ok(&push);
    let target = paths.last().expect("a path").clone();
    let (status, before) = narinfo_text(&vcache, &victim_key, &target).await;
    assert_eq!(status, 200, "{before}");

    // Mallory, with an account of her own, tries to reach the victim's cache from an org of hers.
    let mut mallory = Client::new(&server);
    let mallory_key = mallory.register_with_key("mallory").await;
    mallory.ok(Method::POST, "/orgs", Some(json!({"name": "morg"}))).await;
    mallory
        .ok(Method::POST, "/caches", Some(json!({"name": "mcache"})))
        .await;
    mallory.ok(Method::PUT, "/orgs/morg/push-cache/mcache", None).await;
    let (status, answer) = mallory.call(Method::POST, "/orgs/morg/subscribe/vcache", None).await;
    assert_eq!(status, if public { 200 } else { 404 }, "{answer}");
    let (status, answer) = mallory.call(Method::PUT, "/orgs/morg/push-cache/vcache", None).await;
    assert_eq!(status, if public { 403 } else { 404 }, "{answer}");
    let subscriptions = mallory.ok(Method::GET, "/orgs/morg/subscribe", None).await;
    for s in subscriptions.as_array().expect("list") {
        assert_eq!(s["push"], s["name"] == "mcache", "only her own cache is pushed to: {s}");
        if s["name"] == "vcache" {
            assert_eq!(s["granted"], false, "{s}");
        }
    }
    // The victim sees her subscription and could end it.
    let subscribers = victim.ok(Method::GET, "/caches/vcache/subscribers", None).await;
    assert_eq!(
        subscribers.as_array().map(Vec::len),
        Some(usize::from(public)),
        "{subscribers}"
    );

    // Her own worker takes a job and with it a job token.
    let worker = WorkerId::new();
    let registration = mallory
        .ok(
            Method::POST,
            "/orgs/morg/workers",
            Some(json!({"worker_id": worker.0.to_string()})),
        )
        .await;
    let peer: PeerId = serde_json::from_value(registration["peer_id"].clone()).expect("peer id");
    let worker_token = registration["token"].as_str().expect("token").to_owned();
    let project =
        json!({"name": "p", "repository": "https://git.example.com/mallory/p.git", "wildcard": "packages.*.*"});
    mallory.ok(Method::POST, "/projects/morg", Some(project)).await;
    let mut ws = connect_worker(&server, worker, peer, &worker_token).await;
    mallory
        .ok(
            Method::POST,
            "/projects/morg/p/evaluate",
            Some(json!({"commit": "a".repeat(40)})),
        )
        .await;
    let ServerMessage::Assign { job } = receive(&mut ws).await else {
        panic!("no job")
    };
    let Job::Evaluate { job_id, push, .. } = job else {
        panic!("not an evaluation: {job:?}")
    };
    let push = push.expect("a push target");
    assert_eq!(push.cache_url, format!("{}/cache/mcache", server.url));
    let job_token = push.token;

    // With the job token, and with her own key, she cannot write the victim's cache by any route.
    let evil = nar_of(dir.path(), "evil bytes");
    for token in [&job_token, &mallory_key] {
        let statuses = push_everything(&vcache, token, &target, &evil).await;
        assert!(
            statuses.iter().all(|s| [401, 403, 404].contains(s)),
            "refused: {statuses:?}"
        );
    }
    // The same token pushes to her own push cache: it is a working token, only narrow.
    let statuses = push_everything(&push.cache_url, &job_token, &target, &evil).await;
    assert_eq!(statuses, vec![204, 204, 200, 200], "her own cache takes it");

    // Even the victim's own key cannot replace what the cache holds.
    let statuses = push_everything(&vcache, &victim_key, &target, &evil).await;
    assert_eq!(statuses[1], 409, "narinfo of another NAR: path_exists ({statuses:?})");
    assert_eq!(statuses[3], 409, "export of another NAR: path_exists ({statuses:?})");

    // The job ends: its token stops working within seconds.
    send(
        &mut ws,
        &WorkerMessage::JobFinished {
            job_id,
            outcome: JobOutcome::Failed {
                kind: proto::FailureKind::Infrastructure,
                message: "test over".into(),
            },
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = reqwest::Client::new()
            .post(format!("{}/missing", push.cache_url))
            .bearer_auth(&job_token)
            .body(format!("{target}\n"))
            .send()
            .await
            .expect("missing")
            .status()
            .as_u16();
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job token still works after its job ended: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The victim's path is unchanged and still substitutes, signed, into a fresh store.
    let (status, after) = narinfo_text(&vcache, &victim_key, &target).await;
    assert_eq!((status, &after), (200, &before), "the narinfo is the one first pushed");
    let fresh = dir.path().join("fresh");
    let fresh = fresh.to_str().expect("path");
    let wanted: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = substitute(&vcache, fresh, Some(&netrc), &public_key, &wanted);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in &paths {
        let out = nix_store(&["--store", fresh, "--verify-path", p]);
        assert!(out.status.success(), "{p}: {}", String::from_utf8_lossy(&out.stderr));
    }
    server.stop();
}

#[tokio::test]
async fn another_tenant_cannot_poison_a_public_cache() {
    another_tenant_cannot_poison(true).await;
}

#[tokio::test]
async fn another_tenant_cannot_poison_a_private_cache() {
    another_tenant_cannot_poison(false).await;
}
