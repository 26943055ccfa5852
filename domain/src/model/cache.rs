use super::Timestamp;
use crate::{CacheId, Name, UserId};

/// A Nix binary cache served under `/cache/{name}/`, signed with its own key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cache {
    pub id: CacheId,
    pub name: Name,
    pub display_name: String,
    pub description: String,
    /// Public caches can be read without credentials.
    pub public: bool,
    /// `Priority:` in nix-cache-info (lower is preferred by Nix).
    pub priority: i32,
    /// Priority announced to clients on `localIps`; `None` announces `priority` to everyone.
    pub local_priority: Option<i32>,
    pub compression: Compression,
    /// The cache's ed25519 secret key (`name:base64`, as `nix key generate-secret` writes it), sealed with
    /// the crypt secret. Generated when the cache is created.
    pub signing_key: crate::crypt::Sealed,
    pub created_by: UserId,
    pub created_at: Timestamp,
    /// Declared in the server's declarative state: the API cannot change or delete it.
    pub managed: bool,
}

/// An organization's use of a cache. Reading a cache and writing it are different rights:
/// * a subscription made by the cache's owner is a **grant**: the org's members and jobs read the cache even
///   when it is private;
/// * a subscription made by anyone else (only possible while the cache is public) reads it only while it stays
///   public;
/// * at most one grant per organization is its **push cache**: where the org's jobs push. Only the cache's
///   owner can make it so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub org_id: crate::OrgId,
    pub cache_id: CacheId,
    /// Made by the cache's owner: members of the org read the cache even when it is private.
    pub granted: bool,
    /// The org's jobs push here (implies `granted`).
    pub push: bool,
}

/// A subscription with the cache it refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribedCache {
    pub cache: Cache,
    pub granted: bool,
    pub push: bool,
}

impl SubscribedCache {
    /// Whether the subscription lets the org read the cache now.
    pub fn readable(&self) -> bool {
        self.granted || self.cache.public
    }
}

/// A subscription with the organization it belongs to (what a cache's owner sees).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscriber {
    pub org: super::Org,
    pub granted: bool,
    pub push: bool,
}

/// How NARs are compressed when stored in a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Xz,
    None,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::None => "none",
        }
    }

    /// How a NAR file in this compression is named: `.nar.zst`, `.nar.xz`, `.nar`.
    pub fn nar_suffix(self) -> &'static str {
        match self {
            Self::Zstd => ".nar.zst",
            Self::Xz => ".nar.xz",
            Self::None => ".nar",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Zstd, Self::Xz, Self::None].into_iter().find(|c| c.as_str() == s)
    }
}

/// The priority a new cache gets when none is given (below cache.nixos.org's 40, so Gradient is tried first).
pub const DEFAULT_CACHE_PRIORITY: i32 = 30;

/// A store path held by a cache: what its narinfo says (the server signs it when serving).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedPath {
    pub cache_id: CacheId,
    /// The 32-character nix32 hash part of the store path; the narinfo is served as `<hash_part>.narinfo`.
    pub hash_part: String,
    /// Full store path, `/nix/store/<hash>-<name>`.
    pub store_path: String,
    /// Where the compressed NAR is served, relative to the cache: `nar/<filehash>.nar.zst`.
    pub url: String,
    pub compression: Compression,
    /// `sha256:<nix32>` of the compressed file.
    pub file_hash: String,
    pub file_size: u64,
    /// `sha256:<nix32>` of the uncompressed NAR.
    pub nar_hash: String,
    pub nar_size: u64,
    /// Basenames (`<hash>-<name>`) of the paths this one references, sorted.
    pub references: Vec<String>,
    /// Basename of the deriver, if known.
    pub deriver: Option<String>,
    pub system: Option<String>,
    /// Content address, for content-addressed paths.
    pub ca: Option<String>,
    pub created_at: Timestamp,
    /// When a client last fetched the path (recorded in batches); drives TTL garbage collection.
    pub last_fetched_at: Timestamp,
}

/// A compressed NAR file received by a cache, with what the server measured while receiving it. It becomes
/// reachable once a narinfo refers to its `url`; unreferenced files are collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarFile {
    pub cache_id: CacheId,
    /// `nar/<filehash>.nar[.zst|.xz]`, unique per cache.
    pub url: String,
    pub compression: Compression,
    pub file_hash: String,
    pub file_size: u64,
    pub nar_hash: String,
    pub nar_size: u64,
    pub created_at: Timestamp,
}
