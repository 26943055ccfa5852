//! The adapter against a loopback HTTP server: what it sends, and how answers are classified.

use gradient_domain::forge::Forge;
use gradient_domain::model::CommitState;
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget};
use gradient_domain::reach::NetworkPolicy;
use gradient_forge::HttpForge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Answers one request with `status`; returns the address and the raw request received.
async fn one_shot(status: u16) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length || n == 0 {
                    break;
                }
            } else if n == 0 {
                break;
            }
        }
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope");
        socket.write_all(answer.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&raw).to_string()
    });
    (format!("http://{addr}"), handle)
}

fn target(forge: Forge, api_url: &str) -> ForgeTarget {
    ForgeTarget {
        forge,
        api_url: api_url.to_owned(),
        token: "s3cret".to_owned(),
        repository_url: "https://git.example.com/acme/web.git".to_owned(),
    }
}

#[tokio::test]
async fn a_gitea_status_is_posted_with_its_token() {
    let (url, request) = one_shot(201).await;
    let forge = HttpForge::new(NetworkPolicy::ALLOW_ALL).expect("client");
    forge
        .set_status(
            &target(Forge::Gitea, &url),
            SHA,
            CommitState::Pending,
            "http://ci/e",
            "running",
        )
        .await
        .expect("delivered");
    let raw = request.await.expect("request");
    assert!(
        raw.starts_with(&format!("POST /api/v1/repos/acme/web/statuses/{SHA} HTTP/1.1")),
        "{raw}"
    );
    assert!(
        raw.to_ascii_lowercase().contains("authorization: token s3cret"),
        "{raw}"
    );
    assert!(raw.contains(r#""state":"pending""#), "{raw}");
    assert!(raw.contains(r#""context":"gradient""#), "{raw}");
}

#[tokio::test]
async fn server_errors_are_unavailable_and_refusals_rejected() {
    let forge = HttpForge::new(NetworkPolicy::ALLOW_ALL).expect("client");
    let (url, _h) = one_shot(500).await;
    let r = forge
        .set_status(&target(Forge::GitHub, &url), SHA, CommitState::Success, "u", "d")
        .await;
    assert!(matches!(r, Err(ForgeError::Unavailable(_))), "{r:?}");
    let (url, _h) = one_shot(401).await;
    let r = forge
        .set_status(&target(Forge::GitLab, &url), SHA, CommitState::Success, "u", "d")
        .await;
    assert!(matches!(r, Err(ForgeError::Rejected(_))), "{r:?}");
    // Nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let r = forge
        .set_status(
            &target(Forge::Gitea, &format!("http://{addr}")),
            SHA,
            CommitState::Success,
            "u",
            "d",
        )
        .await;
    assert!(matches!(r, Err(ForgeError::Unavailable(_))), "{r:?}");
}

/// A one-shot server that must not be reached: answers whether a connection came.
async fn must_not_be_reached() -> (u16, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = tokio::spawn(async move {
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.accept())
            .await
            .is_ok()
    });
    (port, handle)
}

#[tokio::test]
async fn local_forges_are_refused_by_address_and_by_what_names_resolve_to() {
    let forge = HttpForge::new(NetworkPolicy::default()).expect("client");
    // `localhost` resolves to loopback at connection time; the literal forms are refused before connecting.
    for host in ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]", "2130706433"] {
        let (port, reached) = must_not_be_reached().await;
        let r = forge
            .set_status(
                &target(Forge::Gitea, &format!("http://{host}:{port}")),
                SHA,
                CommitState::Success,
                "u",
                "d",
            )
            .await;
        let message = format!("{r:?}");
        assert!(r.is_err(), "{host}: {message}");
        assert!(message.contains("not allowed"), "{host}: {message}");
        assert!(!reached.await.expect("task"), "{host}: the local server was reached");
    }
}
