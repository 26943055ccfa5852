#![allow(clippy::unwrap_used)]
//! The CI loop's bookkeeping over the in-memory storage.

use gradient_domain::auth::TokenSigner;
use gradient_domain::crypt::Crypt;
use gradient_domain::model::{EvaluationTrigger, Org, Project};
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::storage::Evaluations;
use gradient_domain::service::{Caller, Gradient, NewOrg, NewProject, Registration, Settings};
use gradient_domain::status::EvaluationStatus;
use gradient_ports::storage::MemoryStorage;

type App = Gradient<MemoryStorage, SystemClock>;

async fn app_with_project(settings: Settings) -> (App, Org, Project) {
    let app = Gradient::new(
        MemoryStorage::default(),
        SystemClock,
        TokenSigner::new(b"a-jwt-secret-of-at-least-32-bytes!!"),
        Crypt::from_secret(b"a-crypt-secret-of-at-least-32-bytes"),
        settings,
    );
    let user = app
        .register(Registration {
            username: "u".into(),
            name: "U".into(),
            email: "u@example.com".into(),
            password: "password123".into(),
        })
        .await
        .unwrap();
    let caller = Caller::Session {
        user,
        session: gradient_domain::SessionId::new(),
    };
    let org = app
        .create_org(
            &caller,
            NewOrg {
                name: "o".into(),
                display_name: None,
                description: None,
                public: false,
            },
        )
        .await
        .unwrap();
    let project = app
        .create_project(
            &caller,
            "o",
            NewProject {
                name: "p".into(),
                repository: "https://example.com/p.git".into(),
                ..NewProject::default()
            },
        )
        .await
        .unwrap();
    (app, org, project)
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
        if i < 3 {
            // The first three finish before the next push.
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
    assert_eq!(left, vec![ids[4], ids[3]], "{left:?}");
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
    let second = app
        .queue_evaluation(org.id, &project, &"c".repeat(40), EvaluationTrigger::Webhook)
        .await
        .unwrap();
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
