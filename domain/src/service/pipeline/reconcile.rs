//! Reconciliation: a periodic look for work that nothing will ever move again. A report lost while the
//! database was down, a link that ended while the server could not requeue its jobs, a server stopped between
//! two writes: each can leave an evaluation waiting for a job that no longer exists, or a build `Building` on a
//! worker that no longer holds it. This pass finds them from the evaluations that have not ended and puts them
//! back on the way (the scheduler's liveness rules decide about workers, [`scheduler::assignment_is_stale`]).

use super::{Gradient, Result, build_job};
use crate::model::{Evaluation, JobId, JobKind, JobRecord, JobState};
use crate::ports::{Clock, Storage};
use crate::scheduler;
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{OrgId, WorkerId};
use std::collections::BTreeSet;

/// How many of each active project's newest evaluations one pass looks at.
const RECONCILE_WINDOW: u32 = 50;

/// What a reconciliation pass changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Jobs queued anew for an evaluation or a build that had none.
    pub jobs_queued: u64,
    /// Builds or evaluations that said `Building`/`Fetching`/`Evaluating` while their job was back in the queue:
    /// they say `Queued` again.
    pub statuses_corrected: u64,
    /// Jobs taken back from workers that are not connected (and were not for longer than `lost_after`).
    pub jobs_requeued: u64,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// One reconciliation pass over the evaluations of active projects that have not ended (the newest
    /// [`RECONCILE_WINDOW`] of each) and were not changed for `lost_after`:
    /// - an evaluation still to be evaluated without an active job gets one (and says `Queued`);
    /// - each of a building evaluation's unfinished builds without an active job gets one (and says `Queued`);
    ///   one that says `Building` while its job waits in the queue says `Queued`;
    /// - a job assigned to a worker not connected for longer than `lost_after` goes back to the queue, as if
    ///   its link had just been lost ([`Self::worker_lost`]);
    /// - an evaluation whose builds have all ended is settled.
    ///
    /// Safe to run at any time and as often as wanted: each step is what the normal flow would have done.
    pub async fn reconcile(&self, lost_after: chrono::TimeDelta) -> Result<Reconciled> {
        let now = self.clock.now();
        let connected: Vec<WorkerId> = self.fleet.connected().iter().map(|w| w.id).collect();
        let mut done = Reconciled::default();
        let mut stale: BTreeSet<WorkerId> = BTreeSet::new();
        for project in self.storage.active_projects().await? {
            for e in self.storage.evaluations(project.id, RECONCILE_WINDOW).await? {
                if e.status.is_terminal() || now - e.updated_at <= lost_after {
                    continue;
                }
                let mut note = |job: &JobRecord| {
                    if let JobState::Assigned { worker, since } = job.state
                        && scheduler::assignment_is_stale(worker, since, &connected, now, lost_after)
                    {
                        stale.insert(worker);
                    }
                };
                match e.status {
                    EvaluationStatus::Queued | EvaluationStatus::Fetching | EvaluationStatus::Evaluating => {
                        let job = evaluate_job(project.org_id, &e);
                        let active = self.storage.enqueue_job(&job).await?;
                        note(&active);
                        if active.id == job.id {
                            // The evaluation may have moved on between reading it and queueing (its worker's
                            // report arrived): then the new job goes again, before anyone takes it.
                            if !self
                                .storage
                                .evaluation(e.id)
                                .await?
                                .is_some_and(|now| now.status == e.status)
                            {
                                self.storage.cancel_queued_job(job.id).await?;
                                continue;
                            }
                            done.jobs_queued += 1;
                        }
                        if active.state == JobState::Queued && e.status != EvaluationStatus::Queued {
                            self.advance_evaluation(e.id, EvaluationStatus::Queued).await?;
                            done.statuses_corrected += 1;
                        }
                    }
                    EvaluationStatus::Building => {
                        // Its `.drv` files are still being pushed by its worker: its builds wait for that.
                        if self.pins.holds(e.id) {
                            continue;
                        }
                        for b in self.storage.builds_of_evaluation(e.id).await? {
                            if !matches!(b.status, BuildStatus::Queued | BuildStatus::Building) {
                                continue;
                            }
                            let Some(d) = self.derivation(b.org_id, &b.drv_path).await? else {
                                continue;
                            };
                            let job = build_job(b.org_id, &d, now);
                            let active = self.storage.enqueue_job(&job).await?;
                            note(&active);
                            if active.id == job.id {
                                // The build may have ended between reading it and queueing (its worker's
                                // report arrived): then the new job goes again, before anyone takes it.
                                let still = self.storage.build(b.org_id, &b.drv_path).await?.is_some_and(|now| {
                                    matches!(now.status, BuildStatus::Queued | BuildStatus::Building)
                                });
                                if !still {
                                    self.storage.cancel_queued_job(job.id).await?;
                                    continue;
                                }
                                done.jobs_queued += 1;
                            }
                            // Read again just before: a dispatch round may have handed the job out since, moving
                            // the build Queued -> Building again, which a move on the status alone would undo. One
                            // that does so between this read and the move is seen after it: the build is moved
                            // back to Building (from Queued only: an abort since stands) while its job is assigned.
                            let queued = |j: Option<JobRecord>| j.is_some_and(|j| j.state == JobState::Queued);
                            if active.state == JobState::Queued
                                && b.status == BuildStatus::Building
                                && queued(self.storage.job(active.id).await?)
                                && self
                                    .move_build(b.org_id, &b.drv_path, BuildStatus::Building, BuildStatus::Queued)
                                    .await?
                            {
                                let job = self.storage.job(active.id).await?;
                                if job.is_some_and(|j| matches!(j.state, JobState::Assigned { .. })) {
                                    self.move_build(b.org_id, &b.drv_path, BuildStatus::Queued, BuildStatus::Building)
                                        .await?;
                                } else {
                                    done.statuses_corrected += 1;
                                }
                            }
                        }
                        self.settle_evaluation(e.id).await?;
                    }
                    _ => {}
                }
            }
        }
        for worker in stale {
            done.jobs_requeued += self.worker_lost(worker).await?;
        }
        if done.jobs_queued > 0 {
            self.fleet.wake();
        }
        Ok(done)
    }
}

/// The evaluation's job, queued now but keeping the evaluation's place in the queue.
fn evaluate_job(org: OrgId, e: &Evaluation) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        org_id: org,
        kind: JobKind::Evaluate { evaluation_id: e.id },
        state: JobState::Queued,
        created_at: e.created_at,
        attempts: 0,
    }
}
