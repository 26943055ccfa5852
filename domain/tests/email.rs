#![allow(clippy::unwrap_used)]
//! Email over the in-memory mailer: verification with single-use expiring links, login held until the address
//! is verified, password reset that reveals no account and ends the account's sessions, and one mail per
//! member when a project starts failing or is fixed.

mod common;

use common::ManualClock;
use gradient_domain::model::{EvaluationTrigger, Org, Project};
use gradient_domain::ports::Mail;
use gradient_domain::proto::{FailureKind, JobOutcome};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{Caller, EmailSettings, Registration, Settings};
use gradient_domain::status::EvaluationStatus;
use gradient_ports::mail::MemoryMailer;
use std::sync::Arc;

type App = common::TestApp<ManualClock>;

fn settings(require_verification: bool) -> Settings {
    Settings {
        public_url: "https://ci.example.com".into(),
        email: EmailSettings {
            enabled: true,
            require_verification,
        },
        ..Settings::default()
    }
}

fn app_mailing(settings: Settings) -> (App, MemoryMailer) {
    let mut app = common::app(ManualClock::new(), settings);
    let mailer = MemoryMailer::new();
    app.app = app.app.clone().mailing_with(Arc::new(mailer.clone()));
    (app, mailer)
}

async fn register(app: &App, username: &str) -> gradient_domain::model::User {
    app.register(Registration {
        username: username.into(),
        name: "Ada Lovelace".into(),
        email: format!("{username}@example.com"),
        password: "password123".into(),
    })
    .await
    .unwrap()
}

/// The token of the link to `page` in the mail.
fn link_token(mail: &Mail, page: &str) -> String {
    let prefix = format!("https://ci.example.com/{page}?token=");
    let start = mail
        .body
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {page} link in {}", mail.body))
        + prefix.len();
    mail.body[start..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn registration_mails_a_single_use_link_and_login_waits_for_it() {
    let (app, mailer) = app_mailing(settings(true));
    let ada = register(&app, "ada").await;
    let sent = mailer.take();
    assert_eq!(sent.len(), 1, "one verification mail");
    assert_eq!(sent[0].to, ada.email);
    let token = link_token(&sent[0], "verify-email");

    let e = app.login("ada", "password123").await.unwrap_err();
    assert_eq!(e.code(), "email_not_verified");
    assert_eq!(
        app.login("ada", "wrong-password").await.unwrap_err().code(),
        "invalid_credentials",
        "only whoever knows the password learns that the address is unverified"
    );

    app.verify_email(&token).await.unwrap();
    assert!(app.login("ada", "password123").await.is_ok(), "verified, ada logs in");
    assert_eq!(
        app.verify_email(&token).await.unwrap_err().code(),
        "invalid_token",
        "the link works once"
    );
    assert_eq!(
        app.verify_email("not a token").await.unwrap_err().code(),
        "invalid_token"
    );
    app.resend_verification("ada").await.unwrap();
    assert!(
        mailer.take().is_empty(),
        "a verified address gets no more verification mail"
    );
}

#[tokio::test]
async fn a_verification_link_expires_and_a_new_one_can_be_asked_for_once_a_minute() {
    let (app, mailer) = app_mailing(settings(true));
    register(&app, "bob").await;
    let old = link_token(&mailer.take()[0], "verify-email");
    app.resend_verification("bob@example.com").await.unwrap();
    assert!(
        mailer.take().is_empty(),
        "within a minute of the last mail, none is sent"
    );
    app.resend_verification("nobody").await.unwrap();
    assert!(
        mailer.take().is_empty(),
        "an unknown account answers the same and gets nothing"
    );

    app.clock.advance(chrono::TimeDelta::hours(25));
    assert_eq!(
        app.verify_email(&old).await.unwrap_err().code(),
        "invalid_token",
        "after 24 hours the link does not work"
    );
    app.resend_verification("bob").await.unwrap();
    let sent = mailer.take();
    assert_eq!(sent.len(), 1, "a new link");
    app.verify_email(&link_token(&sent[0], "verify-email")).await.unwrap();
    assert!(app.login("bob", "password123").await.is_ok());
}

#[tokio::test]
async fn without_required_verification_login_works_at_once_and_nothing_is_mailed_when_mail_is_off() {
    let (app, mailer) = app_mailing(settings(false));
    register(&app, "cy").await;
    assert_eq!(mailer.take().len(), 1, "the verification mail still goes out");
    assert!(app.login("cy", "password123").await.is_ok());

    let (off, mailer) = app_mailing(Settings::default());
    register(&off, "dee").await;
    assert!(mailer.take().is_empty(), "mail is off");
    assert_eq!(
        off.request_password_reset("dee@example.com").await.unwrap_err().code(),
        "email_disabled"
    );
}

#[tokio::test]
async fn a_password_reset_reveals_no_account_works_once_and_ends_every_session() {
    let (app, mailer) = app_mailing(settings(false));
    register(&app, "eve").await;
    mailer.take();
    let session = app.login("eve", "password123").await.unwrap();
    assert!(matches!(
        app.authenticate(Some(&session)).await.unwrap(),
        Caller::Session { .. }
    ));

    let unknown = app.request_password_reset("nobody@example.com").await.unwrap();
    assert!(mailer.take().is_empty(), "no account, no mail");
    let known = app.request_password_reset("EVE@example.com").await.unwrap();
    assert_eq!(unknown, known, "the answer does not say whether the account exists");
    let sent = mailer.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to.as_str(), "eve@example.com");
    let token = link_token(&sent[0], "reset-password");

    assert_eq!(
        app.reset_password(&token, "short").await.unwrap_err().code(),
        "weak_password",
        "a refused password does not spend the link"
    );
    app.reset_password(&token, "a-new-password").await.unwrap();
    assert_eq!(
        app.authenticate(Some(&session)).await.unwrap_err().code(),
        "unauthenticated",
        "the old session ended"
    );
    assert_eq!(
        app.login("eve", "password123").await.unwrap_err().code(),
        "invalid_credentials"
    );
    assert!(app.login("eve", "a-new-password").await.is_ok());
    assert_eq!(
        app.reset_password(&token, "another-password").await.unwrap_err().code(),
        "invalid_token",
        "the link works once"
    );

    // A reset link lasts an hour.
    app.clock.advance(chrono::TimeDelta::minutes(2));
    app.request_password_reset("eve@example.com").await.unwrap();
    let token = link_token(&mailer.take()[0], "reset-password");
    app.clock.advance(chrono::TimeDelta::minutes(61));
    assert_eq!(
        app.reset_password(&token, "too-late-password")
            .await
            .unwrap_err()
            .code(),
        "invalid_token"
    );
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
    use gradient_domain::ports::storage::Evaluations;
    app.storage.evaluation(e.id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn members_get_one_mail_when_a_project_starts_failing_and_one_when_it_is_fixed() {
    let (app, mailer) = app_mailing(settings(false));
    let admin = common::signed_up(&app, "admin").await;
    let org = common::org(&app, &admin, "acme").await;
    let project = common::project(&app, &admin, "acme", "web", "https://example.com/web.git").await;
    let quiet = common::signed_up(&app, "quiet").await;
    app.set_member(&admin, "acme", "quiet", "Write").await.unwrap();
    app.set_evaluation_mail_setting(&quiet, false).await.unwrap();
    assert!(!app.evaluation_mail_setting(&quiet).await.unwrap());
    common::signed_up(&app, "outsider").await;
    mailer.take();

    assert_eq!(
        evaluation_that(&app, &org, &project, true, 1).await,
        EvaluationStatus::Completed
    );
    assert!(mailer.take().is_empty(), "a first evaluation that passes is no news");

    assert_eq!(
        evaluation_that(&app, &org, &project, false, 2).await,
        EvaluationStatus::Failed
    );
    let sent = mailer.take();
    assert_eq!(sent.len(), 1, "one mail, to the member who did not opt out: {sent:?}");
    assert_eq!(sent[0].to.as_str(), "admin@example.com");
    assert_eq!(sent[0].subject, "acme/web is failing");
    assert!(
        sent[0].body.contains("https://ci.example.com/evals/"),
        "{}",
        sent[0].body
    );

    assert_eq!(
        evaluation_that(&app, &org, &project, false, 3).await,
        EvaluationStatus::Failed
    );
    assert!(mailer.take().is_empty(), "still failing: no news");

    assert_eq!(
        evaluation_that(&app, &org, &project, true, 4).await,
        EvaluationStatus::Completed
    );
    let sent = mailer.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].subject, "acme/web is fixed");

    assert_eq!(
        evaluation_that(&app, &org, &project, true, 5).await,
        EvaluationStatus::Completed
    );
    assert!(mailer.take().is_empty(), "still passing: no news");
}
