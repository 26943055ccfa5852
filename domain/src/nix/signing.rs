//! Binary cache signatures, compatible with `nix key generate-secret` / `nix-store --generate-binary-cache-key`:
//! keys are `name:base64`, a secret key being the 32-byte ed25519 seed followed by the 32-byte public key;
//! a signature is `name:base64(64 bytes)` over the path's fingerprint.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, Verifier};
use rand::RngCore;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is 'name:base64'")]
    Shape,
    #[error("the key's name is empty or contains ':'")]
    Name,
    #[error("the key's base64 is invalid or has the wrong length")]
    Bytes,
}

fn split(s: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, b64) = s.trim().split_once(':').ok_or(KeyError::Shape)?;
    if name.is_empty() {
        return Err(KeyError::Name);
    }
    Ok((name, STANDARD.decode(b64).map_err(|_| KeyError::Bytes)?))
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        Err(KeyError::Name)
    } else {
        Ok(())
    }
}

/// A cache's secret signing key.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:…)", self.name)
    }
}

impl SecretKey {
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| KeyError::Bytes)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError::Bytes)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `name:base64(signature)` over the fingerprint.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(sig.to_bytes()))
    }
}

impl std::fmt::Display for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.to_keypair_bytes()))
    }
}

/// A public key as listed in `trusted-public-keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(s)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Bytes)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Bytes)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` (`name:base64`) is this key's valid signature of the fingerprint.
    pub fn verify(&self, fingerprint: &str, signature: &str) -> bool {
        let Ok((name, bytes)) = split(signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        name == self.name
            && self
                .key
                .verify(fingerprint.as_bytes(), &ed25519_dalek::Signature::from_bytes(&bytes))
                .is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.to_bytes()))
    }
}

/// What a narinfo signature covers: `1;<store path>;<nar hash>;<nar size>;<references, full paths, comma-separated>`.
pub fn fingerprint(store_path: &str, nar_hash: &str, nar_size: u64, references: &[String]) -> String {
    format!("1;{store_path};{nar_hash};{nar_size};{}", references.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_verify() {
        let sk = SecretKey::generate("cache.example.com-main").unwrap();
        let text = sk.to_string();
        let again = SecretKey::parse(&text).unwrap();
        assert_eq!(again.public(), sk.public());
        let pk = PublicKey::parse(&sk.public().to_string()).unwrap();
        let fp = fingerprint("/nix/store/abc-x", "sha256:0000", 12, &["/nix/store/abc-x".into()]);
        let sig = sk.sign(&fp);
        assert!(sig.starts_with("cache.example.com-main:"));
        assert!(pk.verify(&fp, &sig));
        assert!(!pk.verify(&fp.replace("12", "13"), &sig), "another fingerprint");
        let other = SecretKey::generate("cache.example.com-main").unwrap();
        assert!(!pk.verify(&fp, &other.sign(&fp)), "another key with the same name");
        assert!(!pk.verify(&fp, "garbage"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(SecretKey::parse("nocolon").unwrap_err(), KeyError::Shape);
        assert_eq!(SecretKey::parse(":AAAA").unwrap_err(), KeyError::Name);
        assert_eq!(SecretKey::parse("n:AAAA").unwrap_err(), KeyError::Bytes);
        assert!(SecretKey::generate("bad:name").is_err());
    }

    #[test]
    fn fingerprint_shape() {
        let refs = vec!["/nix/store/a-x".to_owned(), "/nix/store/b-y".to_owned()];
        assert_eq!(
            fingerprint("/nix/store/a-x", "sha256:h", 5, &refs),
            "1;/nix/store/a-x;sha256:h;5;/nix/store/a-x,/nix/store/b-y"
        );
        assert_eq!(
            fingerprint("/nix/store/a-x", "sha256:h", 5, &[]),
            "1;/nix/store/a-x;sha256:h;5;"
        );
    }
}
