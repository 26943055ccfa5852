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
}

#[OpenApi(tag = "Tag::Orgs")]
impl WorkersApi {
    /// The organization's worker registrations and whether each worker is connected.
    #[oai(path = "/orgs/:org/workers", method = "get")]
    async fn list(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<WorkerView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        let regs = self.0.app.worker_registrations(&caller, &org).await?;
        ok(regs
            .iter()
            .map(|r| {
                let info = self.0.links.info_for_peer(r.peer_id);
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
                    connected: self.0.links.is_connected(r.peer_id),
                    capabilities,
                    systems: info.as_ref().map(|i| i.systems.clone()).unwrap_or_default(),
                    max_concurrent_builds: info.map(|i| i.max_concurrent_builds).into(),
                    created_at: r.created_at,
                }
            })
            .collect())
    }

    /// Registers a worker under the organization (`manage_workers`).
    #[oai(path = "/orgs/:org/workers", method = "post")]
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
            .register_worker(&caller, &org, &body.0.worker_id, body.0.token)
            .await?;
        ok(RegisteredWorker {
            peer_id: new.registration.peer_id.0,
            token: new.token,
        })
    }

    /// Deletes a registration (`manage_workers`); a worker connected for it is disconnected at once.
    #[oai(path = "/orgs/:org/workers/:peer", method = "delete")]
    async fn delete(&self, auth: Token, org: Path<String>, peer: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let peer = self.0.app.delete_worker_registration(&caller, &org, &peer).await?;
        self.0.links.revoke_peer(peer);
        ok("deleted".to_owned())
    }
}
