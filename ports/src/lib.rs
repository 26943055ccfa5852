//! Contract suites every adapter of a port must pass, and in-memory implementations.
//!
//! An adapter proves it implements a port by running the port's contract suite against itself from its own
//! tests (see [`storage_contract!`]); the in-memory implementations pass the same suites, so services can be
//! tested against them and trusted to behave like the real thing.

pub mod fleet;
pub mod mail;
pub mod nar_store;
pub mod storage;
pub mod webhook;
