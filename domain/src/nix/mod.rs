//! Nix's formats and protocols as pure code: nix32, store paths, hashes, narinfo, signatures, NAR, store
//! derivations.

pub mod derivation;
pub mod export;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nix32;
pub mod signing;
pub mod store_path;

pub use derivation::{Derivation, parse_derivation};
pub use export::{ExportError, ExportEvent, ExportReader, ExportedPath};
pub use hash::{Hash, HashAlgo, HashError, Sha256Hasher, sha256_of};
pub use nar::{NarError, NarErrorKind, NarReader, NarSummary};
pub use narinfo::{NarInfo, NarInfoError};
pub use signing::{KeyError, PublicKey, SecretKey};
pub use store_path::{StorePath, StorePathError};
