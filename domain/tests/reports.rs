#![allow(clippy::unwrap_used)]
//! Reports a worker sent together (`docs/protocol.md`, `reports`), recorded together over the in-memory storage:
//! the same outcome as one by one, a repeated batch changes nothing, a job's reports apply in their order, a
//! report refused for one job does not hold the others, and a batch the storage drops half-way is recorded whole
//! when it comes again.

mod common;

use common::at_once;

use gradient_domain::model::{EvaluationTrigger, JobId, JobState, Org, Project};
use gradient_domain::ports::Fleet;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::storage::{Evaluations, Orgs, Queue};
use gradient_domain::proto::{EvaluatedDerivation, FailureKind, Job, JobOutcome, Stage, WorkerMessage};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{Dispatched, JobReport, ServiceError, Settings};
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use std::collections::BTreeMap;

type App = common::TestApp<SystemClock>;

async fn setup() -> (App, Org, Project) {
    let (app, _, org, project) = setup_with_caller().await;
    (app, org, project)
}

/// [`setup`], with the member who made the organization (to abort and restart its evaluations).
async fn setup_with_caller() -> (App, gradient_domain::service::Caller, Org, Project) {
    let app = common::app(SystemClock, Settings::default());
    let caller = common::signed_up(&app, "u").await;
    let org = common::org(&app, &caller, "o").await;
    let project = common::project(&app, &caller, "o", "p", "https://example.com/p.git").await;
    (app, caller, org, project)
}

fn worker(n: u128, org: &Org) -> WorkerInfo {
    common::worker(n, org, 64)
}

fn derivation(name: &str, inputs: &[&str]) -> EvaluatedDerivation {
    let path = |n: &str| format!("/nix/store/{}-{n}", n.repeat(32).get(..32).unwrap());
    EvaluatedDerivation {
        attribute: Some(format!("packages.x86_64-linux.{name}")),
        drv_path: format!("{}.drv", path(name)),
        outputs: BTreeMap::from([("out".into(), path(name))]),
        system: "x86_64-linux".into(),
        required_features: vec![],
        input_drvs: inputs.iter().map(|i| format!("{}.drv", path(i))).collect(),
    }
}

async fn dispatch(app: &App, w: &WorkerInfo) -> Vec<Dispatched> {
    for c in app.fleet.connected() {
        app.fleet.disconnect(c.id);
    }
    app.fleet.connect_proved(w.clone());
    app.dispatch().await.unwrap()
}

fn report(message: WorkerMessage) -> JobReport {
    JobReport { message, log: None }
}

fn finished(job_id: JobId, outcome: JobOutcome) -> JobReport {
    report(WorkerMessage::JobFinished { job_id, outcome })
}

fn pushing(job_id: JobId) -> JobReport {
    report(WorkerMessage::JobProgress {
        job_id,
        stage: Stage::Pushing,
    })
}

/// The build jobs a round sent, by derivation name.
fn builds(sent: &[Dispatched]) -> BTreeMap<String, JobId> {
    sent.iter()
        .filter_map(|d| match &d.job {
            Job::Build { job_id, drv_path, .. } => {
                let name = drv_path.rsplit_once('-').unwrap().1.trim_end_matches(".drv").to_owned();
                Some((name, *job_id))
            }
            Job::Evaluate { .. } => None,
        })
        .collect()
}

async fn build_status(app: &App, org: &Org, name: &str) -> BuildStatus {
    let drv = derivation(name, &[]).drv_path;
    app.storage.build(org.id, &drv).await.unwrap().unwrap().status
}

async fn evaluation_status(app: &App, id: gradient_domain::EvaluationId) -> EvaluationStatus {
    app.storage.evaluation(id).await.unwrap().unwrap().status
}

fn verdicts(results: &[Result<(), ServiceError>]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok",
            Err(ServiceError::Forbidden(_)) => "refused",
            Err(ServiceError::Unavailable(_)) => "unavailable",
            Err(_) => "other",
        })
        .collect()
}

/// An evaluation of `derivations` reported, pushed and ended in one batch by `w`; its builds handed out.
async fn evaluated_in_one_batch(
    app: &App,
    org: &Org,
    project: &Project,
    w: &WorkerInfo,
    derivations: Vec<EvaluatedDerivation>,
) -> (gradient_domain::EvaluationId, BTreeMap<String, JobId>) {
    let e = planned_in_one_batch(app, org, project, w, derivations).await;
    (e, builds(&dispatch(app, w).await))
}

/// An evaluation of `derivations` reported, pushed and ended in one batch by `w`; its builds queued.
async fn planned_in_one_batch(
    app: &App,
    org: &Org,
    project: &Project,
    w: &WorkerInfo,
    derivations: Vec<EvaluatedDerivation>,
) -> gradient_domain::EvaluationId {
    let e = app
        .queue_evaluation(org.id, project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(app, w).await[0].job.id();
    // The evaluation's results, its push and its end in one batch: applied in their order, so the end finds
    // every derivation reported and plans their builds.
    let results = app
        .record_reports(
            w.id,
            &w.orgs,
            vec![
                report(WorkerMessage::EvalResult {
                    job_id: job,
                    derivations,
                    errors: vec![],
                }),
                pushing(job),
                finished(job, JobOutcome::Success),
            ],
        )
        .await;
    assert_eq!(verdicts(&results), ["ok", "ok", "ok"]);
    assert_eq!(evaluation_status(app, e.id).await, EvaluationStatus::Building);
    assert!(matches!(
        app.storage.job(job).await.unwrap().unwrap().state,
        JobState::Done
    ));
    e.id
}

#[tokio::test]
async fn a_batch_of_ends_completes_the_evaluation_and_again_changes_nothing() {
    let (app, org, project) = setup().await;
    let w = worker(1, &org);
    let names = ["a", "b", "c", "d", "e"];
    let drvs = names.iter().map(|n| derivation(n, &[])).collect();
    let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
    assert_eq!(jobs.len(), 5, "{jobs:?}");

    // Each build's push and its end in the same batch, as a Nix run's tail arrives.
    let batch = || {
        let mut batch: Vec<JobReport> = jobs.values().map(|j| pushing(*j)).collect();
        batch.extend(jobs.values().map(|j| finished(*j, JobOutcome::Success)));
        batch
    };
    app.fleet.woken();
    let results = app.record_reports(w.id, &w.orgs, batch()).await;
    assert_eq!(verdicts(&results), ["ok"; 10]);
    assert!(app.fleet.woken(), "the freed slots are worth a dispatch round");
    for n in names {
        assert_eq!(build_status(&app, &org, n).await, BuildStatus::Completed, "{n}");
    }
    assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Completed);
    for j in jobs.values() {
        assert!(matches!(
            app.storage.job(*j).await.unwrap().unwrap().state,
            JobState::Done
        ));
    }

    // The same batch again (its `ack` was lost with the link): every job has ended, nothing changes. The
    // progress reports are answered by the ends they come with.
    let before = app.storage.evaluation(e).await.unwrap().unwrap();
    let results = app.record_reports(w.id, &w.orgs, batch()).await;
    assert_eq!(
        verdicts(&results),
        [["ok"; 5].as_slice(), ["refused"; 5].as_slice()].concat()
    );
    assert_eq!(app.storage.evaluation(e).await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn a_report_refused_for_one_job_does_not_hold_the_others_and_a_failure_fails_its_dependents() {
    let (app, org, project) = setup().await;
    let w = worker(1, &org);
    let other = worker(2, &org);
    // x and y build; z needs x and goes to the same worker with it (a chain handed out at once).
    let drvs = vec![derivation("x", &[]), derivation("y", &[]), derivation("z", &["x"])];
    let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
    let (x, y, z) = (jobs["x"], jobs["y"], jobs["z"]);
    let failed = JobOutcome::Failed {
        kind: FailureKind::BuilderFailed,
        message: "exit 1".into(),
    };
    // Worker 2 claims x's end among its own reports: refused, and its other report (of a job it never had)
    // too; worker 1's batch then has x failed, an unknown job in the middle, z not built for want of x, and y
    // done.
    let results = app
        .record_reports(other.id, &other.orgs, vec![finished(x, JobOutcome::Success)])
        .await;
    assert_eq!(verdicts(&results), ["refused"]);
    let results = app
        .record_reports(
            w.id,
            &w.orgs,
            vec![
                finished(x, failed),
                finished(JobId::new(), JobOutcome::Success),
                finished(
                    z,
                    JobOutcome::Failed {
                        kind: FailureKind::DependencyFailed,
                        message: "dependency failed".into(),
                    },
                ),
                finished(y, JobOutcome::Success),
            ],
        )
        .await;
    assert_eq!(verdicts(&results), ["ok", "refused", "ok", "ok"]);
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Failed);
    assert_eq!(build_status(&app, &org, "y").await, BuildStatus::Completed);
    assert_eq!(build_status(&app, &org, "z").await, BuildStatus::DependencyFailed);
    assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Failed);
}

#[tokio::test]
async fn a_batch_the_storage_drops_half_way_is_recorded_whole_when_it_comes_again() {
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut partly = 0;
    // The database goes away after each number of operations in turn, until the batch fits before it.
    for ops in 0.. {
        let (app, org, project) = setup().await;
        let w = worker(1, &org);
        let drvs = names.iter().map(|n| derivation(n, &[])).collect();
        let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
        // c fails: its build is saved at once; the successes are saved together.
        let outcome = |name: &str| match name {
            "c" => JobOutcome::Failed {
                kind: FailureKind::BuilderFailed,
                message: "exit 1".into(),
            },
            _ => JobOutcome::Success,
        };
        let batch = || -> Vec<JobReport> { jobs.iter().map(|(n, j)| finished(*j, outcome(n))).collect() };
        app.storage.go_down_after(Some(ops));
        let results = app.record_reports(w.id, &w.orgs, batch()).await;
        app.storage.go_down_after(None);
        // What was recorded is answered so; from the first report not recorded on, every one is answered
        // `Unavailable` (sent again, in order), and its job has not ended: a job ends last of its effects.
        let v = verdicts(&results);
        let Some(first) = v.iter().position(|r| *r == "unavailable") else {
            break;
        };
        assert!(v[first..].iter().all(|r| *r == "unavailable"), "{ops}: {v:?}");
        assert!(v[..first].iter().all(|r| *r == "ok"), "{ops}: {v:?}");
        // Effects written, jobs not ended: what comes again must apply whole.
        let mut written = false;
        for n in names {
            written |= build_status(&app, &org, n).await != BuildStatus::Building;
        }
        if written {
            partly += 1;
        }
        for (j, verdict) in jobs.values().zip(&v) {
            let state = app.storage.job(*j).await.unwrap().unwrap().state;
            assert_eq!(
                matches!(state, JobState::Assigned { .. }),
                *verdict == "unavailable",
                "{ops}: {v:?}"
            );
        }
        // The rest comes again (the link sends again what was not acknowledged): everything is recorded once.
        let again: Vec<JobReport> = batch().into_iter().skip(first).collect();
        let results = app.record_reports(w.id, &w.orgs, again).await;
        assert!(verdicts(&results).iter().all(|r| *r == "ok"), "{ops}: {results:?}");
        for n in names {
            let want = if n == "c" {
                BuildStatus::Failed
            } else {
                BuildStatus::Completed
            };
            assert_eq!(build_status(&app, &org, n).await, want, "{ops}: {n}");
        }
        assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Failed, "{ops}");
        for j in jobs.values() {
            assert!(!matches!(
                app.storage.job(*j).await.unwrap().unwrap().state,
                JobState::Assigned { .. }
            ));
        }
        assert!(ops < 1000, "the batch never fits");
    }
    assert!(
        partly > 0,
        "some cut wrote part of the batch's effects before the storage went away"
    );
}

#[tokio::test]
async fn an_evaluations_progress_followed_by_its_failure_in_one_batch_plans_nothing() {
    let (app, org, project) = setup().await;
    let w = worker(1, &org);
    let e = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(&app, &w).await[0].job.id();
    let results = app
        .record_reports(
            w.id,
            &w.orgs,
            vec![
                report(WorkerMessage::EvalResult {
                    job_id: job,
                    derivations: vec![derivation("x", &[])],
                    errors: vec![],
                }),
                pushing(job),
                finished(
                    job,
                    JobOutcome::Failed {
                        kind: FailureKind::Infrastructure,
                        message: "the push of the .drv files failed".into(),
                    },
                ),
            ],
        )
        .await;
    assert_eq!(verdicts(&results), ["ok", "ok", "ok"]);
    assert_eq!(evaluation_status(&app, e.id).await, EvaluationStatus::Failed);
    // Its progress was answered by its end: no build was planned for the `.drv` files it could not push.
    assert!(
        app.storage
            .build(org.id, &derivation("x", &[]).drv_path)
            .await
            .unwrap()
            .is_none()
    );
    assert!(dispatch(&app, &w).await.is_empty());
}

#[tokio::test]
async fn a_build_ended_in_a_batch_before_the_evaluation_that_needs_it_is_recorded_completes_that_evaluation_too() {
    let app = common::app(SystemClock, Settings::default());
    let caller = common::signed_up(&app, "u").await;
    let org = common::org(&app, &caller, "o").await;
    let p0 = common::project(&app, &caller, "o", "p", "https://example.com/p.git").await;
    let p1 = common::project(&app, &caller, "o", "q", "https://example.com/q.git").await;
    let w = worker(1, &org);
    let (e0, jobs) = evaluated_in_one_batch(&app, &org, &p0, &w, vec![derivation("a", &[])]).await;
    let a = jobs["a"];
    let e1 = app
        .queue_evaluation(org.id, &p1, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let sent = dispatch(&app, &w).await;
    let eval_job = sent
        .iter()
        .find(|d| matches!(d.job, Job::Evaluate { .. }))
        .unwrap()
        .job
        .id();
    let results = app
        .record_reports(
            w.id,
            &w.orgs,
            vec![
                finished(a, JobOutcome::Success),
                report(WorkerMessage::EvalResult {
                    job_id: eval_job,
                    derivations: vec![derivation("a", &[])],
                    errors: vec![],
                }),
                pushing(eval_job),
                finished(eval_job, JobOutcome::Success),
            ],
        )
        .await;
    assert_eq!(verdicts(&results), ["ok", "ok", "ok", "ok"]);
    assert_eq!(build_status(&app, &org, "a").await, BuildStatus::Completed);
    assert_eq!(evaluation_status(&app, e0).await, EvaluationStatus::Completed);
    assert_eq!(
        evaluation_status(&app, e1.id).await,
        EvaluationStatus::Completed,
        "the later evaluation, recorded after the build ended in the same batch"
    );
}

#[tokio::test]
async fn an_abort_committed_while_ends_are_recorded_wins_and_nothing_is_lost() {
    let names = ["a", "b", "c"];
    for batched in [true, false] {
        let mut aborted_first = 0;
        // The abort commits before each storage operation of the reports in turn, until they fit before it.
        for ops in 0.. {
            let (app, caller, org, project) = setup_with_caller().await;
            let w = worker(1, &org);
            let drvs = names.iter().map(|n| derivation(n, &[])).collect();
            let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
            let aborted = std::sync::Arc::new(std::sync::Mutex::new(None));
            let (other, seen) = (app.app.clone(), aborted.clone());
            app.storage.interleave(ops, move || {
                *seen.lock().unwrap() = Some(at_once(other.abort_evaluation(&caller, e)).is_ok());
            });
            let results = if batched {
                let batch = jobs.values().map(|j| finished(*j, JobOutcome::Success)).collect();
                app.record_reports(w.id, &w.orgs, batch).await
            } else {
                let mut results = Vec::new();
                for j in jobs.values() {
                    results.push(
                        app.record_job_finished(*j, w.id, &w.orgs, JobOutcome::Success, None)
                            .await,
                    );
                }
                results
            };
            let Some(abort_won) = *aborted.lock().unwrap() else {
                break;
            };
            // The jobs the abort told the worker to stop: those whose build it found unfinished and aborted.
            let told: Vec<JobId> = app
                .fleet
                .delivered(w.id)
                .into_iter()
                .filter_map(|d| match d {
                    gradient_ports::fleet::Delivered::Abort(job) => Some(job),
                    _ => None,
                })
                .collect();
            // Every report is recorded (none to send again), every job ended, every log kept.
            assert_eq!(verdicts(&results), ["ok"; 3], "{batched} {ops}");
            let mut some_aborted = false;
            for n in names {
                let b = app
                    .storage
                    .build(org.id, &derivation(n, &[]).drv_path)
                    .await
                    .unwrap()
                    .unwrap();
                // An abort that found the build unfinished wins: its worker's late success does not undo it.
                assert_eq!(
                    b.status == BuildStatus::Aborted,
                    told.contains(&jobs[n]),
                    "{batched} {ops} {n}: {:?}",
                    b.transitions
                );
                let want: &[BuildStatus] = if abort_won {
                    &[BuildStatus::Aborted, BuildStatus::Completed]
                } else {
                    &[BuildStatus::Completed]
                };
                assert!(want.contains(&b.status), "{batched} {ops} {n}: {:?}", b.status);
                some_aborted |= b.status == BuildStatus::Aborted;
                assert!(
                    app.storage.build_log(b.id).await.unwrap().is_some(),
                    "{batched} {ops} {n}"
                );
            }
            for j in jobs.values() {
                assert_eq!(
                    app.storage.job(*j).await.unwrap().unwrap().state,
                    JobState::Done,
                    "{ops}"
                );
            }
            let status = evaluation_status(&app, e).await;
            assert_eq!(
                status,
                if abort_won {
                    EvaluationStatus::Aborted
                } else {
                    EvaluationStatus::Completed
                },
                "{batched} {ops} {abort_won}"
            );
            if some_aborted {
                aborted_first += 1;
            }
            assert!(ops < 1000, "the reports never fit");
        }
        assert!(
            aborted_first > 0,
            "{batched}: some abort came before a build's end was written"
        );
    }
}

#[tokio::test]
async fn a_batch_whose_organization_of_one_build_is_deleted_meanwhile_records_the_others() {
    let names = ["a", "b", "c"];
    // The organization "gone" is deleted before each storage operation of the batch in turn: among them,
    // after its build was read and before the batch's builds are written together, which then finds that
    // build's row gone (NotFound) and writes each on its own.
    for ops in 0.. {
        let app = common::app(SystemClock, Settings::default());
        let caller = common::signed_up(&app, "u").await;
        let kept = common::org(&app, &caller, "kept").await;
        let gone = common::org(&app, &caller, "gone").await;
        let p_kept = common::project(&app, &caller, "kept", "p", "https://example.com/p.git").await;
        let p_gone = common::project(&app, &caller, "gone", "p", "https://example.com/p.git").await;
        // One worker proved for both organizations; "gone" has one build, "kept" three.
        let mut w = worker(1, &kept);
        w.orgs.insert(gone.id);
        let drvs = names.iter().map(|n| derivation(n, &[])).collect();
        let (e, jobs) = evaluated_in_one_batch(&app, &kept, &p_kept, &w, drvs).await;
        let (_, lost) = evaluated_in_one_batch(&app, &gone, &p_gone, &w, vec![derivation("x", &[])]).await;
        let deleted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (storage, seen, id) = (app.storage.clone(), deleted.clone(), gone.id);
        app.storage.interleave(ops, move || {
            assert!(at_once(storage.delete_org(id)).unwrap());
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // The lost organization's build first: read while it exists, written with the others after.
        let mut batch = vec![finished(lost["x"], JobOutcome::Success)];
        batch.extend(jobs.values().map(|j| finished(*j, JobOutcome::Success)));
        let results = app.record_reports(w.id, &w.orgs, batch).await;
        if !deleted.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        // "kept"'s builds are recorded whatever happened to "gone" meanwhile.
        assert_eq!(verdicts(&results)[1..], ["ok"; 3], "{ops}: {results:?}");
        for n in names {
            assert_eq!(build_status(&app, &kept, n).await, BuildStatus::Completed, "{ops} {n}");
        }
        assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Completed, "{ops}");
        assert!(ops < 1000, "the batch never fits");
    }
}

#[tokio::test]
async fn an_abort_of_an_evaluation_that_moves_on_meanwhile_still_aborts_it() {
    // The evaluation is dispatched (Queued -> Fetching) before each storage operation of the abort in turn.
    let mut moved_during = 0;
    for ops in 0.. {
        let app = common::app(SystemClock, Settings::default());
        let caller = common::signed_up(&app, "u").await;
        common::org(&app, &caller, "o").await;
        let project = common::project(&app, &caller, "o", "p", "https://example.com/p.git").await;
        let e = app
            .queue_evaluation(project.org_id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
            .await
            .unwrap();
        let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (storage, seen) = (app.storage.clone(), moved.clone());
        app.storage.interleave(ops, move || {
            let mut x = at_once(storage.evaluation(e.id)).unwrap().unwrap();
            if x.move_to(EvaluationStatus::Fetching, chrono::Utc::now()) {
                at_once(storage.update_evaluation(&x)).unwrap();
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let answer = app.abort_evaluation(&caller, e.id).await;
        let stored = app.storage.evaluation(e.id).await.unwrap().unwrap().status;
        if !moved.load(std::sync::atomic::Ordering::SeqCst) {
            assert_eq!(answer.unwrap().status, EvaluationStatus::Aborted);
            break;
        }
        moved_during += 1;
        assert_eq!(
            answer.map(|x| x.status),
            Ok(EvaluationStatus::Aborted),
            "moved on before operation {ops}"
        );
        assert_eq!(stored, EvaluationStatus::Aborted, "moved on before operation {ops}");
    }
    assert!(
        moved_during > 3,
        "the evaluation moved on during the abort {moved_during} times"
    );
}

#[tokio::test]
async fn an_abort_committed_while_attribute_errors_are_recorded_stays() {
    // The evaluation is aborted before each storage operation of recording an evaluation result with errors.
    let mut aborted_during = 0;
    for ops in 0.. {
        let (app, caller, org, project) = setup_with_caller().await;
        let w = worker(1, &org);
        let e = app
            .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
            .await
            .unwrap();
        let job = dispatch(&app, &w).await[0].job.id();
        let aborted = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (other, seen, who) = (app.app.clone(), aborted.clone(), caller.clone());
        app.storage.interleave(ops, move || {
            *seen.lock().unwrap() = Some(at_once(other.abort_evaluation(&who, e.id)).is_ok());
        });
        let error = gradient_domain::proto::AttributeError {
            attribute: "packages.x86_64-linux.broken".to_owned(),
            message: "error: broken".to_owned(),
        };
        let recorded = app
            .record_eval_result(job, w.id, &w.orgs, vec![derivation("a", &[])], vec![error])
            .await;
        let stored = app.storage.evaluation(e.id).await.unwrap().unwrap();
        let Some(abort_won) = *aborted.lock().unwrap() else {
            recorded.unwrap();
            break;
        };
        aborted_during += 1;
        assert!(abort_won, "before operation {ops}");
        assert_eq!(
            stored.status,
            EvaluationStatus::Aborted,
            "before operation {ops}: {recorded:?}"
        );
    }
    assert!(
        aborted_during > 3,
        "aborted during the recording {aborted_during} times"
    );
}

/// Build moves lost to a move committed meanwhile, as the observer hears them: build, expected, actual, to.
#[derive(Default)]
struct LostMoves(std::sync::Mutex<Vec<LostMove>>);

type LostMove = (gradient_domain::BuildId, BuildStatus, Option<BuildStatus>, BuildStatus);

impl gradient_domain::ports::Observer for LostMoves {
    fn evaluation_ended(&self, _: EvaluationStatus, _: std::time::Duration) {}
    fn build_ended(&self, _: BuildStatus, _: Option<std::time::Duration>) {}
    fn build_move_lost(
        &self,
        build: gradient_domain::BuildId,
        expected: BuildStatus,
        actual: Option<BuildStatus>,
        to: BuildStatus,
    ) {
        self.0.lock().unwrap().push((build, expected, actual, to));
    }
}

#[tokio::test]
async fn a_build_aborted_while_a_dispatch_round_starts_it_is_not_handed_out_to_run() {
    let names = ["a", "b", "c"];
    let mut aborted_during = 0;
    // The evaluation is aborted before each storage operation of a dispatch round in turn: among them, after
    // the round read the queued jobs and before it moved their builds to Building.
    for ops in 0.. {
        let (mut app, caller, org, project) = setup_with_caller().await;
        let lost = std::sync::Arc::new(LostMoves::default());
        app.app = app.app.clone().observed_by(lost.clone());
        let w = worker(1, &org);
        let drvs = names.iter().map(|n| derivation(n, &[])).collect();
        let e = planned_in_one_batch(&app, &org, &project, &w, drvs).await;
        app.fleet.delivered(w.id);
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen) = (app.app.clone(), aborted.clone());
        app.storage.interleave(ops, move || {
            at_once(other.abort_evaluation(&caller, e)).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        app.fleet.connect_proved(w.clone());
        let sent = app.dispatch().await.unwrap();
        if !aborted.load(std::sync::atomic::Ordering::SeqCst) {
            assert_eq!(builds(&sent).len(), names.len());
            break;
        }
        aborted_during += 1;
        let delivered = app.fleet.delivered(w.id);
        // A build job the worker was given is one it is told to stop after: none runs for an aborted build
        // with the token the abort revoked.
        for (i, d) in delivered.iter().enumerate() {
            if let gradient_ports::fleet::Delivered::Assign(job) = d {
                assert!(
                    delivered[i + 1..].contains(&gradient_ports::fleet::Delivered::Abort(job.id())),
                    "before operation {ops}: {:?} handed out after its build was aborted: {delivered:?}",
                    job.id()
                );
            }
        }
        for n in names {
            assert_eq!(
                build_status(&app, &org, n).await,
                BuildStatus::Aborted,
                "before operation {ops}: {n}"
            );
        }
        // No job left out: each ended, or assigned to the worker that was told to stop it.
        for j in app.storage.jobs_assigned_to(w.id).await.unwrap() {
            assert!(
                delivered.contains(&gradient_ports::fleet::Delivered::Abort(j.id)),
                "before operation {ops}: {j:?}"
            );
        }
        assert!(app.storage.queued_jobs(100).await.unwrap().is_empty(), "{ops}");
        assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Aborted);
        // A round that lost its moves says so, with what it found.
        for (_, expected, actual, to) in lost.0.lock().unwrap().iter() {
            assert_eq!(
                (*expected, *actual, *to),
                (BuildStatus::Queued, Some(BuildStatus::Aborted), BuildStatus::Building),
                "{ops}"
            );
        }
    }
    assert!(aborted_during > 3, "aborted during the round {aborted_during} times");
}

#[tokio::test]
async fn a_lost_worker_s_build_aborted_while_it_is_requeued_is_not_queued_again() {
    // The evaluation is aborted (by a member, while another worker of the organization is connected) before
    // each storage operation of taking back the lost worker's job in turn.
    let (mut aborted_during, mut lost_during) = (0, 0);
    for ops in 0.. {
        let (mut app, caller, org, project) = setup_with_caller().await;
        let lost = std::sync::Arc::new(LostMoves::default());
        app.app = app.app.clone().observed_by(lost.clone());
        let (w, other_worker) = (worker(1, &org), worker(2, &org));
        let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, vec![derivation("a", &[])]).await;
        assert_eq!(build_status(&app, &org, "a").await, BuildStatus::Building);
        app.fleet.disconnect(w.id);
        app.fleet.connect_proved(other_worker.clone());
        let aborted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen) = (app.app.clone(), aborted.clone());
        app.storage.interleave(ops, move || {
            at_once(other.abort_evaluation(&caller, e)).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        app.worker_lost(w.id).await.unwrap();
        if !aborted.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        aborted_during += 1;
        assert_eq!(build_status(&app, &org, "a").await, BuildStatus::Aborted, "{ops}");
        let requeue_lost = lost.0.lock().unwrap().iter().any(|(_, from, now, to)| {
            (*from, *now, *to) == (BuildStatus::Building, Some(BuildStatus::Aborted), BuildStatus::Queued)
        });
        if requeue_lost {
            lost_during += 1;
            // The abort landed between the requeue's read of the build and its write: the job is dropped then.
            assert!(
                !app.storage.job(jobs["a"]).await.unwrap().unwrap().state.is_active(),
                "before operation {ops}: a lost move does not requeue the aborted build's job"
            );
        }
        // Its job is not run again: dropped by the requeue (or, when the abort came after the requeue had moved
        // the build back to Queued, by the next round, which finds the build aborted).
        assert!(
            builds(&dispatch(&app, &other_worker).await).is_empty(),
            "before operation {ops}: nothing to build"
        );
        assert!(
            !app.storage.job(jobs["a"]).await.unwrap().unwrap().state.is_active(),
            "before operation {ops}: the aborted build's job ended"
        );
    }
    assert!(aborted_during > 3, "aborted during the requeue {aborted_during} times");
    assert!(lost_during > 0, "the requeue's move never lost to the abort");
}

#[tokio::test]
async fn a_late_report_of_a_run_aborted_then_restarted_changes_nothing_and_the_restart_builds() {
    let failed = JobOutcome::Failed {
        kind: FailureKind::BuilderFailed,
        message: "exit 1".into(),
    };
    for late in [failed, JobOutcome::Aborted, JobOutcome::Success] {
        let (mut app, caller, org, project) = setup_with_caller().await;
        let lost = std::sync::Arc::new(LostMoves::default());
        app.app = app.app.clone().observed_by(lost.clone());
        let w = worker(1, &org);
        // y takes x's output: x is handed out first.
        let drvs = vec![derivation("x", &[]), derivation("y", &["x"])];
        let (e, first) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            ["x", "y"],
            "a chain, handed out together"
        );
        // Aborted while x and y build on w (told to stop them), then restarted before w answers.
        app.abort_evaluation(&caller, e).await.unwrap();
        app.restart_evaluation(&caller, e).await.unwrap();
        assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
        let x_id = app
            .storage
            .build(org.id, &derivation("x", &[]).drv_path)
            .await
            .unwrap()
            .unwrap()
            .id;
        // The old run's answer comes late: it belongs to a run that is over, and decides nothing.
        app.record_job_finished(first["x"], w.id, &w.orgs, late.clone(), None)
            .await
            .unwrap();
        assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued, "{late:?}");
        assert_eq!(
            build_status(&app, &org, "y").await,
            BuildStatus::Queued,
            "{late:?}: not failed by the old run"
        );
        assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Building);
        app.record_job_finished(first["y"], w.id, &w.orgs, JobOutcome::Aborted, None)
            .await
            .unwrap();
        assert_eq!(build_status(&app, &org, "y").await, BuildStatus::Queued, "{late:?}");
        assert!(
            lost.0.lock().unwrap().contains(&(
                x_id,
                BuildStatus::Building,
                Some(BuildStatus::Queued),
                match late {
                    JobOutcome::Success => BuildStatus::Completed,
                    JobOutcome::Aborted => BuildStatus::Aborted,
                    JobOutcome::Failed { .. } => BuildStatus::Failed,
                }
            )),
            "{late:?}: the observer hears the lost move"
        );
        // The restart goes on: x and y get runs of their own, and the evaluation completes.
        let again = builds(&dispatch(&app, &w).await);
        assert_eq!(again.keys().collect::<Vec<_>>(), ["x", "y"], "{late:?}");
        assert_ne!(again["x"], first["x"], "{late:?}: a new job");
        assert_ne!(again["y"], first["y"], "{late:?}: a new job");
        assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Building);
        for n in ["x", "y"] {
            app.record_job_finished(again[n], w.id, &w.orgs, JobOutcome::Success, None)
                .await
                .unwrap();
        }
        assert_eq!(
            evaluation_status(&app, e).await,
            EvaluationStatus::Completed,
            "{late:?}"
        );
    }
}

#[tokio::test]
async fn a_report_of_a_run_taken_back_and_handed_out_again_meanwhile_changes_nothing() {
    for batched in [true, false] {
        let mut handed_again = 0;
        // While w1's success is recorded, before each storage operation in turn, w1 is found lost and its job
        // goes to w2: the same job, another run.
        for ops in 0.. {
            let (app, _, org, project) = setup_with_caller().await;
            let (w1, w2) = (worker(1, &org), worker(2, &org));
            let (_, jobs) = evaluated_in_one_batch(&app, &org, &project, &w1, vec![derivation("a", &[])]).await;
            app.fleet.disconnect(w1.id);
            app.fleet.connect_proved(w2.clone());
            let again = std::sync::Arc::new(std::sync::Mutex::new(None));
            let (other, seen, lost) = (app.app.clone(), again.clone(), w1.id);
            app.storage.interleave(ops, move || {
                at_once(other.worker_lost(lost)).unwrap();
                *seen.lock().unwrap() = Some(builds(&at_once(other.dispatch()).unwrap()));
            });
            let result = if batched {
                let batch = vec![finished(jobs["a"], JobOutcome::Success)];
                app.record_reports(w1.id, &w1.orgs, batch).await.remove(0)
            } else {
                app.record_job_finished(jobs["a"], w1.id, &w1.orgs, JobOutcome::Success, None)
                    .await
            };
            let Some(sent) = again.lock().unwrap().take() else {
                result.unwrap();
                break;
            };
            let state = app.storage.job(jobs["a"]).await.unwrap().unwrap().state;
            if sent.get("a") == Some(&jobs["a"]) {
                handed_again += 1;
                // w2 builds it now: w1's late word is about a run that is over.
                assert!(
                    matches!(result, Err(ServiceError::Forbidden(_))),
                    "{batched} {ops}: {result:?}"
                );
                assert_eq!(
                    build_status(&app, &org, "a").await,
                    BuildStatus::Building,
                    "{batched} before operation {ops}"
                );
                assert!(
                    matches!(state, JobState::Assigned { worker, .. } if worker == w2.id),
                    "{batched} {ops}: {state:?}"
                );
            } else {
                // w1's success was written first: the build is done and its job is not run again.
                assert_eq!(
                    build_status(&app, &org, "a").await,
                    BuildStatus::Completed,
                    "{batched} {ops}"
                );
                assert!(!state.is_active(), "{batched} {ops}: {state:?}");
            }
            assert!(ops < 1000);
        }
        assert!(handed_again > 1, "{batched}: handed out again {handed_again} times");
    }
}

// ---- races between a report, a restart, an abort and a dispatch round ----

#[tokio::test]
async fn a_restart_landing_while_an_aborted_runs_reply_is_recorded_builds_again() {
    let mut failures = Vec::new();
    for ops in 0..40u64 {
        let (app, caller, org, project) = setup_with_caller().await;
        let w = worker(1, &org);
        let drvs = vec![derivation("x", &[]), derivation("y", &["x"])];
        let (e, first) = evaluated_in_one_batch(&app, &org, &project, &w, drvs).await;
        app.abort_evaluation(&caller, e).await.unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen, c2) = (app.app.clone(), done.clone(), caller.clone());
        app.storage.interleave(ops, move || {
            at_once(other.restart_evaluation(&c2, e)).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let r = app
            .record_job_finished(first["x"], w.id, &w.orgs, JobOutcome::Aborted, None)
            .await;
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let _ = r;
        let _ = app
            .record_job_finished(first["y"], w.id, &w.orgs, JobOutcome::Aborted, None)
            .await;
        let (x, y) = (build_status(&app, &org, "x").await, build_status(&app, &org, "y").await);
        let queued: Vec<_> = app
            .storage
            .queued_jobs(100)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        let x_active = app.storage.queued_jobs(100).await.unwrap().iter().any(|j| matches!(&j.kind, gradient_domain::model::JobKind::Build { derivation: d, .. } if *d == derivation("x", &[]).drv_path));
        if y != BuildStatus::Queued || (x == BuildStatus::Queued && !x_active) {
            failures.push(format!(
                "ops {ops}: x {x:?} (queued job: {x_active}), y {y:?}, queued jobs {}",
                queued.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_withheld_job_whose_build_was_substituted_settles_its_evaluation() {
    let (app, _caller, org, project) = setup_with_caller().await;
    let w = worker(1, &org);
    let e = planned_in_one_batch(&app, &org, &project, &w, vec![derivation("a", &[])]).await;
    // Another evaluation's planning found a's outputs in a cache: Queued -> Substituted, its job left queued.
    let drv = derivation("a", &[]).drv_path;
    let mut b = app.storage.build(org.id, &drv).await.unwrap().unwrap();
    assert_eq!(b.status, BuildStatus::Queued);
    assert!(b.move_to(BuildStatus::Substituted, chrono::Utc::now()));
    assert!(app.storage.update_build_if(BuildStatus::Queued, &b).await.unwrap());
    let sent = dispatch(&app, &w).await;
    assert!(builds(&sent).is_empty(), "withheld");
    assert_eq!(
        evaluation_status(&app, e).await,
        EvaluationStatus::Completed,
        "settled once its only build ended"
    );
}

#[tokio::test]
async fn an_abort_during_the_hand_out_is_never_followed_by_its_assign() {
    let mut bad = Vec::new();
    for ops in 0..40u64 {
        let (app, caller, org, p1) = setup_with_caller().await;
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        let _e1 = planned_in_one_batch(&app, &org, &p1, &ev, vec![derivation("a", &[])]).await;
        let e2 = planned_in_one_batch(&app, &org, &p2, &ev, vec![derivation("b", &[])]).await;
        // a's build is withheld in the next round (substituted meanwhile): its job ends during the round.
        let drv = derivation("a", &[]).drv_path;
        let mut a = app.storage.build(org.id, &drv).await.unwrap().unwrap();
        assert!(a.move_to(BuildStatus::Substituted, chrono::Utc::now()));
        assert!(app.storage.update_build_if(BuildStatus::Queued, &a).await.unwrap());
        app.fleet.delivered(w.id);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen, c2) = (app.app.clone(), done.clone(), caller.clone());
        app.storage.interleave(ops, move || {
            at_once(other.abort_evaluation(&c2, e2)).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        let _ = app.dispatch().await;
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let delivered = app.fleet.delivered(w.id);
        for (i, d) in delivered.iter().enumerate() {
            if let gradient_ports::fleet::Delivered::Assign(job) = d
                && !delivered[i + 1..].contains(&gradient_ports::fleet::Delivered::Abort(job.id()))
                && build_status(&app, &org, "b").await == BuildStatus::Aborted
            {
                bad.push(format!("ops {ops}: {delivered:?}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test]
async fn a_storage_error_during_a_dispatch_round_leaves_no_job_assigned_but_never_sent() {
    let mut bad = Vec::new();
    let mut rounds = 0;
    for ops in 0..60u64 {
        let (app, caller, org, p1) = setup_with_caller().await;
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        planned_in_one_batch(&app, &org, &p1, &ev, vec![derivation("a", &[])]).await;
        planned_in_one_batch(&app, &org, &p2, &ev, vec![derivation("b", &[])]).await;
        // a's job is withheld in the next round (its build was substituted meanwhile), b's is handed out.
        let drv = derivation("a", &[]).drv_path;
        let mut a = app.storage.build(org.id, &drv).await.unwrap().unwrap();
        assert!(a.move_to(BuildStatus::Substituted, chrono::Utc::now()));
        assert!(app.storage.update_build_if(BuildStatus::Queued, &a).await.unwrap());
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        // Exactly the round's storage operation `ops` fails: the next one finds the storage back.
        let storage = app.storage.clone();
        app.storage.go_down_after(Some(ops));
        app.storage.interleave(ops + 1, move || storage.go_down_after(None));
        let first = app.dispatch().await;
        app.storage.go_down_after(None);
        if first.is_ok() {
            // The round made fewer operations: every one has failed once.
            break;
        }
        rounds += 1;
        let mut sent: Vec<JobId> = app
            .fleet
            .delivered(w.id)
            .into_iter()
            .filter_map(|d| match d {
                gradient_ports::fleet::Delivered::Assign(job) => Some(job.id()),
                _ => None,
            })
            .collect();
        // The next round hands out what went back to the queue.
        app.dispatch().await.unwrap();
        sent.extend(app.fleet.delivered(w.id).into_iter().filter_map(|d| match d {
            gradient_ports::fleet::Delivered::Assign(job) => Some(job.id()),
            _ => None,
        }));
        let b = derivation("b", &[]).drv_path;
        for job in app.storage.jobs_assigned_to(w.id).await.unwrap() {
            if matches!(&job.kind, gradient_domain::model::JobKind::Build { derivation, .. } if *derivation == b)
                && !sent.contains(&job.id)
            {
                bad.push(format!(
                    "ops {ops} ({first:?}): b's job {:?} assigned, never sent",
                    job.id
                ));
            }
        }
        if build_status(&app, &org, "b").await != BuildStatus::Building {
            bad.push(format!("ops {ops}: b is {:?}", build_status(&app, &org, "b").await));
        }
    }
    assert!(rounds > 5, "the round made {rounds} storage operations");
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The active (queued or assigned) build job for `name`, if any.
async fn active_job_of(app: &App, org: &Org, name: &str) -> Option<gradient_domain::model::JobRecord> {
    let drv = derivation(name, &[]).drv_path;
    let mut all = app.storage.queued_jobs(1000).await.unwrap();
    for w in [1u128, 2] {
        all.extend(app.storage.jobs_assigned_to(worker(w, org).id).await.unwrap());
    }
    all.into_iter()
        .find(|j| matches!(&j.kind, gradient_domain::model::JobKind::Build { derivation: d, .. } if *d == drv))
}

#[tokio::test]
async fn an_abort_and_restart_during_a_dispatch_round_leave_the_build_queued_with_a_job_or_handed_out() {
    let mut bad = Vec::new();
    let mut during = 0;
    for ops in 0..60u64 {
        let (app, caller, org, project) = setup_with_caller().await;
        let w = worker(1, &org);
        let e = planned_in_one_batch(&app, &org, &project, &w, vec![derivation("a", &[])]).await;
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen, c2) = (app.app.clone(), done.clone(), caller.clone());
        // The abort and the restart land between any two storage operations of the round.
        app.storage.interleave(ops, move || {
            at_once(other.abort_evaluation(&c2, e)).unwrap();
            at_once(other.restart_evaluation(&c2, e)).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let sent = app.dispatch().await.unwrap();
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        during += 1;
        let a = build_status(&app, &org, "a").await;
        let job = active_job_of(&app, &org, "a").await;
        let sent_a = builds(&sent).get("a").copied();
        // Queued or Building, the build has an active job; an assigned one was sent to its worker.
        let ok = match (&a, &job) {
            (BuildStatus::Queued | BuildStatus::Building, None) => false,
            (_, Some(j)) if matches!(j.state, JobState::Assigned { .. }) => sent_a == Some(j.id),
            _ => true,
        };
        if !ok {
            bad.push(format!(
                "ops {ops}: a {a:?}, active job {:?}, sent {sent_a:?}, evaluation {:?}",
                job.map(|j| j.state),
                evaluation_status(&app, e).await
            ));
        }
    }
    assert!(during > 5, "the round made {during} storage operations");
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test]
async fn a_restart_landing_while_a_failure_report_is_recorded_builds_again_and_fails_no_dependent() {
    let mut bad = Vec::new();
    let mut during = 0;
    for (batched, ops) in [false, true]
        .into_iter()
        .flat_map(|b| (0..60u64).map(move |ops| (b, ops)))
    {
        let (app, caller, org, p1) = setup_with_caller().await;
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        let drvs = || vec![derivation("x", &[]), derivation("y", &["x"])];
        let _e1 = planned_in_one_batch(&app, &org, &p1, &ev, drvs()).await;
        let e2 = planned_in_one_batch(&app, &org, &p2, &ev, drvs()).await;
        app.abort_evaluation(&caller, e2).await.unwrap();
        let sent = builds(&dispatch(&app, &w).await);
        let Some(x) = sent.get("x").copied() else {
            panic!("{sent:?}")
        };
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, seen, c2) = (app.app.clone(), done.clone(), caller.clone());
        // The restart of the aborted evaluation lands between any two storage operations of the report.
        app.storage.interleave(ops, move || {
            if at_once(other.restart_evaluation(&c2, e2)).is_ok() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let failed = JobOutcome::Failed {
            kind: FailureKind::BuilderFailed,
            message: "boom".into(),
        };
        let r = if batched {
            app.record_reports(w.id, &w.orgs, vec![finished(x, failed)])
                .await
                .remove(0)
        } else {
            app.record_job_finished(x, w.id, &w.orgs, failed, None).await
        };
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        during += 1;
        let (xs, ys) = (build_status(&app, &org, "x").await, build_status(&app, &org, "y").await);
        let xj = active_job_of(&app, &org, "x").await;
        if xs == BuildStatus::Queued && (xj.is_none() || ys == BuildStatus::DependencyFailed) {
            bad.push(format!(
                "batched {batched}, ops {ops}: x {xs:?} (active job {:?}), y {ys:?}, report {r:?}",
                xj.map(|j| j.state)
            ));
        }
    }
    assert!(during > 10, "the restart landed during {during} reports");
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test]
async fn a_report_of_a_run_taken_back_and_handed_to_the_same_worker_again_does_not_end_the_new_run() {
    for batched in [true, false] {
        let (mut over, mut read_after) = (0, 0);
        // While w's success for its first run of a's job is recorded, before each storage operation in turn, w
        // is found lost (its link dropped), comes back without the job (restarted) and is handed the same job
        // again: the same job and worker, another run.
        for ops in 0.. {
            let (mut app, _, org, project) = setup_with_caller().await;
            let lost = std::sync::Arc::new(LostMoves::default());
            app.app = app.app.clone().observed_by(lost.clone());
            let w = worker(1, &org);
            let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, vec![derivation("a", &[])]).await;
            let job = jobs["a"];
            let again = std::sync::Arc::new(std::sync::Mutex::new(None));
            let (other, fleet, seen, back) = (app.app.clone(), app.fleet.clone(), again.clone(), w.clone());
            app.storage.interleave(ops, move || {
                fleet.disconnect(back.id);
                at_once(other.worker_lost(back.id)).unwrap();
                fleet.connect_proved(back.clone());
                at_once(other.worker_connected(back.id, &[], &back.orgs)).unwrap();
                *seen.lock().unwrap() = Some(builds(&at_once(other.dispatch()).unwrap()));
            });
            let result = if batched {
                let batch = vec![finished(job, JobOutcome::Success)];
                app.record_reports(w.id, &w.orgs, batch).await.remove(0)
            } else {
                app.record_job_finished(job, w.id, &w.orgs, JobOutcome::Success, None)
                    .await
            };
            let Some(sent) = again.lock().unwrap().take() else {
                result.unwrap();
                break;
            };
            assert!(ops < 1000);
            let record = app.storage.job(job).await.unwrap().unwrap();
            if sent.get("a") != Some(&job) {
                // The success was written before w was lost: the build is done, its job not run again.
                assert_eq!(
                    build_status(&app, &org, "a").await,
                    BuildStatus::Completed,
                    "{batched} {ops}"
                );
                assert!(!record.state.is_active(), "{batched} {ops}: {record:?}");
                continue;
            }
            over += 1;
            if result.is_ok() {
                // Read after the job was handed out again: as far as the server can tell, the word of the run it
                // is in (the same worker's, for the same job), which it completes. (A report answered recorded
                // whose build still builds is the race this test is about: its job was ended by the wrong run.)
                assert_eq!(
                    build_status(&app, &org, "a").await,
                    BuildStatus::Completed,
                    "{batched} before operation {ops}: answered recorded"
                );
                assert_eq!(record.state, JobState::Done, "{batched} {ops}");
                continue;
            }
            read_after += 1;
            // Checked against the first run, recorded once that run was over: it changes nothing. The job stays
            // with w in its second run, the build building, the evaluation waiting.
            assert!(
                matches!(result, Err(ServiceError::Forbidden(_))),
                "{batched} {ops}: {result:?}"
            );
            assert!(
                matches!(record.state, JobState::Assigned { worker, .. } if worker == w.id),
                "{batched} before operation {ops}: the second run's job was ended by the first run's report: {:?}",
                record.state
            );
            assert_eq!(record.attempts, 1, "{batched} {ops}");
            assert_eq!(
                build_status(&app, &org, "a").await,
                BuildStatus::Building,
                "{batched} {ops}"
            );
            assert_eq!(evaluation_status(&app, e).await, EvaluationStatus::Building);
            assert!(
                !lost.0.lock().unwrap().is_empty(),
                "{batched} {ops}: the observer hears the lost move"
            );
            // The second run's own report completes it.
            let result = if batched {
                let batch = vec![finished(job, JobOutcome::Success)];
                app.record_reports(w.id, &w.orgs, batch).await.remove(0)
            } else {
                app.record_job_finished(job, w.id, &w.orgs, JobOutcome::Success, None)
                    .await
            };
            result.unwrap();
            assert_eq!(
                build_status(&app, &org, "a").await,
                BuildStatus::Completed,
                "{batched} {ops}"
            );
            assert_eq!(
                app.storage.job(job).await.unwrap().unwrap().state,
                JobState::Done,
                "{batched} {ops}"
            );
            assert_eq!(
                evaluation_status(&app, e).await,
                EvaluationStatus::Completed,
                "{batched} {ops}"
            );
        }
        assert!(over > 1, "{batched}: handed out again {over} times");
        assert!(
            read_after > 0,
            "{batched}: the job was never handed out again between the report's check and its end"
        );
    }
}

/// Jobs the observer heard were left assigned but never sent (`job_stranded`).
#[derive(Default)]
struct StrandedJobs(std::sync::Mutex<Vec<(JobId, gradient_domain::WorkerId)>>);

impl gradient_domain::ports::Observer for StrandedJobs {
    fn evaluation_ended(&self, _: EvaluationStatus, _: std::time::Duration) {}
    fn build_ended(&self, _: BuildStatus, _: Option<std::time::Duration>) {}
    fn job_stranded(&self, job: JobId, worker: gradient_domain::WorkerId) {
        self.0.lock().unwrap().push((job, worker));
    }
}

#[tokio::test]
async fn a_withheld_job_the_storage_fails_to_end_is_not_left_holding_its_worker_s_slot() {
    let mut bad = Vec::new();
    let (mut rounds, mut stranded) = (0, 0);
    // The storage fails for `width` operations from the round's operation `ops` on: once (putting the job back
    // in the queue works), or twice in a row (that fails too: the next round ends it).
    for (width, ops) in [1u64, 2].into_iter().flat_map(|w| (0..60u64).map(move |ops| (w, ops))) {
        let (mut app, caller, org, p1) = setup_with_caller().await;
        let heard = std::sync::Arc::new(StrandedJobs::default());
        app.app = app.app.clone().observed_by(heard.clone());
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        let e1 = planned_in_one_batch(&app, &org, &p1, &ev, vec![derivation("a", &[])]).await;
        planned_in_one_batch(&app, &org, &p2, &ev, vec![derivation("b", &[])]).await;
        // a's job is withheld in the next round (its build was substituted meanwhile), b's is handed out.
        let drv = derivation("a", &[]).drv_path;
        let mut a = app.storage.build(org.id, &drv).await.unwrap().unwrap();
        assert!(a.move_to(BuildStatus::Substituted, chrono::Utc::now()));
        assert!(app.storage.update_build_if(BuildStatus::Queued, &a).await.unwrap());
        let a_job = active_job_of(&app, &org, "a").await.unwrap().id;
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        let storage = app.storage.clone();
        app.storage.go_down_after(Some(ops));
        app.storage.interleave(ops + width, move || storage.go_down_after(None));
        let first = app.dispatch().await;
        app.storage.go_down_after(None);
        if first.is_ok() {
            // The round made fewer operations.
            if width == 1 {
                continue;
            }
            break;
        }
        rounds += 1;
        let sent_a = |app: &App| {
            app.fleet
                .delivered(w.id)
                .into_iter()
                .any(|d| matches!(d, gradient_ports::fleet::Delivered::Assign(job) if job.id() == a_job))
        };
        let assigned_a = |state: &JobState| matches!(state, JobState::Assigned { worker, .. } if *worker == w.id);
        let heard_a = heard.0.lock().unwrap().contains(&(a_job, w.id));
        if sent_a(&app) {
            bad.push(format!("{width} {ops}: a's withheld job was sent"));
        }
        let after_round = app.storage.job(a_job).await.unwrap().unwrap().state;
        if assigned_a(&after_round) {
            // Only when taking it back failed too, and then the observer hears it.
            if width == 1 || !heard_a {
                bad.push(format!(
                    "{width} ops {ops} ({first:?}): a's job left with the worker, stranded told: {heard_a}"
                ));
            }
            stranded += 1;
        } else if heard_a {
            bad.push(format!(
                "{width} ops {ops}: told stranded, but it is not: {after_round:?}"
            ));
        }
        // The next round (the storage back) ends what was left; a's job is not active, nor ever sent.
        app.dispatch().await.unwrap();
        let state = app.storage.job(a_job).await.unwrap().unwrap().state;
        if assigned_a(&state) || sent_a(&app) {
            bad.push(format!("{width} ops {ops}: after the next round a's job is {state:?}"));
        }
        if build_status(&app, &org, "a").await != BuildStatus::Substituted {
            bad.push(format!(
                "{width} ops {ops}: a is {:?}",
                build_status(&app, &org, "a").await
            ));
        }
        // Its evaluation settles by the next round at the latest, or at the next reconciliation when what failed
        // was settling it after the job ended.
        app.reconcile(chrono::TimeDelta::zero()).await.unwrap();
        if evaluation_status(&app, e1).await != EvaluationStatus::Completed {
            bad.push(format!(
                "{width} ops {ops}: a's evaluation {:?}",
                evaluation_status(&app, e1).await
            ));
        }
    }
    assert!(rounds > 10, "the rounds failed {rounds} times");
    assert!(
        stranded > 0,
        "the job was never left with its worker after a double failure"
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

/// What the observer heard of builds not queued again after a report (`queue_again_failed`).
#[derive(Default)]
struct NotQueuedAgain(std::sync::Mutex<Vec<(Vec<JobId>, &'static str)>>);

impl gradient_domain::ports::Observer for NotQueuedAgain {
    fn evaluation_ended(&self, _: EvaluationStatus, _: std::time::Duration) {}
    fn build_ended(&self, _: BuildStatus, _: Option<std::time::Duration>) {}
    fn queue_again_failed(&self, jobs: &[JobId], code: &'static str) {
        self.0.lock().unwrap().push((jobs.to_vec(), code));
    }
}

#[tokio::test]
async fn a_restarted_build_a_report_fails_to_queue_again_is_told_and_reconciliation_queues_it() {
    let mut told = [0; 2];
    for (batched, ops) in [false, true]
        .into_iter()
        .flat_map(|b| (0..60u64).map(move |ops| (b, ops)))
    {
        let (mut app, caller, org, project) = setup_with_caller().await;
        let heard = std::sync::Arc::new(NotQueuedAgain::default());
        app.app = app.app.clone().observed_by(heard.clone());
        let w = worker(1, &org);
        let (e, jobs) = evaluated_in_one_batch(&app, &org, &project, &w, vec![derivation("x", &[])]).await;
        // Aborted and restarted while x builds: the restart finds x's job still out, and queues nothing.
        app.abort_evaluation(&caller, e).await.unwrap();
        app.restart_evaluation(&caller, e).await.unwrap();
        assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
        // The old run's answer, while the storage fails at exactly its operation `ops`.
        let storage = app.storage.clone();
        app.storage.go_down_after(Some(ops));
        app.storage.interleave(ops + 1, move || storage.go_down_after(None));
        let result = if batched {
            let batch = vec![finished(jobs["x"], JobOutcome::Aborted)];
            app.record_reports(w.id, &w.orgs, batch).await.remove(0)
        } else {
            app.record_job_finished(jobs["x"], w.id, &w.orgs, JobOutcome::Aborted, None)
                .await
        };
        app.storage.go_down_after(None);
        let ended = !app.storage.job(jobs["x"]).await.unwrap().unwrap().state.is_active();
        let queued = active_job_of(&app, &org, "x").await.is_some();
        let heard = heard.0.lock().unwrap().clone();
        if ended && !queued {
            // Recorded (not to be sent again), the build left without a job: the observer hears it, once.
            assert!(result.is_ok(), "{batched} {ops}: {result:?}");
            assert_eq!(heard, [(vec![jobs["x"]], "unavailable")], "{batched} {ops}");
            told[usize::from(batched)] += 1;
            // Reconciliation puts it back on the way.
            let done = app.reconcile(chrono::TimeDelta::zero()).await.unwrap();
            assert_eq!(done.jobs_queued, 1, "{batched} {ops}");
            assert!(active_job_of(&app, &org, "x").await.is_some(), "{batched} {ops}");
        } else {
            assert!(heard.is_empty(), "{batched} {ops}: {heard:?}");
        }
    }
    assert!(
        told.iter().all(|n| *n > 0),
        "the re-queue failed after a recorded report {told:?} times (one by one, batched)"
    );
}

#[tokio::test]
async fn a_dispatch_round_the_storage_fails_twice_in_a_row_leaves_no_job_assigned_but_never_sent() {
    let mut bad = Vec::new();
    let (mut rounds, mut stranded) = (0, 0);
    for ops in 0..80u64 {
        let (mut app, caller, org, p1) = setup_with_caller().await;
        let heard = std::sync::Arc::new(StrandedJobs::default());
        app.app = app.app.clone().observed_by(heard.clone());
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        // A build waits, and an evaluation of another project: the round hands out both.
        planned_in_one_batch(&app, &org, &p1, &ev, vec![derivation("b", &[])]).await;
        let e2 = app
            .queue_evaluation(org.id, &p2, &"b".repeat(40), EvaluationTrigger::Manual)
            .await
            .unwrap();
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        let storage = app.storage.clone();
        app.storage.go_down_after(Some(ops));
        app.storage.interleave(ops + 2, move || storage.go_down_after(None));
        let first = app.dispatch().await;
        app.storage.go_down_after(None);
        if first.is_ok() {
            break;
        }
        rounds += 1;
        let sent = |app: &App| -> Vec<JobId> {
            app.fleet
                .delivered(w.id)
                .into_iter()
                .filter_map(|d| match d {
                    gradient_ports::fleet::Delivered::Assign(job) => Some(job.id()),
                    _ => None,
                })
                .collect()
        };
        let mut delivered = sent(&app);
        let told: Vec<JobId> = heard.0.lock().unwrap().iter().map(|(j, _)| *j).collect();
        for job in app.storage.jobs_assigned_to(w.id).await.unwrap() {
            if !delivered.contains(&job.id) {
                stranded += 1;
                if !told.contains(&job.id) {
                    bad.push(format!("ops {ops} ({first:?}): {:?} left unsent, untold", job.kind));
                }
            }
        }
        // The next round (the storage back) ends or takes back what was left, and hands the work out.
        app.dispatch().await.unwrap();
        delivered.extend(sent(&app));
        for job in app.storage.jobs_assigned_to(w.id).await.unwrap() {
            if !delivered.contains(&job.id) {
                bad.push(format!(
                    "ops {ops}: after the next round {:?} assigned, never sent",
                    job.kind
                ));
            }
        }
        if build_status(&app, &org, "b").await != BuildStatus::Building {
            bad.push(format!("ops {ops}: b is {:?}", build_status(&app, &org, "b").await));
        }
        let e = evaluation_status(&app, e2.id).await;
        let evaluating = app.storage.jobs_assigned_to(w.id).await.unwrap().iter().any(
            |j| matches!(j.kind, gradient_domain::model::JobKind::Evaluate { evaluation_id } if evaluation_id == e2.id),
        );
        if e != EvaluationStatus::Fetching || !evaluating {
            bad.push(format!("ops {ops}: the evaluation is {e:?}, its job out: {evaluating}"));
        }
    }
    assert!(rounds > 5, "the round failed {rounds} times");
    assert!(stranded > 0, "no job was ever left with the worker by a round");
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test]
async fn a_stranded_job_taken_back_and_handed_to_the_same_worker_again_is_not_ended_by_the_next_round() {
    // Review (s12-rev): a round fails twice in a row and leaves jobs stranded with `w`; `w`'s link ends (its jobs
    // go back to the queue) and it connects again before the next round, which ends what is still stranded and
    // hands the jobs out again, to `w`: the new runs (same job ids, same worker) must stay assigned and be sent.
    let mut bad = Vec::new();
    let (mut rounds, mut stranded) = (0, 0);
    for ops in 0..80u64 {
        let (mut app, caller, org, p1) = setup_with_caller().await;
        let heard = std::sync::Arc::new(StrandedJobs::default());
        app.app = app.app.clone().observed_by(heard.clone());
        let p2 = common::project(&app, &caller, "o", "p2", "https://example.com/p2.git").await;
        let w = worker(1, &org);
        let mut ev = worker(9, &org);
        ev.capabilities.build = false;
        planned_in_one_batch(&app, &org, &p1, &ev, vec![derivation("b", &[])]).await;
        let e2 = app
            .queue_evaluation(org.id, &p2, &"b".repeat(40), EvaluationTrigger::Manual)
            .await
            .unwrap();
        for c in app.fleet.connected() {
            app.fleet.disconnect(c.id);
        }
        app.fleet.connect_proved(w.clone());
        let storage = app.storage.clone();
        app.storage.go_down_after(Some(ops));
        app.storage.interleave(ops + 2, move || storage.go_down_after(None));
        let first = app.dispatch().await;
        app.storage.go_down_after(None);
        if first.is_ok() {
            break;
        }
        rounds += 1;
        stranded += heard.0.lock().unwrap().len();
        // The link ends and comes back.
        app.fleet.disconnect(w.id);
        app.worker_lost(w.id).await.unwrap();
        app.fleet.connect_proved(w.clone());
        app.dispatch().await.unwrap();
        let delivered: Vec<JobId> = app
            .fleet
            .delivered(w.id)
            .into_iter()
            .filter_map(|d| match d {
                gradient_ports::fleet::Delivered::Assign(job) => Some(job.id()),
                _ => None,
            })
            .collect();
        for job in app.storage.jobs_assigned_to(w.id).await.unwrap() {
            if !delivered.contains(&job.id) {
                bad.push(format!("ops {ops}: {:?} assigned, never sent", job.kind));
            }
        }
        if build_status(&app, &org, "b").await != BuildStatus::Building {
            bad.push(format!("ops {ops}: b is {:?}", build_status(&app, &org, "b").await));
        }
        let building = app.storage.jobs_assigned_to(w.id).await.unwrap().iter().any(
            |j| matches!(&j.kind, gradient_domain::model::JobKind::Build { derivation, .. } if derivation.ends_with("b.drv")),
        );
        let e = evaluation_status(&app, e2.id).await;
        let evaluating = app.storage.jobs_assigned_to(w.id).await.unwrap().iter().any(
            |j| matches!(j.kind, gradient_domain::model::JobKind::Evaluate { evaluation_id } if evaluation_id == e2.id),
        );
        if e != EvaluationStatus::Fetching || !evaluating || !building {
            bad.push(format!(
                "ops {ops}: the evaluation is {e:?}, its job out: {evaluating}; b's job out: {building}"
            ));
        }
    }
    assert!(rounds > 5, "the round failed {rounds} times");
    assert!(stranded > 0, "no job was ever stranded");
    assert!(bad.is_empty(), "{bad:#?}");
}
