//! The traits through which the domain reaches the outside world. Each has a contract suite in the
//! `gradient-ports` crate that every adapter must pass.

pub mod cache_client;
pub mod clock;
pub mod fleet;
pub mod forge;
pub mod git;
pub mod mail;
pub mod nar_store;
pub mod nix;
pub mod observer;
pub mod storage;
pub mod webhook;

pub use cache_client::CacheClient;
pub use clock::Clock;
pub use fleet::Fleet;
pub use mail::{Mail, MailError, Mailer};
pub use observer::Observer;
pub use storage::{Storage, StorageError};
pub use webhook::{Outgoing, OutgoingError, WebhookSender};
