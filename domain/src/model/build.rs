use super::Timestamp;
use crate::status::BuildStatus;
use crate::{BuildId, EvaluationId, OrgId};
use std::collections::BTreeMap;

/// A store derivation found by an evaluation, identified by its `.drv` path. Derivations are global: the same
/// path always has the same content, so it is stored once however many evaluations (of any organization)
/// find it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    /// `/nix/store/…-name.drv`
    pub drv_path: String,
    pub system: String,
    pub required_features: Vec<String>,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// The `.drv` paths of the derivations whose outputs this one takes as inputs.
    pub inputs: Vec<String>,
}

/// An organization's build of one derivation. There is one per organization and `.drv` path: it is built
/// once however many of the organization's evaluations need it (see [`EvaluationBuild`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub id: BuildId,
    pub org_id: OrgId,
    pub drv_path: String,
    pub status: BuildStatus,
    /// Every status it took and when, oldest first (starting with Queued at `created_at`).
    pub transitions: Vec<Transition<BuildStatus>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Build {
    /// A new queued build of `drv_path`.
    pub fn queued(org_id: OrgId, drv_path: &str, at: Timestamp) -> Self {
        Self {
            id: BuildId::new(),
            org_id,
            drv_path: drv_path.to_owned(),
            status: BuildStatus::Queued,
            transitions: vec![Transition {
                status: BuildStatus::Queued,
                at,
            }],
            created_at: at,
            updated_at: at,
        }
    }

    /// Moves the build to `to` at `at` when its state machine allows it; answers whether it moved.
    pub fn move_to(&mut self, to: BuildStatus, at: Timestamp) -> bool {
        if self.status == to || !self.status.can_become(to) {
            return false;
        }
        self.status = to;
        self.updated_at = at;
        self.transitions.push(Transition { status: to, at });
        true
    }

    /// When it last started building, if it did.
    pub fn started_at(&self) -> Option<Timestamp> {
        self.transitions
            .iter()
            .rev()
            .find(|t| t.status == BuildStatus::Building)
            .map(|t| t.at)
    }

    /// When it ended, if it has.
    pub fn finished_at(&self) -> Option<Timestamp> {
        self.status.is_terminal().then_some(self.updated_at)
    }
}

/// A status something took, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition<S> {
    pub status: S,
    pub at: Timestamp,
}

/// A build's stored log: compressed (see [`crate::logs`]), at most [`crate::logs::LOG_HEAD_BYTES`] +
/// [`crate::logs::LOG_TAIL_BYTES`] of text with a marker where the middle was left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildLog {
    pub build_id: BuildId,
    /// zstd-compressed UTF-8 text.
    pub compressed: Vec<u8>,
    /// The length of the stored text.
    pub size: u64,
    /// How many bytes of what the build printed were left out.
    pub omitted: u64,
    pub created_at: Timestamp,
}

/// That an evaluation needs a build: the closure of its entry points, as the evaluation registered it. The
/// build is the evaluation's organization's build of `drv_path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EvaluationBuild {
    pub evaluation_id: EvaluationId,
    pub drv_path: String,
}

/// An evaluation's entry point: the attribute that selected a derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub evaluation_id: EvaluationId,
    pub attribute: String,
    pub drv_path: String,
}

/// Why a build did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The builder exited non-zero.
    BuilderFailed,
    /// An input could not be built or substituted.
    DependencyFailed,
    Timeout,
    /// The worker, the link or the store failed; not the derivation's fault.
    Infrastructure,
}
