//! Declarative state (`docs/state.md`) against the real server on SQLite and PostgreSQL: a document applied at
//! start-up shows every entity as managed, the API refuses to change them, an edited document is applied on
//! SIGHUP, an invalid one is refused with its entry named and nothing changed, `state check` prints the plan,
//! and `delete_state` removes what left the document.

use crate::harness::{Client, Server, fresh_postgres_database, server_binary, start_failure};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const WORKER: &str = "550e8400-e29b-41d4-a716-446655440001";
const API_KEY: &str = "GRADe2e-state-key-0123456789abcdefghijklmnop";

/// Writes the secret files into `dir` and answers the cache's public key.
fn write_secrets(dir: &Path) -> String {
    let key = gradient_domain::nix::signing::SecretKey::generate("e2e-main-1").expect("key");
    let files = [
        ("alice-password", "correct horse battery\n".to_owned()),
        ("ci-key", format!("{API_KEY}\n")),
        (
            "worker-token",
            "c2VjcmV0LXRva2VuLW9mLWF0LWxlYXN0LTMyLWJ5dGVzLWxvbmch\n".to_owned(),
        ),
        ("hook-secret", "hook-secret\n".to_owned()),
        ("forge-token", "forge-token\n".to_owned()),
        ("main-key", format!("{key}\n")),
    ];
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("secret file");
    }
    key.public().to_string()
}

/// The sample document, as the NixOS module renders it (every option present, defaults included).
fn document(dir: &Path, repository: &str, with_scratch: bool, with_project: bool, delete_state: bool) -> Value {
    let file = |name: &str| dir.join(name).to_str().expect("utf-8").to_owned();
    let mut caches = json!({
        "main": {"name": "main", "display_name": "Main", "description": "", "public": true, "priority": 30,
                 "local_priority": null, "compression": "zstd", "signing_key_file": file("main-key"),
                 "created_by": "alice", "organizations": ["acme"]},
    });
    if with_scratch {
        caches["scratch"] = json!({"created_by": "alice", "signing_key_file": null});
    }
    let mut projects = json!({});
    if with_project {
        projects["web"] = json!({
            "name": "web", "organization": "acme", "display_name": "Web", "description": "",
            "repository": repository, "branch": null, "wildcard": "packages.*.*", "keep_evaluations": null,
            "poll_interval_secs": null, "active": true, "created_by": "alice",
            "flake_input_overrides": {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-unstable"}, "utils": {"keep_url": true}}
        });
    }
    json!({
        "version": 1,
        "delete_state": delete_state,
        "users": {
            "alice": {"username": "alice", "name": "Alice", "email": "alice@example.com",
                      "password_file": file("alice-password"), "email_verified": true},
            "ci-bot": {"email": "ci@example.com", "password_file": null}
        },
        "organizations": {
            "acme": {"name": "acme", "display_name": "ACME", "description": "", "public": false,
                     "created_by": "alice", "members": {"alice": "Admin", "ci-bot": "releaser"},
                     "push_cache": "main"}
        },
        "roles": {"releaser": {"organization": "acme", "permissions": ["view_org", "trigger_evaluation"]}},
        "projects": projects,
        "caches": caches,
        "api_keys": {"ci": {"key_file": file("ci-key"), "owned_by": "ci-bot",
                            "permissions": ["view_org", "trigger_evaluation"], "organization": "acme"}},
        "workers": {"builder": {"worker_id": WORKER, "organizations": ["acme"], "token_file": file("worker-token")}},
        "integrations": {
            "hooks": {"organization": "acme", "kind": "inbound", "forge_type": "gitea",
                      "secret_file": file("hook-secret"), "endpoint_url": null, "access_token_file": null},
            "statuses": {"organization": "acme", "kind": "outbound", "forge_type": "gitea",
                         "endpoint_url": "https://gitea.example.com", "access_token_file": file("forge-token"),
                         "secret_file": null}
        }
    })
}

fn write_document(path: &Path, doc: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(doc).expect("json")).expect("state file");
}

/// Runs `gradient-server state check [args] FILE` with the server's variables; answers (exit code, stdout,
/// stderr).
fn state_check(base_dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(server_binary())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GRADIENT_BASE_DIR", base_dir)
        .env("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true")
        .envs(vars.iter().copied())
        .arg("state")
        .arg("check")
        .args(args)
        .output()
        .expect("state check runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn login(server: &Server, user: &str, password: &str) -> Client {
    let mut c = Client::new(server);
    let jwt = c
        .ok(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": user, "password": password})),
        )
        .await;
    c.token = jwt.as_str().map(str::to_owned);
    c
}

/// Polls until `check` holds (the SIGHUP reload runs in the background).
async fn eventually<F, Fut>(what: &str, server: &Server, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; server log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_managed(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 409, "{what}: {body}");
    assert_eq!(body["code"], "managed", "{what}: {body}");
    assert_eq!(body["error"], true, "{what}: {body}");
}

async fn declarative_state(vars: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    let public_key = write_secrets(&secrets);
    let state = dir.path().join("state.json");
    let state_path = state.to_str().expect("utf-8").to_owned();
    write_document(
        &state,
        &document(&secrets, "https://example.com/web.git", true, true, false),
    );

    // The module's build-time check: no database, no files.
    let (code, out, err) = state_check(dir.path(), &[], &["--offline", &state_path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("create user alice\n"), "{out}");
    assert!(out.contains(&format!("create worker acme/{WORKER}\n")), "{out}");
    assert!(
        out.ends_with("plan: 11 to create, 0 to update, 0 to delete, 0 to unmanage\n"),
        "{out}"
    );

    let mut server_vars: Vec<(&str, &str)> = vars.to_vec();
    server_vars.push(("GRADIENT_STATE_FILE", &state_path));
    let server = Server::start(dir.path(), &server_vars).await;

    // Every entity, managed.
    let alice = login(&server, "alice", "correct horse battery").await;
    assert_eq!(alice.ok(Method::GET, "/user", None).await["managed"], true);
    assert_eq!(alice.ok(Method::GET, "/orgs/acme", None).await["managed"], true);
    let web = alice.ok(Method::GET, "/projects/acme/web", None).await;
    assert_eq!(
        (web["managed"].as_bool(), web["repository"].as_str()),
        (Some(true), Some("https://example.com/web.git"))
    );
    assert_eq!(web["flake_input_overrides"]["utils"]["keep_url"], true, "{web}");
    let main = alice.ok(Method::GET, "/caches/main", None).await;
    assert_eq!(
        (main["managed"].as_bool(), main["public"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(
        alice.ok(Method::GET, "/caches/main/public-key", None).await,
        json!(public_key)
    );
    assert_eq!(alice.ok(Method::GET, "/caches/scratch", None).await["managed"], true);
    assert_eq!(
        alice.ok(Method::GET, "/orgs/acme/push-cache", None).await["name"],
        "main"
    );
    let roles = alice.ok(Method::GET, "/orgs/acme/roles", None).await;
    let releaser = roles
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["name"] == "releaser")
        .cloned();
    assert_eq!(releaser.map(|r| r["managed"].clone()), Some(json!(true)));
    let members = alice.ok(Method::GET, "/orgs/acme/users", None).await;
    assert_eq!(members.as_array().map(Vec::len), Some(2), "{members}");
    let workers = alice.ok(Method::GET, "/orgs/acme/workers", None).await;
    assert_eq!(
        (workers[0]["worker_id"].as_str(), workers[0]["managed"].as_bool()),
        (Some(WORKER), Some(true))
    );
    let forge = alice.ok(Method::GET, "/orgs/acme/forge", None).await;
    assert_eq!(
        (forge["api_url"].as_str(), forge["managed"].as_bool()),
        (Some("https://gitea.example.com"), Some(true))
    );
    // The key file's token is ci-bot's key; ci-bot has no password.
    let mut bot = Client::new(&server);
    bot.token = Some(API_KEY.to_owned());
    assert_eq!(bot.ok(Method::GET, "/user", None).await["username"], "ci-bot");
    let (status, _) = Client::new(&server)
        .call(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": "ci-bot", "password": ""})),
        )
        .await;
    assert_ne!(status, 200);

    // The API refuses to change or delete them.
    let (s, b) = alice
        .call(Method::PATCH, "/orgs/acme", Some(json!({"public": true})))
        .await;
    assert_managed(s, &b, "PATCH org");
    let (s, b) = alice.call(Method::DELETE, "/orgs/acme", None).await;
    assert_managed(s, &b, "DELETE org");
    let (s, b) = alice
        .call(Method::PATCH, "/projects/acme/web", Some(json!({"active": false})))
        .await;
    assert_managed(s, &b, "PATCH project");
    let (s, b) = alice.call(Method::DELETE, "/projects/acme/web", None).await;
    assert_managed(s, &b, "DELETE project");
    let (s, b) = alice
        .call(Method::PATCH, "/caches/main", Some(json!({"priority": 10})))
        .await;
    assert_managed(s, &b, "PATCH cache");
    let (s, b) = alice.call(Method::DELETE, "/caches/main", None).await;
    assert_managed(s, &b, "DELETE cache");
    let peer = workers[0]["peer_id"].as_str().expect("peer").to_owned();
    let (s, b) = alice
        .call(Method::DELETE, &format!("/orgs/acme/workers/{peer}"), None)
        .await;
    assert_managed(s, &b, "DELETE worker");
    let (s, b) = alice
        .call(Method::DELETE, "/orgs/acme/users", Some(json!({"user": "ci-bot"})))
        .await;
    assert_managed(s, &b, "remove member");
    let (s, b) = alice
        .call(Method::DELETE, "/orgs/acme/roles", Some(json!({"name": "releaser"})))
        .await;
    assert_managed(s, &b, "DELETE role");
    assert_eq!(
        alice.ok(Method::GET, "/projects/acme/web", None).await["active"],
        true,
        "nothing changed"
    );

    // Applied, the same document plans nothing.
    let (code, out, err) = state_check(dir.path(), vars, &[&state_path]);
    assert_eq!((code, out.as_str()), (0, "plan: no changes\n"), "{err}");

    // An edited document: check shows the plan, SIGHUP applies it.
    write_document(
        &state,
        &document(&secrets, "https://example.com/other.git", false, true, false),
    );
    let (code, out, err) = state_check(dir.path(), vars, &[&state_path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "update project acme/web: repository\nunmanage cache scratch\nplan: 0 to create, 1 to update, 0 to delete, 1 to unmanage\n"
    );
    server.signal("HUP");
    eventually("the edited document applied", &server, || async {
        alice.ok(Method::GET, "/projects/acme/web", None).await["repository"] == "https://example.com/other.git"
    })
    .await;
    assert_eq!(alice.ok(Method::GET, "/caches/scratch", None).await["managed"], false);

    // An invalid document is refused, naming its entry and field, and changes nothing.
    let mut invalid = document(&secrets, "https://example.com/third.git", false, true, true);
    invalid["api_keys"]["ci"]["owned_by"] = json!("nobody");
    write_document(&state, &invalid);
    let (code, out, err) = state_check(dir.path(), vars, &[&state_path]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        "state: api_keys.ci.owned_by: no user 'nobody' in the document or the database\n"
    );
    server.signal("HUP");
    eventually("the refusal logged", &server, || async {
        std::fs::read_to_string(&server.log)
            .unwrap_or_default()
            .contains("state: api_keys.ci.owned_by: no user 'nobody'")
    })
    .await;
    assert_eq!(
        alice.ok(Method::GET, "/projects/acme/web", None).await["repository"],
        "https://example.com/other.git",
        "nothing changed"
    );

    // delete_state removes what left the document (the project), and keeps what never was managed.
    write_document(
        &state,
        &document(&secrets, "https://example.com/other.git", false, false, true),
    );
    let (code, out, err) = state_check(dir.path(), vars, &[&state_path]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "delete project acme/web\nplan: 0 to create, 0 to update, 1 to delete, 0 to unmanage\n"
    );
    server.signal("HUP");
    eventually("the project deleted", &server, || async {
        alice.call(Method::GET, "/projects/acme/web", None).await.0 == 404
    })
    .await;
    assert_eq!(alice.ok(Method::GET, "/caches/scratch", None).await["name"], "scratch");
    server.stop();
}

#[tokio::test]
async fn sqlite_declarative_state() {
    declarative_state(&[]).await;
}

#[tokio::test]
async fn postgres_declarative_state() {
    let url = fresh_postgres_database();
    declarative_state(&[("GRADIENT_DATABASE_URL", &url)]).await;
}

/// An invalid document stops start-up with one line naming the entry and the field, and writes nothing.
#[tokio::test]
async fn an_invalid_state_document_stops_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("secrets dir");
    write_secrets(&secrets);
    let state = dir.path().join("state.json");
    let mut doc = document(&secrets, "https://example.com/web.git", true, true, false);
    doc["projects"]["web"]["organization"] = json!("acne");
    write_document(&state, &doc);
    let log = start_failure(dir.path(), &[("GRADIENT_STATE_FILE", state.to_str().expect("utf-8"))]);
    let line =
        "gradient-server: state: projects.web.organization: no organization 'acne' in the document or the database";
    assert!(log.lines().any(|l| l == line), "{log}");

    // Nothing was written: alice can still register as a new user.
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    c.register_with_key("alice").await;
    assert_eq!(c.ok(Method::GET, "/orgs", None).await, json!([]));
    server.stop();
}
