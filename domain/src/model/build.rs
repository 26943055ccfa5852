use super::Timestamp;
use crate::status::BuildStatus;
use crate::{EvaluationId, OrgId};
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
    pub org_id: OrgId,
    pub drv_path: String,
    pub status: BuildStatus,
    /// The tail of the build log, or a summary of the failure.
    pub log: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
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
