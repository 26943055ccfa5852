#![allow(clippy::unwrap_used)]
//! Declarative state on the in-memory storage: a document is planned and applied in one go, applying it again
//! changes nothing, what it manages refuses the API's changes, and what leaves it is unmanaged or deleted.

mod common;

use common::ManualClock;
use gradient_domain::ports::storage::{Declared, Users};
use gradient_domain::reach::NetworkPolicy;
use gradient_domain::service::{Caller, OrgChanges, ProjectChanges, Settings};
use gradient_domain::state::{Action, Document, Plan, Secrets};
use gradient_domain::{Name, WorkerId};

type App = common::TestApp<ManualClock>;

const WORKER: &str = "550e8400-e29b-41d4-a716-446655440001";
const KEY: &str = "GRADabcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN: &str = "c2VjcmV0LXRva2VuLW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmch";

fn secrets() -> Secrets {
    let mut s = Secrets::new();
    s.insert("/s/alice", "correct horse battery\n");
    s.insert("/s/key", &format!("{KEY}\n"));
    s.insert("/s/key-bob", "GRADbobs-own-key-0123456789abcdefghijklmnopq");
    s.insert("/s/worker", TOKEN);
    s.insert("/s/hook", "hook-secret");
    s.insert("/s/forge", "forge-token");
    s
}

fn sample(repository: &str, with_cache: bool, delete_state: bool) -> String {
    let cache = if with_cache {
        r#""scratch": {"created_by": "alice"},"#
    } else {
        ""
    };
    format!(
        r#"{{
  "delete_state": {delete_state},
  "users": {{
    "alice": {{"name": "Alice", "email": "alice@example.com", "password_file": "/s/alice"}},
    "ci-bot": {{"email": "ci@example.com"}}
  }},
  "organizations": {{
    "acme": {{"created_by": "alice", "members": {{"ci-bot": "releaser"}}, "push_cache": "main"}}
  }},
  "roles": {{"releaser": {{"organization": "acme", "permissions": ["view_org", "trigger_evaluation"]}}}},
  "projects": {{
    "web": {{"organization": "acme", "repository": "{repository}", "created_by": "alice",
             "flake_input_overrides": {{"nixpkgs": {{"url": "github:NixOS/nixpkgs/nixos-unstable"}}}}}}
  }},
  "caches": {{
    {cache}
    "main": {{"created_by": "alice", "public": true, "organizations": ["acme"]}}
  }},
  "api_keys": {{"ci": {{"key_file": "/s/key", "owned_by": "ci-bot", "permissions": ["view_org"], "organization": "acme"}}}},
  "workers": {{"builder": {{"worker_id": "{WORKER}", "organizations": ["acme"], "token_file": "/s/worker"}}}},
  "integrations": {{
    "hooks": {{"organization": "acme", "kind": "inbound", "forge_type": "gitea", "secret_file": "/s/hook"}},
    "statuses": {{"organization": "acme", "kind": "outbound", "forge_type": "gitea",
                  "endpoint_url": "https://gitea.example.com", "access_token_file": "/s/forge"}}
  }}
}}"#
    )
}

fn doc(json: &str) -> Document {
    Document::parse(json, &NetworkPolicy::default()).unwrap()
}

async fn apply(app: &App, json: &str) -> Plan {
    app.apply_state(&doc(json), &secrets()).await.unwrap()
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.changes.iter().map(ToString::to_string).collect()
}

async fn alice(app: &App) -> Caller {
    let token = app.login("alice", "correct horse battery").await.unwrap();
    app.authenticate(Some(&token)).await.unwrap()
}

fn app() -> App {
    common::app(ManualClock::new(), Settings::default())
}

#[tokio::test]
async fn a_document_is_applied_once_and_then_changes_nothing() {
    let app = app();
    let plan = apply(&app, &sample("https://example.com/web.git", true, false)).await;
    assert_eq!(
        lines(&plan),
        [
            "create user alice",
            "create user ci-bot",
            "create organization acme",
            "create role acme/releaser",
            "create project acme/web",
            "create cache main",
            "create cache scratch",
            "create api key ci-bot/ci",
            &format!("create worker acme/{WORKER}"),
            "create integration acme/inbound",
            "create integration acme/outbound",
        ]
    );
    assert_eq!(
        plan.summary(),
        "plan: 11 to create, 0 to update, 0 to delete, 0 to unmanage"
    );

    let again = apply(&app, &sample("https://example.com/web.git", true, false)).await;
    assert!(again.is_empty(), "{again}");
    assert!(again.writes.is_empty());
    assert_eq!(again.summary(), "plan: no changes");

    // Everything is there, managed, as declared.
    let alice = alice(&app).await;
    let org = app.visible_org(&alice, "acme").await.unwrap();
    assert!(org.managed);
    let members: Vec<(String, String)> = app
        .members(&alice, "acme")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.username.to_string(), m.role_name))
        .collect();
    assert_eq!(
        members,
        [("alice".into(), "Admin".into()), ("ci-bot".into(), "releaser".into())]
    );
    let project = app.project(&alice, "acme", "web").await.unwrap();
    assert!(project.managed);
    assert_eq!(project.flake_input_overrides.len(), 1);
    let main = app.cache(&alice, "main").await.unwrap();
    assert!(main.managed && main.public);
    assert_eq!(
        app.push_cache(&alice, "acme")
            .await
            .unwrap()
            .map(|c| c.name.to_string()),
        Some("main".into())
    );
    let workers = app.worker_registrations(&alice, "acme").await.unwrap();
    assert_eq!(workers.len(), 1);
    assert!(workers[0].managed);
    assert_eq!(
        workers[0].worker_id,
        gradient_domain::service::parse_worker_id(WORKER).unwrap()
    );
    let forge = app.forge_connection_of(&alice, "acme").await.unwrap().unwrap();
    assert!(forge.managed);
    assert_eq!(forge.api_url, "https://gitea.example.com");

    // The key file's token is the bot's key, pinned to acme.
    let bot = app.authenticate(Some(KEY)).await.unwrap();
    assert_eq!(bot.user().unwrap().username.as_str(), "ci-bot");
    assert!(bot.scope().unwrap().organization.is_some());
    // A user without a password file cannot log in with a password.
    assert!(app.login("ci-bot", "").await.is_err());
    assert!(app.login("ci@example.com", "anything-at-all").await.is_err());
}

#[tokio::test]
async fn the_api_refuses_to_change_what_the_state_manages() {
    let app = app();
    apply(&app, &sample("https://example.com/web.git", true, false)).await;
    let alice = alice(&app).await;
    let managed = |r: Result<_, gradient_domain::service::ServiceError>| match r {
        Err(e) => {
            assert_eq!(e.code(), "managed", "{e}");
            assert!(
                matches!(e, gradient_domain::service::ServiceError::Conflict { .. }),
                "409: {e}"
            );
        }
        Ok(_) => panic!("a managed entity was changed"),
    };
    managed(
        app.update_org(
            &alice,
            "acme",
            OrgChanges {
                public: Some(true),
                ..OrgChanges::default()
            },
        )
        .await
        .map(|_| ()),
    );
    managed(app.delete_org(&alice, "acme").await.map(|_| ()));
    managed(app.set_member(&alice, "acme", "ci-bot", "Admin").await.map(|_| ()));
    managed(app.remove_member(&alice, "acme", "ci-bot").await);
    managed(app.delete_role(&alice, "acme", "releaser").await);
    managed(
        app.update_project(
            &alice,
            "acme",
            "web",
            ProjectChanges {
                active: Some(false),
                ..ProjectChanges::default()
            },
        )
        .await
        .map(|_| ()),
    );
    managed(app.delete_project(&alice, "acme", "web").await);
    managed(app.delete_cache(&alice, "main").await);
    managed(app.clear_push_cache(&alice, "acme").await);
    // Nor through the subscription: removing the declared grant (and push cache), or granting the managed cache
    // to an organization the document does not list.
    managed(app.unsubscribe(&alice, "acme", "main").await);
    app.create_org(
        &alice,
        gradient_domain::service::NewOrg {
            name: "extra".into(),
            display_name: None,
            description: None,
            public: false,
        },
    )
    .await
    .unwrap();
    managed(app.subscribe(&alice, "extra", "main").await.map(|_| ()));
    let peer = app.worker_registrations(&alice, "acme").await.unwrap()[0].peer_id;
    managed(
        app.delete_worker_registration(&alice, "acme", &peer.to_string())
            .await
            .map(|_| ()),
    );
    managed(app.create_webhook_secret(&alice, "acme").await.map(|_| ()));
    managed(
        app.set_forge_connection(&alice, "acme", "gitea", "https://gitea.example.com", "other")
            .await
            .map(|_| ()),
    );
    let bot_session = {
        let mut s = secrets();
        s.insert("/s/bot", "bot password 123");
        let json = sample("https://example.com/web.git", true, false).replace(
            r#""ci-bot": {"email": "ci@example.com"}"#,
            r#""ci-bot": {"email": "ci@example.com", "password_file": "/s/bot"}"#,
        );
        app.apply_state(&doc(&json), &s).await.unwrap();
        let t = app.login("ci-bot", "bot password 123").await.unwrap();
        app.authenticate(Some(&t)).await.unwrap()
    };
    let key = app.api_keys(&bot_session).await.unwrap()[0].id;
    managed(app.delete_api_key(&bot_session, key).await);
}

#[tokio::test]
async fn an_edited_document_updates_in_place() {
    let app = app();
    apply(&app, &sample("https://example.com/web.git", true, false)).await;
    let before = app.storage.managed_entities().await.unwrap();
    let plan = apply(&app, &sample("https://example.com/other.git", true, false)).await;
    assert_eq!(lines(&plan), ["update project acme/web: repository"]);
    let alice = alice(&app).await;
    let project = app.project(&alice, "acme", "web").await.unwrap();
    assert_eq!(project.repository, "https://example.com/other.git");
    assert_eq!(project.id, before.projects[0].id, "the same project, updated");

    // A new password file content is a new password; the old one no longer works.
    let mut s = secrets();
    s.insert("/s/alice", "a new password!");
    let plan = app
        .apply_state(&doc(&sample("https://example.com/other.git", true, false)), &s)
        .await
        .unwrap();
    assert_eq!(lines(&plan), ["update user alice: password_file"]);
    assert!(app.login("alice", "correct horse battery").await.is_err());
    assert!(app.login("alice", "a new password!").await.is_ok());
}

#[tokio::test]
async fn what_leaves_the_document_is_unmanaged_or_with_delete_state_deleted() {
    let app = app();
    apply(&app, &sample("https://example.com/web.git", true, false)).await;
    let plan = apply(&app, &sample("https://example.com/web.git", false, false)).await;
    assert_eq!(lines(&plan), ["unmanage cache scratch"]);
    let alice = alice(&app).await;
    let scratch = app.cache(&alice, "scratch").await.unwrap();
    assert!(!scratch.managed);
    // Unmanaged, the API may change it again.
    app.delete_cache(&alice, "scratch").await.unwrap();

    // Adopted again, then deleted with delete_state.
    let plan = apply(&app, &sample("https://example.com/web.git", true, false)).await;
    assert_eq!(lines(&plan), ["create cache scratch"]);
    let plan = apply(&app, &sample("https://example.com/web.git", false, true)).await;
    assert_eq!(lines(&plan), ["delete cache scratch"]);
    assert!(app.cache(&alice, "scratch").await.is_err());

    // Everything leaves: deleted in an order that works (keys, workers, integrations, projects, roles, caches,
    // organizations, users).
    let plan = apply(&app, r#"{"delete_state": true}"#).await;
    assert_eq!(plan.count(Action::Delete), 10, "{plan}");
    assert!(app.storage.managed_entities().await.unwrap() == Default::default());
    assert!(app.login("alice", "correct horse battery").await.is_err());
}

#[tokio::test]
async fn an_invalid_document_changes_nothing() {
    let app = app();
    apply(&app, &sample("https://example.com/web.git", true, false)).await;
    // A reference to nothing: refused with the entry and field named, before anything is written.
    let bad = sample("https://example.com/changed.git", true, false)
        .replace(r#""owned_by": "ci-bot""#, r#""owned_by": "nobody""#);
    let e = app.apply_state(&doc(&bad), &secrets()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "api_keys.ci.owned_by: no user 'nobody' in the document or the database"
    );
    let alice = alice(&app).await;
    assert_eq!(
        app.project(&alice, "acme", "web").await.unwrap().repository,
        "https://example.com/web.git"
    );

    // A token another key (kept, unmanaged) already is.
    let moved =
        sample("https://example.com/web.git", true, false).replace(r#""owned_by": "ci-bot""#, r#""owned_by": "alice""#);
    let e = app.apply_state(&doc(&moved), &secrets()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "api_keys.ci.key_file: holds the token of another API key ('ci'); give each key its own"
    );

    // A secret that is not what its field needs.
    let mut s = secrets();
    s.insert("/s/key", "not-a-key");
    let e = app
        .apply_state(&doc(&sample("https://example.com/changed.git", true, false)), &s)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("api_keys.ci.key_file: must hold the whole token"),
        "{e}"
    );
    assert_eq!(
        app.project(&alice, "acme", "web").await.unwrap().repository,
        "https://example.com/web.git"
    );

    // A write that fails half-way (a user still recorded as the creator of an organization the API made)
    // rolls back everything before it.
    common::signed_up(&app, "bob").await;
    let json = sample("https://example.com/changed.git", true, true)
        .replace(
            r#""ci-bot": {"email": "ci@example.com"}"#,
            r#""bob": {"email": "bob@example.com"}"#,
        )
        .replace(r#"{"ci-bot": "releaser"}"#, r#"{"bob": "releaser"}"#)
        .replace(r#""owned_by": "ci-bot""#, r#""owned_by": "bob""#);
    apply(&app, &json).await;
    let bob = {
        let t = app.login("bob", "password123").await;
        assert!(t.is_err(), "bob is managed now, without a password file");
        let bob = app
            .storage
            .user_by_username(&Name::parse("bob").unwrap())
            .await
            .unwrap()
            .unwrap();
        Caller::Session {
            user: bob,
            session: gradient_domain::SessionId::new(),
        }
    };
    common::org(&app, &bob, "bobs").await;
    let gone = json
        .replace(",\n    \"bob\": {\"email\": \"bob@example.com\"}", "")
        .replace(r#"{"bob": "releaser"}"#, "{}")
        .replace(
            r#""ci": {"key_file": "/s/key", "owned_by": "bob", "permissions": ["view_org"], "organization": "acme"}"#,
            "",
        );
    let e = app.apply_state(&doc(&gone), &secrets()).await.unwrap_err();
    assert!(e.to_string().starts_with("database: nothing was changed"), "{e}");
    assert_eq!(
        app.project(&alice, "acme", "web").await.unwrap().repository,
        "https://example.com/changed.git"
    );
    let members = app.members(&alice, "acme").await.unwrap();
    assert!(
        members.iter().any(|m| m.username.as_str() == "bob"),
        "the membership removal was rolled back"
    );
}

#[tokio::test]
async fn an_existing_entity_is_adopted_and_its_worker_id_is_checked() {
    let app = app();
    let bob = common::signed_up(&app, "bob").await;
    common::org(&app, &bob, "legacy").await;
    let plan = apply(
        &app,
        r#"{"organizations": {"legacy": {"created_by": "bob", "description": "now declared"}}}"#,
    )
    .await;
    assert_eq!(lines(&plan), ["update organization legacy: description, managed"]);
    assert!(app.visible_org(&bob, "legacy").await.unwrap().managed);

    let local = WorkerId::new();
    let settings = Settings {
        local_worker: Some(gradient_domain::service::LocalWorker {
            id: local,
            proof_key: [0; 32],
        }),
        ..Settings::default()
    };
    let app = common::app(ManualClock::new(), settings);
    let bob = common::signed_up(&app, "bob").await;
    let json = format!(
        r#"{{"organizations": {{"o": {{"created_by": "bob"}}}},
             "workers": {{"w": {{"worker_id": "{}", "organizations": ["o"], "token_file": "/s/worker"}}}}}}"#,
        local.0
    );
    let e = app.apply_state(&doc(&json), &secrets()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "workers.w.worker_id: is this server's own worker's id; choose another"
    );
    // An organization the state creates gets the co-located worker's registration, as one the API creates.
    let plan = apply(&app, r#"{"organizations": {"o": {"created_by": "bob"}}}"#).await;
    assert_eq!(lines(&plan), ["create organization o"]);
    let workers = app.worker_registrations(&bob, "o").await.unwrap();
    let found: Vec<_> = workers.iter().map(|w| (w.worker_id, w.managed)).collect();
    assert_eq!(found, [(local, false)]);
    assert!(
        apply(&app, r#"{"organizations": {"o": {"created_by": "bob"}}}"#)
            .await
            .is_empty()
    );
}

/// A document made of optional parts whose references always resolve.
#[derive(Clone, Debug)]
struct Shape {
    bob: bool,
    beta: bool,
    role: bool,
    project: Option<bool>,
    cache: Option<(bool, bool)>,
    key: bool,
    worker: Option<bool>,
    inbound: bool,
    outbound: bool,
    delete_state: bool,
}

impl Shape {
    fn json(&self) -> (String, usize) {
        let mut declared = 2; // alice, acme
        let mut users = serde_json::json!({"alice": {"email": "alice@example.com"}});
        let mut acme_members = serde_json::json!({});
        if self.bob {
            users["bob"] = serde_json::json!({"email": "bob@example.com"});
            acme_members["bob"] = serde_json::json!(if self.role { "releaser" } else { "View" });
            declared += 1;
        }
        let mut orgs = serde_json::json!({"acme": {"created_by": "alice", "members": acme_members}});
        if self.beta {
            orgs["beta"] = serde_json::json!({"created_by": "alice", "public": true});
            declared += 1;
        }
        let mut roles = serde_json::json!({});
        if self.role {
            roles["releaser"] = serde_json::json!({"organization": "acme", "permissions": ["view_org"]});
            declared += 1;
        }
        let mut projects = serde_json::json!({});
        if let Some(other) = self.project {
            let repo = if other {
                "https://example.com/b.git"
            } else {
                "https://example.com/a.git"
            };
            projects["web"] = serde_json::json!({"organization": "acme", "repository": repo, "created_by": "alice"});
            declared += 1;
        }
        let mut caches = serde_json::json!({});
        if let Some((grant_beta, push)) = self.cache {
            let mut granted = vec!["acme"];
            if grant_beta && self.beta {
                granted.push("beta");
            }
            caches["main"] = serde_json::json!({"created_by": "alice", "organizations": granted});
            if push {
                orgs["acme"]["push_cache"] = serde_json::json!("main");
            }
            declared += 1;
        }
        let mut keys = serde_json::json!({});
        if self.key {
            let (owner, file) = if self.bob {
                ("bob", "/s/key-bob")
            } else {
                ("alice", "/s/key")
            };
            keys["ci"] = serde_json::json!({"key_file": file, "owned_by": owner});
            declared += 1;
        }
        let mut workers = serde_json::json!({});
        if let Some(both) = self.worker {
            let mut in_orgs = vec!["acme"];
            if both && self.beta {
                in_orgs.push("beta");
            }
            declared += in_orgs.len();
            workers["w"] =
                serde_json::json!({"worker_id": WORKER, "organizations": in_orgs, "token_file": "/s/worker"});
        }
        let mut integrations = serde_json::json!({});
        if self.inbound {
            integrations["in"] =
                serde_json::json!({"organization": "acme", "kind": "inbound", "secret_file": "/s/hook"});
            declared += 1;
        }
        if self.outbound {
            integrations["out"] = serde_json::json!({"organization": "acme", "kind": "outbound", "forge_type": "gitlab",
                "endpoint_url": "https://gitlab.example.com", "access_token_file": "/s/forge"});
            declared += 1;
        }
        let doc = serde_json::json!({
            "delete_state": self.delete_state, "users": users, "organizations": orgs, "roles": roles,
            "projects": projects, "caches": caches, "api_keys": keys, "workers": workers,
            "integrations": integrations,
        });
        (doc.to_string(), declared)
    }
}

fn shapes() -> impl proptest::strategy::Strategy<Value = Shape> {
    use proptest::prelude::*;
    (
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<bool>()),
        ),
        (
            proptest::option::of((any::<bool>(), any::<bool>())),
            any::<bool>(),
            proptest::option::of(any::<bool>()),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((bob, beta, role, project), (cache, key, worker), (inbound, outbound, delete_state))| Shape {
                bob,
                beta,
                role,
                project,
                cache,
                key,
                worker,
                inbound,
                outbound,
                delete_state,
            },
        )
}

fn count_managed(m: &gradient_domain::ports::storage::ManagedEntities) -> usize {
    m.users.len()
        + m.orgs.len()
        + m.roles.len()
        + m.projects.len()
        + m.caches.len()
        + m.api_keys.len()
        + m.workers.len()
        + m.webhook_secrets.len()
        + m.forge_connections.len()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Whatever documents follow each other: each applies, applying it again plans nothing, and with
    /// `delete_state` exactly what it declares is managed (without it, at least that).
    #[test]
    fn any_sequence_of_documents_applies_and_is_then_stable(steps in proptest::collection::vec(shapes(), 1..4)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let app = app();
            for shape in &steps {
                let (json, declared) = shape.json();
                apply(&app, &json).await;
                let again = apply(&app, &json).await;
                assert!(again.is_empty(), "{shape:?} planned again:\n{again}");
                let managed = count_managed(&app.storage.managed_entities().await.unwrap());
                if shape.delete_state {
                    assert_eq!(managed, declared, "{shape:?}");
                } else {
                    assert!(managed >= declared, "{shape:?}: {managed} < {declared}");
                }
            }
        });
    }
}

#[tokio::test]
async fn applying_a_document_is_recorded_in_the_audit_logs_of_its_organizations() {
    use gradient_domain::model::{AuditAction, AuditVia};
    use gradient_domain::ports::storage::{Audit, Orgs};
    let app = app();
    apply(&app, &sample("https://example.com/web.git", true, false)).await;
    apply(&app, &sample("https://example.com/other.git", true, false)).await;
    let acme = app
        .storage
        .org_by_name(&Name::parse("acme").unwrap())
        .await
        .unwrap()
        .unwrap();
    let log = app.storage.audit_log(acme.id, None, 100).await.unwrap();
    assert!(
        log.iter().all(|e| e.via == AuditVia::State
            && e.actor == "state"
            && e.actor_id.is_none()
            && e.action == AuditAction::StateApplied),
        "{log:?}"
    );
    let lines: Vec<String> = log.iter().map(|e| format!("{}: {}", e.target, e.detail)).collect();
    assert_eq!(
        lines,
        [
            "project 'acme/web': update: repository".to_owned(),
            "integration 'acme/outbound': create".to_owned(),
            "integration 'acme/inbound': create".to_owned(),
            format!("worker 'acme/{WORKER}': create"),
            "project 'acme/web': create".to_owned(),
            "role 'acme/releaser': create".to_owned(),
            "organization 'acme': create".to_owned(),
        ],
        "newest first; the repository URL, the hook secret and the tokens are not in it"
    );
    let text = format!("{log:?}");
    for secret in ["hook-secret", "forge-token", TOKEN, KEY, "other.git"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// A declared worker may name the URL the server dials (a listening worker); the URL is held to the network
/// policy as the API holds it, and a changed URL is an update of the registration.
#[tokio::test]
async fn a_declared_listening_worker_keeps_its_url() {
    let app = app();
    common::signed_up(&app, "bob").await;
    let json = |url: &str| {
        format!(
            r#"{{"organizations": {{"o": {{"created_by": "bob"}}}},
                 "workers": {{"w": {{"worker_id": "{WORKER}", "organizations": ["o"], "token_file": "/s/worker",
                                    "url": "{url}"}}}}}}"#
        )
    };
    let plan = apply(&app, &json("ws://builder.example.com:3100/proto")).await;
    assert!(lines(&plan).contains(&format!("create worker o/{WORKER}")), "{plan:?}");
    assert_eq!(
        app.listening_workers().await.unwrap(),
        [(
            WorkerId(WORKER.parse().unwrap()),
            "ws://builder.example.com:3100/proto".to_owned()
        )]
    );
    assert!(
        apply(&app, &json("ws://builder.example.com:3100/proto"))
            .await
            .is_empty()
    );
    let plan = apply(&app, &json("wss://builder.example.com/proto")).await;
    assert_eq!(lines(&plan), [format!("update worker o/{WORKER}: url")]);
    for (url, want) in [
        ("ws://127.0.0.1:3100/proto", "127.0.0.1 is a loopback address"),
        ("http://builder.example.com/proto", "a worker URL is ws://"),
    ] {
        let e = Document::parse(&json(url), &NetworkPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("workers.w.url: ") && e.contains(want), "{e}");
    }
}
