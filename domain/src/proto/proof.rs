//! Challenge proofs. The worker holds a registration's token; the server holds only its SHA-256. The proof is
//! an HMAC-SHA256 keyed with SHA-256(token) over the challenge's nonce, so both sides can compute it, the
//! token never crosses the wire, and a recorded proof is worthless for another nonce.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The nonce text for 32 random bytes the caller drew (base64, standard alphabet, padded).
pub fn nonce_from_bytes(bytes: &[u8; 32]) -> String {
    STANDARD.encode(bytes)
}

/// The proof a worker sends for one peer: lowercase hex of HMAC-SHA256(key = SHA-256(token), nonce), where the
/// token is the registration's token text exactly as issued and the nonce is the challenge's text as sent.
pub fn make_proof(token: &str, nonce: &str) -> String {
    let key = Sha256::digest(token.as_bytes());
    hmac_hex(&key, nonce)
}

/// Whether `proof` proves the token whose SHA-256 (lowercase hex, as stored) is `token_sha256_hex`, for
/// `nonce`. Compares in constant time; anything malformed is simply false.
pub fn verify_proof(token_sha256_hex: &str, nonce: &str, proof: &str) -> bool {
    let Ok(key) = hex::decode(token_sha256_hex) else {
        return false;
    };
    if key.len() != 32 {
        return false;
    }
    let expected = hmac_hex(&key, nonce);
    !expected.is_empty() && crate::auth::secrets_equal(expected.as_bytes(), proof.as_bytes())
}

fn hmac_hex(key: &[u8], nonce: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty proof never verifies if it somehow did.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(nonce.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
