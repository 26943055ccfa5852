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
    pub created_by: UserId,
    pub created_at: Timestamp,
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

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Zstd, Self::Xz, Self::None].into_iter().find(|c| c.as_str() == s)
    }
}

/// The priority a new cache gets when none is given (below cache.nixos.org's 40, so Gradient is tried first).
pub const DEFAULT_CACHE_PRIORITY: i32 = 30;
