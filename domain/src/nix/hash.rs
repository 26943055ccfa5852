//! Content hashes as Nix writes them: `sha256:<nix32>` in narinfo files, and also base16, base64 and SRI
//! (`sha256-<base64>`) when read. BLAKE3 hashes (`blake3:...`) are accepted on the read path so narinfos
//! written while BLAKE3 was Gradient's default keep resolving; SHA-256 is what Gradient writes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::Digest;
use std::fmt;
use std::str::FromStr;

use super::nix32;

/// The digest length of every algorithm Gradient accepts.
pub const HASH_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Sha256,
    Blake3,
}

impl HashAlgo {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Blake3 => "blake3",
        }
    }

    pub fn parse(name: &str) -> Result<Self, HashError> {
        match name {
            "sha256" => Ok(Self::Sha256),
            "blake3" => Ok(Self::Blake3),
            other => Err(HashError::UnknownAlgo(other.to_owned())),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a hash is '<algo>:<digest>' or '<algo>-<base64>'")]
    MissingAlgo,
    #[error("unsupported hash algorithm '{0}' (expected sha256 or blake3)")]
    UnknownAlgo(String),
    #[error("a {algo} digest of {len} characters is neither base16 (64), nix32 (52) nor base64 (44)")]
    Length { algo: HashAlgo, len: usize },
    #[error("invalid base16 digest")]
    Base16,
    #[error("invalid nix32 digest: {0}")]
    Nix32(#[from] nix32::Nix32Error),
    #[error("invalid base64 digest")]
    Base64,
}

/// A 32-byte digest and the algorithm that produced it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    pub algo: HashAlgo,
    pub bytes: [u8; HASH_LEN],
}

const BASE16_LEN: usize = HASH_LEN * 2;
const NIX32_LEN: usize = nix32::encoded_len(HASH_LEN);
const BASE64_LEN: usize = HASH_LEN.div_ceil(3) * 4;

impl Hash {
    pub fn new(algo: HashAlgo, bytes: [u8; HASH_LEN]) -> Self {
        Self { algo, bytes }
    }

    /// Parses `<algo>:<base16|nix32|base64>` (told apart by length, as Nix does) or SRI `<algo>-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let colon = s.find(':');
        let dash = s.find('-');
        match (colon, dash) {
            (Some(c), d) if d.is_none_or(|d| c < d) => {
                let algo = HashAlgo::parse(&s[..c])?;
                Self::parse_digest(algo, &s[c + 1..])
            }
            (_, Some(d)) => {
                let algo = HashAlgo::parse(&s[..d])?;
                Ok(Self {
                    algo,
                    bytes: decode_base64(&s[d + 1..])?,
                })
            }
            _ => Err(HashError::MissingAlgo),
        }
    }

    /// Parses a digest without its algorithm prefix, in base16, nix32 or base64 (told apart by length).
    pub fn parse_digest(algo: HashAlgo, digest: &str) -> Result<Self, HashError> {
        let bytes = match digest.len() {
            BASE16_LEN => {
                let mut bytes = [0u8; HASH_LEN];
                hex::decode_to_slice(digest, &mut bytes).map_err(|_| HashError::Base16)?;
                bytes
            }
            NIX32_LEN => nix32::decode_array(digest)?,
            BASE64_LEN => decode_base64(digest)?,
            len => return Err(HashError::Length { algo, len }),
        };
        Ok(Self { algo, bytes })
    }

    /// The digest in nix32, without the algorithm.
    pub fn to_nix32(&self) -> String {
        nix32::encode(&self.bytes)
    }

    /// `<algo>:<base16>`.
    pub fn to_base16(&self) -> String {
        format!("{}:{}", self.algo, hex::encode(self.bytes))
    }

    /// `<algo>-<base64>`, as in Subresource Integrity and `nix hash --sri`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, STANDARD.encode(self.bytes))
    }
}

fn decode_base64(s: &str) -> Result<[u8; HASH_LEN], HashError> {
    if s.len() != BASE64_LEN {
        return Err(HashError::Base64);
    }
    let bytes = STANDARD.decode(s).map_err(|_| HashError::Base64)?;
    bytes.try_into().map_err(|_| HashError::Base64)
}

/// `<algo>:<nix32>`, as narinfo files and signature fingerprints write it.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The SHA-256 hash of `data`.
pub fn sha256_of(data: &[u8]) -> Hash {
    Hash {
        algo: HashAlgo::Sha256,
        bytes: sha2::Sha256::digest(data).into(),
    }
}

/// SHA-256 over data that arrives in pieces.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    inner: sha2::Sha256,
    len: u64,
}

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// How many bytes went in so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> Hash {
        Hash {
            algo: HashAlgo::Sha256,
            bytes: self.inner.finalize().into(),
        }
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hasher({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("") in each of Nix's notations.
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn parses_every_notation() {
        let empty = sha256_of(b"");
        let b3 = Hash::new(HashAlgo::Blake3, empty.bytes);
        let cases: Vec<(String, Hash)> = vec![
            (format!("sha256:{EMPTY_NIX32}"), empty),
            (format!("sha256:{EMPTY_HEX}"), empty),
            (format!("sha256:{}", EMPTY_HEX.to_uppercase()), empty),
            (format!("sha256-{EMPTY_B64}"), empty),
            (format!("sha256:{EMPTY_B64}"), empty),
            (format!("blake3:{EMPTY_NIX32}"), b3),
            (format!("blake3:{EMPTY_HEX}"), b3),
            (format!("blake3-{EMPTY_B64}"), b3),
        ];
        for (text, hash) in cases {
            assert_eq!(Hash::parse(&text).unwrap(), hash, "{text}");
            assert_eq!(text.parse::<Hash>().unwrap(), hash, "{text}");
        }
    }

    #[test]
    fn refuses_bad_hashes() {
        let cases: Vec<(String, HashError)> = vec![
            (EMPTY_NIX32.to_owned(), HashError::MissingAlgo),
            (format!("md5:{EMPTY_HEX}"), HashError::UnknownAlgo("md5".into())),
            (format!("SHA256:{EMPTY_HEX}"), HashError::UnknownAlgo("SHA256".into())),
            (format!("sha512-{EMPTY_B64}"), HashError::UnknownAlgo("sha512".into())),
            (
                "sha256:".to_owned(),
                HashError::Length {
                    algo: HashAlgo::Sha256,
                    len: 0,
                },
            ),
            (
                format!("sha256:{EMPTY_HEX}0"),
                HashError::Length {
                    algo: HashAlgo::Sha256,
                    len: 65,
                },
            ),
            (format!("sha256:{}", EMPTY_HEX.replace('e', "g")), HashError::Base16),
            (
                format!("sha256:{}", EMPTY_NIX32.replace('c', "e")),
                nix32::Nix32Error::InvalidChar('e').into(),
            ),
            (
                format!("sha256:2{}", &EMPTY_NIX32[1..]),
                nix32::Nix32Error::NonCanonical.into(),
            ),
            (format!("sha256:{}", EMPTY_B64.replace('=', "A")), HashError::Base64),
            (format!("sha256-{}", &EMPTY_B64[..43]), HashError::Base64),
            ("sha256-".to_owned(), HashError::Base64),
        ];
        for (text, err) in cases {
            assert_eq!(Hash::parse(&text).unwrap_err(), err, "{text}");
        }
    }

    #[test]
    fn renders_every_notation() {
        let h = sha256_of(b"");
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_nix32(), EMPTY_NIX32);
        assert_eq!(h.to_base16(), format!("sha256:{EMPTY_HEX}"));
        assert_eq!(h.to_sri(), format!("sha256-{EMPTY_B64}"));
        let b3 = Hash::new(HashAlgo::Blake3, h.bytes);
        assert_eq!(b3.to_string(), format!("blake3:{EMPTY_NIX32}"));
        assert_eq!(format!("{h:?}"), format!("Hash(sha256:{EMPTY_NIX32})"));
    }

    #[test]
    fn streaming_matches_one_shot() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 64, 4096, 10_000] {
            let mut hasher = Sha256Hasher::new();
            data.chunks(chunk).for_each(|c| hasher.update(c));
            assert_eq!(hasher.len(), 10_000);
            assert_eq!(hasher.finish(), sha256_of(&data), "chunks of {chunk}");
        }
        assert!(Sha256Hasher::new().is_empty());
    }

    #[test]
    fn serde_uses_the_nix32_text() {
        let h = sha256_of(b"");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"sha256:{EMPTY_NIX32}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
        assert_eq!(
            serde_json::from_str::<Hash>(&format!("\"sha256-{EMPTY_B64}\"")).unwrap(),
            h
        );
        assert!(serde_json::from_str::<Hash>("\"sha256:nope\"").is_err());
    }
}
