//! Stopping and restarting: an evaluation aborted by a person or superseded by a push, and the failed builds
//! of an ended evaluation queued again.

use super::super::Caller;
use super::{Gradient, Result, ServiceError, build_job, hide_org};
use crate::model::{Build, Evaluation, JobKind, JobRecord};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{EvaluationId, OrgId, WorkerId};
use std::collections::{HashMap, HashSet};

/// How many times `stop_evaluation` reads an evaluation that keeps moving on before it gives up (each attempt
/// follows a step of its pipeline: there are few).
const STOP_ATTEMPTS: usize = 8;

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Aborts an evaluation (`abort_evaluation`): it ends Aborted, its queued builds that no other live
    /// evaluation needs end Aborted too, and the connected workers running its jobs are told to stop them.
    /// Answers the evaluation as it is now.
    pub async fn abort_evaluation(&self, caller: &Caller, id: EvaluationId) -> Result<Evaluation> {
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        let e = self.storage.evaluation(id).await?.ok_or_else(missing)?;
        let p = self.storage.project_by_id(e.project_id).await?.ok_or_else(missing)?;
        let o = self.storage.org(p.org_id).await?.ok_or_else(missing)?;
        self.org_requiring(caller, o.name.as_str(), Permission::AbortEvaluation)
            .await
            .map_err(|e| hide_org(e, missing))?;
        if e.status.is_terminal() {
            return Err(ServiceError::conflict(
                "already_finished",
                format!("the evaluation already ended ({})", e.status.as_str()),
            ));
        }
        let workers = self.workers_of(o.id);
        let stopped = self.stop_evaluation(e, o.id, &workers).await?;
        if stopped.status != EvaluationStatus::Aborted {
            return Err(ServiceError::conflict(
                "already_finished",
                format!("the evaluation already ended ({})", stopped.status.as_str()),
            ));
        }
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::EvaluationAborted,
            format!("evaluation {} of project '{}'", id.0, p.name),
            "",
        )
        .await?;
        Ok(stopped)
    }

    /// The connected workers proved for the organization: only they hear of its jobs (another tenant's
    /// connection under the same worker id must not learn their ids).
    fn workers_of(&self, org: OrgId) -> Vec<WorkerId> {
        self.fleet
            .connected()
            .into_iter()
            .filter(|w| w.orgs.contains(&org))
            .map(|w| w.id)
            .collect()
    }

    /// A closed (or merged) pull request: the project's running evaluations of it end Aborted, as by
    /// `abort_evaluation`, their jobs stopped on the workers. Answers the evaluations aborted.
    pub(crate) async fn close_pull_request(
        &self,
        project: &crate::model::Project,
        number: u64,
    ) -> Result<Vec<Evaluation>> {
        let mut stopped = Vec::new();
        for mut e in self.storage.evaluations(project.id, super::SUPERSEDE_WINDOW).await? {
            if e.status.is_terminal() || e.pull_request.as_ref().map(|pr| pr.number) != Some(number) {
                continue;
            }
            e.errors.push(crate::model::AttributeError {
                attribute: String::new(),
                message: format!("pull request #{number} was closed"),
            });
            let workers = self.workers_of(project.org_id);
            stopped.push(self.stop_evaluation(e, project.org_id, &workers).await?);
        }
        Ok(stopped)
    }

    /// Ends a live evaluation Aborted and stops what only it needs (see `abort_evaluation`), on `workers`. The
    /// status is written only over the one read; an evaluation that moved on meanwhile (dispatched, evaluated,
    /// its builds planned) is read again and aborted from where it is now, with the errors `e` carries that it
    /// does not; one that ended meanwhile is answered as it ended.
    pub(super) async fn stop_evaluation(
        &self,
        mut e: Evaluation,
        org: OrgId,
        workers: &[WorkerId],
    ) -> Result<Evaluation> {
        let id = e.id;
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        for _ in 0..STOP_ATTEMPTS {
            if e.status.is_terminal() {
                return Ok(e);
            }
            let from = e.status;
            let mut stopped = e.clone();
            if !stopped.move_to(EvaluationStatus::Aborted, self.clock.now()) {
                return Err(ServiceError::Internal(format!(
                    "an evaluation cannot go from {} to Aborted",
                    e.status.as_str()
                )));
            }
            if self.save_evaluation(from, &stopped).await? {
                self.abandon_builds(id, org, workers).await?;
                return Ok(stopped);
            }
            let now = self.storage.evaluation(id).await?.ok_or_else(missing)?;
            let added: Vec<_> = e.errors.into_iter().filter(|x| !now.errors.contains(x)).collect();
            e = now;
            e.errors.extend(added);
        }
        Err(ServiceError::Unavailable(format!(
            "evaluation {} kept changing while it was being aborted",
            id.0
        )))
    }

    /// Ends Aborted the unfinished builds only the (ended) evaluation needs, and its queued jobs; its jobs
    /// running on `workers` are stopped there. Without workers, builds already running go on: their outputs
    /// are still useful.
    pub(super) async fn abandon_builds(&self, id: EvaluationId, org: OrgId, workers: &[WorkerId]) -> Result<()> {
        let mut abandoned: HashSet<String> = HashSet::new();
        // Whether each other evaluation met is still live, read once however many builds it shares.
        let mut live: HashMap<EvaluationId, bool> = HashMap::new();
        for b in self.storage.builds_of_evaluation(id).await? {
            if b.status.is_terminal() || (workers.is_empty() && b.status == BuildStatus::Building) {
                continue;
            }
            let mut needed_elsewhere = false;
            for other in self.storage.evaluations_needing(org, &b.drv_path).await? {
                if other == id {
                    continue;
                }
                let is_live = match live.get(&other) {
                    Some(known) => *known,
                    None => {
                        let found = self
                            .storage
                            .evaluation(other)
                            .await?
                            .is_some_and(|x| !x.status.is_terminal());
                        live.insert(other, found);
                        found
                    }
                };
                if is_live {
                    needed_elsewhere = true;
                    break;
                }
            }
            if !needed_elsewhere {
                abandoned.insert(b.drv_path.clone());
            }
        }
        for job in self.storage.queued_jobs_of(org, super::ABORT_WINDOW).await? {
            if self.job_is_for(&job, id, &abandoned) {
                self.storage.cancel_queued_job(job.id).await?;
            }
        }
        let mut running = Vec::new();
        for w in workers {
            for job in self.storage.jobs_assigned_to(*w).await? {
                if job.org_id == org && self.job_is_for(&job, id, &abandoned) {
                    // Its token stops working now, not when its worker reports.
                    self.memo.revoke_job(job.id);
                    running.push((*w, job.id));
                }
            }
        }
        for drv in &abandoned {
            self.abort_build(org, drv, !workers.is_empty()).await?;
        }
        // Told only once the builds say Aborted: the worker's answer cannot come first and make them Failed.
        for (worker, job) in running {
            self.fleet.abort(worker, org, job);
        }
        Ok(())
    }

    /// Ends the organization's build of `drv` Aborted from whatever unfinished status it has (queued, or
    /// handed out by a dispatch round meanwhile, unless not `running` too): each try a compare-and-set on the
    /// status just read.
    async fn abort_build(&self, org: OrgId, drv: &str, running: bool) -> Result<()> {
        for _ in 0..STOP_ATTEMPTS {
            let Some(b) = self.storage.build(org, drv).await? else {
                return Ok(());
            };
            if b.status.is_terminal()
                || (!running && b.status == BuildStatus::Building)
                || self.move_build(org, drv, b.status, BuildStatus::Aborted).await?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    fn job_is_for(&self, job: &JobRecord, evaluation: EvaluationId, drvs: &HashSet<String>) -> bool {
        match &job.kind {
            JobKind::Evaluate { evaluation_id } => *evaluation_id == evaluation,
            JobKind::Build { derivation, .. } => drvs.contains(derivation),
        }
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Restarts the failed, aborted and dependency-failed builds of an evaluation that got as far as building
    /// (`abort_evaluation` covers stopping and restarting): they are queued again and the evaluation goes
    /// back to Building.
    pub async fn restart_evaluation(&self, caller: &Caller, id: EvaluationId) -> Result<Evaluation> {
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        let mut e = self.storage.evaluation(id).await?.ok_or_else(missing)?;
        let p = self.storage.project_by_id(e.project_id).await?.ok_or_else(missing)?;
        let o = self.storage.org(p.org_id).await?.ok_or_else(missing)?;
        self.org_requiring(caller, o.name.as_str(), Permission::AbortEvaluation)
            .await
            .map_err(|e| hide_org(e, missing))?;
        let builds = self.storage.builds_of_evaluation(id).await?;
        let again: Vec<&Build> = builds
            .iter()
            .filter(|b| b.status.is_terminal() && !b.status.provides_outputs())
            .collect();
        if again.is_empty() || !e.status.can_become(EvaluationStatus::Building) {
            return Err(ServiceError::conflict(
                "nothing_to_restart",
                "only an evaluation that ended with failed or aborted builds can be restarted",
            ));
        }
        let restarted = again.len();
        let now = self.clock.now();
        // Every build is Queued before any job is: a dispatch round in between must not find a restarted
        // build's input still Failed and fail it again.
        for b in &again {
            self.move_build(o.id, &b.drv_path, b.status, BuildStatus::Queued)
                .await?;
        }
        for b in again {
            let Some(d) = self.derivation(o.id, &b.drv_path).await? else {
                continue;
            };
            self.storage.enqueue_job(&build_job(o.id, &d, now)).await?;
        }
        let from = e.status;
        e.move_to(EvaluationStatus::Building, now);
        e.errors.retain(|x| !x.attribute.is_empty());
        self.save_evaluation(from, &e).await?;
        self.fleet.wake();
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::EvaluationRestarted,
            format!("evaluation {} of project '{}'", id.0, p.name),
            format!("{restarted} builds queued again"),
        )
        .await?;
        Ok(e)
    }
}
