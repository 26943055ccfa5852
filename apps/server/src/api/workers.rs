use super::dto::{Nullable, Reply, ok};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct WorkersApi(pub AppState);

#[derive(Object)]
pub struct RegisterWorkerRequest {
    /// The worker's id: a version 4 UUID (the worker writes it to `<stateDir>/worker-id` on first start).
    pub worker_id: String,
    /// Your own token (`openssl rand -base64 48`); when omitted the server generates one and answers it.
    pub token: Option<String>,
    /// A listening worker's `/proto` URL (`ws://host:3100/proto`, `wss://…`): the server dials it and keeps
    /// redialling when the link drops. Omitted: the worker dials the server. Held to the server's network
    /// policy (422 `worker_url_not_allowed` for loopback, link-local and `localhost` unless the operator allows
    /// local addresses; 422 `invalid_worker_url` for anything but a `ws://`/`wss://` URL).
    pub url: Option<String>,
}

/// A registration. Put `peer_id:token` in the worker's peers file.
#[derive(Object)]
pub struct RegisteredWorker {
    pub peer_id: Uuid,
    /// Present only when the server generated the token; shown once.
    #[oai(skip_serializing_if_is_none)]
    pub token: Option<String>,
}

#[derive(Object)]
pub struct WorkerView {
    pub peer_id: Uuid,
    pub worker_id: Uuid,
    /// Whether the worker is connected and authorized for this registration now.
    pub connected: bool,
    /// While connected: what it does (`fetch`, `eval`, `build`, `sign`, as far as this server allows).
    pub capabilities: Vec<String>,
    /// While connected: the systems it builds for.
    pub systems: Vec<String>,
    /// While connected: how many builds it runs at once; `null` otherwise.
    pub max_concurrent_builds: Nullable<u32>,
    pub created_at: DateTime<Utc>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
    /// The URL the server dials for a listening worker; `null` when the worker dials the server.
    pub url: Nullable<String>,
}

/// An organization's workers and queue now (`GET /orgs/{org}/overview`).
#[derive(Object)]
pub struct FleetOverviewView {
    pub workers: Vec<FleetWorkerView>,
    pub queue: QueueOverviewView,
}

/// A registered worker; what its link offers while it is connected for this organization (empty lists and
/// zero slots otherwise).
#[derive(Object)]
pub struct FleetWorkerView {
    pub peer_id: Uuid,
    pub worker_id: Uuid,
    pub connected: bool,
    pub registered_at: DateTime<Utc>,
    /// The systems it builds for, e.g. `x86_64-linux`.
    pub systems: Vec<String>,
    /// Its system features (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
    pub build_slots: u32,
    pub evaluation_slots: u32,
    /// This organization's jobs it holds, oldest first (another organization's are not shown).
    pub jobs: Vec<RunningJobView>,
}

#[derive(Object)]
pub struct RunningJobView {
    pub job_id: Uuid,
    /// `build` or `evaluation`.
    pub kind: String,
    /// The `.drv` path of a build, the evaluation's id for an evaluation.
    pub subject: String,
    /// The system a build needs; `evaluation` for an evaluation.
    pub system: String,
    /// When the worker got it.
    pub since: DateTime<Utc>,
}

/// The organization's jobs waiting for a worker and running on one.
#[derive(Object)]
pub struct QueueOverviewView {
    pub queued: u64,
    pub running: u64,
    /// When the job waiting longest was queued; `null` when none waits.
    pub oldest_queued_at: Nullable<DateTime<Utc>>,
    /// The same per system (`evaluation` for evaluations), by name.
    pub systems: Vec<SystemQueueView>,
}

#[derive(Object)]
pub struct SystemQueueView {
    pub system: String,
    pub queued: u64,
    pub running: u64,
    pub oldest_queued_at: Nullable<DateTime<Utc>>,
}

fn job_view(j: &gradient_domain::service::RunningJob) -> RunningJobView {
    use gradient_domain::model::JobKind;
    let (kind, subject) = match &j.job.kind {
        JobKind::Build { derivation, .. } => ("build", derivation.clone()),
        JobKind::Evaluate { evaluation_id } => ("evaluation", evaluation_id.0.to_string()),
    };
    RunningJobView {
        job_id: j.job.id.0,
        kind: kind.to_owned(),
        subject,
        system: gradient_domain::service::job_system(&j.job).to_owned(),
        since: j.since,
    }
}

#[OpenApi(tag = "Tag::Orgs")]
impl WorkersApi {
    /// The organization's worker registrations and whether each worker is connected.
    #[oai(path = "/orgs/:org/workers", method = "get", operation_id = "list_workers")]
    async fn list(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<WorkerView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        let regs = self.0.app.worker_registrations(&caller, &org).await?;
        ok(regs
            .iter()
            .map(|r| {
                let info = self.0.fleet.links.info_for_peer(r.peer_id);
                let capabilities = info.as_ref().map_or_else(Vec::new, |i| {
                    let c = i.capabilities;
                    [
                        ("fetch", c.fetch),
                        ("eval", c.eval),
                        ("build", c.build),
                        ("sign", c.sign),
                    ]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(name, _)| name.to_owned())
                    .collect()
                });
                WorkerView {
                    peer_id: r.peer_id.0,
                    worker_id: r.worker_id.0,
                    connected: self.0.fleet.links.is_connected(r.peer_id),
                    capabilities,
                    systems: info.as_ref().map(|i| i.systems.clone()).unwrap_or_default(),
                    max_concurrent_builds: info.map(|i| i.max_concurrent_builds).into(),
                    created_at: r.created_at,
                    managed: r.managed,
                    url: r.url.clone().into(),
                }
            })
            .collect())
    }

    /// The organization's workers (systems, slots, the jobs each runs) and its queue per system, for the
    /// members and visitors who may view it.
    #[oai(path = "/orgs/:org/overview", method = "get", operation_id = "get_org_overview")]
    async fn overview(&self, auth: MaybeToken, org: Path<String>) -> Reply<FleetOverviewView> {
        let caller = self.0.caller(auth.bearer()).await?;
        let o = self.0.app.fleet_overview(&caller, &org).await?;
        ok(FleetOverviewView {
            workers: o
                .workers
                .iter()
                .map(|w| {
                    let live = w.live.as_ref();
                    FleetWorkerView {
                        peer_id: w.registration.peer_id.0,
                        worker_id: w.registration.worker_id.0,
                        connected: live.is_some(),
                        registered_at: w.registration.created_at,
                        systems: live.map(|l| l.systems.clone()).unwrap_or_default(),
                        features: live.map(|l| l.features.clone()).unwrap_or_default(),
                        build_slots: live.map_or(0, |l| l.build_slots),
                        evaluation_slots: live.map_or(0, |l| l.evaluation_slots),
                        jobs: live.map(|l| l.jobs.iter().map(job_view).collect()).unwrap_or_default(),
                    }
                })
                .collect(),
            queue: QueueOverviewView {
                queued: o.queue.queued,
                running: o.queue.running,
                oldest_queued_at: o.queue.oldest_queued_at.into(),
                systems: o
                    .queue
                    .systems
                    .into_iter()
                    .map(|s| SystemQueueView {
                        system: s.system,
                        queued: s.queued,
                        running: s.running,
                        oldest_queued_at: s.oldest_queued_at.into(),
                    })
                    .collect(),
            },
        })
    }

    /// Registers a worker under the organization (`manage_workers`).
    #[oai(path = "/orgs/:org/workers", method = "post", operation_id = "register_worker")]
    async fn register(
        &self,
        auth: Token,
        org: Path<String>,
        body: Json<RegisterWorkerRequest>,
    ) -> Reply<RegisteredWorker> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let new = self
            .0
            .app
            .register_worker(&caller, &org, &body.0.worker_id, body.0.token, body.0.url)
            .await?;
        ok(RegisteredWorker {
            peer_id: new.registration.peer_id.0,
            token: new.token,
        })
    }

    /// Deletes a registration (`manage_workers`); a worker connected for it is disconnected at once.
    #[oai(path = "/orgs/:org/workers/:peer", method = "delete", operation_id = "delete_worker")]
    async fn delete(&self, auth: Token, org: Path<String>, peer: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_worker_registration(&caller, &org, &peer).await?;
        ok("deleted".to_owned())
    }
}
