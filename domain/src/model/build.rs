use super::Timestamp;
use crate::status::BuildStatus;
use crate::{BuildAttemptId, BuildId, DerivationId, EvaluationId, WorkerId};

/// A store derivation found by an evaluation. Derivations are shared between evaluations: the same `.drv`
/// path is one row, so it is built once however many evaluations need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    pub id: DerivationId,
    /// `/nix/store/…-name.drv`
    pub drv_path: String,
    pub system: String,
    pub required_features: Vec<String>,
    pub outputs: Vec<DerivationOutput>,
    /// The derivations whose outputs this one takes as inputs.
    pub inputs: Vec<DerivationId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivationOutput {
    pub name: String,
    pub path: String,
}

/// The build of one derivation; retries and restarts are attempts under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub id: BuildId,
    pub derivation_id: DerivationId,
    pub status: BuildStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// An evaluation's entry point: the attribute that selected a derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    pub evaluation_id: EvaluationId,
    pub attribute: String,
    pub derivation_id: DerivationId,
}

/// One try at building a derivation on one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildAttempt {
    pub id: BuildAttemptId,
    pub build_id: BuildId,
    pub worker: WorkerId,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub failure: Option<FailureKind>,
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
