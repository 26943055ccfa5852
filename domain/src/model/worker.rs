use super::Timestamp;
use crate::{OrgId, PeerId, WorkerId};

/// A worker registered under an organization. The worker proves it holds the registration's token when it
/// connects; only the token's hash is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRegistration {
    pub peer_id: PeerId,
    pub org_id: OrgId,
    pub worker_id: WorkerId,
    pub token_hash: String,
    pub created_at: Timestamp,
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
