//! What the worker trusts for TLS: the webpki roots, the system's bundle and the extra CA certificates of
//! `GRADIENT_CA_FILE`, for the link (`wss://`), the cache client (pushes and questions over https) and the
//! substituter probe alike; the Nix commands the worker runs get a bundle of the certificates Nix would trust
//! anyway plus the extra ones (`NIX_SSL_CERT_FILE`), since Nix's setting replaces its bundle rather than adding
//! to it. (A Nix daemon's own downloads are the daemon's: see the README.)

use std::path::{Path, PathBuf};

/// Where Nix finds its CA bundle when nothing says otherwise (Debian, NixOS, most distributions).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The bundle Nix would use: `NIX_SSL_CERT_FILE`, else `SSL_CERT_FILE`, else the system's, when readable.
fn nix_bundle(var: impl Fn(&str) -> Option<String>) -> Option<Vec<u8>> {
    let path = var("NIX_SSL_CERT_FILE")
        .or_else(|| var("SSL_CERT_FILE"))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| SYSTEM_BUNDLE.to_owned());
    std::fs::read(path).ok()
}

/// `base` (Nix's usual bundle, if any) followed by `extra`, on a line of its own.
fn bundle(base: Option<Vec<u8>>, extra: &[u8]) -> Vec<u8> {
    let mut bundle = base.unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(extra);
    bundle
}

/// The system's bundle as Nix finds it (the link and the cache client trust it too).
pub fn system_bundle() -> Option<Vec<u8>> {
    nix_bundle(|v| std::env::var(v).ok())
}

/// Writes `<state_dir>/ca-bundle.pem`: Nix's usual bundle (if any) followed by `extra`; answers its path.
pub fn write_nix_bundle(state_dir: &Path, extra: &[u8]) -> std::io::Result<PathBuf> {
    let contents = bundle(system_bundle(), extra);
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join("ca-bundle.pem");
    std::fs::write(&path, contents)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_nixs_own_followed_by_the_extra_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.pem");
        std::fs::write(&base, "BASE").unwrap();
        let base = base.to_str().unwrap().to_owned();
        let nix = base.clone();
        assert_eq!(
            nix_bundle(|v| (v == "NIX_SSL_CERT_FILE").then(|| nix.clone())).as_deref(),
            Some(&b"BASE"[..])
        );
        assert_eq!(
            nix_bundle(|v| (v == "SSL_CERT_FILE").then(|| base.clone())).as_deref(),
            Some(&b"BASE"[..])
        );
        assert_eq!(bundle(Some(b"BASE".to_vec()), b"EXTRA\n"), b"BASE\nEXTRA\n");
        assert_eq!(bundle(None, b"EXTRA\n"), b"EXTRA\n");
        let path = write_nix_bundle(&dir.path().join("state"), b"EXTRA\n").unwrap();
        assert!(std::fs::read_to_string(path).unwrap().ends_with("EXTRA\n"));
    }
}
