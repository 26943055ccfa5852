//! Evaluator subprocesses: evaluations run in long-lived child processes instead of in the caller's process.
//!
//! [`Evaluators`] is a pool of at most `processes` children (a program, normally the worker's own binary
//! re-executed with an argument that makes it call [`serve`]), each doing one evaluation at a time and replaced
//! by a fresh one after `per_process` evaluations (0: never). The child runs the same evaluation as
//! [`crate::NixCli`] does in-process (list, split between `eval_processes` `nix eval`s, describe), so whatever
//! grows in it over evaluations (memory, Nix's leftovers) goes when it is replaced, and what it learnt once
//! (Nix's version) is kept in between.
//!
//! The protocol is line-delimited JSON on the child's stdin and stdout: one [`Request`] line per evaluation;
//! the child answers `{"batch": …}` lines as batches are ready, then `{"done": <summary>}` or
//! `{"failed": <NixError>}`. End of input, or a line read while evaluating, stops the evaluation (its Nix
//! processes interrupted as any dropped evaluation's are) and the child exits.
//!
//! Processes and bounds:
//! * Each child is the leader of its own process group. When the caller stops waiting (an aborted
//!   evaluation), the group is sent SIGINT (Nix stops its builders, the child exits), its stdin is closed,
//!   and after [`STOP_GRACE`] whatever is left of the group is killed; that child is never reused.
//! * A child that has exited between evaluations (killed, crashed) is replaced when next needed; one that
//!   ends during an evaluation fails that evaluation with [`NixError::Unavailable`].
//! * The caller's session bound ([`crate::NixCli::max_sessions`]) covers the child's Nix processes: the caller
//!   takes `min(eval_processes, bound)` sessions for the evaluation's whole length and the child runs at most
//!   that many Nix processes at once.
//! * Children start with SIGINT and SIGQUIT at their default action (`gradient_process`), as any child does.

use crate::NixCli;
use gradient_domain::ports::nix::{EvalBatch, EvalSummary, FetchedFlake, NixError, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long an interrupted evaluator gets before its process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One evaluation, as sent to an evaluator.
#[derive(Serialize, Deserialize)]
struct Request {
    flake: FetchedFlake,
    wildcard: String,
    bin_dir: Option<PathBuf>,
    substituters: Option<Vec<String>>,
    eval_processes: usize,
    /// Nix processes the evaluator may run at once (`None`: no bound).
    sessions: Option<usize>,
}

/// One line of an evaluator's answer.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Batch(EvalBatch),
    Done(EvalSummary),
    Failed(NixError),
}

/// The pool of evaluator subprocesses (see the module's documentation).
pub struct Evaluators {
    program: PathBuf,
    args: Vec<OsString>,
    per_process: u32,
    /// One permit per evaluator that may run.
    slots: Arc<tokio::sync::Semaphore>,
    idle: Mutex<Vec<Evaluator>>,
}

impl std::fmt::Debug for Evaluators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluators")
            .field("program", &self.program)
            .field("per_process", &self.per_process)
            .finish_non_exhaustive()
    }
}

struct Evaluator {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pid: u32,
    evaluations: u32,
}

impl Evaluators {
    /// At most `processes` (at least 1) children running `program args…`, each replaced after `per_process`
    /// evaluations (0: never). Children are started when first needed.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>, processes: usize, per_process: u32) -> Self {
        Self {
            program: program.into(),
            args,
            per_process,
            slots: Arc::new(tokio::sync::Semaphore::new(processes.max(1))),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn spawn(&self, cli: &NixCli) -> Result<Evaluator> {
        gradient_process::reset_for_children();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(cli.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            NixError::Unavailable(format!("cannot start the evaluator {}: {e}", self.program.display()))
        })?;
        let (Some(stdin), Some(stdout), Some(pid)) = (child.stdin.take(), child.stdout.take(), child.id()) else {
            return Err(NixError::Unavailable("the evaluator has no pipes".into()));
        };
        tracing::debug!(target: "gradient::eval", "started evaluator process {pid}");
        Ok(Evaluator {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            pid,
            evaluations: 0,
        })
    }

    /// An idle evaluator still running, or a new one.
    fn take(&self, cli: &NixCli) -> Result<Evaluator> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                None => return self.spawn(cli),
                Some(mut ev) => match ev.child.try_wait() {
                    Ok(None) => return Ok(ev),
                    _ => {
                        tracing::warn!(target: "gradient::eval", "evaluator process {} had ended; replacing it", ev.pid)
                    }
                },
            }
        }
    }

    pub(crate) async fn evaluate(
        &self,
        cli: &NixCli,
        flake: &FetchedFlake,
        wildcard: &str,
        on_batch: &mut (dyn FnMut(EvalBatch) + Send),
    ) -> Result<EvalSummary> {
        // The semaphore is never closed.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| NixError::Unavailable("no evaluator".into()))?;
        let eval_processes = cli.eval_processes.max(1);
        // The child's Nix processes count against the caller's bound: held for the whole evaluation.
        let (_sessions, sessions) = match (&cli.sessions, cli.session_count) {
            (Some(s), n) => {
                let k = eval_processes.min(n.max(1));
                let permits = s
                    .clone()
                    .acquire_many_owned(u32::try_from(k).unwrap_or(u32::MAX))
                    .await
                    .map_err(|_| NixError::Unavailable("no Nix session".into()))?;
                (Some(permits), Some(k))
            }
            (None, _) => (None, None),
        };
        let request = Request {
            flake: flake.clone(),
            wildcard: wildcard.to_owned(),
            bin_dir: cli.bin_dir.clone(),
            substituters: cli.substituters.clone(),
            eval_processes,
            sessions,
        };
        let mut line = serde_json::to_string(&request)
            .map_err(|e| NixError::Unavailable(format!("cannot encode the evaluation: {e}")))?;
        line.push('\n');
        // An idle evaluator may end just before it is given the evaluation (the write fails, or it answers
        // nothing at all): then a fresh one gets it, once.
        let mut fresh = false;
        let (running, result, pid) = 'attempt: loop {
            let mut running = loop {
                let mut ev = if fresh { self.spawn(cli)? } else { self.take(cli)? };
                let pid = ev.pid;
                let sent = async {
                    ev.stdin.write_all(line.as_bytes()).await?;
                    ev.stdin.flush().await
                }
                .await;
                match sent {
                    Ok(()) => break Running(Some(ev)),
                    Err(e) if !fresh => {
                        tracing::warn!(target: "gradient::eval", "evaluator process {pid} is gone ({e}); starting another");
                        drop(Running(Some(ev)));
                        fresh = true;
                    }
                    Err(e) => return Err(NixError::Unavailable(format!("evaluator process {pid}: {e}"))),
                }
            };
            let ev = running
                .0
                .as_mut()
                .ok_or_else(|| NixError::Unavailable("no evaluator".into()))?;
            let pid = ev.pid;
            let lost = |why: String| NixError::Unavailable(format!("evaluator process {pid}: {why}"));
            let mut answered = false;
            let result = loop {
                let Some(line) = ev.stdout.next_line().await.map_err(|e| lost(e.to_string()))? else {
                    if !answered && !fresh {
                        // It had ended before it could read the evaluation: nothing was reported yet.
                        tracing::warn!(target: "gradient::eval", "evaluator process {pid} ended before answering; starting another");
                        drop(running);
                        fresh = true;
                        continue 'attempt;
                    }
                    // Ended mid-evaluation: never reused (`Running` stops what is left of its group).
                    return Err(lost("ended during the evaluation".into()));
                };
                answered = true;
                match serde_json::from_str::<Answer>(&line) {
                    Ok(Answer::Batch(batch)) => on_batch(batch),
                    Ok(Answer::Done(summary)) => break Ok(summary),
                    Ok(Answer::Failed(e)) => break Err(e),
                    Err(e) => return Err(lost(format!("answered something else than an evaluation: {e}"))),
                }
            };
            break (running, result, pid);
        };
        let mut ev = running.finished();
        ev.evaluations += 1;
        if self.per_process > 0 && ev.evaluations >= self.per_process {
            tracing::debug!(
                target: "gradient::eval",
                "evaluator process {pid} did {} evaluations; replacing it",
                ev.evaluations
            );
            retire(ev);
        } else {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
        }
        result
    }
}

/// Ends an evaluator that is done: its input closed, it exits; reaped in the background.
fn retire(ev: Evaluator) {
    let Evaluator { mut child, stdin, .. } = ev;
    drop(stdin);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        });
    }
}

/// An evaluator in the middle of an evaluation: stopped with its process group if dropped before it finished.
struct Running(Option<Evaluator>);

impl Running {
    fn finished(mut self) -> Evaluator {
        // Always set until here.
        self.0.take().unwrap_or_else(|| unreachable!("a running evaluator"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(ev) = self.0.take() else { return };
        let Some(group) = i32::try_from(ev.pid).ok().and_then(rustix::process::Pid::from_raw) else {
            return;
        };
        tracing::debug!(target: "gradient::eval", "stopping evaluator process {} and its children", ev.pid);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::INT);
        let Evaluator { mut child, stdin, .. } = ev;
        drop(stdin);
        let kill = move || {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let deadline = tokio::time::Instant::now() + STOP_GRACE;
                    let _ = tokio::time::timeout_at(deadline, child.wait()).await;
                    // Its Nix processes may take a little longer to stop their builders: the group id stays
                    // taken while any of them is left (or while the evaluator is not reaped).
                    let left = || rustix::process::test_kill_process_group(group).is_ok();
                    while tokio::time::Instant::now() < deadline && left() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if left() {
                        kill();
                    }
                    let _ = child.wait().await;
                });
            }
            Err(_) => kill(),
        }
    }
}

/// The evaluator's side: answers evaluations read from stdin until it ends (see the module's documentation).
/// Nix's version is asked once for all of them.
pub async fn serve() -> std::io::Result<()> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let version: Arc<OnceLock<(u32, u32)>> = Arc::default();
    while let Some(line) = input.next_line().await? {
        let request: Request = serde_json::from_str(&line).map_err(std::io::Error::other)?;
        let mut cli = NixCli {
            bin_dir: request.bin_dir,
            substituters: request.substituters,
            version: version.clone(),
            ..NixCli::default()
        }
        .eval_processes(request.eval_processes);
        if let Some(n) = request.sessions {
            cli = cli.max_sessions(n);
        }
        let mut failed_write = None;
        let mut on_batch = |batch| {
            if failed_write.is_none()
                && let Err(e) = answer(&Answer::Batch(batch))
            {
                failed_write = Some(e);
            }
        };
        let evaluation = crate::eval::evaluate(&cli, &request.flake, &request.wildcard, &mut on_batch);
        let result = tokio::select! {
            result = evaluation => result,
            // Input ended or more came during an evaluation: stop it (its Nix processes are interrupted).
            _ = input.next_line() => return Ok(()),
        };
        if let Some(e) = failed_write {
            return Err(e);
        }
        answer(&match result {
            Ok(summary) => Answer::Done(summary),
            Err(e) => Answer::Failed(e),
        })?;
    }
    Ok(())
}

fn answer(answer: &Answer) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, answer).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}
