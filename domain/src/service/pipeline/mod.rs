//! The CI loop on the server's side: an evaluation is queued as a job; a worker evaluates it and reports
//! derivations; every derivation of the closure gets the organization's build (once, however many
//! evaluations need it) and a build job unless its outputs are already in one of the org's caches; jobs go
//! to workers as the scheduler decides; results move builds and evaluations through their state machines.
//!
//! One use case per file: `queue` (an evaluation is asked for), `dispatch` (jobs go to workers), `results`
//! (what workers report), `control` (abort and restart), `liveness` (workers come and go), `reconcile` (a
//! periodic pass that puts back on the way what nothing would move again). Each does its own
//! follow-up through the fleet port (wake the dispatcher, send or stop jobs), so the apps only translate.

mod control;
mod dispatch;
mod liveness;
mod queue;
mod readiness;
mod reconcile;
mod results;

pub use dispatch::{Dispatched, Stranded};
pub use readiness::InputProgress;
pub use reconcile::Reconciled;
pub use results::JobReport;

use super::{Gradient, Result, ServiceError};
use crate::model::{Derivation, Evaluation, JobId, JobKind, JobRecord, JobState};
use crate::ports::{Clock, Storage};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{EvaluationId, OrgId, WorkerId};

/// How many queued jobs one dispatch round looks at (oldest first); the rest wait for the next round.
const DISPATCH_WINDOW: u32 = 500;
/// How many of the organization's queued jobs an abort looks through for the ones of its evaluation.
const ABORT_WINDOW: u32 = 10_000;
/// How many running evaluations of a project a push supersedes at most.
const SUPERSEDE_WINDOW: u32 = 50;
/// How many evaluations of a project pruning looks at.
const PRUNE_WINDOW: u32 = 10_000;
/// How long dispatch rounds wait at most for an evaluation's builds being queued (see `Pins::queueing`).
const QUEUEING_HOLDS_DISPATCH: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// How long a worker may use the credential it got with a job.
const JOB_TOKEN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// What a report (results, progress, outcome) for a job not assigned to the reporting worker gets: nothing
/// changes, and the caller logs it. A worker is trusted only for its own jobs.
fn not_assigned(job: JobId, worker: WorkerId) -> ServiceError {
    ServiceError::Forbidden(format!("job {} is not assigned to worker {}", job.0, worker.0))
}

/// An organization looked up by id (from an evaluation or a build the caller named) and hidden from the
/// caller is answered as the thing the caller named being missing: its name was not the caller's to learn.
pub(super) fn hide_org(e: ServiceError, missing: impl Fn() -> ServiceError) -> ServiceError {
    match e {
        ServiceError::NotFound(_) => missing(),
        other => other,
    }
}

/// A build job of the organization for the derivation, queued now.
fn build_job(org: OrgId, d: &Derivation, now: crate::model::Timestamp) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        org_id: org,
        kind: JobKind::Build {
            derivation: d.drv_path.clone(),
            system: d.system.clone(),
            required_features: d.required_features.clone(),
        },
        state: JobState::Queued,
        created_at: now,
        attempts: 0,
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Moves the evaluation towards `to` (through the states a skipped report would have set, see
    /// [`Evaluation::advance_to`]) and saves it when it moved.
    /// Answers whether the evaluation is still live (not ended, not gone) once this is done.
    async fn advance_evaluation(&self, id: EvaluationId, to: EvaluationStatus) -> Result<bool> {
        let Some(mut e) = self.storage.evaluation(id).await? else {
            return Ok(false);
        };
        let from = e.status;
        if e.advance_to(to, self.clock.now()) && !self.save_evaluation(from, &e).await? {
            // Moved meanwhile: whether it is still live is what it is now.
            return Ok(self
                .storage
                .evaluation(id)
                .await?
                .is_some_and(|now| !now.status.is_terminal()));
        }
        Ok(!e.status.is_terminal())
    }

    /// The one way an evaluation's change is saved: stored if its status is still `from`, then its commit
    /// status and events follow. Answers whether it was saved.
    async fn save_evaluation(&self, from: EvaluationStatus, e: &Evaluation) -> Result<bool> {
        match self.storage.update_evaluation_if(from, e).await {
            Ok(true) => {}
            // Moved since it was read (aborted while its last build ended, …): that move stands, and was
            // followed by whoever made it.
            Ok(false) => return Ok(false),
            // Deleted since it was read (its project or organization deleted meanwhile): nothing to follow.
            Err(crate::ports::StorageError::NotFound) => return Ok(false),
            Err(err) => return Err(err.into()),
        }
        let mailed = if e.status.is_terminal() && !from.is_terminal() {
            let took = (e.updated_at - e.created_at).to_std().unwrap_or_default();
            self.observer.evaluation_ended(e.status, took);
            self.mail_health_change(e).await
        } else {
            Ok(())
        };
        // The commit status and events follow even when the mail could not be prepared.
        self.report_status_change(from, e).await?;
        mailed.map(|()| true)
    }

    /// Moves the organization's build of `drv` from `from` (the status the caller read and decided on) to `to`,
    /// when its state machine allows it and its status is still `from`: a move committed in between (an abort,
    /// a worker's report) is not overwritten, and is told to the observer as a lost move. Answers whether it
    /// moved.
    async fn move_build(&self, org: OrgId, drv: &str, from: BuildStatus, to: BuildStatus) -> Result<bool> {
        let Some(mut b) = self.storage.build(org, drv).await? else {
            return Ok(false);
        };
        if b.status != from {
            self.observer.build_move_lost(b.id, from, Some(b.status), to);
            return Ok(false);
        }
        if !b.move_to(to, self.clock.now()) {
            return Ok(false);
        }
        if self.storage.update_build_if(from, &b).await? {
            self.observe_build(&b);
            return Ok(true);
        }
        let now = self.storage.build(org, drv).await?.map(|b| b.status);
        self.observer.build_move_lost(b.id, from, now, to);
        Ok(false)
    }

    /// Moves the organization's builds of the listed `.drv` paths, each from the status the caller decided on
    /// to its status (`(path, from, to)`, in the order listed; a path listed twice moves twice, its second
    /// `from` being the first's `to`), where their state machine allows it and their status is still the one
    /// decided on: one read and one compare-and-set write for all (a build moved meanwhile keeps that move,
    /// told to the observer). Answers the status each listed build that exists has now, moved or not.
    async fn move_builds(
        &self,
        org: OrgId,
        moves: &[(String, BuildStatus, BuildStatus)],
    ) -> Result<std::collections::HashMap<String, BuildStatus>> {
        if moves.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let paths: Vec<String> = moves.iter().map(|(p, ..)| p.clone()).collect();
        let mut builds: std::collections::HashMap<String, crate::model::Build> = self
            .storage
            .builds(org, &paths)
            .await?
            .into_iter()
            .map(|b| (b.drv_path.clone(), b))
            .collect();
        let read: std::collections::HashMap<String, BuildStatus> =
            builds.iter().map(|(p, b)| (p.clone(), b.status)).collect();
        let now = self.clock.now();
        let mut moved = std::collections::BTreeSet::new();
        for (path, from, to) in moves {
            let Some(b) = builds.get_mut(path) else {
                continue;
            };
            if b.status != *from {
                self.observer.build_move_lost(b.id, *from, Some(b.status), *to);
            } else if b.move_to(*to, now) {
                moved.insert(path.as_str());
            }
        }
        let mut status: std::collections::HashMap<String, BuildStatus> = read.clone();
        let changed: Vec<(BuildStatus, crate::model::Build)> = moved
            .iter()
            .filter_map(|p| builds.remove(*p))
            .map(|b| (read[&b.drv_path], b))
            .collect();
        let found = self.storage.update_builds_if(&changed).await?;
        for ((from, b), found) in changed.iter().zip(found) {
            match found {
                crate::ports::storage::BuildSwap::Written => {
                    status.insert(b.drv_path.clone(), b.status);
                    self.observe_build(b);
                }
                crate::ports::storage::BuildSwap::Moved(actual) => {
                    status.insert(b.drv_path.clone(), actual);
                    self.observer.build_move_lost(b.id, *from, Some(actual), b.status);
                }
                crate::ports::storage::BuildSwap::Absent => {
                    status.remove(&b.drv_path);
                    self.observer.build_move_lost(b.id, *from, None, b.status);
                }
            }
        }
        Ok(status)
    }

    /// The organization's derivations of `drv_paths` that it stored, from memory where they were seen before
    /// and in one question to storage for the rest (see [`super::memo::DerivationMemo`]).
    async fn derivations_of(
        &self,
        org: OrgId,
        drv_paths: &[String],
    ) -> Result<std::collections::HashMap<String, std::sync::Arc<Derivation>>> {
        let mut found = std::collections::HashMap::new();
        let mut missing = Vec::new();
        for path in drv_paths {
            match self.derivations.get(org, path) {
                Some(d) => {
                    found.insert(path.clone(), d);
                }
                None => missing.push(path.clone()),
            }
        }
        if !missing.is_empty() {
            for d in self.storage.derivations(org, &missing).await? {
                found.insert(d.drv_path.clone(), self.derivations.remember(org, d));
            }
        }
        Ok(found)
    }

    /// Tells the observer about a build that just ended (it moved and was saved).
    fn observe_build(&self, b: &crate::model::Build) {
        if b.status.is_terminal() {
            let built_for = b.started_at().and_then(|s| (b.updated_at - s).to_std().ok());
            self.observer.build_ended(b.status, built_for);
        }
    }

    /// The organization's derivation, from memory when it was seen before (see
    /// [`super::memo::DerivationMemo`]).
    async fn derivation(&self, org: OrgId, drv_path: &str) -> Result<Option<std::sync::Arc<Derivation>>> {
        if let Some(d) = self.derivations.get(org, drv_path) {
            return Ok(Some(d));
        }
        Ok(self
            .storage
            .derivation(org, drv_path)
            .await?
            .map(|d| self.derivations.remember(org, d)))
    }

    /// Whether the job is still queued or running (not ended, and not gone with its evaluation).
    pub async fn job_is_active(&self, job: JobId) -> Result<bool> {
        Ok(self.storage.job(job).await?.is_some_and(|r| r.state.is_active()))
    }
}
