//! Handing queued jobs to connected workers: one round decides with the scheduler ([`scheduler::plan`]) over
//! a snapshot of the queue and the fleet, records the decisions, and sends the jobs.

use super::{Gradient, JOB_TOKEN_LIFETIME, Result};
use crate::model::{JobId, JobKind, JobRecord, JobState};
use crate::ports::storage::Run;
use crate::ports::{Clock, Storage};
use crate::proto::{self, PushTarget};
use crate::scheduler::{self, QueueEntry, Snapshot};
use crate::status::{BuildStatus, EvaluationStatus};
use crate::{OrgId, WorkerId};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// An org's substituter URLs, their public keys, and its push cache with its URL.
type OrgCaches = (Vec<String>, Vec<String>, Option<(crate::CacheId, String)>);

/// Jobs dispatch rounds assigned to workers but never sent, and could neither end nor put back in the queue
/// (storage failed): the next round ends them first (see `Gradient::end_stranded`). Shared by clones.
#[derive(Default)]
pub struct Stranded(Mutex<Vec<(WorkerId, JobRecord)>>);

impl Stranded {
    fn keep(&self, worker: WorkerId, job: JobRecord) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((worker, job));
    }

    fn take(&self) -> Vec<(WorkerId, JobRecord)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A job a dispatch round handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub worker: WorkerId,
    /// The organization the job is for.
    pub org: OrgId,
    pub job: proto::Job,
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// One dispatch round: decides who runs what now among the connected workers, records it, and hands the
    /// jobs out through the fleet. Queued builds that can never run (an input failed) end DependencyFailed,
    /// and ones whose outputs are already available end Substituted. A worker that left before its job
    /// reached it is lost: its jobs go back to the queue. Answers the jobs handed out.
    pub async fn dispatch(&self) -> Result<Vec<Dispatched>> {
        // An evaluation's builds being queued now are handed out once all are (it wakes the dispatcher then), so
        // that a chain goes out whole; a queueing that takes long does not hold the others' work for longer.
        if self
            .pins
            .holds_dispatch(self.clock.now(), super::QUEUEING_HOLDS_DISPATCH)
        {
            return Ok(Vec::new());
        }
        // Jobs an earlier round left assigned but never sent (storage failed) end first: their workers' slots.
        self.end_stranded().await?;
        let workers = self.fleet.connected();
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
        for record in self.storage.queued_jobs(super::DISPATCH_WINDOW).await? {
            let mut entry = self.entry(&record).await?;
            if let scheduler::Needs::Build(b) = &entry.needs {
                entry.pinned_to = pinned.get(&(record.org_id, b.drv_path.clone())).copied();
            }
            jobs.push(entry);
            queued.insert(record.id, record);
        }
        // Every decision of a round is about a queued job: with none, the workers' jobs need not be read (a
        // round runs at each report of a running batch).
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let mut built_on: HashMap<OrgId, HashMap<String, WorkerId>> = HashMap::new();
        for w in &workers {
            for record in self.storage.jobs_assigned_to(w.id).await? {
                if let JobKind::Build { derivation, .. } = &record.kind
                    && w.pushing.contains(&record.id)
                {
                    built_on
                        .entry(record.org_id)
                        .or_default()
                        .insert(derivation.clone(), w.id);
                }
                jobs.push(self.entry(&record).await?);
            }
        }
        let (available, failed) = self.input_statuses(&mut jobs, &built_on).await?;
        let plan = scheduler::plan(&Snapshot {
            jobs,
            workers,
            available,
            failed,
            built_on,
        });
        let now = self.clock.now();
        let mut out = Vec::new();
        let mut caches: HashMap<OrgId, OrgCaches> = HashMap::new();
        // Each job's message is made before any is assigned: a failure here leaves them queued, not assigned to
        // a worker that never hears of them.
        let mut decided: Vec<(JobRecord, WorkerId, proto::Job)> = Vec::new();
        for (job_id, worker) in plan.assignments {
            let Some(record) = queued.remove(&job_id) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = caches.entry(record.org_id) {
                slot.insert(self.org_caches(record.org_id).await?);
            }
            let batch_inputs = plan.batch_inputs.get(&job_id).cloned().unwrap_or_default();
            let Some(job) = self
                .wire_job(&record, (worker, now), &caches[&record.org_id], batch_inputs)
                .await?
            else {
                // What it refers to is gone (its evaluation was deleted): it ends without a worker.
                self.storage.cancel_queued_job(job_id).await?;
                continue;
            };
            decided.push((record, worker, job));
        }
        // The round's assignments in one write (each still a compare-and-set: a job taken meanwhile is left
        // out), then what the jobs do moves, in one write per organization.
        let assignments: Vec<(JobId, WorkerId)> = decided.iter().map(|(r, w, _)| (r.id, *w)).collect();
        let assigned: HashSet<JobId> = if assignments.is_empty() {
            HashSet::new()
        } else {
            self.storage.assign_jobs(&assignments, now).await?.into_iter().collect()
        };
        let recorded: Vec<(JobRecord, proto::Job)> = decided
            .into_iter()
            .filter(|(r, ..)| assigned.contains(&r.id))
            .map(|(record, worker, job)| {
                let assigned = JobRecord {
                    state: JobState::Assigned { worker, since: now },
                    ..record
                };
                (assigned, job)
            })
            .collect();
        let withheld = match self.mark_started(&recorded).await {
            Ok(withheld) => withheld,
            Err(e) => {
                // Not left assigned to workers that never hear of them.
                let mut per_worker: HashMap<WorkerId, Vec<JobRecord>> = HashMap::new();
                for (r, _) in recorded {
                    if let JobState::Assigned { worker, .. } = r.state {
                        per_worker.entry(worker).or_default().push(r);
                    }
                }
                for (worker, records) in per_worker {
                    let ids: Vec<JobId> = records.iter().map(|r| r.id).collect();
                    if self.requeue(worker, &records, &ids).await.is_err() {
                        // Left with the worker: the next round ends them (`end_stranded`).
                        for r in records {
                            self.strand(worker, r);
                        }
                    }
                }
                return Err(e);
            }
        };
        // Handed out once all are recorded, back to back: a worker gets the round's jobs as one burst, which it
        // builds together (a chain in one Nix run) instead of starting a run with the first few. Each build says
        // how many more of the round's builds follow to its worker (at most: one withheld below after counting
        // makes it an overcount), so the worker knows when the burst is in. Nothing is awaited in this loop: the
        // jobs not handed out are ended (or requeued) after it, so a storage error there cannot leave the rest of
        // the round assigned but never sent.
        let mut builds_left: HashMap<WorkerId, u32> = HashMap::new();
        for (assigned, job) in &recorded {
            if let (JobState::Assigned { worker, .. }, proto::Job::Build { .. }) = (&assigned.state, job)
                && !withheld.contains(&assigned.id)
            {
                *builds_left.entry(*worker).or_default() += 1;
            }
        }
        let mut ended: Vec<(WorkerId, JobRecord)> = Vec::new();
        let mut unsent: Vec<(WorkerId, JobRecord)> = Vec::new();
        for (assigned, mut job) in recorded {
            let JobState::Assigned { worker, .. } = assigned.state else {
                continue;
            };
            // What it was for ended between the round's read and its start (aborted, failed, substituted), or
            // its abort came since (its token revoked; the Abort, sent already, meant nothing to the worker
            // then): it ends here, never reaching the worker with a token the abort revoked.
            if withheld.contains(&assigned.id) || self.memo.revoked(assigned.id) {
                ended.push((worker, assigned));
                continue;
            }
            if let proto::Job::Build { round_rest, .. } = &mut job
                && let Some(left) = builds_left.get_mut(&worker)
            {
                *left = left.saturating_sub(1);
                *round_rest = Some(*left);
            }
            if self.fleet.assign(worker, assigned.org_id, job.clone()) {
                out.push(Dispatched {
                    worker,
                    org: assigned.org_id,
                    job,
                });
            } else {
                // Its link ended (or lost the organization) between the snapshot and now: the job goes back.
                unsent.push((worker, assigned));
            }
        }
        let mut first_error = None;
        for (worker, assigned) in ended {
            if let Err(e) = self.end_withheld(worker, &assigned).await {
                first_error.get_or_insert(e);
            }
        }
        for (worker, assigned) in unsent {
            if let Err(e) = self
                .requeue(worker, std::slice::from_ref(&assigned), &[assigned.id])
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        for job_id in plan.dependency_failed {
            self.settle_without_worker(job_id, BuildStatus::DependencyFailed)
                .await?;
        }
        for job_id in plan.substituted {
            self.settle_without_worker(job_id, BuildStatus::Substituted).await?;
        }
        Ok(out)
    }

    /// Jobs were assigned to workers: their evaluations are being fetched, their builds are building (moved in
    /// one compare-and-set write per organization, from Queued). Answers the jobs not to hand out: those whose
    /// build or evaluation was moved meanwhile (aborted, failed, substituted) and is not running now.
    async fn mark_started(&self, recorded: &[(JobRecord, proto::Job)]) -> Result<HashSet<JobId>> {
        let mut withheld = HashSet::new();
        let mut building: HashMap<OrgId, Vec<(String, BuildStatus, BuildStatus)>> = HashMap::new();
        for (record, _) in recorded {
            match &record.kind {
                JobKind::Evaluate { evaluation_id } => {
                    if !self
                        .advance_evaluation(*evaluation_id, EvaluationStatus::Fetching)
                        .await?
                    {
                        withheld.insert(record.id);
                    }
                }
                JobKind::Build { derivation, .. } => building.entry(record.org_id).or_default().push((
                    derivation.clone(),
                    BuildStatus::Queued,
                    BuildStatus::Building,
                )),
            }
        }
        for (org, moves) in building {
            let now = self.move_builds(org, &moves).await?;
            for (record, _) in recorded {
                if let JobKind::Build { derivation, .. } = &record.kind
                    && record.org_id == org
                    && now.get(derivation).is_some_and(|s| *s != BuildStatus::Building)
                {
                    withheld.insert(record.id);
                }
            }
        }
        Ok(withheld)
    }

    /// Ends a job withheld from its worker (see [`Self::dispatch`]). Its build may have ended otherwise meanwhile
    /// (substituted by another evaluation's planning): the evaluations needing it settle now, not at the next
    /// reconciliation. Or it was aborted and restarted during the round (the restart found this job active, so
    /// queued nothing) and this round's start moved it Building: it goes back to Queued with a job of its own.
    /// When the job cannot be ended (storage failed), it is put back in the queue as an unsent one is, and when
    /// that fails too it is left to the next round (`end_stranded`): never left with a worker that never heard of
    /// it, holding one of its slots until it reconnects.
    async fn end_withheld(&self, worker: WorkerId, assigned: &JobRecord) -> Result<()> {
        self.memo.forget_job(assigned.id);
        let Some(run) = Run::of(assigned) else {
            return Ok(());
        };
        let ended = match self.storage.finish_job(run, false).await {
            Ok(ended) => ended,
            Err(e) => {
                if self
                    .requeue(worker, std::slice::from_ref(assigned), &[assigned.id])
                    .await
                    .is_err()
                {
                    self.strand(worker, assigned.clone());
                }
                return Err(e.into());
            }
        };
        if let JobKind::Build { derivation, .. } = &assigned.kind {
            // Read first: a build in any other status is not this round's to move (no lost move to report). Nor
            // is one whose job left this run meanwhile (its worker was lost, and the job maybe handed out again,
            // even to the same worker): what took the job back moved its build.
            let building = ended
                && self
                    .storage
                    .build(assigned.org_id, derivation)
                    .await?
                    .is_some_and(|b| b.status == BuildStatus::Building);
            // The evaluations needing it settle even when putting it back fails (reconciliation does that then).
            let requeued = if building {
                self.move_build(assigned.org_id, derivation, BuildStatus::Building, BuildStatus::Queued)
                    .await
            } else {
                Ok(false)
            };
            let requeued = match requeued {
                Ok(_) if ended => self.queue_again(assigned).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            self.settle_evaluations_needing(assigned.org_id, derivation).await?;
            requeued?;
        }
        // An evaluation still to be evaluated (its round failed before sending the job, see `strand`) gets its
        // job back, keeping its place in the queue; a withheld one has ended.
        if let JobKind::Evaluate { evaluation_id } = assigned.kind
            && ended
            && self.advance_evaluation(evaluation_id, EvaluationStatus::Queued).await?
            && self
                .storage
                .evaluation(evaluation_id)
                .await?
                .is_some_and(|e| e.status == EvaluationStatus::Queued)
        {
            let again = JobRecord {
                id: JobId::new(),
                state: JobState::Queued,
                ..assigned.clone()
            };
            self.storage.enqueue_job(&again).await?;
            self.fleet.wake();
        }
        Ok(())
    }

    /// Keeps a job assigned to `worker` but never sent, which could be neither ended nor requeued, for the next
    /// round to end (`end_stranded`), and tells the observer.
    fn strand(&self, worker: WorkerId, assigned: JobRecord) {
        self.observer.job_stranded(assigned.id, worker);
        self.stranded.keep(worker, assigned);
    }

    /// Ends the jobs earlier rounds left assigned but never sent (see [`Self::end_withheld`]), each only while it
    /// is still in that run (a worker lost meanwhile took it back already). One that fails again is kept for the
    /// next round; the first error is answered once all were tried.
    async fn end_stranded(&self) -> Result<()> {
        let mut first_error = None;
        for (worker, assigned) in self.stranded.take() {
            if let Err(e) = self.end_withheld(worker, &assigned).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Ends a queued build job the scheduler found nothing to run for: its build takes `status`, the job
    /// ends, a failure reaches what depends on it, and the evaluations needing it settle.
    async fn settle_without_worker(&self, job_id: JobId, status: BuildStatus) -> Result<()> {
        let Some(JobRecord {
            org_id,
            kind: JobKind::Build { derivation, .. },
            ..
        }) = self.storage.job(job_id).await?
        else {
            return Ok(());
        };
        if !self.storage.cancel_queued_job(job_id).await? {
            return Ok(());
        }
        let moved = self
            .move_build(org_id, &derivation, BuildStatus::Queued, status)
            .await?;
        // One moved otherwise meanwhile was followed by whoever moved it.
        if moved && !status.provides_outputs() {
            self.fail_dependents(org_id, &derivation).await?;
        }
        self.settle_evaluations_needing(org_id, &derivation).await
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

    /// The caches the org reads as substituters with their keys, and its push cache (where its jobs push).
    async fn org_caches(&self, org: OrgId) -> Result<OrgCaches> {
        let mut urls = Vec::new();
        let mut keys = Vec::new();
        let mut push = None;
        for s in self.storage.subscriptions(org).await? {
            if !s.readable() {
                continue;
            }
            let url = format!("{}/cache/{}", self.settings.public_url, s.cache.name);
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
    /// `assignment` is the worker the job is about to be assigned to, and when; `batch_inputs` a build's
    /// inputs that worker builds too (see [`scheduler::Plan::batch_inputs`]).
    async fn wire_job(
        &self,
        record: &JobRecord,
        assignment: (WorkerId, crate::model::Timestamp),
        caches: &OrgCaches,
        batch_inputs: Vec<String>,
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
                // A fork's pull request is code from outside the organization: its flake could name the
                // organization's other private repositories as inputs, fetched with the credential.
                let credential = if e.pull_request.as_ref().is_some_and(|pr| pr.fork) {
                    None
                } else {
                    self.repository_credential(p.org_id, &p.repository).await?
                };
                Some(proto::Job::Evaluate {
                    job_id: record.id,
                    repository: p.repository.clone(),
                    commit: e.commit.clone(),
                    git_ref: e.fetch_ref(),
                    wildcard: p.wildcard.clone(),
                    flake_input_overrides: p
                        .flake_input_overrides
                        .clone()
                        .into_iter()
                        .map(|(k, v)| (k, v.into()))
                        .collect(),
                    push,
                    credential,
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
                    batch_inputs,
                    // Told when the round is recorded (see `dispatch`).
                    round_rest: None,
                })
            }
        })
    }
}
