//! Running what the server assigns, with the real `nix` through the Nix port: evaluations (fetch the
//! flake at the commit, evaluate the selected attributes, report derivations in batches, push the `.drv`
//! files) and builds (substitute inputs from Gradient's caches, build with the log streamed, push the
//! outputs to the cache: see `gradient_domain::push`). Messages for the server go into `out`; the link delivers them.

use gradient_cache_http::HttpCacheClient;
use gradient_domain::model::JobId;
use gradient_domain::ports::nix::{BuildOptions, EvalBatch, Nix, NixError};
use gradient_domain::proto::{
    AttributeError, EvaluatedDerivation, FailureKind, Job, JobOutcome, PushTarget, Stage, WorkerMessage, log_chunks,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Derivations per `EvalResult` frame, well under the frame size limit.
const DERIVATIONS_PER_FRAME: usize = 200;

/// What jobs use on this machine besides Nix.
pub struct Local {
    /// For per-job netrc files.
    pub state: PathBuf,
    /// Pushes go to Gradient's caches through it.
    pub cache: HttpCacheClient,
    /// Indirect GC roots of running builds; `None` disables them.
    pub gcroots: Option<PathBuf>,
}

fn send(out: &UnboundedSender<WorkerMessage>, msg: WorkerMessage) {
    let _ = out.send(msg);
}

fn finished(out: &UnboundedSender<WorkerMessage>, job_id: JobId, outcome: JobOutcome) {
    send(out, WorkerMessage::JobFinished { job_id, outcome });
}

fn failure(kind: FailureKind, e: &NixError) -> JobOutcome {
    let mut message = e.to_string();
    if let Some(tail) = e.log_tail() {
        message.push('\n');
        message.push_str(tail);
    }
    JobOutcome::Failed { kind, message }
}

/// The netrc Nix reads Gradient's caches with while building: the job's push credential (good for reading its
/// organization's caches too), or else the token for reading its first substituter (none when it has
/// neither). The failure to answer when it cannot be written.
fn build_netrc(
    dirs: &Local,
    job_id: JobId,
    substituters: &[String],
    substituter_token: Option<String>,
    push: Option<&PushTarget>,
) -> Result<Option<PathBuf>, JobOutcome> {
    let creds = push.cloned().or(substituter_token.map(|token| PushTarget {
        cache_url: substituters.first().cloned().unwrap_or_default(),
        token,
    }));
    creds
        .as_ref()
        .map(|t| netrc_for(&dirs.state, job_id, t))
        .transpose()
        .map_err(|e| JobOutcome::Failed {
            kind: FailureKind::Infrastructure,
            message: format!("cannot write the netrc file: {e}"),
        })
}

/// A netrc holding a cache credential for the cache's host, readable only by this user.
fn netrc_for(dir: &Path, job_id: JobId, target: &PushTarget) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let host = target
        .cache_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .unwrap_or("localhost");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let path = dir.join(format!("netrc-{job_id}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(f, "machine {host} login gradient password {}", target.token)?;
    Ok(path)
}

pub async fn run<N: Nix>(nix: &N, dirs: &Local, job: Job, out: &UnboundedSender<WorkerMessage>) -> JobOutcome {
    let job_id = job.id();
    send(out, WorkerMessage::JobStarted { job_id });
    match job {
        Job::Evaluate {
            repository,
            commit,
            git_ref,
            wildcard,
            flake_input_overrides,
            push,
            credential,
            ..
        } => {
            let overrides = flake_input_overrides
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        gradient_domain::proto::InputOverride::Url(u) => gradient_domain::model::InputOverride::Url(u),
                        gradient_domain::proto::InputOverride::KeepUrl => {
                            gradient_domain::model::InputOverride::KeepUrl
                        }
                    };
                    (k, v)
                })
                .collect();
            evaluate(
                nix,
                dirs,
                job_id,
                &repository,
                git_ref.as_deref(),
                &commit,
                &wildcard,
                &overrides,
                credential.as_ref(),
                push,
                out,
            )
            .await
        }
        Job::Build {
            drv_path,
            substituters,
            trusted_public_keys,
            substituter_token,
            push,
            timeout_secs,
            ..
        } => {
            let netrc = match build_netrc(dirs, job_id, &substituters, substituter_token, push.as_ref()) {
                Ok(n) => n,
                Err(failed) => return failed,
            };
            let opts = BuildOptions {
                substituters,
                trusted_public_keys,
                netrc_file: netrc.clone(),
                gc_root: dirs.gcroots.as_ref().map(|d| d.join(job_id.to_string())),
                timeout: timeout_secs.map(Duration::from_secs),
                max_jobs: None,
            };
            // The credential and the roots go when the build ends, also when it is aborted midway.
            let _cleanup = Cleanup(netrc.clone(), opts.gc_root.clone());
            build(nix, &dirs.cache, job_id, &drv_path, &opts, push.as_ref(), out).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn evaluate<N: Nix>(
    nix: &N,
    dirs: &Local,
    job_id: JobId,
    repository: &str,
    git_ref: Option<&str>,
    commit: &str,
    wildcard: &str,
    overrides: &std::collections::BTreeMap<String, gradient_domain::model::InputOverride>,
    credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    push: Option<PushTarget>,
    out: &UnboundedSender<WorkerMessage>,
) -> JobOutcome {
    send(
        out,
        WorkerMessage::JobProgress {
            job_id,
            stage: Stage::Fetching,
        },
    );
    let flake = match nix.fetch(repository, git_ref, commit, overrides, credential).await {
        Ok(f) => f,
        Err(e) => return failure(FailureKind::FetchFailed, &e),
    };
    send(
        out,
        WorkerMessage::JobProgress {
            job_id,
            stage: Stage::Evaluating,
        },
    );
    let mut drvs: Vec<String> = Vec::new();
    let on_batch = |batch: EvalBatch| {
        drvs.extend(batch.derivations.iter().map(|d| d.drv_path.clone()));
        for frame in to_frames(job_id, batch) {
            let _ = out.send(frame);
        }
    };
    let started = std::time::Instant::now();
    if let Err(e) = nix.evaluate(&flake, wildcard, on_batch).await {
        return failure(FailureKind::EvaluationFailed, &e);
    }
    tracing::info!(
        target: "gradient::eval",
        "evaluated {} derivation(s) in {:.2}s",
        drvs.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(target) = push
        && !drvs.is_empty()
    {
        send(
            out,
            WorkerMessage::JobProgress {
                job_id,
                stage: Stage::Pushing,
            },
        );
        let started = std::time::Instant::now();
        let pushed = push_retrying(nix, &dirs.cache, &target, &drvs).await;
        tracing::info!(
            target: "gradient::eval",
            "pushed {} derivation(s) in {:.2}s",
            drvs.len(),
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = pushed {
            return failure(FailureKind::Infrastructure, &e);
        }
    }
    JobOutcome::Success
}

/// One `EvalResult` frame per bounded group of derivations; attribute errors travel with the first.
fn to_frames(job_id: JobId, batch: EvalBatch) -> Vec<WorkerMessage> {
    let mut derivations: Vec<EvaluatedDerivation> = batch
        .derivations
        .iter()
        .map(|d| EvaluatedDerivation {
            attribute: None,
            drv_path: d.drv_path.clone(),
            outputs: d.outputs.clone(),
            system: d.system.clone(),
            required_features: d.required_system_features.clone(),
            input_drvs: d.input_drvs.clone(),
        })
        .collect();
    // Attributes name derivations; a derivation two attributes share is listed once per attribute.
    for a in &batch.attributes {
        let name = a.attribute();
        match derivations
            .iter_mut()
            .find(|d| d.drv_path == a.drv_path && d.attribute.is_none())
        {
            Some(d) => d.attribute = Some(name),
            None => {
                if let Some(d) = derivations.iter().find(|d| d.drv_path == a.drv_path).cloned() {
                    derivations.push(EvaluatedDerivation {
                        attribute: Some(name),
                        ..d
                    });
                } else {
                    // Reported in an earlier batch: name it with what is known.
                    derivations.push(EvaluatedDerivation {
                        attribute: Some(name),
                        drv_path: a.drv_path.clone(),
                        outputs: Default::default(),
                        system: String::new(),
                        required_features: Vec::new(),
                        input_drvs: Vec::new(),
                    });
                }
            }
        }
    }
    let mut errors: Vec<AttributeError> = batch
        .errors
        .iter()
        .map(|e| AttributeError {
            attribute: e.attribute(),
            message: e.message.clone(),
        })
        .collect();
    let mut frames = Vec::new();
    loop {
        let rest = derivations.split_off(derivations.len().min(DERIVATIONS_PER_FRAME));
        frames.push(WorkerMessage::EvalResult {
            job_id,
            derivations,
            errors: std::mem::take(&mut errors),
        });
        if rest.is_empty() {
            break;
        }
        derivations = rest;
    }
    frames
}

async fn build<N: Nix>(
    nix: &N,
    cache: &HttpCacheClient,
    job_id: JobId,
    drv_path: &str,
    opts: &BuildOptions,
    push: Option<&PushTarget>,
    out: &UnboundedSender<WorkerMessage>,
) -> JobOutcome {
    send(
        out,
        WorkerMessage::JobProgress {
            job_id,
            stage: Stage::Building,
        },
    );
    let mut seq = 0u64;
    let on_log = |line: &str| {
        let text = format!("{line}\n");
        for chunk in log_chunks(&text) {
            let _ = out.send(WorkerMessage::JobLog {
                job_id,
                seq,
                text: chunk.to_owned(),
            });
            seq += 1;
        }
    };
    let built = match nix.build(drv_path, opts, on_log).await {
        Ok(b) => b,
        Err(e) => return build_failure(&e),
    };
    if let Some(target) = push {
        send(
            out,
            WorkerMessage::JobProgress {
                job_id,
                stage: Stage::Pushing,
            },
        );
        let paths: Vec<String> = built.outputs.values().cloned().collect();
        if let Err(e) = push_retrying(nix, cache, target, &paths).await {
            return failure(FailureKind::Infrastructure, &e);
        }
    }
    JobOutcome::Success
}

/// Pushes `paths` (and their closures) to the job's cache, trying again after a failure that may pass (the
/// cache or its storage unavailable or full) as `gradient_domain::push::PUSH_RETRY_DELAYS` says, without
/// building anything again.
async fn push_retrying<N: Nix>(
    nix: &N,
    cache: &HttpCacheClient,
    target: &PushTarget,
    paths: &[String],
) -> Result<u64, gradient_domain::ports::nix::NixError> {
    gradient_domain::push::push_retrying(nix, cache, target, paths, |delay, e| {
        tracing::warn!(
            target: "gradient::build",
            "{e}; trying again in {}s",
            delay.as_secs()
        );
        tokio::time::sleep(delay)
    })
    .await
}

/// Whether a job may share one Nix run with others: a build without a time limit of its own whose outputs
/// are known (what was built is read from them).
pub fn batchable(job: &Job) -> bool {
    matches!(job, Job::Build { timeout_secs: None, outputs, .. } if !outputs.is_empty())
}

/// How a batch asks about its jobs' fate: whether one was aborted meanwhile (its log is no longer wanted), and
/// whether its outcome may be reported now (once, and not after it was reported aborted).
pub struct BatchHooks<'a> {
    pub is_aborted: &'a (dyn Fn(JobId) -> bool + Send + Sync),
    pub claim: &'a (dyn Fn(JobId) -> bool + Send + Sync),
}

/// What a batch's builds must have in common: where they substitute from and push to.
pub fn batch_key(job: &Job) -> Option<(Vec<String>, Vec<String>, Option<String>)> {
    match job {
        Job::Build {
            substituters,
            trusted_public_keys,
            push,
            ..
        } => Some((
            substituters.clone(),
            trusted_public_keys.clone(),
            push.as_ref().map(|p| p.cache_url.clone()),
        )),
        Job::Evaluate { .. } => None,
    }
}

fn build_failure(e: &NixError) -> JobOutcome {
    let kind = match e.failure_kind() {
        gradient_domain::model::FailureKind::BuilderFailed => FailureKind::BuilderFailed,
        gradient_domain::model::FailureKind::DependencyFailed => FailureKind::DependencyFailed,
        gradient_domain::model::FailureKind::Timeout => FailureKind::Timeout,
        gradient_domain::model::FailureKind::Infrastructure => FailureKind::Infrastructure,
    };
    failure(kind, e)
}

/// Runs build jobs with the same [`batch_key`] as one Nix run: what makes many small builds cheap. Each build is
/// pushed as soon as Nix has built it, while the run goes on ([`push_as_built`]), and reported `Success` once
/// pushed. Each job still gets its own log, outcome and report; jobs aborted meanwhile are not reported (see
/// [`BatchHooks`]). `built` is called once Nix has ended (before the last push), with the drvs it did not
/// build, so the next batch can start building while this one pushes. Failures are reported when Nix has ended; a
/// build that failed because an input in the same run failed after the others (the server then knows which input
/// failed).
pub async fn run_batch<N: Nix>(
    nix: &N,
    dirs: &Local,
    jobs: Vec<Job>,
    max_jobs: u32,
    out: UnboundedSender<WorkerMessage>,
    hooks: &BatchHooks<'_>,
    built: impl FnOnce(Vec<String>),
) {
    let mut drvs = Vec::new();
    let mut ids = Vec::new();
    // Substituters, keys, substituter token and push target, the same for the whole batch.
    type Shared = (Vec<String>, Vec<String>, Option<String>, Option<PushTarget>);
    let mut first: Option<Shared> = None;
    // Each job's push target: its token is the job's own, and the server refuses it once that job has ended.
    let mut push_of: std::collections::HashMap<JobId, PushTarget> = Default::default();
    for job in jobs {
        let Job::Build {
            job_id,
            drv_path,
            outputs,
            substituters,
            trusted_public_keys,
            substituter_token,
            push,
            ..
        } = job
        else {
            continue;
        };
        if !(hooks.is_aborted)(job_id) {
            send(&out, WorkerMessage::JobStarted { job_id });
            send(
                &out,
                WorkerMessage::JobProgress {
                    job_id,
                    stage: Stage::Building,
                },
            );
        }
        if let Some(target) = &push {
            push_of.insert(job_id, target.clone());
        }
        if first.is_none() {
            first = Some((substituters, trusted_public_keys, substituter_token, push));
        }
        drvs.push((drv_path, outputs));
        ids.push(job_id);
    }
    let Some((substituters, trusted_public_keys, substituter_token, push)) = first else {
        return;
    };
    let lead = ids[0];
    let finish_all = |outcome: &JobOutcome| {
        for id in &ids {
            if (hooks.claim)(*id) {
                finished(&out, *id, outcome.clone());
            }
        }
    };
    let netrc = match build_netrc(dirs, lead, &substituters, substituter_token, push.as_ref()) {
        Ok(n) => n,
        Err(failed) => return finish_all(&failed),
    };
    let opts = BuildOptions {
        substituters,
        trusted_public_keys,
        netrc_file: netrc.clone(),
        gc_root: dirs.gcroots.as_ref().map(|d| d.join(format!("batch-{lead}"))),
        timeout: None,
        max_jobs: Some(max_jobs),
    };
    // The credential and the roots go when the batch ends, also when it is stopped midway.
    let _cleanup = Cleanup(netrc.clone(), opts.gc_root.clone());
    let by_drv: std::collections::HashMap<&str, Vec<JobId>> =
        drvs.iter().zip(&ids).fold(Default::default(), |mut m, ((drv, _), id)| {
            m.entry(drv.as_str()).or_insert_with(Vec::new).push(*id);
            m
        });
    let mut seq: std::collections::HashMap<JobId, u64> = Default::default();
    let on_log = |drv: &str, line: &str| {
        let text = format!("{line}\n");
        for id in by_drv.get(drv).into_iter().flatten() {
            if (hooks.is_aborted)(*id) {
                continue;
            }
            for chunk in log_chunks(&text) {
                let n = seq.entry(*id).or_default();
                send(
                    &out,
                    WorkerMessage::JobLog {
                        job_id: *id,
                        seq: *n,
                        text: chunk.to_owned(),
                    },
                );
                *n += 1;
            }
        }
    };
    // Each build is pushed as soon as Nix has built it, while the run goes on (see `push_as_built`): the
    // builds Nix says are built go to `built_tx`, and so do, once the run has ended, those it answers built.
    let (built_tx, built_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let started = std::time::Instant::now();
    let building = async {
        let results = nix
            .build_many(&drvs, &opts, on_log, |drv: &str| {
                let _ = built_tx.send(drv.to_owned());
            })
            .await;
        let built_in = started.elapsed();
        let not_built: Vec<String> = match &results {
            Ok(results) => drvs
                .iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|((d, _), _)| d.clone())
                .collect(),
            Err(_) => drvs.iter().map(|(d, _)| d.clone()).collect(),
        };
        // Failures have nothing to push: reported at once, a builder's own before those of the builds that
        // needed it (the server then knows which input failed), and before the batcher hears what was not built
        // (it answers what waits for those).
        let mut failed: Vec<(JobId, JobOutcome)> = match &results {
            Ok(results) => ids
                .iter()
                .zip(results)
                .filter_map(|(id, r)| r.as_ref().err().map(|e| (*id, build_failure(e))))
                .collect(),
            Err(e) => ids
                .iter()
                .map(|id| (*id, failure(FailureKind::Infrastructure, e)))
                .collect(),
        };
        failed.sort_by_key(|(_, o)| {
            matches!(
                o,
                JobOutcome::Failed {
                    kind: FailureKind::DependencyFailed,
                    ..
                }
            )
        });
        for (id, outcome) in failed {
            if (hooks.claim)(id) {
                finished(&out, id, outcome);
            }
        }
        built(not_built);
        // What was built and not told yet goes in the last push.
        if let Ok(results) = &results {
            for ((drv, _), r) in drvs.iter().zip(results) {
                if r.is_ok() {
                    let _ = built_tx.send(drv.clone());
                }
            }
        }
        drop(built_tx);
        built_in
    };
    let pushing = push_as_built(
        nix,
        &dirs.cache,
        &drvs,
        &ids,
        push.as_ref(),
        &push_of,
        &out,
        hooks,
        built_rx,
    );
    let (built_in, pushed) = tokio::join!(building, pushing);
    tracing::info!(
        target: "gradient::build",
        "batch of {} build(s): built in {:.2}s, pushed {} path(s) in {} push(es) taking {:.2}s, {:.2}s after Nix ended",
        ids.len(),
        built_in.as_secs_f64(),
        pushed.paths,
        pushed.pushes,
        pushed.busy.as_secs_f64(),
        started.elapsed().saturating_sub(built_in).as_secs_f64()
    );
}

/// The pushes of one Nix run's builds while it goes on start this far apart at least: each costs Nix processes,
/// requests and the server's import whatever its size, taken from the builds on a busy machine. A run of short
/// builds is very sensitive to that: on 2 cores, a 20 % load on the other core made a 100-link chain's Nix run
/// 50 % slower; 600 ms instead of 250 made `bench/ci.sh`'s chain ~0.05 s faster (3 pushes during its run
/// instead of 5), the wide and one-derivation figures unchanged. A build is reported at most this much later.
const PUSH_SPACING: Duration = Duration::from_millis(600);

/// When the next push of a run may start, given when this one started and ended: [`PUSH_SPACING`] after it
/// started, and no sooner after it ended than it took. Pushing then takes at most about half of the time while
/// Nix builds: on a busy machine, where each push (two Nix processes, two requests, the server's import) takes
/// longer, the run's Nix gets more of the machine and the builds are pushed in fewer, larger pushes.
/// The time a push spent waiting to retry after a failure does not count as taking long (the server may be back),
/// and the pause after a push is at most [`MAX_PUSH_PAUSE`]: where pushes are slow for the network rather than
/// the machine (a remote worker, large outputs), the builds' reports are not held back for longer.
fn next_push(started: tokio::time::Instant, ended: tokio::time::Instant, waited: Duration) -> tokio::time::Instant {
    let took = ended.saturating_duration_since(started).saturating_sub(waited);
    (started + PUSH_SPACING).max(ended + took.min(MAX_PUSH_PAUSE))
}

/// The longest pause [`next_push`] puts after a push.
const MAX_PUSH_PAUSE: Duration = Duration::from_secs(1);

/// What the pushes of one run did, for the log.
#[derive(Default)]
struct Pushed {
    paths: usize,
    pushes: usize,
    busy: Duration,
}

/// Pushes a run's builds as `built` names them (until it closes), those told while a push goes on together in
/// the next one, each with the token of one of its jobs (the others' may have been reported already, and the
/// server refuses a finished job's token); each job is reported `Success` once its outputs and their closure
/// are in the cache (or failed if the push failed). A push skips what the run's earlier pushes put in the cache.
/// Builds whose jobs were all aborted are not pushed.
#[allow(clippy::too_many_arguments)]
async fn push_as_built<N: Nix>(
    nix: &N,
    cache: &HttpCacheClient,
    drvs: &[(String, std::collections::BTreeMap<String, String>)],
    ids: &[JobId],
    push: Option<&PushTarget>,
    push_of: &std::collections::HashMap<JobId, PushTarget>,
    out: &UnboundedSender<WorkerMessage>,
    hooks: &BatchHooks<'_>,
    mut built: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Pushed {
    let mut pushed = Pushed::default();
    let mut in_cache: std::collections::HashSet<String> = Default::default();
    // What each output of the run may refer to, read once the first push is due (off the way of the build).
    let mut may_refer: Option<std::collections::HashMap<String, Vec<String>>> = None;
    let no_refs = std::collections::HashMap::new();
    let mut done: std::collections::HashSet<String> = Default::default();
    let mut next = tokio::time::Instant::now();
    let mut open = true;
    while open {
        // What was built since the last push, once `next_push` lets the next start (or Nix ended).
        let mut group: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                biased;
                drv = built.recv() => match drv {
                    Some(drv) => group.push(drv),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(next), if !group.is_empty() => break,
            }
        }
        let started = tokio::time::Instant::now();
        next = started + PUSH_SPACING;
        group.retain(|d| done.insert(d.clone()));
        // The group's jobs (a drv may be several jobs'), those still wanted, and the outputs to push.
        let jobs: Vec<(usize, JobId)> = drvs
            .iter()
            .zip(ids)
            .enumerate()
            .filter(|(_, ((d, _), _))| group.contains(d))
            .map(|(i, (_, id))| (i, *id))
            .collect();
        let live: Vec<JobId> = jobs
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !(hooks.is_aborted)(*id))
            .collect();
        if live.is_empty() {
            continue;
        }
        let target = live.iter().find_map(|id| push_of.get(id)).or(push);
        let outcome = match target {
            None => JobOutcome::Success,
            Some(target) => {
                let paths: Vec<String> = jobs.iter().flat_map(|(i, _)| drvs[*i].1.values().cloned()).collect();
                for id in &live {
                    send(
                        out,
                        WorkerMessage::JobProgress {
                            job_id: *id,
                            stage: Stage::Pushing,
                        },
                    );
                }
                let pushing = std::time::Instant::now();
                let mut waited = Duration::ZERO;
                if may_refer.is_none() {
                    may_refer = Some(may_refer_of(nix, drvs).await);
                }
                let may_refer = may_refer.as_ref().unwrap_or(&no_refs);
                let result = gradient_domain::push::push_more_retrying(
                    nix,
                    cache,
                    target,
                    &paths,
                    &mut in_cache,
                    may_refer,
                    |delay, e| {
                        waited += delay;
                        tracing::warn!(
                            target: "gradient::build",
                            "{e}; trying again in {}s",
                            delay.as_secs()
                        );
                        tokio::time::sleep(delay)
                    },
                )
                .await;
                pushed.busy += pushing.elapsed();
                next = next_push(started, tokio::time::Instant::now(), waited);
                pushed.pushes += 1;
                pushed.paths += paths.len();
                tracing::debug!(
                    target: "gradient::build",
                    "pushed {} build(s) in {:.3}s",
                    group.len(),
                    pushing.elapsed().as_secs_f64()
                );
                match result {
                    Ok(_) => JobOutcome::Success,
                    Err(e) => {
                        tracing::warn!(target: "gradient::build", "a push of the batch failed: {e}");
                        failure(FailureKind::Infrastructure, &e)
                    }
                }
            }
        };
        for id in live {
            if (hooks.claim)(id) {
                finished(out, id, outcome.clone());
            }
        }
    }
    pushed
}

/// For each output of the run's single-output derivations, the store paths it may refer to besides itself: its
/// derivation's build inputs (see `Nix::build_inputs`). A multi-output derivation's outputs may refer to each other,
/// in an order only Nix knows: they are left out (their pushes ask Nix for the closure), as are derivations whose
/// inputs cannot be told.
async fn may_refer_of<N: Nix>(
    nix: &N,
    drvs: &[(String, std::collections::BTreeMap<String, String>)],
) -> std::collections::HashMap<String, Vec<String>> {
    let single: Vec<String> = drvs
        .iter()
        .filter(|(_, outputs)| outputs.len() == 1)
        .map(|(d, _)| d.clone())
        .collect();
    let inputs = nix.build_inputs(&single).await.unwrap_or_default();
    drvs.iter()
        .filter(|(_, outputs)| outputs.len() == 1)
        .filter_map(|(drv, outputs)| {
            let output = outputs.values().next()?;
            Some((output.clone(), inputs.get(drv)?.clone()))
        })
        .collect()
}

/// Removes a batch's netrc file and GC roots directory when dropped.
struct Cleanup(Option<PathBuf>, Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(netrc) = &self.0 {
            let _ = std::fs::remove_file(netrc);
        }
        if let Some(roots) = &self.1 {
            let _ = std::fs::remove_dir_all(roots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_spaced_by_the_spacing_or_by_as_long_as_the_last_one_took() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        // A quick push: the spacing.
        assert_eq!(next_push(t0, t0 + ms(40), ms(0)), t0 + PUSH_SPACING);
        // A push taking 400 ms (a busy machine): as long again after it ended.
        assert_eq!(next_push(t0, t0 + ms(400), ms(0)), t0 + ms(800));
        // A push that waited 20 s to retry and then took 300 ms: the wait does not count.
        assert_eq!(next_push(t0, t0 + ms(20_300), ms(20_000)), t0 + ms(20_600));
        // A push taking 5 s (a slow network): at most a second's pause.
        assert_eq!(next_push(t0, t0 + ms(5_000), ms(0)), t0 + ms(6_000));
    }
}
