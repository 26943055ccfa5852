//! The workers connected right now, in memory: who they are, which registrations (peers) they proved,
//! and a channel to each connection's writer so the rest of the server can send to or close it.

use gradient_domain::model::JobId;
use gradient_domain::proto::{RejectCode, ServerMessage};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::{OrgId, PeerId, WorkerId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// What a connection's writer is asked to do. Not boxed: each message goes through the connection's channel
/// once, and a box would be an allocation per message for a few hundred bytes of channel slot.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outgoing {
    Send(ServerMessage),
    Close(RejectCode, String),
}

#[derive(Clone, Debug)]
pub struct Connected {
    /// The registrations this link proved, with their organizations.
    pub peers: BTreeMap<PeerId, OrgId>,
    /// The link is ending: it gets nothing more, but its entry stays until its jobs are requeued, so a
    /// reconnection under the same id is refused until then.
    pub closing: bool,
    /// What the scheduler needs to know about the worker.
    pub info: Option<WorkerInfo>,
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Distinguishes this connection from a later one of the same worker.
    pub session: u64,
}

#[derive(Default)]
pub struct Links {
    workers: Mutex<HashMap<WorkerId, Connected>>,
    /// Links of workers that proved a registration (bounded by `maxProtoConnections`).
    open: Arc<AtomicUsize>,
    /// Connections still in their handshake (their own, smaller pool): they never take a worker's slot.
    anonymous: Arc<AtomicUsize>,
    sessions: AtomicUsize,
}

/// Holds a slot of one pool (authenticated links, or connections still in their handshake) while held.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Connected>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an authenticated link's slot, or `None` when `max` are open. Taken only once the handshake proved
    /// a registration, so connections that prove nothing never hold one.
    pub fn try_slot(&self, max: usize) -> Option<Slot> {
        take(&self.open, max)
    }

    /// Takes a slot for a connection that has not proved anything yet, or `None` when `max` are handshaking.
    pub fn try_anonymous_slot(&self, max: usize) -> Option<Slot> {
        take(&self.anonymous, max)
    }

    pub fn is_worker_connected(&self, worker: WorkerId) -> bool {
        self.lock().contains_key(&worker)
    }

    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.lock().values().any(|c| !c.closing && c.peers.contains_key(&peer))
    }

    /// The organizations the worker's link is proved for now (registrations revoked since its handshake no
    /// longer count); empty when it is not connected or closing.
    pub fn proved_orgs(&self, worker: WorkerId) -> BTreeSet<OrgId> {
        self.lock()
            .get(&worker)
            .filter(|c| !c.closing)
            .map(|c| c.peers.values().copied().collect())
            .unwrap_or_default()
    }

    /// What the worker connected for this registration offers, once its handshake is done.
    pub fn info_for_peer(&self, peer: PeerId) -> Option<WorkerInfo> {
        self.lock()
            .values()
            .find(|c| !c.closing && c.peers.contains_key(&peer))
            .and_then(|c| c.info.clone())
    }

    /// Registers an authorized connection; `None` if the worker already has one (it is never displaced).
    pub fn insert(
        &self,
        worker: WorkerId,
        peers: BTreeMap<PeerId, OrgId>,
        tx: mpsc::UnboundedSender<Outgoing>,
    ) -> Option<u64> {
        let mut workers = self.lock();
        if workers.contains_key(&worker) {
            return None;
        }
        let session = self.sessions.fetch_add(1, Ordering::SeqCst) as u64;
        workers.insert(
            worker,
            Connected {
                peers,
                closing: false,
                info: None,
                tx,
                session,
            },
        );
        Some(session)
    }

    /// The link of this session is ending: from now on it is not offered to the scheduler and gets no
    /// message, while its jobs are taken back.
    pub fn closing(&self, worker: WorkerId, session: u64) {
        if let Some(c) = self.lock().get_mut(&worker).filter(|c| c.session == session) {
            c.closing = true;
        }
    }

    /// Forgets the connection if it is still the given session.
    pub fn remove(&self, worker: WorkerId, session: u64) {
        let mut workers = self.lock();
        if workers.get(&worker).is_some_and(|c| c.session == session) {
            workers.remove(&worker);
        }
    }

    /// A registration was deleted: the worker loses it (and its organization, unless another registration
    /// of the link is in it), and a worker left with none is disconnected.
    pub fn revoke_peer(&self, peer: PeerId) {
        let mut workers = self.lock();
        for c in workers.values_mut() {
            if c.peers.remove(&peer).is_none() {
                continue;
            }
            let orgs: BTreeSet<OrgId> = c.peers.values().copied().collect();
            if let Some(info) = c.info.as_mut() {
                info.orgs = orgs;
            }
            if c.peers.is_empty() {
                let _ = c.tx.send(Outgoing::Close(
                    RejectCode::Revoked,
                    "the worker's registration was deleted".into(),
                ));
            }
        }
    }

    /// Records what the worker offers, once its handshake is done.
    pub fn set_info(&self, worker: WorkerId, info: WorkerInfo) {
        if let Some(c) = self.lock().get_mut(&worker) {
            c.info = Some(info);
        }
    }

    /// The connected workers the scheduler may give jobs to: done with their handshake, and still holding a
    /// registration (a link whose last one was revoked is closing).
    pub fn infos(&self) -> Vec<WorkerInfo> {
        self.lock()
            .values()
            .filter(|c| !c.peers.is_empty() && !c.closing)
            .filter_map(|c| c.info.clone())
            .collect()
    }

    /// The worker's job is built and only pushing (see [`WorkerInfo::pushing`]).
    pub fn pushing(&self, worker: WorkerId, job: JobId) {
        if let Some(info) = self.lock().get_mut(&worker).and_then(|c| c.info.as_mut()) {
            info.pushing.insert(job);
        }
    }

    /// The worker's job ended.
    pub fn finished(&self, worker: WorkerId, job: JobId) {
        if let Some(info) = self.lock().get_mut(&worker).and_then(|c| c.info.as_mut()) {
            info.pushing.remove(&job);
        }
    }

    /// Sends what concerns `org` to a connected worker; false if it is not connected, closing, or its link is
    /// not (any more) proved for that organization.
    pub fn send(&self, worker: WorkerId, org: OrgId, msg: ServerMessage) -> bool {
        self.lock().get(&worker).is_some_and(|c| {
            !c.closing && c.peers.values().any(|o| *o == org) && c.tx.send(Outgoing::Send(msg)).is_ok()
        })
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: &str) {
        for c in self.lock().values() {
            let _ = c.tx.send(Outgoing::Close(RejectCode::ShuttingDown, reason.to_owned()));
        }
    }
}

fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    let mut current = counter.load(Ordering::SeqCst);
    loop {
        if current >= max {
            return None;
        }
        match counter.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some(Slot(counter.clone())),
            Err(now) => current = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let links = Links::default();
        let a = links.try_slot(2).unwrap();
        let _b = links.try_slot(2).unwrap();
        assert!(links.try_slot(2).is_none());
        drop(a);
        assert!(links.try_slot(2).is_some());
    }

    #[test]
    fn handshaking_connections_have_their_own_pool() {
        let links = Links::default();
        let held: Vec<Slot> = (0..3).filter_map(|_| links.try_anonymous_slot(3)).collect();
        assert_eq!(held.len(), 3);
        assert!(links.try_anonymous_slot(3).is_none(), "the anonymous pool is full");
        assert!(
            links.try_slot(1).is_some(),
            "an authenticated link's slot is still free"
        );
    }

    #[test]
    fn one_connection_per_worker_and_revocation_closes_the_last_peer() {
        let links = Links::default();
        let worker = WorkerId::new();
        let (p1, p2) = (PeerId::new(), PeerId::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let org = OrgId::new();
        let session = links.insert(worker, [(p1, org), (p2, org)].into(), tx.clone()).unwrap();
        assert!(links.insert(worker, [(p1, org)].into(), tx).is_none(), "duplicate");
        assert!(links.is_connected(p1) && links.is_connected(p2));
        links.revoke_peer(p1);
        assert!(!links.is_connected(p1) && links.is_connected(p2));
        assert!(rx.try_recv().is_err(), "still one registration left");
        links.revoke_peer(p2);
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Close(RejectCode::Revoked, _))));
        links.remove(worker, session + 1);
        assert!(
            links.is_worker_connected(worker),
            "another session's removal does not count"
        );
        links.remove(worker, session);
        assert!(!links.is_worker_connected(worker));
    }
}
