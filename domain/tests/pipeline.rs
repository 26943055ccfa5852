#![allow(clippy::unwrap_used)]
//! The CI loop's bookkeeping over the in-memory storage.

mod common;

use gradient_domain::model::{EvaluationTrigger, JobId, Org, Project};
use gradient_domain::ports::Fleet;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::storage::Evaluations;
use gradient_domain::ports::storage::Queue;
use gradient_domain::proto::{EvaluatedDerivation, JobOutcome, Stage};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{Caller, Dispatched, Settings};
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use std::collections::{BTreeMap, BTreeSet};

type App = common::TestApp<SystemClock>;

async fn app_with_project(settings: Settings) -> (App, Org, Project) {
    let (app, _, org, project) = app_with_caller(settings).await;
    (app, org, project)
}

async fn app_with_caller(settings: Settings) -> (App, Caller, Org, Project) {
    let app = common::app(SystemClock, settings);
    let caller = common::signed_up(&app, "u").await;
    let org = common::org(&app, &caller, "o").await;
    let project = common::project(&app, &caller, "o", "p", "https://example.com/p.git").await;
    (app, caller, org, project)
}

#[tokio::test]
async fn only_the_newest_finished_evaluations_are_kept() {
    let (app, org, project) = app_with_project(Settings {
        keep_evaluations: 2,
        ..Settings::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let commit = format!("{i:040x}");
        let e = app
            .queue_evaluation(org.id, &project, &commit, EvaluationTrigger::Manual)
            .await
            .unwrap();
        ids.push(e.id);
        if i < 3 && i != 1 {
            // The first and third finish before the next push; the second is still running.
            let mut done = app.storage.evaluation(e.id).await.unwrap().unwrap();
            done.status = EvaluationStatus::Aborted;
            app.storage.update_evaluation(&done).await.unwrap();
        }
    }
    let left: Vec<_> = app
        .storage
        .evaluations(project.id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    // The two newest are kept whatever their state; older finished ones go; none still running is deleted.
    assert_eq!(left, vec![ids[4], ids[3], ids[1]], "{left:?}");
}

#[tokio::test]
async fn a_push_supersedes_the_running_evaluation_of_its_branch() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let first = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    let manual = app
        .queue_evaluation(org.id, &project, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let first_now = app.storage.evaluation(first.id).await.unwrap().unwrap();
    assert_eq!(
        first_now.status,
        EvaluationStatus::Queued,
        "a manual evaluation supersedes nothing"
    );
    let other_branch = app
        .queue_evaluation_on(
            org.id,
            &project,
            &"d".repeat(40),
            Some("dev".into()),
            EvaluationTrigger::Webhook,
        )
        .await
        .unwrap();
    let second = app
        .queue_evaluation(org.id, &project, &"c".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    assert_eq!(
        app.storage.evaluation(other_branch.id).await.unwrap().unwrap().status,
        EvaluationStatus::Queued,
        "a push supersedes only evaluations of its own branch"
    );
    for old in [first.id, manual.id] {
        let e = app.storage.evaluation(old).await.unwrap().unwrap();
        assert_eq!(e.status, EvaluationStatus::Aborted, "{e:?}");
        assert!(e.errors[0].message.contains(&second.id.0.to_string()), "{e:?}");
    }
    assert_eq!(
        app.storage.evaluation(second.id).await.unwrap().unwrap().status,
        EvaluationStatus::Queued
    );

    let (app, org, project) = app_with_project(Settings {
        supersede_evaluations: false,
        ..Settings::default()
    })
    .await;
    let first = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    app.queue_evaluation(org.id, &project, &"c".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    let still = app.storage.evaluation(first.id).await.unwrap().unwrap();
    assert_eq!(still.status, EvaluationStatus::Queued, "switched off");
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

fn builder(n: u128, org: gradient_domain::OrgId, eval: bool, builds: u32) -> WorkerInfo {
    let mut w = common::worker_of(n, org, builds);
    w.capabilities.fetch = eval;
    w.capabilities.eval = eval;
    w
}

fn derivation(name: &str) -> EvaluatedDerivation {
    EvaluatedDerivation {
        attribute: Some(format!("packages.x86_64-linux.{name}")),
        drv_path: format!("/nix/store/{}-{name}.drv", name.repeat(32).get(..32).unwrap()),
        outputs: BTreeMap::from([(
            "out".into(),
            format!("/nix/store/{}-{name}", name.repeat(32).get(..32).unwrap()),
        )]),
        system: "x86_64-linux".into(),
        required_features: vec![],
        input_drvs: vec![],
    }
}

async fn status(app: &App, id: gradient_domain::EvaluationId) -> EvaluationStatus {
    app.storage.evaluation(id).await.unwrap().unwrap().status
}

fn build_job(job: &gradient_domain::proto::Job) -> JobId {
    match job {
        gradient_domain::proto::Job::Build { job_id, .. } => *job_id,
        other => panic!("not a build: {other:?}"),
    }
}

#[tokio::test]
async fn builds_wait_for_the_evaluating_worker_until_it_has_pushed_the_drv_files() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    // Worker 1 evaluates and has one build slot; worker 2 only builds, with more slots (it would win).
    let (w1, w2) = (builder(1, org.id, true, 1), builder(2, org.id, false, 8));
    let workers = [&w1, &w2];
    let e = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let sent = dispatch(&app, &workers).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].worker, w1.id);
    let eval_job = sent[0].job.id();
    app.record_eval_result(
        eval_job,
        w1.id,
        &w1.orgs,
        vec![derivation("x"), derivation("y")],
        vec![],
    )
    .await
    .unwrap();

    // Every derivation is reported; the `.drv` files are being pushed: the builds start on worker 1 only.
    app.record_job_progress(eval_job, w1.id, &w1.orgs, Stage::Pushing)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Building);
    let sent = dispatch(&app, &workers).await;
    assert_eq!(
        sent.iter().map(|d| d.worker).collect::<Vec<_>>(),
        vec![w1.id],
        "{sent:?}"
    );
    let first = build_job(&sent[0].job);
    assert!(
        dispatch(&app, &workers).await.is_empty(),
        "the other build waits for worker 1"
    );

    // Its build ends; the evaluation is not done while its `.drv` files are still being pushed.
    app.record_job_finished(first, w1.id, &w1.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Building);

    // Pushed: the evaluation job ends, and the other build may go to any worker (worker 2 has more slots).
    app.record_job_finished(eval_job, w1.id, &w1.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    let sent = dispatch(&app, &workers).await;
    assert_eq!(
        sent.iter().map(|d| d.worker).collect::<Vec<_>>(),
        vec![w2.id],
        "{sent:?}"
    );
    app.record_job_finished(build_job(&sent[0].job), w2.id, &w2.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

async fn build_status(app: &App, org: &Org, name: &str) -> BuildStatus {
    let drv = derivation(name).drv_path;
    app.storage.build(org.id, &drv).await.unwrap().unwrap().status
}

#[tokio::test]
async fn a_pin_ends_with_its_evaluation_job_however_that_ends() {
    let (app, caller, org, project) = app_with_caller(Settings::default()).await;
    // Worker 1 evaluates and builds; worker 3 only evaluates; worker 2 only builds.
    let (w1, w2, w3) = (
        builder(1, org.id, true, 4),
        builder(2, org.id, false, 4),
        builder(3, org.id, true, 0),
    );
    let a = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let a_job = dispatch(&app, &[&w1]).await[0].job.id();
    let b = app
        .queue_evaluation(org.id, &project, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let b_job = dispatch(&app, &[&w3]).await[0].job.id();
    // B is evaluated and done; A reports the same derivation and pushes its `.drv` files: x waits for worker 1.
    app.record_eval_result(b_job, w3.id, &w3.orgs, vec![derivation("x")], vec![])
        .await
        .unwrap();
    app.record_job_finished(b_job, w3.id, &w3.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    app.record_eval_result(a_job, w1.id, &w1.orgs, vec![derivation("x")], vec![])
        .await
        .unwrap();
    app.record_job_progress(a_job, w1.id, &w1.orgs, Stage::Pushing)
        .await
        .unwrap();

    // Worker 1 is lost (its jobs are requeued), then A is aborted: its evaluation job ends without a report.
    app.worker_lost(w1.id).await.unwrap();
    assert!(dispatch(&app, &[&w2]).await.is_empty(), "x still waits");
    app.abort_evaluation(&caller, a.id).await.unwrap();
    let sent = dispatch(&app, &[&w2]).await;
    assert_eq!(
        sent.iter().map(|d| d.worker).collect::<Vec<_>>(),
        vec![w2.id],
        "B's build of x goes on"
    );
    assert_eq!(status(&app, b.id).await, EvaluationStatus::Building);
}

#[tokio::test]
async fn a_superseded_evaluation_stays_ended_and_its_running_builds_finish() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let w1 = builder(1, org.id, true, 4);
    let a = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    let a_job = dispatch(&app, &[&w1]).await[0].job.id();
    app.record_eval_result(a_job, w1.id, &w1.orgs, vec![derivation("x"), derivation("y")], vec![])
        .await
        .unwrap();
    app.record_job_progress(a_job, w1.id, &w1.orgs, Stage::Pushing)
        .await
        .unwrap();
    // One build runs on worker 1 (x), the other is still queued (y) when a push supersedes A.
    let w1_one_slot = WorkerInfo {
        max_concurrent_builds: 1,
        ..w1.clone()
    };
    let sent = dispatch(&app, &[&w1_one_slot]).await;
    let x_job = build_job(&sent[0].job);
    // Whichever of the two went first is "x" below.
    let (x, y) = match &sent[0].job {
        gradient_domain::proto::Job::Build { drv_path, .. } if *drv_path == derivation("x").drv_path => ("x", "y"),
        _ => ("y", "x"),
    };
    app.queue_evaluation(org.id, &project, &"b".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
    assert_eq!(status(&app, a.id).await, EvaluationStatus::Aborted);

    // A's job goes on reporting: A stays Aborted, and what only it needed is not queued again.
    app.record_job_progress(a_job, w1.id, &w1.orgs, Stage::Pushing)
        .await
        .unwrap();
    app.record_job_finished(a_job, w1.id, &w1.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, a.id).await, EvaluationStatus::Aborted);
    let states = (build_status(&app, &org, x).await, build_status(&app, &org, y).await);
    assert_eq!(states, (BuildStatus::Building, BuildStatus::Aborted));
    // The running build finishes, its outputs useful to whatever needs them next.
    app.record_job_finished(x_job, w1.id, &w1.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(build_status(&app, &org, x).await, BuildStatus::Completed);
}

/// Another organization's worker reports a `.drv` path this organization also uses, first, with forged outputs
/// and inputs: this organization's builds, the jobs it sends and its build page still use what its own
/// worker reported.
#[tokio::test]
async fn another_organizations_worker_cannot_change_what_a_derivation_is_here() {
    let app = common::app(SystemClock, Settings::default());
    let alice = common::signed_up(&app, "alice").await;
    let mallory = common::signed_up(&app, "mallory").await;
    let victim = common::org(&app, &alice, "victim").await;
    let attacker = common::org(&app, &mallory, "attacker").await;
    let vp = common::project(&app, &alice, "victim", "p", "https://example.com/p.git").await;
    let ap = common::project(&app, &mallory, "attacker", "p", "https://example.com/q.git").await;
    let (wv, wa) = (builder(1, victim.id, true, 4), builder(2, attacker.id, true, 4));
    let real = derivation("x");
    let mut forged = real.clone();
    forged.outputs = BTreeMap::from([("out".into(), format!("/nix/store/{}-evil", "e".repeat(32)))]);
    forged.input_drvs = vec![derivation("y").drv_path];

    // The attacker's worker reports first.
    app.queue_evaluation(attacker.id, &ap, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let a_job = dispatch(&app, &[&wa]).await[0].job.id();
    app.record_eval_result(a_job, wa.id, &wa.orgs, vec![forged.clone()], vec![])
        .await
        .unwrap();
    app.record_job_finished(a_job, wa.id, &wa.orgs, JobOutcome::Success, None)
        .await
        .unwrap();

    // Then the victim evaluates the same path.
    let e = app
        .queue_evaluation(victim.id, &vp, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let v_job = dispatch(&app, &[&wv]).await[0].job.id();
    app.record_eval_result(v_job, wv.id, &wv.orgs, vec![real.clone()], vec![])
        .await
        .unwrap();
    app.record_job_finished(v_job, wv.id, &wv.orgs, JobOutcome::Success, None)
        .await
        .unwrap();

    // The build job sent to the victim's worker names the real outputs, and it does not wait for the forged
    // input (which the victim never reported).
    let sent = dispatch(&app, &[&wv]).await;
    let outputs = sent
        .iter()
        .find_map(|d| match &d.job {
            gradient_domain::proto::Job::Build { drv_path, outputs, .. } if *drv_path == real.drv_path => {
                Some(outputs.clone())
            }
            _ => None,
        })
        .expect("the victim's build of x is sent");
    assert_eq!(outputs, real.outputs);
    // Its build page shows them too.
    let (_, views) = app.evaluation_builds(&alice, e.id).await.unwrap();
    let build = views
        .iter()
        .find(|v| v.build.drv_path == real.drv_path)
        .expect("x is one of the victim's builds")
        .build
        .clone();
    let (_, shown) = app.build_for(&alice, build.id).await.unwrap();
    let shown = shown.expect("the victim's derivation");
    assert_eq!(shown.outputs, real.outputs);
    assert!(shown.inputs.is_empty(), "{shown:?}");
    // And the attacker still sees only what it reported.
    let b = app.storage.build(attacker.id, &real.drv_path).await.unwrap().unwrap();
    let (_, theirs) = app.build_for(&mallory, b.id).await.unwrap();
    assert_eq!(theirs.unwrap().outputs, forged.outputs);
}

/// A worker is trusted only for its own jobs: results, progress and an outcome for a job assigned to another
/// worker (here, of another organization) are refused, and nothing about the job or its evaluation changes.
#[tokio::test]
async fn a_workers_reports_for_another_workers_job_are_refused() {
    let app = common::app(SystemClock, Settings::default());
    let alice = common::signed_up(&app, "alice").await;
    let mallory = common::signed_up(&app, "mallory").await;
    let victim = common::org(&app, &alice, "victim").await;
    let attacker = common::org(&app, &mallory, "attacker").await;
    let vp = common::project(&app, &alice, "victim", "p", "https://example.com/p.git").await;
    let (wv, wa) = (builder(1, victim.id, true, 4), builder(2, attacker.id, true, 4));
    let e = app
        .queue_evaluation(victim.id, &vp, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(&app, &[&wv]).await[0].job.id();
    let before = app.storage.evaluation(e.id).await.unwrap().unwrap();

    let refused = |r: gradient_domain::service::Result<()>| {
        assert_eq!(r.unwrap_err().code(), "forbidden");
    };
    refused(
        app.record_eval_result(job, wa.id, &wa.orgs, vec![derivation("x")], vec![])
            .await,
    );
    refused(app.record_job_progress(job, wa.id, &wa.orgs, Stage::Pushing).await);
    refused(
        app.record_job_finished(
            job,
            wa.id,
            &wa.orgs,
            JobOutcome::Failed {
                kind: gradient_domain::proto::FailureKind::EvaluationFailed,
                message: "forged".into(),
            },
            None,
        )
        .await,
    );
    refused(
        app.record_job_finished(JobId::new(), wa.id, &wa.orgs, JobOutcome::Success, None)
            .await,
    );
    assert_eq!(
        app.storage.evaluation(e.id).await.unwrap().unwrap(),
        before,
        "the evaluation is untouched"
    );
    assert!(app.storage.entry_points(e.id).await.unwrap().is_empty());
    assert!(
        app.storage
            .derivation(attacker.id, &derivation("x").drv_path)
            .await
            .unwrap()
            .is_none()
            && app
                .storage
                .derivation(victim.id, &derivation("x").drv_path)
                .await
                .unwrap()
                .is_none()
    );
    assert!(app.job_is_active(job).await.unwrap(), "still assigned to its worker");

    // Its own worker's reports are taken.
    app.record_eval_result(job, wv.id, &wv.orgs, vec![derivation("x")], vec![])
        .await
        .unwrap();
    app.record_job_finished(job, wv.id, &wv.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Building);
}

#[tokio::test]
async fn a_link_speaks_only_for_the_organizations_it_proved_even_under_a_borrowed_worker_id() {
    let app = common::app(SystemClock, Settings::default());
    let alice = common::signed_up(&app, "alice").await;
    let mallory = common::signed_up(&app, "mallory").await;
    let victim = common::org(&app, &alice, "victim").await;
    let attacker = common::org(&app, &mallory, "attacker").await;
    let vp = common::project(&app, &alice, "victim", "p", "https://example.com/p.git").await;
    // One worker id, registered by both tenants: the real worker's link proved the victim's registration.
    let real = builder(1, victim.id, true, 4);
    app.queue_evaluation(victim.id, &vp, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(&app, &[&real]).await[0].job.id();

    // Mallory's link under the same id proved only her own organization.
    let hers = BTreeSet::from([attacker.id]);
    assert_eq!(
        app.record_eval_result(job, real.id, &hers, vec![], vec![])
            .await
            .unwrap_err()
            .code(),
        "forbidden",
        "a report on the victim's job from her link"
    );
    assert!(
        app.record_eval_result(job, real.id, &real.orgs, vec![], vec![])
            .await
            .is_ok()
    );
    assert!(
        app.record_eval_result(JobId::new(), real.id, &real.orgs, vec![], vec![])
            .await
            .is_err()
    );

    // An abort is not told to a link that did not prove the job's organization.
    let mut impostor = real.clone();
    impostor.orgs = hers.clone();
    app.fleet.disconnect(real.id);
    app.fleet.connect_proved(impostor.clone());
    let evaluation = match app.storage.job(job).await.unwrap().unwrap().kind {
        gradient_domain::model::JobKind::Evaluate { evaluation_id } => evaluation_id,
        _ => unreachable!("an evaluation job"),
    };
    app.abort_evaluation(&alice, evaluation).await.unwrap();
    assert_eq!(
        app.fleet.delivered(impostor.id),
        vec![],
        "the impostor's link hears of no job"
    );

    // Her link claims to hold the victim's job: it goes back to the queue instead of staying hers.
    let real = builder(5, victim.id, true, 4);
    let vp2 = common::project(&app, &alice, "victim", "q", "https://example.com/q.git").await;
    app.queue_evaluation(victim.id, &vp2, &"b".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(&app, &[&real]).await[0].job.id();
    assert_eq!(app.worker_connected(real.id, &[job], &hers).await.unwrap(), 1);
    assert_eq!(
        app.storage.job(job).await.unwrap().map(|j| j.state),
        Some(gradient_domain::model::JobState::Queued),
        "requeued, not left to her"
    );
    // The real worker's own reconnection keeps what it holds.
    let job = dispatch(&app, &[&real]).await[0].job.id();
    assert_eq!(app.worker_connected(real.id, &[job], &real.orgs).await.unwrap(), 0);
    assert!(matches!(
        app.storage.job(job).await.unwrap().map(|j| j.state),
        Some(gradient_domain::model::JobState::Assigned { .. })
    ));
}

#[tokio::test]
async fn a_lost_workers_build_and_evaluation_say_queued_again() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let (w1, w2) = (builder(1, org.id, true, 4), builder(2, org.id, true, 4));
    let e = app
        .queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let eval_job = dispatch(&app, &[&w1]).await[0].job.id();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Fetching);
    // Lost while fetching: the evaluation is Queued again and goes to the next worker.
    app.fleet.woken();
    assert_eq!(app.worker_lost(w1.id).await.unwrap(), 1);
    assert!(app.fleet.woken(), "its work is worth a dispatch round at once");
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Queued);
    let sent = dispatch(&app, &[&w2]).await;
    assert_eq!(sent[0].job.id(), eval_job, "the same job, requeued");
    app.record_eval_result(eval_job, w2.id, &w2.orgs, vec![derivation("x")], vec![])
        .await
        .unwrap();
    app.record_job_finished(eval_job, w2.id, &w2.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    let sent = dispatch(&app, &[&w1]).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Building);
    // Lost while building: the build is Queued again (not Building while its job waits), then finishes elsewhere.
    app.worker_lost(w1.id).await.unwrap();
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
    let sent = dispatch(&app, &[&w2]).await;
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Building);
    app.record_job_finished(build_job(&sent[0].job), w2.id, &w2.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

/// A derivation `name` that takes the output of `inputs`.
fn derivation_on(name: &str, inputs: &[&str]) -> EvaluatedDerivation {
    EvaluatedDerivation {
        input_drvs: inputs.iter().map(|i| derivation(i).drv_path).collect(),
        ..derivation(name)
    }
}

/// The build jobs among what a round sent, by derivation name.
fn sent_build(sent: &[Dispatched], name: &str) -> JobId {
    let drv = derivation(name).drv_path;
    sent.iter()
        .find_map(|d| match &d.job {
            gradient_domain::proto::Job::Build { job_id, drv_path, .. } if *drv_path == drv => Some(*job_id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no build of {name} in {sent:?}"))
}

/// An evaluation of `derivations` evaluated by `w` (and its job ended), answering it.
async fn evaluated(
    app: &App,
    org: &Org,
    project: &Project,
    w: &WorkerInfo,
    derivations: Vec<EvaluatedDerivation>,
) -> gradient_domain::model::Evaluation {
    let e = app
        .queue_evaluation(org.id, project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    let job = dispatch(app, &[w]).await[0].job.id();
    app.record_eval_result(job, w.id, &w.orgs, derivations, vec![])
        .await
        .unwrap();
    app.record_job_finished(job, w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    e
}

#[tokio::test]
async fn a_failed_build_fails_what_depends_on_it_and_its_evaluation_and_a_restart_queues_them_again() {
    let (app, caller, org, project) = app_with_caller(Settings::default()).await;
    // One build slot: y cannot join x on the worker, so it waits in the queue.
    let w = builder(1, org.id, true, 1);
    let e = evaluated(
        &app,
        &org,
        &project,
        &w,
        vec![derivation("x"), derivation_on("y", &["x"])],
    )
    .await;
    let sent = dispatch(&app, &[&w]).await;
    assert_eq!(sent.len(), 1, "y waits for x: {sent:?}");
    let failed = JobOutcome::Failed {
        kind: gradient_domain::proto::FailureKind::BuilderFailed,
        message: "exit 1".into(),
    };
    app.fleet.woken();
    app.record_job_finished(sent_build(&sent, "x"), w.id, &w.orgs, failed, None)
        .await
        .unwrap();
    assert!(app.fleet.woken(), "a finished job wakes the dispatcher for its slot");
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Failed);
    assert_eq!(build_status(&app, &org, "y").await, BuildStatus::DependencyFailed);
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Failed);

    let restarted = app.restart_evaluation(&caller, e.id).await.unwrap();
    assert_eq!(restarted.status, EvaluationStatus::Building);
    assert!(app.fleet.woken(), "the restarted builds are worth a dispatch round");
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Queued);
    assert_eq!(build_status(&app, &org, "y").await, BuildStatus::Queued);
    let sent = dispatch(&app, &[&w]).await;
    app.record_job_finished(sent_build(&sent, "x"), w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    let sent = dispatch(&app, &[&w]).await;
    app.record_job_finished(sent_build(&sent, "y"), w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

#[tokio::test]
async fn an_abort_stops_the_evaluations_jobs_on_the_workers_running_them() {
    let (app, caller, org, project) = app_with_caller(Settings::default()).await;
    let w = builder(1, org.id, true, 4);
    let e = evaluated(&app, &org, &project, &w, vec![derivation("x"), derivation("y")]).await;
    let sent = dispatch(&app, &[&w]).await;
    assert_eq!(sent.len(), 2);
    app.fleet.delivered(w.id);
    let aborted = app.abort_evaluation(&caller, e.id).await.unwrap();
    assert_eq!(aborted.status, EvaluationStatus::Aborted);
    let mut stopped: Vec<JobId> = app
        .fleet
        .delivered(w.id)
        .into_iter()
        .map(|d| match d {
            gradient_ports::fleet::Delivered::Abort(job) => job,
            other => panic!("only aborts: {other:?}"),
        })
        .collect();
    stopped.sort();
    let mut running = vec![sent_build(&sent, "x"), sent_build(&sent, "y")];
    running.sort();
    assert_eq!(stopped, running, "both running builds are stopped on their worker");
    assert_eq!(build_status(&app, &org, "x").await, BuildStatus::Aborted);
}

#[tokio::test]
async fn deleting_an_organization_stops_its_jobs_and_closes_its_workers_links() {
    let (app, caller, org, _) = app_with_caller(Settings::default()).await;
    let registered = app
        .register_worker(&caller, "o", &uuid::Uuid::new_v4().to_string(), None, None)
        .await
        .unwrap()
        .registration;
    let w = WorkerInfo {
        id: registered.worker_id,
        ..builder(1, org.id, true, 4)
    };
    let project = common::project(&app, &caller, "o", "q", "https://example.com/q.git").await;
    app.queue_evaluation(org.id, &project, &"a".repeat(40), EvaluationTrigger::Manual)
        .await
        .unwrap();
    app.fleet.connect(w.clone(), &[(registered.peer_id, org.id)]);
    let job = app.dispatch().await.unwrap()[0].job.id();
    app.fleet.delivered(w.id);
    app.delete_org(&caller, "o").await.unwrap();
    assert_eq!(
        app.fleet.delivered(w.id),
        vec![
            gradient_ports::fleet::Delivered::Abort(job),
            gradient_ports::fleet::Delivered::Revoked
        ],
        "its job is stopped, then its link closed"
    );
    assert!(app.fleet.connected().is_empty());
}

#[tokio::test]
async fn a_build_goes_to_the_worker_that_just_built_its_input_while_that_worker_pushes_it() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    // One build slot: y cannot join x there.
    let w = builder(1, org.id, true, 1);
    let roomy = builder(2, org.id, false, 8);
    let e = evaluated(
        &app,
        &org,
        &project,
        &w,
        vec![derivation("x"), derivation_on("y", &["x"])],
    )
    .await;
    app.fleet.connect_proved(w.clone());
    let sent = app.dispatch().await.unwrap();
    assert_eq!(sent.len(), 1, "y waits for x: {sent:?}");
    let x_job = sent_build(&sent, "x");
    // The roomy worker connects: y needs x, which worker 1 builds, so it does not go there.
    app.fleet.connect_proved(roomy.clone());
    assert!(app.dispatch().await.unwrap().is_empty(), "x is still being built");
    // x is built and only pushing: y runs where x is, not on the other worker, without waiting for the push.
    app.record_job_progress(x_job, w.id, &w.orgs, Stage::Pushing)
        .await
        .unwrap();
    let sent = app.dispatch().await.unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].worker, w.id, "y goes to the worker that has x");
    assert_eq!(build_status(&app, &org, "y").await, BuildStatus::Building);
    app.record_job_finished(x_job, w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    app.record_job_finished(sent_build(&sent, "y"), w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

/// `n` links: link0 ← link1 ← … (each takes the output of the one before).
fn chain(n: usize) -> Vec<EvaluatedDerivation> {
    (0..n)
        .map(|i| {
            let name = format!("link{i}");
            if i == 0 {
                derivation(&name)
            } else {
                derivation_on(&name, &[&format!("link{}", i - 1)])
            }
        })
        .collect()
}

/// The `batch_inputs` of a build job.
fn batch_inputs(job: &gradient_domain::proto::Job) -> Vec<String> {
    match job {
        gradient_domain::proto::Job::Build { batch_inputs, .. } => batch_inputs.clone(),
        other => panic!("not a build: {other:?}"),
    }
}

#[tokio::test]
async fn a_chain_is_handed_to_one_worker_in_one_round_and_completes() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let w = builder(1, org.id, true, 100);
    let e = evaluated(&app, &org, &project, &w, chain(20)).await;
    let sent = dispatch(&app, &[&w]).await;
    assert_eq!(sent.len(), 20, "the whole chain at once: {sent:?}");
    for i in 1..20 {
        let job = sent_build(&sent, &format!("link{i}"));
        let link = sent.iter().find(|d| d.job.id() == job).unwrap();
        assert_eq!(
            batch_inputs(&link.job),
            vec![derivation(&format!("link{}", i - 1)).drv_path],
            "link{i} is built with its input"
        );
    }
    assert!(
        batch_inputs(&sent[0].job).is_empty(),
        "the first link needs nothing: {sent:?}"
    );
    // Each says how many of the round's builds follow it to the worker: the worker knows when the burst is in.
    let rests: Vec<Option<u32>> = sent
        .iter()
        .map(|d| match &d.job {
            gradient_domain::proto::Job::Build { round_rest, .. } => *round_rest,
            other => panic!("not a build: {other:?}"),
        })
        .collect();
    assert_eq!(rests, (0..20).rev().map(Some).collect::<Vec<_>>());
    for i in 0..20 {
        assert_eq!(
            build_status(&app, &org, &format!("link{i}")).await,
            BuildStatus::Building
        );
    }
    for d in &sent {
        app.record_job_finished(d.job.id(), w.id, &w.orgs, JobOutcome::Success, None)
            .await
            .unwrap();
    }
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

#[tokio::test]
async fn a_failure_in_the_middle_of_a_chain_handed_out_together_fails_what_follows_as_dependency_failed() {
    let (app, caller, org, project) = app_with_caller(Settings::default()).await;
    let w = builder(1, org.id, true, 100);
    let e = evaluated(&app, &org, &project, &w, chain(6)).await;
    let sent = dispatch(&app, &[&w]).await;
    assert_eq!(sent.len(), 6, "{sent:?}");
    // The worker's batch: link0 and link1 built, link2's builder failed, link3..5 not built because of it
    // (Nix's dependency failure, reported after link2's own failure).
    let job = |i: usize| sent_build(&sent, &format!("link{i}"));
    let dependency_failed = || JobOutcome::Failed {
        kind: gradient_domain::proto::FailureKind::DependencyFailed,
        message: "dependency failed".into(),
    };
    for (i, outcome) in [
        (0, JobOutcome::Success),
        (1, JobOutcome::Success),
        (
            2,
            JobOutcome::Failed {
                kind: gradient_domain::proto::FailureKind::BuilderFailed,
                message: "exit 1".into(),
            },
        ),
        (3, dependency_failed()),
        (4, dependency_failed()),
        (5, dependency_failed()),
    ] {
        app.record_job_finished(job(i), w.id, &w.orgs, outcome, None)
            .await
            .unwrap();
    }
    let want = [
        BuildStatus::Completed,
        BuildStatus::Completed,
        BuildStatus::Failed,
        BuildStatus::DependencyFailed,
        BuildStatus::DependencyFailed,
        BuildStatus::DependencyFailed,
    ];
    for (i, want) in want.into_iter().enumerate() {
        assert_eq!(build_status(&app, &org, &format!("link{i}")).await, want, "link{i}");
    }
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Failed);
    // Each dependency failure points at the failed link: the evaluation's root cause is link2, breaking 3..5.
    let diff = app.evaluation_diff(&caller, e.id).await.unwrap();
    assert_eq!(diff.root_causes.len(), 1, "{:?}", diff.root_causes);
    assert_eq!(diff.root_causes[0].cause, Some(derivation("link2").drv_path));
    let mut broken = diff.root_causes[0].dependents.clone();
    broken.sort();
    let mut want: Vec<String> = (3..6).map(|i| derivation(&format!("link{i}")).drv_path).collect();
    want.sort();
    assert_eq!(broken, want);
    // link3 never ran: like a dependency failure in the queue, it has no log.
    let build = app
        .storage
        .build(org.id, &derivation("link3").drv_path)
        .await
        .unwrap()
        .unwrap();
    assert!(app.storage.build_log(build.id).await.unwrap().is_none());
    // A restart queues the failed link and those it broke again.
    let restarted = app.restart_evaluation(&caller, e.id).await.unwrap();
    assert_eq!(restarted.status, EvaluationStatus::Building);
    let sent = dispatch(&app, &[&w]).await;
    assert_eq!(sent.len(), 4, "link2..5 handed out together again: {sent:?}");
}

#[tokio::test]
async fn two_workers_do_not_both_get_links_of_one_chain() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let evaluator = builder(1, org.id, true, 0);
    let e = evaluated(&app, &org, &project, &evaluator, chain(10)).await;
    // Two builders; each has room for 6 builds, so the chain cannot all go to one of them now.
    let (a, b) = (builder(2, org.id, false, 6), builder(3, org.id, false, 6));
    let sent = dispatch(&app, &[&a, &b]).await;
    assert_eq!(sent.len(), 6, "{sent:?}");
    let on = sent[0].worker;
    assert!(
        sent.iter().all(|d| d.worker == on),
        "one worker has every link handed out: {sent:?}"
    );
    let other = if on == a.id { &b } else { &a };
    assert!(
        dispatch(&app, &[&a, &b]).await.is_empty(),
        "the rest waits for that worker, not for {:?}",
        other.id
    );
    // That worker builds its six; the rest follows (now available to any worker).
    let w = if on == a.id { &a } else { &b };
    for d in &sent {
        app.record_job_finished(d.job.id(), w.id, &w.orgs, JobOutcome::Success, None)
            .await
            .unwrap();
    }
    let sent = dispatch(&app, &[&a, &b]).await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    let on = sent[0].worker;
    assert!(sent.iter().all(|d| d.worker == on), "{sent:?}");
    let w = if on == a.id { &a } else { &b };
    for d in &sent {
        app.record_job_finished(d.job.id(), w.id, &w.orgs, JobOutcome::Success, None)
            .await
            .unwrap();
    }
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);
}

/// What an observer (the server's metrics) hears: each build and evaluation once, when it ends, with its status;
/// a build that ran with how long it was building.
#[tokio::test]
async fn the_observer_hears_each_build_and_evaluation_end_once() {
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<String>>);
    impl gradient_domain::ports::Observer for Heard {
        fn evaluation_ended(&self, status: EvaluationStatus, _: std::time::Duration) {
            self.0.lock().unwrap().push(format!("evaluation {}", status.as_str()));
        }
        fn build_ended(&self, status: BuildStatus, built_for: Option<std::time::Duration>) {
            let ran = if built_for.is_some() {
                "after building"
            } else {
                "without building"
            };
            self.0.lock().unwrap().push(format!("build {} {ran}", status.as_str()));
        }
    }
    let (mut app, _caller, org, project) = app_with_caller(Settings::default()).await;
    let heard = std::sync::Arc::new(Heard::default());
    app.app = app.app.clone().observed_by(heard.clone());
    let w = builder(1, org.id, true, 1);
    let e = evaluated(
        &app,
        &org,
        &project,
        &w,
        vec![derivation("x"), derivation_on("y", &["x"])],
    )
    .await;
    let sent = dispatch(&app, &[&w]).await;
    let failed = JobOutcome::Failed {
        kind: gradient_domain::proto::FailureKind::BuilderFailed,
        message: "exit 1".into(),
    };
    app.record_job_finished(sent_build(&sent, "x"), w.id, &w.orgs, failed, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Failed);
    let mut heard = heard.0.lock().unwrap().clone();
    heard.sort();
    assert_eq!(
        heard,
        [
            "build DependencyFailed without building",
            "build Failed after building",
            "evaluation Failed"
        ]
    );
}

/// Dispatch rounds until one sends nothing (a round looks at a window of the queue), answering all they sent.
async fn dispatch_all(app: &App, w: &WorkerInfo) -> Vec<Dispatched> {
    let mut sent = Vec::new();
    loop {
        let round = dispatch(app, &[w]).await;
        if round.is_empty() {
            return sent;
        }
        sent.extend(round);
    }
}

#[tokio::test]
async fn a_build_over_many_inputs_runs_once_the_last_is_built_and_fails_with_any_of_them() {
    let (app, org, project) = app_with_project(Settings::default()).await;
    let w = builder(1, org.id, true, 1_000);
    // The aggregate needs a feature only `big` has, so it never joins its inputs on `w` (a chain handed out
    // whole is another test's): it waits for them, and runs on `big` once the last is built.
    let big = WorkerInfo {
        features: vec!["big".into()],
        ..builder(2, org.id, false, 1_000)
    };
    let aggregate = |inputs: &[&str]| EvaluatedDerivation {
        required_features: vec!["big".into()],
        ..derivation_on("all", inputs)
    };
    // More inputs than a dispatch round reads at once, finished out of their order in the derivation.
    let leaves: Vec<String> = (0..600).map(|i| format!("leaf{i}")).collect();
    let names: Vec<&str> = leaves.iter().map(String::as_str).collect();
    let mut drvs: Vec<EvaluatedDerivation> = names.iter().map(|n| derivation(n)).collect();
    drvs.push(aggregate(&names));
    let e = evaluated(&app, &org, &project, &w, drvs).await;
    let sent = dispatch_all(&app, &w).await;
    assert_eq!(sent.len(), 600, "the aggregate waits for its inputs");
    let mut order: Vec<&str> = names.clone();
    order.reverse();
    let (last, rest) = order.split_last().unwrap();
    for chunk in rest.chunks(150) {
        for name in chunk {
            app.record_job_finished(sent_build(&sent, name), w.id, &w.orgs, JobOutcome::Success, None)
                .await
                .unwrap();
        }
        assert!(dispatch(&app, &[&big]).await.is_empty(), "one input is still building");
    }
    app.record_job_finished(sent_build(&sent, last), w.id, &w.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    let sent = dispatch(&app, &[&big]).await;
    app.record_job_finished(sent_build(&sent, "all"), big.id, &big.orgs, JobOutcome::Success, None)
        .await
        .unwrap();
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Completed);

    // The same shape where one input in the middle fails: the aggregate never runs.
    let (app, org, project) = app_with_project(Settings::default()).await;
    let w = builder(1, org.id, true, 1_000);
    let big = WorkerInfo {
        features: vec!["big".into()],
        ..builder(2, org.id, false, 1_000)
    };
    let mut drvs: Vec<EvaluatedDerivation> = names.iter().map(|n| derivation(n)).collect();
    drvs.push(aggregate(&names));
    let e = evaluated(&app, &org, &project, &w, drvs).await;
    let sent = dispatch_all(&app, &w).await;
    for name in &names {
        let outcome = if *name == "leaf450" {
            JobOutcome::Failed {
                kind: gradient_domain::proto::FailureKind::BuilderFailed,
                message: "exit 1".into(),
            }
        } else {
            JobOutcome::Success
        };
        app.record_job_finished(sent_build(&sent, name), w.id, &w.orgs, outcome, None)
            .await
            .unwrap();
    }
    assert!(dispatch(&app, &[&w, &big]).await.is_empty(), "nothing left to run");
    assert_eq!(build_status(&app, &org, "all").await, BuildStatus::DependencyFailed);
    assert_eq!(status(&app, e.id).await, EvaluationStatus::Failed);
}
