//! The fleet contract: what every `Fleet` implementation must do, as scenarios.
//!
//! A fleet is driven from two sides: the use cases call the port, and the workers' links connect and leave.
//! [`FleetHarness`] is the second side for a test (connect a worker as a link would, read what its
//! connection was given). Each scenario is a `pub async fn name<H: FleetHarness>(h: &H)` that panics with the
//! rule it found broken; [`fleet_contract!`](crate::fleet_contract) runs each on a fresh harness. A scenario
//! not listed in that macro is run by no implementation.

use gradient_domain::model::{Capabilities, JobId};
use gradient_domain::ports::Fleet;
use gradient_domain::proto::Job;
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::{OrgId, PeerId, WorkerId};

/// What a worker's connection was given, in the order it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    Assign(Box<Job>),
    Abort(JobId),
    /// The connection was closed because its last registration was revoked.
    Revoked,
}

/// The link side of a fleet, for tests.
pub trait FleetHarness: Send + Sync {
    type Fleet: Fleet;
    fn fleet(&self) -> &Self::Fleet;
    /// A worker's link proved `peers` (registrations, each in its organization) and offers what `info`
    /// says; `info.orgs` are those organizations.
    fn connect(&self, info: WorkerInfo, peers: &[(PeerId, OrgId)]);
    /// The worker's link ended.
    fn disconnect(&self, worker: WorkerId);
    /// What the worker's connection was given since the last call.
    fn delivered(&self, worker: WorkerId) -> Vec<Delivered>;
    /// Whether the fleet was woken since the last call.
    fn woken(&self) -> bool;
}

/// Runs the fleet contract suite: one `#[tokio::test]` per scenario, each on a fresh harness made by
/// `$fresh` (a function with no arguments answering a [`FleetHarness`]).
#[macro_export]
macro_rules! fleet_contract {
    ($fresh:expr) => {
        $crate::__fleet_contract_tests!(
            $fresh;
            connected_workers_are_listed_with_their_offer,
            jobs_reach_only_connected_workers,
            aborts_reach_only_connected_workers,
            revoking_the_last_registration_closes_the_link,
            revoking_a_registration_takes_its_organization_away,
            a_link_hears_only_of_the_organizations_it_proved,
            a_pushing_job_frees_its_slot_until_it_ends,
            a_wake_is_kept_until_taken,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __fleet_contract_tests {
    ($fresh:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let harness = ($fresh)();
                $crate::fleet::contract::$scenario(&harness).await;
            }
        )+
    };
}

/// A builder worker of `org` with two build slots.
pub fn worker(org: OrgId) -> WorkerInfo {
    WorkerInfo {
        id: WorkerId::new(),
        capabilities: Capabilities {
            fetch: true,
            eval: true,
            build: true,
            sign: false,
        },
        systems: vec!["x86_64-linux".into()],
        features: Vec::new(),
        max_concurrent_builds: 2,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        orgs: [org].into(),
        pushing: Default::default(),
    }
}

/// A build job as the dispatcher sends it.
pub fn build_job() -> Job {
    Job::Build {
        job_id: JobId::new(),
        drv_path: "/nix/store/00000000000000000000000000000000-x.drv".into(),
        outputs: Default::default(),
        substituters: Vec::new(),
        trusted_public_keys: Vec::new(),
        substituter_token: None,
        push: None,
        timeout_secs: None,
        batch_inputs: Vec::new(),
        round_rest: None,
    }
}

fn sorted(mut workers: Vec<WorkerInfo>) -> Vec<WorkerInfo> {
    workers.sort_by_key(|w| w.id);
    workers
}

pub async fn connected_workers_are_listed_with_their_offer<H: FleetHarness>(h: &H) {
    assert!(h.fleet().connected().is_empty(), "a fresh fleet has no worker");
    let org = OrgId::new();
    let (a, b) = (worker(org), worker(org));
    h.connect(a.clone(), &[(PeerId::new(), org)]);
    h.connect(b.clone(), &[(PeerId::new(), org)]);
    assert_eq!(
        sorted(h.fleet().connected()),
        sorted(vec![a.clone(), b.clone()]),
        "each connected worker is listed as its link described it"
    );
    h.disconnect(a.id);
    assert_eq!(
        h.fleet().connected(),
        vec![b],
        "a worker whose link ended is not listed"
    );
}

pub async fn jobs_reach_only_connected_workers<H: FleetHarness>(h: &H) {
    let org = OrgId::new();
    let w = worker(org);
    h.connect(w.clone(), &[(PeerId::new(), org)]);
    let job = build_job();
    assert!(
        h.fleet().assign(w.id, org, job.clone()),
        "a connected worker takes a job"
    );
    assert_eq!(h.delivered(w.id), vec![Delivered::Assign(Box::new(job.clone()))]);
    let absent = WorkerId::new();
    assert!(
        !h.fleet().assign(absent, org, job.clone()),
        "a worker that is not connected takes nothing"
    );
    h.disconnect(w.id);
    assert!(!h.fleet().assign(w.id, org, job), "nor does one whose link ended");
    assert!(h.delivered(w.id).is_empty());
}

pub async fn aborts_reach_only_connected_workers<H: FleetHarness>(h: &H) {
    let org = OrgId::new();
    let w = worker(org);
    h.connect(w.clone(), &[(PeerId::new(), org)]);
    let job = JobId::new();
    assert!(h.fleet().abort(w.id, org, job));
    assert_eq!(h.delivered(w.id), vec![Delivered::Abort(job)]);
    assert!(!h.fleet().abort(WorkerId::new(), org, job));
}

pub async fn revoking_the_last_registration_closes_the_link<H: FleetHarness>(h: &H) {
    let org = OrgId::new();
    let w = worker(org);
    let (p1, p2) = (PeerId::new(), PeerId::new());
    h.connect(w.clone(), &[(p1, org), (p2, org)]);
    h.fleet().revoke(p1);
    assert!(h.delivered(w.id).is_empty(), "one registration is left: the link stays");
    assert_eq!(h.fleet().connected().len(), 1, "and it still gets jobs");
    h.fleet().revoke(PeerId::new());
    assert!(
        h.delivered(w.id).is_empty(),
        "another registration's revocation changes nothing here"
    );
    h.fleet().revoke(p2);
    assert_eq!(
        h.delivered(w.id),
        vec![Delivered::Revoked],
        "the last one closes the link"
    );
    assert!(
        h.fleet().connected().is_empty(),
        "a link without registrations gets no jobs"
    );
    assert!(!h.fleet().assign(w.id, org, build_job()), "nor can one be handed to it");
}

pub async fn a_pushing_job_frees_its_slot_until_it_ends<H: FleetHarness>(h: &H) {
    let org = OrgId::new();
    let w = worker(org);
    h.connect(w.clone(), &[(PeerId::new(), org)]);
    let job = JobId::new();
    h.fleet().job_pushing(w.id, job);
    let listed = h.fleet().connected();
    assert!(
        listed[0].pushing.contains(&job),
        "the scheduler sees the job as only pushing"
    );
    h.fleet().job_ended(w.id, job);
    assert!(
        h.fleet().connected()[0].pushing.is_empty(),
        "an ended job is not pushing"
    );
    // Reports about workers that are gone change nothing and do not fail.
    h.fleet().job_pushing(WorkerId::new(), job);
    h.fleet().job_ended(WorkerId::new(), job);
}

pub async fn a_wake_is_kept_until_taken<H: FleetHarness>(h: &H) {
    assert!(!h.woken(), "a fresh fleet was not woken");
    h.fleet().wake();
    h.fleet().wake();
    assert!(h.woken(), "a wake is kept for the dispatcher");
    assert!(!h.woken(), "wakes close together are taken in one round");
}

pub async fn revoking_a_registration_takes_its_organization_away<H: FleetHarness>(h: &H) {
    let (a, b) = (OrgId::new(), OrgId::new());
    let mut w = worker(a);
    w.orgs = [a, b].into();
    let (pa, pb) = (PeerId::new(), PeerId::new());
    h.connect(w.clone(), &[(pa, a), (pb, b)]);
    h.fleet().revoke(pa);
    let listed = h.fleet().connected();
    assert_eq!(listed.len(), 1, "the link stays for its other registration");
    assert_eq!(
        listed[0].orgs,
        [b].into(),
        "but no longer offers the revoked one's organization"
    );
    assert!(!h.fleet().assign(w.id, a, build_job()), "nor takes its jobs");
    assert!(!h.fleet().abort(w.id, a, JobId::new()), "nor hears of them");
    assert!(
        h.fleet().assign(w.id, b, build_job()),
        "the other organization's jobs still reach it"
    );
}

pub async fn a_link_hears_only_of_the_organizations_it_proved<H: FleetHarness>(h: &H) {
    let (mine, theirs) = (OrgId::new(), OrgId::new());
    let w = worker(mine);
    h.connect(w.clone(), &[(PeerId::new(), mine)]);
    assert!(
        !h.fleet().assign(w.id, theirs, build_job()),
        "a job of an organization the link did not prove is not sent, whatever the worker id"
    );
    assert!(!h.fleet().abort(w.id, theirs, JobId::new()));
    assert!(h.delivered(w.id).is_empty());
}
