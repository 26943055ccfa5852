//! The heart of Gradient: the model (users, organizations, projects, caches, evaluations, builds, workers),
//! the rules and decisions over it (names, state machines, permissions, secrets), the port traits through which
//! it reaches the outside world, and the use-case services generic over those ports.
//!
//! Architecture invariant: this crate does no I/O. It never depends on sqlx, poem, tungstenite, lettre, s3,
//! reqwest, or tokio's net/fs features; `apps/server/tests` enforces that by reading `cargo metadata`.

pub mod actions;
pub mod auth;
pub mod changes;
pub mod codec;
pub mod crypt;
pub mod deploy_key;
pub mod forge;
pub mod github_app;
pub mod ids;
pub mod logs;
pub mod mail;
pub mod model;
pub mod names;
pub mod net;
pub mod nix;
pub mod permissions;
pub mod ports;
pub mod proto;
pub mod push;
pub mod reach;
pub mod schedule;
pub mod scheduler;
pub mod service;
pub mod state;
pub mod status;
pub mod wildcard;

pub use ids::*;
pub use names::{Email, Name, NameError};
