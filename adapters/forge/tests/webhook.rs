//! The outgoing webhook contract against the HTTP adapter, with small HTTP receivers on loopback.
#![allow(clippy::unwrap_used)]

use gradient_domain::ports::webhook::{Outgoing, OutgoingError, WebhookSender};
use gradient_domain::reach::NetworkPolicy;
use gradient_forge::HttpForge;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use gradient_ports::webhook::contract::Received as Request;

type Received = Arc<Mutex<Vec<Request>>>;

/// The adapter with loopback allowed and private ranges denied, and what its receivers got.
struct Harness {
    forge: HttpForge,
    received: Received,
}

/// Reads one HTTP/1.1 request (headers, then Content-Length bytes), records it and answers `status`.
async fn serve(mut socket: tokio::net::TcpStream, status: u16, received: Received) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
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
    received.lock().unwrap().push((headers, buf[head_end..].to_vec()));
    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = socket.write_all(answer.as_bytes()).await;
}

impl WebhookSender for Harness {
    async fn post(&self, request: &Outgoing) -> Result<u16, OutgoingError> {
        self.forge.post(request).await
    }
}

impl gradient_ports::webhook::contract::Receiving for Harness {
    async fn target(&self, status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, status, received.clone()));
            }
        });
        format!("http://127.0.0.1:{port}/hook")
    }

    async fn received(&self) -> Vec<Request> {
        self.received.lock().unwrap().clone()
    }

    fn forbidden(&self) -> String {
        // Refused by the policy before any connection is tried.
        "http://10.1.2.3/hook".to_owned()
    }

    fn nowhere(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/hook")
    }
}

async fn fresh() -> Harness {
    let policy = NetworkPolicy {
        allow_local: true,
        deny_private: true,
    };
    Harness {
        forge: HttpForge::new(policy).unwrap(),
        received: Arc::default(),
    }
}

gradient_ports::webhook_contract!(fresh);

/// The default policy refuses loopback, so a webhook cannot reach the server's own machine.
#[tokio::test]
async fn loopback_is_refused_by_default() {
    let forge = HttpForge::new(NetworkPolicy::default()).unwrap();
    let request = Outgoing {
        url: "http://127.0.0.1:9/hook".into(),
        headers: vec![],
        body: vec![],
    };
    assert!(matches!(forge.post(&request).await, Err(OutgoingError::Refused(_))));
    let by_name = Outgoing {
        url: "http://localhost:9/hook".into(),
        ..request
    };
    // The resolver drops loopback addresses: nothing is connected to.
    assert!(forge.post(&by_name).await.is_err());
}
