//! Running one Nix command: stdout collected (bounded), stderr split into lines as they come (each passed to a
//! callback, the last few KiB kept for error messages), an optional deadline, and the child stopped whenever
//! the caller stops waiting (see `Stop`).

use crate::NixCommand;
use gradient_domain::ports::nix::NixError;
use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
#[cfg(test)]
use tokio::process::Command;

/// How much of stderr is kept for error messages and log tails.
pub const STDERR_TAIL: usize = 16 * 1024;
/// A longer "line" (a builder writing without newlines) is passed on in pieces of this size.
const MAX_LINE: usize = 64 * 1024;
/// Nix's JSON answers are small next to this; a larger one means something is wrong.
const STDOUT_LIMIT: usize = 512 * 1024 * 1024;

/// How a command ended.
pub enum Ended {
    Exited(Finished),
    /// The deadline passed; the child was killed. Holds stderr's tail.
    TimedOut(Tail),
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Tail,
}

impl Finished {
    /// Stdout when the command succeeded; otherwise Nix's error message, built into an error by `fail`.
    pub fn success_or(self, fail: impl FnOnce(String) -> NixError) -> Result<Vec<u8>, NixError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(fail(self.stderr.error_message()))
        }
    }
}

/// The last lines of a stream, at most about [`STDERR_TAIL`] bytes.
#[derive(Default)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    pub fn push(&mut self, line: &str) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.bytes > STDERR_TAIL && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    pub fn text(&self) -> String {
        self.lines().collect::<Vec<_>>().join("\n")
    }

    /// Nix's error message: from the first `error:` line on (warnings and progress before it dropped), or the
    /// whole tail when there is none. When it is that `git` failed (or that a commit is not in the clone git
    /// could not update), the last lines before it come first: what git and ssh said
    /// (`Permission denied (publickey)`, `fatal: repository not found`…), which Nix 2.8 passes through
    /// before saying only that git failed.
    pub fn error_message(&self) -> String {
        let lines: Vec<&str> = self.lines().collect();
        let start = lines.iter().position(|l| l.starts_with("error:")).unwrap_or(0);
        let mut message = lines[start..].join("\n");
        let git_failed = |l: &&str| l.contains("program 'git' failed") || l.contains("Cannot find Git revision");
        if lines.get(start).is_some_and(git_failed) {
            // With a local clone of the repository, Nix 2.8 only warns that updating it failed, then fails to find
            // the commit in it: the warning and git's words before it are the reason.
            let said: Vec<&str> = lines[..start]
                .iter()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .copied()
                .collect();
            if !said.is_empty() {
                let said: Vec<&str> = said.into_iter().rev().collect();
                message = format!("{}\n{message}", said.join("\n"));
            }
        }
        let message = message.trim();
        if message.is_empty() {
            "nix failed without a message".to_owned()
        } else {
            message.to_owned()
        }
    }
}

/// Runs `cmd` to completion (or until `deadline`), passing each stderr line to `on_line`.
pub async fn run(
    cmd: impl Into<NixCommand>,
    deadline: Option<Duration>,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<Ended, NixError> {
    let mut cmd = cmd.into();
    // A session (`NixCli::max_sessions`) before the process starts, held until it is gone.
    let session = cmd.session().await;
    gradient_process::reset_for_children();
    let program = format!("{:?}", cmd.as_std().get_program());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = crate::spawn(&mut cmd)
        .await
        .map_err(|e| NixError::Unavailable(format!("cannot run {program}: {e}")))?;
    // Stopped, not killed, whenever the caller stops waiting (an aborted job): see `Stop`.
    let mut stop = Stop(child.id(), session);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(NixError::Unavailable(format!("{program}: no pipes")));
    };
    let mut tail = Tail::default();
    let work = async {
        let (out, err) = tokio::join!(
            read_bounded(stdout),
            read_lines(stderr, |line| {
                tail.push(line);
                on_line(line);
            })
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let finished = match deadline {
        None => Some(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.ok(),
    };
    let Some((out, err, status)) = finished else {
        // Interrupted, Nix stops its builders; given a moment, it is gone when this answers.
        if let Some(pid) = stop.0 {
            interrupt(pid);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        stop.0 = None;
        return Ok(Ended::TimedOut(tail));
    };
    stop.0 = None;
    let io = |e: std::io::Error| NixError::Unavailable(format!("{program}: {e}"));
    let stdout = out.map_err(io)?;
    err.map_err(io)?;
    Ok(Ended::Exited(Finished {
        status: status.map_err(io)?,
        stdout,
        stderr: tail,
    }))
}

/// How long an interrupted Nix gets to stop its builders before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Stops a Nix process still running when it is dropped. Killing Nix would leave its builders running: they
/// run as a build user, and a change of user clears the signal Linux would send them when their parent dies.
/// Interrupted (SIGINT), Nix kills them itself; if it has not exited after [`STOP_GRACE`], it is killed.
/// It holds the command's session, released once the process is gone.
struct Stop(Option<u32>, Option<tokio::sync::OwnedSemaphorePermit>);

impl Drop for Stop {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        interrupt(pid);
        let session = self.1.take();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + STOP_GRACE;
            while std::time::Instant::now() < until && running(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Only if that process is still a Nix one (its id is not someone else's by now).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if running(pid)
                && comm.trim().starts_with("nix")
                && let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            drop(session);
        });
    }
}

/// Whether process `pid` still runs (exists and is not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state ...`: the state follows the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn interrupt(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
}

/// Runs `cmd` without a deadline and without looking at stderr as it comes.
pub async fn output(cmd: impl Into<NixCommand>) -> Result<Finished, NixError> {
    match run(cmd, None, &mut |_| {}).await? {
        Ended::Exited(finished) => Ok(finished),
        Ended::TimedOut(_) => Err(NixError::Unavailable("timed out without a deadline".into())),
    }
}

async fn read_bounded(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > STDOUT_LIMIT {
            return Err(std::io::Error::other("output larger than the limit"));
        }
        out.extend_from_slice(&buf[..n]);
    }
}

async fn read_lines(mut r: impl AsyncRead + Unpin, mut on_line: impl FnMut(&str)) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            emit(&pending[start..start + pos], &mut on_line);
            start += pos + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            emit(&pending[..MAX_LINE], &mut on_line);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut on_line);
    }
    Ok(())
}

fn emit(line: &[u8], on_line: &mut impl FnMut(&str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    on_line(&strip_ansi(&String::from_utf8_lossy(line)));
}

/// Drops terminal escape sequences (`ESC [ … letter`), which some Nix versions add to messages.
pub fn strip_ansi(s: &str) -> String {
    if !s.contains('\x1b') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_bounded_and_cleaned() {
        let input = b"one\r\ntwo\n\x1b[31;1merror:\x1b[0m red\nlast".to_vec();
        let mut got = Vec::new();
        read_lines(&input[..], |l| got.push(l.to_owned())).await.unwrap();
        assert_eq!(got, ["one", "two", "error: red", "last"]);

        let long = vec![b'x'; MAX_LINE * 2 + 3];
        let mut sizes = Vec::new();
        read_lines(&long[..], |l| sizes.push(l.len())).await.unwrap();
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 3]);
    }

    #[tokio::test]
    async fn a_deadline_kills_the_command() {
        deadline_stops_the_command_at_once().await;
    }

    /// Interrupted when its deadline passes, the command stops at once (long before [`STOP_GRACE`]).
    async fn deadline_stops_the_command_at_once() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo started >&2; exec /usr/bin/sleep 60"]);
        let started = std::time::Instant::now();
        let mut lines = Vec::new();
        let ended = run(cmd, Some(Duration::from_millis(500)), &mut |l| lines.push(l.to_owned()))
            .await
            .unwrap();
        assert!(matches!(ended, Ended::TimedOut(tail) if tail.text() == "started"));
        assert_eq!(lines, ["started"]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "stopped after {:?}",
            started.elapsed()
        );
    }

    /// A worker started as a script's background job has SIGINT and SIGQUIT ignored; what it runs does not.
    #[tokio::test]
    async fn children_start_with_sigint_at_its_default_when_ours_is_ignored() {
        use gradient_process::{SIGINT, SIGQUIT, contains, signal_set, testing};
        if !testing::in_rerun() {
            testing::rerun_with_ignored_signals(
                "process::tests::children_start_with_sigint_at_its_default_when_ours_is_ignored",
            );
            return;
        }
        let ours = signal_set(&std::fs::read_to_string("/proc/self/status").unwrap(), "SigIgn").unwrap();
        assert!(contains(ours, SIGINT), "the re-run must start with SIGINT ignored");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "grep -E '^Sig(Ign|Blk):' /proc/self/status"]);
        let status = String::from_utf8(output(cmd).await.unwrap().success_or(NixError::Unavailable).unwrap()).unwrap();
        let ignored = signal_set(&status, "SigIgn").unwrap();
        assert!(
            !contains(ignored, SIGINT) && !contains(ignored, SIGQUIT),
            "child: {status}"
        );
        let blocked = signal_set(&status, "SigBlk").unwrap();
        assert!(!contains(blocked, SIGINT), "child: {status}");
        // And the abort's SIGINT stops the command at once, not after the grace period.
        deadline_stops_the_command_at_once().await;
    }

    #[test]
    fn tail_keeps_the_end_and_finds_the_error() {
        let mut tail = Tail::default();
        for i in 0..10_000 {
            tail.push(&format!("line {i}"));
        }
        tail.push("error: it broke");
        tail.push("       at here");
        assert!(tail.text().len() <= STDERR_TAIL);
        assert!(tail.text().ends_with("at here"));
        assert_eq!(tail.error_message(), "error: it broke\n       at here");
    }

    #[test]
    fn a_failed_git_says_what_git_said() {
        let said = |lines: &[&str]| {
            let mut tail = Tail::default();
            for line in lines {
                tail.push(line);
            }
            tail.error_message()
        };
        assert_eq!(
            said(&[
                "copying",
                "unpacking",
                "fetching Git repository 'ssh://git@h/r.git'",
                "git@h: Permission denied (publickey).",
                "fatal: Could not read from remote repository.",
                "",
                "Please make sure you have the correct access rights",
                "and the repository exists.",
                "error: program 'git' failed with exit code 128",
            ]),
            "unpacking\nfetching Git repository 'ssh://git@h/r.git'\ngit@h: Permission denied (publickey).\n\
             fatal: Could not read from remote repository.\nPlease make sure you have the correct access rights\n\
             and the repository exists.\nerror: program 'git' failed with exit code 128"
        );
        // At most six lines. A clone Nix could not update: its warning and git's reason come first.
        assert_eq!(
            said(&[
                "git@h: Permission denied (publickey).",
                "warning: could not update local clone of Git repository 'ssh://git@h/r.git'",
                "error: Cannot find Git revision 'abc' in ref 'main'",
            ]),
            "git@h: Permission denied (publickey).\n\
             warning: could not update local clone of Git repository 'ssh://git@h/r.git'\n\
             error: Cannot find Git revision 'abc' in ref 'main'"
        );
        // Other errors are Nix's alone.
        assert_eq!(
            said(&["noise", "error: undefined variable"]),
            "error: undefined variable"
        );
    }
}
