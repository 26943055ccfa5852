//! Single sign-on against a real OpenID Provider: `oidc-provider` (npm, `tests/oidc-provider/provider.mjs`)
//! started by each test, and a real HTTP client with a cookie jar — a browser without JavaScript — following
//! every redirect and filling in the provider's login and consent forms. The server discovers the provider,
//! sends the browser there with state, nonce and an S256 PKCE challenge, and its callback exchanges the code
//! and hands the web UI a session token in the fragment of `/signin/oidc`.
//!
//! Runs when `GRADIENT_TEST_OIDC_PROVIDER` names the provider script (scripts/test sets it after `npm ci` in
//! `tests/oidc-provider`); skipped otherwise, saying so.

use crate::harness::{Server, free_port, start_failure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "gradient";
const CLIENT_SECRET: &str = "a-client-secret-only-gradient-and-the-provider-know";

/// The provider, stopped when dropped.
struct Provider {
    issuer: String,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.child);
    }
}

fn provider_script() -> Option<String> {
    match std::env::var("GRADIENT_TEST_OIDC_PROVIDER") {
        Ok(script) => Some(script),
        Err(_) => {
            eprintln!("skipped: GRADIENT_TEST_OIDC_PROVIDER is not set (scripts/test sets it)");
            None
        }
    }
}

/// The provider's accounts: login → claims. `mulder-idp` and `mulder-unverified` have the address of the
/// password account the tests register as `mulder`; only the first has it verified.
fn users() -> Value {
    json!({
        "scully": {"email": "Scully@Example.test", "email_verified": true, "name": "Dana Scully",
                   "preferred_username": "scully"},
        "mulder-idp": {"email": "mulder@example.test", "email_verified": true, "name": "Fox Mulder"},
        "mulder-unverified": {"email": "mulder@example.test", "email_verified": false, "name": "Not Mulder"},
        "skinner": {"email": "skinner@example.test", "name": "Walter Skinner"},
    })
}

/// Starts the provider for a server on `server_port`; waits until it listens.
fn start_provider(script: &str, dir: &Path, server_port: u16) -> Provider {
    let port = free_port();
    let log = dir.join(format!("oidc-provider-{port}.log"));
    let child = crate::harness::tied("node")
        .arg(script)
        .env("OIDC_PORT", port.to_string())
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env(
            "OIDC_REDIRECT_URI",
            format!("http://127.0.0.1:{server_port}/api/v1/auth/oidc/callback"),
        )
        .env("OIDC_USERS", users().to_string())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs the provider");
    let provider = Provider {
        issuer: format!("http://127.0.0.1:{port}"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready ") {
        assert!(Instant::now() < deadline, "the OIDC provider did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    provider
}

/// A server using the provider, with a client secret file; `extra` adds or overrides variables.
async fn server_with(dir: &Path, port: u16, provider: &Provider, extra: &[(&str, &str)]) -> Server {
    let secret = dir.join("oidc-client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).expect("secret");
    let mut vars = vec![
        ("GRADIENT_OIDC_ENABLE", "true"),
        ("GRADIENT_OIDC_CLIENT_ID", CLIENT_ID),
        ("GRADIENT_OIDC_CLIENT_SECRET_FILE", secret.to_str().expect("path")),
        ("GRADIENT_OIDC_DISCOVERY_URL", provider.issuer.as_str()),
        ("GRADIENT_OIDC_SCOPES", "openid email profile"),
    ];
    vars.extend_from_slice(extra);
    Server::start_on(dir, port, &vars).await
}

/// A browser: its own cookie jar, redirects followed by hand (to see each one).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The value of `name="<field>" value="…"` inputs and the form's action, from the provider's page.
fn form_action(html: &str) -> String {
    let start = html.find("action=\"").expect("a form") + "action=\"".len();
    let end = start + html[start..].find('"').expect("action ends");
    html[start..end].replace("&#x2F;", "/").replace("&amp;", "&")
}

/// Follows redirects from `url`, signing in at the provider as `login` when its login form appears (or, for
/// the login `!abort`, cancelling there) and consenting when asked, until the server sends the browser to the web UI's `/signin/oidc` page; answers
/// that page's fragment as pairs. Also answers the callback URL the provider sent the browser to.
async fn follow(browser: &reqwest::Client, url: &str, login: &str) -> (Vec<(String, String)>, String) {
    let mut url = reqwest::Url::parse(url).expect("url");
    let mut callback = String::new();
    for _ in 0..20 {
        if url.path() == "/api/v1/auth/oidc/callback" {
            callback = url.to_string();
        }
        if url.path() == "/auth" {
            // What the server asked the provider for.
            let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            assert_eq!(get("code_challenge_method"), Some("S256"), "{url}");
            assert_eq!(get("response_type"), Some("code"));
            assert_eq!(get("client_id"), Some(CLIENT_ID));
            assert!(get("code_challenge").is_some_and(|c| c.len() == 43));
            assert!(get("state").is_some_and(|s| s.len() >= 32) && get("nonce").is_some_and(|n| n.len() >= 32));
            let scopes: Vec<_> = get("scope").unwrap_or_default().split(' ').collect();
            assert!(
                ["openid", "email", "profile"].iter().all(|s| scopes.contains(s)),
                "{scopes:?}"
            );
        }
        let resp = browser.get(url.clone()).send().await.expect("GET");
        let status = resp.status();
        if status.is_redirection() {
            let location = resp.headers()["location"].to_str().expect("location").to_owned();
            if let Some(fragment) = location.strip_prefix("/signin/oidc#") {
                let pairs = reqwest::Url::parse(&format!("http://x/?{fragment}"))
                    .expect("fragment")
                    .query_pairs()
                    .into_owned()
                    .collect();
                return (pairs, callback);
            }
            url = url.join(&location).expect("location");
            continue;
        }
        let text = resp.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{url}: {text}");
        let action = url.join(&form_action(&text)).expect("action");
        if login == "!abort" {
            // oidc-provider's "cancel" link: /interaction/<uid>/abort.
            let resp = browser
                .get(url.join(&format!("{}/abort", url.path())).expect("abort"))
                .send()
                .await;
            let resp = resp.expect("abort");
            let location = resp.headers()["location"].to_str().expect("location").to_owned();
            url = url.join(&location).expect("location");
            continue;
        }
        let form: Vec<(&str, &str)> = if text.contains("name=\"prompt\" value=\"login\"") {
            vec![("prompt", "login"), ("login", login), ("password", "any")]
        } else if text.contains("name=\"prompt\" value=\"consent\"") {
            vec![("prompt", "consent")]
        } else {
            panic!("{url}: neither a login nor a consent form:\n{text}");
        };
        let resp = browser.post(action).form(&form).send().await.expect("POST");
        assert!(resp.status().is_redirection(), "{}", resp.status());
        let location = resp.headers()["location"].to_str().expect("location").to_owned();
        url = url.join(&location).expect("location");
    }
    panic!("too many redirects");
}

fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Signs in through the provider as `login` in a fresh browser; answers the landing page's fragment.
async fn sign_in(server: &Server, login: &str) -> Vec<(String, String)> {
    let b = browser();
    follow(&b, &format!("{}/api/v1/auth/oidc/login", server.url), login)
        .await
        .0
}

/// `GET /api/v1/user` with a bearer token.
async fn user(server: &Server, token: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/user", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /user");
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

async fn api(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}/api/v1{path}", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.json(&body).send().await.expect("request");
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again() {
    let Some(script) = provider_script() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let provider = start_provider(&script, dir.path(), port);
    let server = server_with(
        dir.path(),
        port,
        &provider,
        &[("GRADIENT_OIDC_ICON_URL", "https://idp.example.test/logo.svg")],
    )
    .await;

    let (_, config) = api(&server, reqwest::Method::GET, "/config", None, Value::Null).await;
    assert_eq!(config["message"]["oidc_enabled"], true);
    assert_eq!(config["message"]["oidc_required"], false);
    assert_eq!(config["message"]["registration_enabled"], true);
    assert_eq!(config["message"]["oidc_icon_url"], "https://idp.example.test/logo.svg");

    // The whole flow in one browser: the server's redirect, the provider's login and consent, the callback.
    let b = browser();
    let resp = b
        .get(format!("{}/api/v1/auth/oidc/login", server.url))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().expect("cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/api/v1/auth/oidc"),
        "{cookie}"
    );
    let flow_cookie = cookie.split(';').next().expect("name=value").to_owned();
    let authorize = resp.headers()["location"].to_str().expect("location").to_owned();
    assert!(
        authorize.starts_with(&format!("{}/auth?", provider.issuer)),
        "{authorize}"
    );
    let (landing, callback) = follow(&b, &authorize, "scully").await;
    let token = get(&landing, "token").unwrap_or_else(|| panic!("signed in: {landing:?}"));
    let (status, me) = user(&server, token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["message"]["username"], "scully");
    assert_eq!(me["message"]["email"], "scully@example.test");
    assert_eq!(me["message"]["name"], "Dana Scully");
    assert_eq!(me["message"]["email_verified"], true, "the provider's claim");
    let scully_id = me["message"]["id"].clone();
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/user/oidc", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("identities");
    let linked: Value = resp.json().await.expect("json");
    assert_eq!(linked["message"][0]["issuer"], provider.issuer.as_str());
    assert_eq!(linked["message"][0]["subject"], "scully");

    // The same callback again, with the flow's cookie as it was: refused, the flow is used up.
    assert!(callback.contains("code=") && callback.contains("state="), "{callback}");
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(&callback)
        .header("cookie", &flow_cookie)
        .send()
        .await
        .expect("replay");
    let location = resp.headers()["location"].to_str().expect("location");
    assert!(
        location.starts_with("/signin/oidc#error=oidc_state_invalid"),
        "a replayed callback: {location}"
    );

    // A callback whose state the server never issued, and one from a browser that did not start the flow.
    let stranger = browser();
    let wrong = format!(
        "{}/api/v1/auth/oidc/callback?code=abc&state=not-a-state-we-issued",
        server.url
    );
    let (landing, _) = follow(&stranger, &wrong, "scully").await;
    assert_eq!(get(&landing, "error"), Some("oidc_state_invalid"));
    let victim = browser();
    let resp = victim
        .get(format!("{}/api/v1/auth/oidc/login", server.url))
        .send()
        .await
        .expect("login");
    let authorize = reqwest::Url::parse(resp.headers()["location"].to_str().expect("location")).expect("url");
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let attacker = browser();
    let forged = format!("{}/api/v1/auth/oidc/callback?code=abc&state={state}", server.url);
    let (landing, _) = follow(&attacker, &forged, "scully").await;
    assert_eq!(
        get(&landing, "error"),
        Some("oidc_state_invalid"),
        "another browser's flow"
    );

    // Signing in again is the same account; another provider account is another Gradient account, and a
    // provider account without a verified address makes an unverified one.
    let again = sign_in(&server, "scully").await;
    let (_, me) = user(&server, get(&again, "token").expect("token")).await;
    assert_eq!(me["message"]["id"], scully_id);
    // Someone who cancels at the provider comes back to the web UI told so.
    let cancelled = sign_in(&server, "!abort").await;
    assert_eq!(get(&cancelled, "error"), Some("oidc_denied"), "{cancelled:?}");
    assert!(
        get(&cancelled, "message").is_some_and(|m| m.contains("access_denied")),
        "{cancelled:?}"
    );

    let skinner = sign_in(&server, "skinner").await;
    let (_, me) = user(&server, get(&skinner, "token").expect("token")).await;
    assert_eq!(me["message"]["username"], "skinner");
    assert_eq!(
        me["message"]["email_verified"], false,
        "no email_verified claim is unverified"
    );

    // Logging out ends the session the provider's sign-in opened.
    let token = get(&again, "token").expect("token");
    let (status, _) = api(&server, reqwest::Method::POST, "/auth/logout", Some(token), Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user(&server, token).await.0, StatusCode::UNAUTHORIZED);
    server.stop();
}

#[tokio::test]
async fn an_existing_account_is_never_taken_over_and_its_owner_links_it_with_a_verified_email() {
    let Some(script) = provider_script() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let provider = start_provider(&script, dir.path(), port);
    let server = server_with(dir.path(), port, &provider, &[]).await;
    let register = json!({"username": "mulder", "name": "Fox Mulder", "email": "mulder@example.test",
                          "password": "trustno1-trustno1"});
    let (status, body) = api(&server, reqwest::Method::POST, "/auth/basic/register", None, register).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The provider's accounts with mulder's address, verified or not, do not get into mulder's account.
    for login in ["mulder-idp", "mulder-unverified"] {
        let landing = sign_in(&server, login).await;
        assert_eq!(
            get(&landing, "error"),
            Some("oidc_account_exists"),
            "{login}: {landing:?}"
        );
        assert_eq!(get(&landing, "token"), None);
        assert!(
            get(&landing, "message").is_some_and(|m| m.contains("link")),
            "{landing:?}"
        );
    }

    // Mulder, signed in with his password, links: not with the unverified account, yes with the verified one.
    let login = json!({"loginname": "mulder", "password": "trustno1-trustno1"});
    let (_, body) = api(&server, reqwest::Method::POST, "/auth/basic/login", None, login).await;
    let session = body["message"].as_str().expect("token").to_owned();
    let link = |login: &'static str| {
        let server = &server;
        let session = session.clone();
        async move {
            let b = browser();
            let resp = b
                .post(format!("{}/api/v1/user/oidc/link", server.url))
                .bearer_auth(&session)
                .send()
                .await
                .expect("link");
            assert_eq!(resp.status(), StatusCode::OK);
            let body: Value = resp.json().await.expect("json");
            let url = body["message"]["url"].as_str().expect("url").to_owned();
            follow(&b, &url, login).await.0
        }
    };
    let landing = link("mulder-unverified").await;
    assert_eq!(get(&landing, "error"), Some("oidc_email_unverified"), "{landing:?}");
    let landing = sign_in(&server, "mulder-unverified").await;
    assert_eq!(get(&landing, "error"), Some("oidc_account_exists"), "still not linked");
    let landing = link("mulder-idp").await;
    assert_eq!(get(&landing, "linked"), Some("1"), "{landing:?}");

    // Now the provider's account signs in as mulder.
    let landing = sign_in(&server, "mulder-idp").await;
    let (_, me) = user(&server, get(&landing, "token").expect("signed in")).await;
    assert_eq!(me["message"]["username"], "mulder");

    // An API key cannot start a link; without credentials, 401.
    let (_, key) = api(
        &server,
        reqwest::Method::POST,
        "/user/keys",
        Some(&session),
        json!({"name": "ci"}),
    )
    .await;
    let key = key["message"]["key"].as_str().expect("key");
    let (status, body) = api(
        &server,
        reqwest::Method::POST,
        "/user/oidc/link",
        Some(key),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = api(&server, reqwest::Method::POST, "/user/oidc/link", None, Value::Null).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop();
}

#[tokio::test]
async fn required_oidc_refuses_password_login_and_registration_and_needs_a_working_provider() {
    let Some(script) = provider_script() else { return };
    let dir = tempfile::tempdir().expect("tempdir");

    // Required without a provider that answers: start-up refuses (nobody could sign in).
    let closed = format!("http://127.0.0.1:{}", free_port());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, CLIENT_SECRET).expect("secret");
    let out = start_failure(
        dir.path(),
        &[
            ("GRADIENT_OIDC_ENABLE", "true"),
            ("GRADIENT_OIDC_REQUIRED", "true"),
            ("GRADIENT_OIDC_CLIENT_ID", CLIENT_ID),
            ("GRADIENT_OIDC_CLIENT_SECRET_FILE", secret.to_str().expect("path")),
            ("GRADIENT_OIDC_DISCOVERY_URL", &closed),
        ],
    );
    let last = out.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(
        last.contains("GRADIENT_OIDC_REQUIRED") && last.contains(&closed),
        "one line naming the variable and the provider: {out}"
    );

    let port = free_port();
    let provider = start_provider(&script, dir.path(), port);
    let server = server_with(dir.path(), port, &provider, &[("GRADIENT_OIDC_REQUIRED", "true")]).await;
    let (_, config) = api(&server, reqwest::Method::GET, "/config", None, Value::Null).await;
    assert_eq!(config["message"]["oidc_required"], true);
    assert_eq!(config["message"]["registration_enabled"], false);
    assert_eq!(config["message"]["oidc_icon_url"], Value::Null);
    let register = json!({"username": "kersh", "name": "Kersh", "email": "kersh@example.test",
                          "password": "password-password"});
    let (status, body) = api(&server, reqwest::Method::POST, "/auth/basic/register", None, register).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("registration_disabled"))
    );
    let login = json!({"loginname": "kersh", "password": "password-password"});
    let (status, body) = api(&server, reqwest::Method::POST, "/auth/basic/login", None, login).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let landing = sign_in(&server, "scully").await;
    assert_eq!(
        user(&server, get(&landing, "token").expect("token")).await.0,
        StatusCode::OK
    );
    server.stop();
}

/// The web UI's side in Debian's chromium (`web/e2e/oidc.mjs`): the sign-in page's button with the provider's
/// icon, the provider's forms, and back on the page the visitor wanted, signed in. Runs when
/// `GRADIENT_TEST_BROWSER` is set too, with the UI built (`web/dist`).
#[tokio::test]
async fn the_web_ui_signs_in_with_single_sign_on_in_a_browser() {
    let Some(script) = provider_script() else { return };
    let Ok(chromium) = std::env::var("GRADIENT_TEST_BROWSER") else {
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
    let port = free_port();
    let provider = start_provider(&script, dir.path(), port);
    let icon_url = format!("{}/logo.svg", provider.issuer);
    let server = server_with(
        dir.path(),
        port,
        &provider,
        &[
            ("GRADIENT_FRONTEND_DIR", dist.to_str().expect("path")),
            ("GRADIENT_OIDC_ICON_URL", &icon_url),
        ],
    )
    .await;
    let out = Command::new("node")
        .arg(web.join("e2e/oidc.mjs"))
        .env("GRADIENT_URL", &server.url)
        .env("E2E_BROWSER", &chromium)
        .env("E2E_OUT", web.join("test-output"))
        .env("E2E_OIDC_LOGIN", "scully")
        .env("E2E_OIDC_ICON", &icon_url)
        .output()
        .expect("node runs");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser run failed:\n{said}");
    server.stop();
}
