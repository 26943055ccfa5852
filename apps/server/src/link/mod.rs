//! The worker link at `/proto`: a WebSocket over poem's upgraded connection (tokio-tungstenite), the handshake
//! (decided by `domain::proto::handshake`), heartbeats, and the registry of who is connected. A misbehaving
//! connection (malformed or oversized frame, silence, a message out of turn) is closed with a reason; the
//! others are untouched.

mod dial;
mod fleet;
mod logs;
mod registry;

pub use dial::spawn_dialer;
pub use fleet::LinkFleet;
pub use logs::LiveLogs;
pub use registry::{Links, Outgoing};

use crate::state::AppState;
use futures_util::{SinkExt, StreamExt};
use gradient_domain::proto::{
    self, Challenge, HandshakePolicy, MAX_FRAME_BYTES, ProtoError, RejectCode, Rejected, ServerMessage, WorkerMessage,
};
use poem::http::{Method, StatusCode, header};
use poem::{IntoResponse, Request, Response, handler};
use rand::RngCore;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// A link's socket: an upgraded `/proto` request, or a connection the server dialed to a listening worker.
type WebSocketStream<S> = tokio_tungstenite::WebSocketStream<S>;

/// What a link runs over.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// How long a refused connection is drained after its close was sent, so a worker still writing an oversized
/// frame finishes and reads the close instead of having its connection reset.
const DRAIN_AFTER_CLOSE: Duration = Duration::from_secs(5);

/// Settings of the link.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub discoverable: bool,
    /// Links of workers that proved a registration (`maxProtoConnections`).
    pub max_connections: usize,
    /// Connections still in their handshake, a pool of their own ([`anonymous_pool`]).
    pub max_anonymous: usize,
    /// How long a connection has to prove a registration, from the upgrade to `welcome`.
    pub handshake_timeout: Duration,
    pub policy: HandshakePolicy,
}

/// The pool of connections that have not proved a registration yet: a quarter of `maxProtoConnections`,
/// at least 16 and at most 64. They never take an authenticated link's slot, and each leaves it within the
/// handshake timeout.
pub fn anonymous_pool(max_connections: usize) -> usize {
    (max_connections / 4).clamp(16, 64)
}

#[handler]
pub async fn endpoint(req: &Request) -> Response {
    let state: &AppState = req.data().expect("state is attached to /proto");
    let Some(key) = websocket_key(req) else {
        return (StatusCode::BAD_REQUEST, "/proto speaks WebSocket only\n").into_response();
    };
    if !state.link.discoverable {
        return (
            StatusCode::FORBIDDEN,
            "this server does not accept worker connections (discoverable = false)\n",
        )
            .into_response();
    }
    // A connection that has proved nothing takes a slot of the anonymous pool only; it gets an authenticated
    // link's slot once its handshake proves a registration, so idle sockets cannot lock workers out.
    let Some(slot) = state.fleet.links.try_anonymous_slot(state.link.max_anonymous) else {
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::RETRY_AFTER, "10")
            .body("too many worker connections are in their handshake; retry later\n");
    };
    let Ok(upgrade) = req.take_upgrade() else {
        return (StatusCode::BAD_REQUEST, "the connection cannot be upgraded\n").into_response();
    };
    let state = state.clone();
    // The transport refuses a frame or message larger than the protocol allows as soon as its header says so;
    // the connection is then closed with `frame_too_large` and drained (see `reject`).
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else {
            return;
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        serve(state, socket, Side::Accepted { _anonymous: slot }).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .finish()
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request (RFC 6455, version 13); `None` for anything else.
fn websocket_key(req: &Request) -> Option<String> {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let upgrade = req.method() == Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    if !upgrade {
        return None;
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn close_code(code: RejectCode) -> CloseCode {
    match code {
        RejectCode::FrameTooLarge => CloseCode::Size,
        RejectCode::MalformedFrame | RejectCode::UnexpectedMessage => CloseCode::Policy,
        RejectCode::ShuttingDown | RejectCode::ServerFull => CloseCode::Again,
        _ => CloseCode::Policy,
    }
}

/// Sends `Rejected` and closes with the code as reason. After an oversized frame the transport stopped reading
/// mid-frame: what the worker still sends is read and dropped for a moment, so it finishes
/// writing and reads the close instead of having its connection reset.
async fn reject<S: Io>(socket: &mut WebSocketStream<S>, rejected: Rejected) {
    tracing::info!(target: "gradient::proto", "rejecting worker: {} ({})", rejected.reason, rejected.code.as_str());
    if let Ok(text) = proto::encode(&ServerMessage::Rejected(rejected.clone())) {
        let _ = socket.send(Message::text(text)).await;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code(rejected.code),
            reason: rejected.code.as_str().into(),
        })))
        .await;
    if rejected.code == RejectCode::FrameTooLarge {
        drain(socket.get_mut()).await;
    } else {
        let _ = socket.close(None).await;
    }
}

/// Reads and drops what the peer still sends, until it closes or [`DRAIN_AFTER_CLOSE`] passes; nothing is kept.
async fn drain<S: Io>(io: &mut S) {
    let _ = io.flush().await;
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(DRAIN_AFTER_CLOSE, async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let _ = io.shutdown().await;
}

/// The next worker message, or why the connection must end.
async fn next_message<S: Io>(socket: &mut WebSocketStream<S>) -> Result<WorkerMessage, Option<Rejected>> {
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => return Err(None),
            Some(Err(tungstenite::Error::Capacity(e))) => {
                return Err(Some(Rejected::new(
                    RejectCode::FrameTooLarge,
                    format!("the frame exceeds the limit of {MAX_FRAME_BYTES} bytes ({e})"),
                )));
            }
            Some(Err(
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed | tungstenite::Error::Io(_),
            )) => return Err(None),
            Some(Err(e)) => {
                return Err(Some(Rejected::new(
                    RejectCode::MalformedFrame,
                    format!("unreadable frame: {e}"),
                )));
            }
            Some(Ok(Message::Text(t))) => {
                let t = t.as_str();
                return proto::decode_worker(t).map_err(|e: ProtoError| {
                    // A hello of another version may not decode at all; say which problem it is.
                    match proto::hello_version(t) {
                        Some(v) if v != proto::PROTOCOL_VERSION => Some(Rejected::new(
                            RejectCode::VersionMismatch,
                            format!(
                                "the worker speaks protocol version {v}, this server speaks {}",
                                proto::PROTOCOL_VERSION
                            ),
                        )),
                        _ => Some(Rejected::new(e.reject_code(), e.to_string())),
                    }
                });
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(Some(Rejected::new(
                    RejectCode::MalformedFrame,
                    "binary frames are not part of the protocol",
                )));
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Which side dialed: the worker (its connection took a slot of the anonymous pool) or the server (to a
/// listening worker's registered URL, for that worker).
pub(crate) enum Side {
    /// Held until the handshake proves a registration.
    Accepted { _anonymous: registry::Slot },
    Dialed {
        worker: gradient_domain::WorkerId,
        url: String,
    },
}

pub(crate) async fn serve<S: Io>(state: AppState, mut socket: WebSocketStream<S>, side: Side) {
    // One deadline for the whole handshake: a connection proves a registration within it, or is closed.
    let deadline = tokio::time::Instant::now() + state.link.handshake_timeout;
    let hello = match tokio::time::timeout_at(deadline, next_message(&mut socket)).await {
        Ok(Ok(WorkerMessage::Hello(h))) => h,
        Ok(Ok(_)) => {
            return reject(
                &mut socket,
                Rejected::new(RejectCode::UnexpectedMessage, "expected hello"),
            )
            .await;
        }
        Ok(Err(Some(r))) => return reject(&mut socket, r).await,
        Ok(Err(None)) => return,
        Err(_) => {
            return reject(
                &mut socket,
                Rejected::new(RejectCode::HandshakeTimeout, "no hello in time"),
            )
            .await;
        }
    };
    let registrations = match state.core.registrations_of_worker(hello.worker_id).await {
        // A link the server dialed is for the registrations that name its URL, and only for them.
        Ok(r) => match &side {
            Side::Accepted { .. } => r,
            Side::Dialed { worker, url } => proto::dialed_registrations(&r, *worker, url),
        },
        Err(e) => {
            tracing::error!(target: "gradient::proto", "reading registrations: {e}");
            return reject(
                &mut socket,
                Rejected::new(RejectCode::ShuttingDown, "the server cannot read registrations"),
            )
            .await;
        }
    };
    let connected = state.fleet.links.is_worker_connected(hello.worker_id);
    let peers = match proto::check_hello(&hello, &registrations, connected, &state.link.policy) {
        Ok(p) => p,
        Err(r) => return reject(&mut socket, r).await,
    };
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let nonce = proto::nonce_from_bytes(&raw);
    // On a link it dialed, the server proves itself first: the listening worker answers nothing before.
    let server_proofs = match &side {
        Side::Accepted { .. } => Vec::new(),
        Side::Dialed { .. } => match proto::server_proofs(&hello, &registrations, state.core.crypt()) {
            Ok(p) => p,
            Err(r) => return reject(&mut socket, r).await,
        },
    };
    let challenge = ServerMessage::Challenge(Challenge {
        nonce: nonce.clone(),
        peers,
        server_proofs,
    });
    if send(&mut socket, &challenge).await.is_err() {
        return;
    }
    let answers = match tokio::time::timeout_at(deadline, next_message(&mut socket)).await {
        Ok(Ok(WorkerMessage::ChallengeResponse(a))) => a,
        Ok(Ok(_)) => {
            return reject(
                &mut socket,
                Rejected::new(RejectCode::UnexpectedMessage, "expected challenge_response"),
            )
            .await;
        }
        Ok(Err(Some(r))) => return reject(&mut socket, r).await,
        Ok(Err(None)) => return,
        Err(_) => {
            return reject(
                &mut socket,
                Rejected::new(RejectCode::HandshakeTimeout, "no answer in time"),
            )
            .await;
        }
    };
    let welcome = match proto::check_answers(
        &hello,
        &registrations,
        &nonce,
        &answers,
        &state.link.policy,
        state.core.crypt(),
    ) {
        Ok(w) => w,
        Err(r) => return reject(&mut socket, r).await,
    };
    // Proved: the connection leaves the anonymous pool for an authenticated link's slot.
    let Some(_slot) = state.fleet.links.try_slot(state.link.max_connections) else {
        let r = Rejected::new(
            RejectCode::ServerFull,
            format!(
                "the server holds its maximum of {} worker links",
                state.link.max_connections
            ),
        );
        return reject(&mut socket, r).await;
    };
    drop(side);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let acks = tx.clone();
    let proved = registrations
        .iter()
        .filter(|r| welcome.authorized.contains(&r.peer_id))
        .map(|r| (r.peer_id, r.org_id))
        .collect();
    let Some(session) = state.fleet.links.insert(hello.worker_id, proved, tx) else {
        let r = Rejected::new(
            RejectCode::DuplicateConnection,
            format!("worker {} is already connected", hello.worker_id),
        );
        return reject(&mut socket, r).await;
    };
    let worker = hello.worker_id;
    let orgs = proto::authorized_orgs(&registrations, &welcome.authorized);
    match state.core.worker_connected(worker, &hello.held_jobs, &orgs).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(target: "gradient::proto", "requeued {n} job(s) worker {worker} cannot finish on this link")
        }
        Err(e) => tracing::error!(target: "gradient::proto", "requeueing jobs of {worker}: {e}"),
    }
    state.fleet.links.set_info(
        worker,
        gradient_domain::scheduler::WorkerInfo {
            id: worker,
            capabilities: welcome.capabilities.into(),
            systems: hello.systems.clone(),
            features: hello.features.clone(),
            max_concurrent_builds: hello.max_concurrent_builds,
            max_concurrent_evaluations: hello.max_concurrent_evaluations,
            queued_builds: hello.queued_builds,
            orgs: orgs.clone(),
            pushing: Default::default(),
        },
    );
    tracing::info!(target: "gradient::proto", "worker {worker} connected for {} registration(s)", welcome.authorized.len());
    let lost_after = Duration::from_secs(u64::from(welcome.lost_after_secs));
    let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_interval_secs));
    if send(&mut socket, &ServerMessage::Welcome(welcome)).await.is_err() {
        state.fleet.links.remove(worker, session);
        return;
    }
    // Its free slots are worth a dispatch round now.
    gradient_domain::ports::Fleet::wake(&*state.fleet);
    let mut beat = tokio::time::interval(heartbeat);
    let mut deadline = tokio::time::Instant::now() + lost_after;
    // The link's reports are recorded one after the other, in order, by a task of their own: one that cannot be
    // recorded yet (the database is down) is retried and holds those behind it, while heartbeats go on.
    let (reports, queued) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_reports(state.clone(), worker, queued, acks));
    let ending: Option<Rejected> = loop {
        tokio::select! {
            msg = next_message(&mut socket) => match msg {
                Ok(WorkerMessage::Heartbeat) => deadline = tokio::time::Instant::now() + lost_after,
                Ok(WorkerMessage::Hello(_) | WorkerMessage::ChallengeResponse(_)) => {
                    break Some(Rejected::new(RejectCode::UnexpectedMessage, "the handshake is over"));
                }
                Ok(WorkerMessage::Report(r)) if !proto::Report::is_reportable(&r.report) => {
                    break Some(Rejected::new(
                        RejectCode::UnexpectedMessage,
                        "a report wraps job_started, job_progress, eval_result or job_finished only",
                    ));
                }
                Ok(other) => {
                    deadline = tokio::time::Instant::now() + lost_after;
                    let _ = reports.send(other);
                }
                Err(r) => break r,
            },
            // A frame that cannot leave before the worker would be declared lost (packets dropped, its socket's
            // buffer full) ends the link as silence does.
            out = rx.recv() => match out {
                Some(Outgoing::Send(m)) => if !sent_by(deadline, &mut socket, &m).await { break None },
                Some(Outgoing::Close(code, reason)) => break Some(Rejected::new(code, reason)),
                None => break None,
            },
            _ = beat.tick() => if !sent_by(deadline, &mut socket, &ServerMessage::Heartbeat).await { break None },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(target: "gradient::proto", "worker {worker} went silent; declaring it lost");
                break None;
            }
        }
    };
    // Jobs the worker held go back to the queue for another worker, before the link leaves the registry: a
    // reconnection under the same id is refused until then, so it never has its new jobs taken back. Closing
    // first: no round hands the ending link anything meanwhile.
    state.fleet.links.closing(worker, session);
    // What was not recorded is not acknowledged: the worker sends it again on its next link.
    recorder.abort();
    match state.core.worker_lost(worker).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "gradient::proto", "requeued {n} job(s) of worker {worker}"),
        Err(e) => tracing::error!(target: "gradient::proto", "requeueing jobs of {worker}: {e}"),
    }
    state.fleet.links.remove(worker, session);
    if let Some(r) = ending {
        // Bounded: a worker whose packets are dropped never reads the close.
        let _ = tokio::time::timeout(Duration::from_secs(10), reject(&mut socket, r)).await;
    }
    tracing::info!(target: "gradient::proto", "worker {worker} disconnected");
}

/// The most a report waits between two attempts while the database is unavailable.
const REPORT_RETRY_AT_MOST: Duration = Duration::from_secs(10);

/// Records a link's reports in the order they came. A report recorded, or refused for good, is acknowledged
/// (when it came as a `report`); one that cannot be recorded now (storage unavailable) is tried again with
/// backoff, and those behind it wait: a job's reports are never applied out of order. One line is logged when
/// a report starts waiting and one when it is recorded, not one per attempt.
async fn record_reports(
    state: AppState,
    worker: gradient_domain::WorkerId,
    mut queued: mpsc::UnboundedReceiver<WorkerMessage>,
    acks: mpsc::UnboundedSender<Outgoing>,
) {
    while let Some(msg) = queued.recv().await {
        let (report_id, msg) = match msg {
            WorkerMessage::Report(r) => (Some(r.report_id), *r.report),
            other => (None, other),
        };
        // A finished job's live log is taken once, and handed to every attempt.
        let log = match &msg {
            WorkerMessage::JobFinished { job_id, .. } => {
                state
                    .fleet
                    .logs
                    .take_own(*job_id, worker, &state.fleet.links.proved_orgs(worker))
            }
            _ => None,
        };
        let mut wait = Duration::from_millis(500);
        let mut waited = false;
        loop {
            // What the link is proved for now: a registration deleted meanwhile no longer counts.
            let orgs = state.fleet.links.proved_orgs(worker);
            match handle(&state, worker, &orgs, msg.clone(), log.clone()).await {
                Err(gradient_domain::service::ServiceError::Unavailable(e)) => {
                    if !waited {
                        tracing::warn!(
                            target: "gradient::proto",
                            "cannot record a report of worker {worker} now ({e}); retrying it until the database answers"
                        );
                        waited = true;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(REPORT_RETRY_AT_MOST);
                }
                Ok(()) => break,
                // A report for a job that is not this worker's: refused, nothing changed.
                Err(gradient_domain::service::ServiceError::Forbidden(m)) => {
                    tracing::warn!(target: "gradient::proto", "refused a report of worker {worker}: {m}");
                    break;
                }
                Err(e) => {
                    tracing::error!(target: "gradient::proto", "handling a report of worker {worker}: {e:?}");
                    break;
                }
            }
        }
        if waited {
            tracing::info!(target: "gradient::proto", "recorded the waiting report of worker {worker}");
        }
        if let Some(report_id) = report_id {
            let _ = acks.send(Outgoing::Send(ServerMessage::Ack { report_id }));
        }
    }
}

/// What a connected worker reports; `log`: a finished job's live log.
async fn handle(
    state: &AppState,
    worker: gradient_domain::WorkerId,
    orgs: &std::collections::BTreeSet<gradient_domain::OrgId>,
    msg: WorkerMessage,
    log: Option<gradient_domain::logs::LogBuffer>,
) -> Result<(), gradient_domain::service::ServiceError> {
    match msg {
        WorkerMessage::EvalResult {
            job_id,
            derivations,
            errors,
        } => {
            let (started, count) = (std::time::Instant::now(), derivations.len());
            let recorded = state
                .core
                .record_eval_result(job_id, worker, orgs, derivations, errors)
                .await;
            tracing::debug!(
                target: "gradient::proto",
                "recorded an evaluation result of {count} derivation(s) in {:.1} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
            recorded
        }
        WorkerMessage::JobLog { job_id, text, .. } => {
            // Only the worker the job was handed to, on a link proved for the job's organization, writes its log.
            if state.fleet.logs.append(job_id, worker, orgs, &text) {
                Ok(())
            } else {
                Err(gradient_domain::service::ServiceError::Forbidden(format!(
                    "a log line for job {} which is not running on worker {worker}",
                    job_id.0
                )))
            }
        }
        WorkerMessage::JobProgress { job_id, stage } => {
            let started = std::time::Instant::now();
            let recorded = state.core.record_job_progress(job_id, worker, orgs, stage).await;
            // An evaluation job that starts pushing its `.drv` files has its builds planned and queued here.
            if stage == gradient_domain::proto::Stage::Pushing {
                tracing::debug!(
                    target: "gradient::proto",
                    "recorded that job {} pushes in {:.1} ms",
                    job_id.0,
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            recorded
        }
        WorkerMessage::JobFinished { job_id, outcome } => {
            // Another worker's report neither takes nor ends the job's log (the domain refuses the report).
            state.core.record_job_finished(job_id, worker, orgs, outcome, log).await
        }
        _ => Ok(()),
    }
}

/// Sends before `deadline`; false when the frame could not leave by then or the link failed.
async fn sent_by<S: Io>(deadline: tokio::time::Instant, socket: &mut WebSocketStream<S>, msg: &ServerMessage) -> bool {
    matches!(tokio::time::timeout_at(deadline, send(socket, msg)).await, Ok(Ok(())))
}

async fn send<S: Io>(socket: &mut WebSocketStream<S>, msg: &ServerMessage) -> Result<(), ()> {
    let text = proto::encode(msg).map_err(|_| ())?;
    socket.send(Message::text(text)).await.map_err(|_| ())
}
