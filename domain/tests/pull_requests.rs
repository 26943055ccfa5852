#![allow(clippy::unwrap_used)]
//! Pull requests through an organization's webhook, over the in-memory storage, with the forges' payloads
//! (`tests/fixtures/forge/`): which projects a pull request evaluates (same repository on by default, forks
//! off by default, each a project setting), which commit and by which ref the worker fetches it, that new
//! commits supersede the pull request's running evaluation only, that closing it aborts that evaluation, and
//! that labels and edits do nothing.

mod common;

use gradient_domain::forge::HookHeaders;
use gradient_domain::model::{Capabilities, Evaluation};
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::storage::Evaluations;
use gradient_domain::proto;
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::service::{Caller, ProjectChanges, ServiceError, Settings};
use gradient_domain::status::EvaluationStatus;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeSet;

type App = common::TestApp<SystemClock>;

const HEAD: &str = "3f786850e387550fdab836ed7e6dc881de23001b";
const FORK_HEAD: &str = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
const FORK_MERGE: &str = "c3499c2729730a7f807efb8676a92dcb6f8a3f8f";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/forge/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

struct World {
    app: App,
    caller: Caller,
    secret: String,
}

impl World {
    /// Organization `acme` with a webhook secret and project `web` on `repository`.
    async fn new(repository: &str) -> World {
        let app = common::app(SystemClock, Settings::default());
        let caller = common::signed_up(&app, "u").await;
        common::org(&app, &caller, "acme").await;
        common::project(&app, &caller, "acme", "web", repository).await;
        let (_, secret) = app.create_webhook_secret(&caller, "acme").await.unwrap();
        World { app, caller, secret }
    }

    fn sign(&self, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    async fn github(&self, event: &str, body: &[u8]) -> Result<Vec<Evaluation>, ServiceError> {
        let headers = HookHeaders {
            github_event: Some(event.into()),
            hub_signature_256: Some(format!("sha256={}", self.sign(body))),
            ..HookHeaders::default()
        };
        self.app.receive_webhook("github", "acme", &headers, body).await
    }

    async fn change(&self, changes: ProjectChanges) {
        self.app
            .update_project(&self.caller, "acme", "web", changes)
            .await
            .unwrap();
    }

    async fn status(&self, e: &Evaluation) -> EvaluationStatus {
        self.app.storage.evaluation(e.id).await.unwrap().unwrap().status
    }
}

fn with_action(name: &str, action: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
    v["action"] = action.into();
    serde_json::to_vec_pretty(&v).unwrap()
}

fn evaluator(org: gradient_domain::OrgId) -> WorkerInfo {
    WorkerInfo {
        id: gradient_domain::WorkerId(uuid::Uuid::from_u128(7)),
        capabilities: Capabilities {
            fetch: true,
            eval: true,
            build: true,
            sign: false,
        },
        systems: vec!["x86_64-linux".into()],
        features: vec![],
        max_concurrent_builds: 1,
        max_concurrent_evaluations: 4,
        queued_builds: 0,
        orgs: BTreeSet::from([org]),
        pushing: Default::default(),
    }
}

#[tokio::test]
async fn a_pull_request_from_the_same_repository_is_evaluated_at_its_head_by_its_ref() {
    let w = World::new("git@github.com:acme/web.git").await;
    let queued = w
        .github("pull_request", &fixture("github_pull_request_opened"))
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    let e = &queued[0];
    assert_eq!(e.commit, HEAD);
    assert_eq!(e.status_commit(), HEAD);
    assert_eq!(e.branch.as_deref(), Some("docs-theme"));
    let pr = e.pull_request.as_ref().expect("a pull request's evaluation");
    assert_eq!(pr.number, 12);
    assert!(!pr.fork);
    assert_eq!(pr.fetch_ref, "refs/pull/12/head");
    assert_eq!(pr.head_repository.as_deref(), Some("https://github.com/acme/web.git"));
    // Stored as answered.
    assert_eq!(w.app.storage.evaluation(e.id).await.unwrap().as_ref(), Some(e));

    // The worker is told to fetch the pull request's ref of the project's repository.
    let org = w.app.project(&w.caller, "acme", "web").await.unwrap().org_id;
    w.app.fleet.connect_proved(evaluator(org));
    let sent = w.app.app.dispatch().await.unwrap();
    let job = sent.iter().find_map(|d| match &d.job {
        proto::Job::Evaluate {
            repository,
            commit,
            git_ref,
            ..
        } => Some((repository.clone(), commit.clone(), git_ref.clone())),
        _ => None,
    });
    assert_eq!(
        job,
        Some((
            "git@github.com:acme/web.git".to_owned(),
            HEAD.to_owned(),
            Some("refs/pull/12/head".to_owned())
        ))
    );
}

#[tokio::test]
async fn forks_run_only_when_the_project_allows_them_and_pull_requests_can_be_turned_off() {
    let w = World::new("https://github.com/acme/web").await;
    let fork = fixture("github_pull_request_synchronize_fork");
    assert_eq!(
        w.github("pull_request", &fork).await.unwrap(),
        vec![],
        "forks are off by default"
    );

    w.change(ProjectChanges {
        fork_pull_requests: Some(true),
        ..ProjectChanges::default()
    })
    .await;
    let queued = w.github("pull_request", &fork).await.unwrap();
    assert_eq!(queued.len(), 1);
    // GitHub said it merges cleanly: its test merge is evaluated, by the merge ref; statuses go on the head.
    assert_eq!(queued[0].commit, FORK_MERGE);
    assert_eq!(queued[0].status_commit(), FORK_HEAD);
    let pr = queued[0].pull_request.as_ref().unwrap();
    assert!(pr.fork);
    assert_eq!(pr.fetch_ref, "refs/pull/12/merge");
    assert_eq!(
        pr.head_repository.as_deref(),
        Some("https://github.com/mallory/web.git")
    );

    // Its commit status goes on the head, the commit GitHub shows on the pull request, not on the test merge.
    w.app
        .set_forge_connection(&w.caller, "acme", "github", "https://api.github.com", "t0ken")
        .await
        .unwrap();
    w.app.abort_evaluation(&w.caller, queued[0].id).await.unwrap();
    let statuses = w.app.evaluation_statuses(&w.caller, queued[0].id).await.unwrap();
    assert!(!statuses.is_empty(), "an aborted evaluation reports an error");
    assert!(statuses.iter().all(|r| r.commit == FORK_HEAD), "{statuses:?}");

    // Pull requests off: neither the fork's nor the repository's own.
    w.change(ProjectChanges {
        pull_requests: Some(false),
        ..ProjectChanges::default()
    })
    .await;
    assert_eq!(w.github("pull_request", &fork).await.unwrap(), vec![]);
    assert_eq!(
        w.github("pull_request", &fixture("github_pull_request_opened"))
            .await
            .unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn new_commits_supersede_the_pull_requests_evaluation_and_closing_aborts_it() {
    let w = World::new("https://github.com/acme/web.git").await;
    let project = w.app.project(&w.caller, "acme", "web").await.unwrap();
    let branch = w
        .app
        .queue_evaluation(
            project.org_id,
            &project,
            &"b".repeat(40),
            gradient_domain::model::EvaluationTrigger::Webhook,
        )
        .await
        .unwrap();
    let first = w
        .github("pull_request", &fixture("github_pull_request_opened"))
        .await
        .unwrap();
    // Another pull request (number 13) of the same repository.
    let mut other: serde_json::Value = serde_json::from_slice(&fixture("github_pull_request_opened")).unwrap();
    other["number"] = 13.into();
    other["pull_request"]["number"] = 13.into();
    other["pull_request"]["head"]["sha"] = "d".repeat(40).into();
    let other = w
        .github("pull_request", &serde_json::to_vec(&other).unwrap())
        .await
        .unwrap();

    // Labels change nothing.
    assert_eq!(
        w.github("pull_request", &fixture("github_pull_request_labeled"))
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(w.status(&first[0]).await, EvaluationStatus::Queued);

    // New commits on #12: its evaluation is superseded; the branch's and #13's go on.
    let again = w
        .github(
            "pull_request",
            &with_action("github_pull_request_opened", "synchronize"),
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(w.status(&first[0]).await, EvaluationStatus::Aborted);
    assert_eq!(w.status(&branch).await, EvaluationStatus::Queued);
    assert_eq!(w.status(&other[0]).await, EvaluationStatus::Queued);
    // A branch push does not supersede a pull request's evaluation either.
    w.app
        .queue_evaluation(
            project.org_id,
            &project,
            &"c".repeat(40),
            gradient_domain::model::EvaluationTrigger::Webhook,
        )
        .await
        .unwrap();
    assert_eq!(w.status(&branch).await, EvaluationStatus::Aborted);
    assert_eq!(w.status(&again[0]).await, EvaluationStatus::Queued);

    // #12 closed: its running evaluation is aborted, saying why; nothing is queued; #13's goes on.
    let closed = w
        .github("pull_request", &fixture("github_pull_request_closed"))
        .await
        .unwrap();
    assert_eq!(closed, vec![]);
    let aborted = w.app.storage.evaluation(again[0].id).await.unwrap().unwrap();
    assert_eq!(aborted.status, EvaluationStatus::Aborted);
    assert!(
        aborted
            .errors
            .iter()
            .any(|e| e.message.contains("pull request #12 was closed")),
        "{aborted:?}"
    );
    assert_eq!(w.status(&other[0]).await, EvaluationStatus::Queued);
    // Reopened: evaluated again.
    let reopened = w
        .github("pull_request", &with_action("github_pull_request_closed", "reopened"))
        .await
        .unwrap();
    assert_eq!(reopened.len(), 1);
}

#[tokio::test]
async fn a_pull_request_into_another_branch_than_the_projects_queues_nothing() {
    let w = World::new("https://github.com/acme/web.git").await;
    w.change(ProjectChanges {
        branch: Some(Some("release".into())),
        ..ProjectChanges::default()
    })
    .await;
    assert_eq!(
        w.github("pull_request", &fixture("github_pull_request_opened"))
            .await
            .unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn gitea_and_gitlab_pull_requests() {
    let w = World::new("https://git.example.com/acme/web.git").await;
    let body = fixture("gitea_pull_request_synchronized");
    let headers = HookHeaders {
        gitea_event: Some("pull_request".into()),
        gitea_signature: Some(w.sign(&body)),
        ..HookHeaders::default()
    };
    let queued = w.app.receive_webhook("gitea", "acme", &headers, &body).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].commit, "de9f2c7fd25e1b3afad3e85a0bd17d9b100db4b3");
    assert_eq!(queued[0].pull_request.as_ref().unwrap().fetch_ref, "refs/pull/3/head");

    let w = World::new("git@gitlab.example.com:acme/web.git").await;
    let gitlab = |body: Vec<u8>| {
        let headers = HookHeaders {
            gitlab_event: Some("Merge Request Hook".into()),
            gitlab_token: Some(w.secret.clone()),
            ..HookHeaders::default()
        };
        let app = &w.app;
        async move { app.receive_webhook("gitlab", "acme", &headers, &body).await }
    };
    // A fork's merge request: off by default.
    assert_eq!(
        gitlab(fixture("gitlab_merge_request_update_fork")).await.unwrap(),
        vec![]
    );
    w.change(ProjectChanges {
        fork_pull_requests: Some(true),
        ..ProjectChanges::default()
    })
    .await;
    let queued = gitlab(fixture("gitlab_merge_request_update_fork")).await.unwrap();
    assert_eq!(queued.len(), 1);
    let pr = queued[0].pull_request.as_ref().unwrap();
    assert_eq!((pr.number, pr.fork), (7, true));
    assert_eq!(pr.fetch_ref, "refs/merge-requests/7/head");
    assert_eq!(
        gitlab(fixture("gitlab_merge_request_update_labels")).await.unwrap(),
        vec![],
        "a label changes no commit"
    );
    let mut merged: serde_json::Value = serde_json::from_slice(&fixture("gitlab_merge_request_update_labels")).unwrap();
    merged["object_attributes"]["action"] = "merge".into();
    assert_eq!(gitlab(serde_json::to_vec(&merged).unwrap()).await.unwrap(), vec![]);
    assert_eq!(
        w.app.storage.evaluation(queued[0].id).await.unwrap().unwrap().status,
        EvaluationStatus::Aborted,
        "merged: its evaluation is aborted"
    );
}

#[tokio::test]
async fn a_bad_signature_or_payload_is_refused() {
    let w = World::new("https://github.com/acme/web.git").await;
    let body = fixture("github_pull_request_opened");
    let headers = HookHeaders {
        github_event: Some("pull_request".into()),
        hub_signature_256: Some(format!("sha256={}", "0".repeat(64))),
        ..HookHeaders::default()
    };
    let refused = w
        .app
        .receive_webhook("github", "acme", &headers, &body)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "unauthenticated");
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["pull_request"]["head"]["sha"] = "not-a-commit".into();
    let bad = w
        .github("pull_request", &serde_json::to_vec(&v).unwrap())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_payload");
}
