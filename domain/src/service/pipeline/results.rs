//! What workers report about their jobs: an evaluation's derivations, progress, outcomes. A worker is
//! trusted only for its own jobs, on a link proved for the job's organization. Outcomes move builds and
//! evaluations, fail what depends on a failure, plan an evaluation's builds, and settle evaluations.

use super::{Gradient, Result, ServiceError, build_job, not_assigned};
use crate::model::{Build, Cache, Derivation, EntryPoint, JobId, JobKind, JobRecord, JobState, SubscribedCache};
use crate::ports::{Clock, Storage};
use crate::proto::{self, JobOutcome};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{EvaluationId, OrgId, WorkerId};
use std::collections::{BTreeSet, HashMap, HashSet};

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
        self.check_report_scope(job_id, worker, orgs).await?;
        let Some(JobRecord {
            org_id,
            kind: JobKind::Evaluate { evaluation_id },
            state: JobState::Assigned { worker: w, .. },
            ..
        }) = self.storage.job(job_id).await?
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
        if !errors.is_empty()
            && let Some(mut e) = self.storage.evaluation(evaluation_id).await?
        {
            // A report sent again (its acknowledgement was lost with the link) adds nothing twice.
            let before = e.errors.len();
            for x in errors {
                let error = crate::model::AttributeError {
                    attribute: x.attribute,
                    message: x.message,
                };
                if !e.errors.contains(&error) {
                    e.errors.push(error);
                }
            }
            if e.errors.len() > before {
                e.updated_at = self.clock.now();
                self.storage.update_evaluation(&e).await?;
            }
        }
        Ok(())
    }

    /// Whether a link that proved registrations in `orgs` may report on `job` at all: the job must belong to
    /// one of them. A worker id is chosen by whoever registers it, so two tenants may register the same id; the
    /// link's proved organizations, not the id, decide whose jobs it speaks for. Each `record_*` checks
    /// this first, and then that the job is assigned to the reporting worker.
    async fn check_report_scope(&self, job: JobId, worker: WorkerId, orgs: &BTreeSet<OrgId>) -> Result<()> {
        match self.storage.job(job).await? {
            Some(record) if orgs.contains(&record.org_id) => Ok(()),
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
        self.check_report_scope(job_id, worker, orgs).await?;
        let Some(record) = self.storage.job(job_id).await? else {
            return Err(not_assigned(job_id, worker));
        };
        if !matches!(record.state, JobState::Assigned { worker: w, .. } if w == worker) {
            // Not this worker's job (any more: it was lost and the job went to another, or it ended, which is
            // also what a report sent again after it was recorded finds): nothing changes.
            return Err(not_assigned(job_id, worker));
        }
        let success = matches!(outcome, JobOutcome::Success);
        // Every effect first, the job's end last: a report interrupted half-way (the database went away) is
        // applied again whole when it comes again, each effect being safe to repeat; once the job has ended, a
        // repeated report changes nothing.
        self.apply_outcome(&record, outcome, log).await?;
        if !self.storage.finish_job(job_id, worker, success).await? {
            return Err(not_assigned(job_id, worker));
        }
        self.memo.forget_job(job_id);
        // The evaluation's `.drv` files are pushed: its builds may go to any worker, and it may be done.
        if let JobKind::Evaluate { evaluation_id } = record.kind
            && success
        {
            self.settle_evaluation(evaluation_id).await?;
        }
        Ok(())
    }

    /// What a job's outcome changes, before the job itself ends (see [`Self::record_job_finished`]); safe to
    /// apply twice.
    async fn apply_outcome(
        &self,
        record: &JobRecord,
        outcome: JobOutcome,
        log: Option<crate::logs::LogBuffer>,
    ) -> Result<()> {
        let success = matches!(outcome, JobOutcome::Success);
        let job_id = record.id;
        match record.kind.clone() {
            JobKind::Evaluate { evaluation_id } => {
                // Builds planned when the push of the `.drv` files began may now go to any worker.
                let planned = self.pins.release(job_id);
                if success {
                    if planned {
                        self.settle_evaluation(evaluation_id).await
                    } else {
                        self.plan_builds(record.org_id, evaluation_id, None).await
                    }
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
                if let Some(mut b) = self.storage.build(record.org_id, &derivation).await? {
                    if b.move_to(status, self.clock.now()) {
                        self.storage.update_build(&b).await?;
                        self.observe_build(&b);
                    }
                    if keep_log {
                        stored = self.store_log(&b, log).await;
                    }
                }
                if !success {
                    self.fail_dependents(record.org_id, &derivation).await?;
                }
                self.settle_evaluations_needing(record.org_id, &derivation).await?;
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
        self.check_report_scope(job_id, worker, orgs).await?;
        let Some(JobRecord {
            org_id,
            kind,
            state: JobState::Assigned { worker: w, .. },
            ..
        }) = self.storage.job(job_id).await?
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
                moves.push((b.drv_path.clone(), BuildStatus::Queued));
                b.status = BuildStatus::Queued;
            }
            if b.status != BuildStatus::Queued {
                continue;
            }
            let Some(d) = derivations.get(&b.drv_path) else {
                continue;
            };
            if !d.outputs.is_empty() && d.outputs.values().all(|p| held.contains(hash_part(p))) {
                moves.push((b.drv_path.clone(), BuildStatus::Substituted));
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

    /// Stores what a build printed (capped and compressed, see [`crate::logs`]) as its log.
    async fn store_log(&self, b: &Build, log: crate::logs::LogBuffer) -> Result<()> {
        let (text, omitted) = log.finish();
        let log = crate::model::BuildLog {
            build_id: b.id,
            compressed: crate::logs::compress(&text)
                .map_err(|e| ServiceError::Internal(format!("compressing the log of build {}: {e}", b.id)))?,
            size: text.len() as u64,
            omitted,
            created_at: self.clock.now(),
        };
        Ok(self.storage.put_build_log(&log).await?)
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
    /// the evaluations needing it.
    pub(super) async fn fail_dependents(&self, org: OrgId, failed: &str) -> Result<()> {
        let mut todo = vec![failed.to_owned()];
        let mut seen = HashSet::new();
        while let Some(drv) = todo.pop() {
            for dependent in self.storage.dependents(org, &drv).await? {
                if !seen.insert(dependent.clone()) {
                    continue;
                }
                let queued = self
                    .storage
                    .build(org, &dependent)
                    .await?
                    .is_some_and(|b| b.status == BuildStatus::Queued);
                if queued {
                    self.move_build(org, &dependent, BuildStatus::DependencyFailed).await?;
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
