//! The worker link (`/proto`): the messages workers and the server exchange, how frames are encoded and
//! bounded, the challenge proofs, and the server's handshake decisions. Pure: the `link-ws` adapter moves the
//! frames; everything it decides, it asks this module. `docs/protocol.md` describes it for humans.

mod handshake;
mod messages;
mod proof;

pub use handshake::{
    HandshakePolicy, answer_challenge, authorized_orgs, check_answers, check_hello, check_server_proofs,
    dialed_registrations, is_challenge_nonce, server_proofs, server_proved_peers,
};
pub use messages::*;
pub use proof::{
    legacy_proof_key, make_proof, make_server_proof, nonce_from_bytes, open_proof_key, proof_key, seal_proof_key,
    verify_proof, verify_server_proof,
};

use serde::{Deserialize, Serialize};

/// The version this code speaks. Bumped by any change an older peer would misread; additive optional fields
/// (which older peers ignore) do not bump it.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest frame either side accepts (1 MiB of JSON text). Larger frames close the connection.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// The largest `text` of one `JobLog`; longer logs are sent as several pieces ([`log_chunks`]).
pub const MAX_LOG_CHUNK_BYTES: usize = 64 * 1024;

/// Defaults for the server's heartbeat settings: a heartbeat every 10 s, lost after 3 missed ones.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: u32 = 10;
pub const DEFAULT_LOST_AFTER_SECS: u32 = 30;

/// How long the server waits for `Hello` and then for `ChallengeResponse` before `handshake_timeout`.
pub const HANDSHAKE_TIMEOUT_SECS: u32 = 10;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("log piece of {size} bytes exceeds the limit of {limit} bytes")]
    LogTooLarge { size: usize, limit: usize },
    /// Not JSON, an unknown `type`, or a missing or mistyped field; carries serde's description.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl ProtoError {
    /// The code the receiving side closes the connection with.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::TooLarge { .. } | Self::LogTooLarge { .. } => RejectCode::FrameTooLarge,
            Self::Malformed(_) => RejectCode::MalformedFrame,
        }
    }
}

/// A message that travels on the link: [`WorkerMessage`] or [`ServerMessage`].
pub trait Message: Serialize + sealed::Sealed {}
impl Message for WorkerMessage {}
impl Message for ServerMessage {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::WorkerMessage {}
    impl Sealed for super::ServerMessage {}
}

/// The text frame for a message. Refuses what the other side would refuse, so a sender can split instead.
pub fn encode<M: Message>(msg: &M) -> Result<String, ProtoError> {
    let text = serde_json::to_string(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    check_size(&text)?;
    Ok(text)
}

/// Reads a frame from a worker.
pub fn decode_worker(frame: &str) -> Result<WorkerMessage, ProtoError> {
    let msg: WorkerMessage = decode(frame)?;
    if let WorkerMessage::JobLog { text, .. } = &msg
        && text.len() > MAX_LOG_CHUNK_BYTES
    {
        return Err(ProtoError::LogTooLarge {
            size: text.len(),
            limit: MAX_LOG_CHUNK_BYTES,
        });
    }
    Ok(msg)
}

/// Reads a frame from the server.
pub fn decode_server(frame: &str) -> Result<ServerMessage, ProtoError> {
    decode(frame)
}

fn decode<M: for<'de> Deserialize<'de>>(frame: &str) -> Result<M, ProtoError> {
    check_size(frame)?;
    serde_json::from_str(frame).map_err(|e| ProtoError::Malformed(e.to_string()))
}

fn check_size(frame: &str) -> Result<(), ProtoError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::TooLarge {
            size: frame.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

/// The `version` of a `hello` frame, read leniently: a worker of another version may send a `hello` this
/// code cannot decode, and still deserves a `version_mismatch` rather than a `malformed_frame`.
pub fn hello_version(frame: &str) -> Option<u32> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "type")]
        kind: String,
        version: u32,
    }
    if frame.len() > MAX_FRAME_BYTES {
        return None;
    }
    let peek: Peek = serde_json::from_str(frame).ok()?;
    (peek.kind == "hello").then_some(peek.version)
}

/// The frames that carry `reports`, in their order: as few `reports` frames as fit within [`MAX_FRAME_BYTES`]
/// each (a report that would not fit in a frame of its own is refused when it is encoded, as it always was).
pub fn report_frames(reports: Vec<Report>) -> Vec<WorkerMessage> {
    // `{"type":"reports","reports":[` … `]}`, and a comma between two reports.
    const ENVELOPE: usize = 32;
    let mut frames = Vec::new();
    let mut current: Vec<Report> = Vec::new();
    let mut size = ENVELOPE;
    for report in reports {
        let len = serde_json::to_string(&report).map_or(0, |t| t.len()) + 1;
        if !current.is_empty() && size + len > MAX_FRAME_BYTES {
            frames.push(WorkerMessage::Reports {
                reports: std::mem::take(&mut current),
            });
            size = ENVELOPE;
        }
        size += len;
        current.push(report);
    }
    if !current.is_empty() {
        frames.push(WorkerMessage::Reports { reports: current });
    }
    frames
}

/// Splits a log into `JobLog` pieces of at most [`MAX_LOG_CHUNK_BYTES`], never inside a UTF-8 character.
pub fn log_chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (piece, tail) = rest.split_at(rest.floor_char_boundary(MAX_LOG_CHUNK_BYTES));
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests;
