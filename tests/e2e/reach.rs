//! The server reaches only what it should: repositories and forge APIs on this machine (file://, loopback,
//! link-local, cloud metadata) are refused unless GRADIENT_ALLOW_LOCAL_REPOSITORIES=true, private networks
//! only with GRADIENT_DENY_PRIVATE_NETWORKS=true, and the poller checks the addresses it connects to, not
//! only the URL saved.

use crate::harness::{Client, Server};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const STRICT: (&str, &str) = ("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "false");

async fn org(c: &mut Client) {
    c.register_with_key("alice").await;
    c.ok(Method::POST, "/orgs", Some(json!({"name": "acme"}))).await;
}

/// Creating a project with `repository`: the status and the error code.
async fn create(c: &Client, name: &str, repository: &str) -> (u16, String) {
    let (status, v) = c
        .call(
            Method::POST,
            "/projects/acme",
            Some(json!({"name": name, "repository": repository})),
        )
        .await;
    (status, v["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn local_repositories_and_forges_are_refused_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[STRICT]).await;
    let mut c = Client::new(&server);
    org(&mut c).await;
    let local = [
        format!("file://{}", dir.path().display()),
        format!("git+file://{}", dir.path().display()),
        "http://127.0.0.1:9/a.git".to_owned(),
        "http://localhost:9/a.git".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]/a.git".to_owned(),
        "http://[::ffff:127.0.0.1]/a.git".to_owned(),
        "http://0.0.0.0/a.git".to_owned(),
        "http://2130706433/a.git".to_owned(),
        "git@127.0.0.1:a/b.git".to_owned(),
    ];
    for url in &local {
        assert_eq!(
            create(&c, "p", url).await,
            (422, "repository_not_allowed".to_owned()),
            "{url}"
        );
    }
    assert_eq!(
        create(&c, "p", "ext::sh -c touch% /tmp/x").await,
        (422, "invalid_repository".to_owned())
    );
    // Private networks are where self-hosted forges live: allowed by default. (No poll interval: the server
    // never connects there.)
    assert_eq!(create(&c, "private", "https://10.0.0.7/a.git").await.0, 200);
    assert_eq!(create(&c, "lan", "git@192.168.1.10:a/b.git").await.0, 200);
    // An update is held to the same rule.
    let (status, v) = c
        .call(
            Method::PATCH,
            "/projects/acme/private",
            Some(json!({"repository": "http://127.0.0.1:9/a.git"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("repository_not_allowed")),
        "{v}"
    );
    // Forge APIs: the token would be sent there.
    for api_url in [
        "http://127.0.0.1:3000",
        "http://localhost",
        "http://169.254.169.254",
        "http://[::1]:80",
    ] {
        let (status, v) = c
            .call(
                Method::PUT,
                "/orgs/acme/forge",
                Some(json!({"forge": "gitea", "api_url": api_url, "token": "t"})),
            )
            .await;
        assert_eq!(
            (status, v["code"].as_str()),
            (422, Some("api_url_not_allowed")),
            "{api_url}: {v}"
        );
    }
    server.stop();

    // The operator of a shared instance denies private networks too.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[STRICT, ("GRADIENT_DENY_PRIVATE_NETWORKS", "true")]).await;
    let mut c = Client::new(&server);
    org(&mut c).await;
    for url in [
        "https://10.0.0.7/a.git",
        "git@192.168.1.10:a/b.git",
        "http://[fd00::7]/a.git",
        "http://100.64.0.1/a",
    ] {
        assert_eq!(
            create(&c, "p", url).await,
            (422, "repository_not_allowed".to_owned()),
            "{url}"
        );
    }
    assert_eq!(create(&c, "public", "https://git.example.com/a.git").await.0, 200);
    let (status, v) = c
        .call(
            Method::PUT,
            "/orgs/acme/forge",
            Some(json!({"forge": "gitea", "api_url": "https://10.1.2.3", "token": "t"})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (422, Some("api_url_not_allowed")), "{v}");
    server.stop();
}

/// A TCP listener on loopback that counts the connections it gets.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, count)
}

/// A name other than `localhost` that this machine resolves to a loopback address (from /etc/hosts), if any.
fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    hosts.lines().find_map(|line| {
        let mut words = line.split('#').next()?.split_whitespace();
        let ip: std::net::IpAddr = words.next()?.parse().ok()?;
        if !ip.is_loopback() {
            return None;
        }
        words
            .find(|n| {
                let n = n.to_ascii_lowercase();
                n != "localhost" && !n.ends_with(".localhost") && n.chars().any(|c| c.is_ascii_alphabetic())
            })
            .map(str::to_owned)
    })
}

#[tokio::test]
async fn the_poller_checks_the_address_it_connects_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, connections) = counting_listener().await;
    // Allowed: the poller reaches the local repository (the listener is no git server; the poll just fails).
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    org(&mut c).await;
    let local =
        json!({"name": "local", "repository": format!("http://127.0.0.1:{port}/a.git"), "poll_interval_secs": 1});
    c.ok(Method::POST, "/projects/acme", Some(local)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the poller never reached the allowed repository"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();

    // The same database under the default policy: the saved URL is refused when the poller would connect.
    let server = Server::start(dir.path(), &[STRICT]).await;
    let mut c2 = Client::new(&server);
    c2.token = c.token.clone();
    let alias = loopback_alias();
    if let Some(name) = &alias {
        // A name that is not `localhost` is accepted when saved; it resolves to loopback when polled.
        let project =
            json!({"name": "alias", "repository": format!("http://{name}:{port}/b.git"), "poll_interval_secs": 1});
        c2.ok(Method::POST, "/projects/acme", Some(project)).await;
    } else {
        eprintln!("no loopback alias in /etc/hosts: only the saved loopback URL is polled");
    }
    connections.store(0, Ordering::SeqCst);
    let log = || std::fs::read_to_string(&server.log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = log();
        let refused_local = text.contains(&format!("127.0.0.1:{port}/a.git: 127.0.0.1 is a loopback address"));
        let refused_alias = alias.is_none() || text.contains("resolves to 127.");
        if refused_local && refused_alias {
            break;
        }
        assert!(Instant::now() < deadline, "the poller did not refuse:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more poll rounds: still nothing reaches the listener.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused repository was reached:\n{}",
        log()
    );
    let evals = c2.ok(Method::GET, "/projects/acme/local/evaluations", None).await;
    assert_eq!(evals.as_array().map(Vec::len), Some(0), "{evals}");
    server.stop();
}
