//! The web UI in a real browser (Debian's chromium driven by `web/e2e/run.mjs` through playwright-core)
//! against the real server and a real worker building a real flake: sign up → organization → cache → project
//! → Evaluate now → green, live → the failing check's log from the evaluation page in one click → the cache
//! page's nix.conf snippet used by real `nix` (signatures required, a fresh store) substitutes the output.
//! Screenshots of every page land in `web/test-output/` (not committed); axe-core checks every page.
//!
//! Runs when `GRADIENT_TEST_BROWSER` names the browser (scripts/test sets `/usr/bin/chromium` after building
//! the UI); skipped otherwise, saying so.

use crate::harness::{Server, Worker};
use crate::nix::NIX_CONFIG;
use crate::pipeline::flake_repo;
use std::path::{Path, PathBuf};
use std::process::Command;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

#[tokio::test]
async fn the_web_ui_runs_the_ci_loop_in_a_browser() {
    let Ok(browser) = std::env::var("GRADIENT_TEST_BROWSER") else {
        eprintln!("skipped: GRADIENT_TEST_BROWSER is not set (scripts/test sets it)");
        return;
    };
    let dist = web_dir().join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "build the UI first (cd web && npm ci && npm run build)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, _commit) = flake_repo(dir.path());

    // The co-located worker of scripts/quickstart: registered in every organization created, so the
    // organization made in the browser has a worker without leaving it.
    let worker_id = uuid::Uuid::new_v4().to_string();
    let random: Vec<u8> = (0..3).flat_map(|_| uuid::Uuid::new_v4().into_bytes()).collect();
    let token = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, random);
    let token_file = dir.path().join("worker-token");
    std::fs::write(&token_file, &token).expect("token");
    let peers = dir.path().join("peers");
    std::fs::write(&peers, format!("*:{token}\n")).expect("peers");
    let server = Server::start(
        dir.path(),
        &[
            ("GRADIENT_FRONTEND_DIR", dist.to_str().expect("path")),
            ("GRADIENT_LOCAL_WORKER_ID", &worker_id),
            ("GRADIENT_LOCAL_WORKER_TOKEN_FILE", token_file.to_str().expect("path")),
        ],
    )
    .await;
    let proto = format!("ws://{}/proto", server.url.trim_start_matches("http://"));
    let worker = Worker::start(
        dir.path(),
        "web",
        &[
            ("GRADIENT_SERVER_URL", proto.as_str()),
            ("GRADIENT_WORKER_ID", &worker_id),
            ("GRADIENT_PEERS_FILE", peers.to_str().expect("path")),
            ("GRADIENT_CAPABILITIES_FETCH", "true"),
            ("GRADIENT_CAPABILITIES_EVAL", "true"),
            ("GRADIENT_CAPABILITIES_BUILD", "true"),
            ("NIX_CONFIG", NIX_CONFIG),
        ],
    );

    let out_dir = web_dir().join("test-output");
    std::fs::create_dir_all(&out_dir).expect("test-output");
    let result_file = dir.path().join("browser-result.json");
    let run = Command::new("node")
        .arg(web_dir().join("e2e/run.mjs"))
        .env("GRADIENT_URL", &server.url)
        .env("E2E_REPOSITORY", &repository)
        .env("E2E_BROWSER", &browser)
        .env("E2E_OUT", &out_dir)
        .env("E2E_RESULT", &result_file)
        .output()
        .expect("node runs");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let logs = format!(
        "server log:\n{}\nworker log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default(),
        worker.log_text()
    );
    assert!(run.status.success(), "the browser run failed:\n{said}\n{logs}");

    // What the cache page said to paste, used as it is by a fresh store.
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result_file).expect("result")).expect("json");
    let snippet = result["nixConf"].as_str().expect("nixConf");
    let output = result["output"].as_str().expect("output");
    assert!(output.starts_with("/nix/store/"), "{result}");
    let fresh = dir.path().join("fresh-store");
    let config = format!("{NIX_CONFIG}{snippet}\nrequire-sigs = true\n");
    let sub = Command::new("nix-store")
        .args(["--store", fresh.to_str().expect("path"), "--realise", output])
        .env("NIX_CONFIG", &config)
        .output()
        .expect("nix-store runs");
    assert!(
        sub.status.success(),
        "substituting {output} with\n{config}\n{}",
        String::from_utf8_lossy(&sub.stderr)
    );
    assert!(
        fresh.join(output.trim_start_matches('/')).exists(),
        "{output} is in the fresh store"
    );

    worker.kill();
    server.stop();
}
