//! The worker fleet: the workers connected to this server right now and the way to reach them.
//!
//! The server's link registry (`apps/server/src/link`) implements it over the workers' WebSocket
//! connections; `gradient-ports` has an in-memory fleet and the contract suite both pass. The use cases call
//! it for every follow-up of a change (hand out a job, stop one, drop a revoked registration's link, wake the
//! dispatcher), so request handlers and the link only translate.
//!
//! Calls never block on the network: a message is queued for the connection's writer and delivered in order.

use crate::model::JobId;
use crate::proto::Job;
use crate::scheduler::WorkerInfo;
use crate::{OrgId, PeerId, WorkerId};

pub trait Fleet: Send + Sync + 'static {
    /// The connected workers the scheduler may give jobs to, as their handshake described them, with the
    /// organizations their registrations still prove and the jobs they are only pushing. A link left without
    /// any registration, or ending, is not among them.
    fn connected(&self) -> Vec<WorkerInfo>;

    /// Hands a job of `org` to a connected worker (`Assign`). False, sending nothing, when the worker is not
    /// connected (any more) or its link is not proved for `org` (a worker id is chosen by whoever registers
    /// it: another tenant's link under the same id never hears of this organization's jobs).
    fn assign(&self, worker: WorkerId, org: OrgId, job: Job) -> bool;

    /// Tells a connected worker to stop a job of `org` it runs (`Abort`). False when it is not connected or
    /// not proved for `org`.
    fn abort(&self, worker: WorkerId, org: OrgId, job: JobId) -> bool;

    /// A registration was deleted: a link proved with it loses it, and its organization, at once (unless
    /// another of its registrations is in that organization); a link left with none is closed (code
    /// `revoked`) and gets no more jobs.
    fn revoke(&self, peer: PeerId);

    /// The worker's job is built (or its `.drv` files are evaluated) and only uploads now: it holds no build
    /// slot any more.
    fn job_pushing(&self, worker: WorkerId, job: JobId);

    /// The worker's job ended.
    fn job_ended(&self, worker: WorkerId, job: JobId);

    /// A job that went back to the queue while its worker was away was given back to it (it still holds the job,
    /// see `scheduler::reclaimable`): no `assign` is sent, but the job is the worker's again (a build's live log
    /// is open for it, `drv_path` given). Nothing to do for a fleet that keeps no such state.
    fn resumed(&self, worker: WorkerId, org: OrgId, job: JobId, drv_path: Option<&str>) {
        let _ = (worker, org, job, drv_path);
    }
    /// Something changed that may let queued jobs run (a job queued or ended, a worker came or went): the
    /// dispatcher runs soon. Wakes close together are taken in one round.
    fn wake(&self);
}

impl<F: Fleet + ?Sized> Fleet for std::sync::Arc<F> {
    fn connected(&self) -> Vec<WorkerInfo> {
        (**self).connected()
    }
    fn assign(&self, worker: WorkerId, org: OrgId, job: Job) -> bool {
        (**self).assign(worker, org, job)
    }
    fn abort(&self, worker: WorkerId, org: OrgId, job: JobId) -> bool {
        (**self).abort(worker, org, job)
    }
    fn revoke(&self, peer: PeerId) {
        (**self).revoke(peer)
    }
    fn job_pushing(&self, worker: WorkerId, job: JobId) {
        (**self).job_pushing(worker, job)
    }
    fn job_ended(&self, worker: WorkerId, job: JobId) {
        (**self).job_ended(worker, job)
    }
    fn resumed(&self, worker: WorkerId, org: OrgId, job: JobId, drv_path: Option<&str>) {
        (**self).resumed(worker, org, job, drv_path)
    }
    fn wake(&self) {
        (**self).wake()
    }
}
