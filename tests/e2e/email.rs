//! Email end to end: the real server sends through a real SMTP server (aiosmtpd, installed by `scripts/test`
//! into the test venv, run by the test on loopback and requiring AUTH), and the test reads the delivered
//! messages and follows their links as the web UI's pages do: register → mail → verify → login; a forgotten
//! password reset by mail; a project that fails and is then fixed mails its member exactly twice.

use crate::harness::{Client, Server, free_port};
use crate::pipeline::{commit_flake, evaluate, org_with_project, start_worker, wait_for_end};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SMTP_LOGIN: &str = "gradient";
const SMTP_PASSWORD: &str = "smtp-secret-of-the-test";

/// The test venv's Python with aiosmtpd (`scripts/lib.sh` `ensure_aiosmtpd` exports it as
/// `GRADIENT_TEST_PYTHON`).
fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRADIENT_TEST_PYTHON") {
        return Some(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let python = cache.join("gradient-test/venv/bin/python");
    let has = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    has.then_some(python)
}

/// aiosmtpd on a free loopback port, keeping what it receives.
struct Smtp {
    child: Child,
    port: u16,
    inbox: PathBuf,
}

impl Smtp {
    fn start(dir: &Path) -> Option<Smtp> {
        let Some(python) = python() else {
            eprintln!(
                "SKIPPED: aiosmtpd is not installed (scripts/test installs it into the test venv; or set GRADIENT_TEST_PYTHON)"
            );
            return None;
        };
        let port = free_port();
        let inbox = dir.join("inbox.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/smtp_sink.py");
        let mut child = crate::harness::tied(python)
            .arg(script)
            .args([
                &port.to_string(),
                SMTP_LOGIN,
                SMTP_PASSWORD,
                inbox.to_str().expect("path"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("aiosmtpd starts");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("ready line");
        assert_eq!(ready.trim(), "ready");
        Some(Smtp { child, port, inbox })
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.inbox)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// Waits (up to 30 s) until `n` messages match, and answers those.
    async fn wait_for(&self, n: usize, matching: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<Value> = self.messages().into_iter().filter(|m| matching(m)).collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's variables for mailing through this server.
    fn vars(&self, dir: &Path) -> Vec<(String, String)> {
        let password = dir.join("smtp-password");
        std::fs::write(&password, format!("{SMTP_PASSWORD}\n")).expect("password file");
        vec![
            ("GRADIENT_EMAIL_ENABLE".into(), "true".into()),
            ("GRADIENT_EMAIL_SMTP_HOST".into(), "127.0.0.1".into()),
            ("GRADIENT_EMAIL_SMTP_PORT".into(), self.port.to_string()),
            ("GRADIENT_EMAIL_SMTP_USERNAME".into(), SMTP_LOGIN.into()),
            (
                "GRADIENT_EMAIL_SMTP_PASSWORD_FILE".into(),
                password.display().to_string(),
            ),
            ("GRADIENT_EMAIL_FROM_ADDRESS".into(), "ci@example.com".into()),
            ("GRADIENT_EMAIL_FROM_NAME".into(), "Acme CI".into()),
        ]
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.child);
    }
}

/// The link to `page` in a mail, checked to be the web UI's page under the public URL; answers its token.
fn link_token(mail: &Value, public_url: &str, page: &str) -> String {
    let body = mail["body"].as_str().expect("body");
    let prefix = format!("{public_url}/{page}?token=");
    let start = body
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {prefix} link in:\n{body}"));
    let link = body[start..].split_whitespace().next().expect("link");
    link[prefix.len()..].to_owned()
}

/// What the web UI's page does with the link: it is a page of the UI (the server answers its paths with the
/// UI when one is built), and the page posts the token.
async fn open_page(server: &Server, page: &str, token: &str) -> u16 {
    reqwest::get(format!("{}/{page}?token={token}", server.url))
        .await
        .expect("GET the link")
        .status()
        .as_u16()
}

async fn start_server(dir: &Path, smtp: &Smtp, extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let public_url = format!("http://127.0.0.1:{port}");
    let mut vars = smtp.vars(dir);
    vars.push(("GRADIENT_PUBLIC_URL".into(), public_url));
    let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Server::start_on(dir, port, &all).await
}

#[tokio::test]
async fn registration_mails_a_link_that_verifies_the_address_before_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(smtp) = Smtp::start(dir.path()) else { return };
    let server = start_server(dir.path(), &smtp, &[("GRADIENT_EMAIL_REQUIRE_VERIFICATION", "true")]).await;
    let c = Client::new(&server);
    let config = c.ok(Method::GET, "/config", None).await;
    assert_eq!(
        (
            config["email_enabled"].as_bool(),
            config["email_verification_required"].as_bool()
        ),
        (Some(true), Some(true))
    );
    let reg = json!({"username": "ada", "name": "Ada Lovelace", "email": "ada@example.com", "password": "password123"});
    c.ok(Method::POST, "/auth/basic/register", Some(reg)).await;
    let mails = smtp.wait_for(1, |m| m["envelope_to"][0] == "ada@example.com").await;
    assert_eq!(
        mails.len(),
        1,
        "one verification mail: {mails:?}\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    let mail = &mails[0];
    assert_eq!(mail["from"], "Acme CI <ci@example.com>", "the configured sender");
    assert_eq!(mail["to"], "Ada Lovelace <ada@example.com>");
    assert_eq!(mail["subject"], "Confirm your email address for Gradient");

    let login = json!({"loginname": "ada", "password": "password123"});
    let (status, v) = c.call(Method::POST, "/auth/basic/login", Some(login.clone())).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("email_not_verified")), "{v}");

    let token = link_token(mail, &server.url, "verify-email");
    let page = open_page(&server, "verify-email", &token).await;
    assert!(
        page == 200 || page == 404,
        "the link opens a page of the web UI (404 without a built UI): {page}"
    );
    c.ok(Method::POST, "/auth/email/verify", Some(json!({"token": token})))
        .await;
    c.ok(Method::POST, "/auth/basic/login", Some(login)).await;
    let (status, v) = c
        .call(Method::POST, "/auth/email/verify", Some(json!({"token": token})))
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("invalid_token")),
        "the link works once: {v}"
    );

    // A new verification mail for an unverified account; none for a verified one, an unknown one answers the same.
    let reg = json!({"username": "bob", "name": "Bob", "email": "bob@example.com", "password": "password123"});
    c.ok(Method::POST, "/auth/basic/register", Some(reg)).await;
    let first = smtp.wait_for(1, |m| m["envelope_to"][0] == "bob@example.com").await;
    assert_eq!(first.len(), 1);
    let answer = c
        .ok(Method::POST, "/auth/email/resend", Some(json!({"loginname": "nobody"})))
        .await;
    let same = c
        .ok(Method::POST, "/auth/email/resend", Some(json!({"loginname": "ada"})))
        .await;
    assert_eq!(answer, same, "no account is revealed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        smtp.messages().len(),
        2,
        "no mail for unknown or verified accounts, nor twice a minute"
    );
    server.stop();
}

#[tokio::test]
async fn a_password_reset_mail_sets_a_new_password_and_ends_the_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(smtp) = Smtp::start(dir.path()) else { return };
    let server = start_server(dir.path(), &smtp, &[]).await;
    let mut c = Client::new(&server);
    let reg = json!({"username": "eve", "name": "Eve", "email": "eve@example.com", "password": "password123"});
    c.ok(Method::POST, "/auth/basic/register", Some(reg)).await;
    let session = c
        .ok(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": "eve", "password": "password123"})),
        )
        .await;
    c.token = session.as_str().map(str::to_owned);
    c.ok(Method::GET, "/user", None).await;

    let unknown = c
        .ok(
            Method::POST,
            "/auth/password/forgot",
            Some(json!({"email": "nobody@example.com"})),
        )
        .await;
    let known = c
        .ok(
            Method::POST,
            "/auth/password/forgot",
            Some(json!({"email": "eve@example.com"})),
        )
        .await;
    assert_eq!(
        unknown, known,
        "the answer does not say whether an account has the address"
    );
    let mails = smtp
        .wait_for(1, |m| m["subject"] == "Reset your Gradient password")
        .await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0]["envelope_to"][0], "eve@example.com");
    let token = link_token(&mails[0], &server.url, "reset-password");
    let page = open_page(&server, "reset-password", &token).await;
    assert!(page == 200 || page == 404, "{page}");

    let anonymous = Client::new(&server);
    anonymous
        .ok(
            Method::POST,
            "/auth/password/reset",
            Some(json!({"token": token, "password": "a-new-password"})),
        )
        .await;
    let (status, _) = c.call(Method::GET, "/user", None).await;
    assert_eq!(status, 401, "the session from before the reset ended");
    let (status, _) = anonymous
        .call(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": "eve", "password": "password123"})),
        )
        .await;
    assert_eq!(status, 401, "the old password is gone");
    anonymous
        .ok(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": "eve", "password": "a-new-password"})),
        )
        .await;
    let (status, v) = anonymous
        .call(
            Method::POST,
            "/auth/password/reset",
            Some(json!({"token": token, "password": "third-password"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("invalid_token")),
        "the link works once"
    );
    server.stop();
}

/// A flake whose one package passes or fails, new at every call.
fn flake(passes: bool) -> String {
    let script = if passes {
        "echo ok > $out"
    } else {
        "echo failing on purpose; exit 1"
    };
    format!(
        r#"{{
  outputs = {{ self }}: let system = "x86_64-linux"; in {{
    packages.${{system}}.p = derivation {{
      name = "p"; inherit system; builder = "/bin/sh"; nonce = "{}"; args = [ "-c" "{script}" ];
    }};
  }};
}}
"#,
        uuid::Uuid::new_v4().simple()
    )
}

/// Commits a new `flake.nix` to the repository; answers the commit.
fn commit(repo: &Path, flake: &str) -> String {
    std::fs::write(repo.join("flake.nix"), flake).expect("flake.nix");
    crate::pipeline::git(repo, &["commit", "-q", "-am", "change"]);
    crate::pipeline::git(repo, &["rev-parse", "HEAD"])
}

#[tokio::test]
async fn a_project_that_fails_and_is_fixed_mails_its_members_exactly_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(smtp) = Smtp::start(dir.path()) else { return };
    let (repository, failing) = commit_flake(dir.path(), "mail-repo", &flake(false));
    let repo = dir.path().join("mail-repo");
    let server = start_server(dir.path(), &smtp, &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    // A second member who turned evaluation mail off.
    let mut quiet = Client::new(&server);
    quiet.register_with_key("quiet").await;
    quiet
        .ok(Method::PUT, "/user/mail", Some(json!({"evaluation_mail": false})))
        .await;
    assert_eq!(
        quiet.ok(Method::GET, "/user/mail", None).await["evaluation_mail"],
        false
    );
    c.ok(
        Method::POST,
        "/orgs/acme/users",
        Some(json!({"user": "quiet", "role": "Write"})),
    )
    .await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;

    let about = |m: &Value| m["subject"].as_str().is_some_and(|s| s.starts_with("acme/demo "));
    let id = evaluate(&c, &failing).await;
    let e = wait_for_end(&c, &server, &id).await;
    assert_eq!(e["evaluation"]["status"], "Failed", "{e}");
    let mails = smtp.wait_for(1, about).await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0]["subject"], "acme/demo is failing");
    assert_eq!(
        mails[0]["envelope_to"],
        json!(["ci@example.com"]),
        "only the member who wants it"
    );
    assert!(
        mails[0]["body"]
            .as_str()
            .expect("body")
            .contains(&format!("{}/evals/{id}", server.url))
    );

    let still_failing = commit(&repo, &flake(false));
    let id = evaluate(&c, &still_failing).await;
    assert_eq!(wait_for_end(&c, &server, &id).await["evaluation"]["status"], "Failed");

    let fixed = commit(&repo, &flake(true));
    let id = evaluate(&c, &fixed).await;
    let e = wait_for_end(&c, &server, &id).await;
    assert_eq!(e["evaluation"]["status"], "Completed", "{e}\n{}", worker.log_text());
    let mails = smtp.wait_for(2, about).await;
    assert_eq!(mails.len(), 2, "{mails:?}");
    assert_eq!(mails[1]["subject"], "acme/demo is fixed");

    let still_fixed = commit(&repo, &flake(true));
    let id = evaluate(&c, &still_fixed).await;
    assert_eq!(
        wait_for_end(&c, &server, &id).await["evaluation"]["status"],
        "Completed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let about_demo: Vec<Value> = smtp.messages().into_iter().filter(about).collect();
    assert_eq!(
        about_demo.len(),
        2,
        "one mail per change, none while the health stays: {about_demo:?}"
    );
    worker.kill();
    server.stop();
}

/// The web UI's pages the mails link to, in a real browser (`web/e2e/email.mjs`; runs when
/// `GRADIENT_TEST_BROWSER` names it, as `scripts/test` sets after building the UI).
#[tokio::test]
async fn the_web_ui_follows_the_mails_links_and_turns_evaluation_mail_off() {
    let Ok(browser) = std::env::var("GRADIENT_TEST_BROWSER") else {
        eprintln!("skipped: GRADIENT_TEST_BROWSER is not set (scripts/test sets it)");
        return;
    };
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let dist = web.join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "build the UI first (cd web && npm ci && npm run build)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(smtp) = Smtp::start(dir.path()) else { return };
    let server = start_server(
        dir.path(),
        &smtp,
        &[
            ("GRADIENT_EMAIL_REQUIRE_VERIFICATION", "true"),
            ("GRADIENT_FRONTEND_DIR", dist.to_str().expect("path")),
        ],
    )
    .await;
    let c = Client::new(&server);
    let reg = json!({"username": "ada", "name": "Ada Lovelace", "email": "ada@example.com", "password": "password123"});
    c.ok(Method::POST, "/auth/basic/register", Some(reg)).await;
    let run = Command::new("node")
        .arg(web.join("e2e/email.mjs"))
        .env("GRADIENT_URL", &server.url)
        .env("E2E_BROWSER", &browser)
        .env("E2E_INBOX", &smtp.inbox)
        .env("E2E_OUT", web.join("test-output"))
        .output()
        .expect("node runs");
    assert!(
        run.status.success(),
        "the browser run failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    // What the browser did, as the API sees it.
    let mut ada = Client::new(&server);
    let jwt = ada
        .ok(
            Method::POST,
            "/auth/basic/login",
            Some(json!({"loginname": "ada", "password": "a brand new password"})),
        )
        .await;
    ada.token = jwt.as_str().map(str::to_owned);
    assert_eq!(ada.ok(Method::GET, "/user", None).await["email_verified"], true);
    assert_eq!(ada.ok(Method::GET, "/user/mail", None).await["evaluation_mail"], false);
    server.stop();
}
