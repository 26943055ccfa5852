//! The quick-start flow against the real binary, persistence across restarts on both databases, the
//! served OpenAPI document, and start-up refusals.

use crate::harness::{Client, Server, fresh_postgres_database, start_failure};
use reqwest::Method;
use serde_json::{Value, json};

/// What the README's curl session does: register, log in, key, org, project, cache, subscription.
async fn set_up(c: &mut Client) {
    c.register_with_key("alice").await;
    c.ok(
        Method::POST,
        "/orgs",
        Some(json!({"name": "acme", "display_name": "ACME", "description": "CI"})),
    )
    .await;
    let project = json!({"name": "web", "display_name": "Web", "description": "",
        "repository": "https://git.example.com/acme/web.git", "wildcard": "packages.*.*, checks.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    c.ok(
        Method::POST,
        "/caches",
        Some(json!({"name": "main", "display_name": "Main", "description": "", "priority": 30, "public": false})),
    )
    .await;
    c.ok(Method::POST, "/orgs/acme/subscribe/main", None).await;
}

async fn read_back(c: &Client) {
    let orgs = c.ok(Method::GET, "/orgs", None).await;
    assert_eq!(orgs[0]["name"], "acme");
    assert_eq!(orgs[0]["display_name"], "ACME");
    let p = c.ok(Method::GET, "/projects/acme/web", None).await;
    assert_eq!(p["repository"], "https://git.example.com/acme/web.git");
    assert_eq!(p["wildcard"], "packages.*.*, checks.*.*");
    let cache = c.ok(Method::GET, "/caches/main", None).await;
    assert_eq!(
        (cache["priority"].as_i64(), cache["public"].as_bool()),
        (Some(30), Some(false))
    );
    let subs = c.ok(Method::GET, "/orgs/acme/subscribe", None).await;
    assert_eq!(
        subs.as_array()
            .map(|a| a.iter().map(|c| c["name"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("main")])
    );
    assert_eq!(c.ok(Method::GET, "/user", None).await["username"], "alice");
}

async fn survives_restart(vars: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), vars).await;
    let mut c = Client::new(&server);
    set_up(&mut c).await;
    read_back(&c).await;
    server.stop();

    let server = Server::start(dir.path(), vars).await;
    let mut c2 = Client::new(&server);
    c2.token = c.token.clone();
    read_back(&c2).await;
    // The session secret was kept too: a login from before the restart still works.
    let (status, _) = c2
        .call(
            Method::POST,
            "/auth/basic/register",
            Some(json!({"username": "alice", "name": "A", "email": "x@example.com", "password": "password123"})),
        )
        .await;
    assert_eq!(status, 409, "the user from before the restart still exists");
    server.stop();
}

#[tokio::test]
async fn sqlite_quick_start_flow_survives_a_restart() {
    survives_restart(&[]).await;
}

#[tokio::test]
async fn postgres_quick_start_flow_survives_a_restart() {
    let url = fresh_postgres_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    survives_restart(&[("GRADIENT_DATABASE_URL_FILE", url_file.to_str().expect("utf-8 path"))]).await;
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    let served: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.url))
        .await
        .expect("GET openapi.json")
        .json()
        .await
        .expect("JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/gradient.json")).expect("read"),
    )
    .expect("committed document is JSON");
    assert_eq!(served, committed, "openapi/gradient.json is stale");
    server.stop();
}

#[tokio::test]
async fn first_start_generates_private_secrets_and_a_changed_crypt_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]).await;
    server.stop();
    // Secrets and the database are the owner's only; so is the NAR directory.
    for (f, want) in [
        ("jwt-secret", 0o600),
        ("crypt-secret", 0o600),
        ("gradient.db", 0o600),
        ("nars", 0o700),
        ("nars/.tmp", 0o700),
    ] {
        let mode = std::fs::metadata(dir.path().join(f)).expect(f).permissions().mode();
        assert_eq!(mode & 0o777, want, "{f}");
    }
    let other = dir.path().join("other-crypt");
    std::fs::write(&other, "a-completely-different-crypt-secret-of-enough-length\n").expect("write");
    let out = start_failure(
        dir.path(),
        &[("GRADIENT_CRYPT_SECRET_FILE", other.to_str().expect("path"))],
    );
    assert!(
        out.contains("GRADIENT_CRYPT_SECRET_FILE: the crypt secret differs"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_configuration_stops_start_up_with_one_line_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, "short\n").expect("write");
    let table: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("GRADIENT_JWT_SECRET_FILE", short.to_str().expect("path"))],
            "GRADIENT_JWT_SECRET_FILE:",
        ),
        (
            vec![("GRADIENT_CRYPT_SECRET_FILE", "/nonexistent/crypt")],
            "GRADIENT_CRYPT_SECRET_FILE: cannot read",
        ),
        (
            vec![("GRADIENT_MAX_REQUEST_SIZE", "lots")],
            "GRADIENT_MAX_REQUEST_SIZE: invalid value 'lots'",
        ),
        (
            vec![("GRADIENT_DATABASE_URL_FILE", "/nonexistent/url")],
            "GRADIENT_DATABASE_URL_FILE: cannot read",
        ),
        (
            vec![
                ("GRADIENT_GITHUB_APP_ENABLE", "true"),
                ("GRADIENT_GITHUB_APP_APP_ID", "1"),
                ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE", short.to_str().expect("path")),
                ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE", short.to_str().expect("path")),
            ],
            "GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE: ",
        ),
        (
            vec![
                ("GRADIENT_GITHUB_APP_ENABLE", "true"),
                ("GRADIENT_GITHUB_APP_APP_ID", "1"),
                ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE", short.to_str().expect("path")),
            ],
            "GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE: ",
        ),
    ];
    for (vars, want) in table {
        let out = start_failure(dir.path(), &vars);
        let line = out.lines().find(|l| l.contains(want));
        assert!(line.is_some(), "expected a line with {want:?}, got:\n{out}");
    }
}
