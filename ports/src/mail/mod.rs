//! The mail port: its contract suite and an in-memory outbox.

pub mod contract;
pub mod memory;

pub use contract::Mailbox;
pub use memory::MemoryMailer;
