//! Child processes that start with the default reaction to SIGINT and SIGQUIT, whatever this process
//! inherited.
//!
//! A background job of a non-interactive shell (`gradient-worker &` in a script, as `scripts/quickstart` starts
//! the worker) starts with SIGINT and SIGQUIT *ignored*, and an ignored signal stays ignored across `fork` and
//! `exec`: Nix, git and Nix's builders would inherit that, and the SIGINT that asks Nix to stop its builders on
//! an abort would do nothing. A signal that this process *handles*, on the other hand, is reset to its default
//! action by `exec`. So [`reset_for_children`] installs a handler for each of these signals that it finds
//! ignored (`SigIgn` in `/proc/self/status`); the handler only sets a flag nobody reads, so this process itself
//! still lets the signal pass without effect, as it was started to. From then on every child starts with the
//! default disposition. Nothing runs between `fork` and `exec` (no `pre_exec`: the workspace forbids `unsafe`).
//! A signal that was not ignored is left alone: its children already get the default (or, for a handled one,
//! `exec` resets it).
//!
//! The signal mask needs nothing: the standard library's `Command` (which `tokio::process` uses) empties it in
//! every child it starts.
//!
//! Every adapter that starts a process calls [`reset_for_children`] first (it does its work once).

pub mod git_access;

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::AtomicBool;

pub use signal_hook::consts::{SIGINT, SIGQUIT};

/// The signals whose inherited "ignore" is not passed on to children.
pub const RESET: [i32; 2] = [SIGINT, SIGQUIT];

/// Makes every child started from now on begin with SIGINT and SIGQUIT at their default action (see the
/// module's documentation). Cheap after the first call; call it before starting any process.
pub fn reset_for_children() {
    static DONE: Once = Once::new();
    DONE.call_once(|| {
        // Where the ignored set cannot be read (not Linux), nothing is changed.
        let Some(ignored) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| signal_set(&status, "SigIgn"))
        else {
            return;
        };
        for signal in RESET {
            if contains(ignored, signal) {
                // A handler that only records the signal: this process goes on as if it were ignored.
                let _ = signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false)));
            }
        }
    });
}

/// A signal set of `/proc/<pid>/status` (`SigIgn`, `SigBlk`, `SigCgt`, …): a hexadecimal mask, bit `n - 1`
/// for signal `n`.
pub fn signal_set(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field)
            .then(|| u64::from_str_radix(value.trim(), 16).ok())
            .flatten()
    })
}

/// Whether `signal` is in `set` (see [`signal_set`]).
pub fn contains(set: u64, signal: i32) -> bool {
    (1..=64).contains(&signal) && set & (1 << (signal - 1)) != 0
}

/// For tests: running one test again in a new process that starts with SIGINT and SIGQUIT ignored, as a
/// script's background job does.
pub mod testing {
    use std::process::{Command, Output};

    const MARK: &str = "GRADIENT_TEST_SIGNALS_IGNORED";

    /// Whether this process is such a re-run.
    pub fn in_rerun() -> bool {
        std::env::var_os(MARK).is_some()
    }

    /// Runs the test named `test` (its full path in the test binary, such as `process::tests::name`) of the
    /// current test binary in a new process started by `sh` with `trap "" INT QUIT`. Panics unless exactly that
    /// test ran and passed; returns its output (run with `--nocapture`).
    pub fn rerun_with_ignored_signals(test: &str) -> Output {
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new("/bin/sh")
            .args(["-c", r#"trap "" INT QUIT; exec "$0" "$@""#])
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(MARK, "1")
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{test} with SIGINT and SIGQUIT ignored:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_sets_are_read_from_proc_status() {
        let status = "Name:\tsh\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000006\nSigCgt:\t0000000000010000\n";
        let ignored = signal_set(status, "SigIgn").unwrap();
        assert!(contains(ignored, SIGINT) && contains(ignored, SIGQUIT));
        assert!(!contains(ignored, 1) && !contains(ignored, 0) && !contains(ignored, 65));
        assert_eq!(signal_set(status, "SigBlk"), Some(0));
        assert!(contains(signal_set(status, "SigCgt").unwrap(), 17));
        assert_eq!(signal_set(status, "SigPnd"), None);
    }

    /// Started with SIGINT and SIGQUIT ignored, this process starts children that have them at the default.
    #[test]
    fn children_do_not_inherit_an_ignored_sigint() {
        if !testing::in_rerun() {
            testing::rerun_with_ignored_signals("tests::children_do_not_inherit_an_ignored_sigint");
            return;
        }
        let ours = signal_set(&std::fs::read_to_string("/proc/self/status").unwrap(), "SigIgn").unwrap();
        assert!(
            contains(ours, SIGINT) && contains(ours, SIGQUIT),
            "the re-run must start with them ignored"
        );
        let child = |cmd: &str| {
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", cmd])
                .output()
                .unwrap();
            signal_set(&String::from_utf8_lossy(&out.stdout), "SigIgn").unwrap()
        };
        let before = child("cat /proc/self/status");
        assert!(
            contains(before, SIGINT),
            "without the reset a child inherits the ignored SIGINT"
        );
        reset_for_children();
        let after = child("cat /proc/self/status");
        assert!(
            !contains(after, SIGINT) && !contains(after, SIGQUIT),
            "child's SigIgn: {after:x}"
        );
        // This process still does not stop on SIGINT.
        std::process::Command::new("kill")
            .args(["-INT", &std::process::id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        println!("checked: a child's SigIgn went from {before:x} to {after:x}");
    }
}
