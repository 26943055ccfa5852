//! Listening workers: the server dials the `/proto` URL a registration names, and keeps redialling it with
//! jittered backoff (1 s doubling to 60 s) whenever the link drops, for as long as a registration names it. The
//! link then runs as any other ([`super::serve`]), the worker still speaking first; the server proves a
//! registration's key before the worker proves anything (`hello.server_nonce`, `challenge.server_proofs`).
//!
//! The URL was checked against the network policy when it was registered; here the addresses its host resolves
//! to are checked again and the connection goes to a checked one, so a name that resolves to a loopback or
//! metadata address later is refused too.

use super::{Side, serve};
use crate::state::AppState;
use gradient_domain::WorkerId;
use gradient_domain::reach::{Host, NetworkPolicy};
use gradient_link_ws::{LinkError, TlsRoots};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often the registrations are read for listening workers to dial.
const SCAN: Duration = Duration::from_secs(5);
/// How long resolving a worker's host may take.
const RESOLVE: Duration = Duration::from_secs(10);
/// A link that lasted this long starts the backoff over.
const STABLE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Starts the loop that dials every listening worker's URL.
pub fn spawn_dialer(state: AppState, tls: TlsRoots) {
    tokio::spawn(async move {
        let mut dialing: HashMap<(WorkerId, String), tokio::task::JoinHandle<()>> = HashMap::new();
        // The one scan of the registrations, shared with every dialing task (none reads them itself).
        let (registered, _) = tokio::sync::watch::channel(Arc::new(HashSet::<(WorkerId, String)>::new()));
        loop {
            dialing.retain(|_, task| !task.is_finished());
            match state.core.listening_workers().await {
                Ok(listening) => {
                    registered.send_replace(Arc::new(listening.iter().cloned().collect()));
                    for pair in listening {
                        if dialing.contains_key(&pair) {
                            continue;
                        }
                        // At most `maxProtoConnections` URLs are dialed at once, however many are registered.
                        if dialing.len() >= state.link.max_connections {
                            tracing::warn!(
                                target: "gradient::proto",
                                "more listening workers are registered than maxProtoConnections ({}); some are not dialed",
                                state.link.max_connections
                            );
                            break;
                        }
                        let (worker, url) = pair.clone();
                        let task = tokio::spawn(keep_dialing(
                            state.clone(),
                            tls.clone(),
                            registered.subscribe(),
                            worker,
                            url,
                        ));
                        dialing.insert(pair, task);
                    }
                }
                Err(e) => tracing::error!(target: "gradient::proto", "reading listening workers: {e}"),
            }
            tokio::time::sleep(SCAN).await;
        }
    });
}

/// Dials `url` for `worker` until no registration names it any more.
async fn keep_dialing(
    state: AppState,
    tls: TlsRoots,
    registered: tokio::sync::watch::Receiver<Arc<HashSet<(WorkerId, String)>>>,
    worker: WorkerId,
    url: String,
) {
    let mut backoff = Duration::from_secs(1);
    let pair = (worker, url.clone());
    loop {
        // As of the dialer's latest scan (every `SCAN`).
        if !registered.borrow().contains(&pair) {
            return;
        }
        // Connected some other way (it dialed in, or through another registered URL): nothing to do.
        if state.fleet.links.is_worker_connected(worker) {
            backoff = Duration::from_secs(1);
            tokio::time::sleep(SCAN).await;
            continue;
        }
        tracing::debug!(target: "gradient::proto", "dialing worker {worker} at {url}");
        let mut floor = Duration::ZERO;
        match dial(&url, &state.core.settings().network, &tls).await {
            Ok(socket) => {
                let started = tokio::time::Instant::now();
                serve(
                    state.clone(),
                    socket,
                    Side::Dialed {
                        worker,
                        url: url.clone(),
                    },
                )
                .await;
                if started.elapsed() >= STABLE {
                    backoff = Duration::from_secs(1);
                }
            }
            Err(DialError::Link(LinkError::Refused {
                status,
                retry_after_secs,
            })) => {
                tracing::warn!(target: "gradient::proto", "worker {worker} at {url} refused the link: HTTP {status}");
                floor = Duration::from_secs(retry_after_secs.unwrap_or(0));
            }
            Err(e) => tracing::warn!(target: "gradient::proto", "cannot reach worker {worker} at {url}: {e}"),
        }
        let wait = backoff
            .mul_f64(rand::thread_rng().gen_range(0.5..1.5))
            .min(MAX_BACKOFF)
            .max(floor);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Link(LinkError),
}

/// Resolves the URL's host, keeps the addresses `policy` permits (all of them must be: a name with one forbidden
/// address is refused, as the forge client does) and dials the first.
async fn dial(url: &str, policy: &NetworkPolicy, tls: &TlsRoots) -> Result<gradient_link_ws::RawLink, DialError> {
    let remote =
        gradient_domain::reach::parse_ws_url(url).ok_or_else(|| DialError::Refused("not a ws:// URL".into()))?;
    gradient_domain::reach::check_remote(&remote, policy).map_err(DialError::Refused)?;
    let addrs: Vec<SocketAddr> = match &remote.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, remote.port)],
        Host::Name(name) => tokio::time::timeout(RESOLVE, tokio::net::lookup_host((name.as_str(), remote.port)))
            .await
            .map_err(|_| DialError::Refused(format!("resolving {name} timed out")))?
            .map_err(|e| DialError::Refused(format!("cannot resolve {name}: {e}")))?
            .collect(),
        Host::None => return Err(DialError::Refused("no host".into())),
    };
    for addr in &addrs {
        policy.check(addr.ip()).map_err(DialError::Refused)?;
    }
    let addr = addrs
        .first()
        .ok_or_else(|| DialError::Refused("the host has no address".into()))?;
    gradient_link_ws::dial_at(url, *addr, tls)
        .await
        .map_err(DialError::Link)
}
