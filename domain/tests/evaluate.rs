#![allow(clippy::unwrap_used)]
//! Evaluating a project on demand (`trigger_evaluation`) and by polling, with the repository read through a
//! Git port the test controls: a given commit, the head of the project's branch, or the head of the
//! repository's default branch, which the evaluation then names so the worker fetches that branch.

mod common;

use gradient_domain::model::{EvaluationTrigger, Project};
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::git::{Git, GitError, RemoteHead};
use gradient_domain::ports::storage::Evaluations;
use gradient_domain::service::{Caller, NewProject, ServiceError, Settings};
use gradient_domain::status::EvaluationStatus;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type App = common::TestApp<SystemClock>;

const REPO: &str = "https://example.com/p.git";
const TRUNK: &str = "1111111111111111111111111111111111111111";
const DEV: &str = "2222222222222222222222222222222222222222";

/// A repository as the test sets it up: its default branch and where its branches point; every question
/// asked is recorded.
#[derive(Clone, Default)]
struct FakeGit {
    default_branch: Option<String>,
    branches: HashMap<String, String>,
    unreachable: bool,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FakeGit {
    fn with_trunk_and_dev() -> Self {
        Self {
            default_branch: Some("trunk".into()),
            branches: HashMap::from([("trunk".into(), TRUNK.into()), ("dev".into(), DEV.into())]),
            ..Self::default()
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Git for FakeGit {
    async fn head(
        &self,
        repository: &str,
        branch: Option<&str>,
        _credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<String>, GitError> {
        self.asked.lock().unwrap().push(format!("head {repository} {branch:?}"));
        if self.unreachable {
            return Err(GitError::Unavailable("connection refused".into()));
        }
        let branch = branch.map(str::to_owned).or_else(|| self.default_branch.clone());
        Ok(branch.and_then(|b| self.branches.get(&b).cloned()))
    }

    async fn remote_head(
        &self,
        repository: &str,
        _credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<RemoteHead>, GitError> {
        self.asked.lock().unwrap().push(format!("remote_head {repository}"));
        if self.unreachable {
            return Err(GitError::Unavailable("connection refused".into()));
        }
        let Some(branch) = &self.default_branch else {
            return Ok(None);
        };
        Ok(self.branches.get(branch).map(|commit| RemoteHead {
            branch: Some(branch.clone()),
            commit: commit.clone(),
        }))
    }
}

/// An app with user `u` owning org `o` and its project `p` (branch `branch`).
async fn setup(branch: Option<&str>) -> (App, Caller, Project) {
    let app = common::app(SystemClock, Settings::default());
    let caller = common::signed_up(&app, "u").await;
    common::org(&app, &caller, "o").await;
    let new = NewProject {
        name: "p".into(),
        repository: REPO.into(),
        branch: branch.map(str::to_owned),
        ..NewProject::default()
    };
    let project = app.create_project(&caller, "o", new).await.unwrap();
    (app, caller, project)
}

fn code(e: &ServiceError) -> &'static str {
    e.code()
}

#[tokio::test]
async fn without_a_commit_the_head_of_the_default_branch_is_evaluated_on_that_branch() {
    let (app, caller, project) = setup(None).await;
    let git = FakeGit::with_trunk_and_dev();
    let e = app.trigger_evaluation(&git, &caller, "o", "p", None).await.unwrap();
    assert_eq!(e.commit, TRUNK);
    assert_eq!(
        e.branch.as_deref(),
        Some("trunk"),
        "the worker fetches the default branch by name"
    );
    assert_eq!(e.trigger, EvaluationTrigger::Manual);
    assert_eq!(e.status, EvaluationStatus::Queued);
    assert_eq!(git.asked(), vec![format!("remote_head {REPO}")]);
    let stored = app.storage.evaluations(project.id, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].commit.as_str(), stored[0].branch.as_deref()),
        (TRUNK, Some("trunk"))
    );
}

#[tokio::test]
async fn without_a_commit_the_head_of_the_projects_branch_is_evaluated() {
    let (app, caller, _) = setup(Some("dev")).await;
    let git = FakeGit::with_trunk_and_dev();
    let e = app.trigger_evaluation(&git, &caller, "o", "p", None).await.unwrap();
    assert_eq!((e.commit.as_str(), e.branch.as_deref()), (DEV, Some("dev")));
    assert_eq!(git.asked(), vec![format!("head {REPO} Some(\"dev\")")]);
}

#[tokio::test]
async fn a_given_commit_is_evaluated_without_asking_the_repository() {
    let (app, caller, _) = setup(Some("dev")).await;
    let git = FakeGit::with_trunk_and_dev();
    let commit = "ABCDEF0123456789abcdef0123456789abcdef01";
    let e = app
        .trigger_evaluation(&git, &caller, "o", "p", Some(commit))
        .await
        .unwrap();
    assert_eq!(e.commit, commit.to_lowercase());
    assert_eq!(e.branch.as_deref(), Some("dev"));
    let (app, caller, _) = setup(None).await;
    let e = app
        .trigger_evaluation(&git, &caller, "o", "p", Some(commit))
        .await
        .unwrap();
    assert_eq!(e.branch, None, "a given commit may be on any branch");
    assert!(git.asked().is_empty(), "{:?}", git.asked());
    let bad = app
        .trigger_evaluation(&git, &caller, "o", "p", Some("abc"))
        .await
        .unwrap_err();
    assert_eq!(code(&bad), "invalid_commit");
}

#[tokio::test]
async fn a_missing_branch_or_an_unreachable_repository_queues_nothing() {
    let (app, caller, project) = setup(Some("gone")).await;
    let git = FakeGit::with_trunk_and_dev();
    let e = app.trigger_evaluation(&git, &caller, "o", "p", None).await.unwrap_err();
    assert_eq!(code(&e), "branch_not_found");
    assert!(e.to_string().contains("gone"), "{e}");

    let (empty_app, empty_caller, _) = setup(None).await;
    let empty = FakeGit::default();
    let e = empty_app
        .trigger_evaluation(&empty, &empty_caller, "o", "p", None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "branch_not_found");

    let down = FakeGit {
        unreachable: true,
        ..FakeGit::with_trunk_and_dev()
    };
    let e = app
        .trigger_evaluation(&down, &caller, "o", "p", None)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "repository_unreachable");
    assert!(matches!(e, ServiceError::Invalid { .. }), "a 422, not a 500: {e:?}");
    assert!(app.storage.evaluations(project.id, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_repository_is_not_asked_for_a_caller_who_may_not_evaluate() {
    let (app, owner, project) = setup(None).await;
    let viewer = common::signed_up(&app, "v").await;
    let git = FakeGit::with_trunk_and_dev();
    let e = app.trigger_evaluation(&git, &viewer, "o", "p", None).await.unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    app.set_member(&owner, "o", "v", "View").await.unwrap();
    let e = app.trigger_evaluation(&git, &viewer, "o", "p", None).await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e:?}");
    assert!(git.asked().is_empty(), "{:?}", git.asked());
    assert!(app.storage.evaluations(project.id, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn polling_a_project_without_a_branch_names_the_default_branch() {
    let (app, _, project) = setup(None).await;
    let git = FakeGit::with_trunk_and_dev();
    let e = app.poll_project(&git, &project).await.unwrap().expect("queued");
    assert_eq!((e.commit.as_str(), e.branch.as_deref()), (TRUNK, Some("trunk")));
    assert_eq!(e.trigger, EvaluationTrigger::Poll);
    assert!(app.poll_project(&git, &project).await.unwrap().is_none(), "same commit");
}
