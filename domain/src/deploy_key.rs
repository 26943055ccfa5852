//! Organizations' SSH deploy keys and the credentials a repository is fetched with.
//!
//! Each organization has one ed25519 key pair: the public half is an OpenSSH `authorized_keys` line
//! (`ssh-ed25519 AAAA… gradient-<org>`) its members paste into their forge as a read-only deploy key; the
//! private half, in OpenSSH's own private key format (`-----BEGIN OPENSSH PRIVATE KEY-----`, unencrypted, as
//! `ssh -i` reads it), is stored sealed with the crypt secret and opened only to fetch that organization's
//! repositories over SSH: by the server's `git ls-remote` and inside an evaluation job's assignment.
//!
//! The formats are OpenSSH's (`PROTOCOL.key` for the private key, RFC 4253/8709 for the public key blob),
//! written here so no other crate is needed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

/// The algorithm name of ed25519 keys in SSH.
const KEY_TYPE: &str = "ssh-ed25519";

/// A freshly generated key pair: the public `authorized_keys` line and the private key file's text.
pub struct DeployKey {
    pub public: String,
    /// The OpenSSH private key file, never shown, logged or stored unsealed.
    pub private: String,
}

impl std::fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeployKey({}, private: …)", self.public)
    }
}

/// The comment of an organization's key: `gradient-<org>`.
pub fn comment(org: &str) -> String {
    format!("gradient-{org}")
}

/// Generates a new ed25519 key pair for the organization named `org`.
pub fn generate(org: &str) -> DeployKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    from_seed(&seed, &comment(org))
}

/// The key pair of an ed25519 secret `seed`, with `comment`.
pub fn from_seed(seed: &[u8; 32], comment: &str) -> DeployKey {
    let signing = ed25519_dalek::SigningKey::from_bytes(seed);
    let public: [u8; 32] = signing.verifying_key().to_bytes();
    let blob = public_blob(&public);
    let public_line = format!("{KEY_TYPE} {} {comment}", STANDARD.encode(&blob));

    // The private section: two equal check numbers, the key (type, public, secret ‖ public), its comment,
    // padded with 1, 2, 3… to the cipher's block size (8 for "none").
    let mut check = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut check);
    let mut section = Vec::new();
    section.extend_from_slice(&check);
    section.extend_from_slice(&check);
    put_string(&mut section, KEY_TYPE.as_bytes());
    put_string(&mut section, &public);
    let mut pair = seed.to_vec();
    pair.extend_from_slice(&public);
    put_string(&mut section, &pair);
    put_string(&mut section, comment.as_bytes());
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }

    let mut body = b"openssh-key-v1\0".to_vec();
    put_string(&mut body, b"none"); // cipher
    put_string(&mut body, b"none"); // kdf
    put_string(&mut body, b""); // kdf options
    body.extend_from_slice(&1u32.to_be_bytes()); // one key
    put_string(&mut body, &blob);
    put_string(&mut body, &section);

    let encoded = STANDARD.encode(&body);
    let mut private = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(70) {
        private.push_str(&String::from_utf8_lossy(line));
        private.push('\n');
    }
    private.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    DeployKey {
        public: public_line,
        private,
    }
}

/// The public key blob: `string "ssh-ed25519"`, `string key`.
fn public_blob(public: &[u8; 32]) -> Vec<u8> {
    let mut blob = Vec::new();
    put_string(&mut blob, KEY_TYPE.as_bytes());
    put_string(&mut blob, public);
    blob
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The SHA256 fingerprint of an `authorized_keys` line as `ssh-keygen -l` prints it (`SHA256:…`, unpadded
/// base64), or `None` when the line is not a key.
pub fn fingerprint(public_line: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let blob = public_line.split_whitespace().nth(1)?;
    let raw = STANDARD.decode(blob).ok()?;
    let digest = Sha256::digest(&raw);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// Whether `repository` is fetched over SSH (`ssh://…`, `git+ssh://…` or scp-like `user@host:path`), so with
/// its organization's deploy key.
pub fn uses_ssh(repository: &str) -> bool {
    crate::reach::parse_remote(repository).is_some_and(|r| r.transport == crate::reach::Transport::Ssh)
}

/// What a repository is fetched with, when it needs more than the URL: handed to the Git and Nix ports and,
/// for an evaluation, carried by the job's assignment only. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RepositoryCredential {
    /// An OpenSSH private key file's text, used with `ssh -i` for `ssh://` and `user@host:path` URLs.
    SshKey { private_key: String },
    /// A GitHub App installation token, sent as HTTP basic credentials (`x-access-token`) to the repository's
    /// https host only.
    HttpsToken { token: String },
}

impl std::fmt::Debug for RepositoryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SshKey { .. } => f.write_str("SshKey(…)"),
            Self::HttpsToken { .. } => f.write_str("HttpsToken(…)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_string(b: &mut &[u8]) -> Vec<u8> {
        let (len, rest) = b.split_at(4);
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let (s, rest) = rest.split_at(len);
        *b = rest;
        s.to_vec()
    }

    #[test]
    fn the_private_key_file_holds_the_key_of_the_public_line() {
        let seed = [7u8; 32];
        let key = from_seed(&seed, "gradient-acme");
        assert!(
            key.public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
            "{}",
            key.public
        );
        assert!(key.public.ends_with(" gradient-acme"));
        let text = key.private.trim();
        let inner = text
            .strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----\n")
            .and_then(|t| t.strip_suffix("\n-----END OPENSSH PRIVATE KEY-----"))
            .expect("armored");
        assert!(inner.lines().all(|l| l.len() <= 70));
        let body = STANDARD.decode(inner.replace('\n', "")).unwrap();
        let mut b = body.strip_prefix(b"openssh-key-v1\0".as_slice()).unwrap();
        assert_eq!(read_string(&mut b), b"none");
        assert_eq!(read_string(&mut b), b"none");
        assert_eq!(read_string(&mut b), b"");
        assert_eq!(&b[..4], &[0, 0, 0, 1]);
        b = &b[4..];
        let blob = read_string(&mut b);
        assert_eq!(STANDARD.encode(&blob), key.public.split_whitespace().nth(1).unwrap());
        let section = read_string(&mut b);
        assert!(b.is_empty());
        assert_eq!(section.len() % 8, 0);
        assert_eq!(section[..4], section[4..8]);
        let mut s = &section[8..];
        assert_eq!(read_string(&mut s), b"ssh-ed25519");
        let public = read_string(&mut s);
        let pair = read_string(&mut s);
        assert_eq!(pair[..32], seed);
        assert_eq!(pair[32..], public[..]);
        assert_eq!(read_string(&mut s), b"gradient-acme");
        assert!(
            s.iter().enumerate().all(|(i, &p)| p as usize == i + 1),
            "padding 1, 2, 3…"
        );
    }

    #[test]
    fn keys_differ_and_hide_in_debug() {
        let a = generate("acme");
        let b = generate("acme");
        assert_ne!(a.public, b.public);
        assert!(!format!("{a:?}").contains("PRIVATE"));
        let c = RepositoryCredential::SshKey {
            private_key: a.private.clone(),
        };
        assert_eq!(format!("{c:?}"), "SshKey(…)");
        assert!(fingerprint(&a.public).unwrap().starts_with("SHA256:"));
        assert_eq!(fingerprint("nonsense"), None);
    }

    #[test]
    fn ssh_repositories_are_recognized() {
        for ssh in [
            "ssh://git@h/a.git",
            "git+ssh://git@h:2222/a.git",
            "git@github.com:a/b.git",
        ] {
            assert!(uses_ssh(ssh), "{ssh}");
        }
        for other in ["https://github.com/a/b", "git://h/a", "file:///srv/r", "nonsense"] {
            assert!(!uses_ssh(other), "{other}");
        }
    }
}
