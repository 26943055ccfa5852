#![allow(clippy::unwrap_used)]
//! Commit statuses over the in-memory storage, a forge the test controls and a clock the test moves: a status
//! is queued only with a forge connection, delivered with the opened token, and retried with backoff when
//! the forge fails, the failure staying visible on the evaluation.

mod common;

use chrono::TimeDelta;
use common::ManualClock;
use gradient_domain::forge::Forge;
use gradient_domain::model::{CommitState, EvaluationTrigger};
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget};
use gradient_domain::service::{ServiceError, Settings};
use std::sync::Mutex;

/// Records what it is sent; fails the first `failures` calls.
#[derive(Default)]
struct FakeForge {
    failures: Mutex<u32>,
    sent: Mutex<Vec<(ForgeTarget, String, CommitState, String)>>,
}

impl ForgeApi for FakeForge {
    async fn set_status(
        &self,
        target: &ForgeTarget,
        commit: &str,
        state: CommitState,
        target_url: &str,
        _description: &str,
    ) -> Result<(), ForgeError> {
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(ForgeError::Unavailable("HTTP 502".into()));
        }
        self.sent
            .lock()
            .unwrap()
            .push((target.clone(), commit.to_owned(), state, target_url.to_owned()));
        Ok(())
    }

    async fn installation_token(&self, _installation: u64) -> Result<String, ForgeError> {
        Err(ForgeError::Rejected("no GitHub App in this test".into()))
    }
}

#[tokio::test]
async fn statuses_are_queued_with_a_connection_and_retried_until_delivered() {
    let clock = ManualClock::new();
    let app = common::app(
        clock.clone(),
        Settings {
            public_url: "https://ci.example.com".into(),
            ..Settings::default()
        },
    );
    let caller = common::signed_up(&app, "u").await;
    let org = common::org(&app, &caller, "o").await;
    let project = common::project(&app, &caller, "o", "p", "https://git.example.com/acme/web.git").await;
    let forge = FakeForge::default();
    let commit = "a".repeat(40);

    // No connection: nothing is queued.
    let e = app
        .queue_evaluation(org.id, &project, &commit, EvaluationTrigger::Manual)
        .await
        .unwrap();
    app.abort_evaluation(&caller, e.id).await.unwrap();
    assert!(app.evaluation_statuses(&caller, e.id).await.unwrap().is_empty());

    // Bad connections are refused.
    for (f, url, token, code) in [
        ("bitbucket", "https://x", "t", "invalid_forge"),
        ("gitea", "ftp://x", "t", "invalid_api_url"),
        ("gitea", "https://x", " ", "invalid_token"),
        ("gitea", "http://127.0.0.1:3000", "t", "api_url_not_allowed"),
        ("gitea", "http://localhost", "t", "api_url_not_allowed"),
        ("github", "http://169.254.169.254/latest", "t", "api_url_not_allowed"),
        ("gitlab", "https://[::1]", "t", "api_url_not_allowed"),
    ] {
        match app.set_forge_connection(&caller, "o", f, url, token).await {
            Err(ServiceError::Invalid { code: c, .. }) => assert_eq!(c, code),
            other => panic!("{f} {url}: {other:?}"),
        }
    }
    let c = app
        .set_forge_connection(&caller, "o", "gitea", "https://git.example.com/", "s3cret")
        .await
        .unwrap();
    assert_eq!(c.forge, Forge::Gitea);
    assert_eq!(c.api_url, "https://git.example.com");
    assert_ne!(c.token.0, "s3cret", "the token is sealed");

    // Aborted → error, linking to the evaluation. The forge fails twice.
    let e = app
        .queue_evaluation(org.id, &project, &commit, EvaluationTrigger::Manual)
        .await
        .unwrap();
    app.abort_evaluation(&caller, e.id).await.unwrap();
    *forge.failures.lock().unwrap() = 2;
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    let statuses = app.evaluation_statuses(&caller, e.id).await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].state, CommitState::Error);
    assert_eq!(statuses[0].attempts, 1);
    assert_eq!(statuses[0].last_error.as_deref(), Some("forge unavailable: HTTP 502"));
    assert!(!statuses[0].delivered);

    // Not due again before 5 s, then 10 s after the second failure.
    clock.advance(TimeDelta::seconds(4));
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    assert_eq!(app.evaluation_statuses(&caller, e.id).await.unwrap()[0].attempts, 1);
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    assert_eq!(app.evaluation_statuses(&caller, e.id).await.unwrap()[0].attempts, 2);
    clock.advance(TimeDelta::seconds(9));
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    clock.advance(TimeDelta::seconds(1));
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 1);
    let statuses = app.evaluation_statuses(&caller, e.id).await.unwrap();
    assert!(statuses[0].delivered);
    assert_eq!(statuses[0].attempts, 2, "the failures stay visible");

    let sent = forge.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (target, sent_commit, state, url) = &sent[0];
    assert_eq!(target.token, "s3cret", "the token is opened for the forge");
    assert_eq!(target.api_url, "https://git.example.com");
    assert_eq!(target.repository_url, "https://git.example.com/acme/web.git");
    assert_eq!(sent_commit, &commit);
    assert_eq!(*state, CommitState::Error);
    assert_eq!(url, &format!("https://ci.example.com/api/v1/evals/{}", e.id.0));
    assert_eq!(app.deliver_due_statuses(&forge, 10).await.unwrap(), 0, "delivered once");
}
