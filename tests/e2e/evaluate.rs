//! Evaluating a project on demand without naming a commit: the server asks the repository for the head of
//! its default branch (`git ls-remote --symref`), and the worker fetches that branch by name, even from a
//! repository served over plain ("dumb") HTTP by a static file server, where Nix 2.8 without a `ref=` would
//! look for `refs/heads/master`.

use crate::harness::Server;
use crate::pipeline::{git, org_with_project, script_repo, start_worker, wait_for_completed};
use reqwest::Method;
use std::io::BufRead;
use std::process::{Child, Stdio};

/// Python's static file server over `root` on 127.0.0.1; killed when dropped.
struct StaticFiles {
    child: Child,
    port: u16,
}

impl StaticFiles {
    fn start(root: &std::path::Path) -> Self {
        let mut child = crate::harness::tied("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server says where it listens");
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self { child, port }
    }
}

impl Drop for StaticFiles {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.child);
    }
}

#[tokio::test]
async fn an_empty_evaluate_builds_the_default_branch_of_a_repository_on_a_static_http_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (work, commit) = script_repo(dir.path(), "work", "hello", "echo hello > $out");
    let work = work.trim_start_matches("file://").to_owned();
    // A bare copy with the files dumb HTTP needs (info/refs, objects/info/packs), served as plain files.
    let srv = dir.path().join("srv");
    std::fs::create_dir(&srv).expect("mkdir");
    git(dir.path(), &["clone", "-q", "--bare", &work, "srv/demo.git"]);
    git(&srv.join("demo.git"), &["update-server-info"]);
    assert!(srv.join("demo.git/info/refs").exists());
    assert!(
        !git(&srv.join("demo.git"), &["branch", "--list", "master"]).contains("master"),
        "the repository has no master branch"
    );
    let files = StaticFiles::start(&srv);
    let repository = format!("http://127.0.0.1:{}/demo.git", files.port);

    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let project = c.ok(Method::GET, "/projects/acme/demo", None).await;
    assert!(project["branch"].is_null(), "the project names no branch: {project}");
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;

    // No body at all: the head of the repository's default branch, which the answer names.
    let (status, e) = c.call(Method::POST, "/projects/acme/demo/evaluate", None).await;
    assert_eq!(status, 200, "{e}");
    let e = &e["message"];
    assert_eq!(e["commit"].as_str(), Some(commit.as_str()), "{e}");
    assert_eq!(e["branch"].as_str(), Some("main"), "{e}");
    let id = e["id"].as_str().expect("id").to_owned();
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    let builds = done["builds"].as_array().expect("builds");
    assert_eq!(builds.len(), 1, "{done}");
    assert_eq!(builds[0]["status"], "Completed", "{done}");
    worker.kill();
    server.stop();
}
