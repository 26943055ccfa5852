//! The CI loop on the server's side: an evaluation is queued as a job; a worker evaluates it and reports
//! derivations; every derivation of the closure gets the organization's build (once, however many
//! evaluations need it) and a build job unless its outputs are already in one of the org's caches; jobs go
//! to workers as the scheduler decides; results move builds and evaluations through their state machines.

use super::{Caller, Gradient, Result, ServiceError};
use crate::model::{
    Build, Cache, Derivation, EntryPoint, Evaluation, EvaluationTrigger, JobId, JobKind, JobRecord, JobState,
    SubscribedCache,
};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use crate::proto::{self, JobOutcome, PushTarget};
use crate::scheduler::{self, QueueEntry, Snapshot, WorkerInfo};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{EvaluationId, Name, OrgId, WorkerId};
use std::collections::{BTreeSet, HashMap, HashSet};

/// An organization's caches for jobs: substituter URLs, their public keys, and the URL jobs push to.
/// An org's substituter URLs, their public keys, and its push cache with its URL.
type OrgCaches = (Vec<String>, Vec<String>, Option<(crate::CacheId, String)>);

/// A job assigned by `dispatch`, to send to its worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub worker: WorkerId,
    /// The organization the job is for.
    pub org: OrgId,
    pub job: proto::Job,
}

/// What a report (results, progress, outcome) for a job not assigned to the reporting worker gets: nothing
/// changes, and the caller logs it. A worker is trusted only for its own jobs.
fn not_assigned(job: JobId, worker: WorkerId) -> ServiceError {
    ServiceError::Forbidden(format!("job {} is not assigned to worker {}", job.0, worker.0))
}

/// What a report for a job of an organization the reporting connection did not prove a registration in gets.
fn not_authorized(job: JobId, worker: WorkerId) -> ServiceError {
    ServiceError::Forbidden(format!(
        "job {} belongs to an organization worker {} did not prove a registration in on this link",
        job.0, worker.0
    ))
}

/// An organization looked up by id (from an evaluation or a build the caller named) and hidden from the
/// caller is answered as the thing the caller named being missing: its name was not the caller's to learn.
pub(super) fn hide_org(e: ServiceError, missing: impl Fn() -> ServiceError) -> ServiceError {
    match e {
        ServiceError::NotFound(_) => missing(),
        other => other,
    }
}

/// How long a worker may use the credential it got with a job.
const JOB_TOKEN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Queues an evaluation of the project (`trigger_evaluation`): at `commit` when given (on the project's
    /// branch, if it has one), otherwise at the head of the project's branch, or of the repository's default
    /// branch when the project has none, asked of the repository through `git`. The evaluation names the
    /// commit and the branch it was found on, so the worker fetches that branch.
    pub async fn trigger_evaluation<G: crate::ports::git::Git>(
        &self,
        git: &G,
        caller: &Caller,
        org: &str,
        project: &str,
        commit: Option<&str>,
    ) -> Result<Evaluation> {
        let o = self.org_requiring(caller, org, Permission::TriggerEvaluation).await?;
        let name =
            Name::parse(project).map_err(|_| ServiceError::NotFound(format!("project '{org}/{project}' not found")))?;
        let p = self
            .storage
            .project(o.id, &name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("project '{org}/{project}' not found")))?;
        let (commit, branch) = match commit {
            Some(commit) => {
                let commit = commit.trim().to_lowercase();
                if !crate::forge::is_commit(&commit) {
                    return Err(ServiceError::invalid(
                        "invalid_commit",
                        "give the full commit hash (40 hexadecimal characters, or 64 in a SHA-256 repository)",
                    ));
                }
                (commit, p.branch.clone())
            }
            None => match branch_head(git, &p).await {
                Ok(Some(head)) => head,
                Ok(None) => {
                    return Err(ServiceError::invalid(
                        "branch_not_found",
                        match &p.branch {
                            Some(b) => format!("the repository has no branch '{b}'"),
                            None => "the repository has no commit on its default branch".to_owned(),
                        },
                    ));
                }
                // git's own words stay out of the answer: they would tell the caller more about the server's
                // network and credentials than whether the repository answered.
                Err(_) => {
                    return Err(ServiceError::invalid(
                        "repository_unreachable",
                        "the server cannot read the repository's branch head: check its URL and that the server may \
                         reach it, or give a commit to evaluate",
                    ));
                }
            },
        };
        self.queue_evaluation_on(o.id, &p, &commit, branch, EvaluationTrigger::Manual)
            .await
    }

    /// Queues an evaluation of the project's branch at `commit`.
    pub async fn queue_evaluation(
        &self,
        org: OrgId,
        project: &crate::model::Project,
        commit: &str,
        trigger: EvaluationTrigger,
    ) -> Result<Evaluation> {
        self.queue_evaluation_on(org, project, commit, project.branch.clone(), trigger)
            .await
    }

    /// Queues an evaluation of `commit`, found on `branch` when known (a push names it): the worker fetches
    /// that branch, as a remote may not serve a commit by hash alone.
    pub async fn queue_evaluation_on(
        &self,
        org: OrgId,
        project: &crate::model::Project,
        commit: &str,
        branch: Option<String>,
        trigger: EvaluationTrigger,
    ) -> Result<Evaluation> {
        let now = self.clock.now();
        let evaluation = Evaluation {
            id: EvaluationId::new(),
            project_id: project.id,
            commit: commit.to_owned(),
            branch,
            trigger,
            status: EvaluationStatus::Queued,
            errors: Vec::new(),
            transitions: vec![crate::model::Transition {
                status: EvaluationStatus::Queued,
                at: now,
            }],
            created_at: now,
            updated_at: now,
        };
        self.storage.create_evaluation(&evaluation).await?;
        let job = JobRecord {
            id: JobId::new(),
            org_id: org,
            kind: JobKind::Evaluate {
                evaluation_id: evaluation.id,
            },
            state: JobState::Queued,
            created_at: now,
            attempts: 0,
        };
        self.storage.enqueue_job(&job).await?;
        if self.settings.supersede_evaluations && trigger != EvaluationTrigger::Manual {
            self.supersede(project, &evaluation).await?;
        }
        self.prune_evaluations(project).await?;
        Ok(evaluation)
    }

    /// A push supersedes the evaluations of the same branch still running: they end Aborted (their queued
    /// builds that nothing else needs are dropped; builds already running finish, their outputs still useful).
    async fn supersede(&self, project: &crate::model::Project, newer: &Evaluation) -> Result<()> {
        for e in self.storage.evaluations(project.id, 50).await? {
            if e.id != newer.id && !e.status.is_terminal() && e.branch == newer.branch {
                let mut e = e;
                e.errors.push(crate::model::AttributeError {
                    attribute: String::new(),
                    message: format!("superseded by evaluation {} of commit {}", newer.id.0, newer.commit),
                });
                self.stop_evaluation(e, project.org_id, &[]).await?;
            }
        }
        Ok(())
    }

    /// Deletes the project's oldest finished evaluations beyond its `keep_evaluations` (or the server's).
    /// Evaluations still running are never deleted; their builds and derivations stay for other evaluations.
    async fn prune_evaluations(&self, project: &crate::model::Project) -> Result<()> {
        let keep = project
            .keep_evaluations
            .unwrap_or(self.settings.keep_evaluations)
            .max(1) as usize;
        let all = self.storage.evaluations(project.id, 10_000).await?;
        for e in all.iter().skip(keep).filter(|e| e.status.is_terminal()) {
            self.storage.delete_evaluation(e.id).await?;
        }
        Ok(())
    }

    pub async fn evaluation_for(&self, caller: &Caller, id: EvaluationId) -> Result<(Evaluation, Vec<Build>)> {
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        let e = self.storage.evaluation(id).await?.ok_or_else(missing)?;
        let p = self.storage.project_by_id(e.project_id).await?.ok_or_else(missing)?;
        self.require_view(caller, p.org_id, missing).await?;
        let builds = self.storage.builds_of_evaluation(e.id).await?;
        Ok((e, builds))
    }

    async fn set_evaluation_status(&self, id: EvaluationId, to: EvaluationStatus) -> Result<()> {
        let Some(mut e) = self.storage.evaluation(id).await? else {
            return Ok(());
        };
        // Walk through the intermediate states a skipped report would have set.
        let path: &[EvaluationStatus] = match to {
            EvaluationStatus::Evaluating => &[EvaluationStatus::Fetching, EvaluationStatus::Evaluating],
            EvaluationStatus::Building | EvaluationStatus::Completed => &[
                EvaluationStatus::Fetching,
                EvaluationStatus::Evaluating,
                EvaluationStatus::Building,
                to,
            ],
            _ => std::slice::from_ref(&to),
        };
        let from = e.status;
        let now = self.clock.now();
        let mut changed = false;
        for step in path {
            changed |= e.move_to(*step, now);
        }
        if changed {
            self.storage.update_evaluation(&e).await?;
            self.report_status_change(from, &e).await?;
        }
        Ok(())
    }

    /// Whether the job is still queued or running (not ended, and not gone with its evaluation).
    pub async fn job_is_active(&self, job: JobId) -> Result<bool> {
        Ok(self.storage.job(job).await?.is_some_and(|r| r.state.is_active()))
    }

    /// Decides who runs what now and records it; answers the jobs to send.
    pub async fn dispatch(&self, workers: Vec<WorkerInfo>, public_url: &str) -> Result<Vec<Dispatched>> {
        let mut jobs = Vec::new();
        // A pin lasts while its evaluation job is queued or running: one ended another way (aborted,
        // superseded) releases its builds.
        for job in self.pins.jobs() {
            if !self.job_is_active(job).await? {
                self.pins.release(job);
            }
        }
        let pinned = self.pins.pinned();
        let mut queued: HashMap<JobId, JobRecord> = HashMap::new();
        for record in self.storage.queued_jobs(500).await? {
            let mut entry = self.entry(&record).await?;
            if let scheduler::Needs::Build(b) = &entry.needs {
                entry.pinned_to = pinned.get(&(record.org_id, b.drv_path.clone())).copied();
            }
            jobs.push(entry);
            queued.insert(record.id, record);
        }
        for w in &workers {
            for record in self.storage.jobs_assigned_to(w.id).await? {
                jobs.push(self.entry(&record).await?);
            }
        }
        let mut inputs: HashMap<OrgId, BTreeSet<String>> = HashMap::new();
        for j in &jobs {
            if let scheduler::Needs::Build(b) = &j.needs {
                inputs.entry(j.org).or_default().extend(b.inputs.iter().cloned());
            }
        }
        let mut available: HashMap<OrgId, HashSet<String>> = HashMap::new();
        let mut failed: HashMap<OrgId, HashSet<String>> = HashMap::new();
        for (org, paths) in inputs {
            let paths: Vec<String> = paths.into_iter().collect();
            for (path, status) in self.storage.build_statuses(org, &paths).await? {
                if status.provides_outputs() {
                    available.entry(org).or_default().insert(path);
                } else if status.is_terminal() {
                    failed.entry(org).or_default().insert(path);
                }
            }
        }
        let plan = scheduler::plan(&Snapshot {
            jobs,
            workers,
            available,
            failed,
        });
        let now = self.clock.now();
        let mut out = Vec::new();
        let mut caches: HashMap<OrgId, OrgCaches> = HashMap::new();
        for (job_id, worker) in plan.assignments {
            let Some(record) = queued.remove(&job_id) else {
                continue;
            };
            // The message is made before the job is assigned: a failure here leaves it queued, not assigned
            // to a worker that never hears of it.
            if let std::collections::hash_map::Entry::Vacant(slot) = caches.entry(record.org_id) {
                slot.insert(self.org_caches(record.org_id, public_url).await?);
            }
            let wired = self.wire_job(&record, (worker, now), &caches[&record.org_id]).await?;
            if !self.storage.assign_job(job_id, worker, now).await? {
                continue;
            }
            match wired {
                Some(job) => {
                    if let JobKind::Evaluate { evaluation_id } = record.kind {
                        self.set_evaluation_status(evaluation_id, EvaluationStatus::Fetching)
                            .await?;
                    } else if let JobKind::Build { derivation, .. } = &record.kind {
                        self.move_build(record.org_id, derivation, BuildStatus::Building)
                            .await?;
                    }
                    out.push(Dispatched {
                        worker,
                        org: record.org_id,
                        job,
                    });
                }
                None => {
                    self.storage.finish_job(job_id, worker, false).await?;
                }
            }
        }
        for job_id in plan.dependency_failed {
            if let Some(JobRecord {
                org_id,
                kind: JobKind::Build { derivation, .. },
                ..
            }) = self.storage.job(job_id).await?
            {
                self.move_build(org_id, &derivation, BuildStatus::DependencyFailed)
                    .await?;
                self.storage.cancel_queued_job(job_id).await?;
            }
        }
        Ok(out)
    }

    async fn entry(&self, record: &JobRecord) -> Result<QueueEntry> {
        let inputs = match &record.kind {
            JobKind::Build { derivation, .. } => self
                .derivation(record.org_id, derivation)
                .await?
                .map(|d| d.inputs.clone())
                .unwrap_or_default(),
            JobKind::Evaluate { .. } => Vec::new(),
        };
        Ok(QueueEntry::from_record(record, inputs))
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

    /// The caches the org reads as substituters with their keys, and its push cache (where its jobs push).
    async fn org_caches(&self, org: OrgId, public_url: &str) -> Result<OrgCaches> {
        let mut urls = Vec::new();
        let mut keys = Vec::new();
        let mut push = None;
        for s in self.storage.subscriptions(org).await? {
            if !s.readable() {
                continue;
            }
            let url = format!("{public_url}/cache/{}", s.cache.name);
            if s.push {
                push = Some((s.cache.id, url.clone()));
            }
            urls.push(url);
            keys.push(self.cache_secret_key(&s.cache)?.public().to_string());
        }
        Ok((urls, keys, push))
    }

    /// The wire form of a queued job; `None` when what it refers to is gone. `caches` are the job's
    /// organization's (see `org_caches`).
    /// `assignment` is the worker the job is about to be assigned to, and when.
    async fn wire_job(
        &self,
        record: &JobRecord,
        assignment: (WorkerId, crate::model::Timestamp),
        caches: &OrgCaches,
    ) -> Result<Option<proto::Job>> {
        let (substituters, trusted_public_keys, push_to) = caches.clone();
        // One token per job: it reads the org's caches and pushes to its push cache, while the job is this
        // worker's.
        let token = self.tokens.issue_job(
            record.org_id,
            record.id,
            assignment,
            push_to.as_ref().map(|(cache, _)| *cache),
            self.clock.now() + JOB_TOKEN_LIFETIME,
        );
        let push = push_to.map(|(_, cache_url)| PushTarget {
            cache_url,
            token: token.clone(),
        });
        Ok(match &record.kind {
            JobKind::Evaluate { evaluation_id } => {
                let Some(e) = self.storage.evaluation(*evaluation_id).await? else {
                    return Ok(None);
                };
                let Some(p) = self.storage.project_by_id(e.project_id).await? else {
                    return Ok(None);
                };
                Some(proto::Job::Evaluate {
                    job_id: record.id,
                    repository: p.repository.clone(),
                    commit: e.commit.clone(),
                    git_ref: e.branch.clone(),
                    wildcard: p.wildcard.clone(),
                    flake_input_overrides: p
                        .flake_input_overrides
                        .clone()
                        .into_iter()
                        .map(|(k, v)| (k, v.into()))
                        .collect(),
                    push,
                })
            }
            JobKind::Build { derivation, .. } => {
                let Some(d) = self.derivation(record.org_id, derivation).await? else {
                    return Ok(None);
                };
                Some(proto::Job::Build {
                    job_id: record.id,
                    drv_path: d.drv_path.clone(),
                    outputs: d.outputs.clone(),
                    substituter_token: (!substituters.is_empty()).then_some(token),
                    substituters,
                    trusted_public_keys,
                    push,
                    timeout_secs: None,
                })
            }
        })
    }

    /// Derivations and attribute errors reported by an evaluating worker.
    pub async fn record_eval_result(
        &self,
        job_id: JobId,
        worker: WorkerId,
        derivations: Vec<proto::EvaluatedDerivation>,
        errors: Vec<proto::AttributeError>,
    ) -> Result<()> {
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
        self.set_evaluation_status(evaluation_id, EvaluationStatus::Evaluating)
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
            e.errors
                .extend(errors.into_iter().map(|x| crate::model::AttributeError {
                    attribute: x.attribute,
                    message: x.message,
                }));
            e.updated_at = self.clock.now();
            self.storage.update_evaluation(&e).await?;
        }
        Ok(())
    }

    /// Whether a link that proved registrations in `orgs` may report on `job` at all: the job must belong to
    /// one of them. A worker id is chosen by whoever registers it, so two tenants may register the same id; the
    /// link's proved organizations, not the id, decide whose jobs it speaks for. (Each `record_*` also requires
    /// the job to be assigned to the reporting worker.)
    pub async fn check_report_scope(&self, job: JobId, worker: WorkerId, orgs: &BTreeSet<OrgId>) -> Result<()> {
        match self.storage.job(job).await? {
            Some(record) if orgs.contains(&record.org_id) => Ok(()),
            Some(_) => Err(not_authorized(job, worker)),
            None => Err(not_assigned(job, worker)),
        }
    }

    /// A worker's link was proved for `orgs`, holding `held` jobs from an earlier link. Jobs assigned to the
    /// worker go back to the queue when it holds none (it restarted), and all of them when any belongs to an
    /// organization this link did not prove (they were handed to another link under the same worker id, which
    /// this one must not finish). Answers how many were requeued.
    pub async fn worker_connected(&self, worker: WorkerId, held: &[JobId], orgs: &BTreeSet<OrgId>) -> Result<u64> {
        let assigned = self.storage.jobs_assigned_to(worker).await?;
        let foreign = assigned.iter().any(|j| !orgs.contains(&j.org_id));
        if !held.is_empty() && !foreign {
            return Ok(0);
        }
        self.worker_disconnected(worker).await
    }

    /// A worker's link ended: the jobs it held go back to the queue, their tokens die, and what they were doing
    /// says so: a build that was `Building` is `Queued` again, an evaluation being fetched or evaluated is
    /// `Queued` again (an evaluation already building waits for its builds as before).
    pub async fn worker_disconnected(&self, worker: WorkerId) -> Result<u64> {
        // What the jobs were doing says Queued first, and only then do they go back to the queue: a job
        // handed out again at once is moved to Building after this, never back to Queued by it.
        let assigned = self.storage.jobs_assigned_to(worker).await?;
        for job in &assigned {
            self.memo.forget_job(job.id);
            match &job.kind {
                JobKind::Build { derivation, .. } => {
                    self.move_build(job.org_id, derivation, BuildStatus::Queued).await?;
                }
                JobKind::Evaluate { evaluation_id } => {
                    let fetching =
                        self.storage.evaluation(*evaluation_id).await?.is_some_and(|e| {
                            matches!(e.status, EvaluationStatus::Fetching | EvaluationStatus::Evaluating)
                        });
                    if fetching {
                        self.set_evaluation_status(*evaluation_id, EvaluationStatus::Queued)
                            .await?;
                    }
                }
            }
        }
        Ok(self.storage.requeue_jobs_of(worker).await?)
    }

    /// A worker finished a job.
    pub async fn record_job_finished(
        &self,
        job_id: JobId,
        worker: WorkerId,
        outcome: JobOutcome,
        log: Option<crate::logs::LogBuffer>,
    ) -> Result<()> {
        let Some(record) = self.storage.job(job_id).await? else {
            return Err(not_assigned(job_id, worker));
        };
        let success = matches!(outcome, JobOutcome::Success);
        if !self.storage.finish_job(job_id, worker, success).await? {
            // Not this worker's job (any more: it was lost and the job went to another, or it ended): nothing
            // changes.
            return Err(not_assigned(job_id, worker));
        }
        self.memo.forget_job(job_id);
        match record.kind {
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
                    if let JobOutcome::Failed { message, .. } = outcome {
                        e.errors.push(crate::model::AttributeError {
                            attribute: String::new(),
                            message,
                        });
                    }
                    let from = e.status;
                    let now = self.clock.now();
                    e.move_to(EvaluationStatus::Fetching, now);
                    e.move_to(EvaluationStatus::Failed, now);
                    e.updated_at = now;
                    self.storage.update_evaluation(&e).await?;
                    self.report_status_change(from, &e).await?;
                    if planned {
                        // Its `.drv` files may not all be in the cache: what only it needs is not built.
                        self.abandon_builds(evaluation_id, record.org_id, &[]).await?;
                    }
                    Ok(())
                }
            }
            JobKind::Build { derivation, .. } => {
                let status = if success {
                    BuildStatus::Completed
                } else {
                    BuildStatus::Failed
                };
                let mut log = log.unwrap_or_default();
                if let JobOutcome::Failed { message, .. } = &outcome {
                    log.append(&format!("\n[gradient: the build failed: {message}]\n"));
                }
                // The outcome first: a log that cannot be stored must not leave the build running.
                let mut stored = Ok(());
                if let Some(mut b) = self.storage.build(record.org_id, &derivation).await? {
                    if b.move_to(status, self.clock.now()) {
                        self.storage.update_build(&b).await?;
                    }
                    stored = self.store_log(&b, log).await;
                }
                if !success {
                    self.fail_dependents(record.org_id, &derivation).await?;
                }
                for e in self.storage.evaluations_needing(record.org_id, &derivation).await? {
                    self.settle_evaluation(e).await?;
                }
                stored
            }
        }
    }

    /// An evaluating worker reported every derivation and now pushes the `.drv` files to the cache. The builds
    /// are planned at once, held for that worker (the one machine that has the `.drv` files yet) until the
    /// evaluation job ends: it builds while it pushes, instead of after.
    pub async fn record_evaluation_pushing(&self, job_id: JobId, worker: WorkerId) -> Result<()> {
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
        self.plan_builds(org_id, evaluation_id, Some((job_id, worker))).await
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
        while let Some(drv) = todo.pop() {
            if !closure.insert(drv.clone()) {
                continue;
            }
            if let Some(d) = self.derivation(org, &drv).await? {
                todo.extend(d.inputs.iter().cloned());
                derivations.insert(drv, d);
            }
        }
        let drvs: Vec<String> = closure.into_iter().filter(|d| derivations.contains_key(d)).collect();
        let now = self.clock.now();
        let builds = self.storage.link_builds(evaluation_id, org, &drvs, now).await?;
        self.set_evaluation_status(evaluation_id, EvaluationStatus::Building)
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
        let mut to_queue = Vec::new();
        for mut b in builds {
            // A build aborted with another evaluation is wanted again: queue it anew.
            if b.status == BuildStatus::Aborted {
                self.move_build(org, &b.drv_path, BuildStatus::Queued).await?;
                b.status = BuildStatus::Queued;
            }
            if b.status != BuildStatus::Queued {
                continue;
            }
            let Some(d) = derivations.get(&b.drv_path) else {
                continue;
            };
            if self.outputs_cached(&caches, d).await? {
                self.move_build(org, &b.drv_path, BuildStatus::Substituted).await?;
                continue;
            }
            to_queue.push(d);
        }
        if let Some((job, worker)) = pin {
            let drvs = to_queue.iter().map(|d| d.drv_path.clone()).collect();
            self.pins.pin(job, worker, org, evaluation_id, drvs);
        }
        for d in to_queue {
            let job = JobRecord {
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
            };
            self.storage.enqueue_job(&job).await?;
        }
        self.settle_evaluation(evaluation_id).await
    }

    /// Whether every output of the derivation is in one of `caches` (the organization's).
    async fn outputs_cached(&self, caches: &[Cache], d: &Derivation) -> Result<bool> {
        if d.outputs.is_empty() {
            return Ok(false);
        }
        for path in d.outputs.values() {
            let hash = path.trim_start_matches("/nix/store/").get(..32).unwrap_or_default();
            let mut found = false;
            for c in caches {
                if self.storage.cached_path(c.id, hash).await?.is_some() {
                    found = true;
                    break;
                }
            }
            if !found {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn move_build(&self, org: OrgId, drv: &str, to: BuildStatus) -> Result<()> {
        let Some(mut b) = self.storage.build(org, drv).await? else {
            return Ok(());
        };
        if b.move_to(to, self.clock.now()) {
            self.storage.update_build(&b).await?;
        }
        Ok(())
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

    /// Marks every queued build depending (transitively) on `failed` as DependencyFailed.
    async fn fail_dependents(&self, org: OrgId, failed: &str) -> Result<()> {
        let mut todo = vec![failed.to_owned()];
        let mut seen = HashSet::new();
        while let Some(drv) = todo.pop() {
            if !seen.insert(drv.clone()) {
                continue;
            }
            for e in self.storage.evaluations_needing(org, &drv).await? {
                for b in self.storage.builds_of_evaluation(e).await? {
                    if b.status != BuildStatus::Queued {
                        continue;
                    }
                    let depends = self
                        .derivation(org, &b.drv_path)
                        .await?
                        .is_some_and(|d| d.inputs.contains(&drv));
                    if depends {
                        self.move_build(org, &b.drv_path, BuildStatus::DependencyFailed).await?;
                        todo.push(b.drv_path.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// Completes (or fails) an evaluation whose builds have all ended.
    async fn settle_evaluation(&self, id: EvaluationId) -> Result<()> {
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
        if self.storage.count_builds(id, &unfinished).await? > 0 {
            return Ok(());
        }
        let without_outputs = [BuildStatus::Failed, BuildStatus::Aborted, BuildStatus::DependencyFailed];
        let ok = e.errors.is_empty() && self.storage.count_builds(id, &without_outputs).await? == 0;
        self.set_evaluation_status(
            id,
            if ok {
                EvaluationStatus::Completed
            } else {
                EvaluationStatus::Failed
            },
        )
        .await
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Aborts an evaluation (`abort_evaluation`): it ends Aborted, its queued builds that no other live
    /// evaluation needs end Aborted too, and the jobs running for it are answered for the caller to stop
    /// (`workers` are the connected ones, whose assigned jobs are looked at).
    pub async fn abort_evaluation(
        &self,
        caller: &Caller,
        id: EvaluationId,
        workers: &[WorkerInfo],
    ) -> Result<Vec<(WorkerId, JobId)>> {
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
        // Only links proved for the organization hear of its jobs (another tenant's connection under the same
        // worker id must not learn their ids).
        let workers: Vec<WorkerId> = workers
            .iter()
            .filter(|w| w.orgs.contains(&o.id))
            .map(|w| w.id)
            .collect();
        self.stop_evaluation(e, o.id, &workers).await
    }

    /// Ends a live evaluation Aborted and stops what only it needs (see `abort_evaluation`).
    async fn stop_evaluation(
        &self,
        mut e: Evaluation,
        org: OrgId,
        workers: &[WorkerId],
    ) -> Result<Vec<(WorkerId, JobId)>> {
        let id = e.id;
        let from = e.status;
        if !e.move_to(EvaluationStatus::Aborted, self.clock.now()) {
            return Err(ServiceError::Internal(format!(
                "an evaluation cannot go from {} to Aborted",
                e.status.as_str()
            )));
        }
        self.storage.update_evaluation(&e).await?;
        self.report_status_change(from, &e).await?;
        self.abandon_builds(id, org, workers).await
    }

    /// Ends Aborted the unfinished builds only the (ended) evaluation needs, and its queued jobs; answers its
    /// jobs running on `workers`, for the caller to stop. Without workers, builds already running go on:
    /// their outputs are still useful.
    async fn abandon_builds(
        &self,
        id: EvaluationId,
        org: OrgId,
        workers: &[WorkerId],
    ) -> Result<Vec<(WorkerId, JobId)>> {
        let mut abandoned: HashSet<String> = HashSet::new();
        for b in self.storage.builds_of_evaluation(id).await? {
            if b.status.is_terminal() || (workers.is_empty() && b.status == BuildStatus::Building) {
                continue;
            }
            let mut needed_elsewhere = false;
            for other in self.storage.evaluations_needing(org, &b.drv_path).await? {
                if other != id
                    && self
                        .storage
                        .evaluation(other)
                        .await?
                        .is_some_and(|x| !x.status.is_terminal())
                {
                    needed_elsewhere = true;
                    break;
                }
            }
            if !needed_elsewhere {
                abandoned.insert(b.drv_path.clone());
            }
        }
        let mut running = Vec::new();
        for job in self.storage.queued_jobs(10_000).await? {
            if job.org_id == org && self.job_is_for(&job, id, &abandoned) {
                self.storage.cancel_queued_job(job.id).await?;
            }
        }
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
            self.move_build(org, drv, BuildStatus::Aborted).await?;
        }
        Ok(running)
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
        let now = self.clock.now();
        for b in again {
            self.move_build(o.id, &b.drv_path, BuildStatus::Queued).await?;
            let Some(d) = self.derivation(o.id, &b.drv_path).await? else {
                continue;
            };
            let job = JobRecord {
                id: JobId::new(),
                org_id: o.id,
                kind: JobKind::Build {
                    derivation: d.drv_path.clone(),
                    system: d.system.clone(),
                    required_features: d.required_features.clone(),
                },
                state: JobState::Queued,
                created_at: now,
                attempts: 0,
            };
            self.storage.enqueue_job(&job).await?;
        }
        let from = e.status;
        e.move_to(EvaluationStatus::Building, now);
        e.errors.retain(|x| !x.attribute.is_empty());
        self.storage.update_evaluation(&e).await?;
        self.report_status_change(from, &e).await?;
        Ok(e)
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Polls one project: when its branch points at a commit its newest evaluation did not evaluate, that
    /// commit is queued (trigger Poll). Answers the evaluation queued, if any.
    pub async fn poll_project<G: crate::ports::git::Git>(
        &self,
        git: &G,
        project: &crate::model::Project,
    ) -> Result<Option<Evaluation>> {
        let head = branch_head(git, project)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let Some((head, branch)) = head else { return Ok(None) };
        let newest = self.storage.evaluations(project.id, 1).await?;
        if newest.first().is_some_and(|e| e.commit == head) {
            return Ok(None);
        }
        Ok(Some(
            self.queue_evaluation_on(project.org_id, project, &head, branch, EvaluationTrigger::Poll)
                .await?,
        ))
    }
}

/// The head of the project's branch, or of the repository's default branch when the project has none, with
/// the branch it is on (`None` only when the server does not name its default branch); `Ok(None)` when that
/// branch does not exist or has no commit.
async fn branch_head<G: crate::ports::git::Git>(
    git: &G,
    project: &crate::model::Project,
) -> std::result::Result<Option<(String, Option<String>)>, crate::ports::git::GitError> {
    match &project.branch {
        Some(b) => Ok(git
            .head(&project.repository, Some(b))
            .await?
            .map(|commit| (commit, Some(b.clone())))),
        None => Ok(git
            .remote_head(&project.repository)
            .await?
            .map(|h| (h.commit, h.branch))),
    }
}
