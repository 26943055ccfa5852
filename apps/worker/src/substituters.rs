//! Nix's own substituters that do not answer are left out of every Nix run: on a machine that cannot reach
//! the public cache, each `nix-store --realise` would first wait seconds for it (`GRADIENT_PROBE_SUBSTITUTERS`).

use std::time::Duration;

/// How long a substituter gets to answer `nix-cache-info` when the worker starts.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `configured` split into the substituters that answer within `limit` and those that do not, all asked at
/// once, each list in the configured order.
/// Asked with the worker's TLS trust (`tls`: the roots plus `GRADIENT_CA_FILE`).
pub async fn split(
    configured: &[String],
    limit: Duration,
    tls: &gradient_link_ws::TlsRoots,
) -> (Vec<String>, Vec<String>) {
    let probes: Vec<_> = configured
        .iter()
        .map(|url| {
            let url = url.clone();
            let tls = tls.client_config();
            tokio::spawn(async move { gradient_cache_http::substituter_answers(&url, limit, Some(tls)).await })
        })
        .collect();
    let (mut answering, mut silent) = (Vec::new(), Vec::new());
    for (url, probe) in configured.iter().zip(probes) {
        if probe.await.unwrap_or(true) {
            answering.push(url.clone());
        } else {
            silent.push(url.clone());
        }
    }
    (answering, silent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[tokio::test]
    async fn substituters_that_do_not_answer_are_left_out() {
        let answering = TcpListener::bind("127.0.0.1:0").unwrap();
        let answering_url = format!("http://{}", answering.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut conn in answering.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_url = format!("http://{}", silent.local_addr().unwrap());
        let configured = vec![silent_url.clone(), answering_url.clone(), "daemon".to_owned()];

        let limit = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let (kept, skipped) = split(
            &configured,
            limit,
            &gradient_link_ws::TlsRoots::new(None, None).unwrap(),
        )
        .await;
        assert_eq!(kept, [answering_url, "daemon".to_owned()]);
        assert_eq!(skipped, [silent_url]);
        assert!(
            started.elapsed() < limit * 3,
            "asked one after the other: {:?}",
            started.elapsed()
        );
        drop(silent);
    }
}
