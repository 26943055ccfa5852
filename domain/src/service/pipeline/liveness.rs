//! Workers come and go: a worker's jobs follow it. The decisions are the scheduler's liveness rules
//! ([`scheduler::orphaned_jobs`], [`scheduler::jobs_to_requeue`]); what the jobs were doing says `Queued`
//! again (visible in the API and over SSE), and the dispatcher is woken for the freed work.

use super::{Gradient, Result};
use crate::model::{JobId, JobKind, JobRecord};
use crate::ports::{Clock, Storage};
use crate::scheduler::{self, QueueEntry};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{OrgId, WorkerId};
use std::collections::BTreeSet;

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// A worker's link was proved for `orgs`, holding `held` jobs from an earlier link. The jobs assigned to
    /// it that it no longer holds (it restarted) go back to the queue, and all of them when any belongs to an
    /// organization this link did not prove (they were handed to another link under the same worker id,
    /// which this one must not finish). Answers how many were requeued.
    pub async fn worker_connected(&self, worker: WorkerId, held: &[JobId], orgs: &BTreeSet<OrgId>) -> Result<u64> {
        let assigned = self.storage.jobs_assigned_to(worker).await?;
        let entries = queue_entries(&assigned);
        let requeue = if assigned.iter().any(|j| !orgs.contains(&j.org_id)) {
            scheduler::jobs_to_requeue(&entries, &[worker])
        } else {
            scheduler::orphaned_jobs(&entries, worker, held)
        };
        let n = self.requeue(worker, &assigned, &requeue).await?;
        if !assigned.iter().any(|j| !orgs.contains(&j.org_id)) {
            self.reclaim(worker, held, orgs).await?;
        }
        self.fleet.wake();
        Ok(n)
    }

    /// Gives back to a returning worker the held jobs that went back to the queue while it was away and that no
    /// other worker took ([`scheduler::reclaimable`]): assigned to it again (no new `assign`: it runs them, or
    /// its outbox holds their outcome), their builds or evaluations moving on as at dispatch. Answers how many.
    pub(super) async fn reclaim(&self, worker: WorkerId, held: &[JobId], orgs: &BTreeSet<OrgId>) -> Result<u64> {
        let mut records = Vec::new();
        for id in held {
            if let Some(r) = self.storage.job(*id).await?
                && orgs.contains(&r.org_id)
            {
                records.push(r);
            }
        }
        let now = self.clock.now();
        let mut n = 0;
        for id in scheduler::reclaimable(&records) {
            let Some(record) = records.iter().find(|r| r.id == id) else {
                continue;
            };
            if !self.storage.assign_job(id, worker, now).await? {
                continue;
            }
            n += 1;
            match &record.kind {
                JobKind::Build { derivation, .. } => {
                    self.move_build(record.org_id, derivation, BuildStatus::Queued, BuildStatus::Building)
                        .await?;
                    self.fleet.resumed(worker, record.org_id, id, Some(derivation));
                }
                JobKind::Evaluate { evaluation_id } => {
                    self.advance_evaluation(*evaluation_id, EvaluationStatus::Fetching)
                        .await?;
                    self.fleet.resumed(worker, record.org_id, id, None);
                }
            }
        }
        Ok(n)
    }

    /// A worker's link ended (closed, silent past `workerLostAfterSecs`, or gone before its job reached it):
    /// every job it held goes back to the queue (its token lives until another worker takes it, see
    /// `job_holds_token`), and its build or evaluation says `Queued`
    /// again (an evaluation already building waits for its builds as before). Answers how many were requeued.
    pub async fn worker_lost(&self, worker: WorkerId) -> Result<u64> {
        let assigned = self.storage.jobs_assigned_to(worker).await?;
        let requeue = scheduler::jobs_to_requeue(&queue_entries(&assigned), &[worker]);
        let n = self.requeue(worker, &assigned, &requeue).await?;
        self.fleet.wake();
        Ok(n)
    }

    /// Requeues `ids` (of the worker's `assigned` jobs). What the jobs were doing says Queued first, and only
    /// then do they go back to the queue: a job handed out again at once is moved to Building after this,
    /// never back to Queued by it. A build that ended meanwhile (aborted with its evaluation) stays ended and
    /// its job is dropped instead of run again.
    pub(super) async fn requeue(&self, worker: WorkerId, assigned: &[JobRecord], ids: &[JobId]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut dropped = Vec::new();
        for job in assigned.iter().filter(|j| ids.contains(&j.id)) {
            self.memo.forget_job(job.id);
            match &job.kind {
                JobKind::Build { derivation, .. } => {
                    let mut now = self.storage.build(job.org_id, derivation).await?.map(|b| b.status);
                    if now == Some(BuildStatus::Building)
                        && !self
                            .move_build(job.org_id, derivation, BuildStatus::Building, BuildStatus::Queued)
                            .await?
                    {
                        // It moved meanwhile (its worker's outcome, an abort landed): what it is now decides.
                        now = self.storage.build(job.org_id, derivation).await?.map(|b| b.status);
                    }
                    if now.is_some_and(BuildStatus::is_terminal) {
                        dropped.push(job.id);
                    }
                }
                // Only a fetch or an evaluation goes back (`Building` cannot become `Queued`).
                JobKind::Evaluate { evaluation_id } => {
                    self.advance_evaluation(*evaluation_id, EvaluationStatus::Queued)
                        .await?;
                }
            }
        }
        let requeued = self.storage.requeue_jobs(worker, ids).await?;
        for job in dropped {
            self.storage.cancel_queued_job(job).await?;
        }
        Ok(requeued)
    }
}

fn queue_entries(records: &[JobRecord]) -> Vec<QueueEntry> {
    records.iter().map(|r| QueueEntry::from_record(r, Vec::new())).collect()
}
