//! Challenge proofs. The worker holds a registration's token; the proof key is SHA-256(token). The proof is an
//! HMAC-SHA256 keyed with the proof key over the challenge's nonce, so the token never crosses the wire, and a
//! recorded proof is worthless for another nonce.
//!
//! The server must hold the proof key to check a proof, so the key is a credential: it is stored only sealed
//! with the crypt secret ([`seal_proof_key`]), never as it is. A copy of the database without the crypt secret
//! cannot answer a challenge.

use crate::crypt::{Crypt, Sealed};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The proof key of a token: SHA-256 of the token text exactly as issued.
pub fn proof_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The proof key as the server stores it: sealed with the crypt secret.
pub fn seal_proof_key(crypt: &Crypt, key: &[u8; 32]) -> Sealed {
    crypt.seal(key)
}

/// The proof key out of what is stored; `None` when it does not open (another crypt secret, a row not sealed
/// yet, anything malformed).
pub fn open_proof_key(crypt: &Crypt, sealed: &Sealed) -> Option<[u8; 32]> {
    crypt.open(sealed).ok()?.try_into().ok()
}

/// Whether a stored value is an unsealed proof key (lowercase hex of SHA-256, as versions before sealing
/// stored it); such rows are sealed at start-up and never verify as they are.
pub fn legacy_proof_key(stored: &Sealed) -> Option<[u8; 32]> {
    if stored.0.len() != 64 {
        return None;
    }
    hex::decode(&stored.0).ok()?.try_into().ok()
}

/// The nonce text for 32 random bytes the caller drew (base64, standard alphabet, padded).
pub fn nonce_from_bytes(bytes: &[u8; 32]) -> String {
    STANDARD.encode(bytes)
}

/// The proof a worker sends for one peer: lowercase hex of HMAC-SHA256(key = SHA-256(token), nonce), where the
/// token is the registration's token text exactly as issued and the nonce is the challenge's text as sent.
pub fn make_proof(token: &str, nonce: &str) -> String {
    hmac_hex(&proof_key(token), nonce)
}

/// Whether `proof` proves the proof key `key` for `nonce`. Compares in constant time; anything malformed is
/// simply false.
pub fn verify_proof(key: &[u8; 32], nonce: &str, proof: &str) -> bool {
    let expected = hmac_hex(key, nonce);
    !expected.is_empty() && crate::auth::secrets_equal(expected.as_bytes(), proof.as_bytes())
}

/// What the server answers a listening worker's `hello.server_nonce` with, on a link the server dialed: lowercase
/// hex of HMAC-SHA256(key = SHA-256(token), `"server:"` + nonce). The prefix keeps the two directions apart, so
/// neither side's proof ever answers a challenge of the other.
pub fn make_server_proof(key: &[u8; 32], nonce: &str) -> String {
    hmac_hex(key, &format!("{SERVER_PROOF_PREFIX}{nonce}"))
}

/// Whether `proof` is the server's proof of the token `token` for `nonce` (constant-time comparison).
pub fn verify_server_proof(token: &str, nonce: &str, proof: &str) -> bool {
    let expected = make_server_proof(&proof_key(token), nonce);
    !expected.is_empty() && crate::auth::secrets_equal(expected.as_bytes(), proof.as_bytes())
}

const SERVER_PROOF_PREFIX: &str = "server:";

fn hmac_hex(key: &[u8], nonce: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty proof never verifies if it somehow did.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
