#![allow(clippy::unwrap_used)]
//! The GitHub App over the in-memory storage and a forge the test controls: signed deliveries keep the
//! installations and queue evaluations of every organization's matching projects; statuses of repositories
//! on an installed account go through the App with the installation's token, others through the
//! organization's forge connection; a token GitHub refuses is a failed, retried delivery.

mod common;

use gradient_domain::forge::{Forge, HookHeaders};
use gradient_domain::model::{CommitState, Evaluation, Org, Project};
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget};
use gradient_domain::ports::storage::{Evaluations, Integrations};
use gradient_domain::service::{Caller, GithubAppSettings, Gradient, ServiceError, Settings};
use gradient_ports::storage::MemoryStorage;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Mutex;

type App = Gradient<MemoryStorage, SystemClock>;

const SECRET: &[u8] = b"the-apps-webhook-secret";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Hands out `token-<installation>` (or fails while `refuse` is set) and records the statuses it is sent.
#[derive(Default)]
struct FakeGithub {
    refuse: Mutex<bool>,
    tokens_asked: Mutex<Vec<u64>>,
    sent: Mutex<Vec<(ForgeTarget, CommitState)>>,
}

impl ForgeApi for FakeGithub {
    async fn set_status(
        &self,
        target: &ForgeTarget,
        _commit: &str,
        state: CommitState,
        _target_url: &str,
        _description: &str,
    ) -> Result<(), ForgeError> {
        self.sent.lock().unwrap().push((target.clone(), state));
        Ok(())
    }

    async fn installation_token(&self, installation: u64) -> Result<String, ForgeError> {
        self.tokens_asked.lock().unwrap().push(installation);
        if *self.refuse.lock().unwrap() {
            return Err(ForgeError::Unavailable("HTTP 502".into()));
        }
        Ok(format!("token-{installation}"))
    }
}

fn settings(app: bool) -> Settings {
    Settings {
        github_app: app.then(|| GithubAppSettings {
            app_id: 1234,
            api_url: "https://api.github.com".into(),
            webhook_secret: SECRET.to_vec(),
        }),
        ..Settings::default()
    }
}

struct World {
    app: App,
    caller: Caller,
}

impl World {
    async fn new(settings: Settings) -> World {
        let app = common::app(SystemClock, settings);
        let caller = common::signed_up(&app, "u").await;
        World { app, caller }
    }

    async fn org(&self, name: &str) -> Org {
        common::org(&self.app, &self.caller, name).await
    }

    async fn project(&self, org: &str, name: &str, repository: &str) -> Project {
        common::project(&self.app, &self.caller, org, name, repository).await
    }

    async fn deliver(&self, event: &str, body: &Value) -> Result<Vec<Evaluation>, ServiceError> {
        let body = serde_json::to_vec_pretty(body).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(&body);
        let headers = HookHeaders {
            github_event: Some(event.into()),
            hub_signature_256: Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes()))),
            ..HookHeaders::default()
        };
        self.app.receive_github_app_webhook(&headers, &body).await
    }

    /// Aborts a queued evaluation, which reports `error` on its commit if anything covers its repository.
    async fn abort(&self, e: &Evaluation) {
        self.app.abort_evaluation(&self.caller, e.id, &[]).await.unwrap();
    }

    async fn installation_of(&self, account: &str) -> Option<u64> {
        self.app
            .storage
            .github_installation(account)
            .await
            .unwrap()
            .map(|i| i.id)
    }
}

fn installation(action: &str, id: u64, login: &str) -> Value {
    json!({"action": action, "installation": {"id": id, "account": {"login": login}}})
}

fn push(owner: &str, repo: &str, installation: u64) -> Value {
    json!({
        "ref": "refs/heads/main",
        "after": COMMIT,
        "repository": {
            "owner": {"login": owner, "name": owner},
            "clone_url": format!("https://github.com/{owner}/{repo}.git"),
            "ssh_url": format!("git@github.com:{owner}/{repo}.git"),
            "html_url": format!("https://github.com/{owner}/{repo}"),
            "default_branch": "main"
        },
        "installation": {"id": installation}
    })
}

#[tokio::test]
async fn without_an_app_the_endpoint_is_not_found() {
    let w = World::new(settings(false)).await;
    let e = w.deliver("ping", &json!({})).await.unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
}

#[tokio::test]
async fn only_signed_deliveries_are_read() {
    let w = World::new(settings(true)).await;
    w.org("acme").await;
    w.project("acme", "web", "https://github.com/acme/web").await;
    let body = serde_json::to_vec(&installation("created", 7, "acme")).unwrap();
    let forged = HookHeaders {
        github_event: Some("installation".into()),
        hub_signature_256: Some(format!("sha256={}", "0".repeat(64))),
        ..HookHeaders::default()
    };
    let unsigned = HookHeaders {
        github_event: Some("installation".into()),
        ..HookHeaders::default()
    };
    for headers in [forged, unsigned] {
        let e = w.app.receive_github_app_webhook(&headers, &body).await.unwrap_err();
        assert!(matches!(e, ServiceError::Unauthenticated(_)), "{e:?}");
    }
    assert_eq!(w.installation_of("acme").await, None, "nothing stored");
    let body = serde_json::to_vec(&push("acme", "web", 7)).unwrap();
    let headers = HookHeaders {
        github_event: Some("push".into()),
        hub_signature_256: Some("sha256=bad".into()),
        ..HookHeaders::default()
    };
    let e = w.app.receive_github_app_webhook(&headers, &body).await.unwrap_err();
    assert!(matches!(e, ServiceError::Unauthenticated(_)), "{e:?}");
    assert_eq!(w.installation_of("acme").await, None, "nothing stored");

    // Signed but unreadable: 422, nothing stored.
    match w.deliver("installation", &json!({"action": "created"})).await {
        Err(ServiceError::Invalid { code, .. }) => assert_eq!(code, "invalid_payload"),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.deliver("ping", &json!({"zen": "Keep it simple."})).await.unwrap(), []);
}

#[tokio::test]
async fn installations_are_kept_and_forgotten() {
    let w = World::new(settings(true)).await;
    assert_eq!(
        w.deliver("installation", &installation("created", 7, "Acme"))
            .await
            .unwrap(),
        []
    );
    assert_eq!(w.installation_of("acme").await, Some(7), "kept lowercase");
    w.deliver("installation", &installation("suspend", 7, "acme"))
        .await
        .unwrap();
    assert_eq!(w.installation_of("acme").await, None, "suspended");
    w.deliver("installation", &installation("unsuspend", 7, "acme"))
        .await
        .unwrap();
    assert_eq!(w.installation_of("acme").await, Some(7));
    // Reinstalled: the new id replaces the old one.
    w.deliver("installation", &installation("created", 8, "acme"))
        .await
        .unwrap();
    assert_eq!(w.installation_of("acme").await, Some(8));
    w.deliver("installation_repositories", &installation("added", 9, "other"))
        .await
        .unwrap();
    assert_eq!(w.installation_of("other").await, Some(9));
    w.deliver("installation", &installation("deleted", 8, "acme"))
        .await
        .unwrap();
    assert_eq!(w.installation_of("acme").await, None, "deleted");
    assert_eq!(w.installation_of("other").await, Some(9), "others are kept");
    // A push names its installation too (e.g. one installed while Gradient was down).
    w.deliver("push", &push("Acme", "web", 10)).await.unwrap();
    assert_eq!(w.installation_of("acme").await, Some(10));
}

#[tokio::test]
async fn pushes_queue_evaluations_in_every_organization_and_statuses_go_through_the_app() {
    let w = World::new(settings(true)).await;
    let acme = w.org("acme").await;
    let other = w.org("other").await;
    let web = w.project("acme", "web", "https://github.com/acme/web").await;
    let mirror = w.project("other", "mirror", "git@github.com:Acme/web.git").await;
    w.project("acme", "api", "https://github.com/acme/api").await;
    let elsewhere = w.project("acme", "gitea", "https://git.example.com/acme/web").await;

    w.deliver("installation", &installation("created", 7, "acme"))
        .await
        .unwrap();
    let queued = w.deliver("push", &push("acme", "web", 7)).await.unwrap();
    let mut projects: Vec<_> = queued.iter().map(|e| e.project_id).collect();
    projects.sort();
    let mut wanted = vec![web.id, mirror.id];
    wanted.sort();
    assert_eq!(
        projects, wanted,
        "both organizations' projects on the repository, only them"
    );
    assert!(queued.iter().all(|e| e.commit == COMMIT));
    let stored = w.app.storage.evaluations(web.id, 10).await.unwrap();
    assert_eq!(stored.len(), 1);

    // Tags and deleted branches queue nothing.
    let mut tag = push("acme", "web", 7);
    tag["ref"] = json!("refs/tags/v1");
    assert_eq!(w.deliver("push", &tag).await.unwrap(), []);
    let mut deleted = push("acme", "web", 7);
    deleted["after"] = json!("0".repeat(40));
    assert_eq!(w.deliver("push", &deleted).await.unwrap(), []);

    // Statuses: the App covers acme's GitHub repositories, in any organization, without forge connections.
    let forge = FakeGithub::default();
    for e in &queued {
        w.abort(e).await;
    }
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 2);
    let sent = forge.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    for (target, state) in &sent {
        assert_eq!(target.forge, Forge::GitHub);
        assert_eq!(target.api_url, "https://api.github.com");
        assert_eq!(target.token, "token-7", "the installation's token");
        assert_eq!(*state, CommitState::Error);
    }
    assert_eq!(
        *forge.tokens_asked.lock().unwrap(),
        [7, 7],
        "the adapter caches, not the domain"
    );

    // A repository no installation covers, without a forge connection: no status at all.
    let e = w
        .app
        .queue_evaluation(
            acme.id,
            &elsewhere,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    assert!(w.app.evaluation_statuses(&w.caller, e.id).await.unwrap().is_empty());

    // With a forge connection it goes there, with the connection's token.
    w.app
        .set_forge_connection(&w.caller, "acme", "gitea", "https://git.example.com", "gitea-token")
        .await
        .unwrap();
    let e = w
        .app
        .queue_evaluation(
            acme.id,
            &elsewhere,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 1);
    let (target, _) = forge.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!((target.forge, target.token.as_str()), (Forge::Gitea, "gitea-token"));

    // The App wins over the organization's connection for the repositories it covers.
    let e = w
        .app
        .queue_evaluation(acme.id, &web, COMMIT, gradient_domain::model::EvaluationTrigger::Manual)
        .await
        .unwrap();
    w.abort(&e).await;
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 1);
    let (target, _) = forge.sent.lock().unwrap().last().cloned().unwrap();
    assert_eq!((target.forge, target.token.as_str()), (Forge::GitHub, "token-7"));

    // A token GitHub does not give is a failed attempt, recorded and retried later.
    *forge.refuse.lock().unwrap() = true;
    let e = w
        .app
        .queue_evaluation(
            other.id,
            &mirror,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    let statuses = w.app.evaluation_statuses(&w.caller, e.id).await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].attempts, 1);
    assert!(!statuses[0].delivered);
    let error = statuses[0].last_error.clone().unwrap();
    assert!(
        error.contains("installation on 'acme'") && error.contains("HTTP 502"),
        "{error}"
    );

    // Once the App is uninstalled, acme's repositories are covered by nothing but the connection.
    w.deliver("installation", &installation("deleted", 7, "acme"))
        .await
        .unwrap();
    let e = w
        .app
        .queue_evaluation(
            other.id,
            &mirror,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    assert!(w.app.evaluation_statuses(&w.caller, e.id).await.unwrap().is_empty());
}
