//! How a worker drives Nix: fetch a flake at a commit into the store, evaluate the selected attributes to
//! derivations, build one derivation, list a closure and export store paths (what a push sends to a cache
//! through the cache client port). Adapter: `nix-cli` (the `nix` command line, Nix 2.8 and later).
//!
//! Conventions every implementation MUST follow:
//! * Store paths are absolute strings (`/nix/store/…`); `.drv` paths name store derivations.
//! * Failures of the thing being worked on are told apart from failures of the machine doing the work:
//!   [`NixError::Fetch`], [`NixError::Eval`], [`NixError::BuildFailed`], [`NixError::DependencyFailed`] and
//!   [`NixError::Timeout`] are the job's outcome; [`NixError::Unavailable`] means "not the job's fault, another
//!   worker may succeed". [`NixError::failure_kind`] maps a build error to the model's [`FailureKind`].
//! * One attribute that fails to evaluate is not an error of the evaluation: it is reported in
//!   [`EvalBatch::errors`] and the other attributes are still evaluated.
//! * Nothing the implementation starts outlives the call: a dropped future or an elapsed timeout stops the
//!   processes it ran.

use crate::model::{FailureKind, InputOverride};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Serializable: the worker's evaluator subprocesses send it back to the worker (`nix-cli`'s `evaluator`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum NixError {
    /// The repository or one of the flake's inputs could not be fetched at the requested revision: unreachable
    /// host, unknown commit or branch, refused credentials, no `flake.nix`, an override naming no input.
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The flake could not be evaluated as a whole: `flake.nix` does not parse (already when fetching), no
    /// output the wildcard names can be enumerated. Never used for one attribute failing (see
    /// [`EvalBatch::errors`]).
    #[error("evaluation failed: {0}")]
    Eval(String),
    /// The derivation's own builder failed: non-zero exit, an output hash mismatch, an output check. The builder
    /// ran; building again without a change will most likely fail again.
    #[error("builder failed")]
    BuildFailed {
        /// The end of the build log (bounded, a few KiB), ending with Nix's own error line.
        log_tail: String,
    },
    /// A derivation the requested one depends on could not be built or substituted, so its builder never ran.
    #[error("dependency failed: {}", drv_path.as_deref().unwrap_or("unknown"))]
    DependencyFailed {
        /// The dependency whose builder failed, when Nix names it.
        drv_path: Option<String>,
        log_tail: String,
    },
    /// The build (or, for a build stuck before starting, the whole operation) exceeded its time limit.
    #[error("timed out")]
    Timeout { log_tail: String },
    /// Pushing to the binary cache failed: unreachable, authentication refused, HTTP error, a path to push that
    /// is not in the local store.
    #[error("push failed: {0}")]
    Push(String),
    /// The request itself is malformed: an invalid wildcard, a commit that is not a hash, a path that is not a
    /// store path. Retrying will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Nix could not do the work for reasons unrelated to the job: the binary is missing, the store or daemon
    /// failed, output was not understood, a `.drv` to build is neither in the store nor substitutable, a
    /// substituter failed mid-download. Another worker may succeed. The text is for logs.
    #[error("nix unavailable: {0}")]
    Unavailable(String),
}

impl NixError {
    /// How a build that ended with this error failed, in the model's terms. Everything that is not the
    /// derivation's (or its dependencies') fault is `Infrastructure`.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::BuildFailed { .. } => FailureKind::BuilderFailed,
            Self::DependencyFailed { .. } => FailureKind::DependencyFailed,
            Self::Timeout { .. } => FailureKind::Timeout,
            Self::Fetch(_) | Self::Eval(_) | Self::Push(_) | Self::InvalidRequest(_) | Self::Unavailable(_) => {
                FailureKind::Infrastructure
            }
        }
    }

    /// The end of the build log, for the build failures that have one.
    pub fn log_tail(&self) -> Option<&str> {
        match self {
            Self::BuildFailed { log_tail } | Self::DependencyFailed { log_tail, .. } | Self::Timeout { log_tail } => {
                Some(log_tail)
            }
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NixError>;

/// The bytes of a `nix-store --export` stream, in chunks of the implementation's choosing.
pub type ExportStream = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<bytes::Bytes>> + Send>>;

/// Paths one [`Nix::export`] takes, at most.
pub const MAX_EXPORT: usize = 1000;

/// What this machine's Nix can build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// `2.8.0`
    pub nix_version: String,
    /// The native system (`x86_64-linux`) followed by Nix's `extra-platforms`.
    pub systems: Vec<String>,
    /// Nix's `system-features` (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
    /// How many derivations Nix can build at once, when something bounds it: each build takes one of the
    /// members of Nix's `build-users-group`. `None`: no such bound is known.
    pub parallel_builds: Option<u32>,
}

/// A flake fetched into the store at one revision, with its inputs resolved. Only meaningful to the
/// implementation (and machine) that produced it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FetchedFlake {
    /// A locked flake reference to exactly this source, e.g. `git+https://host/repo?ref=main&rev=<sha>`.
    pub flake_ref: String,
    /// The source tree in the store.
    pub store_path: String,
    /// The commit the source tree comes from.
    pub rev: Option<String>,
    /// The source tree's NAR hash in SRI form (`sha256-…`).
    pub nar_hash: Option<String>,
    /// The commit's time, in seconds since the Unix epoch.
    pub last_modified: Option<i64>,
    /// The overridden inputs (by input path such as `nixpkgs` or `dep/nixpkgs`) as resolved while fetching,
    /// as locked flake references: every later call uses exactly these, so evaluation sees what fetching saw.
    pub input_pins: BTreeMap<String, String>,
    /// `keep_url` overrides whose resolved lock this implementation could not pin: each call updates them
    /// again (normally empty).
    pub input_updates: Vec<String>,
}

/// An attribute the wildcard selected, evaluated to a derivation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvaluatedAttribute {
    /// `["packages", "x86_64-linux", "hello"]`
    pub attr_path: Vec<String>,
    pub drv_path: String,
}

impl EvaluatedAttribute {
    /// The attribute path as written in Nix (`packages.x86_64-linux.hello`).
    pub fn attribute(&self) -> String {
        attribute_string(&self.attr_path)
    }
}

/// A store derivation found by an evaluation: a selected attribute's or one in its closure.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DerivationInfo {
    pub drv_path: String,
    /// Output name → store path. An output whose path is only known after building (a floating
    /// content-addressed derivation, experimental in Nix) is absent.
    pub outputs: BTreeMap<String, String>,
    pub system: String,
    pub required_system_features: Vec<String>,
    /// The `.drv` paths whose outputs this one takes as inputs, sorted.
    pub input_drvs: Vec<String>,
}

/// A selected attribute that did not evaluate to a derivation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttributeError {
    pub attr_path: Vec<String>,
    /// Nix's message, starting at its `error:` line (bounded, a few KiB).
    pub message: String,
}

impl AttributeError {
    /// The attribute path as written in Nix (`packages.x86_64-linux.hello`).
    pub fn attribute(&self) -> String {
        attribute_string(&self.attr_path)
    }
}

/// Part of an evaluation's result. Within one evaluation each derivation is reported once, in the first batch
/// that needs it, and only after every derivation it depends on (earlier in the batch or in an earlier batch),
/// so a consumer can insert them in order. Every `attributes[i].drv_path` is in this batch or an earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalBatch {
    pub attributes: Vec<EvaluatedAttribute>,
    pub derivations: Vec<DerivationInfo>,
    pub errors: Vec<AttributeError>,
}

/// Totals over all batches of an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalSummary {
    pub attributes: usize,
    pub derivations: usize,
    pub errors: usize,
}

/// How to build one derivation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Binary caches to substitute the `.drv` and its inputs from, in addition to the machine's own.
    pub substituters: Vec<String>,
    /// `name:base64` keys accepted for substituted paths, in addition to the machine's own.
    pub trusted_public_keys: Vec<String>,
    /// A netrc file with credentials for `substituters`.
    pub netrc_file: Option<PathBuf>,
    /// A directory (created if missing) that receives indirect GC roots for the `.drv` and each output, so
    /// nothing is collected between building and pushing. The roots are links in the directory: the caller
    /// releases them by removing it.
    pub gc_root: Option<PathBuf>,
    /// Limit for the build; `None` is no limit beyond the machine's own settings.
    pub timeout: Option<Duration>,
    /// Derivations built at once by one run of several (`build_many`); `None` is the machine's `max-jobs`.
    pub max_jobs: Option<u32>,
}

/// A successful build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildOutput {
    /// Output name → store path, every output of the derivation.
    pub outputs: BTreeMap<String, String>,
}

/// Drives Nix on one machine.
pub trait Nix: Send + Sync + 'static {
    /// Nix's version, the systems it builds for and its system features.
    fn host(&self) -> impl Future<Output = Result<HostInfo>> + Send;

    /// Fetches `repository` (a clone URL: `https://`, `ssh://`, `git://`, `file://`, `git+…` or `user@host:path`)
    /// at `commit` (a full hash), on branch or tag `git_ref` when known (a remote may only serve commits
    /// reachable from a ref), puts the flake's source and every input in the store, and resolves `overrides`
    /// (by input path: `url` replaces the input, `keep_url` updates it to the newest revision of its declared
    /// URL). Fails with `Fetch` when the source or an input cannot be fetched, `Eval` when `flake.nix` itself
    /// does not parse (its inputs cannot be read), `InvalidRequest` when `commit` is not a commit hash.
    /// `credential` is what `repository` is fetched with when it needs one: used for this fetch only, never
    /// shown (in errors included) and gone when it returns.
    fn fetch(
        &self,
        repository: &str,
        git_ref: Option<&str>,
        commit: &str,
        overrides: &BTreeMap<String, InputOverride>,
        credential: Option<&crate::deploy_key::RepositoryCredential>,
    ) -> impl Future<Output = Result<FetchedFlake>> + Send;

    /// Evaluates the attributes of `flake` that `wildcard` (a project's selection, see
    /// [`crate::wildcard::Wildcard`]) selects, reporting derivations, their closure and per-attribute errors
    /// through `on_batch` as they are found. A selected path that does not exist is simply not selected.
    /// Fails with `InvalidRequest` for a wildcard that does not parse, `Eval` when the flake cannot be
    /// evaluated at all.
    fn evaluate(
        &self,
        flake: &FetchedFlake,
        wildcard: &str,
        on_batch: impl FnMut(EvalBatch) + Send,
    ) -> impl Future<Output = Result<EvalSummary>> + Send;

    /// Builds (realises) the derivation `drv_path`, substituting it and its inputs from the given caches where
    /// possible, passing every log line to `on_log` as it is written. On failure: `BuildFailed` (its builder
    /// failed), `DependencyFailed`, `Timeout`, or `Unavailable` (the `.drv` is missing and not substitutable, a
    /// substituter failed, Nix itself failed).
    fn build(
        &self,
        drv_path: &str,
        opts: &BuildOptions,
        on_log: impl FnMut(&str) + Send,
    ) -> impl Future<Output = Result<BuildOutput>> + Send;

    /// Builds several derivations in one Nix run, going on past failures: the way to build many small
    /// derivations without paying Nix's start-up for each. `drvs` are the derivations with their outputs
    /// (name → store path). Every line a build prints goes to `on_log` with its derivation; Nix's own
    /// messages are not passed on. Answers one outcome per derivation, in order: its outputs, or why it was
    /// not built (as [`Nix::build`] classifies failures). Fails as a whole only when Nix cannot run at all.
    /// While the run goes on, `on_built` is told each derivation (at most once) whose outputs are valid in the
    /// store, as soon as the implementation sees it (so that they can be pushed before the run ends); a
    /// derivation told there is `Ok` in the answer. Derivations not told (outputs valid before the run,
    /// substituted, or seen late) are answered only at the end.
    fn build_many(
        &self,
        drvs: &[(String, BTreeMap<String, String>)],
        opts: &BuildOptions,
        on_log: impl FnMut(&str, &str) + Send,
        on_built: impl FnMut(&str) + Send,
    ) -> impl Future<Output = Result<Vec<Result<BuildOutput>>>> + Send;

    /// The closure of `paths` (outputs, or `.drv` files with the derivations and sources they refer to): the
    /// paths and every store path they refer to, directly or not, each listed after every path it refers to.
    /// Fails with `Push` when a path is not in the local store.
    fn requisites(&self, paths: &[String]) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// For each of `drvs` (`.drv` files in the local store), what its build sees of the store: the outputs of its
    /// input derivations that it uses and its input sources. An output refers to no other store path than
    /// those, their closures, itself and its derivation's other outputs (Nix looks for references only among
    /// the closure of the inputs), so once every input's closure is in the cache a push of what a run built
    /// knows its closure without asking Nix (see [`crate::push::known_closure`], whose `in_cache` must hold
    /// whole closures). A
    /// derivation whose `.drv` cannot be read, or one of whose inputs has an output path not known before
    /// building, is left out (its pushes ask Nix).
    fn build_inputs(&self, drvs: &[String]) -> impl Future<Output = Result<BTreeMap<String, Vec<String>>>> + Send;

    /// `paths` (at most [`MAX_EXPORT`]) as a `nix-store --export` stream (see [`crate::nix::export`]), each
    /// after those among them it refers to. The stream's last item is an error (`Push`) if Nix fails; dropping
    /// the stream stops Nix.
    fn export(&self, paths: &[String]) -> impl Future<Output = Result<ExportStream>> + Send;
}

/// Writes an attribute path as Nix does, quoting names that are not plain identifiers
/// (`packages.x86_64-linux."foo.bar"`).
pub fn attribute_string(path: &[String]) -> String {
    path.iter()
        .map(|name| {
            const KEYWORDS: &[&str] = &[
                "assert", "else", "if", "in", "inherit", "let", "or", "rec", "then", "with",
            ];
            let plain = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '\'')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-'".contains(c))
                && !KEYWORDS.contains(&name.as_str());
            if plain {
                name.clone()
            } else {
                format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_paths_are_written_as_nix_does() {
        let table: &[(&[&str], &str)] = &[
            (&["packages", "x86_64-linux", "hello"], "packages.x86_64-linux.hello"),
            (&["checks", "x86_64-linux", "a.b"], "checks.x86_64-linux.\"a.b\""),
            (&["hydraJobs", "2x"], "hydraJobs.\"2x\""),
            (&["lib", "or"], "lib.\"or\""),
            (&["x", "say \"hi\""], "x.\"say \\\"hi\\\"\""),
        ];
        for (path, want) in table {
            let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            assert_eq!(attribute_string(&path), *want);
        }
    }

    #[test]
    fn build_errors_map_to_failure_kinds() {
        let table = [
            (
                NixError::BuildFailed { log_tail: "x".into() },
                FailureKind::BuilderFailed,
            ),
            (
                NixError::DependencyFailed {
                    drv_path: None,
                    log_tail: String::new(),
                },
                FailureKind::DependencyFailed,
            ),
            (
                NixError::Timeout {
                    log_tail: String::new(),
                },
                FailureKind::Timeout,
            ),
            (NixError::Unavailable("daemon".into()), FailureKind::Infrastructure),
            (NixError::Push("401".into()), FailureKind::Infrastructure),
        ];
        for (err, kind) in table {
            assert_eq!(err.failure_kind(), kind, "{err}");
        }
        assert_eq!(NixError::BuildFailed { log_tail: "x".into() }.log_tail(), Some("x"));
        assert_eq!(NixError::Eval("e".into()).log_tail(), None);
    }
}
