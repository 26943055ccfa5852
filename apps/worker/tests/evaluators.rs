//! The worker's evaluator subprocesses (`GRADIENT_EVAL_WORKERS`, `GRADIENT_MAX_EVALUATIONS_PER_WORKER`): this
//! binary re-executed with `--evaluator`, running the evaluations' `nix` commands with the real Nix on a flake of
//! `/bin/sh` derivations. Which process ran each `nix eval` is seen by a `nix` on the evaluator's path that
//! wraps the real one and writes its parent's process id.

#![allow(clippy::unwrap_used)]

use gradient_domain::ports::nix::{FetchedFlake, Nix};
use gradient_nix_cli::NixCli;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_gradient-worker");
const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =";

const FLAKE: &str = r#"{
  outputs = { self }: let
    mk = name: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  in {
    packages.x86_64-linux = { a = mk "a"; b = mk "b"; c = mk "c"; broken = throw "boom"; };
  };
}
"#;

fn run(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A git repository holding the flake, fetched.
async fn fetched(dir: &Path) -> FetchedFlake {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("flake.nix"), FLAKE).unwrap();
    run(&repo, &["git", "init", "-q", "-b", "main"]);
    run(&repo, &["git", "add", "flake.nix"]);
    run(
        &repo,
        &[
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "flake",
        ],
    );
    let commit = run(&repo, &["git", "rev-parse", "HEAD"]);
    plain()
        .fetch(
            &format!("file://{}", repo.display()),
            Some("main"),
            &commit,
            &BTreeMap::new(),
            None,
        )
        .await
        .unwrap()
}

fn plain() -> NixCli {
    NixCli::new().env("NIX_CONFIG", NIX_CONFIG)
}

/// A `nix` in `dir` that writes `<parent pid> <own pid>` to `dir/log` for every `nix eval`, sleeps `pause` (then),
/// and runs the real one in its place; and the evaluator's ignored signals to `dir/sigign`.
fn wrapping_nix(dir: &Path, pause: &str) -> PathBuf {
    let real = run(dir, &["sh", "-c", "command -v nix"]);
    let log = dir.join("log");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" eval \"*)\n  grep SigIgn /proc/$PPID/status > {d}/sigign\n  echo \"$PPID $$\" >> {log}\n  {pause}\n;; esac\nexec {real} \"$@\"\n",
        d = dir.display(),
        log = log.display()
    );
    let bin = dir.join("nix");
    std::fs::write(&bin, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

/// The parent process ids of the `nix eval`s logged, deduplicated in order; the log emptied.
fn parents(log: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    let mut seen = Vec::new();
    for line in text.lines() {
        let pid: u32 = line.split_whitespace().next().unwrap().parse().unwrap();
        if !seen.contains(&pid) {
            seen.push(pid);
        }
    }
    seen
}

/// What an evaluation reports: the attributes with their `.drv` paths and the failed attributes, sorted.
async fn evaluate(cli: &NixCli, flake: &FetchedFlake) -> (Vec<(String, String)>, Vec<String>) {
    let mut attributes = Vec::new();
    let mut errors = Vec::new();
    cli.evaluate(flake, "packages.*.*", |b| {
        attributes.extend(b.attributes.iter().map(|a| (a.attribute(), a.drv_path.clone())));
        errors.extend(b.errors.iter().map(|e| e.attribute()));
    })
    .await
    .unwrap();
    attributes.sort();
    errors.sort();
    (attributes, errors)
}

/// Whether process `pid` runs (exists and is no zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next()
            .unwrap_or("");
        state != "Z" && state != "X"
    })
}

/// Three evaluations with two per evaluator process: the first two in one process, the third in a fresh one;
/// each reports what the same evaluation in this process reports. With 0 (never), one process does all three.
#[tokio::test]
async fn an_evaluator_process_is_replaced_after_its_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let flake = fetched(dir.path()).await;
    let log = wrapping_nix(dir.path(), "");
    let expected = evaluate(&plain().with_bin_dir(dir.path()), &flake).await;
    assert_eq!(parents(&log), [std::process::id()], "in this process");
    assert_eq!(expected.0.len(), 3, "{expected:?}");
    assert_eq!(expected.1, ["packages.x86_64-linux.broken"]);

    let pooled = |per_process| {
        plain()
            .with_bin_dir(dir.path())
            .evaluators(WORKER, vec!["--evaluator".into()], 1, per_process)
    };
    let cli = pooled(2);
    let mut evaluators = Vec::new();
    for _ in 0..3 {
        assert_eq!(evaluate(&cli, &flake).await, expected);
        let ran = parents(&log);
        assert_eq!(ran.len(), 1, "one evaluator process per evaluation: {ran:?}");
        evaluators.push(ran[0]);
    }
    assert_ne!(evaluators[0], std::process::id());
    assert_eq!(evaluators[0], evaluators[1], "{evaluators:?}");
    assert_ne!(evaluators[1], evaluators[2], "{evaluators:?}");
    // The replaced process has gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(evaluators[0]) {
        assert!(Instant::now() < deadline, "evaluator {} still runs", evaluators[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        running(evaluators[2]),
        "the current one is kept for the next evaluation"
    );

    let never = pooled(0);
    for _ in 0..3 {
        assert_eq!(evaluate(&never, &flake).await, expected);
    }
    let ran = parents(&log);
    assert_eq!(ran.len(), 1, "{ran:?}");
}

/// An evaluator process that died between evaluations is replaced; the evaluation does not notice.
#[tokio::test]
async fn a_dead_evaluator_process_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let flake = fetched(dir.path()).await;
    let log = wrapping_nix(dir.path(), "");
    let cli = plain()
        .with_bin_dir(dir.path())
        .evaluators(WORKER, vec!["--evaluator".into()], 1, 0);
    let first = evaluate(&cli, &flake).await;
    let [pid] = parents(&log)[..] else { panic!() };
    run(dir.path(), &["kill", "-KILL", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(evaluate(&cli, &flake).await, first);
    let ran = parents(&log);
    assert!(ran.len() == 1 && ran[0] != pid, "{ran:?} after {pid}");
}

/// Dropping an evaluation (an abort) stops its evaluator process and the Nix processes it started.
#[tokio::test]
async fn an_aborted_evaluation_stops_its_evaluator_and_its_nix_processes() {
    let dir = tempfile::tempdir().unwrap();
    let flake = fetched(dir.path()).await;
    let log = wrapping_nix(dir.path(), "/usr/bin/sleep 60");
    let cli = plain()
        .with_bin_dir(dir.path())
        .evaluators(WORKER, vec!["--evaluator".into()], 1, 0);
    let started = async {
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = cli.evaluate(&flake, "packages.*.*", |_| {}) => panic!("the evaluation ended"),
        _ = tokio::time::timeout(Duration::from_secs(60), started) => {}
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let pids: Vec<u32> = text.split_whitespace().take(2).map(|p| p.parse().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| running(*p)) {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            pids.iter().filter(|p| running(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Started by a process that ignores SIGINT and SIGQUIT (a script's background job), an evaluator process has
/// them at their default, as every child of the worker has.
#[tokio::test]
async fn evaluator_processes_do_not_inherit_an_ignored_sigint() {
    if !gradient_process::testing::in_rerun() {
        gradient_process::testing::rerun_with_ignored_signals("evaluator_processes_do_not_inherit_an_ignored_sigint");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flake = fetched(dir.path()).await;
    wrapping_nix(dir.path(), "");
    let cli = plain()
        .with_bin_dir(dir.path())
        .evaluators(WORKER, vec!["--evaluator".into()], 1, 0);
    evaluate(&cli, &flake).await;
    let status = std::fs::read_to_string(dir.path().join("sigign")).unwrap();
    let ignored = gradient_process::signal_set(&status, "SigIgn").unwrap();
    assert!(
        !gradient_process::contains(ignored, gradient_process::SIGINT)
            && !gradient_process::contains(ignored, gradient_process::SIGQUIT),
        "the evaluator's {status}"
    );
}

/// Two evaluator processes evaluate two evaluations side by side, each in its own process, and each still
/// splits its attributes between `nix eval`s (`eval_processes`): two for the four attributes instead of one.
#[tokio::test]
async fn evaluator_processes_work_side_by_side_and_split_their_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let flake = fetched(dir.path()).await;
    // Long enough for the two evaluations to overlap.
    let log = wrapping_nix(dir.path(), "/usr/bin/sleep 0.3");
    let evals_per_evaluator = |text: &str| {
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        for line in text.lines() {
            *count
                .entry(line.split_whitespace().next().unwrap().parse().unwrap())
                .or_default() += 1;
        }
        count
    };
    let alone = plain()
        .with_bin_dir(dir.path())
        .evaluators(WORKER, vec!["--evaluator".into()], 1, 0);
    let expected = evaluate(&alone, &flake).await;
    // Listing and evaluating the four attributes in one `nix eval` (one process evaluates), the failed one's
    // message.
    let one = evals_per_evaluator(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(one.values().copied().collect::<Vec<_>>(), [2], "{one:?}");
    std::fs::remove_file(&log).unwrap();

    let pool = plain()
        .with_bin_dir(dir.path())
        .eval_processes(2)
        .evaluators(WORKER, vec!["--evaluator".into()], 2, 0);
    let (a, b) = tokio::join!(evaluate(&pool, &flake), evaluate(&pool, &flake));
    assert_eq!((&a, &b), (&expected, &expected));
    let two = evals_per_evaluator(&std::fs::read_to_string(&log).unwrap());
    // Two evaluators, each: listing, two `nix eval`s for two attributes each, the message.
    assert_eq!(two.values().copied().collect::<Vec<_>>(), [4, 4], "{two:?}");
}
