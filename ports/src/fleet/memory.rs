//! A fleet in memory, for the use cases' tests: workers are connected by the test, and what each was sent
//! is kept for the test to read.

use super::contract::{Delivered, FleetHarness};
use gradient_domain::model::JobId;
use gradient_domain::ports::Fleet;
use gradient_domain::proto::Job;
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::{OrgId, PeerId, WorkerId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct MemoryFleet {
    workers: Mutex<HashMap<WorkerId, Link>>,
    woken: AtomicBool,
}

struct Link {
    info: WorkerInfo,
    peers: BTreeMap<PeerId, OrgId>,
    delivered: Vec<Delivered>,
}

impl Link {
    fn proves(&self, org: OrgId) -> bool {
        self.peers.values().any(|o| *o == org)
    }
}

impl MemoryFleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Link>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects a worker proved for `peers` (registrations, each in its organization); the organizations it
    /// offers are theirs.
    pub fn connect(&self, mut info: WorkerInfo, peers: &[(PeerId, OrgId)]) {
        info.orgs = peers.iter().map(|(_, o)| *o).collect();
        self.lock().insert(
            info.id,
            Link {
                info,
                peers: peers.iter().copied().collect(),
                delivered: Vec::new(),
            },
        );
    }

    /// Connects a worker with one registration in each organization its `info` names.
    pub fn connect_proved(&self, info: WorkerInfo) {
        let peers: Vec<(PeerId, OrgId)> = info.orgs.iter().map(|o| (PeerId::new(), *o)).collect();
        self.connect(info, &peers);
    }

    /// The worker's link ended.
    pub fn disconnect(&self, worker: WorkerId) {
        self.lock().remove(&worker);
    }

    /// What the worker was given since the last call.
    pub fn delivered(&self, worker: WorkerId) -> Vec<Delivered> {
        self.lock()
            .get_mut(&worker)
            .map(|l| std::mem::take(&mut l.delivered))
            .unwrap_or_default()
    }

    /// Whether the fleet was woken since the last call.
    pub fn woken(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }

    fn deliver(&self, worker: WorkerId, org: OrgId, what: Delivered) -> bool {
        match self.lock().get_mut(&worker) {
            Some(l) if l.proves(org) => {
                l.delivered.push(what);
                true
            }
            _ => false,
        }
    }
}

impl Fleet for MemoryFleet {
    fn connected(&self) -> Vec<WorkerInfo> {
        self.lock()
            .values()
            .filter(|l| !l.peers.is_empty())
            .map(|l| l.info.clone())
            .collect()
    }

    fn assign(&self, worker: WorkerId, org: OrgId, job: Job) -> bool {
        self.deliver(worker, org, Delivered::Assign(Box::new(job)))
    }

    fn abort(&self, worker: WorkerId, org: OrgId, job: JobId) -> bool {
        self.deliver(worker, org, Delivered::Abort(job))
    }

    fn revoke(&self, peer: PeerId) {
        for l in self.lock().values_mut() {
            if l.peers.remove(&peer).is_none() {
                continue;
            }
            l.info.orgs = l.peers.values().copied().collect();
            if l.peers.is_empty() {
                l.delivered.push(Delivered::Revoked);
            }
        }
    }

    fn job_pushing(&self, worker: WorkerId, job: JobId) {
        if let Some(l) = self.lock().get_mut(&worker) {
            l.info.pushing.insert(job);
        }
    }

    fn job_ended(&self, worker: WorkerId, job: JobId) {
        if let Some(l) = self.lock().get_mut(&worker) {
            l.info.pushing.remove(&job);
        }
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
    }
}

impl FleetHarness for MemoryFleet {
    type Fleet = Self;
    fn fleet(&self) -> &Self {
        self
    }
    fn connect(&self, info: WorkerInfo, peers: &[(PeerId, OrgId)]) {
        MemoryFleet::connect(self, info, peers)
    }
    fn disconnect(&self, worker: WorkerId) {
        MemoryFleet::disconnect(self, worker)
    }
    fn delivered(&self, worker: WorkerId) -> Vec<Delivered> {
        MemoryFleet::delivered(self, worker)
    }
    fn woken(&self) -> bool {
        MemoryFleet::woken(self)
    }
}

#[cfg(test)]
mod memory_fleet {
    crate::fleet_contract!(super::MemoryFleet::default);
}
