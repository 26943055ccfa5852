//! The fleet port over the worker links: the registry of connected workers ([`Links`]), the live logs of the
//! builds handed to them ([`LiveLogs`]), and the dispatcher's wake-up. The use cases reach workers only
//! through this.

use super::{Links, LiveLogs};
use gradient_domain::model::JobId;
use gradient_domain::ports::Fleet;
use gradient_domain::proto::{Job, ServerMessage};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::{OrgId, PeerId, WorkerId};

#[derive(Default)]
pub struct LinkFleet {
    pub links: Links,
    pub logs: LiveLogs,
    /// Wakes the dispatcher (`spawn_dispatcher`) when something changed.
    pub dispatch: tokio::sync::Notify,
}

impl Fleet for LinkFleet {
    fn connected(&self) -> Vec<WorkerInfo> {
        self.links.infos()
    }

    fn assign(&self, worker: WorkerId, org: OrgId, job: Job) -> bool {
        if !self.links.proved_orgs(worker).contains(&org) {
            return false;
        }
        // The log is open before the worker can write to it.
        if let Job::Build { job_id, drv_path, .. } = &job {
            self.logs.started(*job_id, worker, org, drv_path);
        }
        self.links.send(worker, org, ServerMessage::Assign { job })
    }

    fn abort(&self, worker: WorkerId, org: OrgId, job: JobId) -> bool {
        self.links.send(worker, org, ServerMessage::Abort { job_id: job })
    }

    fn revoke(&self, peer: PeerId) {
        self.links.revoke_peer(peer);
    }

    fn job_pushing(&self, worker: WorkerId, job: JobId) {
        self.links.pushing(worker, job);
    }

    fn job_ended(&self, worker: WorkerId, job: JobId) {
        self.links.finished(worker, job);
    }

    fn resumed(&self, worker: WorkerId, org: OrgId, job: JobId, drv_path: Option<&str>) {
        if let Some(drv) = drv_path {
            self.logs.resumed(job, worker, org, drv);
        }
    }

    fn wake(&self) {
        self.dispatch.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Outgoing;
    use gradient_ports::fleet::{Delivered, FleetHarness};
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// Connects workers as the link does (a registry entry with a channel to its writer) and reads what
    /// each writer was given.
    #[derive(Default)]
    struct Harness {
        fleet: LinkFleet,
        writers: Mutex<std::collections::HashMap<WorkerId, (u64, mpsc::UnboundedReceiver<Outgoing>)>>,
    }

    impl FleetHarness for Harness {
        type Fleet = LinkFleet;
        fn fleet(&self) -> &LinkFleet {
            &self.fleet
        }
        fn connect(&self, info: WorkerInfo, peers: &[(PeerId, OrgId)]) {
            let (tx, rx) = mpsc::unbounded_channel();
            let session = self
                .fleet
                .links
                .insert(info.id, peers.iter().copied().collect(), tx)
                .expect("one link per worker");
            self.fleet.links.set_info(info.id, info.clone());
            self.writers.lock().unwrap().insert(info.id, (session, rx));
        }
        fn disconnect(&self, worker: WorkerId) {
            if let Some((session, _)) = self.writers.lock().unwrap().remove(&worker) {
                self.fleet.links.remove(worker, session);
            }
        }
        fn delivered(&self, worker: WorkerId) -> Vec<Delivered> {
            let mut out = Vec::new();
            if let Some((_, rx)) = self.writers.lock().unwrap().get_mut(&worker) {
                while let Ok(o) = rx.try_recv() {
                    out.push(match o {
                        Outgoing::Send(ServerMessage::Assign { job }) => Delivered::Assign(Box::new(job)),
                        Outgoing::Send(ServerMessage::Abort { job_id }) => Delivered::Abort(job_id),
                        Outgoing::Close(gradient_domain::proto::RejectCode::Revoked, _) => Delivered::Revoked,
                        other => panic!("unexpected message to a worker: {other:?}"),
                    });
                }
            }
            out
        }
        fn woken(&self) -> bool {
            use futures_util::FutureExt;
            self.fleet.dispatch.notified().now_or_never().is_some()
        }
    }

    gradient_ports::fleet_contract!(Harness::default);

    #[test]
    fn a_build_handed_out_opens_its_log_for_its_worker_only() {
        let harness = Harness::default();
        let org = OrgId::new();
        let w = gradient_ports::fleet::contract::worker(org);
        harness.connect(w.clone(), &[(PeerId::new(), org)]);
        let job = gradient_ports::fleet::contract::build_job();
        assert!(harness.fleet.assign(w.id, org, job.clone()));
        let id = job.id();
        assert!(harness.fleet.logs.is_build(id), "the log is open");
        assert!(
            !harness.fleet.logs.append(id, WorkerId::new(), &[org].into(), "x"),
            "only its worker writes it"
        );
    }
}
