//! Secrets at rest. Everything secret that Gradient keeps in its database (cache signing keys, forge
//! tokens, webhook secrets) is sealed with a key derived from the crypt secret file, so a copy of the
//! database alone reveals none of them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

/// A sealed secret as stored: `v1:` followed by base64 of nonce ‖ ciphertext ‖ tag.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this crypt secret (was the crypt secret changed?)")]
    WrongKey,
}

/// Seals and opens secrets with XChaCha20-Poly1305 under a key derived from the crypt secret.
#[derive(Clone)]
pub struct Crypt {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Crypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypt(..)")
    }
}

impl Crypt {
    /// Derives the key from the secret file's contents (surrounding whitespace ignored).
    pub fn from_secret(secret: &[u8]) -> Self {
        let secret = secret.trim_ascii();
        let mut h = Sha256::new();
        h.update(b"gradient crypt v1\0");
        h.update(secret);
        let key: [u8; 32] = h.finalize().into();
        Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Sealed {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption with a fresh nonce and an in-memory buffer cannot fail.
        let ct = self.cipher.encrypt(&nonce, plaintext).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Sealed(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, CryptError> {
        let b64 = sealed.0.strip_prefix(PREFIX).ok_or(CryptError::Malformed)?;
        let raw = STANDARD.decode(b64).map_err(|_| CryptError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| CryptError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_nonces_differ() {
        let c = Crypt::from_secret(b"0123456789abcdef0123456789abcdef");
        let a = c.seal(b"signing key");
        let b = c.seal(b"signing key");
        assert_ne!(a, b);
        assert_eq!(c.open(&a).unwrap(), b"signing key");
        assert!(!a.0.contains("signing"));
    }

    #[test]
    fn wrong_secret_or_tampering_is_refused() {
        let c = Crypt::from_secret(b"0123456789abcdef0123456789abcdef");
        let other = Crypt::from_secret(b"fedcba9876543210fedcba9876543210");
        let s = c.seal(b"token");
        assert_eq!(other.open(&s), Err(CryptError::WrongKey));
        let mut raw = STANDARD.decode(&s.0[3..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = Sealed(format!("v1:{}", STANDARD.encode(raw)));
        assert_eq!(c.open(&tampered), Err(CryptError::WrongKey));
        assert_eq!(c.open(&Sealed("nope".into())), Err(CryptError::Malformed));
    }

    #[test]
    fn trailing_newline_in_secret_file_does_not_matter() {
        let a = Crypt::from_secret(b"0123456789abcdef0123456789abcdef\n");
        let b = Crypt::from_secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(b.open(&a.seal(b"x")).unwrap(), b"x");
    }
}
