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
    /// A job a dispatch round assigned to `worker` but did not hand out (withheld: what it was for moved during
    /// the round; or the round failed before sending it) could be neither ended nor put back in the queue:
    /// storage failed. It stays assigned to a worker that never heard of it, holding one of its slots, until a
    /// later dispatch round ends it (each round tries first), or the worker reconnects or is lost (its jobs go
    /// back to the queue then). For the logs.
    fn job_stranded(&self, job: crate::model::JobId, worker: crate::WorkerId) {
        let _ = (job, worker);
    }
    /// A worker's report ended these build `jobs`, but giving a job again to those of their builds restarted
    /// while they ran failed (`code`: the error's stable code, e.g. `unavailable`). The report stays recorded
    /// (it is not to be sent again); such a build says Queued with no job until reconciliation queues one
    /// (while an evaluation needing it is among its project's newest that have not ended) or the next
    /// evaluation needing it is planned. For the logs.
    fn queue_again_failed(&self, jobs: &[crate::model::JobId], code: &'static str) {
        let _ = (jobs, code);
    }
}

/// Nobody is watching.
pub struct Unobserved;

impl Observer for Unobserved {
    fn evaluation_ended(&self, _: EvaluationStatus, _: Duration) {}
    fn build_ended(&self, _: BuildStatus, _: Option<Duration>) {}
}
