//! The fleet port: its contract suite and an in-memory implementation.

pub mod contract;
pub mod memory;

pub use contract::{Delivered, FleetHarness};
pub use memory::MemoryFleet;
