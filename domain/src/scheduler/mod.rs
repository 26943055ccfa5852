//! Which worker runs which job: pure decisions over a snapshot of the queue and the connected workers.
//!
//! Jobs are evaluations (fetch + evaluate a flake at a commit) and builds. A build job is per derivation and
//! organization, not per evaluation: however many of an organization's evaluations need a derivation, it has
//! one active job (the queue's `enqueue_job` keeps that atomic; [`plan`] never runs two builds of one
//! derivation for one organization at once either). The server loads a [`Snapshot`] from storage (so a
//! restart loses nothing), asks [`plan`], records the decisions, and sends `Assign` frames.

mod liveness;
mod pins;

pub use liveness::{assignment_is_stale, jobs_to_requeue, orphaned_jobs, reclaimable};
pub use pins::Pins;

use crate::model::{Capabilities, JobId, JobKind, JobRecord, JobState, Timestamp};
use crate::{OrgId, WorkerId};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

/// A job as the scheduler sees it: the queue's record plus what only scheduling needs (a build's inputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: JobId,
    /// Only workers registered with this organization take the job.
    pub org: OrgId,
    /// Oldest first; a requeued job keeps its place.
    pub queued_at: Timestamp,
    pub needs: Needs,
    /// `Queued` jobs are candidates; `Assigned` ones hold a slot of their worker; finished ones are ignored.
    pub state: JobState,
    /// Only this worker may take the job (a build whose `.drv` files only its evaluating worker has yet).
    pub pinned_to: Option<WorkerId>,
}

impl QueueEntry {
    /// The entry for a queue record; `inputs` are the `.drv` paths a build's derivation takes outputs from
    /// (ignored for evaluations).
    pub fn from_record(record: &JobRecord, inputs: Vec<String>) -> Self {
        let needs = match &record.kind {
            JobKind::Evaluate { .. } => Needs::Evaluation,
            JobKind::Build {
                derivation,
                system,
                required_features,
            } => Needs::Build(BuildNeeds {
                drv_path: derivation.clone(),
                system: system.clone(),
                required_features: required_features.clone(),
                inputs,
            }),
        };
        Self {
            id: record.id,
            org: record.org_id,
            queued_at: record.created_at,
            needs,
            state: record.state.clone(),
            pinned_to: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Needs a worker with the `fetch` and `eval` capabilities and a free evaluation slot.
    Evaluation,
    /// Needs a worker with the `build` capability, the system, the features and a free build slot.
    Build(BuildNeeds),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildNeeds {
    /// `/nix/store/…-name.drv`
    pub drv_path: String,
    /// `builtin` runs on any worker.
    pub system: String,
    pub required_features: Vec<String>,
    /// The `.drv` paths whose outputs must be available first.
    pub inputs: Vec<String>,
}

/// A connected worker, as its `Hello` and `Welcome` described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: WorkerId,
    /// The AND of the worker's and the server's.
    pub capabilities: Capabilities,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    pub max_concurrent_builds: u32,
    pub max_concurrent_evaluations: u32,
    /// Build jobs it takes beyond its build slots (see `proto::Hello::queued_builds`).
    pub queued_builds: u32,
    /// The organizations of the registrations this link was authorized for.
    pub orgs: BTreeSet<OrgId>,
    /// Its build jobs that are built and only pushing their outputs: they hold no build slot, so the worker
    /// gets its next builds while the uploads go on.
    pub pushing: HashSet<JobId>,
}

/// Everything a scheduling decision looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Active jobs (queued and assigned); others are ignored.
    pub jobs: Vec<QueueEntry>,
    pub workers: Vec<WorkerInfo>,
    /// Per organization, the `.drv` paths whose outputs its builders can substitute: built or substituted by
    /// one of its jobs, or already in one of its caches.
    pub available: HashMap<OrgId, HashSet<String>>,
    /// Per organization, the `.drv` paths whose build ended without outputs (failed, aborted, dependency
    /// failed) and was not restarted.
    pub failed: HashMap<OrgId, HashSet<String>>,
    /// Per organization, the `.drv` paths built by a worker that is still pushing their outputs: that worker
    /// has them already, so a build waiting only for them may run there at once instead of after the push
    /// (a chain of builds does not wait for every link's upload).
    pub built_on: HashMap<OrgId, HashMap<String, WorkerId>>,
}

/// What to do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Send `Assign` for these (and record them with the queue's `assign_job`).
    pub assignments: Vec<(JobId, WorkerId)>,
    /// For assigned builds whose inputs are not built yet but handed to the same worker (in this round or an
    /// earlier one): those inputs' `.drv` paths. The worker builds the job in the same Nix run as them, or
    /// after the run building them (see `proto::Job::Build::batch_inputs`). Builds absent here need nothing
    /// of their worker.
    pub batch_inputs: HashMap<JobId, Vec<String>>,
    /// Queued builds with nothing to do: their outputs are already available to their organization.
    pub substituted: Vec<JobId>,
    /// Queued builds that can never run: an input's build failed.
    pub dependency_failed: Vec<JobId>,
}

/// The assignments of [`plan`].
pub fn schedule(snapshot: &Snapshot) -> Vec<(JobId, WorkerId)> {
    plan(snapshot).assignments
}

/// Decides, for every queued job, oldest first (ties by id): settle it without a worker (substituted,
/// dependency failed), assign it, or leave it queued (inputs not ready yet, its derivation is already being
/// built for its organization, or no worker fits). Among the workers that fit and have a free slot of the
/// job's kind, the one with the most such free slots gets it (ties: the lowest worker id), which spreads work;
/// a build no worker has a free slot for goes to the worker with the most room in slots and queue together
/// (see [`WorkerInfo::queued_builds`]), to be built in its batches.
/// A build that is only pushing its outputs holds no slot (see [`WorkerInfo::pushing`]).
///
/// A build whose inputs are not available yet may still go to a worker that has them or gets them: every
/// missing input was built there and is being pushed ([`Snapshot::built_on`]), or its build is assigned to
/// that worker, earlier or in this very round. Nix then builds the inputs and the build in one run, so a chain
/// of dependent builds is handed to one worker at once instead of one link per round trip. The decisions are
/// repeated until nothing more can be assigned (a fixpoint), so the order the links were queued in does not
/// matter; such a build goes to that worker only, within its slots and queue, pins and organizations still
/// applying.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut free: HashMap<WorkerId, Slots> = snapshot.workers.iter().map(|w| (w.id, Slots::of(w))).collect();
    let mut building: HashSet<(OrgId, &str)> = HashSet::new();
    // The organization's builds assigned to a worker and not built yet: a build needing them may join them.
    let mut assigned_to: HashMap<(OrgId, &str), WorkerId> = HashMap::new();
    let pushing: HashSet<(WorkerId, JobId)> = snapshot
        .workers
        .iter()
        .flat_map(|w| w.pushing.iter().map(|j| (w.id, *j)))
        .collect();
    for job in &snapshot.jobs {
        if let JobState::Assigned { worker, .. } = job.state {
            let built = pushing.contains(&(worker, job.id));
            if let Some(slots) = free.get_mut(&worker)
                && !built
            {
                slots.take(&job.needs);
            }
            if let Needs::Build(b) = &job.needs {
                building.insert((job.org, &b.drv_path));
                if !built && free.contains_key(&worker) {
                    assigned_to.insert((job.org, &b.drv_path), worker);
                }
            }
        }
    }

    let mut queued: Vec<&QueueEntry> = snapshot.jobs.iter().filter(|j| j.state == JobState::Queued).collect();
    queued.sort_by_key(|j| (j.queued_at, j.id));

    let mut plan = Plan::default();
    loop {
        // Builds whose inputs were not ready: tried again once this pass assigned something.
        let mut waiting = Vec::new();
        let assigned_before = plan.assignments.len();
        for job in queued {
            // A build whose missing inputs one worker has (or gets) runs on that worker only.
            let mut only_on = None;
            let mut joins = Vec::new();
            if let Needs::Build(b) = &job.needs {
                if has(&snapshot.available, job.org, &b.drv_path) {
                    plan.substituted.push(job.id);
                    continue;
                }
                if b.inputs.iter().any(|i| has(&snapshot.failed, job.org, i)) {
                    plan.dependency_failed.push(job.id);
                    continue;
                }
                if building.contains(&(job.org, b.drv_path.as_str())) {
                    continue;
                }
                match local_inputs(snapshot, &assigned_to, job.org, b) {
                    Ready::Everywhere => {}
                    Ready::On(worker, inputs) => {
                        only_on = Some(worker);
                        joins = inputs;
                    }
                    Ready::No => {
                        waiting.push(job);
                        continue;
                    }
                }
            }
            // A build held for one worker waits for a free slot there rather than its queue, when another
            // worker could take it once released (its pin ends, or the inputs' push does); with no such worker,
            // or when it joins inputs that worker builds (they may well be in its queue), the queue is as good.
            let held_to = job.pinned_to.or(only_on);
            let slots_only = joins.is_empty()
                && held_to.is_some_and(|p| snapshot.workers.iter().any(|w| w.id != p && could_run(w, job)));
            let best = snapshot
                .workers
                .iter()
                .filter(|w| fits(w, job) && only_on.is_none_or(|o| o == w.id))
                .filter_map(|w| Some((w.id, free.get(&w.id)?.rank_for(&job.needs, slots_only)?)))
                .max_by_key(|&(id, rank)| (rank, Reverse(id)));
            if let Some((worker, _)) = best {
                if let Some(slots) = free.get_mut(&worker) {
                    slots.take(&job.needs);
                }
                if let Needs::Build(b) = &job.needs {
                    building.insert((job.org, &b.drv_path));
                    assigned_to.insert((job.org, &b.drv_path), worker);
                }
                if !joins.is_empty() {
                    plan.batch_inputs.insert(job.id, joins);
                }
                plan.assignments.push((job.id, worker));
            }
        }
        if waiting.is_empty() || plan.assignments.len() == assigned_before {
            break;
        }
        queued = waiting;
    }
    plan
}

/// Where a build's inputs are.
enum Ready {
    /// Every input is available to any worker of its organization.
    Everywhere,
    /// The inputs not available yet are all on this worker: built and being pushed, or assigned to it (those
    /// are listed: the build joins them).
    On(WorkerId, Vec<String>),
    No,
}

fn local_inputs(
    snapshot: &Snapshot,
    assigned_to: &HashMap<(OrgId, &str), WorkerId>,
    org: OrgId,
    b: &BuildNeeds,
) -> Ready {
    let mut on = None;
    let mut joins = Vec::new();
    for input in b.inputs.iter().filter(|i| !has(&snapshot.available, org, i)) {
        let w = match assigned_to.get(&(org, input.as_str())) {
            Some(w) => {
                joins.push(input.clone());
                *w
            }
            None => match snapshot.built_on.get(&org).and_then(|m| m.get(input)) {
                Some(w) => *w,
                None => return Ready::No,
            },
        };
        if on.is_some_and(|o| o != w) {
            return Ready::No;
        }
        on = Some(w);
    }
    on.map_or(Ready::Everywhere, |w| Ready::On(w, joins))
}

/// Whether the worker may and can run the job, slots aside.
pub fn fits(worker: &WorkerInfo, job: &QueueEntry) -> bool {
    job.pinned_to.is_none_or(|w| w == worker.id) && could_run(worker, job)
}

/// Whether the worker may and can run the job, slots and pins aside.
fn could_run(worker: &WorkerInfo, job: &QueueEntry) -> bool {
    if !worker.orgs.contains(&job.org) {
        return false;
    }
    let caps = worker.capabilities;
    match &job.needs {
        Needs::Evaluation => caps.fetch && caps.eval,
        Needs::Build(b) => {
            caps.build
                && (b.system == "builtin" || worker.systems.contains(&b.system))
                && b.required_features.iter().all(|f| worker.features.contains(f))
        }
    }
}

fn has(per_org: &HashMap<OrgId, HashSet<String>>, org: OrgId, drv: &str) -> bool {
    per_org.get(&org).is_some_and(|s| s.contains(drv))
}

#[derive(Clone, Copy, Debug)]
struct Slots {
    builds: u32,
    /// Builds it takes beyond its slots (taken only once its slots are).
    queued: u32,
    evaluations: u32,
}

impl Slots {
    fn of(w: &WorkerInfo) -> Self {
        Self {
            builds: w.max_concurrent_builds,
            queued: if w.max_concurrent_builds == 0 {
                0
            } else {
                w.queued_builds
            },
            evaluations: w.max_concurrent_evaluations,
        }
    }

    /// How the worker ranks for a job: free slots first (a free slot beats any queue), then free slots and
    /// room in its queue together (only free slots count when `slots_only`); `None` when it has neither.
    fn rank_for(&self, needs: &Needs, slots_only: bool) -> Option<(bool, u32, u32)> {
        match needs {
            Needs::Evaluation => (self.evaluations > 0).then_some((true, self.evaluations, self.evaluations)),
            Needs::Build(_) => {
                let total = self.builds + if slots_only { 0 } else { self.queued };
                (total > 0).then_some((self.builds > 0, self.builds, total))
            }
        }
    }

    fn take(&mut self, needs: &Needs) {
        match needs {
            Needs::Evaluation => self.evaluations = self.evaluations.saturating_sub(1),
            Needs::Build(_) if self.builds > 0 => self.builds -= 1,
            Needs::Build(_) => self.queued = self.queued.saturating_sub(1),
        }
    }
}

#[cfg(test)]
mod tests;
