//! Pull requests end to end, with real parts only: a repository served over git's dumb HTTP protocol on loopback
//! whose pull request exists only as `refs/pull/1/head` and `refs/pull/1/merge` (as GitHub keeps them in the
//! base repository: reachable from no branch), a signed GitHub `pull_request` delivery, a real worker building
//! with Nix, and a fake GitHub status API. The mergeable pull request's test merge is evaluated and built (so
//! the worker fetched it by its ref), its status lands on the head commit; new commits are evaluated at the
//! head; closing the pull request aborts the running evaluation.

use crate::acceptance::HttpRepo;
use crate::harness::{Client, Server};
use crate::hooks::{deliver, hmac_hex};
use crate::pipeline::{git, start_worker, wait_for_end};
use crate::statuses::FakeForge;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn flake(nonce: &str, packages: &str) -> String {
    r#"{
  outputs = { self }: let
    system = "x86_64-linux";
    d = attrs: derivation ({ inherit system; builder = "/bin/sh"; nonce = "NONCE"; } // attrs);
  in {
    packages.${system} = { PACKAGES };
  };
}
"#
    .replace("NONCE", nonce)
    .replace("PACKAGES", packages)
}

/// GitHub's `pull_request` delivery for pull request 1 of the served repository (the hand-written fixture, its
/// repository URLs and commits replaced).
fn pull_request_event(repo_url: &str, action: &str, head: &str, merge: Option<&str>) -> Vec<u8> {
    let path = format!(
        "{}/../domain/tests/fixtures/forge/github_pull_request_opened.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path)
        .expect("fixture")
        .replace("https://github.com/acme/web.git", repo_url)
        .replace("https://github.com/acme/web", repo_url.trim_end_matches(".git"));
    let mut v: Value = serde_json::from_str(&text).expect("json");
    v["action"] = action.into();
    v["number"] = 1.into();
    let pr = &mut v["pull_request"];
    pr["number"] = 1.into();
    pr["head"]["sha"] = head.into();
    pr["mergeable"] = merge.is_some().into();
    pr["merge_commit_sha"] = merge.map_or(Value::Null, Into::into);
    if action == "closed" {
        pr["state"] = "closed".into();
    }
    serde_json::to_vec_pretty(&v).expect("json")
}

async fn signed(c: &Client, secret: &str, body: &[u8]) -> Value {
    let sig = format!("sha256={}", hmac_hex(secret, body));
    let (status, v) = deliver(
        c,
        "/hooks/github/acme",
        &[("X-GitHub-Event", "pull_request"), ("X-Hub-Signature-256", &sig)],
        body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

fn queued_one(v: &Value) -> String {
    let q = v["message"]["queued"].as_array().expect("queued");
    assert_eq!(q.len(), 1, "{v}");
    q[0].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_signed_github_pull_request_is_built_by_its_ref_and_closing_it_aborts_the_running_evaluation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = HttpRepo::start(dir.path());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    repo.push(
        &flake(
            &nonce,
            r#"main = d { name = "main"; args = [ "-c" "echo main > $out" ]; };"#,
        ),
        "main",
    );
    // The pull request: one commit on a branch the base repository does not have, kept only under the refs a
    // forge keeps for it; GitHub's test merge with main under refs/pull/1/merge.
    git(&repo.work, &["checkout", "-q", "-b", "feature"]);
    let pr_packages = r#"main = d { name = "main"; args = [ "-c" "echo main > $out" ]; };
    feature = d { name = "feature"; args = [ "-c" "echo feature > $out" ]; };"#;
    std::fs::write(repo.work.join("flake.nix"), flake(&nonce, pr_packages)).expect("flake.nix");
    git(&repo.work, &["commit", "-q", "-am", "feature"]);
    let head = git(&repo.work, &["rev-parse", "HEAD"]);
    git(&repo.work, &["checkout", "-q", "--detach", "main"]);
    git(
        &repo.work,
        &["merge", "-q", "--no-ff", "-m", "Merge feature into main", "feature"],
    );
    let merge = git(&repo.work, &["rev-parse", "HEAD"]);
    let bare = repo.bare.to_str().expect("path");
    git(
        &repo.work,
        &["push", "-q", bare, "feature:refs/pull/1/head", "HEAD:refs/pull/1/merge"],
    );
    git(&repo.bare, &["update-server-info"]);
    let branches = git(&repo.bare, &["branch", "--contains", &head]);
    assert_eq!(
        branches, "",
        "the pull request's commit is on no branch of the base repository"
    );
    repo.wait_until_served().await;

    let forge = FakeForge::start(0).await;
    let server = Server::start(dir.path(), &[]).await;
    let mut c = Client::new(&server);
    c.register_with_key("alice").await;
    c.acme_with_cache().await;
    let project = json!({"name": "demo", "repository": repo.url, "wildcard": "packages.*.*"});
    let created = c.ok(Method::POST, "/projects/acme", Some(project)).await;
    assert_eq!(created["pull_requests"], true, "{created}");
    assert_eq!(created["fork_pull_requests"], false, "{created}");
    c.ok(
        Method::PUT,
        "/orgs/acme/forge",
        Some(json!({"forge": "github", "api_url": forge.url, "token": "gh-token"})),
    )
    .await;
    let secret = c.ok(Method::POST, "/orgs/acme/webhook-secret", None).await;
    let secret = secret["secret"].as_str().expect("secret").to_owned();
    let worker = start_worker(&c, dir.path(), &server.url, "one").await;

    // Opened, GitHub having found it mergeable: its test merge is evaluated and built.
    let id = queued_one(
        &signed(
            &c,
            &secret,
            &pull_request_event(&repo.url, "opened", &head, Some(&merge)),
        )
        .await,
    );
    let done = wait_for_end(&c, &server, &id).await;
    assert_eq!(
        done["evaluation"]["status"],
        "Completed",
        "{done}\n{}",
        worker.log_text()
    );
    assert_eq!(done["evaluation"]["commit"], merge.as_str());
    let pr = &done["evaluation"]["pull_request"];
    assert_eq!(pr["number"], 1, "{done}");
    assert_eq!(pr["fork"], false);
    assert_eq!(pr["fetch_ref"], "refs/pull/1/merge");
    assert_eq!(pr["head_commit"], head.as_str());
    assert_eq!(pr["head_branch"], "docs-theme", "the fixture's head branch");
    let builds = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
    let names: Vec<&str> = builds
        .as_array()
        .expect("builds")
        .iter()
        .filter_map(|b| {
            b["drv_path"]
                .as_str()?
                .rsplit_once('-')
                .map(|(_, n)| n.trim_end_matches(".drv"))
        })
        .collect();
    assert!(
        names.contains(&"feature"),
        "the pull request's package was built: {builds}"
    );
    assert!(
        builds
            .as_array()
            .expect("builds")
            .iter()
            .all(|b| b["status"] == "Completed"),
        "{builds}"
    );
    // Its statuses went on the head, the commit GitHub shows on the pull request.
    let deadline = Instant::now() + Duration::from_secs(60);
    while forge.received().len() < 2 {
        assert!(Instant::now() < deadline, "statuses: {:?}", forge.received());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in forge.received() {
        assert!(r.path.ends_with(&format!("/statuses/{head}")), "{r:?}");
    }

    // New commits: a build that takes long, evaluated at the head (no merge commit this time).
    git(&repo.work, &["checkout", "-q", "feature"]);
    let slow = r#"slow = d { name = "slow"; args = [ "-c" "echo starting; /usr/bin/sleep 300; echo slow > $out" ]; };"#;
    std::fs::write(repo.work.join("flake.nix"), flake(&nonce, slow)).expect("flake.nix");
    git(&repo.work, &["commit", "-q", "-am", "slow"]);
    let head2 = git(&repo.work, &["rev-parse", "HEAD"]);
    git(&repo.work, &["push", "-q", "-f", bare, "feature:refs/pull/1/head"]);
    git(&repo.bare, &["update-server-info"]);
    let id2 = queued_one(&signed(&c, &secret, &pull_request_event(&repo.url, "synchronize", &head2, None)).await);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let builds = c.ok(Method::GET, &format!("/evals/{id2}/builds"), None).await;
        if builds
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["status"] == "Building"))
        {
            break;
        }
        let e = c.ok(Method::GET, &format!("/evals/{id2}"), None).await;
        assert!(
            Instant::now() < deadline && e["evaluation"]["status"] != "Failed",
            "the slow build did not start: {e}\n{builds}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let e = c.ok(Method::GET, &format!("/evals/{id2}"), None).await;
    assert_eq!(e["evaluation"]["pull_request"]["fetch_ref"], "refs/pull/1/head", "{e}");
    assert_eq!(e["evaluation"]["commit"], head2.as_str());

    // Closed: aborted at once, its running build stopped on the worker; nothing queued.
    let v = signed(&c, &secret, &pull_request_event(&repo.url, "closed", &head2, None)).await;
    assert_eq!(v["message"]["queued"], json!([]), "{v}");
    let aborted = c.ok(Method::GET, &format!("/evals/{id2}"), None).await;
    assert_eq!(aborted["evaluation"]["status"], "Aborted", "{aborted}");
    assert!(
        aborted["evaluation"]["errors"]
            .to_string()
            .contains("pull request #1 was closed"),
        "{aborted}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let builds = c.ok(Method::GET, &format!("/evals/{id2}/builds"), None).await;
        if builds
            .as_array()
            .is_some_and(|b| b.iter().all(|b| b["status"] == "Aborted"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the slow build was not stopped: {builds}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The first evaluation, long over, is untouched.
    let first = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
    assert_eq!(first["evaluation"]["status"], "Completed");
}
