//! Which batched build jobs share a Nix run (pure; the batcher in `link.rs` asks it). A build handed out with
//! its inputs (`batch_inputs`: a chain the server gave this worker at once) runs in the same run as them, so
//! Nix builds the whole chain in one `nix-store --realise`; a build whose inputs another run is still building
//! waits for that run instead of starting a second Nix that would wait on Nix's own locks (which it looks at
//! again only every few seconds).

use crate::jobs;
use gradient_domain::proto::Job;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Builds per Nix run at most.
pub const MAX_BATCH: usize = 128;

/// How long the batcher waits for more of a burst of assignments once none came (see [`quiet_for`]).
pub const GATHER: Duration = Duration::from_millis(20);
/// The same while a chain is being handed out.
pub const GATHER_CHAIN: Duration = Duration::from_millis(60);

/// How long a pause in the assignments arriving ends the gathering of a run: longer once a build handed out with
/// batch inputs (a chain's link) arrived. A server's round comes as one burst, but a busy machine may pause it for
/// a few tens of milliseconds; a chain cut there costs a whole Nix run after the first (its links wait for the
/// run building their inputs), where independent builds cut apart only start in the next run slot.
pub fn quiet_for(arrived: &[Job]) -> Duration {
    if arrived.iter().any(|j| !inputs_of(j).is_empty()) {
        GATHER_CHAIN
    } else {
        GATHER
    }
}

/// Whether the burst is in: the last job that arrived was the last build of its dispatch round
/// (`proto::Job::Build::round_rest`), so nothing more of it is waited for. A server that does not tell leaves the
/// gathering to [`quiet_for`].
pub fn round_in(arrived: &[Job]) -> bool {
    matches!(
        arrived.last(),
        Some(Job::Build {
            round_rest: Some(0),
            ..
        })
    )
}

/// The `.drv` path of a build job (empty for an evaluation).
pub fn drv_of(job: &Job) -> &str {
    match job {
        Job::Build { drv_path, .. } => drv_path,
        Job::Evaluate { .. } => "",
    }
}

/// The inputs a build job waits for on this worker (see `proto::Job::Build::batch_inputs`).
pub fn inputs_of(job: &Job) -> &[String] {
    match job {
        Job::Build { batch_inputs, .. } => batch_inputs,
        Job::Evaluate { .. } => &[],
    }
}

/// How jobs ready to go are run now.
#[derive(Debug, Default)]
pub struct Runs {
    /// One Nix run each.
    pub groups: Vec<Vec<Job>>,
    /// Jobs whose inputs a run still builds (one running now, or several of those planned here): they go once
    /// those runs have built.
    pub waiting: Vec<Job>,
}

/// Splits `jobs` (in arrival order) into runs of at most `size` jobs with the same [`jobs::batch_key`], each
/// job in the run of its batch inputs: a job whose inputs are all in one run joins it (beyond `size`, up to
/// [`MAX_BATCH`]); one with an input in `held` (drvs that running runs have not built yet), in a waiting job,
/// in several runs, or in a full run waits. Inputs come before what needs them, whatever the arrival order.
pub fn plan_runs(jobs: Vec<Job>, held: &HashSet<String>, size: usize) -> Runs {
    let size = size.clamp(1, MAX_BATCH);
    let mut runs = Runs::default();
    let mut held: HashSet<String> = held.clone();
    // The run each planned drv is in.
    let mut run_of: HashMap<String, usize> = HashMap::new();
    for job in in_dependency_order(jobs) {
        let inputs = inputs_of(&job);
        if inputs.iter().any(|i| held.contains(i)) {
            held.insert(drv_of(&job).to_owned());
            runs.waiting.push(job);
            continue;
        }
        let joined: HashSet<usize> = inputs.iter().filter_map(|i| run_of.get(i).copied()).collect();
        let key = jobs::batch_key(&job);
        let run = match joined.len() {
            0 => runs
                .groups
                .iter()
                .position(|g| g.len() < size && jobs::batch_key(&g[0]) == key),
            1 => joined
                .into_iter()
                .next()
                .filter(|&r| runs.groups[r].len() < MAX_BATCH && jobs::batch_key(&runs.groups[r][0]) == key),
            _ => None,
        };
        let run = match run {
            Some(r) => r,
            None if inputs.iter().any(|i| run_of.contains_key(i)) => {
                // Its inputs are split over runs (or in a full one): after them.
                held.insert(drv_of(&job).to_owned());
                runs.waiting.push(job);
                continue;
            }
            None => {
                runs.groups.push(Vec::new());
                runs.groups.len() - 1
            }
        };
        run_of.insert(drv_of(&job).to_owned(), run);
        runs.groups[run].push(job);
    }
    runs
}

/// The jobs with every job before the jobs among them that need it (stable otherwise).
fn in_dependency_order(jobs: Vec<Job>) -> Vec<Job> {
    let here: HashSet<String> = jobs.iter().map(|j| drv_of(j).to_owned()).collect();
    let mut placed: HashSet<String> = HashSet::new();
    let mut rest = jobs;
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        let before = rest.len();
        let (now, later): (Vec<Job>, Vec<Job>) = rest.into_iter().partition(|j| {
            inputs_of(j)
                .iter()
                .all(|i| !here.contains(i) || placed.contains(i) || i == drv_of(j))
        });
        // Placed only after the pass, so that each pass is one level: arrival order within a level.
        placed.extend(now.iter().map(|j| drv_of(j).to_owned()));
        out.extend(now);
        rest = later;
        if rest.len() == before {
            // A cycle cannot come from Nix; should one, the rest keeps its order.
            out.append(&mut rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradient_domain::model::JobId;

    fn build(name: &str, inputs: &[&str]) -> Job {
        Job::Build {
            job_id: JobId::new(),
            drv_path: format!("/nix/store/{name}.drv"),
            outputs: [("out".to_owned(), format!("/nix/store/{name}"))].into(),
            substituters: vec![],
            trusted_public_keys: vec![],
            substituter_token: None,
            push: None,
            timeout_secs: None,
            batch_inputs: inputs.iter().map(|i| format!("/nix/store/{i}.drv")).collect(),
            round_rest: None,
        }
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| {
                drv_of(j)
                    .trim_start_matches("/nix/store/")
                    .trim_end_matches(".drv")
                    .to_owned()
            })
            .collect()
    }

    fn chain(n: usize) -> Vec<Job> {
        (0..n)
            .map(|i| {
                let prev = [format!("l{}", i.wrapping_sub(1))];
                let prev: Vec<&str> = prev.iter().map(String::as_str).collect();
                build(&format!("l{i}"), if i == 0 { &[] } else { &prev })
            })
            .collect()
    }

    #[test]
    fn a_chain_is_one_run_whatever_the_split_size_and_arrival_order() {
        let mut jobs = chain(40);
        jobs.reverse();
        let runs = plan_runs(jobs, &HashSet::new(), 8);
        assert_eq!(runs.groups.len(), 1, "{runs:?}");
        assert!(runs.waiting.is_empty());
        let got = names(&runs.groups[0]);
        assert_eq!(got.first().map(String::as_str), Some("l0"), "inputs first: {got:?}");
        assert_eq!(got.last().map(String::as_str), Some("l39"));
    }

    #[test]
    fn independent_builds_are_split_and_a_build_of_many_runs_waits_for_them() {
        let mut jobs: Vec<Job> = (0..20).map(|i| build(&format!("leaf{i}"), &[])).collect();
        let leaves: Vec<String> = (0..20).map(|i| format!("leaf{i}")).collect();
        let refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
        jobs.insert(0, build("all", &refs));
        let runs = plan_runs(jobs, &HashSet::new(), 10);
        assert_eq!(runs.groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10]);
        assert_eq!(names(&runs.waiting), vec!["all"], "its inputs are in two runs");
    }

    #[test]
    fn a_build_whose_input_a_running_run_builds_waits_and_so_does_what_needs_it() {
        let held = HashSet::from(["/nix/store/a.drv".to_owned()]);
        let runs = plan_runs(vec![build("b", &["a"]), build("c", &["b"]), build("x", &[])], &held, 8);
        assert_eq!(names(&runs.waiting), vec!["b", "c"]);
        assert_eq!(runs.groups.len(), 1);
        assert_eq!(names(&runs.groups[0]), vec!["x"]);
    }

    #[test]
    fn a_burst_with_a_chain_is_gathered_longer() {
        assert_eq!(quiet_for(&[]), GATHER);
        let independent: Vec<Job> = (0..5).map(|i| build(&format!("leaf{i}"), &[])).collect();
        assert_eq!(quiet_for(&independent), GATHER);
        assert_eq!(quiet_for(&chain(3)), GATHER_CHAIN, "its links name their inputs");
        assert!(GATHER_CHAIN > GATHER);
    }

    #[test]
    fn a_round_is_in_once_its_last_build_arrived() {
        let with_rest = |name: &str, rest: Option<u32>| {
            let mut job = build(name, &[]);
            if let Job::Build { round_rest, .. } = &mut job {
                *round_rest = rest;
            }
            job
        };
        assert!(!round_in(&[]));
        assert!(!round_in(&[with_rest("a", Some(1))]), "one more follows");
        assert!(round_in(&[with_rest("a", Some(1)), with_rest("b", Some(0))]));
        assert!(
            !round_in(&[with_rest("a", None)]),
            "an older server does not tell: wait for a pause"
        );
        assert!(
            !round_in(&[with_rest("a", Some(0)), with_rest("b", Some(2))]),
            "the next round began"
        );
    }

    #[test]
    fn a_chain_longer_than_a_run_continues_in_a_later_run() {
        let runs = plan_runs(chain(MAX_BATCH + 5), &HashSet::new(), MAX_BATCH);
        assert_eq!(runs.groups.len(), 1);
        assert_eq!(runs.groups[0].len(), MAX_BATCH);
        assert_eq!(runs.waiting.len(), 5, "the rest waits for the first run's builds");
    }
}
