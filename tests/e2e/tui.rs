//! `gradient-tui` in a real terminal (tmux) against a real server and worker: the worker shows as connected,
//! and a running build's log line appears on screen. Build it first (`cargo build -p gradient-tui`;
//! `scripts/test` does). Skipped with a message when tmux is not installed.

use crate::harness::{Client, Server, server_binary};
use crate::pipeline::{script_repo, start_worker};
use reqwest::Method;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn run(args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend(keys);
        Self::run(&args);
    }

    fn screen(&self) -> String {
        Self::run(&["capture-pane", "-p", "-t", &self.session])
    }

    async fn wait_for(&self, needle: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {needle:?} never appeared:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Self::run(&["kill-session", "-t", &self.session]);
    }
}

fn write_config(home: &Path, url: &str, key: &str) -> std::path::PathBuf {
    let path = home.join("gradient.toml");
    std::fs::write(
        &path,
        format!("default = \"e2e\"\n[servers.e2e]\nurl = \"{url}\"\nkey = \"{key}\"\n"),
    )
    .expect("config");
    path
}

#[tokio::test]
async fn the_monitor_shows_a_connected_worker_and_a_running_builds_log() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    }
    let bin = server_binary().with_file_name("gradient-tui");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p gradient-tui` first",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    let server = Server::start(home, &[]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("carol").await;
    c.acme_with_cache().await;
    let script = "echo tui-sees-this-line; /usr/bin/sleep 20; echo done > $out";
    let (repo, _) = script_repo(home, "tui-repo", "watched", script);
    let project = serde_json::json!({"name": "demo", "repository": repo, "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let _worker = start_worker(&c, home, &server.url, "one").await;
    let config = write_config(home, &server.url, &key);

    let session = format!("gradient-e2e-{}", uuid::Uuid::new_v4().simple());
    let command = format!(
        "env GRADIENT_CONFIG={} TERM=xterm-256color {}",
        config.display(),
        bin.display()
    );
    Tmux::run(&["new-session", "-d", "-s", &session, "-x", "100", "-y", "30", &command]);
    let tmux = Tmux { session };

    tmux.keys(&["1"]);
    tmux.wait_for("● connected", "the worker on the Workers view").await;

    c.ok(Method::POST, "/projects/acme/demo/evaluate", None).await;
    tmux.keys(&["3"]);
    tmux.wait_for("acme/demo", "the evaluation on the Evaluations view")
        .await;
    // The build shows once the evaluation has run; then its log, live.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tmux.keys(&["Escape", "Escape", "3"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tmux.keys(&["Enter"]);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if tmux.screen().contains("watched") {
            break;
        }
        assert!(Instant::now() < deadline, "the build never showed:\n{}", tmux.screen());
    }
    tmux.keys(&["Enter"]);
    tmux.wait_for("tui-sees-this-line", "the running build's log").await;
    tmux.keys(&["q"]);
}
