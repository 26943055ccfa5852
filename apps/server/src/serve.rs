//! The HTTP server loop: accepts TCP connections and serves the poem application on each with hyper (HTTP/1.1
//! and HTTP/2, upgrades for the worker link), with a graceful shutdown.
//!
//! Not `poem::Server`: it hands hyper every connection behind a boxed, split stream that takes a lock per read
//! and write and cannot write vectored, so hyper copies every body chunk into its own buffer before sending it
//! (measured: a user-space `memmove` of 11 % of the CPU while serving NARs). Here hyper gets the `TcpStream`
//! itself and queues body chunks for `writev` as they are.
//!
//! A [`Shortcut`] answers the most frequent request (the binary cache's narinfo reads) before the request
//! becomes poem's: building poem's request, routing it through the nested routers and back cost more CPU than
//! answering it (`cache/shortcut.rs`).

use bytes::Bytes;
use futures_util::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, EndpointExt};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Answers some requests itself, before the application: `answer` takes a request it answers (the future
/// makes the response) and hands any other back untouched.
pub trait Shortcut: Send + Sync + 'static {
    // The request goes back as it came (moved, not boxed): boxing it would cost an allocation per request.
    #[allow(clippy::result_large_err)]
    fn answer<B: Send + 'static>(
        &self,
        req: http::Request<B>,
    ) -> Result<impl Future<Output = http::Response<ResponseBody>> + Send + use<Self, B>, http::Request<B>>;
}

/// No shortcut: the application answers everything.
pub struct NoShortcut;

impl Shortcut for NoShortcut {
    fn answer<B: Send + 'static>(
        &self,
        req: http::Request<B>,
    ) -> Result<impl Future<Output = http::Response<ResponseBody>> + Send + use<B>, http::Request<B>> {
        Err::<std::future::Pending<_>, _>(req)
    }
}

/// How long a client may take to send a request's headers (HTTP/1) before its connection is closed: a
/// connection that trickles them (or opens and says nothing) does not hold its slot for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What an HTTP/1 connection buffers at most: a request's headers, and the body chunks it queues for writing
/// (it takes the next chunk only while less than this is left to send). hyper's default (~400 KiB) held two of
/// the NAR store's 256 KiB chunks per download; with 64 KiB a download holds the chunk being sent and rarely a
/// second, and the socket's own buffer keeps the line busy meanwhile.
pub const HTTP1_MAX_BUF: usize = 64 * 1024;

/// Serves `ep` on `listener` (what `shortcut` answers itself excepted) until `shutdown` completes; then accepts
/// nothing more, lets requests in flight end for up to `grace`, and returns. A client has `header_timeout` to
/// send each request's headers.
pub async fn serve<E, S>(
    listener: tokio::net::TcpListener,
    ep: E,
    shortcut: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    header_timeout: Duration,
) -> std::io::Result<()>
where
    E: Endpoint + 'static,
    S: Shortcut,
{
    let ep = Arc::new(ep.map_to_response());
    let shortcut = Arc::new(shortcut);
    let local = LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HTTP1_MAX_BUF);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine; try again shortly.
                    tracing::warn!(target: "gradient::http", "accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses are written whole or in large chunks: nothing gains from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let ep = ep.clone();
        let shortcut = shortcut.clone();
        let local = local.clone();
        let remote = RemoteAddr(poem::Addr::SocketAddr(peer));
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let req = match shortcut.answer(req) {
                Ok(answer) => return Either::Left(async move { Ok::<_, Infallible>(answer.await) }),
                Err(req) => req,
            };
            let ep = ep.clone();
            let request = poem::Request::from((req, local.clone(), remote.clone(), http::uri::Scheme::HTTP));
            Either::Right(async move {
                let response = ep.get_response(request).await;
                Ok::<_, Infallible>(http::Response::<ResponseBody>::from(response))
            })
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "gradient::http", "connection from {peer} ended: {e}");
            }
        });
    }
    tracing::info!(target: "gradient::http", "no longer accepting connections; letting requests in flight end");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::info!(
            target: "gradient::http",
            "requests still in flight after {}s were cut off",
            grace.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_trickles_its_headers_is_cut_off_and_others_are_served() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let ep = poem::Route::new().at("/", poem::endpoint::make_sync(|_| "hello"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ep,
            NoShortcut,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
            Duration::from_millis(500),
        ));
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        let mut fast = tokio::net::TcpStream::connect(addr).await.expect("connect");
        fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = String::new();
        fast.read_to_string(&mut answer).await.expect("read");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        // The slow one never finished its headers: closed (408 or nothing) within the timeout, not left open.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection was still open after 5 s");
        assert!(!String::from_utf8_lossy(&rest).contains("200"));
        let _ = stop.send(());
        server.await.expect("server task").expect("serve");
    }

    /// Answers `/short` itself.
    struct Short;

    impl Shortcut for Short {
        fn answer<B: Send + 'static>(
            &self,
            req: http::Request<B>,
        ) -> Result<impl Future<Output = http::Response<ResponseBody>> + Send + use<B>, http::Request<B>> {
            use http_body_util::BodyExt;
            if req.uri().path() != "/short" {
                return Err(req);
            }
            Ok(async {
                let body = http_body_util::Full::new(Bytes::from_static(b"short"));
                http::Response::new(body.map_err(|e| match e {}).boxed())
            })
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn the_shortcut_answers_what_it_takes_and_the_endpoint_the_rest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let ep = poem::Route::new().at("/*path", poem::endpoint::make_sync(|_| "endpoint"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            ep,
            Short,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
            Duration::from_secs(5),
        ));
        let short = get(addr, "/short").await;
        assert!(
            short.starts_with("HTTP/1.1 200") && short.ends_with("\r\n\r\nshort"),
            "{short}"
        );
        let other = get(addr, "/other").await;
        assert!(
            other.starts_with("HTTP/1.1 200") && other.ends_with("endpoint"),
            "{other}"
        );
        let _ = stop.send(());
        server.await.expect("server task").expect("serve");
    }
}
