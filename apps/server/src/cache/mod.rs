//! The Nix binary cache under `/cache/{cache}/`: what `nix copy --from`/substituters read and what
//! `nix copy --to` (or a worker) writes. Plain HTTP as Nix speaks it (not part of the JSON API): text bodies, HTTP Basic
//! credentials from a netrc file (any login, an API key as password) or a bearer token.
//!
//! Two additions let a worker push many paths in two requests instead of three per path:
//! `POST missing` (store paths, one per line → the ones the cache lacks) and `POST import` (a
//! `nix-store --export` stream of them, references first → `imported <n>`).
//!
//! Two more files Nix tools ask a cache for: `log/<drv basename>` (`nix log --store <cache> <drv>`), the build
//! log of that derivation, and `<hash>.ls`, the JSON listing of a path's NAR (what Nix writes with
//! `write-nar-listing`), written when a NAR is accepted.

mod fetches;
mod range;
mod shortcut;

pub use fetches::FetchLog;
pub use shortcut::NarinfoShortcut;

use crate::state::AppState;
use gradient_domain::model::Cache;
use gradient_domain::ports::nar_store::NarStore;
use gradient_domain::service::LogText;
use gradient_domain::service::{MAX_MISSING_QUERY, ServiceError, nar_key, nix_cache_info};
use poem::http::{HeaderMap, Method, StatusCode, header};
use poem::web::{Path, RemoteAddr};
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, handler};
use std::sync::Arc;
use std::time::Duration;

/// Largest narinfo accepted in a push.
const MAX_NARINFO: usize = 64 * 1024;
/// Largest list of store paths one `missing` question may carry: its most paths, each at most 255 bytes
/// (`/nix/store/`, the hash, `-` and a 211-character name) and a newline.
const MAX_MISSING_BODY: usize = MAX_MISSING_QUERY * 256;

pub fn routes(state: AppState) -> impl Endpoint<Output = Response> {
    let routes = Route::new()
        .at("/:cache/nix-cache-info", cache_info)
        .at("/:cache/nar/:file", nar)
        .at("/:cache/log/:file", build_log)
        .at("/:cache/missing", poem::post(missing_paths))
        .at("/:cache/import", poem::post(import_paths))
        .at("/:cache/:file", narinfo)
        .data(state)
        .map_to_response();
    crate::api::WithAllow {
        inner: routes,
        allowed: templates(),
    }
}

/// What each route answers, for `Allow` on a 405 (and the route templates of the metrics).
pub fn templates() -> crate::api::AllowedMethods {
    crate::api::AllowedMethods::from_routes(&[
        ("/{cache}/nix-cache-info", &["GET", "PUT"]),
        ("/{cache}/nar/{file}", &["GET", "PUT"]),
        ("/{cache}/log/{file}", &["GET"]),
        ("/{cache}/missing", &["POST"]),
        ("/{cache}/import", &["POST"]),
        ("/{cache}/{file}", &["GET", "PUT"]),
    ])
}

/// `stream`, counting its bytes on `counter` as they pass.
fn counted<S, E>(stream: S, counter: metrics::Counter) -> impl futures_util::Stream<Item = Result<bytes::Bytes, E>>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
{
    futures_util::StreamExt::inspect(stream, move |chunk| {
        if let Ok(bytes) = chunk {
            counter.increment(bytes.len() as u64);
        }
    })
}

/// How long a pusher is told to wait after the NAR store failed (`Retry-After` of 503 `storage_unavailable`).
const STORAGE_RETRY_AFTER_SECS: u64 = 10;

/// A failure answered as plain text, as Nix expects; 401 asks for HTTP Basic credentials. The NAR store
/// failing is 503 `storage_unavailable` (with `Retry-After`) or, full, 507 `insufficient_storage`.
fn failure(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::Unauthenticated(_) | ServiceError::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ServiceError::Forbidden(_) | ServiceError::RegistrationDisabled | ServiceError::EmailNotVerified => {
            StatusCode::FORBIDDEN
        }
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict { .. } => StatusCode::CONFLICT,
        ServiceError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ServiceError::Internal(detail) => {
            tracing::error!(target: "gradient::cache", "{detail}");
            crate::reporting::internal_error("cache", detail);
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // The database is down: the client (Nix, a worker's push) may try again later.
        ServiceError::Unavailable(detail) => {
            tracing::warn!(target: "gradient::cache", "{detail}");
            StatusCode::SERVICE_UNAVAILABLE
        }
        // The operator must hear of the storage failing as of any other failure on our side.
        ServiceError::StorageUnavailable(detail) => {
            tracing::error!(target: "gradient::cache", "{detail}");
            crate::reporting::internal_error("cache", detail);
            StatusCode::SERVICE_UNAVAILABLE
        }
        ServiceError::StorageFull(detail) => {
            tracing::error!(target: "gradient::cache", "{detail}");
            crate::reporting::internal_error("cache", detail);
            StatusCode::INSUFFICIENT_STORAGE
        }
    };
    let mut resp = Response::builder()
        .status(status)
        .content_type("text/plain; charset=utf-8");
    if status == StatusCode::UNAUTHORIZED {
        resp = resp.header(header::WWW_AUTHENTICATE, "Basic realm=\"Gradient cache\"");
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp = resp.header(header::RETRY_AFTER, STORAGE_RETRY_AFTER_SECS);
    }
    resp.body(format!("{} ({})\n", e, e.code()))
}

fn text(status: StatusCode, content_type: &str, body: impl Into<bytes::Bytes>, head: bool) -> Response {
    let body = body.into();
    let len = body.len();
    let resp = Response::builder()
        .status(status)
        .content_type(content_type)
        .header(header::CONTENT_LENGTH, len);
    if head {
        resp.body(Body::empty())
    } else {
        resp.body(body)
    }
}

/// A memoized narinfo as a response body, without copying it.
struct Shared(Arc<str>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The token a request carries: a bearer token, or the password (else the login) of HTTP Basic. The scheme's
/// name is case-insensitive (RFC 7235): `bearer x` and `BASIC …` are read too. A bearer token is borrowed from
/// the header, not copied. An empty credential is none: the request is anonymous (a public cache answers it).
fn credential(headers: &HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = crate::bearer_token(value) {
        return Some(std::borrow::Cow::Borrowed(token));
    }
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let mut decoded = String::from_utf8(decoded).ok()?;
    match decoded.split_once(':') {
        Some((_, password)) if !password.is_empty() => {
            let at = decoded.len() - password.len();
            decoded.drain(..at);
        }
        Some((login, _)) => decoded.truncate(login.len()),
        None => {}
    }
    (!decoded.is_empty()).then_some(std::borrow::Cow::Owned(decoded))
}

/// The cache, for reading (`write: false`) or pushing, as the request's credential allows: a job token's
/// organization's rights first, else the session's or key's (the credential is read once).
async fn cache_for(state: &AppState, headers: &HeaderMap, name: &str, write: bool) -> Result<Cache, ServiceError> {
    let token = credential(headers);
    if !write {
        return state.core.cache_to_read(token.as_deref(), name).await;
    }
    if let Some(token) = &token
        && let Some(cache) = state.core.cache_for_job_token(token, name, write).await?
    {
        return Ok(cache);
    }
    let caller = state.core.cache_caller(token.as_deref()).await?;
    state.core.writable_cache(&caller, name).await
}

async fn read_cache(state: &AppState, headers: &HeaderMap, name: &str) -> Result<Cache, ServiceError> {
    cache_for(state, headers, name, false).await
}

async fn write_cache(state: &AppState, headers: &HeaderMap, name: &str) -> Result<Cache, ServiceError> {
    cache_for(state, headers, name, true).await
}

#[handler]
async fn cache_info(req: &Request, Path(cache): Path<String>, remote: &RemoteAddr, body: Body) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    state.metrics.cache_request("nix-cache-info");
    let result = async {
        if !matches!(*req.method(), Method::GET | Method::HEAD | Method::PUT) {
            return Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).finish());
        }
        if req.method() == Method::PUT {
            // Nix writes nix-cache-info into a fresh store; ours always exists, so only check the right.
            write_cache(state, req.headers(), &cache).await?;
            drop(body);
            return Ok(Response::builder().status(StatusCode::NO_CONTENT).finish());
        }
        let cache = read_cache(state, req.headers(), &cache).await?;
        let local = remote.as_socket_addr().is_some_and(|peer| {
            let forwarded = req.header("x-forwarded-for");
            let ip = gradient_domain::net::client_ip(peer.ip(), forwarded, &state.http.trusted_proxies);
            gradient_domain::net::in_any(ip, &state.http.local_ips)
        });
        let head = req.method() == Method::HEAD;
        Ok(text(
            StatusCode::OK,
            "text/x-nix-cache-info",
            nix_cache_info(&cache, local),
            head,
        ))
    }
    .await;
    result.unwrap_or_else(failure)
}

#[handler]
async fn narinfo(req: &Request, Path((cache, file)): Path<(String, String)>, body: Body) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    if let Some(hash_part) = file.strip_suffix(".ls") {
        state.metrics.cache_request("listing");
        return listing(state, req, &cache, hash_part, body)
            .await
            .unwrap_or_else(failure);
    }
    state.metrics.cache_request("narinfo");
    let Some(hash_part) = file.strip_suffix(".narinfo") else {
        return failure(ServiceError::NotFound(format!("no such file: {file}")));
    };
    let result = async {
        match *req.method() {
            Method::GET | Method::HEAD => {
                let text_body = read_narinfo(state, req.headers(), &cache, hash_part).await?;
                Ok(text(
                    StatusCode::OK,
                    NARINFO_TYPE,
                    bytes::Bytes::from_owner(Shared(text_body)),
                    req.method() == Method::HEAD,
                ))
            }
            Method::PUT => {
                let cache = write_cache(state, req.headers(), &cache).await?;
                let bytes = body.into_bytes_limit(MAX_NARINFO).await.map_err(|_| {
                    ServiceError::invalid("narinfo_too_large", format!("a narinfo is at most {MAX_NARINFO} bytes"))
                })?;
                let content = String::from_utf8(bytes.to_vec())
                    .map_err(|_| ServiceError::invalid("invalid_narinfo", "a narinfo is UTF-8 text"))?;
                state
                    .core
                    .receive_narinfo(&state.nars, &cache, hash_part, &content)
                    .await?;
                Ok(Response::builder().status(StatusCode::NO_CONTENT).finish())
            }
            _ => Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).finish()),
        }
    }
    .await;
    result.unwrap_or_else(failure)
}

/// The `Content-Type` of a narinfo.
const NARINFO_TYPE: &str = "text/x-nix-narinfo";

/// A narinfo read (`GET`/`HEAD {cache}/{hash_part}.narinfo`), for the handler and the shortcut alike: the
/// cache's read rules for the request's credentials, the signed text, and the counts of hits and fetches.
async fn read_narinfo(
    state: &AppState,
    headers: &HeaderMap,
    cache: &str,
    hash_part: &str,
) -> Result<Arc<str>, ServiceError> {
    let cache = read_cache(state, headers, cache).await?;
    let found = state.core.signed_narinfo(&cache, hash_part).await?;
    state.metrics.cache_lookup("narinfo", found.is_some());
    let Some(text) = found else {
        return Err(ServiceError::NotFound(format!("{hash_part} is not in this cache")));
    };
    state.fetches.record(cache.id, hash_part);
    Ok(text)
}

/// `<hash>.ls`: the path's NAR listing, read like a narinfo. A push of one (`nix copy` with
/// `write-nar-listing=true`) is accepted and dropped: the server wrote its own from the NAR it checked.
async fn listing(
    state: &AppState,
    req: &Request,
    cache: &str,
    hash_part: &str,
    body: Body,
) -> Result<Response, ServiceError> {
    match *req.method() {
        Method::GET | Method::HEAD => {
            let cache = read_cache(state, req.headers(), cache).await?;
            let missing = || ServiceError::NotFound(format!("{hash_part} has no listing in this cache"));
            let (size, stream) = state
                .core
                .nar_listing(&state.nars, &cache, hash_part)
                .await?
                .ok_or_else(missing)?;
            let resp = Response::builder()
                .content_type("application/json")
                .header(header::CONTENT_LENGTH, size);
            if req.method() == Method::HEAD {
                return Ok(resp.body(Body::empty()));
            }
            Ok(
                resp.body(Body::from_bytes_stream(futures_util::StreamExt::map(stream, |r| {
                    r.map_err(std::io::Error::other)
                }))),
            )
        }
        Method::PUT => {
            write_cache(state, req.headers(), cache).await?;
            drop(body);
            Ok(Response::builder().status(StatusCode::NO_CONTENT).finish())
        }
        _ => Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).finish()),
    }
}

/// `log/<drv basename>`: the derivation's build log as plain text (see `cache_build_log` for which build).
#[handler]
async fn build_log(req: &Request, Path((cache, file)): Path<(String, String)>) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    state.metrics.cache_request("log");
    let result = async {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).finish());
        }
        let cache = read_cache(state, req.headers(), &cache).await?;
        // A log cut in the middle already carries the marker line saying so.
        let Some(LogText { text: log, .. }) = state.core.cache_build_log(&cache, &file).await? else {
            return Err(ServiceError::NotFound(format!("no build log of {file} in this cache")));
        };
        Ok(text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            log,
            req.method() == Method::HEAD,
        ))
    }
    .await;
    result.unwrap_or_else(failure)
}

#[handler]
async fn nar(req: &Request, Path((cache, file)): Path<(String, String)>, body: Body) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    state.metrics.cache_request("nar");
    let url = format!("nar/{file}");
    let result = async {
        match *req.method() {
            Method::GET | Method::HEAD => {
                let cache = read_cache(state, req.headers(), &cache).await?;
                serve_nar(state, req, &cache, &url).await
            }
            Method::PUT => {
                let cache = write_cache(state, req.headers(), &cache).await?;
                state
                    .core
                    .receive_nar(
                        &state.nars,
                        &cache,
                        &url,
                        counted(body.into_bytes_stream(), state.metrics.cache_pushed_bytes()),
                    )
                    .await?;
                Ok(Response::builder().status(StatusCode::NO_CONTENT).finish())
            }
            _ => Ok(Response::builder().status(StatusCode::METHOD_NOT_ALLOWED).finish()),
        }
    }
    .await;
    result.unwrap_or_else(failure)
}

#[handler]
async fn missing_paths(req: &Request, Path(cache): Path<String>, body: Body) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    state.metrics.cache_request("missing");
    let result = async {
        let cache = write_cache(state, req.headers(), &cache).await?;
        let bytes = body.into_bytes_limit(MAX_MISSING_BODY).await.map_err(|_| {
            ServiceError::invalid(
                "request_too_large",
                format!("a list of paths is at most {MAX_MISSING_BODY} bytes"),
            )
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ServiceError::invalid("invalid_path_list", "store paths are UTF-8 text, one per line"))?;
        let paths: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let missing = state.core.missing_paths(&cache, &paths).await?;
        let mut answer = missing.join("\n");
        if !answer.is_empty() {
            answer.push('\n');
        }
        Ok(text_response(answer))
    }
    .await;
    result.unwrap_or_else(failure)
}

#[handler]
async fn import_paths(req: &Request, Path(cache): Path<String>, body: Body) -> Response {
    let state: &AppState = req.data().expect("state is attached to the cache routes");
    state.metrics.cache_request("import");
    let result = async {
        let cache = write_cache(state, req.headers(), &cache).await?;
        let imported = state
            .core
            .import_paths(
                &state.nars,
                &cache,
                counted(body.into_bytes_stream(), state.metrics.cache_pushed_bytes()),
            )
            .await?;
        Ok(text_response(format!("imported {imported}\n")))
    }
    .await;
    result.unwrap_or_else(failure)
}

fn text_response(body: String) -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", body, false)
}

/// How long a NAR download waits for one of the `maxConcurrentNarServes` slots before it is answered 503.
pub const NAR_SERVE_WAIT: Duration = Duration::from_secs(5);
/// The largest piece a download hands its connection at once, whatever `maxNarBufferBytes` allows: one of the
/// file store's 256 KiB reads. With pieces this large, one store chunk is read ahead of the connection's asking
/// (256 KiB per download): reading only on demand cost NAR throughput (session 10: 1.07x -> 0.96x nginx); a
/// read-ahead of one chunk plus one read while it waited, with hyper's default ~400 KiB write queue, had held
/// ~6 MB more over 8 downloads (a 1 MiB read-ahead 6 MB more again) (docs/benchmarks.md, issue #20).
pub const NAR_READ_AHEAD: u64 = 256 * 1024;

/// The NAR store's next chunk of a download, `None` when the download must end here: the store ended, failed
/// (the body then ends short of its length, and the reader sees the download fail) or, stalling mid-body, sent
/// nothing for `timeout` (as long as an open may take).
async fn next_chunk(
    stream: &mut gradient_domain::ports::nar_store::ByteStream,
    timeout: Duration,
    key: &str,
) -> Option<bytes::Bytes> {
    match tokio::time::timeout(timeout, futures_util::StreamExt::next(stream)).await {
        Ok(Some(Ok(chunk))) => Some(chunk),
        Ok(None | Some(Err(_))) => None,
        Err(_) => {
            tracing::warn!(
                target: "gradient::cache",
                "the NAR store sent nothing of {key} for {}s: the download was cut off",
                timeout.as_secs()
            );
            None
        }
    }
}

/// 503 with `Retry-After`, as plain text.
fn unavailable(retry_after_secs: u64, message: &str) -> Response {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::RETRY_AFTER, retry_after_secs)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{message}\n"))
}

/// Serves a NAR file (or a range of it). The limits of `docs/configuration` apply here:
/// - at most `maxConcurrentNarServes` downloads at once: another waits up to [`NAR_SERVE_WAIT`] for a slot,
///   then gets 503 with `Retry-After`;
/// - opening the file in the NAR store may take `narStorageOpenTimeoutSecs`, then 503 with `Retry-After`; a
///   store that then sends nothing for as long is cut off (the body ends short and the connection closes);
/// - the store's chunks go to the connection as they are (no copy), in pieces of at most
///   `min(maxNarBufferBytes, NAR_READ_AHEAD)` bytes, one each time the connection asks for more; with pieces of
///   [`NAR_READ_AHEAD`] the next store chunk is read while the connection sends the last piece, so one download
///   holds about two chunks (one being written, below `serve::HTTP1_MAX_BUF` queued, and one read ahead);
///   with smaller pieces, the store is read only when a piece is asked for and none is left;
/// - a reader that takes nothing for `narSendChunkTimeoutSecs` while the queue is full is cut off (the body
///   ends short of its `Content-Length` and the connection closes), freeing its slot.
async fn serve_nar(state: &AppState, req: &Request, cache: &Cache, url: &str) -> Result<Response, ServiceError> {
    let missing = || ServiceError::NotFound(format!("{url} is not in this cache"));
    let file = state.core.nar_file(cache, url).await?;
    state.metrics.cache_lookup("nar", file.is_some());
    let file = file.ok_or_else(missing)?;
    let range = match req.header(header::RANGE) {
        None => None,
        Some(h) => match range::parse(h, file.file_size) {
            Ok(r) => Some(r),
            Err(()) => {
                return Ok(Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", file.file_size))
                    .finish());
            }
        },
    };
    let content_type = "application/x-nix-nar";
    if req.method() == Method::HEAD {
        return Ok(Response::builder()
            .content_type(content_type)
            .header(header::CONTENT_LENGTH, file.file_size)
            .header(header::ACCEPT_RANGES, "bytes")
            .finish());
    }
    let permit = match tokio::time::timeout(NAR_SERVE_WAIT, state.nar_serves.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            state
                .metrics
                .counter("gradient_nar_serves_refused_total", &[])
                .increment(1);
            tracing::info!(target: "gradient::cache", "a NAR download was refused: all {} slots are busy", state.http.max_concurrent_nar_serves);
            return Ok(unavailable(
                NAR_SERVE_WAIT.as_secs(),
                "too many NAR downloads at once; try again shortly",
            ));
        }
    };
    let timeout = Duration::from_secs(state.http.nar_open_timeout_secs);
    let key = nar_key(cache, url);
    let opened = match tokio::time::timeout(timeout, state.nars.open(&key, range.map(|(s, e)| (s, Some(e))))).await {
        Ok(opened) => opened.map_err(|e| ServiceError::StorageUnavailable(format!("opening {key}: {e}")))?,
        Err(_) => {
            tracing::warn!(target: "gradient::cache", "opening {key} in the NAR store took longer than {}s", timeout.as_secs());
            return Ok(unavailable(
                timeout.as_secs().max(1),
                "the NAR store did not answer in time; try again later",
            ));
        }
    };
    let Some((total, stream)) = opened else {
        return Err(missing());
    };
    let pipe = (state.http.max_nar_buffer_bytes.min(NAR_READ_AHEAD) as usize).max(1);
    let read_ahead = pipe as u64 >= NAR_READ_AHEAD;
    let chunk_timeout = Duration::from_secs(state.http.nar_send_chunk_timeout_secs);
    // The store's chunks go to the body as they are (no copy), one piece each time the connection asks for
    // more: `wanted` gets a permit each time the body is polled for its next piece. At most one store chunk
    // waits read ahead; the socket's own buffer keeps the line busy meanwhile.
    let wanted = Arc::new(tokio::sync::Semaphore::new(0));
    let asking = wanted.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let buffered = state.metrics.nar_buffered();
    let fill = buffered.clone();
    // The bytes the body promises: once they are sent the slot is freed at once (the connection need not ask
    // again for what it knows is not coming).
    let mut left = match range {
        Some((start, end)) => end - start + 1,
        None => total,
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let mut chunk = bytes::Bytes::new();
        while left > 0 {
            // The next store chunk is read as soon as the last piece of the one before is queued, before the
            // connection asks for it: its ask then finds the bytes ready (one chunk read ahead, no more). Below
            // a piece of [`NAR_READ_AHEAD`] (`maxNarBufferBytes` smaller), nothing is read before it is asked for.
            if chunk.is_empty() && read_ahead {
                // Raced against the reader going away, so a gone connection frees its slot without waiting
                // for a slow store.
                chunk = tokio::select! {
                    next = next_chunk(&mut stream, timeout, &key) => match next {
                        Some(chunk) => chunk,
                        None => return,
                    },
                    () = tx.closed() => return,
                };
            }
            // A connection that asks for nothing for the timeout (its reader takes nothing) is cut off; one
            // that is gone frees the slot at once.
            let ask = tokio::select! {
                ask = tokio::time::timeout(chunk_timeout, wanted.acquire()) => ask,
                () = tx.closed() => return,
            };
            match ask {
                Ok(Ok(ask)) => ask.forget(),
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(
                        target: "gradient::cache",
                        "a NAR download's reader took nothing for {}s: cut off",
                        chunk_timeout.as_secs()
                    );
                    return;
                }
            }
            if chunk.is_empty() {
                // Raced against the reader going away, so a gone connection frees its slot without waiting
                // for a slow store.
                chunk = tokio::select! {
                    next = next_chunk(&mut stream, timeout, &key) => match next {
                        Some(chunk) => chunk,
                        None => return,
                    },
                    () = tx.closed() => return,
                };
            }
            // A chunk larger than `pipe` goes in pieces (views of it, not copies), one per request for more; never
            // past the length the response promised, whatever the store sent.
            let piece = chunk.split_to(chunk.len().min(pipe).min(usize::try_from(left).unwrap_or(usize::MAX)));
            left = left.saturating_sub(piece.len() as u64);
            fill.add(piece.len());
            if tx.send(piece).is_err() {
                return; // the reader went away
            }
        }
    });
    let served = state.metrics.cache_served_bytes();
    let reader = futures_util::stream::unfold(
        (rx, asking, buffered, served),
        |(mut rx, asking, buffered, served)| async move {
            asking.add_permits(1);
            let chunk = rx.recv().await?;
            buffered.take(chunk.len());
            served.increment(chunk.len() as u64);
            Some((Ok::<_, std::io::Error>(chunk), (rx, asking, buffered, served)))
        },
    );
    let body = Body::from_bytes_stream(reader);
    let resp = Response::builder()
        .content_type(content_type)
        .header(header::ACCEPT_RANGES, "bytes");
    Ok(match range {
        Some((start, end)) => resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}"))
            .header(header::CONTENT_LENGTH, end - start + 1)
            .body(body),
        None => resp.header(header::CONTENT_LENGTH, total).body(body),
    }
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn credential_of(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("a header value"));
        credential(&headers).map(|c| c.into_owned())
    }

    #[test]
    fn the_auth_scheme_is_read_whatever_its_case() {
        let basic = |userpass: &str| base64::engine::general_purpose::STANDARD.encode(userpass);
        for (value, want) in [
            ("Bearer GRADabc".to_owned(), Some("GRADabc")),
            ("bearer GRADabc".to_owned(), Some("GRADabc")),
            ("BEARER  GRADabc ".to_owned(), Some("GRADabc")),
            (format!("Basic {}", basic("me:GRADkey")), Some("GRADkey")),
            (format!("BASIC {}", basic("me:GRADkey")), Some("GRADkey")),
            (format!("basic {}", basic("GRADlogin:")), Some("GRADlogin")),
            (format!("bAsIc {}", basic("GRADlogin")), Some("GRADlogin")),
            (
                format!("Basic {}", basic("me:pass:with:colons")),
                Some("pass:with:colons"),
            ),
            ("Digest abc".to_owned(), None),
            ("Bearer".to_owned(), None),
            ("Basic !!!".to_owned(), None),
            // Empty credentials are none: anonymous, so a public cache still answers.
            ("Bearer ".to_owned(), None),
            ("bearer   ".to_owned(), None),
            ("Basic ".to_owned(), None),
            (format!("Basic {}", basic(":")), None),
            (format!("Basic {}", basic("")), None),
        ] {
            assert_eq!(credential_of(&value).as_deref(), want, "{value}");
        }
    }

    #[test]
    fn every_route_reads_a_bearer_token_alike() {
        for (value, want) in [
            ("Bearer GRADabc", Some("GRADabc")),
            ("bearer GRADabc", Some("GRADabc")),
            (" BEARER  GRADabc ", Some("GRADabc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic GRADabc", None),
            ("BearerGRADabc", None),
        ] {
            assert_eq!(crate::bearer_token(value), want, "{value:?}");
        }
    }
}
