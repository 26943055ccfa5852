#![allow(clippy::unwrap_used)]
//! Faults lose nothing (issue #18), over the in-memory storage: a report sent again changes nothing twice, a
//! worker that comes back with work it went on with offline gets it back, and the reconciliation puts back on
//! the way what nothing would move again.

mod common;

use common::ManualClock;
use gradient_domain::model::{EvaluationTrigger, JobId, JobState, Org, Project};
use gradient_domain::ports::storage::{Evaluations, Queue, Run};
use gradient_domain::ports::{Clock, Fleet};
use gradient_domain::proto::{AttributeError, EvaluatedDerivation, Job, JobOutcome};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{Dispatched, Settings};
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use std::collections::BTreeMap;

type App = common::TestApp<ManualClock>;

/// How long a worker may be away before its jobs are another's (the server's `workerLostAfterSecs`).
const LOST_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

async fn setup() -> (App, Org, Project) {
    let app = common::app(ManualClock::new(), Settings::default());
    let caller = common::signed_up(&app, "u").await;
    let org = common::org(&app, &caller, "o").await;
    let project = common::project(&app, &caller, "o", "p", "https://example.com/p.git").await;
    (app, org, project)
}

fn worker(n: u128, org: &Org) -> WorkerInfo {
    common::worker(n, org, 8)
}

fn derivation(name: &str) -> EvaluatedDerivation {
    let hash = name.repeat(32).get(..32).unwrap().to_owned();
    EvaluatedDerivation {
        attribute: Some(format!("packages.x86_64-linux.{name}")),
        drv_path: format!("/nix/store/{hash}-{name}.drv"),
        outputs: BTreeMap::from([("out".into(), format!("/nix/store/{hash}-{name}"))]),
        system: "x86_64-linux".into(),
        required_features: vec![],
        input_drvs: vec![],
    }
}

/// One dispatch round with exactly `workers` connected.
async fn dispatch(app: &App, workers: &[&WorkerInfo]) -> Vec<Dispatched> {
    for w in app.fleet.connected() {
        app.fleet.disconnect(w.id);
    }
    for w in workers {
        app.fleet.connect_proved((*w).clone());
    }
    app.dispatch().await.unwrap()
}

async fn build_status(app: &App, org: &Org, name: &str) -> BuildStatus {
    use gradient_domain::ports::storage::Evaluations;
    app.storage
        .build(org.id, &derivation(name).drv_path)
        .await
        .unwrap()
        .unwrap()
        .status
}

async fn eval_status(app: &App, id: gradient_domain::EvaluationId) -> EvaluationStatus {
    app.storage.evaluation(id).await.unwrap().unwrap().status
}

/// An evaluation of `names` evaluated by `w`, its builds queued; answers it.
async fn evaluated(
    app: &App,
    org: &Org,
    project: &Project,
    w: &WorkerInfo,
    names: &[&str],
) -> gradient_domain::model::Evaluation {
    let e = app
        .queue_evaluation(org.id, project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(app, &[w]).await[0].job.id();
    let drvs = names.iter().map(|n| derivation(n)).collect();
    app.record_eval_result(job, w.id, &w.orgs, drvs, vec![]).await.unwrap();
    app.record_job_finished(job, w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    e
}

fn build_jobs(sent: &[Dispatched]) -> Vec<JobId> {
    sent.iter()
        .filter_map(|d| match &d.job {
            Job::Build { job_id, .. } => Some(*job_id),
            Job::Evaluate { .. } => None,
        })
        .collect()
}

#[tokio::test]
async fn a_report_sent_again_changes_nothing_twice() {
    let (app, org, project) = setup().await;
    let w = worker(1, &org);
    let e = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(&app, &[&w]).await[0].job.id();
    let broken = AttributeError {
        attribute: "packages.x86_64-linux.broken".into(),
        message: "error: nope".into(),
    };
    // The same eval_result twice (its acknowledgement was lost with the link): one error, one entry point.
    for _ in 0..2 {
        app.record_eval_result(job, w.id, &w.orgs, vec![derivation("x")], vec![broken.clone()])
            .await
            .unwrap();
    }
    let stored = app.storage.evaluation(e.id).await.unwrap().unwrap();
    assert_eq!(stored.errors.len(), 1, "{:?}", stored.errors);
    assert_eq!(app.storage.entry_points(e.id).await.unwrap().len(), 1);
    app.record_job_finished(job, w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    let sent = dispatch(&app, &[&w]).await;
    let build = build_jobs(&sent)[0];
    app.record_job_finished(build, w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Completed);
    let before = app.storage.evaluation(e.id).await.unwrap().unwrap();
    // The same job_finished again, even as a failure: refused (acknowledged by the link), nothing changes.
    let again = app
        .record_job_finished(
            build,
            w.id,
            &w.orgs,
            JobOutcome::Failed {
                kind: gradient_domain::proto::FailureKind::BuilderFailed,
                message: "late".into(),
            },
            None,
        )
        .await;
    assert!(
        matches!(again, Err(gradient_domain::service::ServiceError::Forbidden(_))),
        "{again:?}"
    );
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Completed);
    let after = app.storage.evaluation(e.id).await.unwrap().unwrap();
    assert_eq!(after.status, before.status);
    assert_eq!(after.transitions, before.transitions, "no status moved twice");
    // And an eval_result of the ended evaluation job: refused too.
    assert!(
        app.record_eval_result(job, w.id, &w.orgs, vec![derivation("y")], vec![])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_returning_worker_gets_back_the_jobs_it_held_and_its_offline_outcomes_count_once() {
    let (app, org, project) = setup().await;
    let (w1, w2) = (worker(1, &org), worker(2, &org));
    let e = evaluated(&app, &org, &project, &w1, &["x", "y"]).await;
    let sent = dispatch(&app, &[&w1]).await;
    let jobs = build_jobs(&sent);
    assert_eq!(jobs.len(), 2);
    // Its packets are dropped: lost, its builds say Queued again.
    assert_eq!(app.worker_lost(w1.id).await.unwrap(), 2);
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
    // It comes back holding both (one finished offline, its outcome in its outbox; one still running): both are
    // its own again, without a second assignment.
    app.fleet.disconnect(w1.id);
    assert_eq!(app.worker_connected(w1.id, &jobs, &w1.orgs).await.unwrap(), 0);
    for job in &jobs {
        let r = app.storage.job(*job).await.unwrap().unwrap();
        assert!(
            matches!(r.state, JobState::Assigned { worker, .. } if worker == w1.id),
            "{r:?}"
        );
        assert_eq!(r.attempts, 1, "requeued once");
    }
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Building);
    assert!(
        dispatch(&app, &[&w1, &w2]).await.is_empty(),
        "nothing is handed out twice"
    );
    // Its outbox is sent: each outcome is recorded once.
    for job in &jobs {
        app.record_job_finished(*job, w1.id, &w1.orgs, JobOutcome::Success, None)
            .await
            .unwrap();
    }
    assert_eq!(eval_status(&app, e.id).await, EvaluationStatus::Completed);
    let build = app
        .storage
        .build(org.id, &derivation("x").drv_path)
        .await
        .unwrap()
        .unwrap();
    let path: Vec<BuildStatus> = build.transitions.iter().map(|t| t.status).collect();
    assert_eq!(
        path.iter().filter(|s| **s == BuildStatus::Completed).count(),
        1,
        "{path:?}"
    );
}

#[tokio::test]
async fn a_held_job_another_worker_took_is_not_given_back_and_a_never_requeued_job_cannot_be_claimed() {
    let (app, org, project) = setup().await;
    let (w1, w2) = (worker(1, &org), worker(2, &org));
    evaluated(&app, &org, &project, &w1, &["x"]).await;
    let job = build_jobs(&dispatch(&app, &[&w1]).await)[0];
    app.worker_lost(w1.id).await.unwrap();
    assert_eq!(build_jobs(&dispatch(&app, &[&w2]).await), [job], "w2 took it");
    app.worker_connected(w1.id, &[job], &w1.orgs).await.unwrap();
    let r = app.storage.job(job).await.unwrap().unwrap();
    assert!(
        matches!(r.state, JobState::Assigned { worker, .. } if worker == w2.id),
        "{r:?}"
    );
    assert!(
        app.record_job_finished(job, w1.id, &w1.orgs, JobOutcome::Success, None)
            .await
            .is_err(),
        "the returning worker's report of it is refused"
    );

    // A queued job never handed out is not anyone's to claim by naming it.
    app.queue_evaluation(org.id, &project, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let queued = app.storage.queued_jobs(10).await.unwrap();
    let fresh = queued.iter().find(|j| j.attempts == 0).unwrap().id;
    app.worker_connected(w1.id, &[fresh], &w1.orgs).await.unwrap();
    assert_eq!(app.storage.job(fresh).await.unwrap().unwrap().state, JobState::Queued);
}

#[tokio::test]
async fn reconciliation_requeues_the_work_of_absent_workers_and_settles_what_ended() {
    let (app, org, project) = setup().await;
    let w1 = worker(1, &org);
    let e = evaluated(&app, &org, &project, &w1, &["x", "y", "z"]).await;
    let jobs = build_jobs(&dispatch(&app, &[&w1]).await);
    assert_eq!(jobs.len(), 3);
    // The database was down when the link of w1 ended: its jobs stayed assigned to it. Within the loss time,
    // nothing is touched (it may be reconnecting).
    app.fleet.disconnect(w1.id);
    assert!(app.reconcile(LOST_AFTER).await.unwrap().is_empty());
    app.clock.advance(LOST_AFTER + chrono::TimeDelta::seconds(1));
    let done = app.reconcile(LOST_AFTER).await.unwrap();
    assert_eq!(done.jobs_requeued, 3, "{done:?}");
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
    // A second pass finds nothing to do.
    assert!(app.reconcile(LOST_AFTER).await.unwrap().is_empty());

    // x's job ended while its build still says Building (a report applied half-way): its job is gone, so the
    // build gets a new one. y's build says Building while its job waits in the queue: it says Queued.
    let w2 = worker(2, &org);
    let sent = build_jobs(&dispatch(&app, &[&w2]).await);
    assert_eq!(sent.len(), 3);
    let x_job = sent[0];
    let x_record = app.storage.job(x_job).await.unwrap().unwrap();
    let x_drv = match &x_record.kind {
        gradient_domain::model::JobKind::Build { derivation, .. } => derivation.clone(),
        other => panic!("{other:?}"),
    };
    let x_run = Run::of(&x_record).unwrap();
    assert_eq!(x_run.worker, w2.id);
    assert!(app.storage.finish_job(x_run, true).await.unwrap());
    let y_job = sent[1];
    assert_eq!(app.storage.requeue_jobs(w2.id, &[y_job]).await.unwrap(), 1);
    app.clock.advance(LOST_AFTER + chrono::TimeDelta::seconds(1));
    let done = app.reconcile(LOST_AFTER).await.unwrap();
    assert_eq!(done.jobs_queued, 1, "{done:?}");
    assert_eq!(done.statuses_corrected, 2, "{done:?}");
    let x_build = app.storage.build(org.id, &x_drv).await.unwrap().unwrap();
    assert_eq!(x_build.status, BuildStatus::Queued);
    // Everything finishes on w2; the evaluation completes.
    let mut rounds = 0;
    while eval_status(&app, e.id).await == EvaluationStatus::Building {
        rounds += 1;
        assert!(rounds < 5, "the evaluation does not complete");
        for job in build_jobs(&dispatch(&app, &[&w2]).await) {
            app.record_job_finished(job, w2.id, &w2.orgs, JobOutcome::Success, None)
                .await
                .unwrap();
        }
        // z is still w2's from before: it reports it.
        for r in app.storage.jobs_assigned_to(w2.id).await.unwrap() {
            app.record_job_finished(r.id, w2.id, &w2.orgs, JobOutcome::Success, None)
                .await
                .unwrap();
        }
    }
    assert_eq!(eval_status(&app, e.id).await, EvaluationStatus::Completed);
}

#[tokio::test]
async fn reconciliation_settles_an_evaluation_whose_builds_all_ended_and_queues_one_without_a_job() {
    let (app, org, project) = setup().await;
    let w = worker(1, &org);
    let e = evaluated(&app, &org, &project, &w, &["x"]).await;
    // The build ended, but the settling of its evaluation was lost (the database went away in between).
    let job = build_jobs(&dispatch(&app, &[&w]).await)[0];
    let mut b = app
        .storage
        .build(org.id, &derivation("x").drv_path)
        .await
        .unwrap()
        .unwrap();
    assert!(b.move_to(BuildStatus::Completed, app.clock.now()));
    app.storage.update_build(&b).await.unwrap();
    let run = Run::of(&app.storage.job(job).await.unwrap().unwrap()).unwrap();
    assert_eq!(run.worker, w.id);
    assert!(app.storage.finish_job(run, true).await.unwrap());
    assert_eq!(eval_status(&app, e.id).await, EvaluationStatus::Building);
    app.clock.advance(LOST_AFTER + chrono::TimeDelta::seconds(1));
    app.reconcile(LOST_AFTER).await.unwrap();
    assert_eq!(
        eval_status(&app, e.id).await,
        EvaluationStatus::Completed,
        "nothing else would have"
    );

    // An evaluation left Queued without a job (its job was never written): it gets one.
    let e2 = app
        .queue_evaluation(org.id, &project, &"c".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let queued = app.storage.queued_jobs(10).await.unwrap();
    for j in queued {
        assert!(app.storage.cancel_queued_job(j.id).await.unwrap());
    }
    app.clock.advance(LOST_AFTER + chrono::TimeDelta::seconds(1));
    let done = app.reconcile(LOST_AFTER).await.unwrap();
    assert_eq!(done.jobs_queued, 1, "{done:?}");
    let sent = dispatch(&app, &[&w]).await;
    assert!(sent.iter().any(|d| matches!(&d.job, Job::Evaluate { .. })), "{sent:?}");
    assert_eq!(eval_status(&app, e2.id).await, EvaluationStatus::Fetching);
}

#[tokio::test]
async fn reconciliation_does_not_undo_a_build_handed_out_again_while_it_corrects_its_status() {
    let mut rounds = 0;
    let mut bad = Vec::new();
    for ops in 0..80u64 {
        let (app, org, project) = setup().await;
        let w = worker(1, &org);
        evaluated(&app, &org, &project, &w, &["y"]).await;
        let y_job = build_jobs(&dispatch(&app, &[&w]).await)[0];
        // y's job went back to the queue while its build still says Building (the requeue's status write lost).
        assert_eq!(app.storage.requeue_jobs(w.id, &[y_job]).await.unwrap(), 1);
        assert_eq!(build_status(&app, &org, "y").await, BuildStatus::Building);
        app.clock.advance(LOST_AFTER + chrono::TimeDelta::seconds(1));
        // Meanwhile the build says Queued again and a dispatch round hands the job out to w (still connected):
        // Building again, with its job assigned.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (other, storage, seen, drv) = (
            app.app.clone(),
            app.storage.clone(),
            done.clone(),
            derivation("y").drv_path,
        );
        let org_id = org.id;
        app.storage.interleave(ops, move || {
            let mut b = common::at_once(storage.build(org_id, &drv)).unwrap().unwrap();
            if b.status == BuildStatus::Building {
                b.status = BuildStatus::Queued;
                common::at_once(storage.update_build_if(BuildStatus::Building, &b)).unwrap();
            }
            common::at_once(other.dispatch()).unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        app.reconcile(LOST_AFTER).await.unwrap();
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        rounds += 1;
        let job = app.storage.job(y_job).await.unwrap().unwrap();
        let status = build_status(&app, &org, "y").await;
        if matches!(job.state, JobState::Assigned { .. }) && status != BuildStatus::Building {
            bad.push(format!("ops {ops}: y's job {:?}, its build {status:?}", job.state));
        }
    }
    assert!(rounds > 3, "reconciliation made {rounds} storage operations");
    assert!(bad.is_empty(), "{bad:#?}");
}
