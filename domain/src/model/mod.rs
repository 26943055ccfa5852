//! The things Gradient knows about. Plain data: the rules that govern them live in `permissions`, `status`
//! and the services.

mod action;
mod audit;
mod build;
mod cache;
mod evaluation;
mod forge;
mod mail;
mod org;
mod project;
mod queue;
mod user;
mod worker;

pub use action::*;
pub use audit::*;
pub use build::*;
pub use cache::*;
pub use evaluation::*;
pub use forge::*;
pub use mail::*;
pub use org::*;
pub use project::*;
pub use queue::*;
pub use user::*;
pub use worker::*;

/// Timestamps are kept at microsecond precision, the finest PostgreSQL stores, so a value reads back equal.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Truncates a timestamp to whole microseconds.
pub fn truncate_to_micros(t: Timestamp) -> Timestamp {
    use chrono::{DurationRound, TimeDelta};
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}
