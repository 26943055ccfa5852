//! The web UI served at `/`: files with their cache rules, the single-page fallback for deep links, and the
//! server's own paths never answered with the page.

use gradient_server::config::Config;
use poem::EndpointExt;
use poem::http::StatusCode;
use poem::test::TestClient;
use std::collections::HashMap;

struct Ui {
    client: TestClient<poem::endpoint::BoxEndpoint<'static>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn server_with_ui() -> Ui {
    let base = tempfile::tempdir().expect("tempdir");
    let ui = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(ui.path().join("assets/immutable")).expect("mkdir");
    std::fs::write(ui.path().join("index.html"), "<!doctype html><title>Gradient</title>").expect("write");
    std::fs::write(ui.path().join("assets/immutable/start.abc123.js"), "console.log(1)").expect("write");
    std::fs::write(ui.path().join("assets/version.json"), "{}").expect("write");
    let env: HashMap<String, String> = [
        ("GRADIENT_BASE_DIR".to_owned(), base.path().display().to_string()),
        ("GRADIENT_FRONTEND_DIR".to_owned(), ui.path().display().to_string()),
    ]
    .into();
    let config = Config::from_vars(&env).expect("config");
    let state = gradient_server::build_state(&config).await.expect("state");
    Ui {
        client: TestClient::new(gradient_server::app(state).boxed()),
        _dirs: (base, ui),
    }
}

async fn get(ui: &Ui, path: &str) -> (StatusCode, String, String, String) {
    let resp = ui.client.get(path).send().await;
    let status = resp.0.status();
    let header = |name: &str| {
        resp.0
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (ct, cc) = (header("content-type"), header("cache-control"));
    let body = resp.0.into_body().into_string().await.expect("body");
    (status, ct, cc, body)
}

#[tokio::test]
async fn the_page_is_served_at_the_root_and_for_deep_links_without_caching() {
    let ui = server_with_ui().await;
    for path in [
        "/",
        "/evals/0b9e0c4e-5f7e-4f0c-9a51-2d3c4b5a6e7f",
        "/orgs/acme/projects/hello",
        "/signin",
    ] {
        let (status, ct, cc, body) = get(&ui, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        assert_eq!(cc, "no-cache", "{path}");
        assert!(body.contains("<title>Gradient</title>"), "{path}");
    }
}

#[tokio::test]
async fn hashed_assets_are_cached_for_a_year_and_other_files_are_revalidated() {
    let ui = server_with_ui().await;
    let (status, ct, cc, body) = get(&ui, "/assets/immutable/start.abc123.js").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "console.log(1)"));
    assert!(ct.starts_with("text/javascript"), "{ct}");
    assert_eq!(cc, "public, max-age=31536000, immutable");
    let (status, ct, cc, _) = get(&ui, "/assets/version.json").await;
    assert_eq!(
        (status, ct.as_str(), cc.as_str()),
        (StatusCode::OK, "application/json", "no-cache")
    );
}

#[tokio::test]
async fn a_missing_asset_and_the_servers_own_paths_are_not_answered_with_the_page() {
    let ui = server_with_ui().await;
    for path in [
        "/assets/immutable/gone.js",
        "/api/v2/orgs",
        "/api",
        "/cache/x/nix-cache-info-nope",
        "/metrics/x",
    ] {
        let (status, _, _, body) = get(&ui, path).await;
        assert_ne!(status, StatusCode::OK, "{path}");
        assert!(!body.contains("<title>Gradient</title>"), "{path}: {body}");
    }
    let (status, ct, _, _) = get(&ui, "/api/v1/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("application/json"), "{ct}");
    let (status, _, _, body) = get(&ui, "/../../etc/passwd").await;
    assert!(!body.contains("root:"), "{status}");
}

#[tokio::test]
async fn only_reads_are_answered() {
    let ui = server_with_ui().await;
    let resp = ui.client.post("/orgs/acme").send().await;
    assert_eq!(resp.0.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_configured_directory_without_a_build_stops_start_up_naming_the_variable() {
    let base = tempfile::tempdir().expect("tempdir");
    let empty = tempfile::tempdir().expect("tempdir");
    let env: HashMap<String, String> = [
        ("GRADIENT_BASE_DIR".to_owned(), base.path().display().to_string()),
        ("GRADIENT_FRONTEND_DIR".to_owned(), empty.path().display().to_string()),
    ]
    .into();
    let config = Config::from_vars(&env).expect("config");
    let Err(e) = gradient_server::build_state(&config).await else {
        panic!("started without a UI build");
    };
    let line = e.to_string();
    assert!(
        line.starts_with("GRADIENT_FRONTEND_DIR:") && line.contains("no index.html"),
        "{line}"
    );
}
