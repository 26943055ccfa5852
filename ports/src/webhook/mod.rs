//! The outgoing webhook port: its contract and an in-memory sender.

pub mod contract;
mod memory;

pub use memory::MemoryWebhooks;
