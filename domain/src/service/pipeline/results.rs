//! What workers report about their jobs: an evaluation's derivations, progress, outcomes. A worker is
//! trusted only for its own jobs, on a link proved for the job's organization. Outcomes move builds and
//! evaluations, fail what depends on a failure, plan an evaluation's builds, and settle evaluations.

use super::{Gradient, Result, ServiceError, build_job, not_assigned};
use crate::model::{Build, Cache, Derivation, EntryPoint, JobId, JobKind, JobRecord, JobState, SubscribedCache};
use crate::ports::storage::Run;
use crate::ports::{Clock, Storage, StorageError};
use crate::proto::{self, JobOutcome};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{EvaluationId, OrgId, WorkerId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The hash part of a store path (`/nix/store/<hash>-name`).
fn hash_part(path: &str) -> &str {
    path.trim_start_matches("/nix/store/").get(..32).unwrap_or_default()
}

/// What a report for a job of an organization the reporting connection did not prove a registration in gets.
fn not_authorized(job: JobId, worker: WorkerId) -> ServiceError {
    ServiceError::Forbidden(format!(
        "job {} belongs to an organization worker {} did not prove a registration in on this link",
        job.0, worker.0
    ))
}

/// The derivations with each after those of its inputs that are among them (otherwise in the order given).
fn inputs_first(drvs: Vec<&std::sync::Arc<Derivation>>) -> Vec<&std::sync::Arc<Derivation>> {
    let index: HashMap<String, usize> = drvs.iter().enumerate().map(|(i, d)| (d.drv_path.clone(), i)).collect();
    let mut placed = vec![false; drvs.len()];
    let mut order = Vec::with_capacity(drvs.len());
    for start in 0..drvs.len() {
        // Depth first, inputs before the derivation, without recursion.
        let mut stack = vec![(start, false)];
        while let Some((i, inputs_done)) = stack.pop() {
            if placed[i] {
                continue;
            }
            if inputs_done {
                placed[i] = true;
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for input in &drvs[i].inputs {
                if let Some(&j) = index.get(input)
                    && !placed[j]
                {
                    stack.push((j, false));
                }
            }
        }
    }
    let mut slots: Vec<Option<&std::sync::Arc<Derivation>>> = drvs.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// What a batch of reports writes together (see [`Gradient::record_reports`]): the ended builds that succeeded
/// and their logs (one storage write), and the evaluations their ends may settle (each settled once).
#[derive(Default)]
struct BatchWrites {
    /// The builds (organization, derivation) that ended: the evaluations needing them are looked up once the
    /// batch's writes are done (an evaluation the batch itself records may need one).
    ended: Vec<(OrgId, String)>,
    /// Each with the status it was read in and moved from, and the run its report belongs to: written only if
    /// it is still that status and the job still that run.
    builds: Vec<(BuildStatus, Build, Option<Run>)>,
    logs: Vec<crate::model::BuildLog>,
}

/// One report of a batch a worker sent together (`proto::Report::is_reportable`), with the live log of the job a
/// `job_finished` ends (taken by the link).
#[derive(Debug)]
pub struct JobReport {
    pub message: proto::WorkerMessage,
    pub log: Option<crate::logs::LogBuffer>,
}

/// How many times an evaluation's attribute errors are read and written again when its status moved between.
const ERROR_WRITE_ATTEMPTS: usize = 8;

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Derivations and attribute errors reported by an evaluating worker.
    pub async fn record_eval_result(
        &self,
        job_id: JobId,
        worker: WorkerId,
        orgs: &BTreeSet<OrgId>,
        derivations: Vec<proto::EvaluatedDerivation>,
        errors: Vec<proto::AttributeError>,
    ) -> Result<()> {
        let JobRecord {
            org_id,
            kind: JobKind::Evaluate { evaluation_id },
            state: JobState::Assigned { worker: w, .. },
            ..
        } = self.check_report_scope(job_id, worker, orgs).await?
        else {
            return Err(not_assigned(job_id, worker));
        };
        if w != worker {
            return Err(not_assigned(job_id, worker));
        }
        self.advance_evaluation(evaluation_id, EvaluationStatus::Evaluating)
            .await?;
        let drvs: Vec<Derivation> = derivations
            .iter()
            .filter(|d| !d.system.is_empty())
            .map(|d| Derivation {
                drv_path: d.drv_path.clone(),
                system: d.system.clone(),
                required_features: d.required_features.clone(),
                outputs: d.outputs.clone(),
                inputs: d.input_drvs.clone(),
            })
            .collect();
        // Kept for this job's organization only: another organization's worker cannot decide what this one's
        // builds of the same paths need or show, nor this worker what theirs do.
        self.storage.put_derivations(org_id, &drvs).await?;
        // Read back as stored, in a few questions, for planning the builds and the dispatch rounds after.
        let paths: Vec<String> = drvs.iter().map(|d| d.drv_path.clone()).collect();
        self.derivations_of(org_id, &paths).await?;
        let entries: Vec<EntryPoint> = derivations
            .iter()
            .filter_map(|d| {
                d.attribute.as_ref().map(|a| EntryPoint {
                    evaluation_id,
                    attribute: a.clone(),
                    drv_path: d.drv_path.clone(),
                })
            })
            .collect();
        self.storage.add_entry_points(evaluation_id, &entries).await?;
        if !errors.is_empty() {
            let errors: Vec<crate::model::AttributeError> = errors
                .into_iter()
                .map(|x| crate::model::AttributeError {
                    attribute: x.attribute,
                    message: x.message,
                })
                .collect();
            // Written over the status read only: an abort committed meanwhile is not undone. Read again and
            // added to whatever it is now (a few steps of the pipeline at most).
            for _ in 0..ERROR_WRITE_ATTEMPTS {
                let Some(mut e) = self.storage.evaluation(evaluation_id).await? else {
                    break;
                };
                // A report sent again (its acknowledgement was lost with the link) adds nothing twice.
                let before = e.errors.len();
                for error in &errors {
                    if !e.errors.contains(error) {
                        e.errors.push(error.clone());
                    }
                }
                if e.errors.len() == before {
                    break;
                }
                e.updated_at = self.clock.now();
                if self.storage.update_evaluation_if(e.status, &e).await? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether a link that proved registrations in `orgs` may report on `job` at all: the job must belong to
    /// one of them. A worker id is chosen by whoever registers it, so two tenants may register the same id; the
    /// link's proved organizations, not the id, decide whose jobs it speaks for. Each `record_*` checks
    /// this first, and then that the job is assigned to the reporting worker.
    async fn check_report_scope(&self, job: JobId, worker: WorkerId, orgs: &BTreeSet<OrgId>) -> Result<JobRecord> {
        match self.storage.job(job).await? {
            Some(record) if orgs.contains(&record.org_id) => Ok(record),
            Some(_) => Err(not_authorized(job, worker)),
            None => Err(not_assigned(job, worker)),
        }
    }

    /// A worker finished a job (`outcome`, with what it printed): the job ends, its build or evaluation moves,
    /// what depends on a failure fails, evaluations settle, and the dispatcher is woken for the freed slot.
    pub async fn record_job_finished(
        &self,
        job_id: JobId,
        worker: WorkerId,
        orgs: &BTreeSet<OrgId>,
        outcome: JobOutcome,
        log: Option<crate::logs::LogBuffer>,
    ) -> Result<()> {
        // Its slot is free whatever the report is worth.
        self.fleet.job_ended(worker, job_id);
        self.fleet.wake();
        let success = matches!(outcome, JobOutcome::Success);
        let record = self.apply_finished(job_id, worker, orgs, outcome, log, None).await?;
        self.end_job(&record, worker, success).await?;
        // The report is recorded once its job ended (it is not to be sent again): a build restarted meanwhile
        // that this fails to queue again is told to the observer (see `queue_again_after_report`).
        self.queue_again_after_report(std::slice::from_ref(&record)).await;
        Ok(())
    }

    /// The effects of a `job_finished` (see [`Self::record_job_finished`]) but the job's end, after checking the
    /// job is the worker's; answers the job. With `batch`, a build that succeeded is written with the batch's
    /// others, and the evaluations a build's end may settle are collected there instead of settled now (a batch
    /// settles each once, see [`Self::record_reports`]).
    async fn apply_finished(
        &self,
        job_id: JobId,
        worker: WorkerId,
        orgs: &BTreeSet<OrgId>,
        outcome: JobOutcome,
        log: Option<crate::logs::LogBuffer>,
        batch: Option<&mut BatchWrites>,
    ) -> Result<JobRecord> {
        let record = self.check_report_scope(job_id, worker, orgs).await?;
        if !matches!(record.state, JobState::Assigned { worker: w, .. } if w == worker) {
            // Not this worker's job (any more: it was lost and the job went to another, or it ended, which is
            // also what a report sent again after it was recorded finds): nothing changes.
            return Err(not_assigned(job_id, worker));
        }
        // Every effect first, the job's end last: a report interrupted half-way (the database went away) is
        // applied again whole when it comes again, each effect being safe to repeat; once the job has ended, a
        // repeated report changes nothing.
        self.apply_outcome(&record, outcome, log, batch).await?;
        Ok(record)
    }

    /// Writes a batch's successful builds and their logs in one storage write; when that write fails for a
    /// reason of one build (its row is gone: its organization was deleted meanwhile), each is written on its
    /// own, so one organization's missing row does not cost another's builds their results. A build whose row
    /// is gone has nothing left to record. A build whose status moved since the batch read it (aborted,
    /// restarted meanwhile) keeps that move: the abort wins, the build is not observed ending (its log, what
    /// the worker printed, is kept).
    async fn end_builds(
        &self,
        builds: &[(BuildStatus, Build, Option<Run>)],
        logs: &[crate::model::BuildLog],
    ) -> Result<()> {
        let note = |from: BuildStatus, b: &Build, written: bool| self.observe_end(from, b, written);
        match self.storage.end_builds(builds, logs).await {
            Ok(written) => {
                for ((from, b, _), written) in builds.iter().zip(written) {
                    note(*from, b, written);
                }
                Ok(())
            }
            Err(StorageError::NotFound) => {
                for (from, b, run) in builds {
                    match self.storage.end_builds(&[(*from, b.clone(), *run)], &[]).await {
                        Ok(written) => note(*from, b, written.first() == Some(&true)),
                        Err(StorageError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                for l in logs {
                    match self.storage.put_build_log(l).await {
                        Ok(()) | Err(StorageError::NotFound) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the observer about a build a report ended (`written`), or about the move it lost (the build moved
    /// meanwhile, or its job was taken from the run the report belongs to).
    fn observe_end(&self, from: BuildStatus, b: &Build, written: bool) {
        if written {
            self.observe_build(b);
        } else {
            self.observer.build_move_lost(b.id, from, None, b.status);
        }
    }

    /// Ends a job whose outcome is applied: the last step of a `job_finished`. Only the run the report was
    /// checked against ends (see [`Run`]): one taken back meanwhile and handed out again, even to the same
    /// worker, is another run, which this report does not end.
    async fn end_job(&self, record: &JobRecord, worker: WorkerId, success: bool) -> Result<()> {
        let ended = match Run::of(record) {
            Some(run) => self.storage.finish_job(run, success).await?,
            None => false,
        };
        if !ended {
            return Err(not_assigned(record.id, worker));
        }
        self.memo.forget_job(record.id);
        // The evaluation's `.drv` files are pushed: its builds may go to any worker, and it may be done.
        if let JobKind::Evaluate { evaluation_id } = record.kind
            && success
        {
            self.settle_evaluation(evaluation_id).await?;
        }
        Ok(())
    }

    /// Records the reports a worker sent together (`docs/protocol.md`, `reports`), in their order, and answers
    /// one result per report. What this costs less than recording them one by one, with the same guarantees:
    ///
    /// - a `job_progress` whose job's `job_finished` is in the same batch is not applied on its own: the end
    ///   does all the progress would (frees the slot, plans an evaluation's builds) and more;
    /// - the builds that succeeded are saved with their logs in one storage write (`end_builds`), the
    ///   evaluations the batch's ended builds may complete are settled once each, and then those jobs end in
    ///   one storage write (`finish_jobs`): a job still ends last of its effects, so a batch interrupted
    ///   half-way is applied again whole when it comes again (a failed build is saved at once: what depends on
    ///   it is failed in order, and the batch's later reports read it);
    /// - the dispatcher is woken once for the batch's freed slots, not once per job.
    ///
    /// A report refused for its job (`Forbidden`: not this worker's, or ended, as a repeated one finds it) is
    /// answered so and does not stop the others. When storage is unavailable, the report it failed on and
    /// every later one are answered `Unavailable` (not recorded: to be sent again, in order), and so are the
    /// batch's earlier `job_finished` whose job could not be ended; those before the first `Unavailable` are
    /// recorded.
    pub async fn record_reports(
        &self,
        worker: WorkerId,
        orgs: &BTreeSet<OrgId>,
        reports: Vec<JobReport>,
    ) -> Vec<Result<()>> {
        let finished: HashSet<JobId> = reports
            .iter()
            .filter_map(|r| match &r.message {
                proto::WorkerMessage::JobFinished { job_id, .. } => Some(*job_id),
                _ => None,
            })
            .collect();
        // Their slots are free whatever the reports are worth.
        for job in &finished {
            self.fleet.job_ended(worker, *job);
        }
        if !finished.is_empty() {
            self.fleet.wake();
        }
        let mut results: Vec<Option<Result<()>>> = (0..reports.len()).map(|_| None).collect();
        let mut writes = BatchWrites::default();
        // Builds whose outcome is applied and whose job ends once the batch's evaluations are settled.
        let mut ending: Vec<(usize, JobRecord, Run, bool)> = Vec::new();
        let mut stopped = None;
        for (i, report) in reports.into_iter().enumerate() {
            let result = match report.message {
                proto::WorkerMessage::JobProgress { job_id, .. } if finished.contains(&job_id) => Ok(()),
                proto::WorkerMessage::JobProgress { job_id, stage } => {
                    self.record_job_progress(job_id, worker, orgs, stage).await
                }
                proto::WorkerMessage::EvalResult {
                    job_id,
                    derivations,
                    errors,
                } => self.record_eval_result(job_id, worker, orgs, derivations, errors).await,
                proto::WorkerMessage::JobFinished { job_id, outcome } => {
                    let success = matches!(outcome, JobOutcome::Success);
                    match self
                        .apply_finished(job_id, worker, orgs, outcome, report.log, Some(&mut writes))
                        .await
                    {
                        Ok(record) if matches!(record.kind, JobKind::Build { .. }) => {
                            // The run the report was checked against (`apply_finished`: assigned to `worker`).
                            if let Some(run) = Run::of(&record) {
                                ending.push((i, record, run, success));
                                continue;
                            }
                            Err(not_assigned(job_id, worker))
                        }
                        // An evaluation's end settles it and releases its builds: in its place in the order.
                        Ok(record) => self.end_job(&record, worker, success).await,
                        Err(e) => Err(e),
                    }
                }
                // Only job reports travel in a batch (`proto::Report::is_reportable`); `job_started` changes
                // nothing here.
                _ => Ok(()),
            };
            if matches!(result, Err(ServiceError::Unavailable(_))) {
                stopped = Some(i);
                results[i] = Some(result);
                break;
            }
            results[i] = Some(result);
        }
        // The batch's ended builds: the successes are written together, their evaluations settle once each,
        // then their jobs end, together.
        let mut settled: Result<()> = Ok(());
        if !writes.builds.is_empty() || !writes.logs.is_empty() {
            settled = self.end_builds(&writes.builds, &writes.logs).await;
        }
        if settled.is_ok() {
            // Looked up now, after the writes: an evaluation recorded later in the batch than a build's end may
            // need that build too, and settles only once it reads the build ended.
            let mut settle = BTreeSet::new();
            for (org, drv) in &writes.ended {
                match self.storage.evaluations_needing(*org, drv).await {
                    Ok(needing) => settle.extend(needing),
                    Err(e) => {
                        settled = Err(e.into());
                        break;
                    }
                }
            }
            if settled.is_ok() {
                for evaluation in settle {
                    if let Err(e) = self.settle_evaluation(evaluation).await {
                        settled = Err(e);
                        break;
                    }
                }
            }
        }
        let ended = match &settled {
            Ok(()) if !ending.is_empty() => {
                // Each run as its report was checked: one taken back and handed out again meanwhile is not ended.
                let runs: Vec<(Run, bool)> = ending.iter().map(|(_, _, run, success)| (*run, *success)).collect();
                self.storage.finish_jobs(&runs).await.map_err(ServiceError::from)
            }
            Ok(()) => Ok(Vec::new()),
            Err(e) => Err(e.clone()),
        };
        let mut again = Vec::new();
        for (n, (i, record, ..)) in ending.into_iter().enumerate() {
            results[i] = Some(match &ended {
                Ok(ended) if ended.get(n) == Some(&true) => {
                    self.memo.forget_job(record.id);
                    again.push(record);
                    Ok(())
                }
                Ok(_) => Err(not_assigned(record.id, worker)),
                Err(e) => Err(e.clone()),
            });
        }
        // Their reports are recorded once their jobs ended (none is to be sent again): a build restarted
        // meanwhile that this fails to queue again is told to the observer (see `queue_again_after_report`).
        self.queue_again_after_report(&again).await;
        if stopped.is_some() || !finished.is_empty() {
            self.fleet.wake();
        }
        let first_unavailable = results
            .iter()
            .position(|r| matches!(r, Some(Err(ServiceError::Unavailable(_)))));
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => r,
                None => Err(ServiceError::Unavailable(format!(
                    "not recorded: report {} of the batch could not be",
                    first_unavailable.unwrap_or(i)
                ))),
            })
            .collect()
    }

    /// What a job's outcome changes, before the job itself ends (see [`Self::record_job_finished`]); safe to
    /// apply twice.
    async fn apply_outcome(
        &self,
        record: &JobRecord,
        outcome: JobOutcome,
        log: Option<crate::logs::LogBuffer>,
        mut batch: Option<&mut BatchWrites>,
    ) -> Result<()> {
        let success = matches!(outcome, JobOutcome::Success);
        let job_id = record.id;
        match record.kind.clone() {
            JobKind::Evaluate { evaluation_id } => {
                // Builds planned when the push of the `.drv` files began may now go to any worker.
                let planned = self.pins.release(job_id);
                if success {
                    if planned {
                        self.settle_evaluation(evaluation_id).await?;
                    } else {
                        self.plan_builds(record.org_id, evaluation_id, None).await?;
                    }
                    Ok(())
                } else {
                    let Some(mut e) = self.storage.evaluation(evaluation_id).await? else {
                        return Ok(());
                    };
                    // Ended already (aborted meanwhile, or this outcome applied before): nothing to add.
                    if !e.status.is_terminal() {
                        if let JobOutcome::Failed { message, .. } = outcome {
                            e.errors.push(crate::model::AttributeError {
                                attribute: String::new(),
                                message,
                            });
                        }
                        let from = e.status;
                        let now = self.clock.now();
                        e.advance_to(EvaluationStatus::Failed, now);
                        e.updated_at = now;
                        self.save_evaluation(from, &e).await?;
                    }
                    if planned {
                        // Its `.drv` files may not all be in the cache: what only it needs is not built.
                        self.abandon_builds(evaluation_id, record.org_id, &[]).await?;
                    }
                    Ok(())
                }
            }
            JobKind::Build { derivation, .. } => {
                // A build handed out with its inputs (a chain in one batch) whose input failed there did not run:
                // it ends DependencyFailed like the queued ones, its log naming the input.
                let failed_input = match &outcome {
                    JobOutcome::Failed {
                        kind: proto::FailureKind::DependencyFailed,
                        ..
                    } => self.failed_input(record.org_id, &derivation).await?,
                    _ => None,
                };
                let status = match outcome {
                    JobOutcome::Success => BuildStatus::Completed,
                    JobOutcome::Aborted => BuildStatus::Aborted,
                    JobOutcome::Failed { .. } if failed_input.is_some() => BuildStatus::DependencyFailed,
                    JobOutcome::Failed { .. } => BuildStatus::Failed,
                };
                let mut log = log.unwrap_or_default();
                // One that never ran has no log, as when it ends DependencyFailed in the queue (the evaluation's
                // root causes name the input that broke it).
                let keep_log = failed_input.is_none() || !log.is_empty();
                if let Some(input) = &failed_input {
                    log.append(&format!("\n[gradient: not built: its input {input} failed]\n"));
                } else if let JobOutcome::Failed { message, .. } = &outcome {
                    log.append(&format!("\n[gradient: the build failed: {message}]\n"));
                }
                // The outcome first: a log that cannot be stored must not leave the build running.
                let mut stored = Ok(());
                // The run this report belongs to: the job's assignment to the worker, as checked.
                let Some(run) = Run::of(record) else {
                    return Ok(());
                };
                // Whether this report wrote the build's end (then only it fails what depends on a failure).
                // Whatever it wrote, the build may be restarted while this run is still out (before or after
                // this write: the restart finds this job active and queues nothing): once the job ends, the
                // build gets a job of its own if it is Queued (`queue_again` re-reads it).
                let mut wrote = false;
                if let Some(mut b) = self.storage.build(record.org_id, &derivation).await? {
                    let from = b.status;
                    // A worker's outcome belongs to its run: it moves the build only from Building. A build in
                    // another status was moved since this run began (aborted, or aborted and queued again by a
                    // restart), unless it is already this outcome (this report, applied before, sent again):
                    // then what moved it stands, and this late report changes nothing but the log it brings.
                    let current = from == BuildStatus::Building || from == status;
                    let moved = from == BuildStatus::Building && b.move_to(status, self.clock.now());
                    if !current {
                        self.observer
                            .build_move_lost(b.id, BuildStatus::Building, Some(from), status);
                    }
                    match batch.as_deref_mut() {
                        // A success changes nothing the batch's later reports read: written with the others.
                        Some(w) if success => {
                            if keep_log {
                                w.logs.push(self.log_record(&b, log)?);
                            }
                            if moved {
                                w.builds.push((from, b, Some(run)));
                                // Whether it is written is known once the batch's write is done.
                                wrote = true;
                            }
                        }
                        _ => {
                            if moved {
                                let written = self.storage.end_builds(&[(from, b.clone(), Some(run))], &[]).await?;
                                wrote = written.first() == Some(&true);
                                self.observe_end(from, &b, wrote);
                            }
                            if keep_log {
                                stored = self.store_log(&b, log).await;
                            }
                        }
                    }
                }
                // Only the report that wrote the failure fails what depends on it: a build found already ended
                // (aborted, or this report applied before) may be restarted at any moment, its dependents
                // queued again with it, and they must not be failed then. Dependents a failure left queued
                // (a report interrupted after its write) end DependencyFailed at the next dispatch round.
                if !success && wrote {
                    self.fail_dependents(record.org_id, &derivation).await?;
                }
                match batch {
                    Some(w) => w.ended.push((record.org_id, derivation.clone())),
                    None => self.settle_evaluations_needing(record.org_id, &derivation).await?,
                }
                stored
            }
        }
    }

    /// A worker says where its job is. Only `Pushing` changes anything: a build that only uploads now frees
    /// its build slot (the worker may get its next builds); an evaluation that pushes its `.drv` files has
    /// reported every derivation, so its builds are planned at once, held for that worker (the one machine
    /// that has the `.drv` files yet) until the evaluation job ends: it builds while it pushes, instead of
    /// after.
    pub async fn record_job_progress(
        &self,
        job_id: JobId,
        worker: WorkerId,
        orgs: &BTreeSet<OrgId>,
        stage: proto::Stage,
    ) -> Result<()> {
        if stage != proto::Stage::Pushing {
            return Ok(());
        }
        let JobRecord {
            org_id,
            kind,
            state: JobState::Assigned { worker: w, .. },
            ..
        } = self.check_report_scope(job_id, worker, orgs).await?
        else {
            return Err(not_assigned(job_id, worker));
        };
        if w != worker {
            return Err(not_assigned(job_id, worker));
        }
        if let JobKind::Evaluate { evaluation_id } = kind {
            self.plan_builds(org_id, evaluation_id, Some((job_id, worker))).await?;
        }
        self.fleet.job_pushing(worker, job_id);
        self.fleet.wake();
        Ok(())
    }

    /// After an evaluation: the builds of the closure of its entry points. With `pin` (the evaluation job and
    /// its worker, still pushing the `.drv` files), the builds queued go only to that worker until the job
    /// ends.
    async fn plan_builds(&self, org: OrgId, evaluation_id: EvaluationId, pin: Option<(JobId, WorkerId)>) -> Result<()> {
        // An evaluation that ended meanwhile (superseded, aborted) is not brought back by its job's reports.
        if self
            .storage
            .evaluation(evaluation_id)
            .await?
            .is_none_or(|e| e.status.is_terminal())
        {
            return Ok(());
        }
        let entries = self.storage.entry_points(evaluation_id).await?;
        let mut closure: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = entries.iter().map(|e| e.drv_path.clone()).collect();
        let mut derivations = HashMap::new();
        // A level of the closure at a time, each in one question for what memory does not hold.
        while !todo.is_empty() {
            let level: Vec<String> = todo.drain(..).filter(|d| closure.insert(d.clone())).collect();
            for (drv, d) in self.derivations_of(org, &level).await? {
                todo.extend(d.inputs.iter().filter(|i| !closure.contains(*i)).cloned());
                derivations.insert(drv, d);
            }
        }
        let drvs: Vec<String> = closure.into_iter().filter(|d| derivations.contains_key(d)).collect();
        let now = self.clock.now();
        // Dispatch rounds wait until these builds are all queued (see `Pins::queueing`).
        let queueing = self.pins.queueing(now);
        let builds = self.storage.link_builds(evaluation_id, org, &drvs, now).await?;
        self.advance_evaluation(evaluation_id, EvaluationStatus::Building)
            .await?;
        // Decide every build first and queue the jobs after, in a tight loop: the dispatcher, which may run
        // meanwhile, then sees them (nearly) all at once and hands them out together.
        let caches: Vec<Cache> = self
            .storage
            .subscriptions(org)
            .await?
            .into_iter()
            .filter(SubscribedCache::readable)
            .map(|s| s.cache)
            .collect();
        // Which outputs the org's caches hold, in one question per cache.
        let hashes: Vec<String> = builds
            .iter()
            .filter(|b| matches!(b.status, BuildStatus::Queued | BuildStatus::Aborted))
            .filter_map(|b| derivations.get(&b.drv_path))
            .flat_map(|d| d.outputs.values().map(|p| hash_part(p).to_owned()))
            .collect();
        let mut held = HashSet::new();
        for c in &caches {
            held.extend(self.storage.held_hash_parts(c.id, &hashes).await?);
        }
        let mut to_queue = Vec::new();
        let mut moves = Vec::new();
        for mut b in builds {
            // A build aborted with another evaluation is wanted again: queue it anew.
            if b.status == BuildStatus::Aborted {
                moves.push((b.drv_path.clone(), BuildStatus::Aborted, BuildStatus::Queued));
                b.status = BuildStatus::Queued;
            }
            if b.status != BuildStatus::Queued {
                continue;
            }
            let Some(d) = derivations.get(&b.drv_path) else {
                continue;
            };
            if !d.outputs.is_empty() && d.outputs.values().all(|p| held.contains(hash_part(p))) {
                moves.push((b.drv_path.clone(), BuildStatus::Queued, BuildStatus::Substituted));
                continue;
            }
            to_queue.push(d);
        }
        self.move_builds(org, &moves).await?;
        // Inputs first: a dispatch round that runs meanwhile sees whole chains' beginnings, which it hands out
        // together, and the rest joins them on the same worker in the next round.
        let to_queue = inputs_first(to_queue);
        if let Some((job, worker)) = pin {
            let drvs = to_queue.iter().map(|d| d.drv_path.clone()).collect();
            self.pins.pin(job, worker, org, evaluation_id, drvs);
        }
        let jobs: Vec<JobRecord> = to_queue.into_iter().map(|d| build_job(org, d, now)).collect();
        self.storage.enqueue_jobs(&jobs).await?;
        drop(queueing);
        self.fleet.wake();
        self.settle_evaluation(evaluation_id).await
    }

    /// A build job that ended, whose build may have been restarted while it was out (the restart found the job
    /// still active, so queued nothing): the build, if Queued now, gets a job of its own (none when one is
    /// active already), and the dispatcher is woken.
    pub(super) async fn queue_again(&self, record: &JobRecord) -> Result<()> {
        self.queue_again_all(std::slice::from_ref(record)).await
    }

    /// [`Self::queue_again`] for several ended jobs: one read of their builds' statuses per organization.
    async fn queue_again_all(&self, records: &[JobRecord]) -> Result<()> {
        match self.queue_again_each(records).await.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Self::queue_again_all`] once a report's jobs ended: the report stays recorded whatever this finds, so a
    /// failure is not answered but told to the observer (the server logs it at warn), with the jobs whose
    /// builds may be left Queued without a job. What puts such a build back on the way: the reconciliation
    /// pass queues a job for it, but only while an evaluation needing it is among the newest
    /// `RECONCILE_WINDOW` (50) of its project and has not ended; otherwise the next evaluation that needs the
    /// derivation (`plan_builds` queues a job for each of its Queued builds), or an abort of the evaluation
    /// and a restart after it. Hence the log.
    async fn queue_again_after_report(&self, records: &[JobRecord]) {
        for (jobs, e) in self.queue_again_each(records).await {
            self.observer.queue_again_failed(&jobs, e.code());
        }
    }

    /// The work of [`Self::queue_again_all`], answering for each organization whose builds could not be queued
    /// again its ended jobs and the error.
    async fn queue_again_each(&self, records: &[JobRecord]) -> Vec<(Vec<JobId>, ServiceError)> {
        let mut by_org: BTreeMap<OrgId, (Vec<JobId>, Vec<String>)> = BTreeMap::new();
        for record in records {
            if let JobKind::Build { derivation, .. } = &record.kind {
                let (jobs, derivations) = by_org.entry(record.org_id).or_default();
                jobs.push(record.id);
                derivations.push(derivation.clone());
            }
        }
        // One organization's failure (say it was just deleted) does not keep the others' builds from their jobs,
        // nor the dispatcher from waking for those queued.
        let mut queued = false;
        let mut failed = Vec::new();
        for (org, (jobs, derivations)) in by_org {
            match self.queue_again_in(org, &derivations).await {
                Ok(any) => queued |= any,
                Err(e) => failed.push((jobs, e)),
            }
        }
        if queued {
            self.fleet.wake();
        }
        failed
    }

    /// The part of [`Self::queue_again_all`] for one organization: answers whether it queued a job.
    async fn queue_again_in(&self, org: OrgId, derivations: &[String]) -> Result<bool> {
        let mut jobs = Vec::new();
        for (drv, status) in self.storage.build_statuses(org, derivations).await? {
            if status != BuildStatus::Queued {
                continue;
            }
            if let Some(d) = self.derivation(org, &drv).await? {
                jobs.push(build_job(org, &d, self.clock.now()));
            }
        }
        if jobs.is_empty() {
            return Ok(false);
        }
        self.storage.enqueue_jobs(&jobs).await?;
        Ok(true)
    }

    /// Stores what a build printed (capped and compressed, see [`crate::logs`]) as its log.
    async fn store_log(&self, b: &Build, log: crate::logs::LogBuffer) -> Result<()> {
        let log = self.log_record(b, log)?;
        Ok(self.storage.put_build_log(&log).await?)
    }

    /// What a build printed, capped and compressed, as the log to store.
    fn log_record(&self, b: &Build, log: crate::logs::LogBuffer) -> Result<crate::model::BuildLog> {
        let (text, omitted) = log.finish();
        Ok(crate::model::BuildLog {
            build_id: b.id,
            compressed: crate::logs::compress(&text)
                .map_err(|e| ServiceError::Internal(format!("compressing the log of build {}: {e}", b.id)))?,
            size: text.len() as u64,
            omitted,
            created_at: self.clock.now(),
        })
    }

    /// An input of the organization's derivation whose build ended without outputs (failed, aborted, dependency
    /// failed), if any.
    async fn failed_input(&self, org: OrgId, drv: &str) -> Result<Option<String>> {
        let Some(d) = self.derivation(org, drv).await? else {
            return Ok(None);
        };
        Ok(self
            .storage
            .build_statuses(org, &d.inputs)
            .await?
            .into_iter()
            .find(|(_, s)| s.is_terminal() && !s.provides_outputs())
            .map(|(input, _)| input))
    }

    /// Marks every queued build depending (transitively) on `failed` as DependencyFailed. The dependents are
    /// found through storage's reverse edges (`dependents`), so a failure costs what it breaks, not the size of
    /// the evaluations needing it. Each build moves only from Queued, in one compare-and-set write per
    /// derivation failed: one handed out meanwhile builds (its own run fails it, or not).
    pub(super) async fn fail_dependents(&self, org: OrgId, failed: &str) -> Result<()> {
        let mut todo = vec![failed.to_owned()];
        let mut seen = HashSet::new();
        while let Some(drv) = todo.pop() {
            let dependents: Vec<String> = self
                .storage
                .dependents(org, &drv)
                .await?
                .into_iter()
                .filter(|d| seen.insert(d.clone()))
                .collect();
            if dependents.is_empty() {
                continue;
            }
            let moves: Vec<(String, BuildStatus, BuildStatus)> = self
                .storage
                .build_statuses(org, &dependents)
                .await?
                .into_iter()
                .filter(|(_, s)| *s == BuildStatus::Queued)
                .map(|(d, _)| (d, BuildStatus::Queued, BuildStatus::DependencyFailed))
                .collect();
            let now = self.move_builds(org, &moves).await?;
            for (dependent, ..) in moves {
                if now.get(&dependent) == Some(&BuildStatus::DependencyFailed) {
                    todo.push(dependent);
                }
            }
        }
        Ok(())
    }

    /// Completes (or fails) an evaluation whose builds have all ended.
    pub(super) async fn settle_evaluation(&self, id: EvaluationId) -> Result<()> {
        // Not done while its `.drv` files are still being pushed, even if every build is.
        if self.pins.holds(id) {
            return Ok(());
        }
        let Some(e) = self.storage.evaluation(id).await? else {
            return Ok(());
        };
        if e.status != EvaluationStatus::Building {
            return Ok(());
        }
        let unfinished = [BuildStatus::Queued, BuildStatus::Building];
        if self.storage.has_builds(id, &unfinished).await? {
            return Ok(());
        }
        let without_outputs = [BuildStatus::Failed, BuildStatus::Aborted, BuildStatus::DependencyFailed];
        let ok = e.errors.is_empty() && !self.storage.has_builds(id, &without_outputs).await?;
        self.advance_evaluation(
            id,
            if ok {
                EvaluationStatus::Completed
            } else {
                EvaluationStatus::Failed
            },
        )
        .await
        .map(|_| ())
    }

    /// Settles every evaluation that needs the organization's build of `drv` (it just ended).
    pub(super) async fn settle_evaluations_needing(&self, org: OrgId, drv: &str) -> Result<()> {
        for e in self.storage.evaluations_needing(org, drv).await? {
            self.settle_evaluation(e).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_queued_inputs_first() {
        let d = |name: &str, inputs: &[&str]| {
            std::sync::Arc::new(Derivation {
                drv_path: name.to_owned(),
                system: "x86_64-linux".into(),
                required_features: vec![],
                outputs: Default::default(),
                inputs: inputs.iter().map(|i| i.to_string()).collect(),
            })
        };
        // c ← b ← a, and d ← a, c; "elsewhere" is not among them.
        let all = [
            d("d", &["a", "c"]),
            d("c", &["b", "elsewhere"]),
            d("a", &[]),
            d("b", &["a"]),
        ];
        let order: Vec<&str> = inputs_first(all.iter().collect())
            .into_iter()
            .map(|d| d.drv_path.as_str())
            .collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
    }
}
