//! The persistent job queue: the work the server has handed out or will hand out to workers, kept in storage
//! so a restart loses nothing. The scheduler decides what to queue and whom to give it; the storage port keeps
//! the records and applies the few rules that must be atomic (build-once, compare-and-set assignment).

use super::Timestamp;
use crate::{EvaluationId, OrgId, WorkerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one job of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh random (v4) identifier.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One job: something a worker does for an organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: JobId,
    pub org_id: OrgId,
    pub kind: JobKind,
    pub state: JobState,
    /// The queue hands out the oldest jobs first; a requeued job keeps its place.
    pub created_at: Timestamp,
    /// How many times the job was taken back from a worker that was lost (0 for a job never requeued).
    pub attempts: u32,
}

/// What the job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Evaluate the flake of an evaluation.
    Evaluate { evaluation_id: EvaluationId },
    /// Build one derivation.
    Build {
        /// The derivation's store path (`/nix/store/…-name.drv`).
        derivation: String,
        /// The system it builds on, e.g. `x86_64-linux`.
        system: String,
        /// System features the builder must have (`requiredSystemFeatures`), in the derivation's order.
        required_features: Vec<String>,
    },
}

/// Where the job is in its life: `Queued → Assigned → Done | Failed`, and back from `Assigned` to `Queued` when
/// its worker is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Handed to `worker` at `since`.
    Assigned { worker: WorkerId, since: Timestamp },
    /// Finished successfully.
    Done,
    /// Finished unsuccessfully.
    Failed,
}

impl JobState {
    /// Queued or assigned: the job still has work ahead of it.
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Queued | JobState::Assigned { .. })
    }
}
