#![allow(clippy::unwrap_used)]
//! Schedules and actions over the in-memory ports with a clock the test moves: when a schedule is due (once
//! after downtime, never at once when new), and when a project's actions fire along its history (failed, fixed,
//! completed), their signed webhook deliveries with retries, and their mail.

mod common;

use common::ManualClock;
use gradient_domain::model::{DeliveryState, EvaluationTrigger, Org, Project};
use gradient_domain::ports::Clock;
use gradient_domain::ports::git::{Git, GitError, RemoteHead};
use gradient_domain::ports::storage::{Actions, Evaluations};
use gradient_domain::proto::{FailureKind, JobOutcome};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{EmailSettings, NewAction, ProjectChanges, Settings};
use gradient_domain::status::EvaluationStatus;
use gradient_ports::mail::MemoryMailer;
use gradient_ports::webhook::MemoryWebhooks;
use std::sync::Arc;

type App = common::TestApp<ManualClock>;

const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

/// A repository whose default branch `main` stays at [`HEAD`].
struct StillRepository;

impl Git for StillRepository {
    async fn head(
        &self,
        _: &str,
        _: Option<&str>,
        _: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<String>, GitError> {
        Ok(Some(HEAD.to_owned()))
    }

    async fn remote_head(
        &self,
        _: &str,
        _: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<RemoteHead>, GitError> {
        Ok(Some(RemoteHead {
            branch: Some("main".into()),
            commit: HEAD.to_owned(),
        }))
    }
}

fn settings() -> Settings {
    Settings {
        public_url: "https://ci.example.com".into(),
        email: EmailSettings {
            enabled: true,
            require_verification: false,
        },
        ..Settings::default()
    }
}

fn app_mailing() -> (App, MemoryMailer) {
    let mut app = common::app(ManualClock::new(), settings());
    let mailer = MemoryMailer::new();
    app.app = app.app.clone().mailing_with(Arc::new(mailer.clone()));
    (app, mailer)
}

async fn scheduled_count(app: &App, project: &Project) -> usize {
    app.storage
        .evaluations(project.id, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.trigger == EvaluationTrigger::Schedule)
        .count()
}

#[tokio::test]
async fn a_schedule_runs_at_its_times_without_new_commits_and_once_after_downtime() {
    let (app, _) = app_mailing();
    let admin = common::signed_up(&app, "admin").await;
    common::org(&app, &admin, "acme").await;
    common::project(&app, &admin, "acme", "web", "https://example.com/web.git").await;
    let git = StillRepository;
    let changes = ProjectChanges {
        schedule: Some(Some("0 * * * *".into())),
        ..ProjectChanges::default()
    };
    let p = app.update_project(&admin, "acme", "web", changes).await.unwrap();
    assert_eq!(p.schedule.as_deref(), Some("0 * * * *"));

    // First seen: nothing at once, whatever time it is.
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty());
    assert_eq!(scheduled_count(&app, &p).await, 0);
    // Until the next full hour, nothing; then one evaluation of the same commit, then nothing until the next.
    let now = app.clock.now();
    let next_hour =
        chrono::DurationRound::duration_trunc(now, chrono::TimeDelta::hours(1)).unwrap() + chrono::TimeDelta::hours(1);
    app.clock.advance(next_hour - now - chrono::TimeDelta::seconds(1));
    assert!(
        app.run_schedules(&git).await.unwrap().0.is_empty(),
        "one second before the hour"
    );
    app.clock.advance(chrono::TimeDelta::seconds(2));
    let (queued, failed) = app.run_schedules(&git).await.unwrap();
    assert!(failed.is_empty());
    assert_eq!(queued.len(), 1, "the hour came");
    assert_eq!(queued[0].commit, HEAD);
    assert_eq!(queued[0].trigger, EvaluationTrigger::Schedule);
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty(), "once per time");
    app.clock.advance(chrono::TimeDelta::minutes(30));
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty());

    // Down for five hours: one catch-up run, not five; then the next hour as usual.
    app.clock.advance(chrono::TimeDelta::hours(5));
    assert_eq!(app.run_schedules(&git).await.unwrap().0.len(), 1, "one catch-up run");
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty());
    assert_eq!(
        scheduled_count(&app, &p).await,
        2,
        "same commit, evaluated again each time"
    );
    app.clock.advance(chrono::TimeDelta::hours(1));
    assert_eq!(app.run_schedules(&git).await.unwrap().0.len(), 1);

    // A changed schedule starts anew (no catch-up of the old one); an inactive project is not scheduled.
    let changes = ProjectChanges {
        schedule: Some(Some("30 2 * * *".into())),
        ..ProjectChanges::default()
    };
    app.update_project(&admin, "acme", "web", changes).await.unwrap();
    app.clock.advance(chrono::TimeDelta::days(3));
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty(), "starts anew");
    let off = ProjectChanges {
        active: Some(false),
        ..ProjectChanges::default()
    };
    app.update_project(&admin, "acme", "web", off).await.unwrap();
    app.clock.advance(chrono::TimeDelta::days(1));
    assert!(app.run_schedules(&git).await.unwrap().0.is_empty(), "inactive");
}

#[tokio::test]
async fn a_scheduled_evaluation_supersedes_nothing() {
    let (app, _) = app_mailing();
    let admin = common::signed_up(&app, "admin").await;
    let org = common::org(&app, &admin, "acme").await;
    let p = common::project(&app, &admin, "acme", "web", "https://example.com/web.git").await;
    let pushed = app
        .queue_evaluation(org.id, &p, HEAD, EvaluationTrigger::Webhook)
        .await
        .unwrap();
    app.queue_evaluation(org.id, &p, HEAD, EvaluationTrigger::Schedule)
        .await
        .unwrap();
    let e = app.storage.evaluation(pushed.id).await.unwrap().unwrap();
    assert_eq!(e.status, EvaluationStatus::Queued, "the push's evaluation goes on");
}

fn evaluator(org: &Org) -> WorkerInfo {
    common::worker(7, org, 1)
}

/// Runs one evaluation of the project to its end: it completes (nothing to build) or fails to evaluate.
async fn evaluation_that(app: &App, org: &Org, project: &Project, completes: bool, n: u8) -> EvaluationStatus {
    app.clock.advance(chrono::TimeDelta::seconds(10));
    let e = app
        .queue_evaluation(
            org.id,
            project,
            &format!("{n:x}").repeat(40)[..40],
            EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    let w = evaluator(org);
    app.fleet.connect_proved(w.clone());
    let sent = app.dispatch().await.unwrap();
    let job = sent[0].job.id();
    let outcome = if completes {
        app.record_eval_result(job, w.id, &w.orgs, vec![], vec![])
            .await
            .unwrap();
        JobOutcome::Success
    } else {
        JobOutcome::Failed {
            kind: FailureKind::EvaluationFailed,
            message: "error: attribute missing".into(),
        }
    };
    app.record_job_finished(job, w.id, &w.orgs, outcome, None)
        .await
        .unwrap();
    app.fleet.disconnect(w.id);
    app.storage.evaluation(e.id).await.unwrap().unwrap().status
}

/// The events of the action's deliveries, oldest first.
async fn events(app: &App, action: gradient_domain::ActionId) -> Vec<String> {
    let mut d = app.storage.deliveries_of(action, 100).await.unwrap();
    d.reverse();
    d.iter()
        .map(|d| d.event.map_or("test", |e| e.as_str()).to_owned())
        .collect()
}

#[tokio::test]
async fn actions_fire_on_changes_of_health_and_completed_only_when_asked() {
    let (app, mailer) = app_mailing();
    let admin = common::signed_up(&app, "admin").await;
    let org = common::org(&app, &admin, "acme").await;
    let p = common::project(&app, &admin, "acme", "web", "https://example.com/web.git").await;
    let hook = app
        .create_action(
            &admin,
            "acme",
            "web",
            NewAction {
                name: "hook".into(),
                kind: "webhook".into(),
                url: Some("https://hooks.example.com/ci".into()),
                ..NewAction::default()
            },
        )
        .await
        .unwrap();
    let secret = hook.secret.clone().unwrap();
    let every = app
        .create_action(
            &admin,
            "acme",
            "web",
            NewAction {
                name: "every".into(),
                kind: "webhook".into(),
                url: Some("https://hooks.example.com/every".into()),
                secret: Some("a-secret-of-our-own".into()),
                events: Some(vec!["completed".into()]),
                ..NewAction::default()
            },
        )
        .await
        .unwrap();
    let mail = app
        .create_action(
            &admin,
            "acme",
            "web",
            NewAction {
                name: "oncall".into(),
                kind: "mail".into(),
                recipients: Some(vec!["oncall@example.com".into()]),
                ..NewAction::default()
            },
        )
        .await
        .unwrap();
    mailer.take();

    let history = [true, false, false, true, true];
    for (n, completes) in history.into_iter().enumerate() {
        evaluation_that(&app, &org, &p, completes, n as u8 + 1).await;
    }
    assert_eq!(events(&app, hook.action.id).await, ["failed", "fixed"]);
    assert_eq!(
        events(&app, every.action.id).await,
        ["completed", "completed", "completed"]
    );
    assert_eq!(events(&app, mail.action.id).await, ["failed", "fixed"]);
    let to_oncall: Vec<String> = mailer
        .take()
        .into_iter()
        .filter(|m| m.to.as_str() == "oncall@example.com")
        .map(|m| m.subject)
        .collect();
    assert_eq!(to_oncall, ["acme/web is failing", "acme/web is fixed"]);

    // Delivery: the hook answers 500 first, then 200; `every` is down; nothing else answers.
    let web = MemoryWebhooks::new(Default::default());
    web.answer("https://hooks.example.com/ci", 500);
    assert_eq!(app.deliver_due_webhooks(&web, 100).await.unwrap(), 0);
    let first = web.requests();
    assert_eq!(first.len(), 2, "both of the hook's deliveries were tried once");
    for r in &first {
        let header = |n: &str| r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(
            header("X-Gradient-Signature").unwrap(),
            gradient_domain::actions::signature(secret.as_bytes(), &r.body),
            "signed with the action's secret"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["project"], "web");
        assert_eq!(
            Some(body["event"].as_str().unwrap().to_owned()),
            header("X-Gradient-Event")
        );
    }
    let log = app
        .action_deliveries(&admin, "acme", "web", hook.action.id)
        .await
        .unwrap();
    assert!(
        log.iter()
            .all(|d| d.state == DeliveryState::Pending && d.attempts == 1 && d.status_code == Some(500))
    );
    assert_eq!(
        app.deliver_due_webhooks(&web, 100).await.unwrap(),
        0,
        "not before the backoff"
    );
    web.answer("https://hooks.example.com/ci", 204);
    app.clock.advance(chrono::TimeDelta::seconds(5));
    assert_eq!(
        app.deliver_due_webhooks(&web, 100).await.unwrap(),
        2,
        "the retry goes through"
    );
    let log = app
        .action_deliveries(&admin, "acme", "web", hook.action.id)
        .await
        .unwrap();
    assert!(
        log.iter()
            .all(|d| d.state == DeliveryState::Delivered && d.attempts == 2 && d.status_code == Some(204))
    );

    // A target that never answers is given up after five attempts.
    for _ in 0..10 {
        app.clock.advance(chrono::TimeDelta::minutes(5));
        app.deliver_due_webhooks(&web, 100).await.unwrap();
    }
    let log = app
        .action_deliveries(&admin, "acme", "web", every.action.id)
        .await
        .unwrap();
    assert_eq!(log.len(), 3);
    for d in log {
        assert_eq!((d.state, d.attempts), (DeliveryState::Failed, 5), "{d:?}");
        assert!(d.last_error.is_some());
    }
}

#[tokio::test]
async fn actions_are_for_editors_and_members_only() {
    let (app, _) = app_mailing();
    let admin = common::signed_up(&app, "admin").await;
    common::org(&app, &admin, "acme").await;
    common::project(&app, &admin, "acme", "web", "https://example.com/web.git").await;
    let viewer = common::signed_up(&app, "viewer").await;
    app.set_member(&admin, "acme", "viewer", "View").await.unwrap();
    let outsider = common::signed_up(&app, "outsider").await;
    let new = || NewAction {
        name: "hook".into(),
        kind: "webhook".into(),
        url: Some("https://hooks.example.com/ci".into()),
        ..NewAction::default()
    };
    assert_eq!(
        app.create_action(&viewer, "acme", "web", new())
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
    assert_eq!(
        app.create_action(&outsider, "acme", "web", new())
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    let made = app.create_action(&admin, "acme", "web", new()).await.unwrap();
    assert_eq!(app.actions(&viewer, "acme", "web").await.unwrap().len(), 1);
    assert_eq!(
        app.actions(&outsider, "acme", "web").await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        app.test_action(&viewer, "acme", "web", made.action.id)
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
    let d = app.test_action(&admin, "acme", "web", made.action.id).await.unwrap();
    assert_eq!((d.event, d.state), (None, DeliveryState::Pending));
}
