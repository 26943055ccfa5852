#![allow(clippy::unwrap_used)]
//! The GitHub App over the in-memory storage and a forge the test controls: signed deliveries keep the
//! installations and queue evaluations of the matching projects of the organizations linked to the
//! installation, and of no other; statuses of a linked organization's repositories on an installed account go
//! through the App with the installation's token, others through the organization's forge connection; a token
//! GitHub refuses is a failed, retried delivery. Linking needs `manage_integrations` and GitHub's word, through
//! an OAuth code, that the user administers the installation's account.

mod common;

use gradient_domain::forge::{Forge, HookHeaders};
use gradient_domain::model::{CommitState, Evaluation, Org, Project};
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::forge::{ForgeApi, ForgeError, ForgeTarget, InstallationAccess};
use gradient_domain::ports::storage::{Evaluations, Integrations};
use gradient_domain::service::{Caller, GithubAppSettings, ServiceError, Settings};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;

type App = common::TestApp<SystemClock>;

const SECRET: &[u8] = b"the-apps-webhook-secret";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Hands out `token-<installation>` (or fails while `refuse` is set) and records the statuses it is sent;
/// knows which installations each OAuth code's user can access (`grants`), and refuses other codes.
#[derive(Default)]
struct FakeGithub {
    refuse: Mutex<bool>,
    tokens_asked: Mutex<Vec<u64>>,
    sent: Mutex<Vec<(ForgeTarget, CommitState)>>,
    grants: Mutex<HashMap<String, Vec<(u64, InstallationAccess)>>>,
    codes_asked: Mutex<Vec<String>>,
}

impl FakeGithub {
    /// The user behind `code` can access installation `id` on `account` (an organization when `role` is
    /// given: the user's role in it).
    fn grant(&self, code: &str, user: &str, id: u64, account: &str, role: Option<&str>) {
        let access = InstallationAccess {
            user: user.into(),
            account: account.into(),
            account_is_org: role.is_some(),
            org_role: role.filter(|r| !r.is_empty()).map(Into::into),
        };
        self.grants
            .lock()
            .unwrap()
            .entry(code.into())
            .or_default()
            .push((id, access));
    }
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

    async fn github_installation_access(
        &self,
        code: &str,
        installation: u64,
    ) -> Result<Option<InstallationAccess>, ForgeError> {
        self.codes_asked.lock().unwrap().push(code.into());
        let grants = self.grants.lock().unwrap();
        let Some(list) = grants.get(code) else {
            return Err(ForgeError::Rejected("bad_verification_code".into()));
        };
        Ok(list.iter().find(|(id, _)| *id == installation).map(|(_, a)| a.clone()))
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
        self.app.abort_evaluation(&self.caller, e.id).await.unwrap();
    }

    /// Links installation `id` of `account` (an organization GitHub says the user administers) to `org`.
    async fn link(&self, org: &str, id: u64, account: &str) {
        let github = FakeGithub::default();
        github.grant("c0de", "octocat", id, account, Some("admin"));
        self.app
            .link_github_installation(&github, &self.caller, org, id, "c0de")
            .await
            .unwrap();
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
async fn pushes_queue_evaluations_in_linked_organizations_and_statuses_go_through_the_app() {
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
    // Installed but linked to no organization: the App acts for nobody.
    assert_eq!(w.deliver("push", &push("acme", "web", 7)).await.unwrap(), []);
    assert!(w.app.storage.evaluations(web.id, 10).await.unwrap().is_empty());
    assert!(w.app.storage.evaluations(mirror.id, 10).await.unwrap().is_empty());

    w.link("acme", 7, "acme").await;
    w.link("other", 7, "acme").await;
    let queued = w.deliver("push", &push("acme", "web", 7)).await.unwrap();
    let mut projects: Vec<_> = queued.iter().map(|e| e.project_id).collect();
    projects.sort();
    let mut wanted = vec![web.id, mirror.id];
    wanted.sort();
    assert_eq!(
        projects, wanted,
        "both linked organizations' projects on the repository, only them"
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

/// Someone else's organization naming acme's repository, with failing attributes or overridden inputs of its
/// choice, gets no evaluation from the App's pushes and no status on acme's commits; unlinking acme stops the
/// App for acme too.
#[tokio::test]
async fn an_unlinked_organization_gets_nothing_through_the_app_and_unlinking_stops_it() {
    let w = World::new(settings(true)).await;
    w.org("acme").await;
    let web = w.project("acme", "web", "https://github.com/acme/web").await;
    let mallory = common::signed_up(&w.app, "mallory").await;
    let evil = common::org(&w.app, &mallory, "evil").await;
    let squat = common::project(&w.app, &mallory, "evil", "squat", "https://github.com/acme/web").await;
    w.deliver("installation", &installation("created", 7, "acme"))
        .await
        .unwrap();
    w.link("acme", 7, "acme").await;

    let queued = w.deliver("push", &push("acme", "web", 7)).await.unwrap();
    assert_eq!(
        queued.iter().map(|e| e.project_id).collect::<Vec<_>>(),
        [web.id],
        "only the linked organization's project"
    );
    assert!(w.app.storage.evaluations(squat.id, 10).await.unwrap().is_empty());

    // An evaluation mallory queues herself reports nothing through the App: no status is even queued.
    let e = w
        .app
        .queue_evaluation(
            evil.id,
            &squat,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.app.abort_evaluation(&mallory, e.id).await.unwrap();
    assert!(w.app.evaluation_statuses(&mallory, e.id).await.unwrap().is_empty());
    let forge = FakeGithub::default();
    w.abort(&queued[0]).await;
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 1, "acme's only");
    let sent = forge.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.token, "token-7");
    assert_eq!(
        *forge.tokens_asked.lock().unwrap(),
        [7],
        "no token for mallory's project"
    );

    // A status queued while linked and delivered after unlinking does not go through the App either.
    let e = w
        .app
        .queue_evaluation(
            acme_id(&w).await,
            &web,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    w.app.unlink_github_installation(&w.caller, "acme", 7).await.unwrap();
    assert_eq!(w.app.deliver_due_statuses(&forge, 10).await.unwrap(), 0);
    let statuses = w.app.evaluation_statuses(&w.caller, e.id).await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert!(!statuses[0].delivered);
    assert!(
        statuses[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no forge connection"),
        "{statuses:?}"
    );
    assert_eq!(*forge.tokens_asked.lock().unwrap(), [7], "no token after unlinking");

    // Unlinked: pushes queue nothing, new evaluations report nothing.
    assert_eq!(w.deliver("push", &push("acme", "web", 7)).await.unwrap(), []);
    let e = w
        .app
        .queue_evaluation(
            acme_id(&w).await,
            &web,
            COMMIT,
            gradient_domain::model::EvaluationTrigger::Manual,
        )
        .await
        .unwrap();
    w.abort(&e).await;
    assert!(w.app.evaluation_statuses(&w.caller, e.id).await.unwrap().is_empty());
    // A push naming no installation acts for nobody.
    w.link("acme", 7, "acme").await;
    let mut anonymous = push("acme", "web", 7);
    anonymous.as_object_mut().unwrap().remove("installation");
    assert_eq!(w.deliver("push", &anonymous).await.unwrap(), []);
    // A push from another installation does not act for acme's link to 7.
    assert_eq!(w.deliver("push", &push("acme", "web", 8)).await.unwrap(), []);
}

async fn acme_id(w: &World) -> gradient_domain::OrgId {
    w.app.visible_org(&w.caller, "acme").await.unwrap().id
}

fn code_of(e: &ServiceError) -> &'static str {
    e.code()
}

#[tokio::test]
async fn linking_needs_manage_integrations_and_githubs_word_that_the_user_administers_the_account() {
    let w = World::new(settings(true)).await;
    w.org("acme").await;
    let viewer = common::signed_up(&w.app, "viewer").await;
    w.app.set_member(&w.caller, "acme", "viewer", "View").await.unwrap();
    let github = FakeGithub::default();
    github.grant("admin-code", "alice", 7, "acme", Some("admin"));
    github.grant("member-code", "bob", 7, "acme", Some("member"));
    github.grant("left-code", "carol", 7, "acme", Some(""));
    github.grant("own-code", "dave", 9, "dave", None);
    github.grant("collaborator-code", "erin", 9, "dave", None);

    // Without manage_integrations: 403, and GitHub is not even asked.
    let e = w
        .app
        .link_github_installation(&github, &viewer, "acme", 7, "admin-code")
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e:?}");
    let outsider = common::signed_up(&w.app, "outsider").await;
    let e = w
        .app
        .link_github_installation(&github, &outsider, "acme", 7, "admin-code")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::NotFound(_)),
        "a private org is not found: {e:?}"
    );
    assert!(github.codes_asked.lock().unwrap().is_empty());

    // Malformed values and codes GitHub refuses: 422.
    for (id, code, wanted) in [
        (0, "admin-code", "invalid_installation"),
        (u64::MAX, "admin-code", "invalid_installation"),
        (7, "", "invalid_code"),
        (7, "a b<script>", "invalid_code"),
        (7, "expired-code", "code_refused"),
    ] {
        let e = w
            .app
            .link_github_installation(&github, &w.caller, "acme", id, code)
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), wanted, "{id} {code}: {e:?}");
    }

    // GitHub's word decides: an installation the user cannot see, a member, a former member, a collaborator
    // of someone's personal account: 403, nothing linked.
    for (id, code) in [
        (8, "admin-code"),
        (7, "member-code"),
        (7, "left-code"),
        (9, "collaborator-code"),
    ] {
        let e = w
            .app
            .link_github_installation(&github, &w.caller, "acme", id, code)
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Forbidden(_)), "{id} {code}: {e:?}");
    }
    assert!(
        w.app
            .github_installation_links_of(&w.caller, "acme")
            .await
            .unwrap()
            .is_empty()
    );

    // An admin of the organization, the owner of a personal account: linked.
    let link = w
        .app
        .link_github_installation(&github, &w.caller, "acme", 7, "admin-code")
        .await
        .unwrap();
    assert_eq!(
        (link.installation_id, link.account.as_str(), link.linked_by.as_str()),
        (7, "acme", "alice")
    );
    w.app
        .link_github_installation(&github, &w.caller, "acme", 9, " own-code ")
        .await
        .unwrap();
    let links = w.app.github_installation_links_of(&w.caller, "acme").await.unwrap();
    let mut listed: Vec<_> = links.iter().map(|l| (l.installation_id, l.account.as_str())).collect();
    listed.sort();
    assert_eq!(listed, [(7, "acme"), (9, "dave")]);

    // Listing and unlinking need the permission too; unlinking what is not linked is 404.
    let e = w.app.github_installation_links_of(&viewer, "acme").await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e:?}");
    let e = w.app.unlink_github_installation(&viewer, "acme", 7).await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e:?}");
    w.app.unlink_github_installation(&w.caller, "acme", 9).await.unwrap();
    let e = w
        .app
        .unlink_github_installation(&w.caller, "acme", 9)
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
    let links = w.app.github_installation_links_of(&w.caller, "acme").await.unwrap();
    assert_eq!(links.iter().map(|l| l.installation_id).collect::<Vec<_>>(), [7]);

    // Without an App there is nothing to link.
    let bare = World::new(settings(false)).await;
    bare.org("acme").await;
    let e = bare
        .app
        .link_github_installation(&github, &bare.caller, "acme", 7, "admin-code")
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
}

#[tokio::test]
async fn pull_requests_delivered_by_the_app_evaluate_only_in_linked_organizations() {
    let w = World::new(settings(true)).await;
    w.org("acme").await;
    w.org("other").await;
    w.project("acme", "web", "https://github.com/acme/web").await;
    w.project("other", "web", "https://github.com/acme/web").await;
    w.link("acme", 7, "acme").await;
    let fixture = |name: &str| -> Value {
        let path = format!("{}/tests/fixtures/forge/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        v["installation"] = json!({"id": 7, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNw=="});
        v
    };
    let queued = w
        .deliver("pull_request", &fixture("github_pull_request_opened"))
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "only the linked organization's project");
    let pr = queued[0].pull_request.as_ref().unwrap();
    assert_eq!((pr.number, pr.fork), (12, false));
    assert_eq!(pr.fetch_ref, "refs/pull/12/head");
    // A fork's pull request: off by default, in the linked organization too.
    let fork = w
        .deliver("pull_request", &fixture("github_pull_request_synchronize_fork"))
        .await
        .unwrap();
    assert_eq!(fork, []);
    // Closed: the running evaluation is aborted.
    assert_eq!(
        w.deliver("pull_request", &fixture("github_pull_request_closed"))
            .await
            .unwrap(),
        []
    );
    let e = w.app.storage.evaluation(queued[0].id).await.unwrap().unwrap();
    assert_eq!(e.status, gradient_domain::status::EvaluationStatus::Aborted);
    // Labels: nothing.
    assert_eq!(
        w.deliver("pull_request", &fixture("github_pull_request_labeled"))
            .await
            .unwrap(),
        []
    );
}

/// The fake's installation tokens, as the server hands the forge adapter's to the use cases.
struct Tokens(std::sync::Arc<FakeGithub>);

impl gradient_domain::ports::forge::InstallationTokens for Tokens {
    fn repository_token(&self, installation: u64) -> gradient_domain::ports::forge::TokenAnswer<'_> {
        Box::pin(self.0.installation_token(installation))
    }
}

/// A repository at `COMMIT` on `main`; records the credential of every question.
#[derive(Default)]
struct SeenGit(Mutex<Vec<Option<gradient_domain::deploy_key::RepositoryCredential>>>);

impl gradient_domain::ports::git::Git for SeenGit {
    async fn head(
        &self,
        _: &str,
        _: Option<&str>,
        credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<String>, gradient_domain::ports::git::GitError> {
        self.0.lock().unwrap().push(credential.cloned());
        Ok(Some(COMMIT.into()))
    }

    async fn remote_head(
        &self,
        _: &str,
        credential: Option<&gradient_domain::deploy_key::RepositoryCredential>,
    ) -> Result<Option<gradient_domain::ports::git::RemoteHead>, gradient_domain::ports::git::GitError> {
        self.0.lock().unwrap().push(credential.cloned());
        Ok(Some(gradient_domain::ports::git::RemoteHead {
            branch: Some("main".into()),
            commit: COMMIT.into(),
        }))
    }
}

#[tokio::test]
async fn https_repositories_the_app_covers_for_a_linked_organization_are_read_with_an_installation_token() {
    use gradient_domain::deploy_key::RepositoryCredential;
    let github = std::sync::Arc::new(FakeGithub::default());
    let t = common::app(SystemClock, settings(true));
    let app = common::TestApp {
        app: t.app.fetching_with(std::sync::Arc::new(Tokens(github.clone()))),
        ..t
    };
    let caller = common::signed_up(&app, "u").await;
    let w = World { app, caller };
    w.org("acme").await;
    w.org("other").await;
    w.deliver("installation", &installation("created", 7, "acme"))
        .await
        .unwrap();
    w.link("acme", 7, "acme").await;
    w.project("acme", "web", "https://github.com/acme/web").await;
    w.project("acme", "elsewhere", "https://git.example.com/acme/web").await;
    w.project("other", "web", "https://github.com/acme/web").await;
    let git = SeenGit::default();
    for (org, project) in [("acme", "web"), ("acme", "elsewhere"), ("other", "web")] {
        w.app
            .trigger_evaluation(&git, &w.caller, org, project, None)
            .await
            .unwrap();
    }
    assert_eq!(
        *git.0.lock().unwrap(),
        [
            Some(RepositoryCredential::HttpsToken {
                token: "token-7".into()
            }),
            None,
            None
        ],
        "the linked organization's covered repository only"
    );
    // A token GitHub does not give: read without one (a public repository still works), nothing fails.
    *github.refuse.lock().unwrap() = true;
    let git = SeenGit::default();
    w.app
        .trigger_evaluation(&git, &w.caller, "acme", "web", None)
        .await
        .unwrap();
    assert_eq!(*git.0.lock().unwrap(), [None]);
}
