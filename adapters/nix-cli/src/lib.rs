//! The Nix port on the `nix` command line, for Nix 2.8 and later: every operation runs `nix`, `nix-store` or
//! `nix-instantiate` as a child process, reads their JSON, streams their stderr, and kills them when the caller
//! stops waiting. Only flags Nix 2.8 knows are used; where newer Nix renamed a command (`nix derivation show`,
//! `nix config show`) the name is chosen from `nix --version`.
//!
//! | operation  | commands                                                                                         |
//! |------------|--------------------------------------------------------------------------------------------------|
//! | `host`     | `nix --version`, `nix show-config --json`                                                        |
//! | `fetch`    | `nix flake metadata --json`, `nix flake archive --json` if the lock has inputs (`--override-input`) |
//! | `evaluate` | `nix eval --json <ref>#<output> --apply <walker>` per output, per batch; `.drv` files read (ATerm) |
//! | `build`    | `nix-store --realise --add-root`, `nix-instantiate --add-root` (the `.drv`), `nix show-derivation` |
//! | `requisites` | `nix-store --query --requisites`                                                               |
//! | `export`   | `nix-store --export` (read as it is written)                                                     |
//!
//! Evaluations can run in evaluator subprocesses instead of this process ([`NixCli::evaluators`],
//! [`evaluator`]).

mod build;
mod derivation;
mod eval;
pub mod evaluator;
mod export;
mod fetch;
mod process;

use gradient_domain::model::InputOverride;
use gradient_domain::ports::nix::{
    BuildOptions, BuildOutput, EvalBatch, EvalSummary, ExportStream, FetchedFlake, HostInfo, Nix, NixError, Result,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::process::Command;

/// A Nix command and the session bound it runs under ([`NixCli::max_sessions`]).
pub(crate) struct NixCommand {
    cmd: Command,
    sessions: Option<Arc<tokio::sync::Semaphore>>,
}

impl NixCommand {
    /// Waits for a session: held until the returned permit is dropped (after the process has exited).
    pub(crate) async fn session(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.sessions {
            // The semaphore is never closed.
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        }
    }
}

impl From<Command> for NixCommand {
    fn from(cmd: Command) -> Self {
        Self { cmd, sessions: None }
    }
}

impl std::ops::Deref for NixCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl std::ops::DerefMut for NixCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// Starts `cmd`, trying again for a moment while the program is "busy" (ETXTBSY). An executable that a thread of
/// this process has just written can be held open for writing by a child another thread is starting (between
/// its `fork` and `exec`): the kernel refuses to run it until that child has called `exec`, microseconds later.
/// Nix installed by a package manager is never written in place, but a Nix wrapper written at start-up is.
pub(crate) async fn spawn(cmd: &mut Command) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            started => return started,
        }
    }
}

/// Runs the Nix found on `PATH` (or in a given directory) with this process's environment, plus any variables
/// set with [`NixCli::env`] (such as `NIX_CONFIG`).
#[derive(Clone, Debug, Default)]
pub struct NixCli {
    bin_dir: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    substituters: Option<Vec<String>>,
    version: Arc<OnceLock<(u32, u32)>>,
    /// Nix processes at once, over every clone (see [`NixCli::max_sessions`]); `None`: no bound.
    sessions: Option<Arc<tokio::sync::Semaphore>>,
    /// The bound of `sessions` (see [`NixCli::max_sessions`]).
    session_count: usize,
    /// `nix eval` processes one evaluation runs at once (see [`NixCli::eval_processes`]); 0 counts as 1.
    eval_processes: usize,
    /// Where evaluations run when set: evaluator subprocesses (see [`NixCli::evaluators`]).
    evaluators: Option<Arc<evaluator::Evaluators>>,
}

impl NixCli {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `nix`, `nix-store` and `nix-instantiate` from `dir` instead of `PATH`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable for every command run.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// At most `n` Nix processes (each a session with the store, through the daemon) run at once, over this
    /// value and all its clones: builds, evaluations, queries and export streams together. A command waits for a
    /// session before it starts and holds it until its process has exited (an export stream: until it is read to
    /// its end or dropped). No operation holds two at once, so any `n` ≥ 1 makes progress.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.sessions = Some(Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        self.session_count = n.max(1);
        self
    }

    /// Evaluations run in a pool of evaluator subprocesses ([`evaluator::Evaluators`]): at most `processes` of
    /// `program args…` (a program that calls [`evaluator::serve`], such as the worker's own binary), each
    /// replaced after `per_process` evaluations (0: never). Shared by all clones. The split between
    /// [`NixCli::eval_processes`] `nix eval`s and the session bound apply inside each subprocess.
    pub fn evaluators(
        mut self,
        program: impl Into<PathBuf>,
        args: Vec<OsString>,
        processes: usize,
        per_process: u32,
    ) -> Self {
        self.evaluators = Some(Arc::new(evaluator::Evaluators::new(
            program,
            args,
            processes,
            per_process,
        )));
        self
    }

    /// An evaluation's attributes are split between `n` evaluator processes that run at once: the attributes
    /// the wildcard selects are cut into `n` parts (at most 64 attributes each) and each part is one `nix eval`
    /// (a process that evaluates that part and exits). Listing the attributes and describing the derivations
    /// stay one process each. Each process still takes a session ([`NixCli::max_sessions`]).
    pub fn eval_processes(mut self, n: usize) -> Self {
        self.eval_processes = n.max(1);
        self
    }

    /// Replaces Nix's configured `substituters` with `list` in every command (`--option substituters`); the
    /// `extra-substituters` of a build are still added to them.
    pub fn only_substituters(mut self, list: Vec<String>) -> Self {
        self.substituters = Some(list);
        self
    }

    /// Nix's configured `substituters` (`nix show-config`), as this process's Nix sees them.
    pub async fn configured_substituters(&self) -> Result<Vec<String>> {
        let config = self.config(self.version().await?).await?;
        Ok(config_strings(&config, "substituters"))
    }

    /// `nix show-config --json` (`nix config show --json` from Nix 2.20 on).
    async fn config(&self, version: (u32, u32)) -> Result<Value> {
        let mut cmd = self.command("nix");
        cmd.args(["--extra-experimental-features", "nix-command flakes"]);
        if version >= (2, 20) {
            cmd.args(["config", "show", "--json"]);
        } else {
            cmd.args(["show-config", "--json"]);
        }
        let out = process::output(cmd).await?.success_or(NixError::Unavailable)?;
        serde_json::from_slice(&out).map_err(|e| NixError::Unavailable(format!("nix configuration is not JSON: {e}")))
    }

    /// The `--option substituters` of [`NixCli::only_substituters`], if set.
    fn substituter_options(&self, cmd: &mut NixCommand) {
        if let Some(list) = &self.substituters {
            cmd.args(["--option", "substituters", &list.join(" ")]);
        }
    }

    fn command(&self, program: &str) -> NixCommand {
        // Nix and its builders start with SIGINT at its default, so an abort's SIGINT stops them.
        gradient_process::reset_for_children();
        let mut cmd = NixCommand {
            cmd: match &self.bin_dir {
                Some(dir) => Command::new(dir.join(program)),
                None => Command::new(program),
            },
            sessions: self.sessions.clone(),
        };
        cmd.env("NO_COLOR", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // `nix` gets them in `nix()` (not `nix --version`).
        if program != "nix" {
            self.substituter_options(&mut cmd);
        }
        cmd
    }

    /// `nix` with the experimental features this adapter needs enabled, whatever the machine's configuration.
    fn nix(&self) -> NixCommand {
        let mut cmd = self.command("nix");
        cmd.args(["--extra-experimental-features", "nix-command flakes"]);
        self.substituter_options(&mut cmd);
        cmd
    }

    /// `nix --version`'s answer: the whole text, and `(major, minor)`.
    async fn version_text(&self) -> Result<(String, (u32, u32))> {
        let mut cmd = self.command("nix");
        cmd.arg("--version");
        let out = process::output(cmd).await?.success_or(NixError::Unavailable)?;
        let text = String::from_utf8_lossy(&out).trim().to_owned();
        let v = parse_version(&text).ok_or_else(|| NixError::Unavailable(format!("unknown nix version {text:?}")))?;
        Ok((text, v))
    }

    /// Nix's `(major, minor)` version, asked once.
    async fn version(&self) -> Result<(u32, u32)> {
        if let Some(v) = self.version.get() {
            return Ok(*v);
        }
        let (_, v) = self.version_text().await?;
        Ok(*self.version.get_or_init(|| v))
    }

    /// `nix show-derivation` (Nix < 2.15) or `nix derivation show`.
    async fn show_derivation(&self) -> Result<NixCommand> {
        let mut cmd = self.nix();
        if self.version().await? >= (2, 15) {
            cmd.args(["derivation", "show"]);
        } else {
            cmd.arg("show-derivation");
        }
        Ok(cmd)
    }
}

/// The number of members of `group` in an `/etc/group` text (`name:password:gid:member,member`).
fn build_users(etc_group: &str, group: &str) -> Option<u32> {
    let line = etc_group.lines().find(|l| l.split(':').next() == Some(group))?;
    let members = line
        .split(':')
        .nth(3)?
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .count();
    u32::try_from(members).ok().filter(|&n| n > 0)
}

/// A setting of `nix show-config --json`: a list, or a string of words.
fn config_strings(config: &Value, key: &str) -> Vec<String> {
    match &config[key]["value"] {
        Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// `nix (Nix) 2.8.0`, `nix (Lix, like Nix) 2.91.1` → `(2, 8)`, `(2, 91)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().last()?;
    let mut parts = version.split(['.', 'p', 'r', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

impl Nix for NixCli {
    async fn host(&self) -> Result<HostInfo> {
        let (text, version) = self.version_text().await?;
        let config = self.config(version).await?;
        let strings = |key: &str| config_strings(&config, key);
        let mut systems = strings("system");
        for extra in strings("extra-platforms") {
            if !systems.contains(&extra) {
                systems.push(extra);
            }
        }
        if systems.is_empty() {
            return Err(NixError::Unavailable("nix reports no system".into()));
        }
        let parallel_builds = match strings("build-users-group").first() {
            Some(group) => tokio::fs::read_to_string("/etc/group")
                .await
                .ok()
                .and_then(|etc| build_users(&etc, group)),
            None => None,
        };
        Ok(HostInfo {
            nix_version: text.split_whitespace().last().unwrap_or_default().to_owned(),
            systems,
            features: strings("system-features"),
            parallel_builds,
        })
    }

    async fn fetch(
        &self,
        repository: &str,
        git_ref: Option<&str>,
        commit: &str,
        overrides: &BTreeMap<String, InputOverride>,
        credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<FetchedFlake> {
        fetch::fetch(self, repository, git_ref, commit, overrides, credential).await
    }

    async fn evaluate(
        &self,
        flake: &FetchedFlake,
        wildcard: &str,
        mut on_batch: impl FnMut(EvalBatch) + Send,
    ) -> Result<EvalSummary> {
        match &self.evaluators {
            Some(pool) => pool.evaluate(self, flake, wildcard, &mut on_batch).await,
            None => eval::evaluate(self, flake, wildcard, &mut on_batch).await,
        }
    }

    async fn build(
        &self,
        drv_path: &str,
        opts: &BuildOptions,
        mut on_log: impl FnMut(&str) + Send,
    ) -> Result<BuildOutput> {
        build::build(self, drv_path, opts, &mut on_log).await
    }

    async fn build_many(
        &self,
        drvs: &[(String, BTreeMap<String, String>)],
        opts: &BuildOptions,
        mut on_log: impl FnMut(&str, &str) + Send,
        mut on_built: impl FnMut(&str) + Send,
    ) -> Result<Vec<Result<BuildOutput>>> {
        build::build_many(self, drvs, opts, &mut on_log, &mut on_built).await
    }

    async fn requisites(&self, paths: &[String]) -> Result<Vec<String>> {
        export::requisites(self, paths).await
    }

    async fn export(&self, paths: &[String]) -> Result<ExportStream> {
        export::export(self, paths).await
    }

    async fn build_inputs(&self, drvs: &[String]) -> Result<BTreeMap<String, Vec<String>>> {
        let drvs = drvs.to_vec();
        tokio::task::spawn_blocking(move || derivation::build_inputs(&drvs))
            .await
            .map_err(|e| NixError::Unavailable(format!("reading derivations: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_program_still_open_for_writing_is_run_once_it_is_closed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("prog");
        std::fs::write(&bin, "#!/bin/sh\nexit 7\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // As a child another thread is starting would hold it: open for writing, closed 100 ms later.
        let held = std::fs::OpenOptions::new().write(true).open(&bin).unwrap();
        let busy = Command::new(&bin).spawn().unwrap_err();
        assert_eq!(
            busy.raw_os_error(),
            Some(26),
            "the kernel refuses a program open for writing"
        );
        let closer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            drop(held);
        });
        let status = spawn(&mut Command::new(&bin)).await.unwrap().wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        closer.await.unwrap();
    }

    #[test]
    fn only_the_chosen_substituters_are_passed_to_every_command() {
        let option = ["--option", "substituters", "file:///a http://b"].map(str::to_owned);
        let has = |cmd: &Command| args(cmd).windows(3).any(|w| w == option);
        let cli = NixCli::new();
        assert!(!has(&cli.nix()) && !has(&cli.command("nix-store")));
        let cli = cli.only_substituters(vec!["file:///a".into(), "http://b".into()]);
        assert!(has(&cli.nix()) && has(&cli.command("nix-store")) && has(&cli.command("nix-instantiate")));
        // `nix --version` takes no options.
        assert!(!has(&cli.command("nix")));
        let none = NixCli::new().only_substituters(Vec::new());
        assert!(
            args(&none.command("nix-store"))
                .windows(3)
                .any(|w| w == ["--option", "substituters", ""])
        );
    }

    #[test]
    fn versions() {
        let table = [
            ("nix (Nix) 2.8.0\n", Some((2, 8))),
            ("nix (Nix) 2.24.10", Some((2, 24))),
            ("nix (Lix, like Nix) 2.91.1", Some((2, 91))),
            ("nix (Nix) 2.26.0pre20241203_dirty", Some((2, 26))),
            ("nix", None),
        ];
        for (text, want) in table {
            assert_eq!(parse_version(text), want, "{text}");
        }
    }

    #[test]
    fn build_users_are_the_members_of_the_group() {
        let etc = "root:x:0:\nnixbld:x:30000:nixbld1,nixbld2,nixbld3\nnixbldx:x:5:a\nempty:x:7:\n";
        let table = [
            ("nixbld", Some(3)),
            ("nixbldx", Some(1)),
            ("empty", None),
            ("missing", None),
        ];
        for (group, want) in table {
            assert_eq!(build_users(etc, group), want, "{group}");
        }
    }
}
