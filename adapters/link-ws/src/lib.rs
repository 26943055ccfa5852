//! The worker's end of the `/proto` link: dials the server's WebSocket, sends `WorkerMessage`s and
//! receives `ServerMessage`s as JSON text frames, enforcing the protocol's frame size limit both ways.
//! (The server's end lives in the server app, on poem's WebSocket.) `wss://` runs over rustls (ring), trusting
//! the webpki roots, the system's bundle and the extra CA certificates the worker is given ([`TlsRoots`]);
//! nothing falls back to plain `ws://`.

use futures_util::{SinkExt, StreamExt};
use gradient_domain::proto::{self, MAX_FRAME_BYTES, ServerMessage, WorkerMessage};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server answered the upgrade with an HTTP status (e.g. 503 when it is full, with its Retry-After).
    #[error("the server refused the connection: HTTP {status}")]
    Refused { status: u16, retry_after_secs: Option<u64> },
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server's certificate did not verify; `unknown_issuer` when no trusted CA signed it (a private CA's
    /// certificate the worker was not given, or a self-signed one).
    #[error("the server's certificate is not trusted ({reason})")]
    Untrusted { reason: String, unknown_issuer: bool },
    /// The TLS handshake failed otherwise (e.g. the other end does not speak TLS).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The server sent something that is not a protocol message.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed; `reason` is the server's close reason, if any.
    #[error("connection closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed { reason: Option<String> },
    #[error("link failed: {0}")]
    Io(String),
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct LinkSender(futures_util::stream::SplitSink<Ws, Message>);
pub struct LinkReceiver(futures_util::stream::SplitStream<Ws>);

/// What a `wss://` link trusts: the webpki roots (Mozilla's list), the system's bundle and any extra CA
/// certificates; [`TlsRoots::client_config`] gives the same trust to the worker's other https clients.
#[derive(Clone, Debug)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl TlsRoots {
    /// The webpki roots, the certificates of `system_pem` that can be roots (the system's bundle; the others
    /// are skipped, as any TLS client does), and every certificate of `extra_ca_pem` (a PEM bundle, e.g. a
    /// private CA). An extra bundle holding no certificate, or one that cannot be a root, is an error, so a wrong
    /// file is noticed at start.
    pub fn new(extra_ca_pem: Option<&[u8]>, system_pem: Option<&[u8]>) -> Result<Self, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = system_pem {
            roots.add_parsable_certificates(CertificateDer::pem_slice_iter(pem).filter_map(Result::ok));
        }
        if let Some(pem) = extra_ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate that cannot be a root: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("holds no PEM certificate".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(Arc::new(config)))
    }

    /// The rustls client configuration with this trust, for another client (the cache client's reqwest).
    pub fn client_config(&self) -> rustls::ClientConfig {
        (*self.0).clone()
    }
}

/// Connects to `url` (`ws://host:port/proto` or `wss://host/proto`, the latter verified against `tls`).
pub async fn connect(url: &str, tls: &TlsRoots) -> Result<(LinkSender, LinkReceiver), LinkError> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    // The connector applies to wss:// only; a ws:// URL stays plain, and a wss:// one never becomes plain.
    let connector = Connector::Rustls(tls.0.clone());
    match tokio_tungstenite::connect_async_tls_with_config(url, Some(config), false, Some(connector)).await {
        Ok((ws, _)) => {
            let (tx, rx) = ws.split();
            Ok((LinkSender(tx), LinkReceiver(rx)))
        }
        Err(e) => Err(handshake_failure(e)),
    }
}

/// A WebSocket over TCP, with TLS when dialled as `wss://`: the server's end of a link it dialled to a
/// listening worker (the server frames its own messages on it).
pub type RawLink = Ws;

/// Dials `url` (`ws://` or `wss://`, verified against `tls`) at `addr`, an address the caller resolved and
/// checked (the connection goes exactly there; the URL's host is still the TLS name and the `Host` header).
/// For the server dialling a listening worker; the link is returned whole, for the server's own framing.
pub async fn dial_at(url: &str, addr: std::net::SocketAddr, tls: &TlsRoots) -> Result<RawLink, LinkError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| LinkError::Connect(format!("{addr}: {e}")))?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let connector = Connector::Rustls(tls.0.clone());
    match tokio_tungstenite::client_async_tls_with_config(url, tcp, Some(config), Some(connector)).await {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(handshake_failure(e)),
    }
}

/// What a listening worker does with a connection that reaches its listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Upgrade it.
    Yes,
    /// Answer `503 Service Unavailable` with `Retry-After` (seconds): the worker holds its maximum of links.
    Full { retry_after_secs: u64 },
}

/// The listening worker's end: upgrades a connection that reached its listener at `path`, or answers it with an
/// HTTP status (404 for another path, 503 + `Retry-After` when `admit` says it is full), which is then an error.
pub async fn accept(stream: TcpStream, path: &str, admit: Admit) -> Result<(LinkSender, LinkReceiver), LinkError> {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let refuse = |status: u16, retry_after: Option<u64>, body: &str| -> ErrorResponse {
        let mut resp = tungstenite::http::Response::builder().status(status);
        if let Some(secs) = retry_after {
            resp = resp.header("retry-after", secs.to_string());
        }
        resp.body(Some(body.to_owned()))
            .unwrap_or_else(|_| tungstenite::http::Response::new(None))
    };
    // The callback's type is tungstenite's: its error is the HTTP response to send.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(refuse(404, None, "this worker listens at /proto only\n"));
        }
        match admit {
            Admit::Yes => Ok(resp),
            Admit::Full { retry_after_secs } => Err(refuse(
                503,
                Some(retry_after_secs),
                "this worker holds its maximum of links; retry later\n",
            )),
        }
    };
    match tokio_tungstenite::accept_hdr_async_with_config(MaybeTlsStream::Plain(stream), callback, Some(config)).await {
        Ok(ws) => {
            let (tx, rx) = ws.split();
            Ok((LinkSender(tx), LinkReceiver(rx)))
        }
        Err(tungstenite::Error::Http(resp)) => Err(LinkError::Refused {
            status: resp.status().as_u16(),
            retry_after_secs: None,
        }),
        Err(e) => Err(LinkError::Connect(e.to_string())),
    }
}

fn handshake_failure(e: tungstenite::Error) -> LinkError {
    match e {
        tungstenite::Error::Http(resp) => LinkError::Refused {
            status: resp.status().as_u16(),
            retry_after_secs: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        tungstenite::Error::Io(e) => tls_failure(&e).unwrap_or_else(|| LinkError::Connect(e.to_string())),
        tungstenite::Error::Tls(e) => LinkError::Tls(e.to_string()),
        e => LinkError::Connect(e.to_string()),
    }
}

/// The rustls error inside an I/O error of the handshake, if that is what it is.
fn tls_failure(e: &std::io::Error) -> Option<LinkError> {
    let e = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match e {
        rustls::Error::InvalidCertificate(why) => LinkError::Untrusted {
            reason: format!("{why:?}"),
            unknown_issuer: matches!(why, rustls::CertificateError::UnknownIssuer),
        },
        other => LinkError::Tls(other.to_string()),
    })
}

impl LinkSender {
    pub async fn send(&mut self, msg: &WorkerMessage) -> Result<(), LinkError> {
        let text = proto::encode(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
        self.0
            .send(Message::text(text))
            .await
            .map_err(|e| LinkError::Io(e.to_string()))
    }

    pub async fn close(mut self) {
        let _ = self.0.close().await;
    }
}

impl LinkReceiver {
    /// The next message; `Closed` when the server closed the link (with its reason).
    pub async fn recv(&mut self) -> Result<ServerMessage, LinkError> {
        loop {
            match self.0.next().await {
                None => return Err(LinkError::Closed { reason: None }),
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Err(LinkError::Closed { reason: None }),
                Some(Err(e)) => return Err(LinkError::Io(e.to_string())),
                Some(Ok(Message::Text(t))) => {
                    return proto::decode_server(t.as_str()).map_err(|e| LinkError::Protocol(e.to_string()));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(LinkError::Closed {
                        reason: frame.map(|f| f.reason.to_string()),
                    });
                }
                Some(Ok(Message::Binary(_))) => return Err(LinkError::Protocol("binary frames are not used".into())),
                Some(Ok(_)) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A self-signed CA certificate (no key kept): enough to be a trust anchor.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBpzCCAU2gAwIBAgIUO6qRQj/71h2UDsmzIIGjMiDWJd8wCgYIKoZIzj0EAwIw
KDEmMCQGA1UEAwwdR3JhZGllbnQgbGluay13cyB1bml0IHRlc3QgQ0EwIBcNMjYx
MjA1MTMxMzI4WhgPMjEyNjExMTExMzEzMjhaMCgxJjAkBgNVBAMMHUdyYWRpZW50
IGxpbmstd3MgdW5pdCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
6tulDIzyy7joTBrgmaVafc0dJdkehiehCTGaZvyflLYXDo87ba5AAErq++1dmoGG
vdUjHh5tK/gH8c0va/ZQz6NTMFEwHQYDVR0OBBYEFPb+F2jXfuPAolOHBjinN11y
a4kpMB8GA1UdIwQYMBaAFPb+F2jXfuPAolOHBjinN11ya4kpMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgLQWe3e++r5DDTQ0TNQjs1rHO4Cwmpybu
/Za0J+x8c2ICIQDdjJXdecpPqm46+U/DbPfmwX3N1+uBmcDJxEVLKin7+w==
-----END CERTIFICATE-----
";

    #[test]
    fn extra_roots_are_pem_certificates() {
        assert!(TlsRoots::new(None, None).is_ok());
        assert!(TlsRoots::new(Some(CA.as_bytes()), None).is_ok());
        let two = format!("{CA}{CA}");
        assert!(TlsRoots::new(Some(two.as_bytes()), None).is_ok());
        let e = TlsRoots::new(Some(b"not a certificate\n"), None).unwrap_err();
        assert_eq!(e, "holds no PEM certificate");
        let truncated = &CA[..200];
        assert!(TlsRoots::new(Some(truncated.as_bytes()), None).is_err());
        // The system's bundle is taken as it is: what cannot be a root is skipped.
        let system = format!("{CA}garbage\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(TlsRoots::new(None, Some(system.as_bytes())).is_ok());
    }

    /// A `wss://` dial to something that does not speak TLS fails in the TLS handshake, as such; it is not
    /// retried as plain WebSocket.
    #[tokio::test]
    async fn wss_to_a_plain_server_fails_in_tls_without_falling_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                accepted += 1;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                if accepted == 2 {
                    break;
                }
            }
        });
        let tls = TlsRoots::new(None, None).unwrap();
        match connect(&format!("wss://127.0.0.1:{port}/proto"), &tls).await {
            Err(LinkError::Tls(why)) => assert!(!why.is_empty()),
            Err(e) => panic!("not a TLS failure: {e}"),
            Ok(_) => panic!("connected"),
        }
        // The same server over ws:// is reached (and refuses the upgrade with its status).
        match connect(&format!("ws://127.0.0.1:{port}/proto"), &tls).await {
            Err(LinkError::Refused { status: 400, .. }) => {}
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected"),
        }
        server.await.unwrap();
    }
}
