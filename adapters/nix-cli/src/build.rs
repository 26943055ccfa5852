//! Building with `nix-store --realise` (the one command whose log, roots and exit codes are the same from Nix
//! 2.8 to now).

use crate::process::{self, Ended};
use crate::{NixCli, derivation};
use gradient_domain::ports::nix::{BuildOptions, BuildOutput, NixError, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// How long past its timeout a build may run before the adapter kills Nix itself (Nix's own `--timeout`
/// normally stops the builder first; this covers substitution and a stuck Nix).
const GRACE: Duration = Duration::from_secs(30);

pub async fn build(
    cli: &NixCli,
    drv_path: &str,
    opts: &BuildOptions,
    on_log: &mut (dyn FnMut(&str) + Send),
) -> Result<BuildOutput> {
    check_store_path(drv_path)?;
    if !drv_path.ends_with(".drv") {
        return Err(NixError::InvalidRequest(format!(
            "'{drv_path}' is not a store derivation"
        )));
    }
    let mut drv_rooted = false;
    if let Some(dir) = &opts.gc_root {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| NixError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        // A `.drv` still to be substituted is rooted once it is here.
        if tokio::fs::try_exists(drv_path).await.unwrap_or(false) {
            root_drv(cli, drv_path, dir).await?;
            drv_rooted = true;
        }
    }

    let metadata = PrivateNixCache::new()?;
    let mut cmd = cli.command("nix-store");
    metadata.apply(&mut cmd);
    cmd.args(["--realise", drv_path]);
    let caches_needed = !read_run_files(vec![drv_path.to_owned()]).await.nothing_from_caches;
    realise_options(&mut cmd, opts, caches_needed);
    let finished = match process::run(cmd, opts.timeout.map(|t| t + GRACE), on_log).await? {
        Ended::TimedOut(tail) => return Err(NixError::Timeout { log_tail: tail.text() }),
        Ended::Exited(finished) => finished,
    };
    if !finished.status.success() {
        let lines: Vec<&str> = finished.stderr.lines().collect();
        return Err(classify(
            finished.status.code(),
            &lines,
            drv_path,
            finished.stderr.text(),
        ));
    }

    if let Some(dir) = &opts.gc_root
        && !drv_rooted
    {
        root_drv(cli, drv_path, dir).await?;
    }
    let mut cmd = cli.show_derivation().await?;
    cmd.arg(drv_path);
    let out = process::output(cmd).await?.success_or(NixError::Unavailable)?;
    let store_dir = drv_path.rsplit_once('/').map_or("/nix/store", |(dir, _)| dir);
    let info = derivation::parse(&out, store_dir)
        .map_err(NixError::Unavailable)?
        .remove(drv_path)
        .ok_or_else(|| NixError::Unavailable(format!("nix does not describe {drv_path}")))?;
    Ok(BuildOutput { outputs: info.outputs })
}

/// What every `nix-store --realise` gets from the build options: the extra substituters with their keys and
/// credentials, the GC root, the time limit.
/// Options of a `nix-store --realise` run. `gradient_caches`: whether the run is given Gradient's caches
/// (`opts.substituters`) as extra substituters; Nix's own substituters (the machine's `nix.conf`) are always
/// kept, so what the public caches hold is still fetched rather than built.
fn realise_options(cmd: &mut tokio::process::Command, opts: &BuildOptions, gradient_caches: bool) {
    // A path missing from Gradient's cache a minute ago may be there now: never trust a cached "absent".
    cmd.args(["--option", "narinfo-cache-negative-ttl", "0"]);
    if gradient_caches && !opts.substituters.is_empty() {
        cmd.args(["--option", "extra-substituters", &opts.substituters.join(" ")]);
    }
    if !opts.trusted_public_keys.is_empty() {
        cmd.args([
            "--option",
            "extra-trusted-public-keys",
            &opts.trusted_public_keys.join(" "),
        ]);
    }
    if let Some(netrc) = &opts.netrc_file {
        cmd.args(["--option", "netrc-file"]).arg(netrc);
    }
    if let Some(dir) = &opts.gc_root {
        cmd.arg("--add-root").arg(dir.join("out"));
    }
    if let Some(jobs) = opts.max_jobs {
        cmd.args(["--max-jobs", &jobs.max(1).to_string()]);
    }
    if let Some(limit) = opts.timeout {
        let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
        cmd.args(["--timeout", &secs.max(1).to_string()]);
    }
}

/// An indirect GC root `<dir>/drv` for the `.drv` itself: `nix-store --add-root` only roots outputs, while
/// `nix-instantiate --add-root` roots the derivation an expression instantiates, and importing a `.drv` file
/// gives back that same derivation.
async fn root_drv(cli: &NixCli, drv_path: &str, dir: &Path) -> Result<()> {
    let mut cmd = cli.command("nix-instantiate");
    cmd.arg("--add-root")
        .arg(dir.join("drv"))
        .arg("--expr")
        .arg(format!("import (/. + \"{drv_path}\")"));
    process::output(cmd).await?.success_or(NixError::Unavailable)?;
    Ok(())
}

/// Why `nix-store --realise` failed. Nix's exit status is `0x60` plus bits for a failed build (`0x04`), a
/// timeout (`0x01`), a hash mismatch (`0x02`) or a failed check (`0x08`); anything else (usually 1) is Nix
/// failing before or around the builds. Whose builder failed is read from Nix's messages: `builder for '<drv>'
/// failed` (Nix 2.8) or `Cannot build '<drv>'.` + `Reason: builder failed` (newer).
fn classify(code: Option<i32>, lines: &[&str], drv_path: &str, log_tail: String) -> NixError {
    let code = code.unwrap_or(1);
    if code & 0x60 != 0x60 || code > 0x6f {
        let start = lines.iter().position(|l| l.starts_with("error:")).unwrap_or(0);
        return NixError::Unavailable(lines[start..].join("\n"));
    }
    if code & 0x01 != 0 {
        return NixError::Timeout { log_tail };
    }
    let quoted = |line: &str, after: &str| -> Option<String> {
        let rest = &line[line.find(after)? + after.len()..];
        Some(rest[..rest.find('\'')?].to_owned())
    };
    let mut failed_builders = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(drv) = quoted(line, "builder for '") {
            failed_builders.push(drv);
        } else if let Some(drv) = quoted(line, "Cannot build '")
            && lines[i + 1..]
                .iter()
                .take(3)
                .any(|l| l.contains("Reason: builder failed"))
        {
            failed_builders.push(drv);
        } else if let Some(drv) = quoted(line, "hash mismatch in fixed-output derivation '") {
            failed_builders.push(drv);
        }
    }
    if failed_builders.iter().any(|d| d == drv_path) {
        NixError::BuildFailed { log_tail }
    } else if let Some(dependency) = failed_builders.into_iter().next() {
        NixError::DependencyFailed {
            drv_path: Some(dependency),
            log_tail,
        }
    } else if lines
        .iter()
        .any(|l| l.contains("dependencies of derivation") || l.contains("dependency failed"))
    {
        NixError::DependencyFailed {
            drv_path: None,
            log_tail,
        }
    } else {
        NixError::BuildFailed { log_tail }
    }
}

/// What the `.drv` files of one Nix run say about it (see [`read_run`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct RunFiles {
    /// Building the run needs nothing from Gradient's caches: its `.drv` files are in the store, and so is
    /// everything they need that the run does not build (the outputs of their other input derivations and their
    /// sources). Then the run goes without Gradient's caches as substituters: the server hands out a build only
    /// when its outputs are in none of the organization's caches, and Nix would otherwise ask each cache about
    /// each output of the run before building it (several requests per build, one after another along a chain),
    /// only to hear it is not there. Nix's own substituters stay. `false` whenever it cannot be told: a file
    /// missing or not what Nix writes, an output whose path is not known before building. A path present is
    /// taken as valid: if it is not (being built by another Nix), Nix waits for it or builds it from its
    /// `.drv`, which is in the store.
    nothing_from_caches: bool,
    /// The run's derivations another of its derivations takes every output of: Nix builds them (all their
    /// outputs) as that one's inputs, so they need not be named on its command line. Naming every link of a
    /// chain of 100 made Nix 2.8's run ~0.1 s slower than naming only its end. Empty when a file cannot be read.
    implied: HashSet<String>,
    /// For each of the run's derivations another of them takes (any output of), those that take it.
    takers: HashMap<String, Vec<String>>,
}

/// Reads the `.drv` files of a run (and those of their inputs outside it) to tell [`RunFiles`].
fn read_run(drvs: &[String]) -> RunFiles {
    let in_store = |path: &str| std::fs::symlink_metadata(path).is_ok();
    let read = |drv: &str| {
        std::fs::read(drv)
            .ok()
            .and_then(|text| gradient_domain::nix::parse_derivation(&text).ok())
    };
    let mut run = HashMap::new();
    for drv in drvs {
        let Some(d) = read(drv) else {
            return RunFiles::default();
        };
        run.insert(drv.as_str(), d);
    }
    let mut implied = HashSet::new();
    let mut takers: HashMap<String, Vec<String>> = HashMap::new();
    let mut nothing_from_caches = true;
    for (path, d) in &run {
        if !d.input_srcs.iter().all(|src| in_store(src)) {
            nothing_from_caches = false;
        }
        for (input, wanted) in &d.input_drvs {
            if let Some(built_here) = run.get(input.as_str()) {
                takers.entry(input.clone()).or_default().push((*path).to_owned());
                if built_here.outputs.keys().all(|name| wanted.contains(name)) {
                    implied.insert(input.clone());
                }
                continue;
            }
            if !nothing_from_caches {
                continue;
            }
            let present = read(input).is_some_and(|input| {
                wanted.iter().all(|name| {
                    input
                        .outputs
                        .get(name)
                        .is_some_and(|path| !path.is_empty() && in_store(path))
                })
            });
            if !present {
                nothing_from_caches = false;
            }
        }
    }
    RunFiles {
        nothing_from_caches,
        implied,
        takers,
    }
}

/// [`read_run`] off the async threads (it reads files).
async fn read_run_files(drvs: Vec<String>) -> RunFiles {
    tokio::task::spawn_blocking(move || read_run(&drvs))
        .await
        .unwrap_or_default()
}

pub fn check_store_path(path: &str) -> Result<()> {
    let ok = path.starts_with('/')
        && !path.ends_with('/')
        && !path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"\\$".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NixError::InvalidRequest(format!("'{path}' is not a store path")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/nix/store/wqdajgggc6yqjwvhy85zbx3bn2gjk59i-dep.drv";
    const DEP: &str = "/nix/store/n02k9fx2vchy8vr19cimpkxmx53zp4s9-f.drv";

    fn kind(code: i32, log: &str) -> NixError {
        let lines: Vec<&str> = log.lines().collect();
        classify(Some(code), &lines, DRV, log.to_owned())
    }

    #[test]
    fn failures_are_classified_from_nix_2_8_messages() {
        let own = format!("building '{DRV}'...\nfailing\nerror: builder for '{DRV}' failed with exit code 1");
        assert!(matches!(kind(100, &own), NixError::BuildFailed { log_tail } if log_tail.contains("failing")));
        let dep = format!(
            "error: builder for '{DEP}' failed with exit code 1\n\
             error: 1 dependencies of derivation '{DRV}' failed to build"
        );
        assert!(matches!(kind(100, &dep), NixError::DependencyFailed { drv_path: Some(d), .. } if d == DEP));
        let timeout = format!("error: building of '{DRV}!*' from .drv file timed out after 2 seconds");
        assert!(matches!(kind(101, &timeout), NixError::Timeout { .. }));
        let missing = format!("don't know how to build these paths:\nerror: cannot build missing derivation '{DRV}'");
        assert!(matches!(kind(1, &missing), NixError::Unavailable(m) if m.starts_with("error: cannot build missing")));
    }

    #[test]
    fn failures_are_classified_from_newer_messages() {
        let own = format!("error: Cannot build '{DRV}'.\n       Reason: builder failed with exit code 1.");
        assert!(matches!(kind(100, &own), NixError::BuildFailed { .. }));
        let dep = format!(
            "error: Cannot build '{DEP}'.\n       Reason: builder failed with exit code 1.\n\
             error: Cannot build '{DRV}'.\n       Reason: 1 dependency failed."
        );
        assert!(matches!(kind(100, &dep), NixError::DependencyFailed { drv_path: Some(d), .. } if d == DEP));
        assert!(matches!(
            kind(102, "error: hash mismatch"),
            NixError::BuildFailed { .. }
        ));
    }

    #[test]
    fn builds_are_known_built_when_none_runs_and_none_failed_else_looked_at() {
        let mut w = Watch::default();
        let start = |w: &mut Watch, d: &str| {
            w.running.insert(d.to_owned());
        };
        // One at a time: a ends, then b.
        start(&mut w, "a");
        assert!(!w.progressed([0, 3, 1, 0]), "a runs");
        assert!(w.progressed([1, 3, 0, 0]));
        assert_eq!(w.take(), (vec!["a".to_owned()], vec![], vec![]));
        // Two at once: one of them ended, which is not said.
        start(&mut w, "b");
        start(&mut w, "c");
        assert!(!w.progressed([1, 3, 2, 0]));
        assert!(w.progressed([2, 3, 1, 0]));
        assert_eq!(w.take(), (vec![], vec![], vec!["b".to_owned(), "c".to_owned()]));
        w.running.remove("b");
        // c failed: what ran since the last time none ran is looked at once.
        start(&mut w, "d");
        assert!(!w.progressed([2, 3, 2, 0]));
        assert!(w.progressed([3, 3, 0, 1]));
        assert_eq!(w.take(), (vec![], vec!["c".to_owned(), "d".to_owned()], vec![]));
        // After that, none failed since: known built again.
        start(&mut w, "e");
        assert!(!w.progressed([3, 4, 1, 1]));
        assert!(w.progressed([4, 4, 0, 1]));
        assert_eq!(w.take().0, vec!["e".to_owned()]);
        assert!(w.running.is_empty());
    }

    #[test]
    fn store_paths_are_checked() {
        assert!(check_store_path(DRV).is_ok());
        for bad in ["", "relative/x", "/nix/store/a b", "/nix/store/x\"", "/nix/store/"] {
            assert!(check_store_path(bad).is_err(), "{bad}");
        }
    }
}

/// Builds several derivations with one `nix-store --realise --keep-going`, reading Nix's structured log
/// (`--log-format internal-json`) to tell whose build printed each line and whose builder failed, and when a
/// build ended (its outputs then valid: `on_built`), then asks Nix which outputs are valid.
pub async fn build_many(
    cli: &NixCli,
    drvs: &[(String, BTreeMap<String, String>)],
    opts: &BuildOptions,
    on_log: &mut (dyn FnMut(&str, &str) + Send),
    on_built: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<Result<BuildOutput>>> {
    for (drv_path, outputs) in drvs {
        check_store_path(drv_path)?;
        if !drv_path.ends_with(".drv") {
            return Err(NixError::InvalidRequest(format!(
                "'{drv_path}' is not a store derivation"
            )));
        }
        for path in outputs.values() {
            check_store_path(path)?;
        }
    }
    if drvs.is_empty() {
        return Ok(Vec::new());
    }
    // The `.drv` files are not rooted here (unlike a single build): Nix holds them while it builds, and one
    // collected before that is substituted again from the cache the evaluation pushed it to.
    if let Some(dir) = &opts.gc_root {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| NixError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let metadata = PrivateNixCache::new()?;
    let mut cmd = cli.command("nix-store");
    metadata.apply(&mut cmd);
    cmd.args(["--realise", "--keep-going", "--log-format", "internal-json"]);
    let files = read_run_files(drvs.iter().map(|(d, _)| d.clone()).collect()).await;
    let mut named = HashSet::new();
    cmd.args(
        drvs.iter()
            .map(|(d, _)| d.as_str())
            .filter(|d| !files.implied.contains(*d) && named.insert(*d)),
    );
    realise_options(&mut cmd, opts, !files.nothing_from_caches);
    let mut log = StructuredLog::default();
    // Which of the run's builds have ended, as far as Nix has said (see `Watch`).
    let watch = std::sync::Mutex::new(Watch::default());
    let wake = tokio::sync::Notify::new();
    let outputs_of: HashMap<&str, &BTreeMap<String, String>> = drvs
        .iter()
        .filter(|(_, outputs)| !outputs.is_empty())
        .map(|(d, o)| (d.as_str(), o))
        .collect();
    let mut read_line = |line: &str| {
        let before = log.progress;
        if let Some((drv, text)) = log.read(line) {
            on_log(&drv, &text);
        }
        if log.started.is_empty() && log.progress == before {
            return;
        }
        let mut w = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for drv in log.started.drain(..) {
            if outputs_of.contains_key(drv.as_str()) {
                w.running.insert(drv);
            }
        }
        // Only a change of the progress says something (a build's start comes before its `running` count).
        if log.progress != before && w.progressed(log.progress) {
            wake.notify_one();
        }
    };
    let run = process::run(cmd, opts.timeout.map(|t| t + GRACE), &mut read_line);
    // Tells `on_built` what `Watch` found built, and looks (one `nix-store --check-validity` at a time, at most
    // every `CHECK_SPACING`) at the builds that may have ended.
    let watching = async {
        loop {
            wake.notified().await;
            let (built, ended, look) = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            for drv in &built {
                on_built(drv);
            }
            if ended.is_empty() && look.is_empty() {
                continue;
            }
            let checking = tokio::time::Instant::now();
            let paths: Vec<&String> = ended
                .iter()
                .chain(&look)
                .flat_map(|d| outputs_of.get(d.as_str()).into_iter().flat_map(|o| o.values()))
                .collect();
            if let Ok(invalid) = invalid_paths(cli, paths).await {
                let valid = |drv: &str| {
                    outputs_of
                        .get(drv)
                        .is_some_and(|o| o.values().all(|p| !invalid.contains(p)))
                };
                for drv in ended.iter().filter(|d| valid(d)) {
                    on_built(drv);
                }
                for drv in look.iter().filter(|d| valid(d)) {
                    // Unless meanwhile found built (or ended) otherwise.
                    let mut w = watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if w.running.remove(drv) {
                        drop(w);
                        on_built(drv);
                    }
                }
            }
            tokio::time::sleep_until(checking + CHECK_SPACING).await;
        }
    };
    let ended = tokio::select! {
        ended = run => ended?,
        _ = watching => unreachable!("it never ends"),
    };
    let (code, timed_out) = match &ended {
        Ended::TimedOut(_) => (None, true),
        Ended::Exited(f) => (f.status.code(), false),
    };

    // Which outputs are valid now, in one question (all of them when Nix succeeded).
    let invalid: std::collections::HashSet<String> = if code == Some(0) {
        Default::default()
    } else {
        invalid_paths(cli, drvs.iter().flat_map(|(_, outputs)| outputs.values())).await?
    };
    // Nix itself failed: an exit status that is not its build-failure code, or killed by a signal.
    let nix_failed = !timed_out && code.is_none_or(|c| c & 0x60 != 0x60 || c > 0x6f);
    // Nix builds an input only when what needs it is not valid already: one it was named but found built (or
    // substituted) left the inputs it was not named unbuilt. Those are built now, named, each once however many
    // times the run has it.
    let missing: Vec<(String, BTreeMap<String, String>)> = if files.implied.is_empty() {
        Vec::new()
    } else if code == Some(0) {
        let in_store = |path: &String| std::fs::symlink_metadata(path).is_ok();
        let mut seen = HashSet::new();
        drvs.iter()
            .filter(|(d, outputs)| {
                files.implied.contains(d) && !outputs.values().all(in_store) && seen.insert(d.as_str())
            })
            .cloned()
            .collect()
    } else if !timed_out && !nix_failed {
        // Some builds failed: the links Nix left unbuilt because everything of the run taking them was valid
        // (not those needing a build that failed: a second run would only try it again).
        let valid = |d: &str| {
            outputs_of
                .get(d)
                .is_some_and(|o| o.values().all(|p| !invalid.contains(p)))
        };
        let mut after_failure: HashSet<&str> = HashSet::new();
        let mut next: Vec<&str> = log.failed.iter().map(String::as_str).collect();
        while let Some(d) = next.pop() {
            for taker in files.takers.get(d).into_iter().flatten() {
                if after_failure.insert(taker) {
                    next.push(taker);
                }
            }
        }
        let unbuilt: HashSet<&str> = drvs
            .iter()
            .filter(|(d, outputs)| {
                files.implied.contains(d)
                    && outputs.values().any(|p| invalid.contains(p))
                    && !log.failed.contains(d)
                    && !after_failure.contains(d.as_str())
            })
            .map(|(d, _)| d.as_str())
            .collect();
        // Those whose takers are all valid, or left unbuilt likewise (the second run builds them too).
        let mut again: HashSet<&str> = HashSet::new();
        while let Some(d) = unbuilt.iter().find(|d| {
            !again.contains(**d)
                && files
                    .takers
                    .get(**d)
                    .is_some_and(|t| t.iter().all(|t| valid(t) || again.contains(t.as_str())))
        }) {
            again.insert(d);
        }
        let mut seen = HashSet::new();
        drvs.iter()
            .filter(|(d, _)| again.contains(d.as_str()) && seen.insert(d.as_str()))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let built_again: HashSet<&str> = missing.iter().map(|(d, _)| d.as_str()).collect();
    // Nix adds the roots only when every build succeeded, and then only for the derivations it was named: root
    // what was built anyway, or the outputs of the ones it built as inputs of those. Before a second run: what
    // this one built stays rooted while that one goes on.
    if let Some(dir) = &opts.gc_root {
        let name = if code == Some(0) { "inputs" } else { "out" };
        let valid: Vec<&String> = drvs
            .iter()
            .filter(|(d, _)| code != Some(0) || files.implied.contains(d) && !built_again.contains(d.as_str()))
            .flat_map(|(_, outputs)| outputs.values())
            .filter(|p| !invalid.contains(*p))
            .collect();
        if !valid.is_empty() {
            let mut cmd = cli.command("nix-store");
            cmd.arg("--realise").args(valid).arg("--add-root").arg(dir.join(name));
            process::output(cmd).await?.success_or(NixError::Unavailable)?;
        }
    }
    let mut again: HashMap<String, Result<BuildOutput>> = HashMap::new();
    if !missing.is_empty() {
        let opts = BuildOptions {
            gc_root: opts.gc_root.as_ref().map(|dir| dir.join("again")),
            ..opts.clone()
        };
        let results = Box::pin(build_many(cli, &missing, &opts, on_log, on_built)).await?;
        again = missing.into_iter().map(|(d, _)| d).zip(results).collect();
    }
    Ok(drvs
        .iter()
        .map(|(drv_path, outputs)| {
            if let Some(result) = again.get(drv_path) {
                return result.clone();
            }
            if !outputs.is_empty() && outputs.values().all(|p| !invalid.contains(p)) {
                return Ok(BuildOutput {
                    outputs: outputs.clone(),
                });
            }
            let tail = log.tail_of(drv_path);
            if log.failed.contains(drv_path) {
                Err(NixError::BuildFailed { log_tail: tail })
            } else if timed_out || code.is_some_and(|c| c & 0x01 != 0) && !nix_failed {
                Err(NixError::Timeout { log_tail: tail })
            } else if nix_failed || log.failed.is_empty() {
                Err(NixError::Unavailable(log.errors()))
            } else {
                Err(NixError::DependencyFailed {
                    drv_path: None,
                    log_tail: tail,
                })
            }
        })
        .collect())
}

/// Which of `paths` are not valid in the store, in one question.
async fn invalid_paths<'a>(
    cli: &NixCli,
    paths: impl IntoIterator<Item = &'a String>,
) -> Result<std::collections::HashSet<String>> {
    let mut cmd = cli.command("nix-store");
    cmd.args(["--check-validity", "--print-invalid"]);
    cmd.args(paths);
    match process::output(cmd).await? {
        finished if finished.status.success() => Ok(String::from_utf8_lossy(&finished.stdout)
            .lines()
            .map(str::to_owned)
            .collect()),
        finished => Err(NixError::Unavailable(finished.stderr.error_message())),
    }
}

/// Validity checks of a run's builds while it goes on are this far apart at least (each is a Nix process).
const CHECK_SPACING: Duration = Duration::from_millis(200);

/// Which builds of a run have ended. Nix 2.8 says a build of the command line's derivations has ended only when
/// the whole run ends (their build activities stop then); what it says at once is the progress of all builds:
/// `[done, expected, running, failed]`, `done` counted once the outputs are registered valid. When none runs
/// any more, every build that started has ended: all built if none failed since (without asking Nix anything:
/// one build at a time, or a chain), else looked at once (`ended`). When `done` grew while others still run,
/// which one is not said: the outputs of those running are looked at (`look`), those valid are built.
#[derive(Default)]
struct Watch {
    /// The run's derivations whose build started and whose end is not known.
    running: std::collections::BTreeSet<String>,
    /// Built, to be told.
    built: Vec<String>,
    /// Ended, built or failed: to be looked at once.
    ended: Vec<String>,
    /// Some of `running` may have been built.
    look: bool,
    /// The last progress, and the builds failed when none last ran.
    last: [u64; 4],
    failed_before: u64,
}

impl Watch {
    /// Nix's progress is now `p`: whether there is something to tell or look at.
    fn progressed(&mut self, p: [u64; 4]) -> bool {
        let [done, _, running, failed] = p;
        let more_done = done > self.last[0];
        self.last = p;
        if running == 0 {
            let ended = std::mem::take(&mut self.running);
            if failed == self.failed_before {
                self.built.extend(ended);
            } else {
                self.ended.extend(ended);
            }
            self.failed_before = failed;
            self.look = false;
        } else if more_done && !self.running.is_empty() {
            self.look = true;
        }
        !self.built.is_empty() || !self.ended.is_empty() || self.look
    }

    /// What to tell, what to look at once, and which running builds to look at.
    fn take(&mut self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let look = if std::mem::take(&mut self.look) {
            self.running.iter().cloned().collect()
        } else {
            Vec::new()
        };
        (std::mem::take(&mut self.built), std::mem::take(&mut self.ended), look)
    }
}

/// A directory of its own for one Nix process's binary cache metadata (`$XDG_CACHE_HOME/nix/
/// binary-cache-v6.sqlite`): Nix 2.8 processes registering the same binary cache at once in a shared one can
/// make each other fail ("constraint failed"), and the worker runs several at once. Removed when dropped.
struct PrivateNixCache(std::path::PathBuf);

impl PrivateNixCache {
    fn new() -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gradient-nix-meta-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| NixError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Self(dir))
    }

    fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.env("XDG_CACHE_HOME", &self.0);
    }
}

impl Drop for PrivateNixCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `--log-format internal-json` says: lines are `@nix {json}`. A build is an activity (`start`, type
/// 105, whose first field is the `.drv` path); its output lines are `result`s of type 101 on that activity.
/// Error messages are `msg` actions (`builder for '<drv>' failed …`).
#[derive(Default)]
struct StructuredLog {
    builds: HashMap<u64, String>,
    /// Builds that started since the caller last took them.
    started: Vec<String>,
    /// The "builds" activity (type 104), and its last progress: `[done, expected, running, failed]`.
    builds_activity: Option<u64>,
    progress: [u64; 4],
    /// Builders that failed.
    failed: std::collections::HashSet<String>,
    /// The last lines of each build, for error tails.
    tails: HashMap<String, process::Tail>,
    /// Nix's error messages.
    messages: process::Tail,
}

impl StructuredLog {
    /// Reads one stderr line; answers the build it belongs to and its text, if it is a build's output.
    fn read(&mut self, line: &str) -> Option<(String, String)> {
        let Some(json) = line.strip_prefix("@nix ") else {
            self.messages.push(line);
            return None;
        };
        let v: Value = serde_json::from_str(json).ok()?;
        match v["action"].as_str()? {
            "start" if v["type"] == 105 => {
                let drv = v["fields"][0].as_str()?.to_owned();
                self.builds.insert(v["id"].as_u64()?, drv.clone());
                self.started.push(drv);
                None
            }
            "start" if v["type"] == 104 => {
                self.builds_activity = v["id"].as_u64();
                None
            }
            // Progress of the builds: `[done, expected, running, failed]`.
            "result" if v["type"] == 105 && v["id"].as_u64() == self.builds_activity => {
                let field = |i: usize| v["fields"][i].as_u64();
                self.progress = [field(0)?, field(1)?, field(2)?, field(3)?];
                None
            }
            "result" if v["type"] == 101 => {
                let drv = self.builds.get(&v["id"].as_u64()?)?.clone();
                let text = v["fields"][0].as_str()?.to_owned();
                self.tails.entry(drv.clone()).or_default().push(&text);
                Some((drv, text))
            }
            "msg" => {
                let msg = process::strip_ansi(v["msg"].as_str()?);
                // Whose builder failed, as `classify` reads it: Nix 2.8's `builder for '<drv>' failed`, newer
                // Nix's `Cannot build '<drv>'.` with `Reason: builder failed`, and fixed-output hash mismatches.
                let quoted = |after: &str| -> Option<String> {
                    let rest = msg.split(after).nth(1)?;
                    Some(rest.split('\'').next()?.to_owned())
                };
                if let Some(drv) = quoted("builder for '")
                    .or_else(|| quoted("Cannot build '").filter(|_| msg.contains("Reason: builder failed")))
                    .or_else(|| quoted("hash mismatch in fixed-output derivation '"))
                {
                    self.failed.insert(drv);
                }
                if v["level"].as_u64().is_some_and(|l| l == 0) {
                    for l in msg.lines() {
                        self.messages.push(l);
                    }
                }
                None
            }
            _ => None,
        }
    }

    fn tail_of(&self, drv: &str) -> String {
        let mut text = self.tails.get(drv).map(process::Tail::text).unwrap_or_default();
        for m in self.messages.lines().filter(|l| l.contains(drv)) {
            text.push('\n');
            text.push_str(m);
        }
        text
    }

    fn errors(&self) -> String {
        self.messages.error_message()
    }
}
