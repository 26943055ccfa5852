//! Every frame on the link, as the JSON it is. Field names are the wire names; `docs/protocol.md` shows one
//! example of each, and a test decodes those examples, so the two cannot drift apart.
//!
//! These are wire types, kept apart from the model on purpose: the model can change shape without changing the
//! protocol. `From` conversions bridge the two where they meet.

use crate::model::JobId;
use crate::{PeerId, WorkerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Worker → server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// First frame of every connection.
    Hello(Hello),
    /// Answer to the server's [`Challenge`].
    ChallengeResponse(ChallengeResponse),
    /// Liveness, sent every `heartbeat_interval_secs` (any frame counts as a sign of life).
    Heartbeat,
    /// The worker accepted an assigned job and began it.
    JobStarted { job_id: JobId },
    /// The job moved to another stage.
    JobProgress { job_id: JobId, stage: Stage },
    /// A piece of the job's log; `seq` counts from 0 without gaps, per job.
    JobLog { job_id: JobId, seq: u64, text: String },
    /// A batch of what an evaluation found; an evaluation sends as many as it needs, then `JobFinished`.
    EvalResult {
        job_id: JobId,
        #[serde(default)]
        derivations: Vec<EvaluatedDerivation>,
        #[serde(default)]
        errors: Vec<AttributeError>,
    },
    /// The job ended; its slot is free again.
    JobFinished { job_id: JobId, outcome: JobOutcome },
    /// A report that changes state (`job_progress`, `eval_result`, `job_finished`), under an id the worker keeps
    /// it by until the server's `ack` names it: the worker sends it again after reconnecting (or restarting)
    /// until then, and the server answers a repeated one without changing anything twice.
    Report(Report),
    /// Several reports at once, in the order the worker made them: what its jobs reported while the previous
    /// frame was being written travels, is kept and is acknowledged together (`docs/protocol.md`, `reports`).
    Reports { reports: Vec<Report> },
}

/// Identifies one report of one worker, chosen by the worker (a random v4 UUID) and kept with the report until
/// it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReportId(pub uuid::Uuid);

impl ReportId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for ReportId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ReportId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A state-changing message under its [`ReportId`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub report_id: ReportId,
    /// `job_started`, `job_progress`, `eval_result` or `job_finished` ([`Report::is_reportable`]).
    pub report: Box<WorkerMessage>,
}

impl Report {
    pub fn new(message: WorkerMessage) -> Self {
        Self {
            report_id: ReportId::new(),
            report: Box::new(message),
        }
    }

    /// Whether a message may travel as a report: the job reports, never the handshake, heartbeats, log pieces
    /// (live, best effort) or another report.
    pub fn is_reportable(message: &WorkerMessage) -> bool {
        matches!(
            message,
            WorkerMessage::JobStarted { .. }
                | WorkerMessage::JobProgress { .. }
                | WorkerMessage::EvalResult { .. }
                | WorkerMessage::JobFinished { .. }
        )
    }

    /// The job the report is about.
    pub fn job_id(&self) -> Option<JobId> {
        match &*self.report {
            WorkerMessage::JobStarted { job_id }
            | WorkerMessage::JobProgress { job_id, .. }
            | WorkerMessage::EvalResult { job_id, .. }
            | WorkerMessage::JobFinished { job_id, .. } => Some(*job_id),
            _ => None,
        }
    }
}

/// Server → worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Challenge(Challenge),
    Welcome(Welcome),
    /// The server refuses the connection (during the handshake) or ends it (afterwards), then closes it.
    Rejected(Rejected),
    Heartbeat,
    /// Run this job.
    Assign {
        job: Job,
    },
    /// Stop this job; the worker answers `JobFinished` with outcome `aborted`.
    Abort {
        job_id: JobId,
    },
    /// The report is recorded (durably written), or refused for good (it can never apply: the job is not
    /// this worker's, or ended): the worker forgets it. A report the server could not record yet (its
    /// database is unavailable) is not acknowledged; the server retries it in order on this link, and the
    /// worker sends it again after reconnecting.
    Ack {
        /// Every report done with since the last `ack`, in the order they came.
        report_ids: Vec<ReportId>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`super::PROTOCOL_VERSION`] of the worker. This field and `type` keep their meaning in every version.
    pub version: u32,
    pub worker_id: WorkerId,
    pub capabilities: Capabilities,
    /// Nix systems the worker builds for (`x86_64-linux`, …). `builtin` derivations go to any worker.
    #[serde(default)]
    pub systems: Vec<String>,
    /// Nix system features the worker supports (`kvm`, `big-parallel`, …).
    #[serde(default)]
    pub features: Vec<String>,
    /// Derivations the worker builds at once: its build slots.
    pub max_concurrent_builds: u32,
    pub max_concurrent_evaluations: u32,
    /// Build jobs the worker takes beyond its slots, to build in the same batches as the running ones (so few
    /// slots do not mean small batches). They are given only when no worker has a free slot for the job.
    #[serde(default)]
    pub queued_builds: u32,
    /// Jobs the worker still holds from an earlier connection: running, or finished and not yet reported.
    /// Jobs the server had assigned to this worker that are not listed go back to the queue.
    #[serde(default)]
    pub held_jobs: Vec<JobId>,
    /// Sent by a listening worker on a link the server dialed: a fresh nonce (base64 of 32 random bytes) the
    /// server proves a registration's key over in `challenge.server_proofs`, before the worker proves anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_nonce: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Base64 of 32 random bytes, fresh for every connection.
    pub nonce: String,
    /// The registrations (peers) of this worker id; the worker proves it holds a token for each it can.
    pub peers: Vec<PeerId>,
    /// On a link the server dialed: the server's proofs over the worker's `hello.server_nonce`
    /// ([`super::make_server_proof`]), one per challenged peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_proofs: Vec<PeerAnswer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub answers: Vec<PeerAnswer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnswer {
    pub peer_id: PeerId,
    /// [`super::make_proof`] of the peer's token over the challenge's nonce.
    pub proof: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The peers whose proofs verified; the worker takes jobs of their organizations only.
    pub authorized: Vec<PeerId>,
    /// What the worker may do on this link: its capabilities AND the server's.
    pub capabilities: Capabilities,
    pub heartbeat_interval_secs: u32,
    /// The server declares the worker lost after this long without a frame; its jobs go back to the queue.
    pub lost_after_secs: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub code: RejectCode,
    /// For humans; never parsed.
    pub reason: String,
}

impl Rejected {
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.reason)
    }
}

/// Why the server refuses or ends a connection. The snake_case names are stable: workers and operators match
/// on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// No organization registered this worker id.
    UnknownWorker,
    /// No answer proved a registration's token.
    BadTokens,
    /// The worker speaks another protocol version.
    VersionMismatch,
    /// A connection with this worker id is already open.
    DuplicateConnection,
    /// The worker's capabilities AND the server's leave nothing to do.
    NoCapability,
    /// The server has no room for another link; retry later.
    ServerFull,
    /// A frame was not valid JSON or not a known message.
    MalformedFrame,
    /// A frame exceeded [`super::MAX_FRAME_BYTES`] (or a log piece [`super::MAX_LOG_CHUNK_BYTES`]).
    FrameTooLarge,
    /// A valid message arrived at the wrong time (e.g. a job report before the handshake ended).
    UnexpectedMessage,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// A registration this link was authorized for was deleted; reconnecting challenges the remaining ones.
    Revoked,
    /// The server is stopping.
    ShuttingDown,
}

impl RejectCode {
    pub const ALL: [Self; 12] = [
        Self::UnknownWorker,
        Self::BadTokens,
        Self::VersionMismatch,
        Self::DuplicateConnection,
        Self::NoCapability,
        Self::ServerFull,
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::UnexpectedMessage,
        Self::HandshakeTimeout,
        Self::Revoked,
        Self::ShuttingDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownWorker => "unknown_worker",
            Self::BadTokens => "bad_tokens",
            Self::VersionMismatch => "version_mismatch",
            Self::DuplicateConnection => "duplicate_connection",
            Self::NoCapability => "no_capability",
            Self::ServerFull => "server_full",
            Self::MalformedFrame => "malformed_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnexpectedMessage => "unexpected_message",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Revoked => "revoked",
            Self::ShuttingDown => "shutting_down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a worker should reconnect (with backoff) after this code; the others need an operator.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::DuplicateConnection | Self::ServerFull | Self::HandshakeTimeout | Self::Revoked | Self::ShuttingDown
        )
    }
}

/// The wire form of [`crate::model::Capabilities`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub fetch: bool,
    #[serde(default)]
    pub eval: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub sign: bool,
}

impl Capabilities {
    /// What both sides allow.
    pub fn and(self, other: Self) -> Self {
        crate::model::Capabilities::from(self).and(other.into()).into()
    }

    /// Whether anything is left to do.
    pub fn any(self) -> bool {
        self.fetch || self.eval || self.build || self.sign
    }
}

impl From<crate::model::Capabilities> for Capabilities {
    fn from(c: crate::model::Capabilities) -> Self {
        Self {
            fetch: c.fetch,
            eval: c.eval,
            build: c.build,
            sign: c.sign,
        }
    }
}

impl From<Capabilities> for crate::model::Capabilities {
    fn from(c: Capabilities) -> Self {
        Self {
            fetch: c.fetch,
            eval: c.eval,
            build: c.build,
            sign: c.sign,
        }
    }
}

/// A unit of work for one worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Fetch a flake at a commit and evaluate the selected attributes to derivations.
    Evaluate {
        job_id: JobId,
        /// Clone URL (https, ssh or file).
        repository: String,
        /// Full commit hash.
        commit: String,
        /// The branch the commit is on, when known: fetched by name (a remote may not serve a bare commit).
        #[serde(default)]
        git_ref: Option<String>,
        /// Attribute selection, as in the project (`packages.*.*, checks.*.*, !checks.*.slow`).
        wildcard: String,
        /// By flake input name.
        #[serde(default)]
        flake_input_overrides: BTreeMap<String, InputOverride>,
        /// Where to push the `.drv` files found, so that any builder can substitute them.
        #[serde(default)]
        push: Option<PushTarget>,
        /// What the repository is fetched with, when its URL is not enough (the organization's SSH deploy key
        /// for `ssh://` and `user@host:path` URLs): for this job only, never stored or logged by the worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<crate::deploy_key::RepositoryCredential>,
    },
    /// Build one derivation and push its outputs.
    Build {
        job_id: JobId,
        /// `/nix/store/…-name.drv`
        drv_path: String,
        /// Output name → store path.
        outputs: BTreeMap<String, String>,
        /// Binary caches to substitute inputs (and the `.drv` closure) from, in order.
        #[serde(default)]
        substituters: Vec<String>,
        /// `name:base64` ed25519 keys the substituted paths must be signed with.
        #[serde(default)]
        trusted_public_keys: Vec<String>,
        /// Credential for Gradient's own caches among `substituters` (netrc password), if they are private.
        #[serde(default)]
        substituter_token: Option<String>,
        /// Where the outputs go once built.
        #[serde(default)]
        push: Option<PushTarget>,
        /// The build fails with kind `timeout` after this long.
        #[serde(default)]
        timeout_secs: Option<u64>,
        /// Inputs of `drv_path` (their `.drv` paths) not built yet whose builds were handed to this worker too:
        /// it builds this job in the same Nix run as them, or after the run that builds them, and reports it
        /// failed with kind `dependency_failed` when one of them was not built. A chain of builds arrives this
        /// way at once.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        batch_inputs: Vec<String>,
        /// How many more build jobs of the same dispatch round follow this one to this worker (0: this is the
        /// round's last); absent when not told (an older server). A worker that gathers a round's builds into
        /// one Nix run starts it once the round is in, rather than after a pause in the assignments.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        round_rest: Option<u32>,
    },
}

impl Job {
    pub fn id(&self) -> JobId {
        match self {
            Self::Evaluate { job_id, .. } | Self::Build { job_id, .. } => *job_id,
        }
    }
}

/// The wire form of [`crate::model::InputOverride`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputOverride {
    /// Replace the input's URL with this flake reference.
    Url(String),
    /// Update the input, keeping the URL the flake declares.
    KeepUrl,
}

impl From<crate::model::InputOverride> for InputOverride {
    fn from(o: crate::model::InputOverride) -> Self {
        match o {
            crate::model::InputOverride::Url(u) => Self::Url(u),
            crate::model::InputOverride::KeepUrl => Self::KeepUrl,
        }
    }
}

/// A Gradient cache to push to over HTTP (see `crate::push`); NAR bytes never cross the link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTarget {
    /// `https://gradient.example.com/cache/<name>`
    pub cache_url: String,
    /// A credential valid for pushing to this cache while the job runs (netrc password / bearer token).
    pub token: String,
}

/// Where a job is. An evaluation goes fetching → evaluating → pushing (its `.drv` files, once every derivation
/// is reported); a build goes substituting → building → pushing (its outputs, once built).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Fetching,
    Evaluating,
    Substituting,
    Building,
    Pushing,
}

/// One derivation an evaluation found: an entry point (with its attribute) or a dependency of one (without).
/// The same derivation may appear more than once, in one batch or several; the server merges by `drv_path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluatedDerivation {
    /// The attribute path that selected it (`packages.x86_64-linux.hello`); `None` for a dependency.
    #[serde(default)]
    pub attribute: Option<String>,
    pub drv_path: String,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    pub system: String,
    #[serde(default)]
    pub required_features: Vec<String>,
    /// The `.drv` paths whose outputs this one takes as inputs.
    #[serde(default)]
    pub input_drvs: Vec<String>,
}

/// An attribute that failed to evaluate; the others still build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeError {
    pub attribute: String,
    pub message: String,
}

impl From<AttributeError> for crate::model::AttributeError {
    fn from(e: AttributeError) -> Self {
        Self {
            attribute: e.attribute,
            message: e.message,
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobOutcome {
    /// A build's outputs are in the push target; an evaluation sent every batch.
    Success,
    Failed {
        kind: FailureKind,
        message: String,
    },
    /// Stopped on the server's `Abort`.
    Aborted,
}

/// Why a job failed: the build failures of [`crate::model::FailureKind`] plus the evaluation's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The builder exited non-zero.
    BuilderFailed,
    /// An input could not be built or substituted.
    DependencyFailed,
    Timeout,
    /// The worker, its store or the network failed; not the job's fault. The server may retry elsewhere.
    Infrastructure,
    /// The repository could not be fetched at the commit.
    FetchFailed,
    /// The flake could not be evaluated at all (attribute-level errors travel in `EvalResult` instead).
    EvaluationFailed,
}

impl FailureKind {
    /// The build failure this is, if it is one (fetch and evaluation failures are not).
    pub fn build_failure(self) -> Option<crate::model::FailureKind> {
        use crate::model::FailureKind as M;
        match self {
            Self::BuilderFailed => Some(M::BuilderFailed),
            Self::DependencyFailed => Some(M::DependencyFailed),
            Self::Timeout => Some(M::Timeout),
            Self::Infrastructure => Some(M::Infrastructure),
            Self::FetchFailed | Self::EvaluationFailed => None,
        }
    }
}

impl From<crate::model::FailureKind> for FailureKind {
    fn from(k: crate::model::FailureKind) -> Self {
        use crate::model::FailureKind as M;
        match k {
            M::BuilderFailed => Self::BuilderFailed,
            M::DependencyFailed => Self::DependencyFailed,
            M::Timeout => Self::Timeout,
            M::Infrastructure => Self::Infrastructure,
        }
    }
}
