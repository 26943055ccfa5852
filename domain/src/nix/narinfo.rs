//! `<hash>.narinfo`: what a binary cache says about one store path, one `Key: value` per line. Parsing
//! skips keys it does not know and insists on the four Nix cannot do without; rendering writes the fields
//! in the order and shape Nix writes them, so a narinfo Nix wrote comes back byte for byte.

use std::fmt::Write as _;

use super::hash::{Hash, HashError};
use super::signing::{self, PublicKey, SecretKey};
use super::store_path::{StorePath, StorePathError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root, e.g. `nar/<filehash>.nar.xz`.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, ... Nix reads a missing `Compression` as `bzip2`.
    pub compression: String,
    /// Hash and size of the file at `url` (the compressed NAR).
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    /// Hash and size of the uncompressed NAR; what signatures cover.
    pub nar_hash: Hash,
    pub nar_size: u64,
    /// In the order read; Nix writes (and signs) them sorted.
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    /// `keyname:base64`, one per key.
    pub sigs: Vec<String>,
    /// The content address, e.g. `fixed:r:sha256:<nix32>` or `text:sha256:<nix32>`.
    pub ca: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    #[error("narinfo line {line} is not 'Key: value'")]
    Line { line: usize },
    #[error("narinfo has no {0}")]
    Missing(&'static str),
    #[error("narinfo has {0} more than once")]
    Duplicate(&'static str),
    #[error("narinfo {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl ToString) -> NarInfoError {
    NarInfoError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

/// What Nix writes as the deriver of a path whose deriver it does not know (older versions).
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// The static name of a checked field.
fn key_name(key: &str) -> &'static str {
    match key {
        "URL" => "URL",
        "Compression" => "Compression",
        "System" => "System",
        "Sig" => "Sig",
        _ => "CA",
    }
}

/// Sets a single-valued field, refusing a second occurrence.
fn once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), NarInfoError> {
    if slot.replace(value).is_some() {
        return Err(NarInfoError::Duplicate(field));
    }
    Ok(())
}

fn store_path(field: &'static str, value: &str) -> Result<StorePath, NarInfoError> {
    StorePath::parse(value).map_err(|e: StorePathError| invalid(field, e))
}

fn basename(field: &'static str, value: &str) -> Result<StorePath, NarInfoError> {
    StorePath::from_basename(value).map_err(|e: StorePathError| invalid(field, e))
}

fn hash(field: &'static str, value: &str) -> Result<Hash, NarInfoError> {
    Hash::parse(value).map_err(|e: HashError| invalid(field, e))
}

fn size(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    value
        .parse()
        .map_err(|_| invalid(field, format!("'{value}' is not a byte count")))
}

/// The hash algorithms a content address may name, with their digest lengths in bytes.
const CA_ALGOS: [(&str, usize); 4] = [("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)];

/// Checks a content address as Nix writes it in a narinfo's `CA:` field: `fixed:<algo>:<digest>` (flat
/// file), `fixed:r:<algo>:<digest>` (recursive NAR hash), or `text:sha256:<digest>`; `algo` is md5, sha1,
/// sha256 or sha512 and the digest is base16, nix32 or base64 of that algorithm's length.
pub fn check_content_address(ca: &str) -> Result<(), String> {
    let refuse = |why: &str| format!("'{}' is not a content address: {why}", ca.escape_default());
    let (algo, digest) = if let Some(rest) = ca.strip_prefix("text:") {
        let digest = rest
            .strip_prefix("sha256:")
            .ok_or_else(|| refuse("a text content address is 'text:sha256:<hash>'"))?;
        ("sha256", digest)
    } else if let Some(rest) = ca.strip_prefix("fixed:") {
        let rest = rest.strip_prefix("r:").unwrap_or(rest);
        rest.split_once(':')
            .ok_or_else(|| refuse("expected 'fixed:[r:]<algo>:<hash>'"))?
    } else {
        return Err(refuse("expected 'fixed:[r:]<algo>:<hash>' or 'text:sha256:<hash>'"));
    };
    let len = CA_ALGOS
        .iter()
        .find(|(name, _)| *name == algo)
        .map(|(_, len)| *len)
        .ok_or_else(|| refuse("the hash algorithm is none of md5, sha1, sha256, sha512"))?;
    let valid = if digest.len() == len * 2 {
        digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    } else if digest.len() == super::nix32::encoded_len(len) {
        super::nix32::decode(digest).is_ok_and(|bytes| bytes.len() == len)
    } else if digest.len() == len.div_ceil(3) * 4 {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(digest)
            .is_ok_and(|bytes| bytes.len() == len)
    } else {
        false
    };
    if !valid {
        return Err(refuse(&format!(
            "the digest is not a base16, nix32 or base64 {algo} hash"
        )));
    }
    Ok(())
}

/// A free-text field (`URL`, `Compression`, `System`, `Sig`) must be one printable token: no spaces, no
/// control characters, at most 1 KiB.
fn token(field: &'static str, value: &str) -> Result<(), NarInfoError> {
    if value.len() > 1024 {
        return Err(invalid(field, "it is longer than 1024 bytes"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "it contains spaces or control characters"));
    }
    Ok(())
}

impl NarInfo {
    /// Parses a narinfo, validating every field it keeps: store paths, hashes, sizes, a content address of
    /// Nix's shape (see [`check_content_address`]) and one-token text fields, so nothing unchecked is ever
    /// signed or served.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(NarInfoError::Line { line: i + 1 })?;
            let value = value.trim();
            if matches!(key, "URL" | "Compression" | "System" | "Sig" | "CA") {
                token(key_name(key), value)?;
            }
            match key {
                "StorePath" => once(&mut path, "StorePath", store_path("StorePath", value)?)?,
                "URL" if value.is_empty() => return Err(invalid("URL", "it is empty")),
                "URL" => once(&mut url, "URL", value.to_owned())?,
                "Compression" => once(&mut compression, "Compression", value.to_owned())?,
                "FileHash" => once(&mut file_hash, "FileHash", hash("FileHash", value)?)?,
                "FileSize" => once(&mut file_size, "FileSize", size("FileSize", value)?)?,
                "NarHash" => once(&mut nar_hash, "NarHash", hash("NarHash", value)?)?,
                "NarSize" => once(&mut nar_size, "NarSize", size("NarSize", value)?)?,
                "References" => {
                    let refs = value
                        .split_whitespace()
                        .map(|r| basename("References", r))
                        .collect::<Result<_, _>>()?;
                    once(&mut references, "References", refs)?;
                }
                "Deriver" => {
                    let d = match value {
                        UNKNOWN_DERIVER => None,
                        v => Some(basename("Deriver", v)?),
                    };
                    once(&mut deriver, "Deriver", d)?;
                }
                "System" => once(&mut system, "System", value.to_owned())?,
                "Sig" if value.is_empty() => return Err(invalid("Sig", "it is empty")),
                "Sig" => sigs.push(value.to_owned()),
                "CA" if value.is_empty() => once(&mut ca, "CA", String::new())?,
                "CA" => {
                    check_content_address(value).map_err(|m| invalid("CA", m))?;
                    once(&mut ca, "CA", value.to_owned())?
                }
                _ => {}
            }
        }

        let store_path = path.ok_or(NarInfoError::Missing("StorePath"))?;
        let url = url.ok_or(NarInfoError::Missing("URL"))?;
        let nar_hash = nar_hash.ok_or(NarInfoError::Missing("NarHash"))?;
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            // Even an empty file's NAR is 112 bytes; Nix refuses this too.
            return Err(invalid("NarSize", "it is 0"));
        }
        Ok(Self {
            store_path,
            url,
            compression: compression
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references: references.unwrap_or_default(),
            deriver: deriver.flatten(),
            system: system.filter(|s| !s.is_empty()),
            sigs,
            ca: ca.filter(|c| !c.is_empty()),
        })
    }

    /// The narinfo text, as Nix writes it. String fields must be single lines.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "StorePath: {}", self.store_path)?;
        writeln!(out, "URL: {}", self.url)?;
        writeln!(out, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(out, "FileHash: {h}")?;
        }
        if let Some(s) = self.file_size {
            writeln!(out, "FileSize: {s}")?;
        }
        writeln!(out, "NarHash: {}", self.nar_hash)?;
        writeln!(out, "NarSize: {}", self.nar_size)?;
        // Nix writes this line even without references, with the space after the colon.
        out.push_str("References: ");
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(r.basename());
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            writeln!(out, "Deriver: {}", d.basename())?;
        }
        if let Some(s) = &self.system {
            writeln!(out, "System: {s}")?;
        }
        for sig in &self.sigs {
            writeln!(out, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(out, "CA: {ca}")?;
        }
        Ok(())
    }

    /// What the signatures cover: `1;<path>;<nar hash>;<nar size>;<references>`, the references as full
    /// paths, sorted and without duplicates (as Nix, whose reference set is ordered, computes it).
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<&StorePath> = self.references.iter().collect();
        refs.sort();
        refs.dedup();
        let refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        signing::fingerprint(
            &self.store_path.to_string(),
            &self.nar_hash.to_string(),
            self.nar_size,
            &refs,
        )
    }

    /// Adds `key`'s signature, replacing an earlier one by a key of the same name. Signatures stay sorted,
    /// as Nix keeps them.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(&self.fingerprint());
        self.sigs
            .retain(|s| s.split_once(':').map(|(name, _)| name) != Some(key.name()));
        self.sigs.push(sig);
        self.sigs.sort();
    }

    /// Whether one of the signatures is `key`'s, over this narinfo's fingerprint.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let fingerprint = self.fingerprint();
        self.sigs.iter().any(|s| key.verify(&fingerprint, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::hash::sha256_of;

    const TREE: &str = "\
StorePath: /nix/store/yyragabf5bwh4rcwh82ny1d6ql3s8q49-tree-1.0
URL: nar/06x881jwmmg6ym4xixpi9hnlfqql0j33h0rdhsq4330i7cv9i5ly.nar
Compression: none
FileHash: sha256:06x881jwmmg6ym4xixpi9hnlfqql0j33h0rdhsq4330i7cv9i5ly
FileSize: 3248
NarHash: sha256:06x881jwmmg6ym4xixpi9hnlfqql0j33h0rdhsq4330i7cv9i5ly
NarSize: 3248
References: yaaiprwiih6qszla0lwxjhq0bw9484n8-dep yyragabf5bwh4rcwh82ny1d6ql3s8q49-tree-1.0
Deriver: 7k1vizhj58r4izn39v8kcnapj0k438iv-tree-1.0.drv
Sig: test-cache-1:uOjILaBaALnwMH7bVpzEcyNLslSCcUIv0lhi9c82J8S8tUvxrmAr68Oxpp12DPIXRRYdRXB98UnOk9YS/75OCg==
";

    const MINIMAL: &str = "\
StorePath: /nix/store/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt
URL: nar/17yzganldmml3mb3jp19c5hdjdraqgn1vhpddl6zwg3xfqyf1kdx.nar.xz
NarHash: sha256:17yzganldmml3mb3jp19c5hdjdraqgn1vhpddl6zwg3xfqyf1kdx
NarSize: 128
";

    #[test]
    fn content_addresses_have_nix_shape() {
        let nix32 = "10v7madfbfzz4xjcc2dv6xlz0iz3dyvhklgm1mmphyc480nw9bz0";
        let hex = "ab".repeat(32);
        let good = [
            format!("text:sha256:{nix32}"),
            format!("fixed:sha256:{nix32}"),
            format!("fixed:r:sha256:{nix32}"),
            format!("fixed:r:sha256:{hex}"),
            format!("fixed:sha1:{}", "0".repeat(40)),
            format!("fixed:r:sha512:{}", "a".repeat(128)),
            format!("fixed:md5:{}", "A".repeat(22) + "=="),
        ];
        for ca in &good {
            assert_eq!(check_content_address(ca), Ok(()), "{ca}");
        }
        let bad = [
            "x".to_owned(),
            format!("text:sha1:{}", "0".repeat(40)),
            format!("fixed:r:blake3:{nix32}"),
            format!("fixed:r:r:sha256:{nix32}"),
            format!("fixed:sha256:{}", &nix32[1..]),
            format!("fixed:sha256:{}e", &nix32[1..]),
            "fixed:sha256:".to_owned(),
            format!("fixed:sha256:{}", "g".repeat(64)),
            format!("FIXED:sha256:{nix32}"),
            format!("fixed:sha256:{nix32} trailing"),
        ];
        for ca in &bad {
            assert!(check_content_address(ca).is_err(), "{ca}");
        }
    }

    #[test]
    fn refuses_invalid_fields_before_anything_signs_them() {
        for (line, field) in [
            ("CA: fixed:sha256:nonsense", "CA"),
            (
                "CA: text:sha256:10v7madfbfzz4xjcc2dv6xlz0iz3dyvhklgm1mmphyc480nw9bz0 extra",
                "CA",
            ),
            ("System: x86_64-linux\u{0}", "System"),
            ("System: x86 64", "System"),
            ("Compression: xz\u{7f}", "Compression"),
            ("Sig: a:b c", "Sig"),
        ] {
            let text = format!("{MINIMAL}{line}\n");
            match NarInfo::parse(&text) {
                Err(NarInfoError::Invalid { field: f, .. }) => assert_eq!(f, field, "{line:?}"),
                other => panic!("{line:?}: {other:?}"),
            }
        }
        let url = MINIMAL.replace(".nar.xz", ".nar.xz\u{1}");
        assert!(matches!(
            NarInfo::parse(&url),
            Err(NarInfoError::Invalid { field: "URL", .. })
        ));
    }

    #[test]
    fn parses_and_renders_what_nix_writes() {
        let info = NarInfo::parse(TREE).unwrap();
        assert_eq!(info.store_path.name(), "tree-1.0");
        assert_eq!(info.url, "nar/06x881jwmmg6ym4xixpi9hnlfqql0j33h0rdhsq4330i7cv9i5ly.nar");
        assert_eq!(info.compression, "none");
        assert_eq!(info.file_hash, Some(info.nar_hash));
        assert_eq!((info.file_size, info.nar_size), (Some(3248), 3248));
        assert_eq!(info.references.len(), 2);
        assert_eq!(info.references[1], info.store_path, "self-reference");
        assert_eq!(info.deriver.as_ref().map(StorePath::name), Some("tree-1.0.drv"));
        assert_eq!(info.sigs.len(), 1);
        assert_eq!(info.render(), TREE);
    }

    #[test]
    fn renders_optional_fields_in_nix_order() {
        let mut info = NarInfo::parse(MINIMAL).unwrap();
        assert_eq!(info.compression, "bzip2", "Nix's default");
        assert!(info.render().contains("\nNarSize: 128\nReferences: \n"));
        info.system = Some("x86_64-linux".into());
        info.ca = Some("text:sha256:10v7madfbfzz4xjcc2dv6xlz0iz3dyvhklgm1mmphyc480nw9bz0".into());
        info.deriver = Some(StorePath::from_basename("7k1vizhj58r4izn39v8kcnapj0k438iv-text.txt.drv").unwrap());
        info.sigs = vec!["a:x".into(), "b:y".into()];
        let keys: Vec<String> = info
            .render()
            .lines()
            .map(|l| l.split_once(':').unwrap().0.to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "StorePath",
                "URL",
                "Compression",
                "NarHash",
                "NarSize",
                "References",
                "Deriver",
                "System",
                "Sig",
                "Sig",
                "CA"
            ]
        );
    }

    #[test]
    fn tolerates_what_nix_tolerates() {
        let variants = [
            format!("{TREE}Unknown: whatever\nAnother: 1\n"),
            format!("Future: first\n{TREE}"),
            TREE.replace('\n', "\r\n"),
            TREE.trim_end().to_owned(),
            format!("{TREE}\n\n"),
        ];
        let expected = NarInfo::parse(TREE).unwrap();
        for text in variants {
            assert_eq!(NarInfo::parse(&text).unwrap(), expected, "{text:?}");
        }
        let unknown = MINIMAL.to_owned() + "Deriver: unknown-deriver\n";
        assert_eq!(NarInfo::parse(&unknown).unwrap().deriver, None);
        let blake3 = MINIMAL.replace("NarHash: sha256:", "NarHash: blake3:");
        assert_eq!(
            NarInfo::parse(&blake3).unwrap().nar_hash.algo,
            crate::nix::hash::HashAlgo::Blake3
        );
        let sri = MINIMAL.replace(
            "sha256:17yzganldmml3mb3jp19c5hdjdraqgn1vhpddl6zwg3xfqyf1kdx",
            "sha256-vc3gPHZ9PP4Nbe3CHezDKjfZYGEpXDlWHbTWRq16358=",
        );
        assert_eq!(NarInfo::parse(&sri).unwrap(), NarInfo::parse(MINIMAL).unwrap());
    }

    #[test]
    fn refuses_broken_narinfos() {
        let drop = |key: &str| {
            MINIMAL
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let swap = |from: &str, to: &str| MINIMAL.replace(from, to);
        let cases: Vec<(String, NarInfoError)> = vec![
            (drop("StorePath"), NarInfoError::Missing("StorePath")),
            (drop("URL"), NarInfoError::Missing("URL")),
            (drop("NarHash"), NarInfoError::Missing("NarHash")),
            (drop("NarSize"), NarInfoError::Missing("NarSize")),
            (String::new(), NarInfoError::Missing("StorePath")),
            (format!("{MINIMAL}no colon here\n"), NarInfoError::Line { line: 5 }),
            (format!("{MINIMAL}NarSize: 128\n"), NarInfoError::Duplicate("NarSize")),
            (
                format!("{MINIMAL}StorePath: /nix/store/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt\n"),
                NarInfoError::Duplicate("StorePath"),
            ),
            (swap("NarSize: 128", "NarSize: 0"), invalid("NarSize", "it is 0")),
            (
                swap("NarSize: 128", "NarSize: -1"),
                invalid("NarSize", "'-1' is not a byte count"),
            ),
            (
                swap("NarSize: 128", "NarSize: 12 8"),
                invalid("NarSize", "'12 8' is not a byte count"),
            ),
            (
                format!("{MINIMAL}FileSize: big\n"),
                invalid("FileSize", "'big' is not a byte count"),
            ),
            (
                swap(
                    "URL: nar/17yzganldmml3mb3jp19c5hdjdraqgn1vhpddl6zwg3xfqyf1kdx.nar.xz",
                    "URL: ",
                ),
                invalid("URL", "it is empty"),
            ),
            (
                swap("NarHash: sha256:", "NarHash: md5:"),
                invalid("NarHash", HashError::UnknownAlgo("md5".into())),
            ),
            (
                format!("{MINIMAL}FileHash: sha256:abc\n"),
                invalid(
                    "FileHash",
                    HashError::Length {
                        algo: crate::nix::hash::HashAlgo::Sha256,
                        len: 3,
                    },
                ),
            ),
            (
                swap("/nix/store/33q5", "/tmp/33q5"),
                invalid(
                    "StorePath",
                    StorePathError::NotInStore("/tmp/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt".into()),
                ),
            ),
            (
                format!("{MINIMAL}References: /nix/store/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt\n"),
                invalid(
                    "References",
                    StorePathError::Shape("/nix/store/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt".into()),
                ),
            ),
            (
                format!("{MINIMAL}Deriver: x.drv\n"),
                invalid("Deriver", StorePathError::Shape("x.drv".into())),
            ),
            (
                format!("{MINIMAL}Deriver: \n"),
                invalid("Deriver", StorePathError::Shape(String::new())),
            ),
            (format!("{MINIMAL}Sig: \n"), invalid("Sig", "it is empty")),
        ];
        for (text, err) in cases {
            let got = NarInfo::parse(&text).unwrap_err();
            assert_eq!(got, err, "{text:?}");
            assert!(!got.to_string().is_empty());
        }
        assert_eq!(
            invalid("NarSize", "it is 0").to_string(),
            "narinfo NarSize: it is 0",
            "messages name the field"
        );
    }

    #[test]
    fn fingerprint_sorts_references() {
        let mut info = NarInfo::parse(TREE).unwrap();
        let expected = "1;/nix/store/yyragabf5bwh4rcwh82ny1d6ql3s8q49-tree-1.0;\
            sha256:06x881jwmmg6ym4xixpi9hnlfqql0j33h0rdhsq4330i7cv9i5ly;3248;\
            /nix/store/yaaiprwiih6qszla0lwxjhq0bw9484n8-dep,/nix/store/yyragabf5bwh4rcwh82ny1d6ql3s8q49-tree-1.0";
        assert_eq!(info.fingerprint(), expected);
        info.references.reverse();
        info.references.push(info.references[0].clone());
        assert_eq!(info.fingerprint(), expected, "order and duplicates do not matter");
        assert_eq!(
            NarInfo::parse(MINIMAL).unwrap().fingerprint(),
            "1;/nix/store/33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg-text.txt;sha256:17yzganldmml3mb3jp19c5hdjdraqgn1vhpddl6zwg3xfqyf1kdx;128;"
        );
    }

    #[test]
    fn signs_and_verifies() {
        let key = SecretKey::generate("cache.example.com-1").unwrap();
        let other = SecretKey::generate("other").unwrap();
        let mut info = NarInfo::parse(MINIMAL).unwrap();
        assert!(!info.verify(&key.public()));
        info.sign(&key);
        info.sign(&other);
        info.sign(&key);
        assert_eq!(info.sigs.len(), 2, "re-signing replaces the key's signature");
        assert!(info.sigs[0].starts_with("cache.example.com-1:") && info.sigs[1].starts_with("other:"));
        assert!(info.verify(&key.public()) && info.verify(&other.public()));
        let parsed = NarInfo::parse(&info.render()).unwrap();
        assert!(parsed.verify(&key.public()));

        let mut tampered = parsed.clone();
        tampered.nar_hash = sha256_of(b"something else");
        assert!(!tampered.verify(&key.public()));
        let mut tampered = parsed.clone();
        tampered.references.push(tampered.store_path.clone());
        assert!(!tampered.verify(&key.public()));
        let mut tampered = parsed;
        tampered.nar_size += 1;
        assert!(!tampered.verify(&key.public()));
    }
}
