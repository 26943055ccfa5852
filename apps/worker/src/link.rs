//! Staying connected: dial, prove the registrations, keep the heartbeat, and come back after any loss with
//! jittered exponential backoff (1 s doubling to 60 s).

use crate::jobs::{self, Local};
use crate::peers::Peers;
use gradient_domain::WorkerId;
use gradient_domain::model::Capabilities as ModelCaps;
use gradient_domain::model::JobId;
use gradient_domain::ports::nix::Nix;
use gradient_domain::proto::Job;
use gradient_domain::proto::{self, Hello, PROTOCOL_VERSION, ServerMessage, WorkerMessage};
use gradient_link_ws::{Admit, LinkError, TlsRoots, accept, connect};
use rand::Rng;
use rand::RngCore;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Identity {
    pub worker_id: WorkerId,
    pub capabilities: ModelCaps,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    pub max_concurrent_builds: u32,
    pub max_concurrent_evaluations: u32,
    /// Build jobs it takes beyond its slots, to batch them (see [`build_jobs_queued`]).
    pub queued_builds: u32,
}

/// Why a session ended.
enum End {
    /// Worth retrying soon (network, server restart).
    Lost(String),
    /// The server refused us; retrying may still help later (e.g. once registered), but slowly.
    Rejected(String),
    /// The server's TLS certificate is not trusted: retried (the certificate or the CA file may be fixed), never
    /// over plain ws://.
    Untrusted(String),
}

/// Jobs in flight and reports waiting for a link: they survive reconnections.
pub struct Work<N> {
    pub nix: Arc<N>,
    pub dirs: Arc<Local>,
    /// Where jobs report; a task of its own writes each report to the outbox as it comes (whether a link is up
    /// or not) and passes everything on to `out_rx`, reports as `report`s.
    out_tx: mpsc::UnboundedSender<WorkerMessage>,
    out_rx: mpsc::UnboundedReceiver<WorkerMessage>,
    /// Reports not acknowledged yet, on disk: sent again after every `welcome` until the server's `ack`.
    outbox: Arc<Mutex<crate::outbox::Outbox>>,
    /// Every job held, and the batches.
    book: Book,
    handles: std::collections::HashMap<JobId, tokio::task::AbortHandle>,
    /// Build jobs waiting for the batcher, which runs them together (see [`batcher`]).
    batch_tx: mpsc::UnboundedSender<Job>,
    /// Builds that run alone (not batchable) wait for one of the machine's parallel builds.
    solo_builds: Arc<tokio::sync::Semaphore>,
}

use crate::batches::{self, MAX_BATCH};
/// Fewer jobs than this are not split between run slots (a Nix run costs a start-up).
const MIN_SPLIT: usize = 8;
/// Nix runs of batched builds at once.
const BATCHES_AT_ONCE: usize = 2;
/// The batcher lets a burst of assignments arrive before starting a run: it waits until none came for
/// [`batches::quiet_for`] (longer while a chain is being handed out) or this long at most.
const GATHER_AT_MOST: Duration = Duration::from_millis(200);

/// How many build jobs the worker takes beyond its parallel builds (announced as `hello.queued_builds`): the
/// server gives them only when no worker has a free slot, and the worker builds them in the same batches, so few
/// parallel builds do not mean tiny batches (each batch costs a Nix start-up and a round trip: that made a
/// 2-slot worker ten times slower than `nix build`). A worker that builds nothing (0) takes nothing.
pub fn build_jobs_queued(parallel_builds: u32) -> u32 {
    if parallel_builds == 0 {
        0
    } else {
        MIN_BUILD_JOBS_ACCEPTED.saturating_sub(parallel_builds)
    }
}

/// Build jobs a worker that builds anything holds at once, at least: its slots plus its queue, a full batch for
/// each of its Nix runs (with half a batch, a 2-slot worker needed 19 batches for 301 builds, 1.36× `nix build`).
pub const MIN_BUILD_JOBS_ACCEPTED: u32 = (MAX_BATCH * BATCHES_AT_ONCE) as u32;

/// How many Nix runs at once, and how many builds each may run in parallel, for a machine that builds
/// `parallel_builds` derivations at once: together never more (a build beyond Nix's build users waits for
/// one, and Nix looks again only every few seconds).
fn run_shape(parallel_builds: u32) -> (usize, u32) {
    let runs = BATCHES_AT_ONCE.min(parallel_builds.max(1) as usize);
    (runs, (parallel_builds / runs as u32).max(1))
}

/// What a run tells the batcher once Nix is done with it (or it was stopped): every drv it had leaves the
/// runs in progress; those it did not build are remembered, so that what needs them is not built again.
struct RunBuilt {
    drvs: Vec<String>,
    not_built: Vec<String>,
}

/// Sends a run's [`RunBuilt`] once: when Nix is done, or else when the run is dropped (stopped: its drvs count as
/// neither built nor failed, and whatever needs them lets Nix build them).
struct BuiltNotice {
    tx: mpsc::UnboundedSender<RunBuilt>,
    drvs: Option<Vec<String>>,
}

impl BuiltNotice {
    fn send(&mut self, not_built: Vec<String>) {
        if let Some(drvs) = self.drvs.take() {
            let _ = self.tx.send(RunBuilt { drvs, not_built });
        }
    }
}

impl Drop for BuiltNotice {
    fn drop(&mut self) {
        self.send(Vec::new());
    }
}

/// Drvs remembered as not built by this worker's runs, at most (the oldest are forgotten first).
const NOT_BUILT_KEPT: usize = 4096;

/// Runs batchable build jobs (see [`jobs::batchable`]) in groups: once a run slot is free, everything queued
/// (split by [`batches::plan_runs`]: at most [`MAX_BATCH`] a run, grouped by [`jobs::batch_key`], a build with
/// its batch inputs) goes into one `nix-store --realise` and one push, so many small builds cost one Nix
/// start-up instead of one each. A build whose batch inputs a run is still building waits for that run to have
/// built; if one was not built, it is answered `dependency_failed` without running Nix.
async fn batcher<N: Nix>(
    nix: Arc<N>,
    dirs: Arc<Local>,
    out: mpsc::UnboundedSender<WorkerMessage>,
    book: Book,
    mut rx: mpsc::UnboundedReceiver<Job>,
    parallel_builds: u32,
) {
    let (runs, max_jobs_per_run) = run_shape(parallel_builds);
    let slots = Arc::new(tokio::sync::Semaphore::new(runs));
    let (built_tx, mut built_rx) = mpsc::unbounded_channel::<RunBuilt>();
    // Drvs of runs that have not built yet (how many runs have each), and drvs recent runs did not build.
    let mut building: std::collections::HashMap<String, usize> = Default::default();
    let mut not_built: std::collections::VecDeque<String> = Default::default();
    let mut waiting: Vec<Job> = Vec::new();
    let mut arrived: Vec<Job> = Vec::new();
    loop {
        let mut notices = Vec::new();
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) => arrived.push(job),
                None => return,
            },
            Some(notice) = built_rx.recv() => notices.push(notice),
        }
        if arrived.is_empty() && (notices.is_empty() || waiting.is_empty()) {
            for n in notices {
                forget_run(&mut building, &mut not_built, n);
            }
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if !arrived.is_empty() {
            // What came while every slot was busy joins this run first: a backlog of one-build rounds (each
            // saying it is complete) still goes to Nix as one run, not one run per build.
            while let Ok(job) = rx.try_recv() {
                arrived.push(job);
            }
            let until = tokio::time::Instant::now() + GATHER_AT_MOST;
            while !batches::round_in(&arrived)
                && let Ok(Some(job)) = tokio::time::timeout_at(
                    (tokio::time::Instant::now() + batches::quiet_for(&arrived)).min(until),
                    rx.recv(),
                )
                .await
            {
                arrived.push(job);
                while let Ok(job) = rx.try_recv() {
                    arrived.push(job);
                }
            }
        }
        // What runs finished building meanwhile (a run says so before it frees its slot).
        while let Ok(n) = built_rx.try_recv() {
            notices.push(n);
        }
        for n in notices {
            forget_run(&mut building, &mut not_built, n);
        }
        // A job arriving is a new attempt at its drv.
        not_built.retain(|d| !arrived.iter().any(|j| batches::drv_of(j) == d));
        let mut queued: Vec<Job> = std::mem::take(&mut waiting);
        queued.append(&mut arrived);
        // Jobs aborted while waiting are dropped.
        queued.retain(|job| {
            let aborted = book.is_aborted(job.id());
            if aborted {
                book.finished(&[job.id()]);
            }
            !aborted
        });
        // A build whose batch input was not built here fails as Nix would have failed it, without a run.
        while let Some(i) = queued
            .iter()
            .position(|j| batches::inputs_of(j).iter().any(|i| not_built.contains(i)))
        {
            let job = queued.remove(i);
            let input = batches::inputs_of(&job)
                .iter()
                .find(|i| not_built.contains(i))
                .cloned()
                .unwrap_or_default();
            remember_not_built(&mut not_built, batches::drv_of(&job).to_owned());
            if book.claim(job.id()) {
                let _ = out.send(WorkerMessage::JobFinished {
                    job_id: job.id(),
                    outcome: proto::JobOutcome::Failed {
                        kind: proto::FailureKind::DependencyFailed,
                        message: format!("dependency failed: {input} was not built"),
                    },
                });
            }
            book.finished(&[job.id()]);
        }
        // What is queued is shared between the run slots free now (this one and the others), so that they all
        // build; a build stays with its inputs.
        let free = 1 + slots.available_permits();
        let size = queued.len().div_ceil(free).clamp(MIN_SPLIT, MAX_BATCH);
        let held = building.keys().cloned().collect();
        let planned = batches::plan_runs(queued, &held, size);
        waiting = planned.waiting;
        let mut groups = planned.groups;
        // Only as many runs as there are free slots: the rest is planned again when a slot frees, with what
        // arrived meanwhile (so that a build needing several of them can join the last run instead of one more).
        if groups.len() > free {
            for group in groups.drain(free..) {
                waiting.extend(group);
            }
        }
        let mut slot = Some(slot);
        for group in groups {
            let (nix, dirs, out, book2, slots) = (nix.clone(), dirs.clone(), out.clone(), book.clone(), slots.clone());
            let ids: Vec<JobId> = group.iter().map(Job::id).collect();
            let drvs: Vec<String> = group.iter().map(|j| batches::drv_of(j).to_owned()).collect();
            for d in &drvs {
                *building.entry(d.clone()).or_default() += 1;
            }
            let mut notice = BuiltNotice {
                tx: built_tx.clone(),
                drvs: Some(drvs),
            };
            let permit = slot.take();
            // The task waits until it is registered, so that its end always finds its entry.
            let (go, registered) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn({
                let ids = ids.clone();
                async move {
                    if registered.await.is_err() {
                        return;
                    }
                    let slot = match permit {
                        Some(p) => p,
                        None => match slots.acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return book2.finished(&ids),
                        },
                    };
                    let mut slot = Some(slot);
                    let hooks = jobs::BatchHooks {
                        is_aborted: &|id| book2.is_aborted(id),
                        claim: &|id| book2.claim(id),
                    };
                    let max_jobs = max_jobs_per_run.min(u32::try_from(group.len()).unwrap_or(u32::MAX));
                    jobs::run_batch(&*nix, &dirs, group, max_jobs, out.clone(), &hooks, |not_built| {
                        // Told before the slot frees: the batcher's next round knows what this run built.
                        notice.send(not_built);
                        drop(slot.take());
                    })
                    .await;
                    book2.finished(&ids);
                }
            });
            book.register(ids, task.abort_handle());
            let _ = go.send(());
        }
    }
}

/// A run is done building: its drvs leave `building`; those it did not build are remembered.
fn forget_run(
    building: &mut std::collections::HashMap<String, usize>,
    not_built: &mut std::collections::VecDeque<String>,
    run: RunBuilt,
) {
    for d in run.drvs {
        if let std::collections::hash_map::Entry::Occupied(mut e) = building.entry(d) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
    for d in run.not_built {
        remember_not_built(not_built, d);
    }
}

fn remember_not_built(not_built: &mut std::collections::VecDeque<String>, drv: String) {
    if !not_built.contains(&drv) {
        not_built.push_back(drv);
        if not_built.len() > NOT_BUILT_KEPT {
            not_built.pop_front();
        }
    }
}

/// The batched builds running and those aborted meanwhile.
#[derive(Default)]
struct Batches {
    /// Aborted while their batch runs: not reported again.
    aborted: BTreeSet<JobId>,
    /// Each running batch's jobs and task: a batch whose every job is aborted is stopped.
    batches: Vec<(Vec<JobId>, tokio::task::AbortHandle)>,
}

/// The bookkeeping of jobs in flight: which the worker holds (`running`, every job) and the batches. Both
/// locks are always taken in this order, `running` first.
#[derive(Clone, Default)]
struct Book {
    running: Arc<Mutex<BTreeSet<JobId>>>,
    state: Arc<Mutex<Batches>>,
}

impl Book {
    fn lock(&self) -> (MutexGuard<'_, BTreeSet<JobId>>, MutexGuard<'_, Batches>) {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (running, state)
    }

    fn is_aborted(&self, id: JobId) -> bool {
        self.lock().1.aborted.contains(&id)
    }

    /// Whether a batched job's outcome may be reported now: once, and not after it was reported aborted.
    fn claim(&self, id: JobId) -> bool {
        let (mut running, mut state) = self.lock();
        let held = running.remove(&id);
        let aborted = state.aborted.remove(&id);
        held && !aborted
    }

    fn register(&self, ids: Vec<JobId>, task: tokio::task::AbortHandle) {
        self.lock().1.batches.push((ids, task));
    }

    /// A batch ended (or its jobs were dropped): nothing of it is held any more.
    fn finished(&self, ids: &[JobId]) {
        let (mut running, mut state) = self.lock();
        for id in ids {
            running.remove(id);
            state.aborted.remove(id);
        }
        state.batches.retain(|(jobs, _)| jobs.as_slice() != ids);
    }

    /// Marks a held batched job aborted (answers false when it is not one); once every job of its batch still
    /// held is (those reported already, built and pushed or failed, want nothing more of the run), the batch
    /// (its Nix run) is stopped and forgotten.
    fn abort_batched(&self, id: JobId) -> bool {
        let (mut running, mut state) = self.lock();
        if !running.contains(&id) {
            return false;
        }
        state.aborted.insert(id);
        let Batches { aborted, batches } = &mut *state;
        if let Some(i) = batches.iter().position(|(jobs, _)| {
            jobs.contains(&id) && jobs.iter().all(|j| aborted.contains(j) || !running.contains(j))
        }) {
            let (jobs, task) = batches.remove(i);
            task.abort();
            for j in &jobs {
                aborted.remove(j);
                running.remove(j);
            }
        }
        true
    }
}

impl<N: Nix> Work<N> {
    /// `parallel_builds`: how many derivations this machine builds at once, over all runs.
    pub fn new(nix: N, dirs: Local, parallel_builds: u32, outbox: crate::outbox::Outbox) -> Self {
        let (out_tx, mut reports) = mpsc::unbounded_channel();
        let (to_link, out_rx) = mpsc::unbounded_channel();
        let outbox = Arc::new(Mutex::new(outbox));
        // A report is on disk as soon as its job makes it, not when a link takes it: a worker that stops
        // meanwhile still has it, and `hello.held_jobs` names its job.
        tokio::spawn({
            let outbox = outbox.clone();
            async move {
                // What jobs said while the last batch was written goes together: one file (one fsync pair) and
                // as few `reports` frames as fit, with no wait beyond what is already queued. Log pieces and the
                // other bare messages go first, so a job's log still comes before its end.
                while let Some(first) = reports.recv().await {
                    let mut messages = vec![first];
                    while let Ok(more) = reports.try_recv() {
                        messages.push(more);
                    }
                    let (kept, bare): (Vec<_>, Vec<_>) = messages.into_iter().partition(reported);
                    let kept = outbox.lock().unwrap_or_else(PoisonError::into_inner).push_all(kept);
                    for msg in bare.into_iter().chain(proto::report_frames(kept)) {
                        if to_link.send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (nix, dirs) = (Arc::new(nix), Arc::new(dirs));
        let book = Book::default();
        tokio::spawn(batcher(
            nix.clone(),
            dirs.clone(),
            out_tx.clone(),
            book.clone(),
            batch_rx,
            parallel_builds,
        ));
        Self {
            nix,
            dirs,
            out_tx,
            out_rx,
            outbox,
            book,
            handles: Default::default(),
            batch_tx,
            solo_builds: Arc::new(tokio::sync::Semaphore::new(parallel_builds.max(1) as usize)),
        }
    }

    fn start(&mut self, job: Job) {
        let id = job.id();
        self.book.lock().0.insert(id);
        if jobs::batchable(&job) {
            if let Err(mpsc::error::SendError(job)) = self.batch_tx.send(job) {
                // The batcher is gone (only at shutdown): run the job on its own.
                self.spawn(job);
            }
            return;
        }
        self.spawn(job);
    }

    fn spawn(&mut self, job: Job) {
        let (nix, dirs, out, running) = (
            self.nix.clone(),
            self.dirs.clone(),
            self.out_tx.clone(),
            self.book.clone(),
        );
        let id = job.id();
        let solo = matches!(job, Job::Build { .. }).then(|| self.solo_builds.clone());
        let task = tokio::spawn(async move {
            let _permit = match solo {
                Some(s) => s.acquire_owned().await.ok(),
                None => None,
            };
            let outcome = jobs::run(&*nix, &dirs, job, &out).await;
            // Reported once: unless an abort already answered for it.
            if running.lock().0.remove(&id) {
                let _ = out.send(WorkerMessage::JobFinished { job_id: id, outcome });
            }
        });
        self.handles.retain(|_, h| !h.is_finished());
        self.handles.insert(id, task.abort_handle());
    }

    /// Stops a job: its task is dropped, which kills its `nix` processes, and the server is told.
    fn abort(&mut self, id: JobId) {
        // A batched build cannot be stopped alone: it is reported aborted now and its result dropped; once
        // every build of its batch is aborted, the batch (its Nix run) is stopped.
        if !self.handles.contains_key(&id) && self.book.abort_batched(id) {
            let _ = self.out_tx.send(WorkerMessage::JobFinished {
                job_id: id,
                outcome: gradient_domain::proto::JobOutcome::Aborted,
            });
            return;
        }
        if let Some(h) = self.handles.remove(&id) {
            h.abort();
            // A job that ended meanwhile was reported already.
            if self.book.lock().0.remove(&id) {
                let _ = self.out_tx.send(WorkerMessage::JobFinished {
                    job_id: id,
                    outcome: gradient_domain::proto::JobOutcome::Aborted,
                });
            }
        }
    }

    fn outbox(&self) -> MutexGuard<'_, crate::outbox::Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> Vec<JobId> {
        let mut held: Vec<JobId> = self.book.lock().0.iter().copied().collect();
        held.extend(self.outbox().finished_jobs());
        held.sort();
        held.dedup();
        held
    }
}

/// Runs forever, reconnecting after every loss.
pub async fn run<N: Nix>(url: &str, tls: &TlsRoots, identity: &Identity, peers: &Peers, work: &mut Work<N>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tracing::debug!(target: "gradient::proto", "dialing {url}");
        let most = match session(url, tls, identity, peers, work).await {
            End::Lost(why) => {
                tracing::warn!(target: "gradient::proto", "link lost: {why}");
                Duration::from_secs(60)
            }
            End::Untrusted(why) => {
                tracing::error!("{why}");
                backoff = backoff.max(Duration::from_secs(4));
                Duration::from_secs(60)
            }
            End::Rejected(why) => {
                // Retrying helps once the worker is registered (a co-located worker: once the first
                // organization exists), so keep trying, neither eagerly nor so slowly that the user waits.
                tracing::error!(target: "gradient::proto", "the server refused this worker: {why}");
                backoff = backoff.max(Duration::from_secs(4));
                Duration::from_secs(15)
            }
        };
        let jitter = rand::thread_rng().gen_range(0.5..1.5);
        let wait = backoff.mul_f64(jitter).min(most);
        tracing::info!(target: "gradient::proto", "reconnecting in {:.1}s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn session<N: Nix>(url: &str, tls: &TlsRoots, identity: &Identity, peers: &Peers, work: &mut Work<N>) -> End {
    // A dial that hangs (packets dropped on the way) is given up like a handshake that does not finish.
    let dialed = tokio::time::timeout(
        Duration::from_secs(u64::from(proto::HANDSHAKE_TIMEOUT_SECS)),
        connect(url, tls),
    )
    .await
    .unwrap_or_else(|_| Err(LinkError::Connect("no answer to the dial in time".into())));
    let (tx, rx) = match dialed {
        Ok(link) => link,
        Err(LinkError::Refused {
            status,
            retry_after_secs,
        }) => {
            if let Some(s) = retry_after_secs {
                tokio::time::sleep(Duration::from_secs(s)).await;
            }
            return End::Lost(format!("HTTP {status}"));
        }
        // Never retried as plain ws://: the operator fixes the trust (or the server's certificate).
        Err(e @ LinkError::Untrusted { unknown_issuer, .. }) => {
            let hint = if unknown_issuer {
                "; a server certificate from a private CA needs its CA in GRADIENT_CA_FILE"
            } else {
                ""
            };
            return End::Untrusted(format!("TLS verification of {url} failed: {e}{hint}"));
        }
        Err(e) => return End::Lost(e.to_string()),
    };
    linked(tx, rx, identity, peers, work, None, url).await
}

/// The server dials a listening worker: it accepts at most `max_connections` connections at once at `/proto`
/// (beyond them, 503 with `Retry-After: 10`), and runs a link on each in turn, making the server prove a
/// registration's key before it proves its own. Runs forever.
pub async fn listen<N: Nix>(
    listener: tokio::net::TcpListener,
    max_connections: u32,
    identity: &Identity,
    peers: &Peers,
    work: &mut Work<N>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1) as usize));
    let (conns, mut accepted) = mpsc::channel(max_connections.max(1) as usize);
    tokio::spawn(async move {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target: "gradient::proto", "accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = slots.clone().try_acquire_owned();
            let conns = conns.clone();
            tokio::spawn(async move {
                let admit = if slot.is_ok() {
                    Admit::Yes
                } else {
                    Admit::Full { retry_after_secs: 10 }
                };
                match accept(tcp, "/proto", admit).await {
                    Ok((tx, rx)) => {
                        tracing::debug!(target: "gradient::proto", "connection from {from}");
                        let _ = conns.send((tx, rx, slot)).await;
                    }
                    Err(e) => tracing::info!(target: "gradient::proto", "refused a connection from {from}: {e}"),
                }
            });
        }
    });
    while let Some((tx, rx, _slot)) = accepted.recv().await {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let nonce = proto::nonce_from_bytes(&raw);
        match linked(tx, rx, identity, peers, work, Some(nonce), "the server").await {
            End::Lost(why) => tracing::warn!(target: "gradient::proto", "link lost: {why}"),
            End::Untrusted(why) | End::Rejected(why) => {
                tracing::error!(target: "gradient::proto", "link refused: {why}")
            }
        }
    }
}

/// A link from `hello` on, whichever side dialed. `server_nonce`: the server dialed, and must prove a
/// registration's key over this nonce in its `challenge` before the worker answers.
async fn linked<N: Nix>(
    mut tx: gradient_link_ws::LinkSender,
    mut rx: gradient_link_ws::LinkReceiver,
    identity: &Identity,
    peers: &Peers,
    work: &mut Work<N>,
    server_nonce: Option<String>,
    url: &str,
) -> End {
    let handshake = Duration::from_secs(u64::from(proto::HANDSHAKE_TIMEOUT_SECS));
    let hello = Hello {
        version: PROTOCOL_VERSION,
        worker_id: identity.worker_id,
        capabilities: identity.capabilities.into(),
        systems: identity.systems.clone(),
        features: identity.features.clone(),
        max_concurrent_builds: identity.max_concurrent_builds,
        max_concurrent_evaluations: identity.max_concurrent_evaluations,
        queued_builds: identity.queued_builds,
        held_jobs: work.held(),
        server_nonce: server_nonce.clone(),
    };
    if let Err(e) = tx.send(&WorkerMessage::Hello(hello)).await {
        return End::Lost(e.to_string());
    }
    let challenge = match tokio::time::timeout(handshake, rx.recv()).await {
        Err(_) => return End::Lost("no challenge in time".into()),
        Ok(Ok(ServerMessage::Challenge(c))) => c,
        Ok(Ok(ServerMessage::Rejected(r))) => return End::Rejected(format!("{} ({})", r.reason, r.code.as_str())),
        Ok(Ok(other)) => return End::Lost(format!("unexpected {other:?} during the handshake")),
        Ok(Err(e)) => return End::Lost(e.to_string()),
    };
    // Only a nonce of the server's form is answered: any other could make an answer serve as a proof elsewhere.
    if !proto::is_challenge_nonce(&challenge.nonce) {
        tx.close().await;
        return End::Rejected("the challenge's nonce is not 32 random bytes in base64: not answered".into());
    }
    // A server that dialed proves a registration's key first: whoever cannot is not given a proof to relay. The
    // worker then answers for the registrations proved on this link only, so a dialer that knows one
    // organization's token learns no proof of the worker's other organizations.
    let challenge = match &server_nonce {
        Some(nonce) => {
            let proved = proto::server_proved_peers(&challenge, nonce, &peers.tokens, peers.any.as_deref());
            if proved.is_empty() {
                tx.close().await;
                return End::Rejected(
                    "the dialing side proved no registration's key: not the server this worker is registered with"
                        .into(),
                );
            }
            proto::Challenge {
                peers: proved,
                ..challenge
            }
        }
        None => challenge,
    };
    let answers = proto::answer_challenge(&challenge, &peers.tokens, peers.any.as_deref());
    if let Err(e) = tx.send(&WorkerMessage::ChallengeResponse(answers)).await {
        return End::Lost(e.to_string());
    }
    let welcome = match tokio::time::timeout(handshake, rx.recv()).await {
        Err(_) => return End::Lost("no welcome in time".into()),
        Ok(Ok(ServerMessage::Welcome(w))) => w,
        Ok(Ok(ServerMessage::Rejected(r))) => return End::Rejected(format!("{} ({})", r.reason, r.code.as_str())),
        Ok(Ok(other)) => return End::Lost(format!("unexpected {other:?} during the handshake")),
        Ok(Err(e)) => return End::Lost(e.to_string()),
    };
    tracing::info!(
        target: "gradient::proto",
        "connected to {url} as {} for {} registration(s)",
        identity.worker_id,
        welcome.authorized.len()
    );
    // A server silent for this long is gone: drop the link and reconnect. A send that cannot leave for as long
    // (packets dropped, the socket's buffer full) is the same.
    let lost_after = Duration::from_secs(u64::from(welcome.lost_after_secs.max(1)));
    // The reports not acknowledged yet, in their first order, before anything new.
    // What jobs said while no link was up is waiting in the channel: the reports among it are in the outbox too.
    // The older reports of the outbox go first, then that, in order (so a log piece still comes before its job's
    // end).
    let mut waiting = Vec::new();
    while let Ok(msg) = work.out_rx.try_recv() {
        waiting.push(msg);
    }
    let queued: BTreeSet<proto::ReportId> = waiting
        .iter()
        .flat_map(|m| match m {
            WorkerMessage::Report(r) => vec![r.report_id],
            WorkerMessage::Reports { reports } => reports.iter().map(|r| r.report_id).collect(),
            _ => Vec::new(),
        })
        .collect();
    let older: Vec<proto::Report> = work
        .outbox()
        .pending()
        .filter(|r| !queued.contains(&r.report_id))
        .cloned()
        .collect();
    let resent = older.len() + queued.len();
    let mut pending = proto::report_frames(older);
    if resent > 0 {
        tracing::info!(target: "gradient::proto", "sending {resent} report(s) not acknowledged yet");
    }
    pending.extend(waiting);
    for msg in pending {
        if let Err(e) = send_within(&mut tx, &msg, lost_after).await {
            return End::Lost(e);
        }
    }
    let mut heard = tokio::time::Instant::now();
    let mut beat = tokio::time::interval(Duration::from_secs(u64::from(welcome.heartbeat_interval_secs.max(1))));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(heard + lost_after) => {
                return End::Lost(format!("the server was silent for {}s", lost_after.as_secs()));
            }
            msg = rx.recv() => { heard = tokio::time::Instant::now(); match msg {
                Ok(ServerMessage::Heartbeat) => {}
                Ok(ServerMessage::Abort { job_id }) => {
                    tracing::info!(target: "gradient::proto", "aborting job {job_id}");
                    work.abort(job_id);
                }
                Ok(ServerMessage::Rejected(r)) => return End::Rejected(format!("{} ({})", r.reason, r.code.as_str())),
                Ok(ServerMessage::Ack { report_ids }) => {
                    let mut outbox = work.outbox();
                    for id in report_ids {
                        outbox.ack(id);
                    }
                }
                Ok(ServerMessage::Assign { job }) => {
                    let kind = match &job { Job::Evaluate { .. } => "evaluation", Job::Build { .. } => "build" };
                    tracing::info!(target: "gradient::proto", "running {kind} job {}", job.id());
                    work.start(job);
                }
                Ok(_) => {}
                Err(LinkError::Closed { reason }) => return End::Lost(format!("closed by the server{}", reason.map(|r| format!(": {r}")).unwrap_or_default())),
                Err(e) => return End::Lost(e.to_string()),
            }},
            Some(msg) = work.out_rx.recv() => {
                // What changes state on the server is in the outbox until acknowledged (sent again on the next
                // link if this one is lost); a log piece of a lost link may be dropped.
                if let Err(e) = send_within(&mut tx, &msg, lost_after).await {
                    return End::Lost(e);
                }
            }
            _ = beat.tick() => {
                if let Err(e) = send_within(&mut tx, &WorkerMessage::Heartbeat, lost_after).await {
                    return End::Lost(e);
                }
            }
        }
    }
}

/// Whether a message goes through the outbox: the job reports that change state on the server. `job_started`
/// and the stages before `pushing` change nothing there and go bare, as do log pieces and heartbeats.
fn reported(msg: &WorkerMessage) -> bool {
    proto::Report::is_reportable(msg)
        && !matches!(
            msg,
            WorkerMessage::JobStarted { .. }
                | WorkerMessage::JobProgress {
                    stage: proto::Stage::Fetching
                        | proto::Stage::Evaluating
                        | proto::Stage::Substituting
                        | proto::Stage::Building,
                    ..
                }
        )
}

/// Sends within `limit`: a frame that cannot leave for that long means the link is gone.
async fn send_within(
    tx: &mut gradient_link_ws::LinkSender,
    msg: &WorkerMessage,
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, tx.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("a frame could not be sent for {}s", limit.as_secs())),
    }
}

#[cfg(test)]
mod book_tests {
    use super::*;

    fn held(book: &Book, ids: &[JobId]) {
        book.lock().0.extend(ids.iter().copied());
    }

    #[test]
    fn an_outcome_is_reported_once_and_never_after_an_abort() {
        let book = Book::default();
        let (a, b) = (JobId::new(), JobId::new());
        held(&book, &[a, b]);
        assert!(book.claim(a), "a finished job is reported");
        assert!(!book.claim(a), "once");
        assert!(!book.abort_batched(a), "a reported job is not aborted again");
        assert!(book.abort_batched(b));
        assert!(book.is_aborted(b));
        assert!(!book.claim(b), "reported aborted already");
        assert!(book.lock().0.is_empty(), "nothing held any more");
        assert!(!book.abort_batched(JobId::new()), "not a job of ours");
    }

    #[tokio::test]
    async fn a_batch_is_stopped_once_all_its_jobs_are_aborted() {
        let book = Book::default();
        let (a, b) = (JobId::new(), JobId::new());
        held(&book, &[a, b]);
        let task = tokio::spawn(std::future::pending::<()>());
        book.register(vec![a, b], task.abort_handle());
        assert!(book.abort_batched(a));
        assert!(!task.is_finished(), "b still wants the batch");
        assert!(book.abort_batched(b));
        assert!(task.await.unwrap_err().is_cancelled(), "the batch is stopped");
        let (running, state) = book.lock();
        assert!(running.is_empty() && state.aborted.is_empty() && state.batches.is_empty());
    }

    #[tokio::test]
    async fn a_batch_whose_other_jobs_were_reported_already_is_stopped_by_aborting_the_rest() {
        // Builds of a run are reported as each is built and pushed: aborting the ones still building stops Nix.
        let book = Book::default();
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        held(&book, &[a, b, c]);
        let task = tokio::spawn(std::future::pending::<()>());
        book.register(vec![a, b, c], task.abort_handle());
        assert!(book.claim(a), "a built and pushed: reported");
        assert!(book.abort_batched(b));
        assert!(!task.is_finished(), "c still wants the batch");
        assert!(book.abort_batched(c));
        assert!(task.await.unwrap_err().is_cancelled(), "the batch is stopped");
        let (running, state) = book.lock();
        assert!(running.is_empty() && state.aborted.is_empty() && state.batches.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_their_parallel_builds_stay_within_the_machine() {
        // (builds the machine runs at once, Nix runs at once, builds per run)
        let table = [(10, 2, 5), (11, 2, 5), (100, 2, 50), (3, 2, 1), (1, 1, 1), (0, 1, 1)];
        for (parallel, runs, per_run) in table {
            assert_eq!(run_shape(parallel), (runs, per_run), "{parallel}");
            assert!(parallel == 0 || runs as u32 * per_run <= parallel, "{parallel}");
        }
    }

    #[test]
    fn few_parallel_builds_still_hold_a_batch_per_run() {
        // (parallel builds, build jobs queued beyond them)
        for (parallel, queued) in [(0, 0), (1, 255), (2, 254), (64, 192), (256, 0), (300, 0)] {
            assert_eq!(build_jobs_queued(parallel), queued, "{parallel}");
        }
    }
}

#[cfg(test)]
mod report_tests {
    use super::*;
    use gradient_domain::proto::Stage;

    #[test]
    fn only_what_changes_state_on_the_server_is_kept_in_the_outbox() {
        let job_id = JobId::new();
        let progress = |stage| WorkerMessage::JobProgress { job_id, stage };
        for (msg, kept) in [
            (progress(Stage::Pushing), true),
            (
                WorkerMessage::JobFinished {
                    job_id,
                    outcome: proto::JobOutcome::Success,
                },
                true,
            ),
            (
                WorkerMessage::EvalResult {
                    job_id,
                    derivations: vec![],
                    errors: vec![],
                },
                true,
            ),
            (progress(Stage::Building), false),
            (progress(Stage::Substituting), false),
            (progress(Stage::Fetching), false),
            (progress(Stage::Evaluating), false),
            (WorkerMessage::JobStarted { job_id }, false),
            (
                WorkerMessage::JobLog {
                    job_id,
                    seq: 0,
                    text: "x".into(),
                },
                false,
            ),
        ] {
            assert_eq!(reported(&msg), kept, "{msg:?}");
        }
    }
}
