//! The handshake's decisions. The server: `Hello` → [`check_hello`] → `Challenge` (or `Rejected`);
//! `ChallengeResponse` → [`check_answers`] → `Welcome` (or `Rejected`). The worker: [`answer_challenge`].

use super::{
    Capabilities, Challenge, ChallengeResponse, DEFAULT_HEARTBEAT_INTERVAL_SECS, DEFAULT_LOST_AFTER_SECS, Hello,
    PROTOCOL_VERSION, PeerAnswer, RejectCode, Rejected, Welcome, make_proof, open_proof_key, verify_proof,
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
