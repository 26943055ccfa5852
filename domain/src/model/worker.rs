use super::Timestamp;
use crate::{OrgId, PeerId, WorkerId};

/// A worker registered under an organization. The worker proves it holds the registration's token when it
/// connects. What is stored cannot answer that challenge: the proof key (SHA-256 of the token) sealed with the
/// crypt secret (see [`crate::proto::seal_proof_key`]), so a copy of the database alone is no worker login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRegistration {
    pub peer_id: PeerId,
    pub org_id: OrgId,
    pub worker_id: WorkerId,
    /// The sealed proof key. Rows written before sealing existed hold the key's lowercase hex until
    /// [`crate::service::Gradient::seal_worker_proof_keys`] seals them at start-up; such rows never verify.
    pub proof_key: crate::crypt::Sealed,
    pub created_at: Timestamp,
    /// Declared in the server's declarative state: the API cannot delete it.
    pub managed: bool,
    /// A listening worker's `/proto` URL (`ws://` or `wss://`): the server dials it instead of waiting for the
    /// worker to dial. `None`: the worker dials the server.
    pub url: Option<String>,
}

/// What a worker can do; the server's and the worker's sets are AND-ed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub fetch: bool,
    pub eval: bool,
    pub build: bool,
    pub sign: bool,
}

impl Capabilities {
    pub fn and(self, other: Self) -> Self {
        Self {
            fetch: self.fetch && other.fetch,
            eval: self.eval && other.eval,
            build: self.build && other.build,
            sign: self.sign && other.sign,
        }
    }
}
