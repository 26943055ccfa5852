//! Registering workers under an organization: a registration (peer) binds a worker id to the org and
//! holds the proof key of a token only the worker knows (SHA-256 of the token, sealed with the crypt secret);
//! the worker proves it on every connection.

use super::{Caller, Gradient, Result, ServiceError, refuse_managed};
use crate::model::WorkerRegistration;
use crate::permissions::Permission;
use crate::ports::{Clock, Storage, StorageError};
use crate::{PeerId, WorkerId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

/// Tokens are at least this many random bytes.
pub const MIN_TOKEN_BYTES: usize = 32;

/// A new registration; `token` is in the answer only when the server generated it.
pub struct NewRegistration {
    pub registration: WorkerRegistration,
    pub token: Option<String>,
}

/// Parses a worker id: a version 4 UUID, as workers generate for themselves.
pub fn parse_worker_id(s: &str) -> Result<WorkerId> {
    match uuid::Uuid::parse_str(s.trim()) {
        Ok(id) if id.get_version_num() == 4 => Ok(WorkerId(id)),
        Ok(_) => Err(ServiceError::invalid(
            "invalid_worker_id",
            format!("'{s}' is a UUID but not a version 4 one"),
        )),
        Err(_) => Err(ServiceError::invalid(
            "invalid_worker_id",
            format!("'{s}' is not a UUID"),
        )),
    }
}

/// Checks a caller-supplied token: base64 (as `openssl rand -base64 48` prints) of at least 32 bytes.
pub fn check_token(token: &str) -> Result<()> {
    match STANDARD.decode(token.trim()) {
        Ok(bytes) if bytes.len() >= MIN_TOKEN_BYTES => Ok(()),
        Ok(bytes) => Err(ServiceError::invalid(
            "invalid_token",
            format!(
                "the token holds {} bytes; use at least {MIN_TOKEN_BYTES} (openssl rand -base64 48)",
                bytes.len()
            ),
        )),
        Err(_) => Err(ServiceError::invalid(
            "invalid_token",
            "the token is not base64 (openssl rand -base64 48)",
        )),
    }
}

/// 48 random bytes, base64.
pub fn generate_token() -> String {
    let mut raw = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    STANDARD.encode(raw)
}

/// How many registrations with a URL (listening workers the server dials) one organization may hold.
pub const MAX_LISTENING_WORKERS_PER_ORG: usize = 16;

/// A listening worker's URL as registered: `ws://` or `wss://` with a host (`invalid_worker_url`), at an address
/// the network policy lets the server reach (`worker_url_not_allowed`: loopback, link-local, `localhost` unless
/// `GRADIENT_ALLOW_LOCAL_REPOSITORIES`, private ranges when `GRADIENT_DENY_PRIVATE_NETWORKS`), at most 2048 bytes
/// without control characters. Answers the URL trimmed.
pub fn check_worker_url(url: &str, policy: &crate::reach::NetworkPolicy) -> Result<String> {
    let url = url.trim();
    let invalid = || {
        ServiceError::invalid(
            "invalid_worker_url",
            "a worker URL is ws://host[:port]/path or wss://host[:port]/path (the worker's /proto listener)",
        )
    };
    if url.len() > 2048 || url.chars().any(char::is_control) {
        return Err(invalid());
    }
    let remote = crate::reach::parse_ws_url(url).ok_or_else(invalid)?;
    crate::reach::check_remote(&remote, policy).map_err(|why| ServiceError::invalid("worker_url_not_allowed", why))?;
    Ok(url.to_owned())
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Every registration of the worker, in all organizations: what a connecting worker is challenged for.
    pub async fn registrations_of_worker(&self, worker: crate::WorkerId) -> Result<Vec<WorkerRegistration>> {
        Ok(self.storage.worker_registrations_for(worker).await?)
    }

    pub async fn register_worker(
        &self,
        caller: &Caller,
        org: &str,
        worker_id: &str,
        token: Option<String>,
        url: Option<String>,
    ) -> Result<NewRegistration> {
        let org = self.org_requiring(caller, org, Permission::ManageWorkers).await?;
        let worker_id = parse_worker_id(worker_id)?;
        let url = url.map(|u| check_worker_url(&u, &self.settings.network)).transpose()?;
        // The server dials every registered URL for as long as it is registered: one organization's registrations
        // must not take the dialer's whole capacity.
        if url.is_some()
            && self
                .storage
                .worker_registrations(org.id)
                .await?
                .iter()
                .filter(|r| r.url.is_some())
                .count()
                >= MAX_LISTENING_WORKERS_PER_ORG
        {
            return Err(ServiceError::conflict(
                "too_many_listening_workers",
                format!(
                    "an organization may register at most {MAX_LISTENING_WORKERS_PER_ORG} listening workers (with a URL the server dials)"
                ),
            ));
        }
        // The co-located worker's registrations are the server's own: nobody registers its id with a token of
        // their choosing (and so takes its place on the link while it is away).
        if self.settings.local_worker.as_ref().is_some_and(|l| l.id == worker_id) {
            return Err(ServiceError::conflict(
                "worker_id_reserved",
                format!("worker {worker_id} is this server's own worker; choose another id"),
            ));
        }
        let (token, shown) = match token {
            Some(t) => {
                check_token(&t)?;
                (t.trim().to_owned(), None)
            }
            None => {
                let t = generate_token();
                (t.clone(), Some(t))
            }
        };
        let registration = WorkerRegistration {
            managed: false,
            peer_id: PeerId::new(),
            org_id: org.id,
            worker_id,
            proof_key: crate::proto::seal_proof_key(&self.crypt, &crate::proto::proof_key(&token)),
            created_at: self.clock.now(),
            url,
        };
        self.storage
            .create_worker_registration(&registration)
            .await
            .map_err(|e| match e {
                StorageError::Conflict(_) => ServiceError::conflict(
                    "worker_registered",
                    format!("worker {worker_id} is already registered in '{}'", org.name),
                ),
                other => other.into(),
            })?;
        // The worker and its registration by id; the token (shown once, or the caller's) is never recorded.
        self.audit(
            caller,
            org.id,
            crate::model::AuditAction::WorkerRegistered,
            format!("worker {worker_id}"),
            format!("registration {}", registration.peer_id.0),
        )
        .await?;
        Ok(NewRegistration {
            registration,
            token: shown,
        })
    }

    /// The listening workers the server dials: each worker id and URL some registration names, once, oldest
    /// registration first. The network policy is applied again by the dialer to the addresses the URL resolves
    /// to; a URL it no longer permits (saved while local addresses were allowed) is left out here.
    pub async fn listening_workers(&self) -> Result<Vec<(crate::WorkerId, String)>> {
        let mut seen = std::collections::BTreeSet::new();
        Ok(self
            .storage
            .all_worker_registrations()
            .await?
            .into_iter()
            .filter_map(|r| Some((r.worker_id, r.url?)))
            .filter(|(_, url)| check_worker_url(url, &self.settings.network).is_ok())
            .filter(|pair| seen.insert(pair.clone()))
            .collect())
    }

    /// Seals the proof keys of registrations stored before sealing existed (they held SHA-256 of the token
    /// as hex, which is itself the key that answers a challenge). Run at start-up, before `/proto` listens;
    /// answers how many rows it sealed. Rows that are neither sealed nor such a key are left alone (they never
    /// verify).
    pub async fn seal_worker_proof_keys(&self) -> Result<usize> {
        let mut sealed = 0;
        for r in self.storage.all_worker_registrations().await? {
            if let Some(key) = crate::proto::legacy_proof_key(&r.proof_key) {
                let new = crate::proto::seal_proof_key(&self.crypt, &key);
                if self.storage.set_worker_proof_key(r.peer_id, &r.proof_key, &new).await? {
                    sealed += 1;
                }
            }
        }
        Ok(sealed)
    }

    pub async fn worker_registrations(&self, caller: &Caller, org: &str) -> Result<Vec<WorkerRegistration>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        Ok(self.storage.worker_registrations(org.id).await?)
    }

    /// Deletes a registration; a worker's link proved with it loses it at once (and is closed when it has no
    /// other).
    pub async fn delete_worker_registration(&self, caller: &Caller, org: &str, peer: &str) -> Result<()> {
        let org = self.org_requiring(caller, org, Permission::ManageWorkers).await?;
        let missing = || ServiceError::NotFound(format!("no worker registration {peer} in '{}'", org.name));
        let peer = uuid::Uuid::parse_str(peer).map(PeerId).map_err(|_| missing())?;
        if let Some(r) = self.storage.worker_registration(peer).await?
            && r.org_id == org.id
        {
            refuse_managed(r.managed, format_args!("worker registration {peer}"))?;
        }
        if self.storage.delete_worker_registration(org.id, peer).await? {
            self.fleet.revoke(peer);
            self.audit(
                caller,
                org.id,
                crate::model::AuditAction::WorkerDeleted,
                format!("registration {}", peer.0),
                "",
            )
            .await
        } else {
            Err(missing())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_urls_follow_the_network_policy() {
        use crate::reach::NetworkPolicy;
        let code = |url: &str, policy: &NetworkPolicy| match check_worker_url(url, policy) {
            Ok(_) => None,
            Err(ServiceError::Invalid { code, .. }) => Some(code),
            Err(e) => panic!("{e:?}"),
        };
        let default = NetworkPolicy::default();
        assert_eq!(code("wss://builder.example.com/proto", &default), None);
        assert_eq!(code("ws://10.1.2.3:3100/proto", &default), None);
        for local in [
            "ws://127.0.0.1:3100/proto",
            "ws://localhost:3100/proto",
            "ws://169.254.169.254/proto",
            "ws://[::1]:3100/proto",
            "ws://2130706433:3100/proto",
        ] {
            assert_eq!(code(local, &default), Some("worker_url_not_allowed"), "{local}");
            assert_eq!(code(local, &NetworkPolicy::ALLOW_ALL), None, "{local}");
        }
        let deny_private = NetworkPolicy {
            allow_local: false,
            deny_private: true,
        };
        assert_eq!(
            code("ws://10.1.2.3:3100/proto", &deny_private),
            Some("worker_url_not_allowed")
        );
        for bad in [
            "http://builder/proto",
            "builder:3100",
            "ws://",
            "ws://a b/proto",
            "ws://x/a\u{7}b",
        ] {
            assert_eq!(
                code(bad, &NetworkPolicy::ALLOW_ALL),
                Some("invalid_worker_url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn worker_ids_must_be_v4() {
        assert!(parse_worker_id("550e8400-e29b-41d4-a716-446655440001").is_ok());
        assert_eq!(
            parse_worker_id("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
                .unwrap_err()
                .code(),
            "invalid_worker_id"
        );
        assert_eq!(parse_worker_id("worker-1").unwrap_err().code(), "invalid_worker_id");
    }

    #[test]
    fn tokens() {
        let t = generate_token();
        assert_eq!(t.len(), 64);
        assert!(check_token(&t).is_ok());
        assert_eq!(check_token("c2hvcnQ=").unwrap_err().code(), "invalid_token");
        assert_eq!(check_token("not base64!").unwrap_err().code(), "invalid_token");
    }
}
