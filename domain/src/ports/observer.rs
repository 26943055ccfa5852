//! What the use cases tell an onlooker as things happen (the server's metrics): kinds and numbers only, never
//! a name. The default onlooker ignores everything; the domain never waits on it.

use crate::status::{BuildStatus, EvaluationStatus};
use std::time::Duration;

pub trait Observer: Send + Sync {
    /// An evaluation ended with `status`, `took` after it was created.
    fn evaluation_ended(&self, status: EvaluationStatus, took: Duration);
    /// A build ended with `status`; `built_for` is how long it was building, when it was.
    fn build_ended(&self, status: BuildStatus, built_for: Option<Duration>);
    /// A use case's move of a build to `to` lost a compare-and-set: the build was `expected` when the use case
    /// decided, and is `actual` now (`None`: gone, or not read again), so the move was not written (what moved it meanwhile
    /// stands). For the logs; nothing waits on it.
    fn build_move_lost(
        &self,
        build: crate::BuildId,
        expected: BuildStatus,
        actual: Option<BuildStatus>,
        to: BuildStatus,
    ) {
        let _ = (build, expected, actual, to);
    }
}

/// Nobody is watching.
pub struct Unobserved;

impl Observer for Unobserved {
    fn evaluation_ended(&self, _: EvaluationStatus, _: Duration) {}
    fn build_ended(&self, _: BuildStatus, _: Option<Duration>) {}
}
