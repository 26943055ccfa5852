//! What an operator configures and watches: `/metrics` (token, rate, the series and that none names a tenant's
//! thing) and the limits on serving NARs. In-process (poem's TestClient) on SQLite like `tests/api.rs`, or on
//! a real listener where a slow TCP reader matters.

use gradient_server::config::Config;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};
use std::collections::HashMap;

const TOKEN: &str = "scrape-token-4f6c1e0b9a8d7c6b5a4f3e2d1c0b";

struct Server {
    client: TestClient<BoxEndpoint<'static, poem::Response>>,
    config: Config,
    state: gradient_server::state::AppState,
    dir: tempfile::TempDir,
}

/// A server with these variables; `GRADIENT_METRICS_TOKEN_FILE=@token` is replaced by a file holding [`TOKEN`].
async fn server_with(vars: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in vars {
        let v = if *v == "@token" {
            let file = dir.path().join("metrics-token");
            std::fs::write(&file, format!("{TOKEN}\n")).expect("token file");
            file.display().to_string()
        } else {
            v.to_string()
        };
        env.insert(k.to_string(), v);
    }
    env.insert("GRADIENT_BASE_DIR".into(), dir.path().display().to_string());
    let config = Config::from_vars(&env).expect("config");
    let state = gradient_server::build_state(&config).await.expect("state");
    let ep = gradient_server::app(state.clone()).boxed();
    Server {
        client: TestClient::new(ep),
        config,
        state,
        dir,
    }
}

impl Server {
    async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let mut req = self.client.request(method.clone(), format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.body_json(&b);
        }
        let resp = req.send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).expect("JSON")["message"].clone()
    }

    async fn user(&self, name: &str) -> String {
        let body =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": "password123"});
        self.api(Method::POST, "/auth/basic/register", None, Some(body)).await;
        let login = json!({"loginname": name, "password": "password123"});
        self.api(Method::POST, "/auth/basic/login", None, Some(login))
            .await
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// `GET /metrics` with this `Authorization` value: status and body.
    async fn scrape(&self, authorization: Option<&str>) -> (StatusCode, String) {
        let mut req = self.client.get("/metrics");
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await;
        let status = resp.0.status();
        (status, resp.0.into_body().into_string().await.expect("body"))
    }

    async fn metrics(&self) -> String {
        let (status, text) = self.scrape(Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        text
    }

    /// Pushes the fixture path `text.txt` (a 128-byte NAR) into `cache` as `nix copy` does; answers the NAR's URL.
    async fn push_fixture(&self, cache: &str, token: &str) -> (String, String) {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../domain/tests/fixtures/nix/cache");
        let hash = "33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg";
        let narinfo = std::fs::read_to_string(format!("{fixtures}/{hash}.narinfo")).expect("fixture narinfo");
        let narinfo: String = narinfo
            .lines()
            .filter(|l| !l.starts_with("Sig:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let url = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .expect("URL")
            .to_owned();
        let nar = std::fs::read(format!("{fixtures}/{url}")).expect("fixture NAR");
        let auth = format!("Bearer {token}");
        let resp = self
            .client
            .put(format!("/cache/{cache}/{url}"))
            .header("Authorization", &auth)
            .body(nar)
            .send()
            .await;
        assert_eq!(resp.0.status(), StatusCode::NO_CONTENT, "the NAR is accepted");
        let resp = self
            .client
            .put(format!("/cache/{cache}/{hash}.narinfo"))
            .header("Authorization", &auth)
            .body(narinfo)
            .send()
            .await;
        assert_eq!(resp.0.status(), StatusCode::NO_CONTENT, "the narinfo is accepted");
        (hash.to_owned(), url)
    }
}

/// The value of the series with exactly these labels (`name{a="b"}`), or of the unlabelled series.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_are_404_without_a_token_file() {
    let s = server_with(&[]).await;
    assert_eq!(s.scrape(None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.scrape(Some("Bearer anything")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_need_the_token_and_count_what_happens_without_naming_anything() {
    let s = server_with(&[("GRADIENT_METRICS_TOKEN_FILE", "@token")]).await;
    for wrong in [
        None,
        Some("Bearer nope"),
        Some(&*format!("Basic {TOKEN}")),
        Some("Bearer "),
    ] {
        let (status, body) = s.scrape(wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(!body.contains("gradient_"), "nothing is shown without the token");
    }
    // Distinctive names, to look for afterwards.
    let token = s.user("zebulon").await;
    s.api(
        Method::POST,
        "/orgs",
        Some(&token),
        Some(json!({"name": "quokkaorg", "display_name": "Quokka Labs", "description": "secret plans"})),
    )
    .await;
    s.api(
        Method::POST,
        "/projects/quokkaorg",
        Some(&token),
        Some(
            json!({"name": "wombatproj", "display_name": "Wombat", "description": "",
            "repository": "https://git.example.com/quokka/wombat.git", "wildcard": "*"}),
        ),
    )
    .await;
    s.api(
        Method::POST,
        "/caches",
        Some(&token),
        Some(
            json!({"name": "platypuscache", "display_name": "Platypus", "description": "", "priority": 40,
            "public": false}),
        ),
    )
    .await;

    let before = s.metrics().await;
    let hits =
        |text: &str, kind: &str| sample(text, &format!("gradient_cache_hits_total{{kind=\"{kind}\"}}")).unwrap_or(0.0);
    let (hash, url) = s.push_fixture("platypuscache", &token).await;
    let auth = format!("Bearer {token}");
    let resp = s
        .client
        .get(format!("/cache/platypuscache/{hash}.narinfo"))
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::OK);
    let resp = s
        .client
        .get(format!("/cache/platypuscache/{url}"))
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::OK);
    let served = resp.0.into_body().into_bytes().await.expect("NAR").len();
    let resp = s
        .client
        .get("/cache/platypuscache/0000000000000000000000000000000a.narinfo")
        .header("Authorization", &auth)
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::NOT_FOUND);

    let after = s.metrics().await;
    assert_eq!(hits(&after, "narinfo") - hits(&before, "narinfo"), 1.0, "{after}");
    assert_eq!(hits(&after, "nar") - hits(&before, "nar"), 1.0, "{after}");
    assert!(sample(&after, "gradient_cache_misses_total{kind=\"narinfo\"}").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sample(&after, "gradient_cache_served_bytes_total"),
        Some(served as f64),
        "{after}"
    );
    assert!(sample(&after, "gradient_cache_pushed_bytes_total").is_some_and(|n| n >= 128.0));
    assert_eq!(sample(&after, "gradient_nar_store_files"), Some(1.0));
    assert_eq!(sample(&after, "gradient_nar_store_bytes"), Some(128.0));
    assert_eq!(sample(&after, "gradient_evaluations{status=\"Queued\"}"), Some(0.0));
    assert_eq!(sample(&after, "gradient_builds{status=\"Completed\"}"), Some(0.0));
    assert_eq!(sample(&after, "gradient_queue_jobs{state=\"queued\"}"), Some(0.0));
    assert_eq!(sample(&after, "gradient_workers_connected"), Some(0.0));
    assert!(sample(&after, "gradient_db_connections{pool=\"web\",state=\"max\"}").is_some());
    assert!(
        after.contains("gradient_http_requests_total{route=\"/api/v1/orgs\",method=\"POST\",status=\"200\"} 1"),
        "{after}"
    );
    assert!(after.contains("route=\"/cache/{cache}/{file}\""), "{after}");
    // Every series the documentation lists is served, and each has its help text.
    for (name, kind, _) in gradient_server::metrics::SERIES {
        if !name.contains("duration") && !name.contains("ended") && !name.contains("refused") {
            assert!(
                after.contains(&format!("# TYPE {name} {kind}")),
                "{name} is served: {after}"
            );
        }
    }
    for private in [
        "zebulon", "quokka", "Quokka", "wombat", "Wombat", "platypus", "Platypus", "secret", &hash,
    ] {
        assert!(!after.contains(private), "{private} appears in /metrics:\n{after}");
    }
}

#[tokio::test]
async fn scrapes_beyond_the_rate_are_refused_with_retry_after() {
    let s = server_with(&[("GRADIENT_METRICS_TOKEN_FILE", "@token")]).await;
    let auth = format!("Bearer {TOKEN}");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = s.client.get("/metrics").header("Authorization", &auth).send().await;
        if resp.0.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry = resp.0.headers().get("retry-after").and_then(|v| v.to_str().ok());
            assert_eq!(retry, Some("1"));
        }
        statuses.push(resp.0.status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (5..=7).contains(&ok),
        "a burst of 5 (and one more per 1/6 s): {statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // Requests without the token do not use up the scraper's rate.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(s.scrape(Some("Bearer wrong")).await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.scrape(Some(&auth)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn docs_metrics_md_lists_every_series() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md"))
        .expect("docs/metrics.md");
    for (name, kind, _) in gradient_server::metrics::SERIES {
        assert!(doc.contains(&format!("`{name}`")), "docs/metrics.md lists {name}");
        assert!(doc.contains(kind), "{kind}");
    }
}

/// A NAR of one regular file holding `content`.
fn nar_of(content: &[u8]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    let mut out = Vec::with_capacity(content.len() + 128);
    for s in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents"] {
        string(&mut out, s);
    }
    string(&mut out, content);
    string(&mut out, b")");
    out
}

/// A server on a real listener (a slow TCP reader needs one), with a private cache holding one NAR of `size`
/// content bytes; answers the server, the owner's token, the NAR's path and its length.
async fn listening_with_nar(vars: &[(&str, &str)], size: usize) -> (Server, std::net::SocketAddr, String, String, u64) {
    use poem::listener::{Acceptor, Listener};
    let s = server_with(vars).await;
    let token = s.user("owner").await;
    s.api(
        Method::POST,
        "/caches",
        Some(&token),
        Some(json!({"name": "big", "display_name": "Big", "description": "", "priority": 40, "public": false})),
    )
    .await;
    let nar = nar_of(&vec![b'x'; size]);
    let hash = gradient_domain::nix::nix32::encode(&gradient_domain::nix::hash::sha256_of(&nar).bytes);
    let path = format!("/cache/big/nar/{hash}.nar");
    let len = nar.len() as u64;
    let resp = s
        .client
        .put(&path)
        .header("Authorization", format!("Bearer {token}"))
        .body(nar)
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::NO_CONTENT);
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("listen");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("a TCP address");
    let app = gradient_server::app(s.state.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    (s, addr, token, path, len)
}

/// A raw HTTP/1.1 GET: answers the connection after the status line and headers were read, with the status,
/// the headers' text and the body bytes that came with them.
async fn raw_get(addr: std::net::SocketAddr, path: &str, token: &str) -> (tokio::net::TcpStream, u16, String, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 4096];
    let end = loop {
        let n = conn.read(&mut byte).await.expect("read");
        assert!(n > 0, "the connection closed before the headers");
        head.extend_from_slice(&byte[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status = text[9..12].parse().expect("status");
    (conn, status, text, head.len() - end)
}

/// Reads until `want` bytes came, the server closed or `limit` passed; answers the bytes read and whether the
/// server closed the connection.
async fn drain(conn: &mut tokio::net::TcpStream, want: usize, limit: std::time::Duration) -> (usize, bool) {
    use tokio::io::AsyncReadExt;
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    let deadline = tokio::time::Instant::now() + limit;
    while total < want {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (total, true),
            Err(_) => return (total, false),
            Ok(Ok(n)) => total += n,
        }
    }
    (total, false)
}

/// Larger than what the sockets and the read-ahead hold, so a reader that stops reading stalls the download.
const BIG: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_after_the_chunk_timeout() {
    let (s, addr, token, path, len) = listening_with_nar(
        &[
            ("GRADIENT_NAR_SEND_CHUNK_TIMEOUT_SECS", "1"),
            ("GRADIENT_MAX_CONCURRENT_NAR_SERVES", "1"),
        ],
        BIG,
    )
    .await;
    let (mut stalled, status, _, early) = raw_get(addr, &path, &token).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (got, closed) = drain(&mut stalled, len as usize, std::time::Duration::from_secs(20)).await;
    let got = early + got;
    assert!(
        (got as u64) < len && closed,
        "cut off: {got} of {len} bytes, closed: {closed}"
    );
    // Its slot is free again: a reader that keeps reading gets the whole NAR.
    let (mut reader, status, _, early) = raw_get(addr, &path, &token).await;
    assert_eq!(status, 200);
    let got = early
        + drain(&mut reader, len as usize - early, std::time::Duration::from_secs(60))
            .await
            .0;
    assert_eq!(got as u64, len, "a reading client gets everything");
    drop(s);
}

#[tokio::test]
async fn a_stalled_reader_is_not_cut_off_before_the_chunk_timeout() {
    let (_s, addr, token, path, len) = listening_with_nar(&[("GRADIENT_NAR_SEND_CHUNK_TIMEOUT_SECS", "30")], BIG).await;
    let (mut stalled, status, _, early) = raw_get(addr, &path, &token).await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let got = early
        + drain(&mut stalled, len as usize - early, std::time::Duration::from_secs(60))
            .await
            .0;
    assert_eq!(got as u64, len, "a 4 s pause is within 30 s");
}

#[tokio::test]
async fn downloads_beyond_the_limit_get_503_with_retry_after() {
    let (s, addr, token, path, len) = listening_with_nar(&[("GRADIENT_MAX_CONCURRENT_NAR_SERVES", "2")], BIG).await;
    let (mut first, a, _, first_early) = raw_get(addr, &path, &token).await;
    let (mut second, b, _, second_early) = raw_get(addr, &path, &token).await;
    assert_eq!((a, b), (200, 200));
    let started = std::time::Instant::now();
    let (_, status, head, _) = raw_get(addr, &path, &token).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    assert!(
        started.elapsed() >= gradient_server::cache::NAR_SERVE_WAIT,
        "it waited for a slot first"
    );
    // HEAD and narinfo requests are not downloads.
    let resp = s
        .client
        .head(&path)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::OK);
    // A slot that frees within the wait is taken.
    let third = tokio::spawn(async move {
        let (mut conn, status, _, early) = raw_get(addr, &path, &token).await;
        (
            status,
            early
                + drain(&mut conn, len as usize - early, std::time::Duration::from_secs(60))
                    .await
                    .0,
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (got, _) = drain(
        &mut first,
        len as usize - first_early,
        std::time::Duration::from_secs(60),
    )
    .await;
    assert!(got > 0);
    let (status, got) = third.await.expect("third");
    assert_eq!((status, got as u64), (200, len));
    let _ = drain(
        &mut second,
        len as usize - second_early,
        std::time::Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn a_download_holds_at_most_the_buffer_size() {
    let read_ahead = gradient_server::cache::NAR_READ_AHEAD as f64;
    for (limit, bound) in [("65536", 65_536.0), ("10737418240", read_ahead)] {
        let (s, addr, token, path, _) = listening_with_nar(
            &[
                ("GRADIENT_MAX_NAR_BUFFER_BYTES", limit),
                ("GRADIENT_METRICS_TOKEN_FILE", "@token"),
            ],
            BIG,
        )
        .await;
        let (_stalled, status, _, _) = raw_get(addr, &path, &token).await;
        assert_eq!(status, 200);
        // The socket's buffers fill; the store is read only when the connection asks for more, one piece.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let held = sample(&s.metrics().await, "gradient_nar_buffered_bytes").expect("gauge");
        assert!(held <= bound, "limit {limit}: {held} bytes held");
    }
}

#[tokio::test]
async fn a_store_that_does_not_open_the_nar_in_time_gets_503() {
    let (s, addr, token, path, _) = listening_with_nar(&[("GRADIENT_NAR_STORAGE_OPEN_TIMEOUT_SECS", "1")], 1024).await;
    // The NAR's file becomes a FIFO: opening it for reading blocks until a writer comes.
    let file = path.rsplit('/').next().expect("file name").to_owned();
    let nars = s.dir.path().join("nars");
    let stored = walk(&nars)
        .into_iter()
        .find(|p| p.ends_with(&file))
        .expect("the NAR's file");
    std::fs::remove_file(&stored).expect("remove");
    let made = std::process::Command::new("mkfifo")
        .arg(&stored)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let started = std::time::Instant::now();
    let (_, status, head, _) = raw_get(addr, &path, &token).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(1) && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
    // Let the blocked open finish.
    let _writer = std::fs::OpenOptions::new().write(true).open(&stored);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn the_database_pools_are_sized_as_configured() {
    let s = server_with(&[
        ("GRADIENT_METRICS_TOKEN_FILE", "@token"),
        ("GRADIENT_DATABASE_MAX_CONNECTIONS", "7"),
        ("GRADIENT_DATABASE_MIN_CONNECTIONS", "3"),
        ("GRADIENT_DATABASE_WEB_MAX_CONNECTIONS", "5"),
        ("GRADIENT_DATABASE_WEB_MIN_CONNECTIONS", "2"),
    ])
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = s.metrics().await;
        let at = |pool: &str, state: &str| {
            sample(
                &m,
                &format!("gradient_db_connections{{pool=\"{pool}\",state=\"{state}\"}}"),
            )
            .expect("series")
        };
        assert_eq!((at("main", "max"), at("web", "max")), (7.0, 5.0), "{m}");
        // The minimums are kept open (sqlx opens them in the background).
        if at("main", "open") >= 3.0 && at("web", "open") >= 2.0 {
            assert!(at("main", "open") <= 7.0 && at("web", "open") <= 5.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the minimums are not kept open:\n{m}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Registrations from distinct `X-Forwarded-For` addresses: counted per address only when the peer (here the
/// in-process client, 127.0.0.1) is a trusted proxy.
#[tokio::test]
async fn only_trusted_proxies_name_the_client_address() {
    async fn registrations_allowed(s: &Server) -> usize {
        let mut allowed = 0;
        for i in 0..25 {
            let body = json!({"username": format!("u{i}"), "name": "U", "email": format!("u{i}@example.com"),
                "password": "password123"});
            let resp = s
                .client
                .post("/api/v1/auth/basic/register")
                .header("X-Forwarded-For", format!("198.51.100.{i}"))
                .body_json(&body)
                .send()
                .await;
            if resp.0.status() == StatusCode::OK {
                allowed += 1;
            }
        }
        allowed
    }
    let trusted = server_with(&[]).await;
    assert_eq!(
        registrations_allowed(&trusted).await,
        25,
        "each forwarded address has its own budget"
    );
    let untrusted = server_with(&[("GRADIENT_TRUSTED_PROXIES", "192.0.2.1/32")]).await;
    assert_eq!(
        registrations_allowed(&untrusted).await,
        gradient_server::limits::REGISTER_PER_ADDRESS.burst as usize,
        "an untrusted peer is one client whatever it forwards"
    );
}

/// A local HTTP endpoint posing as Sentry: answers every request 200 and hands over each request's text.
async fn fake_sentry() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_owned())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            let _ = tx.send(text);
                            break;
                        }
                    }
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn internal_errors_are_reported_without_secrets() {
    let (port, mut reports) = fake_sentry().await;
    let dsn = format!("http://publickey@127.0.0.1:{port}/42");
    let (s, _, token, path, _) = listening_with_nar(
        &[
            ("GRADIENT_REPORT_ERRORS", "true"),
            ("GRADIENT_SENTRY_DSN", &dsn),
            ("GRADIENT_METRICS_TOKEN_FILE", "@token"),
        ],
        1024,
    )
    .await;
    let _reporting = gradient_server::reporting::start(&s.config)
        .expect("settings")
        .expect("reporting is on");
    // The NAR's file becomes a link to itself: the store cannot open it, a storage failure (503), reported.
    let file = path.rsplit('/').next().expect("file name").to_owned();
    let stored = walk(&s.dir.path().join("nars"))
        .into_iter()
        .find(|p| p.ends_with(&file))
        .expect("the NAR's file");
    std::fs::remove_file(&stored).expect("remove");
    std::os::unix::fs::symlink(&stored, &stored).expect("symlink");
    let resp = s
        .client
        .get(&path)
        .header("Authorization", format!("Bearer {token}"))
        .header("Cookie", "session=cookie-secret-value")
        .send()
        .await;
    assert_eq!(resp.0.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report = loop {
        let text = tokio::time::timeout(std::time::Duration::from_secs(15), reports.recv())
            .await
            .expect("a report arrives within 15 s")
            .expect("the endpoint runs");
        if text.contains("opening") {
            break text;
        }
    };
    assert!(report.starts_with("POST /api/42/envelope/"), "{report}");
    assert!(report.contains("sentry_key=publickey"), "{report}");
    assert!(
        report.contains("cache: opening"),
        "the internal error is the message: {report}"
    );
    let jwt = std::fs::read_to_string(s.dir.path().join("jwt-secret")).expect("jwt secret");
    let crypt = std::fs::read_to_string(s.dir.path().join("crypt-secret")).expect("crypt secret");
    for secret in [
        token.as_str(),
        TOKEN,
        jwt.trim(),
        crypt.trim(),
        "cookie-secret-value",
        "Bearer",
        "password123",
    ] {
        assert!(
            !report.contains(secret),
            "the report holds a secret ({secret}):\n{report}"
        );
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    assert!(
        !report.contains(&format!("\"server_name\":\"{}\"", host.trim())),
        "the report names the server's host:\n{report}"
    );
}
