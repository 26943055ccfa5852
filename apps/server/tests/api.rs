//! The API driven in-process (poem's TestClient) on a real SQLite database in a temporary directory:
//! every acceptance rule of the accounts, organizations, projects and caches API, with statuses and codes.

use gradient_server::config::Config;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};
use std::collections::HashMap;

struct Server {
    client: TestClient<BoxEndpoint<'static, poem::Response>>,
    /// The server's database, opened a second time, for tests that set up what no API call makes (builds).
    storage: gradient_storage_sql::SqlStorage,
    _dir: tempfile::TempDir,
}

async fn server_with(vars: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.insert("GRADIENT_BASE_DIR".into(), dir.path().display().to_string());
    let config = Config::from_vars(&env).expect("config");
    let state = gradient_server::build_state(&config).await.expect("state");
    let pools = gradient_storage_sql::PoolSizes {
        max: 2,
        min: 0,
        web_max: 1,
        web_min: 0,
    };
    let url = config.resolve_database_url().expect("database URL");
    let storage = gradient_storage_sql::connect(&url, pools).await.expect("database");
    let ep = gradient_server::app(state).boxed();
    Server {
        client: TestClient::new(ep),
        storage,
        _dir: dir,
    }
}

async fn server() -> Server {
    server_with(&[]).await
}

impl Server {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.body_json(&b);
        }
        let resp = req.send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        (status, value)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Asserts success and returns the envelope's message.
    async fn ok(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, token, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {v}");
        assert_eq!(v["error"], false, "{v}");
        v["message"].clone()
    }

    /// Registers and logs in; returns the session token.
    async fn user(&self, name: &str) -> String {
        let body =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": "password123"});
        self.ok(Method::POST, "/auth/basic/register", None, Some(body)).await;
        let login = json!({"loginname": name, "password": "password123"});
        self.ok(Method::POST, "/auth/basic/login", None, Some(login))
            .await
            .as_str()
            .expect("token")
            .to_owned()
    }
}

/// Asserts an error answer with the given status and code.
#[track_caller]
fn assert_err((status, v): (StatusCode, Value), want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"], true, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn a_user_sets_up_org_project_cache_and_reads_them_back_with_a_key() {
    let s = server().await;
    let token = s.user("alice").await;
    let me = s.ok(Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(me["email"], "alice@example.com");

    let key = s
        .ok(Method::POST, "/user/keys", Some(&token), Some(json!({"name": "ci"})))
        .await;
    let key = key["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("GRAD"));

    s.ok(
        Method::POST,
        "/orgs",
        Some(&key),
        Some(json!({"name": "acme", "display_name": "ACME", "description": "d"})),
    )
    .await;
    let project = json!({"name": "web", "display_name": "Web", "description": "site",
        "repository": "https://git.example.com/acme/web.git", "wildcard": "packages.*.*",
        "flake_input_overrides": {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-unstable"}, "utils": {"keep_url": true}}});
    s.ok(Method::POST, "/projects/acme", Some(&key), Some(project)).await;
    s.ok(
        Method::POST,
        "/caches",
        Some(&key),
        Some(json!({"name": "main", "display_name": "Main", "description": "", "priority": 40, "public": false})),
    )
    .await;
    s.ok(Method::POST, "/orgs/acme/subscribe/main", Some(&key), None).await;

    let orgs = s.ok(Method::GET, "/orgs", Some(&key), None).await;
    assert_eq!(orgs.as_array().map(Vec::len), Some(1));
    assert_eq!(orgs[0]["name"], "acme");
    assert_eq!(
        orgs[0]["public"], false,
        "organizations are private unless created public"
    );
    let p = s.ok(Method::GET, "/projects/acme/web", Some(&key), None).await;
    assert_eq!(p["repository"], "https://git.example.com/acme/web.git");
    assert_eq!(p["wildcard"], "packages.*.*");
    assert_eq!(p["active"], true);
    assert_eq!(
        p["flake_input_overrides"]["nixpkgs"]["url"],
        "github:NixOS/nixpkgs/nixos-unstable"
    );
    assert_eq!(p["flake_input_overrides"]["utils"]["keep_url"], true);
    let c = s.ok(Method::GET, "/caches/main", Some(&key), None).await;
    assert_eq!((c["priority"].as_i64(), c["public"].as_bool()), (Some(40), Some(false)));
    let subs = s.ok(Method::GET, "/orgs/acme/subscribe", Some(&key), None).await;
    assert_eq!(subs[0]["name"], "main");
    let members = s.ok(Method::GET, "/orgs/acme/users", Some(&key), None).await;
    assert_eq!(
        members,
        json!([{"user_id": me["id"], "username": "alice", "role": "Admin"}])
    );

    let keys = s.ok(Method::GET, "/user/keys", Some(&token), None).await;
    assert_eq!(keys[0]["name"], "ci");
    assert!(keys[0].get("key").is_none(), "the secret is shown only once");
    assert!(
        keys[0]["last_used_at"].is_string(),
        "the key's last use is recorded: {}",
        keys[0]
    );
}

#[tokio::test]
async fn login_accepts_email_and_rejects_wrong_passwords() {
    let s = server().await;
    s.user("bob").await;
    let t = s
        .ok(
            Method::POST,
            "/auth/basic/login",
            None,
            Some(json!({"loginname": "BOB@example.com", "password": "password123"})),
        )
        .await;
    assert!(t.as_str().is_some_and(|t| t.split('.').count() == 3), "a JWT: {t}");
    for (login, pw) in [("bob", "wrong-password"), ("nobody", "password123"), ("", "")] {
        let r = s
            .post("/auth/basic/login", None, json!({"loginname": login, "password": pw}))
            .await;
        assert_err(r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
}

#[tokio::test]
async fn logout_revokes_the_session_and_deleted_keys_stop_working() {
    let s = server().await;
    let token = s.user("carol").await;
    let key = s
        .ok(Method::POST, "/user/keys", Some(&token), Some(json!({"name": "k"})))
        .await;
    let (id, key) = (
        key["id"].as_str().expect("id").to_owned(),
        key["key"].as_str().expect("key").to_owned(),
    );
    s.ok(Method::GET, "/user", Some(&key), None).await;
    s.ok(Method::DELETE, &format!("/user/keys/{id}"), Some(&token), None)
        .await;
    assert_err(
        s.get("/user", Some(&key)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_err(
        s.call(Method::DELETE, &format!("/user/keys/{id}"), Some(&token), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    s.ok(Method::POST, "/auth/logout", Some(&token), None).await;
    assert_err(
        s.get("/user", Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // A revoked or forged token is refused even where anonymous callers are welcome.
    assert_err(
        s.get("/orgs", Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_err(
        s.get("/orgs", Some("not-a-token")).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_err(s.get("/user", None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn registration_can_be_disabled() {
    let s = server_with(&[("GRADIENT_ENABLE_REGISTRATION", "false")]).await;
    let body = json!({"username": "dave", "name": "Dave", "email": "dave@example.com", "password": "password123"});
    assert_err(
        s.post("/auth/basic/register", None, body).await,
        StatusCode::FORBIDDEN,
        "registration_disabled",
    );
    assert_eq!(
        s.ok(Method::GET, "/config", None, None).await["registration_enabled"],
        false
    );
}

#[tokio::test]
async fn registration_validates_and_refuses_duplicates_without_writing() {
    let s = server().await;
    s.user("erin").await;
    let reg = |u: &str, e: &str, p: &str| json!({"username": u, "name": "X", "email": e, "password": p});
    assert_err(
        s.post(
            "/auth/basic/register",
            None,
            reg("erin", "other@example.com", "password123"),
        )
        .await,
        StatusCode::CONFLICT,
        "username_taken",
    );
    assert_err(
        s.post(
            "/auth/basic/register",
            None,
            reg("erin2", "ERIN@example.com", "password123"),
        )
        .await,
        StatusCode::CONFLICT,
        "email_taken",
    );
    assert_err(
        s.post(
            "/auth/basic/register",
            None,
            reg("Erin Two", "e2@example.com", "password123"),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );
    assert_err(
        s.post(
            "/auth/basic/register",
            None,
            reg("erin3", "not-an-email", "password123"),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_email",
    );
    assert_err(
        s.post("/auth/basic/register", None, reg("erin4", "e4@example.com", "short"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "weak_password",
    );
    // None of the refused registrations can log in.
    for u in ["erin2", "erin3", "erin4"] {
        let r = s
            .post(
                "/auth/basic/login",
                None,
                json!({"loginname": u, "password": "password123"}),
            )
            .await;
        assert_err(r, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_with_json_errors() {
    let s = server_with(&[("GRADIENT_MAX_REQUEST_SIZE", "2048")]).await;
    let token = s.user("frank").await;
    let resp = s
        .client
        .post("/api/v1/orgs")
        .header("Authorization", format!("Bearer {token}"))
        .content_type("application/json")
        .body("{\"name\": ")
        .send()
        .await;
    resp.assert_status(StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("json");
    assert_eq!(
        (v["error"].as_bool(), v["code"].as_str()),
        (Some(true), Some("invalid_json"))
    );

    assert_err(
        s.post("/orgs", Some(&token), json!({"display_name": "no name"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    let big = json!({"name": "big", "description": "x".repeat(4096)});
    assert_err(
        s.post("/orgs", Some(&token), big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // Without a Content-Length (a streamed body) the limit holds too.
    let stream = futures_stream(vec![
        b"{\"name\": \"big\", \"description\": \"".to_vec(),
        vec![b'x'; 4096],
        b"\"}".to_vec(),
    ]);
    let resp = s
        .client
        .post("/api/v1/orgs")
        .header("Authorization", format!("Bearer {token}"))
        .content_type("application/json")
        .body(poem::Body::from_bytes_stream(stream))
        .send()
        .await;
    resp.assert_status(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        s.ok(Method::GET, "/orgs", Some(&token), None).await,
        json!([]),
        "nothing was created"
    );

    assert_err(
        s.get("/no/such/endpoint", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.get("/user/keys/not-a-uuid", Some(&token)).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_err(
        s.call(Method::DELETE, "/user/keys/not-a-uuid", Some(&token), None)
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from(c))))
}

#[tokio::test]
async fn names_are_validated_and_duplicates_conflict_without_half_writes() {
    let s = server().await;
    let t = s.user("grace").await;
    let t = Some(t.as_str());
    for bad in ["Acme", "has space", "", "-dash", &"a".repeat(65)] {
        assert_err(
            s.post("/orgs", t, json!({"name": bad})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        );
        assert_err(
            s.post("/caches", t, json!({"name": bad})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        );
    }
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    assert_err(
        s.post("/orgs", t, json!({"name": "acme", "display_name": "Second"}))
            .await,
        StatusCode::CONFLICT,
        "name_taken",
    );
    let org = s.ok(Method::GET, "/orgs/acme", t, None).await;
    assert_eq!(org["display_name"], "acme", "the first organization is untouched");

    let p = |name: &str| json!({"name": name, "repository": "https://example.com/r.git", "wildcard": "packages.*.*"});
    s.ok(Method::POST, "/projects/acme", t, Some(p("web"))).await;
    assert_err(
        s.post("/projects/acme", t, p("web")).await,
        StatusCode::CONFLICT,
        "name_taken",
    );
    assert_err(
        s.post("/projects/acme", t, p("Web")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );
    let bad_repo = json!({"name": "x", "repository": "not a url", "wildcard": "packages.*.*"});
    assert_err(
        s.post("/projects/acme", t, bad_repo).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_repository",
    );
    let bad_wildcard = json!({"name": "x", "repository": "https://example.com/r.git", "wildcard": "packages..x"});
    assert_err(
        s.post("/projects/acme", t, bad_wildcard).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_wildcard",
    );
    let both = json!({"name": "x", "repository": "https://example.com/r.git", "flake_input_overrides": {"n": {"url": "github:a/b", "keep_url": true}}});
    assert_err(
        s.post("/projects/acme", t, both).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    );
    assert_eq!(
        s.ok(Method::GET, "/projects/acme", t, None)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    s.ok(Method::POST, "/caches", t, Some(json!({"name": "main"}))).await;
    assert_err(
        s.post("/caches", t, json!({"name": "main"})).await,
        StatusCode::CONFLICT,
        "name_taken",
    );
    assert_err(
        s.post("/caches", t, json!({"name": "c2", "priority": -1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_priority",
    );
    assert_err(
        s.post("/caches", t, json!({"name": "c2", "compression": "gzip"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_compression",
    );
    s.ok(Method::POST, "/orgs/acme/subscribe/main", t, None).await;
    assert_err(
        s.post("/orgs/acme/subscribe/main", t, json!(null)).await,
        StatusCode::CONFLICT,
        "already_subscribed",
    );
}

#[tokio::test]
async fn repositories_on_this_machine_are_refused_unless_the_operator_allows_them() {
    type Vars = &'static [(&'static str, &'static str)];
    // (variables, repository, expected status)
    let table: [(Vars, &str, StatusCode); 7] = [
        (&[], "file:///srv/repo", StatusCode::UNPROCESSABLE_ENTITY),
        (
            &[],
            "http://169.254.169.254/latest/meta-data",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (&[], "https://10.0.0.7/r.git", StatusCode::OK),
        (
            &[("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true")],
            "file:///srv/repo",
            StatusCode::OK,
        ),
        (
            &[("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true")],
            "http://127.0.0.1:9/r.git",
            StatusCode::OK,
        ),
        (
            &[("GRADIENT_DENY_PRIVATE_NETWORKS", "true")],
            "https://10.0.0.7/r.git",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &[("GRADIENT_DENY_PRIVATE_NETWORKS", "true")],
            "https://git.example.com/r.git",
            StatusCode::OK,
        ),
    ];
    for (vars, repository, want) in table {
        let s = server_with(vars).await;
        let t = s.user("alice").await;
        let t = Some(t.as_str());
        s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
        let answer = s
            .post("/projects/acme", t, json!({"name": "p", "repository": repository}))
            .await;
        if want == StatusCode::OK {
            assert_eq!(answer.0, want, "{vars:?} {repository}: {}", answer.1);
        } else {
            assert_err(answer, want, "repository_not_allowed");
        }
    }
}

#[tokio::test]
async fn private_orgs_and_their_projects_do_not_leak() {
    let s = server().await;
    let owner = s.user("heidi").await;
    let outsider = s.user("ivan").await;
    let o = Some(owner.as_str());
    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "secret"}))).await;
    s.ok(
        Method::POST,
        "/projects/secret",
        o,
        Some(json!({"name": "p", "repository": "https://example.com/p.git"})),
    )
    .await;
    s.ok(Method::POST, "/caches", o, Some(json!({"name": "hidden"}))).await;

    for who in [Some(outsider.as_str()), None] {
        for path in [
            "/orgs/secret",
            "/projects/secret",
            "/projects/secret/p",
            "/orgs/secret/users",
            "/orgs/secret/roles",
            "/caches/hidden",
        ] {
            assert_err(s.get(path, who).await, StatusCode::NOT_FOUND, "not_found");
        }
        let (_, v) = s.get("/orgs/nonexistent", who).await;
        let (_, hidden) = s.get("/orgs/secret", who).await;
        assert_eq!(
            v["message"].as_str().map(|m| m.replace("nonexistent", "X")),
            hidden["message"].as_str().map(|m| m.replace("secret", "X")),
            "a hidden organization answers exactly like a missing one"
        );
        assert_eq!(s.ok(Method::GET, "/orgs", who, None).await, json!([]));
        assert_eq!(s.ok(Method::GET, "/caches", who, None).await, json!([]));
    }
    assert_err(
        s.call(
            Method::PATCH,
            "/orgs/secret",
            Some(&outsider),
            Some(json!({"public": true})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.call(Method::DELETE, "/orgs/secret", Some(&outsider), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.post("/orgs/secret/subscribe/hidden", Some(&outsider), json!(null))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Made public, everyone reads it, but only members change it.
    s.ok(Method::PATCH, "/orgs/secret", o, Some(json!({"public": true})))
        .await;
    assert_eq!(s.ok(Method::GET, "/projects/secret/p", None, None).await["name"], "p");
    assert_eq!(
        s.ok(Method::GET, "/orgs", Some(&outsider), None).await[0]["name"],
        "secret"
    );
    assert_err(
        s.call(
            Method::PATCH,
            "/orgs/secret",
            Some(&outsider),
            Some(json!({"description": "pwned"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.call(Method::DELETE, "/projects/secret/p", Some(&outsider), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.call(
            Method::PATCH,
            "/orgs/secret",
            None,
            Some(json!({"description": "pwned"})),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(s.ok(Method::GET, "/orgs/secret", None, None).await["description"], "");
}

#[tokio::test]
async fn roles_decide_what_members_may_do() {
    let s = server().await;
    let admin = s.user("judy").await;
    let viewer = s.user("ken").await;
    let writer = s.user("leo").await;
    let a = Some(admin.as_str());
    s.ok(Method::POST, "/orgs", a, Some(json!({"name": "team"}))).await;
    s.ok(
        Method::POST,
        "/orgs/team/users",
        a,
        Some(json!({"user": "ken", "role": "View"})),
    )
    .await;
    s.ok(
        Method::POST,
        "/orgs/team/users",
        a,
        Some(json!({"user": "leo", "role": "Write"})),
    )
    .await;
    let project = json!({"name": "p", "repository": "https://example.com/p.git"});

    assert_eq!(
        s.ok(Method::GET, "/orgs/team", Some(&viewer), None).await["name"],
        "team"
    );
    assert_err(
        s.post("/projects/team", Some(&viewer), project.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    s.ok(Method::POST, "/projects/team", Some(&writer), Some(project)).await;
    s.ok(
        Method::PATCH,
        "/projects/team/p",
        Some(&writer),
        Some(json!({"branch": "develop", "active": false})),
    )
    .await;
    let p = s
        .ok(
            Method::PATCH,
            "/projects/team/p",
            Some(&writer),
            Some(json!({"branch": null})),
        )
        .await;
    assert_eq!((p["branch"].clone(), p["active"].clone()), (Value::Null, json!(false)));
    assert_err(
        s.call(Method::DELETE, "/orgs/team", Some(&writer), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.post(
            "/orgs/team/users",
            Some(&writer),
            json!({"user": "ken", "role": "Admin"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // A custom role grants exactly its permissions.
    let role = json!({"name": "deployer", "permissions": ["view_org", "delete_project"]});
    s.ok(Method::POST, "/orgs/team/roles", a, Some(role)).await;
    assert_err(
        s.post(
            "/orgs/team/roles",
            a,
            json!({"name": "admin", "permissions": ["view_org"]}),
        )
        .await,
        StatusCode::CONFLICT,
        "role_exists",
    );
    assert_err(
        s.post("/orgs/team/roles", a, json!({"name": "x", "permissions": ["fly"]}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_permission",
    );
    s.ok(
        Method::POST,
        "/orgs/team/users",
        a,
        Some(json!({"user": "ken", "role": "deployer"})),
    )
    .await;
    let roles = s.ok(Method::GET, "/orgs/team/roles", Some(&viewer), None).await;
    let names: Vec<_> = roles
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["Admin", "Write", "View", "deployer"]);
    assert_err(
        s.call(Method::DELETE, "/orgs/team/roles", a, Some(json!({"name": "deployer"})))
            .await,
        StatusCode::CONFLICT,
        "role_in_use",
    );
    s.ok(Method::DELETE, "/projects/team/p", Some(&viewer), None).await;

    // The last Admin stays.
    assert_err(
        s.call(Method::DELETE, "/orgs/team/users", a, Some(json!({"user": "judy"})))
            .await,
        StatusCode::CONFLICT,
        "last_admin",
    );
    assert_err(
        s.post("/orgs/team/users", a, json!({"user": "judy", "role": "View"}))
            .await,
        StatusCode::CONFLICT,
        "last_admin",
    );
    let members = s.ok(Method::GET, "/orgs/team/users", a, None).await;
    assert_eq!(
        members[0],
        json!({"user_id": members[0]["user_id"], "username": "judy", "role": "Admin"})
    );
    s.ok(Method::DELETE, "/orgs/team/users", a, Some(json!({"user": "ken"})))
        .await;
    s.ok(Method::DELETE, "/orgs/team/roles", a, Some(json!({"name": "deployer"})))
        .await;
    assert_err(
        s.get("/orgs/team", Some(&viewer)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn restricted_keys_stay_within_their_scope() {
    let s = server().await;
    let t = s.user("mallory").await;
    let t = Some(t.as_str());
    for org in ["one", "two"] {
        s.ok(Method::POST, "/orgs", t, Some(json!({"name": org}))).await;
    }
    let key = s
        .ok(
            Method::POST,
            "/user/keys",
            t,
            Some(json!({"name": "ro", "organization": "one", "permissions": ["view_org"]})),
        )
        .await;
    let key = key["key"].as_str().expect("key").to_owned();
    let orgs = s.ok(Method::GET, "/orgs", Some(&key), None).await;
    assert_eq!(orgs.as_array().map(Vec::len), Some(1));
    assert_err(s.get("/orgs/two", Some(&key)).await, StatusCode::NOT_FOUND, "not_found");
    assert_err(
        s.post(
            "/projects/one",
            Some(&key),
            json!({"name": "p", "repository": "https://e.com/p.git"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.post("/user/keys", Some(&key), json!({"name": "wider"})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.post("/user/keys", t, json!({"name": "bad", "permissions": ["nope"]}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_permission",
    );
}

#[tokio::test]
async fn caches_belong_to_their_owner_and_are_shared_through_subscriptions() {
    let s = server().await;
    let owner = s.user("nina").await;
    let member = s.user("oscar").await;
    let o = Some(owner.as_str());
    s.ok(Method::POST, "/caches", o, Some(json!({"name": "priv"}))).await;
    s.ok(Method::POST, "/caches", o, Some(json!({"name": "pub", "public": true})))
        .await;
    assert_eq!(s.ok(Method::GET, "/caches/pub", None, None).await["public"], true);
    assert_err(
        s.get("/caches/priv", Some(&member)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "org"}))).await;
    s.ok(
        Method::POST,
        "/orgs/org/users",
        o,
        Some(json!({"user": "oscar", "role": "View"})),
    )
    .await;
    s.ok(Method::POST, "/orgs/org/subscribe/priv", o, None).await;
    assert_eq!(
        s.ok(Method::GET, "/caches/priv", Some(&member), None).await["name"],
        "priv"
    );
    assert_err(
        s.call(
            Method::PATCH,
            "/caches/priv",
            Some(&member),
            Some(json!({"public": true})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let c = s
        .ok(
            Method::PATCH,
            "/caches/priv",
            o,
            Some(json!({"priority": 10, "local_priority": 5, "compression": "xz"})),
        )
        .await;
    assert_eq!(
        (
            c["priority"].as_i64(),
            c["local_priority"].as_i64(),
            c["compression"].as_str()
        ),
        (Some(10), Some(5), Some("xz"))
    );
    let c = s
        .ok(Method::PATCH, "/caches/priv", o, Some(json!({"local_priority": null})))
        .await;
    assert_eq!(c["local_priority"], Value::Null);

    s.ok(Method::DELETE, "/orgs/org/subscribe/priv", o, None).await;
    assert_err(
        s.call(Method::DELETE, "/orgs/org/subscribe/priv", o, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_err(
        s.get("/caches/priv", Some(&member)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    s.ok(Method::DELETE, "/caches/priv", o, None).await;
    assert_err(s.get("/caches/priv", o).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn health_config_and_the_openapi_document() {
    let s = server().await;
    assert_eq!(s.ok(Method::GET, "/health", None, None).await["status"], "ok");
    let c = s.ok(Method::GET, "/config", None, None).await;
    assert_eq!(
        (c["registration_enabled"].as_bool(), c["oidc_enabled"].as_bool()),
        (Some(true), Some(false))
    );

    let resp = s.client.get("/api/v1/openapi.json").send().await;
    resp.assert_status_is_ok();
    let served = resp.0.into_body().into_string().await.expect("spec");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/gradient.json");
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&served).expect("json")).expect("pretty") + "\n";
    if std::env::var_os("GRADIENT_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &pretty).expect("write openapi/gradient.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == pretty,
        "openapi/gradient.json differs from what the code generates; run `GRADIENT_UPDATE_OPENAPI=1 cargo test -p gradient-server --test api health_config_and_the_openapi_document` and commit it"
    );
    let docs = s.client.get("/api/v1/docs").send().await;
    docs.assert_status_is_ok();
}

/// Runs `openssl` with `args` on `input`; answers its output.
fn openssl(args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().expect("stdin").write_all(input).expect("write");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).expect("text")
}

#[tokio::test]
async fn the_github_app_hook_needs_an_app_a_valid_key_and_a_signature() {
    // Without an App, its endpoint does not exist.
    let s = server().await;
    let (status, v) = s.post("/hooks/github", None, json!({"zen": "hi"})).await;
    assert_err((status, v), StatusCode::NOT_FOUND, "not_found");

    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, openssl(&["genrsa", "2048"], b"")).expect("key");
    let secret = dir.path().join("hook-secret");
    std::fs::write(&secret, "the-webhook-secret\n").expect("secret");
    let (key, secret) = (key.display().to_string(), secret.display().to_string());
    let vars = |key: &str| {
        vec![
            ("GRADIENT_GITHUB_APP_ENABLE".to_owned(), "true".to_owned()),
            ("GRADIENT_GITHUB_APP_APP_ID".to_owned(), "4242".to_owned()),
            ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE".to_owned(), key.to_owned()),
            ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE".to_owned(), secret.clone()),
            ("GRADIENT_BASE_DIR".to_owned(), dir.path().display().to_string()),
        ]
    };

    // A key that is missing or not an RSA private key stops start-up with one line naming the variable.
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .expect("write");
    for bad in [
        not_a_key.display().to_string(),
        dir.path().join("missing.pem").display().to_string(),
    ] {
        let config = Config::from_vars(&vars(&bad).into_iter().collect()).expect("config");
        let e = match gradient_server::build_state(&config).await {
            Ok(_) => panic!("{bad}: the server started"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    let s = server_with(
        &vars(&key)
            .iter()
            .filter(|(k, _)| k != "GRADIENT_BASE_DIR")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    let body = br#"{"zen":"Design for failure.","hook_id":1}"#;
    let deliver = |signature: Option<String>| {
        let mut req = s
            .client
            .post("/api/v1/hooks/github")
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "ping")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        async move {
            let resp = req.send().await;
            let status = resp.0.status();
            let text = resp.0.into_body().into_string().await.expect("body");
            (status, serde_json::from_str::<Value>(&text).expect("JSON"))
        }
    };
    assert_err(deliver(None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    let wrong = openssl(&["dgst", "-sha256", "-hmac", "another-secret"], body);
    let wrong = format!("sha256={}", wrong.split_whitespace().last().expect("digest"));
    assert_err(deliver(Some(wrong)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    let right = openssl(&["dgst", "-sha256", "-hmac", "the-webhook-secret"], body);
    let right = format!("sha256={}", right.split_whitespace().last().expect("digest"));
    let (status, v) = deliver(Some(right)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["message"]["queued"], json!([]), "a ping is accepted and ignored");
}

// ---------------------------------------------------------------------------------------------------------
// The HTTP edge: rate limits, streams that recheck access, answers that do not tell what exists, input checks.

impl Server {
    /// A call from `client` (sent as `X-Forwarded-For`; the in-process peer is a trusted proxy): the status,
    /// the `Retry-After` header and the body.
    async fn call_from(&self, client: &str, path: &str, body: Value) -> (StatusCode, Option<u64>, Value) {
        let resp = self
            .client
            .post(format!("/api/v1{path}"))
            .header("X-Forwarded-For", client)
            .body_json(&body)
            .send()
            .await;
        let status = resp.0.status();
        let retry_after = resp
            .0
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.0.into_body().into_string().await.expect("body");
        (status, retry_after, serde_json::from_str(&text).expect("JSON"))
    }
}

#[tokio::test]
async fn logins_are_rate_limited_per_account_and_per_address() {
    let s = server().await;
    for name in ["mallory-target", "bystander"] {
        let user =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": "password123"});
        s.ok(Method::POST, "/auth/basic/register", None, Some(user)).await;
    }
    let attacker = "198.51.100.66";
    let wrong = json!({"loginname": "mallory-target", "password": "not-the-password"});
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let (status, retry_after, v) = s.call_from(attacker, "/auth/basic/login", wrong.clone()).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                (v["error"].as_bool(), v["code"].as_str()),
                (Some(true), Some("rate_limited")),
                "{v}"
            );
            assert!(
                retry_after.is_some_and(|secs| (1..=6).contains(&secs)),
                "{retry_after:?}"
            );
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
            assert_eq!(retry_after, None);
        }
        statuses.push(status);
    }
    let allowed = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert_eq!(
        allowed,
        gradient_server::limits::LOGIN_PER_ACCOUNT.burst as usize,
        "the account's burst, then 429"
    );
    assert!(
        statuses[allowed..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "once limited, every attempt is refused without checking the password"
    );

    // Even the right password waits from there; the account's owner, elsewhere, is not locked out.
    let right = json!({"loginname": "mallory-target", "password": "password123"});
    let (status, _, _) = s.call_from(attacker, "/auth/basic/login", right.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, v) = s.call_from("203.0.113.5", "/auth/basic/login", right.clone()).await;
    assert_eq!(status, StatusCode::OK, "the owner from her own address: {v}");

    // Another account from another address is not affected.
    let other = json!({"loginname": "bystander", "password": "password123"});
    let (status, _, v) = s.call_from("203.0.113.9", "/auth/basic/login", other).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // After waiting as told, the right password logs in from there too.
    let started = std::time::Instant::now();
    let mut answer = (StatusCode::TOO_MANY_REQUESTS, Some(1), Value::Null);
    while answer.0 == StatusCode::TOO_MANY_REQUESTS && started.elapsed() < std::time::Duration::from_secs(20) {
        tokio::time::sleep(std::time::Duration::from_secs(answer.1.unwrap_or(1))).await;
        answer = s.call_from(attacker, "/auth/basic/login", right.clone()).await;
    }
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.2);
    assert!(answer.2["message"].as_str().is_some_and(|t| !t.is_empty()));
}

#[tokio::test]
async fn registrations_are_rate_limited_per_address() {
    let s = server().await;
    let register = |i: usize| json!({"username": format!("u{i}"), "name": "U", "email": format!("u{i}@example.com"), "password": "password123"});
    let burst = gradient_server::limits::REGISTER_PER_ADDRESS.burst as usize;
    for i in 0..burst {
        let (status, _, v) = s.call_from("192.0.2.10", "/auth/basic/register", register(i)).await;
        assert_eq!(status, StatusCode::OK, "{i}: {v}");
    }
    let (status, retry_after, v) = s.call_from("192.0.2.10", "/auth/basic/register", register(burst)).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
        "{v}"
    );
    assert!(retry_after.is_some_and(|secs| secs >= 1));
    let (status, _, v) = s.call_from("192.0.2.11", "/auth/basic/register", register(burst)).await;
    assert_eq!(status, StatusCode::OK, "another address registers: {v}");
}

/// An SSE stream read as text: its chunks, until `end` or the stream's end.
struct Events(std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>);

impl Events {
    async fn open(s: &Server, path: &str, token: Option<&str>) -> Events {
        Self::resume(s, path, token, None).await
    }

    /// Opens the stream with `Last-Event-ID: last` when given.
    async fn resume(s: &Server, path: &str, token: Option<&str>, last: Option<&str>) -> Events {
        let mut req = s.client.get(format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await;
        resp.assert_status_is_ok();
        Events(Box::pin(resp.0.into_body().into_bytes_stream()))
    }

    /// Everything received until the text contains `until` (or the stream ends), within `limit`.
    async fn read_until(&mut self, until: &str, limit: std::time::Duration) -> String {
        use tokio_stream::StreamExt;
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + limit;
        while !text.contains(until) {
            match tokio::time::timeout_at(deadline, self.0.next()).await {
                Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(_) => break,
                Err(_) => panic!("nothing like {until:?} within {limit:?}; got {text:?}"),
            }
        }
        text
    }
}

/// Runs git in `dir`.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn evaluating_without_a_commit_evaluates_the_head_of_the_branch() {
    let s = server_with(&[("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true")]).await;
    let owner = s.user("olga").await;
    let o = Some(owner.as_str());
    let repo = tempfile::tempdir().expect("tempdir");
    git(repo.path(), &["init", "-q", "-b", "trunk"]);
    git(repo.path(), &["commit", "-q", "--allow-empty", "-m", "one"]);
    let trunk = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["checkout", "-q", "-b", "dev"]);
    git(repo.path(), &["commit", "-q", "--allow-empty", "-m", "two"]);
    let dev = git(repo.path(), &["rev-parse", "HEAD"]);
    git(repo.path(), &["checkout", "-q", "trunk"]);
    let url = format!("file://{}", repo.path().display());
    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "acme"}))).await;
    s.ok(
        Method::POST,
        "/projects/acme",
        o,
        Some(json!({"name": "web", "repository": url})),
    )
    .await;
    // No body at all (no Content-Type either), `{}`, `null`: the default branch's head, and its name.
    for body in [None, Some(json!({})), Some(Value::Null)] {
        let e = s.ok(Method::POST, "/projects/acme/web/evaluate", o, body.clone()).await;
        assert_eq!(
            (e["commit"].as_str(), e["branch"].as_str()),
            (Some(trunk.as_str()), Some("trunk")),
            "{body:?}: {e}"
        );
        assert_eq!(e["trigger"], "Manual");
    }
    // A commit: that one.
    let e = s
        .ok(
            Method::POST,
            "/projects/acme/web/evaluate",
            o,
            Some(json!({"commit": dev})),
        )
        .await;
    assert_eq!(e["commit"].as_str(), Some(dev.as_str()));
    // The project's branch when it has one.
    s.ok(Method::PATCH, "/projects/acme/web", o, Some(json!({"branch": "dev"})))
        .await;
    let e = s.ok(Method::POST, "/projects/acme/web/evaluate", o, None).await;
    assert_eq!(
        (e["commit"].as_str(), e["branch"].as_str()),
        (Some(dev.as_str()), Some("dev")),
        "{e}"
    );
    // A branch the repository lacks, a commit of the wrong type.
    s.ok(Method::PATCH, "/projects/acme/web", o, Some(json!({"branch": "gone"})))
        .await;
    let (status, v) = s.call(Method::POST, "/projects/acme/web/evaluate", o, None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("branch_not_found")),
        "{v}"
    );
    let (status, v) = s
        .call(
            Method::POST,
            "/projects/acme/web/evaluate",
            o,
            Some(json!({"commit": 5})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json")),
        "{v}"
    );
    // A repository that cannot be read: 422, not 500.
    s.ok(
        Method::PATCH,
        "/projects/acme/web",
        o,
        Some(json!({"branch": null, "repository": "file:///nonexistent/gradient-repo"})),
    )
    .await;
    let (status, v) = s.call(Method::POST, "/projects/acme/web/evaluate", o, None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("repository_unreachable")),
        "{v}"
    );
}

/// The `(event type, id, data)` of each complete event in an SSE text.
fn sse_events(text: &str) -> Vec<(String, String, String)> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .map(|v| v.strip_prefix(' ').unwrap_or(v))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let kind = field("event:");
            let kind = if kind.is_empty() { "message".to_owned() } else { kind };
            (kind, field("id:"), field("data:"))
        })
        .collect()
}

/// The numeric order of an evaluation event's id: its time, then its key (`""` or the `.drv` path).
fn event_order(id: &str) -> (i64, String) {
    let (at, key) = id.find('/').map_or((id, ""), |i| id.split_at(i));
    (at.parse().expect("an event id starts with a time"), key.to_owned())
}

#[tokio::test]
async fn evaluation_event_ids_are_unique_and_increasing_and_resuming_skips_nothing() {
    use gradient_domain::ports::Clock;
    use gradient_domain::ports::storage::{Evaluations, Projects};
    let s = server().await;
    let owner = s.user("olga").await;
    let id = queued_evaluation(&s, &owner).await;
    let storage = &s.storage;
    let evaluation = gradient_domain::EvaluationId(id.parse().expect("uuid"));
    let e = storage.evaluation(evaluation).await.expect("read").expect("evaluation");
    let org = storage
        .project_by_id(e.project_id)
        .await
        .expect("read")
        .expect("project")
        .org_id;
    // Four builds that appear at the same instant (as one worker's report creates them).
    let paths: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| format!("/nix/store/{}-{n}.drv", n.repeat(32)))
        .collect();
    let derivations: Vec<_> = paths
        .iter()
        .map(|p| gradient_domain::model::Derivation {
            drv_path: p.clone(),
            system: "x86_64-linux".into(),
            required_features: vec![],
            outputs: Default::default(),
            inputs: vec![],
        })
        .collect();
    storage.put_derivations(org, &derivations).await.expect("derivations");
    let at = gradient_domain::ports::clock::SystemClock.now();
    let builds = storage.link_builds(evaluation, org, &paths, at).await.expect("builds");

    let path = format!("/evals/{id}/events");
    let within = std::time::Duration::from_secs(5);
    let mut all = Events::open(&s, &path, Some(&owner)).await;
    let text = all.read_until(paths[3].as_str(), within).await;
    let events = sse_events(&text);
    let builds_seen: Vec<&(String, String, String)> = events.iter().filter(|e| e.0 == "build").collect();
    assert_eq!(builds_seen.len(), 4, "one event per build: {events:?}");
    let ids: Vec<(i64, String)> = events.iter().map(|e| event_order(&e.1)).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase, none shared: {events:?}"
    );

    // A reader that got only the first of the builds resumes with the other three, nothing twice.
    let first_build = &builds_seen[0].1;
    let mut resumed = Events::resume(&s, &path, Some(&owner), Some(first_build)).await;
    let text = resumed.read_until(paths[3].as_str(), within).await;
    let rest: Vec<String> = sse_events(&text).into_iter().map(|e| e.2).collect();
    assert_eq!(rest.len(), 3, "{rest:?}");
    for (p, data) in paths[1..].iter().zip(&rest) {
        assert!(data.contains(p.as_str()), "{p} in order: {rest:?}");
    }

    // A later change to one build comes after everything, with a greater id.
    let mut b = builds.into_iter().find(|b| b.drv_path == paths[1]).expect("build b");
    b.move_to(
        gradient_domain::status::BuildStatus::Aborted,
        at + chrono::TimeDelta::milliseconds(5),
    );
    storage.update_build(&b).await.expect("update");
    let text = all.read_until("Aborted", within).await;
    let later = sse_events(&text);
    assert_eq!(later.len(), 1, "{later:?}");
    assert!(later[0].2.contains(&paths[1]), "{later:?}");
    assert!(
        event_order(&later[0].1) > *ids.last().expect("ids"),
        "{later:?} after {ids:?}"
    );
}

/// An org `acme` of `owner` with a project and a queued evaluation; answers the evaluation's id.
async fn queued_evaluation(s: &Server, owner: &str) -> String {
    let o = Some(owner);
    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "acme"}))).await;
    s.ok(
        Method::POST,
        "/projects/acme",
        o,
        Some(json!({"name": "web", "repository": "https://example.com/web.git"})),
    )
    .await;
    let e = s
        .ok(
            Method::POST,
            "/projects/acme/web/evaluate",
            o,
            Some(json!({"commit": "0123456789abcdef0123456789abcdef01234567"})),
        )
        .await;
    e["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn live_streams_end_within_seconds_of_losing_access() {
    let s = server().await;
    let owner = s.user("olga").await;
    let id = queued_evaluation(&s, &owner).await;
    let viewer = s.user("victor").await;
    let key = s
        .ok(
            Method::POST,
            "/user/keys",
            Some(&viewer),
            Some(json!({"name": "watch"})),
        )
        .await;
    let (key_id, key) = (
        key["id"].as_str().expect("id").to_owned(),
        key["key"].as_str().expect("key").to_owned(),
    );
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(&owner),
        Some(json!({"user": "victor", "role": "View"})),
    )
    .await;
    let path = format!("/evals/{id}/events");
    let within = std::time::Duration::from_secs(8);

    // A member removed: the session's stream ends.
    let mut by_session = Events::open(&s, &path, Some(&viewer)).await;
    let first = by_session.read_until("event: evaluation", within).await;
    assert!(first.contains("Queued"), "{first}");
    let mut by_key = Events::open(&s, &path, Some(&key)).await;
    by_key.read_until("event: evaluation", within).await;
    s.call(
        Method::DELETE,
        "/orgs/acme/users",
        Some(&owner),
        Some(json!({"user": "victor"})),
    )
    .await;
    let rest = by_session.read_until("access_revoked", within).await;
    assert!(rest.contains("event: end"), "{rest}");
    let rest = by_key.read_until("access_revoked", within).await;
    assert!(rest.contains("event: end"), "{rest}");

    // A key deleted: its stream ends, even while the member still belongs.
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(&owner),
        Some(json!({"user": "victor", "role": "View"})),
    )
    .await;
    let mut by_key = Events::open(&s, &path, Some(&key)).await;
    by_key.read_until("event: evaluation", within).await;
    s.ok(Method::DELETE, &format!("/user/keys/{key_id}"), Some(&viewer), None)
        .await;
    by_key.read_until("access_revoked", within).await;

    // An organization made private: an anonymous reader's stream of the log ends.
    s.ok(Method::PATCH, "/orgs/acme", Some(&owner), Some(json!({"public": true})))
        .await;
    let mut anonymous = Events::open(&s, &path, None).await;
    anonymous.read_until("event: evaluation", within).await;
    s.ok(
        Method::PATCH,
        "/orgs/acme",
        Some(&owner),
        Some(json!({"public": false})),
    )
    .await;
    anonymous.read_until("access_revoked", within).await;

    // Meanwhile a viewer who keeps access keeps the stream: nothing ends it.
    let mut owners = Events::open(&s, &path, Some(&owner)).await;
    owners.read_until("event: evaluation", within).await;
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(4500),
        owners.read_until("access_revoked", within),
    )
    .await;
    assert!(waited.is_err(), "the owner's stream was ended: {waited:?}");
}

#[tokio::test]
async fn live_streams_answer_errors_as_json() {
    let s = server().await;
    let owner = s.user("pia").await;
    let id = queued_evaluation(&s, &owner).await;
    for (path, status) in [
        ("/api/v1/evals/not-a-uuid/events".to_owned(), StatusCode::BAD_REQUEST),
        (format!("/api/v1/evals/{id}/log"), StatusCode::BAD_REQUEST),
        (format!("/api/v1/evals/{id}/events"), StatusCode::NOT_FOUND),
        ("/api/v1/builds/not-a-uuid/log/live".to_owned(), StatusCode::BAD_REQUEST),
        (
            format!("/api/v1/builds/{}/log/live", uuid::Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let resp = s.client.get(&path).send().await;
        let got = resp.0.status();
        let ct = resp.0.content_type().unwrap_or_default().to_owned();
        let text = resp.0.into_body().into_string().await.expect("body");
        assert_eq!(got, status, "{path}: {text}");
        assert!(ct.starts_with("application/json"), "{path}: {ct}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["error"], true, "{path}: {v}");
        assert!(v["code"].as_str().is_some_and(|c| !c.is_empty()), "{path}: {v}");
    }
}

#[tokio::test]
async fn acting_on_a_private_evaluation_answers_as_for_a_missing_one() {
    let s = server().await;
    let owner = s.user("quinn").await;
    let id = queued_evaluation(&s, &owner).await;
    let outsider = s.user("rita").await;
    let missing = uuid::Uuid::new_v4().to_string();
    for method in ["abort", "restart"] {
        let (status, hidden) = s
            .post(&format!("/evals/{id}"), Some(&outsider), json!({"method": method}))
            .await;
        let (status_missing, absent) = s
            .post(&format!("/evals/{missing}"), Some(&outsider), json!({"method": method}))
            .await;
        assert_eq!(
            (status, status_missing),
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "{hidden} {absent}"
        );
        assert_eq!(
            hidden["message"].as_str().map(|m| m.replace(&id, "X")),
            absent["message"].as_str().map(|m| m.replace(&missing, "X")),
            "{method}: a private evaluation answers exactly like a missing one"
        );
        assert!(!hidden.to_string().contains("acme"), "{hidden}");
    }
    let e = s.ok(Method::GET, &format!("/evals/{id}"), Some(&owner), None).await;
    assert_eq!(e["evaluation"]["status"], "Queued", "nothing was aborted");
}

#[tokio::test]
async fn wrong_json_types_are_refused_not_coerced() {
    let s = server().await;
    let token = s.user("sam").await;
    let t = Some(token.as_str());
    for body in [
        json!({"name": 123}),
        json!({"name": true}),
        json!({"name": "typed", "public": "true"}),
        json!({"name": "typed", "display_name": 5}),
        json!(["typed"]),
    ] {
        let (status, v) = s.post("/orgs", t, body.clone()).await;
        assert_err((status, v.clone()), StatusCode::BAD_REQUEST, "invalid_json");
        let _ = body;
    }
    let (status, v) = s.post("/orgs", t, json!({"name": 123})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("'name'") && m.contains("string")),
        "{v}"
    );
    let register = json!({"username": 42, "name": "x", "email": "n@example.com", "password": "password123"});
    assert_err(
        s.post("/auth/basic/register", None, register).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    let login = json!({"loginname": "sam", "password": 12345678});
    assert_err(
        s.post("/auth/basic/login", None, login).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    let key = json!({"name": "k", "permissions": ["view_org", 7]});
    assert_err(
        s.post("/user/keys", t, key).await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_eq!(
        s.ok(Method::GET, "/orgs", t, None).await,
        json!([]),
        "nothing was created"
    );
    // Well-typed bodies still work.
    s.ok(
        Method::POST,
        "/orgs",
        t,
        Some(json!({"name": "typed", "public": false})),
    )
    .await;
}

#[tokio::test]
async fn control_characters_long_branches_and_blank_passwords_are_refused() {
    let s = server().await;
    let token = s.user("tess").await;
    let t = Some(token.as_str());
    for bad in [
        "A\u{0}B",
        "tab\there",
        "line\nbreak",
        "del\u{7f}",
        "c1\u{85}",
        "\u{1b}[31mred",
    ] {
        assert_err(
            s.post("/orgs", t, json!({"name": "ctl", "display_name": bad})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        assert_err(
            s.post("/user/keys", t, json!({"name": bad})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
        let user = json!({"username": "ctl", "name": bad, "email": "ctl@example.com", "password": "password123"});
        assert_err(
            s.post("/auth/basic/register", None, user).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        );
    }
    assert_err(
        s.post("/orgs", t, json!({"name": "ctl\n"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );
    s.ok(
        Method::POST,
        "/orgs",
        t,
        Some(json!({"name": "ctl", "description": "two\nlines\tand a tab"})),
    )
    .await;
    let long = "b".repeat(3000);
    for branch in ["main\n", "ma\u{0}in", long.as_str(), "x y"] {
        let project = json!({"name": "p", "repository": "https://example.com/p.git", "branch": branch});
        assert_err(
            s.post("/projects/ctl", t, project).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_branch",
        );
    }
    let longest = "b".repeat(255);
    let project = json!({"name": "p", "repository": "https://example.com/p.git", "branch": longest});
    s.ok(Method::POST, "/projects/ctl", t, Some(project)).await;
    assert_err(
        s.call(Method::PATCH, "/projects/ctl/p", t, Some(json!({"branch": long})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_branch",
    );
    for password in ["        ", "\t\t\t\t\t\t\t\t", "short"] {
        let user = json!({"username": "blank", "name": "B", "email": "blank@example.com", "password": password});
        assert_err(
            s.post("/auth/basic/register", None, user).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        );
    }
}

#[tokio::test]
async fn a_push_to_a_3000_character_branch_queues_nothing() {
    let s = server().await;
    let token = s.user("uma").await;
    let t = Some(token.as_str());
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    s.ok(
        Method::POST,
        "/projects/acme",
        t,
        Some(json!({"name": "web", "repository": "https://git.example.com/acme/web.git"})),
    )
    .await;
    let secret = s.ok(Method::POST, "/orgs/acme/webhook-secret", t, None).await;
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    let deliver = |branch: String| {
        let body = json!({"ref": format!("refs/heads/{branch}"), "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": {"html_url": "https://git.example.com/acme/web", "clone_url": "https://git.example.com/acme/web.git"}})
        .to_string();
        let digest = openssl(&["dgst", "-sha256", "-hmac", &secret], body.as_bytes());
        let signature = digest.split_whitespace().last().expect("digest").to_owned();
        let req = s
            .client
            .post("/api/v1/hooks/gitea/acme")
            .header("Content-Type", "application/json")
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Signature", signature)
            .body(body);
        async move {
            let resp = req.send().await;
            let status = resp.0.status();
            let text = resp.0.into_body().into_string().await.expect("body");
            (status, serde_json::from_str::<Value>(&text).expect("JSON"))
        }
    };
    assert_err(
        deliver("b".repeat(3000)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_branch",
    );
    assert_err(
        deliver("main\u{0}".to_owned()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_branch",
    );
    assert_eq!(
        s.ok(Method::GET, "/projects/acme/web/evaluations", t, None).await,
        json!([])
    );
    let (status, v) = deliver("main".to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["message"]["queued"].as_array().map(Vec::len), Some(1), "{v}");
}

/// A forge's payload as written by hand from its documented format (`domain/tests/fixtures/forge/`).
fn forge_fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../domain/tests/fixtures/forge/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Posts a forge delivery to `/api/v1{path}` with `headers` and exactly `body`.
async fn deliver_hook(s: &Server, path: &str, headers: &[(&str, String)], body: &[u8]) -> (StatusCode, Value) {
    let mut req = s
        .client
        .post(format!("/api/v1{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v.clone());
    }
    let resp = req.send().await;
    let status = resp.0.status();
    let text = resp.0.into_body().into_string().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

#[tokio::test]
async fn pull_requests_through_the_webhooks_follow_the_projects_settings() {
    let s = server().await;
    let token = s.user("paula").await;
    let t = Some(token.as_str());
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    let web = s
        .ok(
            Method::POST,
            "/projects/acme",
            t,
            Some(json!({"name": "web", "repository": "https://github.com/acme/web.git"})),
        )
        .await;
    assert_eq!(
        (web["pull_requests"].clone(), web["fork_pull_requests"].clone()),
        (json!(true), json!(false))
    );
    let off = s
        .ok(
            Method::POST,
            "/projects/acme",
            t,
            Some(json!({"name": "off", "repository": "https://github.com/acme/web.git", "pull_requests": false})),
        )
        .await;
    assert_eq!(off["pull_requests"], false);
    let secret = s.ok(Method::POST, "/orgs/acme/webhook-secret", t, None).await;
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    let github = |event: &str, body: &[u8]| {
        let sig = openssl(&["dgst", "-sha256", "-hmac", &secret], body);
        vec![
            ("X-GitHub-Event", event.to_owned()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", sig.split_whitespace().last().expect("digest")),
            ),
        ]
    };

    // Opened in the repository itself: one evaluation (project `off` has pull requests off), at the head.
    let opened = forge_fixture("github_pull_request_opened");
    let (status, v) = deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &opened), &opened).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let queued = v["message"]["queued"].as_array().expect("queued").clone();
    assert_eq!(queued.len(), 1, "{v}");
    let id = queued[0].as_str().expect("id");
    let e = s.ok(Method::GET, &format!("/evals/{id}"), t, None).await;
    let e = &e["evaluation"];
    assert_eq!(e["commit"], "3f786850e387550fdab836ed7e6dc881de23001b", "{e}");
    assert_eq!(e["trigger"], "Webhook");
    assert_eq!(e["branch"], "docs-theme");
    assert_eq!(
        e["pull_request"],
        json!({"number": 12, "fork": false, "head_repository": "https://github.com/acme/web.git",
               "head_branch": "docs-theme", "head_commit": "3f786850e387550fdab836ed7e6dc881de23001b",
               "fetch_ref": "refs/pull/12/head"}),
        "{e}"
    );
    let list = s.ok(Method::GET, "/projects/acme/web/evaluations", t, None).await;
    assert_eq!(list[0]["pull_request"]["number"], 12, "{list}");

    // The same delivery with a wrong signature: 401, nothing queued.
    let mut forged = github("pull_request", &opened);
    forged[1].1 = format!("sha256={}", "0".repeat(64));
    assert_err(
        deliver_hook(&s, "/hooks/github/acme", &forged, &opened).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // A fork's: nothing until the project allows forks; then its test merge, by the merge ref.
    let fork = forge_fixture("github_pull_request_synchronize_fork");
    let (status, v) = deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &fork), &fork).await;
    assert_eq!(
        (status, v["message"]["queued"].clone()),
        (StatusCode::OK, json!([])),
        "{v}"
    );
    let patched = s
        .ok(
            Method::PATCH,
            "/projects/acme/web",
            t,
            Some(json!({"fork_pull_requests": true})),
        )
        .await;
    assert_eq!(
        (patched["pull_requests"].clone(), patched["fork_pull_requests"].clone()),
        (json!(true), json!(true))
    );
    let (status, v) = deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &fork), &fork).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let fork_id = v["message"]["queued"][0].as_str().expect("queued").to_owned();
    let e = s.ok(Method::GET, &format!("/evals/{fork_id}"), t, None).await;
    assert_eq!(
        e["evaluation"]["commit"], "c3499c2729730a7f807efb8676a92dcb6f8a3f8f",
        "{e}"
    );
    assert_eq!(e["evaluation"]["pull_request"]["fork"], true);
    assert_eq!(e["evaluation"]["pull_request"]["fetch_ref"], "refs/pull/12/merge");
    assert_eq!(
        e["evaluation"]["pull_request"]["head_commit"],
        "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
    );
    // Its new commits superseded the same pull request's evaluation.
    let first = s.ok(Method::GET, &format!("/evals/{id}"), t, None).await;
    assert_eq!(first["evaluation"]["status"], "Aborted", "{first}");

    // Labels: accepted, nothing queued. Closed: the running evaluation is aborted.
    let labeled = forge_fixture("github_pull_request_labeled");
    let (status, v) = deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &labeled), &labeled).await;
    assert_eq!(
        (status, v["message"]["queued"].clone()),
        (StatusCode::OK, json!([])),
        "{v}"
    );
    let closed = forge_fixture("github_pull_request_closed");
    let (status, v) = deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &closed), &closed).await;
    assert_eq!(
        (status, v["message"]["queued"].clone()),
        (StatusCode::OK, json!([])),
        "{v}"
    );
    let e = s.ok(Method::GET, &format!("/evals/{fork_id}"), t, None).await;
    assert_eq!(e["evaluation"]["status"], "Aborted", "{e}");
    assert!(
        e["evaluation"]["errors"]
            .to_string()
            .contains("pull request #12 was closed"),
        "{e}"
    );

    // A signed pull request whose head is not a commit: 422 invalid_payload.
    let mut bad: Value = serde_json::from_slice(&opened).expect("json");
    bad["pull_request"]["head"]["sha"] = json!("main");
    let bad = serde_json::to_vec(&bad).expect("json");
    assert_err(
        deliver_hook(&s, "/hooks/github/acme", &github("pull_request", &bad), &bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_payload",
    );

    // GitLab (the token is the secret) and Gitea (hex HMAC), each on a project of its own repository.
    for (name, repository) in [
        ("gl", "https://gitlab.example.com/acme/web.git"),
        ("gt", "https://git.example.com/acme/web.git"),
    ] {
        let body = json!({"name": name, "repository": repository, "fork_pull_requests": true});
        s.ok(Method::POST, "/projects/acme", t, Some(body)).await;
    }
    let mr = forge_fixture("gitlab_merge_request_update_fork");
    let headers = [
        ("X-Gitlab-Event", "Merge Request Hook".to_owned()),
        ("X-Gitlab-Token", secret.clone()),
    ];
    let (status, v) = deliver_hook(&s, "/hooks/gitlab/acme", &headers, &mr).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mr_id = v["message"]["queued"][0].as_str().expect("queued").to_owned();
    let e = s.ok(Method::GET, &format!("/evals/{mr_id}"), t, None).await;
    assert_eq!(
        e["evaluation"]["pull_request"]["fetch_ref"], "refs/merge-requests/7/head",
        "{e}"
    );
    assert_eq!(e["evaluation"]["pull_request"]["fork"], true);
    let labels = forge_fixture("gitlab_merge_request_update_labels");
    let (status, v) = deliver_hook(&s, "/hooks/gitlab/acme", &headers, &labels).await;
    assert_eq!(
        (status, v["message"]["queued"].clone()),
        (StatusCode::OK, json!([])),
        "{v}"
    );
    let pr = forge_fixture("gitea_pull_request_synchronized");
    let sig = openssl(&["dgst", "-sha256", "-hmac", &secret], &pr);
    let headers = [
        ("X-Gitea-Event", "pull_request".to_owned()),
        (
            "X-Gitea-Signature",
            sig.split_whitespace().last().expect("digest").to_owned(),
        ),
    ];
    let (status, v) = deliver_hook(&s, "/hooks/gitea/acme", &headers, &pr).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["message"]["queued"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test]
async fn a_webhook_of_an_unknown_org_answers_as_one_without_a_secret_or_a_wrong_signature() {
    let s = server().await;
    let token = s.user("vera").await;
    s.ok(
        Method::POST,
        "/orgs",
        Some(&token),
        Some(json!({"name": "private-org"})),
    )
    .await;
    let deliver = |org: &str| {
        let req = s
            .client
            .post(format!("/api/v1/hooks/gitea/{org}"))
            .header("Content-Type", "application/json")
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Signature", "00")
            .body("{}");
        async move {
            let resp = req.send().await;
            let status = resp.0.status();
            let text = resp.0.into_body().into_string().await.expect("body");
            (status, text)
        }
    };
    let existing = deliver("private-org").await;
    assert_eq!(existing.0, StatusCode::UNAUTHORIZED, "{}", existing.1);
    assert_eq!(deliver("no-such-org").await, existing, "no secret yet: same answer");
    s.ok(Method::POST, "/orgs/private-org/webhook-secret", Some(&token), None)
        .await;
    assert_eq!(deliver("private-org").await, existing, "wrong signature: same answer");
}

/// The schema a component `$ref` names.
fn component<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference.rsplit('/').next().expect("ref name");
    &doc["components"]["schemas"][name]
}

/// Every `null` in `value` is a property its schema declares `nullable` (recursing into objects and arrays).
#[track_caller]
fn assert_nulls_are_declared(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => component(doc, r),
        None => match schema["allOf"].as_array().and_then(|a| a.first()) {
            Some(inner) if value.is_object() => return assert_nulls_are_declared(doc, inner, value, at),
            _ => schema,
        },
    };
    match value {
        Value::Null => assert_eq!(
            schema["nullable"], true,
            "{at} is null but not declared nullable: {schema}"
        ),
        Value::Object(map) => {
            for (k, v) in map {
                let prop = &schema["properties"][k];
                let prop = if prop.is_null() {
                    &schema["additionalProperties"]
                } else {
                    prop
                };
                assert!(!prop.is_null(), "{at}.{k} is not in the document: {schema}");
                assert_nulls_are_declared(doc, prop, v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_nulls_are_declared(doc, &schema["items"], v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_null_in_an_answer_is_declared_nullable_in_the_document() {
    let s = server().await;
    let token = s.user("nora").await;
    let t = Some(token.as_str());
    s.ok(Method::POST, "/user/keys", t, Some(json!({"name": "k"}))).await;
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    s.ok(Method::POST, "/caches", t, Some(json!({"name": "main"}))).await;
    let repo = "https://git.example.com/acme/web.git";
    s.ok(
        Method::POST,
        "/projects/acme",
        t,
        Some(json!({"name": "web", "repository": repo})),
    )
    .await;
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let e = s
        .ok(
            Method::POST,
            "/projects/acme/web/evaluate",
            t,
            Some(json!({"commit": commit})),
        )
        .await;
    let eval = format!("/evals/{}", e["id"].as_str().expect("id"));

    let resp = s.client.get("/api/v1/openapi.json").send().await;
    let doc: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("spec")).expect("json");
    let mut nulls = 0;
    for (path, template) in [
        ("/user/keys", "/user/keys"),
        ("/caches/main", "/caches/{cache}"),
        ("/projects/acme/web", "/projects/{org}/{project}"),
        (
            "/projects/acme/web/evaluations",
            "/projects/{org}/{project}/evaluations",
        ),
        ("/orgs/acme/forge", "/orgs/{org}/forge"),
        (eval.as_str(), "/evals/{id}"),
    ] {
        let (status, body) = s.get(path, t).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        nulls += body.to_string().matches("null").count();
        let schema =
            &doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json; charset=utf-8"]["schema"];
        assert!(!schema.is_null(), "{template} has no JSON answer in the document");
        assert_nulls_are_declared(&doc, schema, &body, path);
    }
    // The answers above do hold nulls (unused key, no local priority, no branch, no forge): the check ran.
    assert!(nulls >= 6, "expected nulls in the answers, found {nulls}");
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_allow() {
    let s = server().await;
    let token = s.user("olga").await;
    for (method, path, allow) in [
        (Method::PUT, "/api/v1/user/keys", "GET, HEAD, POST"),
        (
            Method::GET,
            "/api/v1/user/keys/7f3c1e52-4d1a-4c8e-9a55-0f6b2d9e8c11",
            "DELETE",
        ),
        (Method::POST, "/api/v1/orgs/acme", "GET, HEAD, PATCH, DELETE"),
        (Method::GET, "/api/v1/hooks/github", "POST"),
    ] {
        let resp = s
            .client
            .request(method.clone(), path)
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await;
        resp.assert_status(StatusCode::METHOD_NOT_ALLOWED);
        resp.assert_header("allow", allow);
        let v: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("json");
        assert_eq!(v["code"], "method_not_allowed", "{method} {path}: {v}");
    }
    // The cache's routes too (Nix's protocol and the push endpoints).
    s.ok(Method::POST, "/caches", Some(&token), Some(json!({"name": "main"})))
        .await;
    for (method, path, allow) in [
        (Method::GET, "/cache/main/import", "POST"),
        (Method::PUT, "/cache/main/missing", "POST"),
        (Method::DELETE, "/cache/main/nix-cache-info", "GET, HEAD, PUT"),
        (Method::POST, "/cache/main/nar/abc.nar.zst", "GET, HEAD, PUT"),
        (Method::DELETE, "/cache/main/abc.narinfo", "GET, HEAD, PUT"),
        (Method::DELETE, "/cache/main/abc.ls", "GET, HEAD, PUT"),
        (Method::PUT, "/cache/main/log/abc-x.drv", "GET, HEAD"),
    ] {
        let resp = s
            .client
            .request(method.clone(), path)
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await;
        resp.assert_status(StatusCode::METHOD_NOT_ALLOWED);
        resp.assert_header("allow", allow);
    }

    // An unknown path is a 404 without Allow.
    let resp = s.client.put("/api/v1/no/such/path").send().await;
    resp.assert_status(StatusCode::NOT_FOUND);
    resp.assert_header_is_not_exist("allow");

    // The document says so for every operation.
    let resp = s.client.get("/api/v1/openapi.json").send().await;
    let doc: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("spec")).expect("json");
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            for status in ["400", "401", "404", "405", "415", "422"] {
                assert!(
                    !op["responses"][status].is_null(),
                    "{method} {path} does not document {status}"
                );
            }
            let headers = op["responses"]["405"]["headers"].as_object();
            assert!(
                headers.is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("allow"))),
                "{method} {path}: 405 does not document Allow"
            );
        }
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let s = server().await;
    let token = s.user("pia").await;
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut req = s
            .client
            .post("/api/v1/orgs")
            .header("Authorization", format!("Bearer {token}"))
            .body("{\"name\": \"acme\"}");
        if let Some(ct) = content_type {
            req = req.content_type(ct);
        }
        let resp = req.send().await;
        resp.assert_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let v: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("json");
        assert_eq!(
            (v["error"].as_bool(), v["code"].as_str()),
            (Some(true), Some("unsupported_media_type")),
            "{content_type:?}: {v}"
        );
    }
    assert_eq!(
        s.ok(Method::GET, "/orgs", Some(&token), None).await,
        json!([]),
        "nothing was created"
    );
}

/// Found by fuzzing on PostgreSQL, which cannot store NUL in text: each of these was a 500 there (and stored
/// the NUL on SQLite). Now refused (422) before anything is written, or looked up as nothing.
#[tokio::test]
async fn text_with_nul_is_refused_before_it_reaches_the_database() {
    let s = server().await;
    let token = s.user("quin").await;
    let t = Some(token.as_str());
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    s.ok(Method::POST, "/caches", t, Some(json!({"name": "main"}))).await;
    let repo = "https://git.example.com/acme/web.git";
    s.ok(
        Method::POST,
        "/projects/acme",
        t,
        Some(json!({"name": "web", "repository": repo})),
    )
    .await;
    let nul = "a\u{0}b";
    let register = json!({"username": "nul", "name": nul, "email": "nul@example.com", "password": "password123"});
    for (method, path, body, code) in [
        (Method::POST, "/auth/basic/register", register, "invalid_input"),
        (
            Method::POST,
            "/orgs",
            json!({"name": "other", "display_name": nul}),
            "invalid_input",
        ),
        (
            Method::PATCH,
            "/orgs/acme",
            json!({"description": nul}),
            "invalid_input",
        ),
        (
            Method::POST,
            "/caches",
            json!({"name": "other", "description": nul}),
            "invalid_input",
        ),
        (
            Method::PATCH,
            "/caches/main",
            json!({"display_name": nul}),
            "invalid_input",
        ),
        (
            Method::POST,
            "/projects/acme",
            json!({"name": "other", "repository": repo, "branch": nul}),
            "invalid_branch",
        ),
        (
            Method::PATCH,
            "/projects/acme/web",
            json!({"description": nul}),
            "invalid_input",
        ),
        (Method::POST, "/user/keys", json!({"name": nul}), "invalid_input"),
        (
            Method::PUT,
            "/orgs/acme/forge",
            json!({"forge": "gitea", "api_url": format!("http://127.0.0.1:9/{nul}"), "token": "t"}),
            "invalid_api_url",
        ),
    ] {
        assert_err(
            s.call(method.clone(), path, t, Some(body)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        );
    }
    assert_err(
        s.post(
            "/auth/basic/login",
            None,
            json!({"loginname": nul, "password": "password123"}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    assert_err(
        s.call(Method::DELETE, "/orgs/acme/roles", t, Some(json!({"name": nul})))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Nothing was written.
    let orgs = s.ok(Method::GET, "/orgs", t, None).await;
    assert_eq!(orgs.as_array().map(Vec::len), Some(1), "{orgs}");
    assert_eq!(orgs[0]["description"], "", "{orgs}");
    assert_eq!(s.ok(Method::GET, "/caches/main", t, None).await["display_name"], "main");
    assert_eq!(s.ok(Method::GET, "/user/keys", t, None).await, json!([]));
    assert_eq!(s.ok(Method::GET, "/orgs/acme/forge", t, None).await, Value::Null);
}

#[tokio::test]
async fn roles_cannot_be_escalated() {
    let s = server().await;
    let owner = s.user("oscar").await;
    let hr = s.user("hana").await;
    s.user("vic").await;
    let o = Some(owner.as_str());
    let h = Some(hr.as_str());
    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "corp"}))).await;
    let role = json!({"name": "people", "permissions": ["view_org", "manage_members", "manage_roles"]});
    s.ok(Method::POST, "/orgs/corp/roles", o, Some(role)).await;
    s.ok(
        Method::POST,
        "/orgs/corp/users",
        o,
        Some(json!({"user": "hana", "role": "people"})),
    )
    .await;

    // She manages members, within what she holds herself.
    s.ok(
        Method::POST,
        "/orgs/corp/users",
        h,
        Some(json!({"user": "vic", "role": "View"})),
    )
    .await;
    for (body, what) in [
        (json!({"user": "hana", "role": "Admin"}), "making herself Admin"),
        (
            json!({"user": "vic", "role": "Write"}),
            "granting a role she does not hold",
        ),
        (json!({"user": "oscar", "role": "View"}), "demoting the owner"),
    ] {
        assert_err(
            s.post("/orgs/corp/users", h, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let members = s.ok(Method::GET, "/orgs/corp/users", o, None).await;
        let roles: Vec<(String, String)> = members
            .as_array()
            .expect("members")
            .iter()
            .map(|m| {
                (
                    m["username"].as_str().unwrap_or_default().to_owned(),
                    m["role"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        assert!(
            roles.contains(&("oscar".into(), "Admin".into())) && roles.contains(&("hana".into(), "people".into())),
            "{what} changed nothing: {roles:?}"
        );
    }
    assert_err(
        s.call(Method::DELETE, "/orgs/corp/users", h, Some(json!({"user": "oscar"})))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_err(
        s.post(
            "/orgs/corp/roles",
            h,
            json!({"name": "x", "permissions": ["view_org", "delete_org"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // The last Admin cannot be demoted or removed, even by herself.
    assert_err(
        s.post("/orgs/corp/users", o, json!({"user": "oscar", "role": "View"}))
            .await,
        StatusCode::CONFLICT,
        "last_admin",
    );
    assert_err(
        s.call(Method::DELETE, "/orgs/corp/users", o, Some(json!({"user": "oscar"})))
            .await,
        StatusCode::CONFLICT,
        "last_admin",
    );
    // She may leave.
    s.ok(Method::DELETE, "/orgs/corp/users", h, Some(json!({"user": "hana"})))
        .await;
}

/// Gives evaluation `id` builds of `(attribute, derivation name, status, input names)`, straight in storage.
async fn evaluation_with_builds(
    s: &Server,
    id: &str,
    builds: &[(&str, &str, gradient_domain::status::BuildStatus, &[&str])],
) {
    use gradient_domain::ports::Clock;
    use gradient_domain::ports::storage::{Evaluations, Projects};
    let storage = &s.storage;
    let evaluation = gradient_domain::EvaluationId(id.parse().expect("uuid"));
    let e = storage.evaluation(evaluation).await.expect("read").expect("evaluation");
    let org = storage
        .project_by_id(e.project_id)
        .await
        .expect("read")
        .expect("project")
        .org_id;
    let drv = |name: &str| {
        format!(
            "/nix/store/{}-{name}.drv",
            name.chars().next().unwrap_or('x').to_string().repeat(32)
        )
    };
    let derivations: Vec<_> = builds
        .iter()
        .map(|(_, name, _, inputs)| gradient_domain::model::Derivation {
            drv_path: drv(name),
            system: "x86_64-linux".into(),
            required_features: vec![],
            outputs: Default::default(),
            inputs: inputs.iter().map(|i| drv(i)).collect(),
        })
        .collect();
    storage.put_derivations(org, &derivations).await.expect("derivations");
    let paths: Vec<String> = builds.iter().map(|(_, name, _, _)| drv(name)).collect();
    let at = gradient_domain::ports::clock::SystemClock.now();
    let linked = storage.link_builds(evaluation, org, &paths, at).await.expect("builds");
    let entries: Vec<_> = builds
        .iter()
        .filter(|(attr, ..)| !attr.is_empty())
        .map(|(attr, name, ..)| gradient_domain::model::EntryPoint {
            evaluation_id: evaluation,
            attribute: (*attr).to_owned(),
            drv_path: drv(name),
        })
        .collect();
    storage
        .add_entry_points(evaluation, &entries)
        .await
        .expect("entry points");
    for mut b in linked {
        let status = builds.iter().find(|(_, n, ..)| drv(n) == b.drv_path).expect("build").2;
        if !b.move_to(status, at + chrono::TimeDelta::milliseconds(1)) {
            // Completed and Failed come after Building.
            b.move_to(gradient_domain::status::BuildStatus::Building, at);
            assert!(b.move_to(status, at + chrono::TimeDelta::milliseconds(1)), "{status:?}");
        }
        storage.update_build(&b).await.expect("update");
    }
}

#[tokio::test]
async fn the_diff_names_what_broke_what_was_fixed_and_the_failure_that_broke_the_rest() {
    use gradient_domain::status::BuildStatus::{Completed, DependencyFailed, Failed};
    let s = server().await;
    let owner = s.user("olga").await;
    let o = Some(owner.as_str());
    let first = queued_evaluation(&s, &owner).await;
    evaluation_with_builds(
        &s,
        &first,
        &[
            ("pkgs.lib", "lib", Completed, &[]),
            ("pkgs.ok", "ok", Failed, &[]),
            ("pkgs.gone", "gone", Completed, &[]),
        ],
    )
    .await;
    let alone = s.ok(Method::GET, &format!("/evals/{first}/diff"), o, None).await;
    assert_eq!(alone["previous"], Value::Null, "{alone}");
    let news: Vec<&str> = alone["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["change"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(news, ["new", "new", "new"], "{alone}");

    // An evaluation in between that never got to builds (it failed to evaluate, or still evaluates) is not
    // what the next one is compared with.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.ok(
        Method::POST,
        "/projects/acme/web/evaluate",
        o,
        Some(json!({"commit": "2123456789abcdef0123456789abcdef01234567"})),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = s
        .ok(
            Method::POST,
            "/projects/acme/web/evaluate",
            o,
            Some(json!({"commit": "1123456789abcdef0123456789abcdef01234567"})),
        )
        .await;
    let second = second["id"].as_str().expect("id").to_owned();
    evaluation_with_builds(
        &s,
        &second,
        &[
            ("pkgs.lib", "lib2", Failed, &[]),
            ("pkgs.ok", "ok2", Completed, &[]),
            ("pkgs.app", "app", DependencyFailed, &["mid"]),
            ("", "mid", DependencyFailed, &["lib2"]),
        ],
    )
    .await;
    let d = s.ok(Method::GET, &format!("/evals/{second}/diff"), o, None).await;
    assert_eq!(d["previous"], first.as_str(), "{d}");
    let changes: Vec<(String, String, Value)> = d["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap_or("").to_owned(),
                c["attribute"].as_str().unwrap_or("").to_owned(),
                c["previous_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("newly_failing".to_owned(), "pkgs.lib".to_owned(), json!("Completed")),
            ("newly_fixed".to_owned(), "pkgs.ok".to_owned(), json!("Failed")),
            ("new".to_owned(), "pkgs.app".to_owned(), Value::Null),
            ("removed".to_owned(), "pkgs.gone".to_owned(), json!("Completed")),
        ],
        "{d}"
    );
    let causes = d["root_causes"].as_array().expect("causes");
    assert_eq!(causes.len(), 1, "{d}");
    assert_eq!(causes[0]["cause"]["attributes"], json!(["pkgs.lib"]), "{d}");
    assert!(causes[0]["cause"]["build_id"].is_string(), "{d}");
    let broken: Vec<&str> = causes[0]["dependents"]
        .as_array()
        .expect("dependents")
        .iter()
        .map(|b| b["drv_path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(broken.len(), 2, "mid and app, through mid: {d}");

    // Someone who may not see the organization gets what a missing evaluation gets.
    let outsider = s.user("oscar").await;
    let (status, body) = s.get(&format!("/evals/{second}/diff"), Some(&outsider)).await;
    let (missing_status, missing) = s
        .get(&format!("/evals/{}/diff", uuid::Uuid::new_v4()), Some(&outsider))
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (missing_status, missing["code"].clone())
    );
}

#[tokio::test]
async fn cache_stats_count_the_paths_a_cache_holds() {
    let s = server().await;
    let owner = s.user("olga").await;
    let o = Some(owner.as_str());
    s.ok(
        Method::POST,
        "/caches",
        o,
        Some(json!({"name": "main", "public": false})),
    )
    .await;
    let stats = s.ok(Method::GET, "/caches/main/stats", o, None).await;
    assert_eq!(stats, json!({"paths": 0, "bytes": 0, "recent_hits": []}));
    let (status, v) = s.get("/caches/main/stats", None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{v}"
    );
}

#[tokio::test]
async fn schedules_are_checked_and_kept_with_the_project() {
    let s = server().await;
    let t = s.user("alice").await;
    let t = Some(t.as_str());
    s.ok(Method::POST, "/orgs", t, Some(json!({"name": "acme"}))).await;
    let repo = "https://git.example.com/acme/web.git";
    for bad in ["every day", "* * * *", "61 * * * *", "* * * * * *", "0 0 0 * * * 2030"] {
        let answer = s
            .post(
                "/projects/acme",
                t,
                json!({"name": "web", "repository": repo, "schedule": bad}),
            )
            .await;
        assert_err(answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule");
    }
    assert_eq!(
        s.get("/projects/acme/web", t).await.0,
        StatusCode::NOT_FOUND,
        "nothing half-written"
    );
    let p = s
        .ok(
            Method::POST,
            "/projects/acme",
            t,
            Some(json!({"name": "web", "repository": repo, "schedule": " 0 3 * * * "})),
        )
        .await;
    assert_eq!(p["schedule"], "0 3 * * *");
    let p = s
        .ok(
            Method::PATCH,
            "/projects/acme/web",
            t,
            Some(json!({"schedule": "*/30 * * * * *"})),
        )
        .await;
    assert_eq!(p["schedule"], "*/30 * * * * *");
    let bad = s
        .call(
            Method::PATCH,
            "/projects/acme/web",
            t,
            Some(json!({"schedule": "nonsense"})),
        )
        .await;
    assert_err(bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule");
    let p = s
        .ok(Method::PATCH, "/projects/acme/web", t, Some(json!({"schedule": null})))
        .await;
    assert_eq!(p["schedule"], Value::Null);
}

#[tokio::test]
async fn actions_are_managed_by_editors_read_by_members_and_never_show_their_secret_again() {
    let s = server().await;
    let owner = s.user("alice").await;
    let viewer = s.user("bob").await;
    let outsider = s.user("eve").await;
    let (o, v, x) = (Some(owner.as_str()), Some(viewer.as_str()), Some(outsider.as_str()));
    s.ok(Method::POST, "/orgs", o, Some(json!({"name": "acme"}))).await;
    s.ok(
        Method::POST,
        "/orgs/acme/users",
        o,
        Some(json!({"user": "bob", "role": "View"})),
    )
    .await;
    let repo = "https://git.example.com/acme/web.git";
    s.ok(
        Method::POST,
        "/projects/acme",
        o,
        Some(json!({"name": "web", "repository": repo})),
    )
    .await;
    let base = "/projects/acme/web/actions";

    // Refusals, each with its code, and nothing written.
    let table = [
        (json!({"name": "h", "kind": "webhook"}), "invalid_url"),
        (
            json!({"name": "h", "kind": "webhook", "url": "ftp://x/y"}),
            "invalid_url",
        ),
        (
            json!({"name": "h", "kind": "webhook", "url": "http://127.0.0.1:9/h"}),
            "url_not_allowed",
        ),
        (
            json!({"name": "h", "kind": "webhook", "url": "http://localhost/h"}),
            "url_not_allowed",
        ),
        (
            json!({"name": "h", "kind": "webhook", "url": "https://h.example.com", "secret": "short"}),
            "invalid_secret",
        ),
        (
            json!({"name": "h", "kind": "webhook", "url": "https://h.example.com", "events": ["broken"]}),
            "invalid_events",
        ),
        (
            json!({"name": "h", "kind": "webhook", "url": "https://h.example.com", "events": []}),
            "invalid_events",
        ),
        (
            json!({"name": "h", "kind": "pager", "url": "https://h.example.com"}),
            "invalid_kind",
        ),
        (
            json!({"name": "", "kind": "webhook", "url": "https://h.example.com"}),
            "invalid_input",
        ),
        // Mail is off on this server.
        (
            json!({"name": "m", "kind": "mail", "recipients": ["ops@example.com"]}),
            "email_disabled",
        ),
    ];
    for (body, code) in table {
        assert_err(
            s.post(base, o, body.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        );
    }
    assert_eq!(s.ok(Method::GET, base, o, None).await, json!([]));

    let made = s
        .ok(
            Method::POST,
            base,
            o,
            Some(json!({"name": "hook", "kind": "webhook", "url": "https://hooks.example.com/ci"})),
        )
        .await;
    let secret = made["secret"].as_str().expect("the generated secret, once").to_owned();
    assert!(secret.len() >= 32, "{secret}");
    assert_eq!(
        made["events"],
        json!(["failed", "fixed"]),
        "changes of health by default"
    );
    let id = made["id"].as_str().expect("id").to_owned();
    let one = format!("{base}/{id}");
    assert_err(
        s.post(
            base,
            o,
            json!({"name": "hook", "kind": "webhook", "url": "https://hooks.example.com/2"}),
        )
        .await,
        StatusCode::CONFLICT,
        "name_taken",
    );

    // Members read, without the secret; the viewer may not change anything; an outsider learns nothing.
    let listed = s.ok(Method::GET, base, v, None).await;
    assert_eq!(listed[0]["url"], "https://hooks.example.com/ci");
    assert_eq!(listed[0]["secret"], Value::Null);
    assert_eq!(s.ok(Method::GET, &one, v, None).await["secret"], Value::Null);
    assert_err(
        s.call(Method::PATCH, &one, v, Some(json!({"enabled": false}))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    for path in [base.to_owned(), one.clone(), format!("{one}/deliveries")] {
        assert_err(s.get(&path, x).await, StatusCode::NOT_FOUND, "not_found");
    }
    assert_err(
        s.get(&format!("{base}/{}", uuid::Uuid::new_v4()), o).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Changes; a new secret is shown in that answer only.
    let changed = s
        .ok(
            Method::PATCH,
            &one,
            o,
            Some(json!({"events": ["completed", "failed"], "regenerate_secret": true})),
        )
        .await;
    assert_eq!(changed["events"], json!(["failed", "completed"]));
    let new_secret = changed["secret"].as_str().expect("the new secret").to_owned();
    assert_ne!(new_secret, secret);
    assert_err(
        s.call(Method::PATCH, &one, o, Some(json!({"url": "http://[::1]/h"})))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "url_not_allowed",
    );

    // A test delivery is queued and shows in the log.
    let test = s.ok(Method::POST, &format!("{one}/test"), o, None).await;
    assert_eq!(test["event"], "test");
    assert_eq!(test["state"], "pending");
    let log = s.ok(Method::GET, &format!("{one}/deliveries"), v, None).await;
    assert_eq!(log.as_array().map(Vec::len), Some(1), "{log}");

    // At most 20 actions per project.
    for i in 1..20 {
        let body = json!({"name": format!("h{i}"), "kind": "webhook", "url": "https://hooks.example.com/x"});
        s.ok(Method::POST, base, o, Some(body)).await;
    }
    assert_err(
        s.post(
            base,
            o,
            json!({"name": "h20", "kind": "webhook", "url": "https://hooks.example.com/x"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_actions",
    );

    s.ok(Method::DELETE, &one, o, None).await;
    assert_err(s.get(&one, o).await, StatusCode::NOT_FOUND, "not_found");
    let audit = s.ok(Method::GET, "/orgs/acme/audit-log", o, None).await;
    let text = audit.to_string();
    assert!(
        text.contains("action.created") && text.contains("action.deleted"),
        "{text}"
    );
    assert!(
        !text.contains(&secret) && !text.contains("hooks.example.com"),
        "no secret or URL in the audit log"
    );
}
