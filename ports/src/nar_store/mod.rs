//! The NAR store port: its contract suite and an in-memory implementation.

pub mod contract;
pub mod memory;

pub use memory::MemoryNarStore;
