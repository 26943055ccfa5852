//! The handshake's decisions. The server: `Hello` → [`check_hello`] → `Challenge` (or `Rejected`);
//! `ChallengeResponse` → [`check_answers`] → `Welcome` (or `Rejected`). The worker: [`answer_challenge`].

use super::{
    Capabilities, Challenge, ChallengeResponse, DEFAULT_HEARTBEAT_INTERVAL_SECS, DEFAULT_LOST_AFTER_SECS, Hello,
    PROTOCOL_VERSION, PeerAnswer, RejectCode, Rejected, Welcome, make_proof, make_server_proof, open_proof_key,
    verify_proof, verify_server_proof,
};
use crate::crypt::Crypt;
use crate::model::WorkerRegistration;
use crate::{OrgId, PeerId};
use std::collections::{BTreeMap, BTreeSet};

/// What the server brings to a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakePolicy {
    /// The server's side of the capability AND.
    pub capabilities: Capabilities,
    pub heartbeat_interval_secs: u32,
    pub lost_after_secs: u32,
}

impl Default for HandshakePolicy {
    fn default() -> Self {
        Self {
            capabilities: Capabilities {
                fetch: true,
                eval: true,
                build: true,
                sign: true,
            },
            heartbeat_interval_secs: DEFAULT_HEARTBEAT_INTERVAL_SECS,
            lost_after_secs: DEFAULT_LOST_AFTER_SECS,
        }
    }
}

/// Decides what answers a `Hello`: the peers to challenge (every registration of this worker id, in the
/// given order), or a rejection. `registrations` may include other workers' rows; they are ignored.
/// `already_connected` is whether a link with this worker id is open; the open link is never displaced.
pub fn check_hello(
    hello: &Hello,
    registrations: &[WorkerRegistration],
    already_connected: bool,
    policy: &HandshakePolicy,
) -> Result<Vec<PeerId>, Rejected> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Rejected::new(
            RejectCode::VersionMismatch,
            format!(
                "the worker speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    let peers = peers_of(hello, registrations);
    if peers.is_empty() {
        return Err(Rejected::new(
            RejectCode::UnknownWorker,
            format!("no organization registered worker {}", hello.worker_id),
        ));
    }
    if already_connected {
        return Err(Rejected::new(
            RejectCode::DuplicateConnection,
            format!("worker {} is already connected", hello.worker_id),
        ));
    }
    if !hello.capabilities.and(policy.capabilities).any() {
        return Err(Rejected::new(
            RejectCode::NoCapability,
            "no capability is left once the worker's and the server's are combined",
        ));
    }
    Ok(peers)
}

/// Decides what answers a `ChallengeResponse` to the challenge of `nonce`: `Welcome` listing every peer whose
/// proof verified, or `bad_tokens` when none did. Answers for peers that were not challenged are ignored.
/// Each registration's proof key is opened with `crypt` (the server's crypt secret); a row that does not open
/// (not sealed, or sealed under another secret) proves nothing.
pub fn check_answers(
    hello: &Hello,
    registrations: &[WorkerRegistration],
    nonce: &str,
    response: &ChallengeResponse,
    policy: &HandshakePolicy,
    crypt: &Crypt,
) -> Result<Welcome, Rejected> {
    let authorized: Vec<PeerId> = registrations
        .iter()
        .filter(|r| r.worker_id == hello.worker_id)
        .filter(|r| {
            let Some(key) = open_proof_key(crypt, &r.proof_key) else {
                return false;
            };
            response
                .answers
                .iter()
                .any(|a| a.peer_id == r.peer_id && verify_proof(&key, nonce, &a.proof))
        })
        .map(|r| r.peer_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if authorized.is_empty() {
        return Err(Rejected::new(
            RejectCode::BadTokens,
            format!(
                "no answer proved the token of any of the {} registrations of worker {}",
                peers_of(hello, registrations).len(),
                hello.worker_id
            ),
        ));
    }
    Ok(Welcome {
        authorized,
        capabilities: hello.capabilities.and(policy.capabilities),
        heartbeat_interval_secs: policy.heartbeat_interval_secs,
        lost_after_secs: policy.lost_after_secs,
    })
}

/// The worker's answer: a proof for every challenged peer it has a token for, taken from its peers file
/// (`tokens` by peer id; `any` is the `*` entry, used for peers without their own line).
pub fn answer_challenge(
    challenge: &Challenge,
    tokens: &BTreeMap<PeerId, String>,
    any: Option<&str>,
) -> ChallengeResponse {
    let answers = challenge
        .peers
        .iter()
        .filter_map(|peer| {
            let token = tokens.get(peer).map(String::as_str).or(any)?;
            Some(PeerAnswer {
                peer_id: *peer,
                proof: make_proof(token, &challenge.nonce),
            })
        })
        .collect();
    ChallengeResponse { answers }
}

/// On a link the server dialed to `url`: the registrations it may be authorized for, those of the worker it
/// dialed that name this URL. Registrations of the same worker without a URL, or with another, are neither
/// challenged nor proved on it: an organization that registers someone else's worker id at an address of its
/// own choosing learns no proof of the other organizations' keys, and gets no link authorized for them.
pub fn dialed_registrations(
    registrations: &[WorkerRegistration],
    worker: crate::WorkerId,
    url: &str,
) -> Vec<WorkerRegistration> {
    registrations
        .iter()
        .filter(|r| r.worker_id == worker && r.url.as_deref() == Some(url))
        .cloned()
        .collect()
}

/// The server's proofs for a listening worker's `hello.server_nonce`, one per registration whose key opens
/// (`registrations` as [`dialed_registrations`] chose them). A `hello` without a nonce is refused: a worker the
/// server dialed must make the server prove itself before it proves anything.
pub fn server_proofs(
    hello: &Hello,
    registrations: &[WorkerRegistration],
    crypt: &Crypt,
) -> Result<Vec<PeerAnswer>, Rejected> {
    let Some(nonce) = hello.server_nonce.as_deref().filter(|n| !n.is_empty()) else {
        return Err(Rejected::new(
            RejectCode::UnexpectedMessage,
            "a worker the server dials sends hello.server_nonce",
        ));
    };
    Ok(registrations
        .iter()
        .filter(|r| r.worker_id == hello.worker_id)
        .filter_map(|r| {
            let key = open_proof_key(crypt, &r.proof_key)?;
            Some(PeerAnswer {
                peer_id: r.peer_id,
                proof: make_server_proof(&key, nonce),
            })
        })
        .collect())
}

/// The listening worker's check of the server that dialed it: the challenged peers whose
/// `challenge.server_proofs` prove that peer's token (from the peers file; `any` for peers without a line of
/// their own) over `nonce`, the worker's `hello.server_nonce`. The worker answers the challenge for these peers
/// only: a dialer that proves one organization's registration (that organization knows its own token) must not
/// obtain the proofs of the worker's other organizations and relay them to the real server.
pub fn server_proved_peers(
    challenge: &Challenge,
    nonce: &str,
    tokens: &BTreeMap<PeerId, String>,
    any: Option<&str>,
) -> Vec<PeerId> {
    let proved: BTreeSet<PeerId> = challenge
        .server_proofs
        .iter()
        .filter(|p| {
            challenge.peers.contains(&p.peer_id)
                && tokens
                    .get(&p.peer_id)
                    .map(String::as_str)
                    .or(any)
                    .is_some_and(|token| verify_server_proof(token, nonce, &p.proof))
        })
        .map(|p| p.peer_id)
        .collect();
    proved.into_iter().collect()
}

/// Whether one of `challenge.server_proofs` proves a challenged peer (see [`server_proved_peers`]).
pub fn check_server_proofs(
    challenge: &Challenge,
    nonce: &str,
    tokens: &BTreeMap<PeerId, String>,
    any: Option<&str>,
) -> bool {
    !server_proved_peers(challenge, nonce, tokens, any).is_empty()
}

/// Whether a challenge's nonce has the form the server makes (base64 of 32 random bytes). A worker answers no
/// other: a nonce such as `"server:…"` would make its answer a server proof for someone else's link.
pub fn is_challenge_nonce(nonce: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(nonce)
        .is_ok_and(|bytes| bytes.len() == 32)
}

/// The organizations whose jobs a link authorized for `authorized` may take.
pub fn authorized_orgs(registrations: &[WorkerRegistration], authorized: &[PeerId]) -> BTreeSet<OrgId> {
    registrations
        .iter()
        .filter(|r| authorized.contains(&r.peer_id))
        .map(|r| r.org_id)
        .collect()
}

fn peers_of(hello: &Hello, registrations: &[WorkerRegistration]) -> Vec<PeerId> {
    let mut seen = BTreeSet::new();
    registrations
        .iter()
        .filter(|r| r.worker_id == hello.worker_id && seen.insert(r.peer_id))
        .map(|r| r.peer_id)
        .collect()
}
