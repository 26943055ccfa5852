//! A user's sessions (listed, revoked one, the others or all), the permissions a key can be limited to, and an
//! organization's audit log, driven in-process (poem's TestClient) on SQLite in a temporary directory.

use gradient_server::config::Config;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};
use std::collections::HashMap;

struct Server {
    client: TestClient<BoxEndpoint<'static, poem::Response>>,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = HashMap::new();
    env.insert("GRADIENT_BASE_DIR".to_owned(), dir.path().display().to_string());
    let config = Config::from_vars(&env).expect("config");
    let state = gradient_server::build_state(&config).await.expect("state");
    Server {
        client: TestClient::new(gradient_server::app(state).boxed()),
        _dir: dir,
    }
}

const PASSWORD: &str = "password123";

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        agent: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(a) = agent {
            req = req.header("User-Agent", a);
        }
        if let Some(b) = body {
            req = req.body_json(&b);
        }
        let resp = req.send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, token, body, None).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {v}");
        v["message"].clone()
    }

    async fn register(&self, name: &str) {
        let body =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": PASSWORD});
        self.ok(Method::POST, "/auth/basic/register", None, Some(body)).await;
    }

    async fn login(&self, name: &str, agent: Option<&str>) -> String {
        let body = json!({"loginname": name, "password": PASSWORD});
        let (status, v) = self
            .call(Method::POST, "/auth/basic/login", None, Some(body), agent)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["message"].as_str().expect("token").to_owned()
    }

    async fn status(&self, method: Method, path: &str, token: Option<&str>) -> StatusCode {
        self.call(method, path, token, None, None).await.0
    }
}

fn by_agent<'a>(sessions: &'a Value, agent: &str) -> &'a Value {
    sessions
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["user_agent"] == agent)
        .unwrap_or_else(|| panic!("a session of {agent} in {sessions}"))
}

#[tokio::test]
async fn a_user_lists_their_sessions_and_revokes_one_the_others_or_all() {
    let s = server().await;
    s.register("alice").await;
    s.register("bob").await;
    let laptop = s.login("alice", Some("Firefox/130 (X11; Linux)")).await;
    let phone = s.login("alice", Some("Mobile\tSafari/17")).await;
    let spare = s.login("alice", None).await;
    let bobs = s.login("bob", Some("curl/8")).await;

    let listed = s.ok(Method::GET, "/user/sessions", Some(&laptop), None).await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "alice's three sessions, not bob's: {listed}"
    );
    let mine = by_agent(&listed, "Firefox/130 (X11; Linux)");
    assert_eq!(mine["current"], true, "the laptop's session is the current one");
    assert!(mine["last_used_at"].is_string(), "using it recorded its use: {mine}");
    let phone_entry = by_agent(&listed, "MobileSafari/17");
    assert_eq!(phone_entry["current"], false);
    assert!(
        listed.as_array().unwrap().iter().any(|x| x["user_agent"].is_null()),
        "a login without a user agent has none: {listed}"
    );

    // Bob's session is answered exactly like a missing one.
    let bob_sessions = s.ok(Method::GET, "/user/sessions", Some(&bobs), None).await;
    let bob_id = bob_sessions[0]["id"].as_str().expect("id").to_owned();
    let (status, theirs) = s
        .call(
            Method::DELETE,
            &format!("/user/sessions/{bob_id}"),
            Some(&laptop),
            None,
            None,
        )
        .await;
    let (missing_status, missing) = s
        .call(
            Method::DELETE,
            &format!("/user/sessions/{}", uuid::Uuid::new_v4()),
            Some(&laptop),
            None,
            None,
        )
        .await;
    assert_eq!((status, missing_status), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(theirs, missing, "another user's session reads as a missing one");
    assert_eq!(
        s.status(Method::GET, "/user", Some(&bobs)).await,
        StatusCode::OK,
        "bob's still works"
    );

    // One revoked: its token stops at once.
    let phone_id = phone_entry["id"].as_str().expect("id");
    s.ok(
        Method::DELETE,
        &format!("/user/sessions/{phone_id}"),
        Some(&laptop),
        None,
    )
    .await;
    assert_eq!(
        s.status(Method::GET, "/user", Some(&phone)).await,
        StatusCode::UNAUTHORIZED
    );

    // A key limited to some permissions may not touch sessions; an unrestricted one may list them.
    let key = s
        .ok(
            Method::POST,
            "/user/keys",
            Some(&laptop),
            Some(json!({"name": "narrow", "permissions": ["view_org"]})),
        )
        .await;
    let narrow = key["key"].as_str().expect("key");
    assert_eq!(
        s.status(Method::GET, "/user/sessions", Some(narrow)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.status(Method::DELETE, "/user/sessions", Some(narrow)).await,
        StatusCode::FORBIDDEN
    );

    // The others, keeping this one.
    let revoked = s
        .ok(Method::DELETE, "/user/sessions?keep_current=true", Some(&laptop), None)
        .await;
    assert_eq!(revoked["revoked"], 1, "the spare session");
    assert_eq!(
        s.status(Method::GET, "/user", Some(&spare)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.status(Method::GET, "/user", Some(&laptop)).await, StatusCode::OK);

    // All of them, this one too.
    let revoked = s.ok(Method::DELETE, "/user/sessions", Some(&laptop), None).await;
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(
        s.status(Method::GET, "/user", Some(&laptop)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.status(Method::GET, "/user", Some(&bobs)).await,
        StatusCode::OK,
        "bob is untouched"
    );
    assert_eq!(
        s.status(Method::GET, "/user/sessions", None).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_permissions_a_key_can_be_limited_to_are_listed_with_what_they_allow() {
    let s = server().await;
    s.register("alice").await;
    let token = s.login("alice", None).await;
    let list = s.ok(Method::GET, "/user/keys/permissions", Some(&token), None).await;
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names.len(), 13, "{list}");
    for name in [
        "view_org",
        "trigger_evaluation",
        "manage_workers",
        "manage_subscriptions",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|p| p["description"].as_str().is_some_and(|d| d.len() > 10)),
        "each is described: {list}"
    );
    // Every listed name is accepted when creating a key.
    let all: Vec<&str> = names.clone();
    s.ok(
        Method::POST,
        "/user/keys",
        Some(&token),
        Some(json!({"name": "all", "permissions": all})),
    )
    .await;
    assert_eq!(
        s.status(Method::GET, "/user/keys/permissions", None).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_audit_log_records_who_changed_what_without_secrets_for_admins_only() {
    let s = server().await;
    for name in ["alice", "bob", "eve"] {
        s.register(name).await;
    }
    let alice = s.login("alice", None).await;
    let bob = s.login("bob", None).await;
    let eve = s.login("eve", None).await;
    s.ok(Method::POST, "/orgs", Some(&alice), Some(json!({"name": "acme"})))
        .await;
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(&alice),
        Some(json!({"user": "bob", "role": "View"})),
    )
    .await;
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(&alice),
        Some(json!({"user": "bob", "role": "Write"})),
    )
    .await;
    s.ok(
        Method::POST,
        "/projects/acme",
        Some(&alice),
        Some(json!({"name": "web", "repository": "https://user:repo-password@git.example.com/acme/web.git"})),
    )
    .await;
    s.ok(
        Method::PATCH,
        "/projects/acme/web",
        Some(&alice),
        Some(json!({"branch": "dev", "repository": "https://user:other-password@git.example.com/acme/web.git"})),
    )
    .await;
    let hook = s
        .ok(Method::POST, "/orgs/acme/webhook-secret", Some(&alice), None)
        .await;
    let webhook_secret = hook["secret"].as_str().expect("secret").to_owned();
    s.ok(
        Method::PUT,
        "/orgs/acme/forge",
        Some(&alice),
        Some(json!({"forge": "gitea", "api_url": "https://gitea.example.com", "token": "forge-token-never-logged"})),
    )
    .await;
    let worker = s
        .ok(
            Method::POST,
            "/orgs/acme/workers",
            Some(&alice),
            Some(json!({"worker_id": uuid::Uuid::new_v4().to_string()})),
        )
        .await;
    let worker_token = worker["token"].as_str().expect("token").to_owned();
    let key = s
        .ok(
            Method::POST,
            "/user/keys",
            Some(&alice),
            Some(json!({"name": "deploy", "organization": "acme"})),
        )
        .await;
    let key_token = key["key"].as_str().expect("key").to_owned();
    // Through the pinned key: recorded as done with a key.
    s.ok(
        Method::PATCH,
        "/orgs/acme",
        Some(&key_token),
        Some(json!({"description": "changed"})),
    )
    .await;
    s.ok(
        Method::DELETE,
        "/orgs/acme/users",
        Some(&alice),
        Some(json!({"user": "bob"})),
    )
    .await;

    let page = s.ok(Method::GET, "/orgs/acme/audit-log", Some(&alice), None).await;
    let entries = page["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().expect("action")).collect();
    assert_eq!(
        actions,
        [
            "member.removed",
            "org.updated",
            "api_key.created",
            "worker.registered",
            "forge_connection.set",
            "webhook_secret.created",
            "project.updated",
            "project.created",
            "member.set",
            "member.set",
            "org.created",
        ],
        "every change, newest first: {page}"
    );
    assert!(page["next"].is_null(), "one page: {page}");
    let entry = |action: &str| entries.iter().find(|e| e["action"] == action).expect("entry");
    assert_eq!(entry("member.removed")["detail"], "was Write");
    assert_eq!(entry("member.set")["detail"], "role View → Write");
    assert_eq!(entry("member.set")["target"], "member 'bob'");
    assert_eq!(entry("project.updated")["detail"], "repository, branch");
    assert_eq!(entry("org.updated")["via"], "api_key");
    assert_eq!(entry("org.updated")["actor"], "alice");
    assert_eq!(entry("forge_connection.set")["detail"], "forge gitea");
    assert_eq!(entry("org.created")["via"], "session");
    let text = page.to_string();
    for secret in [
        webhook_secret.as_str(),
        worker_token.as_str(),
        key_token.as_str(),
        "forge-token-never-logged",
        "repo-password",
        "other-password",
        "gitea.example.com",
    ] {
        assert!(!text.contains(secret), "the log holds {secret:?}: {text}");
    }

    // Pages newest first, cut by the cursor.
    let first = s
        .ok(Method::GET, "/orgs/acme/audit-log?limit=4", Some(&alice), None)
        .await;
    assert_eq!(first["entries"].as_array().map(Vec::len), Some(4));
    let next = first["next"].as_u64().expect("a next page");
    let second = s
        .ok(
            Method::GET,
            &format!("/orgs/acme/audit-log?limit=4&before={next}"),
            Some(&alice),
            None,
        )
        .await;
    let third_cursor = second["next"].as_u64().expect("a third page");
    let third = s
        .ok(
            Method::GET,
            &format!("/orgs/acme/audit-log?limit=4&before={third_cursor}"),
            Some(&alice),
            None,
        )
        .await;
    let paged: Vec<Value> = [&first, &second, &third]
        .iter()
        .flat_map(|p| p["entries"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(&paged, entries, "the pages together are the whole log");
    assert!(third["next"].is_null());
    let (status, v) = s
        .call(Method::GET, "/orgs/acme/audit-log?limit=0", Some(&alice), None, None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );

    // Admins only; an outsider is answered as for a missing organization.
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(&alice),
        Some(json!({"user": "bob", "role": "Write"})),
    )
    .await;
    assert_eq!(
        s.status(Method::GET, "/orgs/acme/audit-log", Some(&bob)).await,
        StatusCode::FORBIDDEN
    );
    let hidden = s
        .call(Method::GET, "/orgs/acme/audit-log", Some(&eve), None, None)
        .await;
    let missing = s
        .call(Method::GET, "/orgs/nothing/audit-log", Some(&eve), None, None)
        .await;
    assert_eq!(hidden.0, StatusCode::NOT_FOUND);
    assert_eq!(
        hidden.1["message"].as_str().map(|m| m.replace("acme", "X")),
        missing.1["message"].as_str().map(|m| m.replace("nothing", "X")),
        "same answer as for a missing organization"
    );

    // An outsider may pin a key to a public organization, but writes nothing into its log (else anyone could
    // flood a public organization's log and push its real history out).
    s.ok(Method::PATCH, "/orgs/acme", Some(&alice), Some(json!({"public": true})))
        .await;
    let before = s.ok(Method::GET, "/orgs/acme/audit-log", Some(&alice), None).await;
    let outsider_key = s
        .ok(
            Method::POST,
            "/user/keys",
            Some(&eve),
            Some(json!({"name": "flood", "organization": "acme"})),
        )
        .await;
    let outsider_key_id = outsider_key["id"].as_str().expect("id").to_owned();
    s.ok(
        Method::DELETE,
        &format!("/user/keys/{outsider_key_id}"),
        Some(&eve),
        None,
    )
    .await;
    let after = s.ok(Method::GET, "/orgs/acme/audit-log", Some(&alice), None).await;
    assert_eq!(before["entries"], after["entries"], "an outsider's key left no entry");
}
