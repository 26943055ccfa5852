//! The cache client port over HTTP (reqwest, rustls): `POST <cache>/missing` with the store paths one per
//! line, and `POST <cache>/import` with a `nix-store --export` stream as the body, sent as Nix writes it.
//! The push credential goes as a bearer token.

use gradient_domain::ports::cache_client::{CacheClient, CacheClientError, Result};
use gradient_domain::ports::nix::ExportStream;
use gradient_domain::proto::PushTarget;
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a question about missing paths may take, answer included.
const ASK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long bytes sent may go unacknowledged before the connection is given up (`TCP_USER_TIMEOUT`;
/// reqwest's default is 30 s). A server whose storage stalls stops reading a push's body until its own
/// storage request gives up (60 s for S3) and then answers 503 `storage_unavailable`; the push must outlast
/// that to hear why, not die of a timed-out connection first.
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct HttpCacheClient {
    http: reqwest::Client,
}

impl HttpCacheClient {
    /// A client trusting the webpki roots.
    pub fn new() -> std::result::Result<Self, String> {
        Self::build(None)
    }

    /// A client with the given TLS configuration (the worker's: the webpki roots, the system's bundle and its
    /// extra CA certificates, as its link trusts them).
    pub fn with_tls(tls: rustls::ClientConfig) -> std::result::Result<Self, String> {
        Self::build(Some(tls))
    }

    fn build(tls: Option<rustls::ClientConfig>) -> std::result::Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("gradient-worker/", env!("CARGO_PKG_VERSION")));
        #[cfg(target_os = "linux")]
        {
            builder = builder.tcp_user_timeout(UNACKNOWLEDGED_TIMEOUT);
        }
        if let Some(tls) = tls {
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http })
    }
}

/// Whether the Nix binary cache at `url` answers `GET <url>/nix-cache-info` within `limit`, whatever it
/// answers: one that does not is one that every Nix run would first wait for. Only `http(s)://` caches are
/// asked; any other kind of store (`file://`, `daemon`, `ssh://`, …) counts as answering. `tls`, when given,
/// is the TLS configuration to ask with (the worker's trust).
pub async fn substituter_answers(url: &str, limit: Duration, tls: Option<rustls::ClientConfig>) -> bool {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return true;
    }
    let mut builder = reqwest::Client::builder()
        .timeout(limit)
        .user_agent(concat!("gradient-worker/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    let Ok(http) = builder.build() else {
        return true;
    };
    http.get(format!("{}/nix-cache-info", url.trim_end_matches('/')))
        .send()
        .await
        .is_ok()
}

fn endpoint(target: &PushTarget, what: &str) -> String {
    format!("{}/{what}", target.cache_url.trim_end_matches('/'))
}

/// The error with its causes: a failed export stream's own message (Nix's) is one of them.
fn unavailable(e: reqwest::Error) -> CacheClientError {
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    CacheClientError::Unavailable(message)
}

/// The body of a successful answer; a refusal or failure with the cache's message.
async fn answer(resp: reqwest::Response) -> Result<String> {
    let status = resp.status();
    let text = resp.text().await.map_err(unavailable)?;
    if status.is_success() {
        return Ok(text);
    }
    let message = text.trim().chars().take(2000).collect::<String>();
    if status.is_client_error() {
        Err(CacheClientError::Refused {
            status: status.as_u16(),
            message,
        })
    } else {
        Err(CacheClientError::Unavailable(format!("{status}: {message}")))
    }
}

impl CacheClient for HttpCacheClient {
    async fn missing(&self, target: &PushTarget, paths: &[String]) -> Result<Vec<String>> {
        let mut body = paths.join("\n");
        body.push('\n');
        let resp = self
            .http
            .post(endpoint(target, "missing"))
            .bearer_auth(&target.token)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .timeout(ASK_TIMEOUT)
            .body(body)
            .send()
            .await
            .map_err(unavailable)?;
        let text = answer(resp).await?;
        Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }

    async fn import(&self, target: &PushTarget, export: ExportStream) -> Result<u64> {
        let resp = self
            .http
            .post(endpoint(target, "import"))
            .bearer_auth(&target.token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-nix-export")
            .body(reqwest::Body::wrap_stream(export))
            .send()
            .await
            .map_err(unavailable)?;
        let text = answer(resp).await?;
        text.trim()
            .strip_prefix("imported ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| CacheClientError::Unavailable(format!("unexpected answer to an import: {text}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    /// A cache that answers `nix-cache-info`, one that takes connections and never answers, and no cache.
    #[tokio::test]
    async fn a_substituter_answers_only_when_it_does_in_time() {
        let answering = TcpListener::bind("127.0.0.1:0").unwrap();
        let answering_url = format!("http://{}", answering.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut conn in answering.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let body = "StoreDir: /nix/store\n";
                let _ = write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            }
        });
        // The kernel completes the connection; nobody reads the request or answers it.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_url = format!("http://{}/", silent.local_addr().unwrap());
        let closed_url = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };

        let limit = Duration::from_millis(500);
        assert!(substituter_answers(&answering_url, limit, None).await);
        let started = Instant::now();
        assert!(!substituter_answers(&silent_url, limit, None).await);
        let waited = started.elapsed();
        assert!(waited >= limit && waited < limit * 4, "{waited:?}");
        assert!(!substituter_answers(&closed_url, limit, None).await);
        assert!(substituter_answers("daemon", limit, None).await);
        drop(silent);
    }
}
