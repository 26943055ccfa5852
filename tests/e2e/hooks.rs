//! Forge webhooks end to end: the organization's secret generated through the API, then signed Gitea, GitLab and
//! GitHub deliveries to the real server queue evaluations of the matching project; wrong or missing signatures
//! are refused with 401 and queue nothing; pings are accepted and ignored.

use crate::harness::{Client, Server};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

/// Hex HMAC-SHA256 of `body` with `key`, computed by `openssl` (independently of the server's code).
pub(crate) fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().expect("stdin").write_all(body).expect("write body");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .expect("a digest")
        .to_owned()
}

/// Posts a delivery with the given headers and the exact body bytes; answers the status and JSON body.
pub(crate) async fn deliver(c: &Client, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", c.base))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

pub(crate) fn queued(v: &Value) -> Vec<String> {
    assert_eq!(v["error"], false, "{v}");
    v["message"]["queued"]
        .as_array()
        .unwrap_or_else(|| panic!("a queued list: {v}"))
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect()
}

fn gitea_push(commit: &str, branch: &str, clone_url: &str) -> Vec<u8> {
    let body = json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "repository": {
            "name": "web",
            "full_name": "acme/web",
            "clone_url": clone_url,
            "default_branch": "main"
        },
        "pusher": {"login": "alice"}
    });
    // Pretty-printed, as forges send it: the signature covers these exact bytes.
    serde_json::to_vec_pretty(&body).expect("json")
}

#[tokio::test]
async fn signed_forge_pushes_queue_evaluations_of_the_matching_project() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[("GRADIENT_PUBLIC_URL", "https://ci.example.com/")]).await;
    let mut c = Client::new(&server);
    c.register_with_key("alice").await;
    c.ok(Method::POST, "/orgs", Some(json!({"name": "acme"}))).await;
    let project =
        json!({"name": "web", "repository": "https://git.example.com/acme/web.git", "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let other =
        json!({"name": "api", "repository": "https://git.example.com/acme/api.git", "wildcard": "packages.*.*"});
    c.ok(Method::POST, "/projects/acme", Some(other)).await;

    let commit = "0123456789abcdef0123456789abcdef01234567";
    let body = gitea_push(commit, "main", "https://git.example.com/acme/web");

    // Without a secret there is no webhook: answered as a wrong signature, exactly as for an organization that
    // does not exist, so a delivery cannot tell which organizations exist.
    let (status, v) = deliver(&c, "/hooks/gitea/acme", &[("X-Gitea-Event", "push")], &body).await;
    assert_eq!(status, 401, "{v}");
    let (status_missing, v_missing) = deliver(&c, "/hooks/gitea/nobody", &[("X-Gitea-Event", "push")], &body).await;
    assert_eq!(
        (status_missing, v_missing),
        (status, v),
        "an existing org answers as a missing one"
    );

    // Only members who manage integrations generate the secret; anonymous callers cannot.
    let anonymous = Client::new(&server);
    let (status, _) = anonymous.call(Method::POST, "/orgs/acme/webhook-secret", None).await;
    assert_eq!(status, 401);
    let generated = c.ok(Method::POST, "/orgs/acme/webhook-secret", None).await;
    let secret = generated["secret"].as_str().expect("secret").to_owned();
    assert_eq!(secret.len(), 64, "32 random bytes, hex: {generated}");
    assert_eq!(generated["url"], "https://ci.example.com/api/v1/hooks/{forge}/acme");
    assert_eq!(
        generated["urls"]["gitea"],
        "https://ci.example.com/api/v1/hooks/gitea/acme"
    );
    assert_eq!(
        generated["urls"]["github"],
        "https://ci.example.com/api/v1/hooks/github/acme"
    );

    // A signed Gitea push queues one evaluation of the pushed commit for the matching project.
    let sig = hmac_hex(&secret, &body);
    let (status, v) = deliver(
        &c,
        "/hooks/gitea/acme",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ids = queued(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let e = c.ok(Method::GET, &format!("/evals/{}", ids[0]), None).await;
    assert_eq!(e["evaluation"]["status"], "Queued", "{e}");
    assert_eq!(e["evaluation"]["commit"], commit, "{e}");
    let list = c.ok(Method::GET, "/projects/acme/web/evaluations", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], ids[0].as_str());

    // The same payload with a wrong, a missing or another forge's signature: 401, nothing queued.
    let wrong = hmac_hex("not-the-secret", &body);
    let attempts: [&[(&str, &str)]; 3] = [
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &wrong)],
        &[("X-Gitea-Event", "push")],
        &[("X-Gitea-Event", "push"), ("X-Gitlab-Token", &secret)],
    ];
    for headers in attempts {
        let (status, v) = deliver(&c, "/hooks/gitea/acme", headers, &body).await;
        assert_eq!(status, 401, "{headers:?}: {v}");
        assert_eq!(v["error"], true);
    }
    // A body changed after signing is refused too.
    let tampered = gitea_push(
        "89abcdef0123456789abcdef0123456789abcdef",
        "main",
        "https://git.example.com/acme/web",
    );
    let (status, _) = deliver(
        &c,
        "/hooks/forgejo/acme",
        &[("X-Forgejo-Event", "push"), ("X-Forgejo-Signature", &sig)],
        &tampered,
    )
    .await;
    assert_eq!(status, 401);
    let list = c.ok(Method::GET, "/projects/acme/web/evaluations", None).await;
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "nothing more was queued: {list}"
    );

    // GitLab: the token is the secret; the payload's ssh URL names the same repository.
    let gitlab_commit = "1111111111111111111111111111111111111111";
    let gitlab = serde_json::to_vec(&json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "after": gitlab_commit,
        "checkout_sha": gitlab_commit,
        "project": {"git_ssh_url": "git@git.example.com:acme/web.git", "default_branch": "main"}
    }))
    .expect("json");
    let (status, v) = deliver(
        &c,
        "/hooks/gitlab/acme",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
        &gitlab,
    )
    .await;
    assert_eq!(status, 401, "{v}");
    let (status, v) = deliver(
        &c,
        "/hooks/gitlab/acme",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", &secret)],
        &gitlab,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let ids = queued(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let e = c.ok(Method::GET, &format!("/evals/{}", ids[0]), None).await;
    assert_eq!(e["evaluation"]["commit"], gitlab_commit);

    // GitHub: `sha256=` + hex HMAC; an ssh:// clone URL matches too.
    let github_commit = "2222222222222222222222222222222222222222";
    let github = gitea_push(github_commit, "main", "ssh://git@git.example.com/acme/web.git");
    let github_sig = format!("sha256={}", hmac_hex(&secret, &github));
    let (status, v) = deliver(
        &c,
        "/hooks/github/acme",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &github_sig)],
        &github,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(queued(&v).len(), 1, "{v}");

    // Pings and pushes to another branch than the project's: accepted, nothing queued.
    let ping = serde_json::to_vec(&json!({"zen": "Keep it logically awesome.", "hook_id": 1})).expect("json");
    let ping_sig = hmac_hex(&secret, &ping);
    let github_ping_sig = format!("sha256={ping_sig}");
    let pings: [(&str, &[(&str, &str)]); 2] = [
        (
            "/hooks/gitea/acme",
            &[("X-Gitea-Event", "ping"), ("X-Gitea-Signature", &ping_sig)],
        ),
        (
            "/hooks/github/acme",
            &[("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", &github_ping_sig)],
        ),
    ];
    for (path, headers) in pings {
        let (status, v) = deliver(&c, path, headers, &ping).await;
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(queued(&v), Vec::<String>::new(), "{path}");
    }
    let feature = gitea_push(
        "3333333333333333333333333333333333333333",
        "feature",
        "https://git.example.com/acme/web.git",
    );
    let feature_sig = hmac_hex(&secret, &feature);
    let (status, v) = deliver(
        &c,
        "/hooks/gitea/acme",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &feature_sig)],
        &feature,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(queued(&v), Vec::<String>::new(), "not the default branch");

    // Unknown forges are 404; unknown organizations answer as a wrong signature (401).
    for (path, want) in [("/hooks/bitbucket/acme", 404), ("/hooks/gitea/nobody", 401)] {
        let (status, v) = deliver(
            &c,
            path,
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig)],
            &body,
        )
        .await;
        assert_eq!(status, want, "{path}: {v}");
    }

    let list = c.ok(Method::GET, "/projects/acme/web/evaluations", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    // Each push supersedes the evaluation of the previous one, still queued: only the newest stays.
    let statuses: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(statuses, ["Queued", "Aborted", "Aborted"], "{list}");
    assert!(
        list[1]["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("superseded by")),
        "{list}"
    );
    let api = c.ok(Method::GET, "/projects/acme/api/evaluations", None).await;
    assert_eq!(api, json!([]), "the other project was never triggered");

    // A new secret replaces the old one.
    c.ok(Method::POST, "/orgs/acme/webhook-secret", None).await;
    let (status, _) = deliver(
        &c,
        "/hooks/gitea/acme",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig)],
        &body,
    )
    .await;
    assert_eq!(status, 401, "the old secret no longer signs");
}
