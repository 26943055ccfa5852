//! The GitHub App end to end: the real server configured with an App whose key `openssl genrsa` made, a fake
//! GitHub on loopback as its API, signed `installation` and `push` deliveries to `/api/v1/hooks/github`, the
//! installation linked to the organization through the setup URL's OAuth code, and a real worker evaluating
//! and building the pushed commit (git is told to fetch `https://github.com/acme/web` from a local
//! repository). The fake GitHub checks only the OAuth client secret, the code and the user's token: it records
//! what it is sent, and the test verifies the App's JWT with `openssl` and the public half of the key.

use crate::harness::{Client, Server};
use crate::hooks::{deliver, hmac_hex, queued};
use crate::pipeline::{commit_flake, git, start_worker_with, wait_for_completed};
use crate::statuses::{all_delivered, read_request, wait_for};
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const APP_ID: &str = "4242";
const SECRET: &str = "the-apps-webhook-secret";
const INSTALLATION: u64 = 77;
const CLIENT_ID: &str = "Iv1.fakeclient";
const CLIENT_SECRET: &str = "the-apps-client-secret";
/// The OAuth code GitHub hands the installing admin's browser, and the user token it is exchanged for.
const CODE: &str = "fa11c0de";
const USER_TOKEN: &str = "ghu_fake_alice";

/// One request the fake GitHub received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    authorization: String,
    body: Value,
}

/// GitHub's API as far as the App uses it: installation tokens (`ghs_fake_<n>`, valid an hour), commit
/// statuses, and, for linking, [`CODE`] exchanged for [`USER_TOKEN`] (with [`CLIENT_SECRET`] only), with which
/// user `alice` sees installation [`INSTALLATION`] on organization `Acme`, of which she is an admin; 404 for
/// anything else.
#[derive(Clone)]
struct FakeGithub {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl FakeGithub {
    async fn start() -> FakeGithub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        tokio::spawn(async move {
            let mut tokens = 0;
            while let Ok((mut socket, _)) = listener.accept().await {
                let Some((head, body)) = read_request(&mut socket).await else {
                    continue;
                };
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or_default().split_whitespace();
                let method = first.next().unwrap_or_default().to_owned();
                let path = first.next().unwrap_or_default().to_owned();
                let authorization = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_owned())
                    .unwrap_or_default();
                let (status, answer) = if method == "POST" && path.ends_with("/access_tokens") {
                    tokens += 1;
                    let expires = chrono::Utc::now() + chrono::TimeDelta::hours(1);
                    let expires = expires.format("%Y-%m-%dT%H:%M:%SZ").to_string();
                    (
                        201,
                        json!({"token": format!("ghs_fake_{tokens}"), "expires_at": expires}),
                    )
                } else if method == "POST" && path.starts_with("/repos/") && path.contains("/statuses/") {
                    (201, json!({"state": "ok"}))
                } else if method == "POST" && path == "/login/oauth/access_token" {
                    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if sent["client_id"] == CLIENT_ID && sent["client_secret"] == CLIENT_SECRET && sent["code"] == CODE
                    {
                        (200, json!({"access_token": USER_TOKEN, "token_type": "bearer"}))
                    } else {
                        (
                            200,
                            json!({"error": "bad_verification_code", "error_description": "The code is wrong."}),
                        )
                    }
                } else if method == "GET" && authorization != format!("Bearer {USER_TOKEN}") {
                    (401, json!({"message": "Bad credentials"}))
                } else if method == "GET" && path == "/user" {
                    (200, json!({"login": "Alice", "type": "User"}))
                } else if method == "GET" && path.starts_with("/user/installations") {
                    (
                        200,
                        json!({"total_count": 1, "installations": [
                            {"id": INSTALLATION, "account": {"login": "Acme", "type": "Organization"}}
                        ]}),
                    )
                } else if method == "GET" && path == "/user/memberships/orgs/acme" {
                    (200, json!({"state": "active", "role": "admin"}))
                } else {
                    (404, json!({"message": "Not Found"}))
                };
                log.lock().expect("lock").push(Received {
                    method,
                    path,
                    authorization,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                let answer = answer.to_string();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        FakeGithub { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn forget(&self) {
        self.received.lock().expect("lock").clear();
    }
}

/// Runs `openssl` with `args`, feeding `input`; answers its standard output.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().expect("stdin").write_all(input).expect("write");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Checks the App's JWT as GitHub would, with `openssl` and the public key: an RS256 signature by the App's
/// key over `header.payload`; answers the payload's claims.
fn verify_jwt(jwt: &str, public_key: &Path, dir: &Path) -> Value {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {jwt}");
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).expect("header")).expect("header JSON");
    assert_eq!(header["alg"], "RS256", "{header}");
    let signature = dir.join("jwt.sig");
    std::fs::write(&signature, b64.decode(parts[2]).expect("signature")).expect("write signature");
    let signed = format!("{}.{}", parts[0], parts[1]);
    let verdict = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            public_key.to_str().expect("path"),
            "-signature",
            signature.to_str().expect("path"),
        ],
        signed.as_bytes(),
    );
    assert_eq!(String::from_utf8_lossy(&verdict).trim(), "Verified OK");
    // The same signature over other bytes does not verify.
    let forged = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .arg("-signature")
        .arg(&signature)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(!forged.status.success(), "the check can fail");
    serde_json::from_slice(&b64.decode(parts[1]).expect("payload")).expect("claims JSON")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A signed delivery of `event` to the App's webhook.
async fn deliver_app(c: &Client, event: &str, body: &Value, secret: &str) -> (u16, Value) {
    let body = serde_json::to_vec_pretty(body).expect("json");
    let signature = format!("sha256={}", hmac_hex(secret, &body));
    deliver(
        c,
        "/hooks/github",
        &[("X-GitHub-Event", event), ("X-Hub-Signature-256", &signature)],
        &body,
    )
    .await
}

fn push(commit: &str) -> Value {
    json!({
        "ref": "refs/heads/main",
        "before": "0".repeat(40),
        "after": commit,
        "repository": {
            "name": "web",
            "full_name": "Acme/web",
            "owner": {"name": "Acme", "login": "Acme"},
            "clone_url": "https://github.com/Acme/web.git",
            "ssh_url": "git@github.com:Acme/web.git",
            "html_url": "https://github.com/Acme/web",
            "default_branch": "main"
        },
        "pusher": {"name": "alice"},
        "installation": {"id": INSTALLATION, "node_id": "MDIz"}
    })
}

#[tokio::test]
async fn the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, openssl(&["genrsa", "2048"], b"")).expect("key");
    let public_key = dir.path().join("app.pub.pem");
    let public = openssl(&["rsa", "-pubout", "-in", key.to_str().expect("path")], b"");
    std::fs::write(&public_key, public).expect("public key");
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret");
    let client_secret_file = dir.path().join("client-secret");
    std::fs::write(&client_secret_file, format!("{CLIENT_SECRET}\n")).expect("client secret");

    let flake = r#"{
  outputs = { self }: {
    packages.x86_64-linux.hello = derivation {
      name = "hello"; system = "x86_64-linux"; builder = "/bin/sh"; nonce = "NONCE";
      args = [ "-c" "/usr/bin/sleep 4; echo hello > $out" ];
    };
  };
}
"#
    .replace("NONCE", &uuid::Uuid::new_v4().simple().to_string());
    // The build takes a few seconds so that `pending` is delivered before `success` supersedes it.
    let (local_repository, commit) = commit_flake(dir.path(), "web", &flake);
    // The worker fetches without a ref, which Nix 2.8 takes as `master` on a remote: serve that name too.
    git(&dir.path().join("web"), &["branch", "master"]);

    let github = FakeGithub::start().await;
    let server = Server::start(
        dir.path(),
        &[
            ("GRADIENT_GITHUB_APP_ENABLE", "true"),
            ("GRADIENT_GITHUB_APP_APP_ID", APP_ID),
            ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE", key.to_str().expect("path")),
            (
                "GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE",
                secret_file.to_str().expect("path"),
            ),
            ("GRADIENT_GITHUB_APP_API_URL", &github.url),
            ("GRADIENT_GITHUB_APP_CLIENT_ID", CLIENT_ID),
            (
                "GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE",
                client_secret_file.to_str().expect("path"),
            ),
        ],
    )
    .await;
    let mut c = Client::new(&server);
    c.register_with_key("ci").await;
    c.acme_with_cache().await;
    let project = json!({
        "name": "web",
        "repository": "https://github.com/acme/web",
        "branch": "main",
        "wildcard": "packages.*.*"
    });
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    // The organization has no forge connection: statuses can only go through the App.
    assert_eq!(c.ok(Method::GET, "/orgs/acme/forge", None).await, Value::Null);

    // Deliveries signed with another secret, or not at all: 401, nothing stored or queued.
    let installation = |id: u64| json!({"action": "created", "installation": {"id": id, "account": {"login": "Acme"}}});
    for (event, body) in [("installation", installation(99)), ("push", push(&commit))] {
        let (status, v) = deliver_app(&c, event, &body, "not-the-secret").await;
        assert_eq!(status, 401, "{event}: {v}");
        assert_eq!(
            (v["error"].as_bool(), v["code"].as_str()),
            (Some(true), Some("unauthenticated"))
        );
        let bytes = serde_json::to_vec(&body).expect("json");
        let (status, _) = deliver(&c, "/hooks/github", &[("X-GitHub-Event", event)], &bytes).await;
        assert_eq!(status, 401, "{event} unsigned");
    }
    let list = c.ok(Method::GET, "/projects/acme/web/evaluations", None).await;
    assert_eq!(list, json!([]), "nothing queued");

    // A ping is accepted and ignored; the installation is stored; the push queues the project's evaluation.
    let (status, v) = deliver_app(&c, "ping", &json!({"zen": "Speak like a human."}), SECRET).await;
    assert_eq!((status, queued(&v).len()), (200, 0), "{v}");
    let (status, v) = deliver_app(&c, "installation", &installation(INSTALLATION), SECRET).await;
    assert_eq!((status, queued(&v).len()), (200, 0), "{v}");

    // Installed but not linked to the organization: the App queues nothing for it.
    let (status, v) = deliver_app(&c, "push", &push(&commit), SECRET).await;
    assert_eq!((status, queued(&v).len()), (200, 0), "{v}");
    let list = c.ok(Method::GET, "/projects/acme/web/evaluations", None).await;
    assert_eq!(list, json!([]), "nothing queued before the link");

    // GitHub sends the installing admin to the setup URL with the installation and a code; the page says how
    // to link, and the link is checked with GitHub.
    let setup = reqwest::get(format!(
        "{}/github/setup?installation_id={INSTALLATION}&setup_action=install&code={CODE}",
        server.url
    ))
    .await
    .expect("setup page");
    assert_eq!(setup.status().as_u16(), 200);
    let page = setup.text().await.expect("page");
    assert!(page.contains(&format!("\"installation_id\": {INSTALLATION}")), "{page}");
    assert!(
        page.contains(CODE) && page.contains("/api/v1/orgs/ORG/github-installations"),
        "{page}"
    );
    for query in [
        "installation_id=77&setup_action=install",
        "installation_id=77&code=<b>x</b>",
    ] {
        let setup = reqwest::get(format!("{}/github/setup?{query}", server.url))
            .await
            .expect("setup page");
        assert_eq!(setup.status().as_u16(), 400, "{query}");
        let page = setup.text().await.expect("page");
        assert!(
            page.contains("No authorization code") && !page.contains("<b>"),
            "{page}"
        );
    }

    let link = |code: &str| json!({"installation_id": INSTALLATION, "code": code});
    let (status, v) = c
        .call(Method::POST, "/orgs/acme/github-installations", Some(link("wrong")))
        .await;
    assert_eq!((status, v["code"].as_str()), (422, Some("code_refused")), "{v}");
    let linked = c
        .ok(Method::POST, "/orgs/acme/github-installations", Some(link(CODE)))
        .await;
    assert_eq!(
        (&linked["installation_id"], &linked["account"], &linked["linked_by"]),
        (&json!(INSTALLATION), &json!("acme"), &json!("alice")),
        "{linked}"
    );
    let links = c.ok(Method::GET, "/orgs/acme/github-installations", None).await;
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");
    let asked: Vec<String> = github
        .received()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        asked.contains(&"GET /user/memberships/orgs/acme".to_owned()),
        "the admin role was asked: {asked:?}"
    );
    github.forget();

    let (status, v) = deliver_app(&c, "push", &push(&commit), SECRET).await;
    assert_eq!(status, 200, "{v}");
    let ids = queued(&v);
    assert_eq!(ids.len(), 1, "{v}");
    let id = ids[0].clone();
    let e = c.ok(Method::GET, &format!("/evals/{id}"), None).await;
    assert_eq!(e["evaluation"]["commit"], commit.as_str(), "{e}");
    assert!(
        github.received().is_empty(),
        "nothing reported before the evaluation starts"
    );

    // A real worker evaluates and builds it, fetching github.com/acme/web from the local repository.
    let insteadof = format!("url.{local_repository}.insteadOf");
    let worker = start_worker_with(
        &c,
        dir.path(),
        &server.url,
        "one",
        &[
            ("GIT_CONFIG_COUNT", "1"),
            ("GIT_CONFIG_KEY_0", &insteadof),
            ("GIT_CONFIG_VALUE_0", "https://github.com/acme/web"),
        ],
    )
    .await;
    wait_for_completed(&c, &server, &id, &worker).await;
    let done = wait_for(&c, &server, &id, "the statuses were not delivered", all_delivered).await;
    let statuses = done["statuses"].as_array().expect("statuses");
    assert_eq!(statuses.len(), 2, "{done}");
    assert!(statuses.iter().all(|s| s["attempts"] == 0), "{done}");

    // GitHub saw one token exchange, authenticated with the App's JWT, then both statuses with that token.
    let received = github.received();
    let calls: Vec<(&str, &str)> = received.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    let statuses_path = format!("/repos/acme/web/statuses/{commit}");
    assert_eq!(
        calls,
        [
            (
                "POST",
                format!("/app/installations/{INSTALLATION}/access_tokens").as_str()
            ),
            ("POST", statuses_path.as_str()),
            ("POST", statuses_path.as_str()),
        ],
        "one exchange, the token reused: {received:?}"
    );
    let jwt = received[0]
        .authorization
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("a bearer JWT: {:?}", received[0]));
    let claims = verify_jwt(jwt, &public_key, dir.path());
    assert_eq!(claims["iss"], APP_ID, "{claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert!(iat <= now() - 30 && exp > iat && exp - iat <= 600, "{claims}");
    let states: Vec<&str> = received[1..]
        .iter()
        .map(|r| r.body["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["pending", "success"], "{received:?}");
    for r in &received[1..] {
        assert_eq!(r.authorization, "Bearer ghs_fake_1", "{r:?}");
        assert_eq!(r.body["context"], "gradient");
        assert_eq!(
            r.body["target_url"],
            format!("{}/api/v1/evals/{id}", server.url).as_str()
        );
    }

    // Unlinked, the App acts for the organization no more.
    c.ok(
        Method::DELETE,
        &format!("/orgs/acme/github-installations/{INSTALLATION}"),
        None,
    )
    .await;
    assert_eq!(
        c.ok(Method::GET, "/orgs/acme/github-installations", None).await,
        json!([])
    );
    let (status, v) = deliver_app(&c, "push", &push(&commit), SECRET).await;
    assert_eq!((status, queued(&v).len()), (200, 0), "{v}");
    worker.kill();
    server.stop();
}
