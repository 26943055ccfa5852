//! Nix's formats and protocols as pure code: nix32, store paths, hashes, narinfo, signatures, NAR.

pub mod signing;
