//! The narinfo shortcut (`cache/shortcut.rs`): the server loop answers `GET`/`HEAD /cache/{cache}/{hash}.narinfo`
//! itself. Each request here goes through the shortcut (which must take it) and through the application's route
//! (poem's TestClient over `gradient_server::app`, which has no shortcut), and the two answers must be the same:
//! status, every header, body. Then what the answers must be: signed, HEAD's length, 404 for a missing path and
//! for an outsider's view of a private cache alike, 401 asking for credentials, Basic and Bearer credentials.
//! In-process on SQLite like `tests/api.rs`.

use gradient_server::cache::NarinfoShortcut;
use gradient_server::config::Config;
use gradient_server::serve::Shortcut;
use http_body_util::BodyExt;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::http::{HeaderMap, Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};
use std::collections::HashMap;

const METRICS_TOKEN: &str = "narinfo-metrics-token-0123456789abcdef";

struct Server {
    client: TestClient<BoxEndpoint<'static, poem::Response>>,
    shortcut: NarinfoShortcut,
    state: gradient_server::state::AppState,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers, body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, METRICS_TOKEN).expect("token file");
    let env: HashMap<String, String> = [
        ("GRADIENT_BASE_DIR", dir.path().display().to_string()),
        ("GRADIENT_METRICS_TOKEN_FILE", token_file.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_vars(&env).expect("config");
    let state = gradient_server::build_state(&config).await.expect("state");
    Server {
        client: TestClient::new(gradient_server::app(state.clone()).boxed()),
        shortcut: NarinfoShortcut::new(state.clone()),
        state,
        _dir: dir,
    }
}

impl Server {
    async fn api(&self, method: Method, path: &str, token: Option<&str>, body: Value) -> Value {
        let mut req = self
            .client
            .request(method.clone(), format!("/api/v1{path}"))
            .body_json(&body);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await;
        let status = resp.0.status();
        let text = resp.0.into_body().into_string().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{method} {path}: {text}");
        serde_json::from_str::<Value>(&text).expect("JSON")["message"].clone()
    }

    /// Registers and signs in `name`; answers an API key of theirs.
    async fn user(&self, name: &str) -> String {
        let body =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": "password123"});
        self.api(Method::POST, "/auth/basic/register", None, body).await;
        let login = json!({"loginname": name, "password": "password123"});
        let session = self.api(Method::POST, "/auth/basic/login", None, login).await;
        let session = session.as_str().expect("session");
        let key = self
            .api(Method::POST, "/user/keys", Some(session), json!({"name": "nix"}))
            .await;
        key["key"].as_str().expect("key").to_owned()
    }

    async fn cache(&self, owner: &str, name: &str, public: bool) {
        let body = json!({"name": name, "display_name": name, "description": "", "public": public});
        self.api(Method::POST, "/caches", Some(owner), body).await;
    }

    /// Pushes the fixture path (a 128-byte NAR) into `cache` as `nix copy` does; answers its hash part.
    async fn push_fixture(&self, cache: &str, key: &str) -> String {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../domain/tests/fixtures/nix/cache");
        let hash = "33q5w5b7yjwdgbxi6nh2ivm78ccs4qlg";
        let narinfo = std::fs::read_to_string(format!("{fixtures}/{hash}.narinfo")).expect("fixture narinfo");
        let narinfo: String = narinfo
            .lines()
            .filter(|l| !l.starts_with("Sig:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
        let nar = std::fs::read(format!("{fixtures}/{url}")).expect("fixture NAR");
        let auth = format!("Bearer {key}");
        for (path, body) in [
            (url.to_owned(), nar),
            (format!("{hash}.narinfo"), narinfo.clone().into_bytes()),
        ] {
            let resp = self
                .client
                .put(format!("/cache/{cache}/{path}"))
                .header("Authorization", &auth)
                .body(body)
                .send()
                .await;
            assert_eq!(resp.0.status(), StatusCode::NO_CONTENT, "{path} is accepted");
        }
        hash.to_owned()
    }

    /// The shortcut's answer; it must take the request.
    async fn short(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = http::Request::builder().method(method.clone()).uri(path);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let Ok(answer) = self.shortcut.answer(req.body(()).expect("request")) else {
            panic!("the shortcut did not take {method} {path}");
        };
        let resp = answer.await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("text"),
        }
    }

    /// The application's answer (its route, without the shortcut).
    async fn routed(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = self.client.request(method, path);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.0;
        let status = resp.status();
        let headers = resp.headers().clone();
        Answer {
            status,
            headers,
            body: resp.into_body().into_string().await.expect("body"),
        }
    }

    /// The answer to `method path`, the same from the shortcut and from the route.
    async fn answer(&self, method: Method, path: &str, authorization: Option<&str>) -> Answer {
        let short = self.short(method.clone(), path, authorization).await;
        let routed = self.routed(method.clone(), path, authorization).await;
        assert_eq!(short, routed, "{method} {path} with {authorization:?}");
        short
    }

    async fn metrics(&self) -> String {
        let resp = self
            .client
            .get("/metrics")
            .header("Authorization", format!("Bearer {METRICS_TOKEN}"))
            .send()
            .await;
        resp.0.into_body().into_string().await.expect("metrics")
    }
}

fn basic(login: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"))
    )
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_public_narinfo_is_answered_signed_and_head_gives_its_length_without_it() {
    let s = server().await;
    let owner = s.user("owner").await;
    s.cache(&owner, "open", true).await;
    let hash = s.push_fixture("open", &owner).await;
    let path = format!("/cache/open/{hash}.narinfo");

    let get = s.answer(Method::GET, &path, None).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(header(&get, "content-type"), Some("text/x-nix-narinfo"));
    assert!(
        get.body.starts_with(&format!("StorePath: /nix/store/{hash}-")),
        "{}",
        get.body
    );
    assert!(get.body.lines().any(|l| l.starts_with("Sig: ")), "signed: {}", get.body);
    assert_eq!(header(&get, "content-length"), Some(&*get.body.len().to_string()));

    let head = s.answer(Method::HEAD, &path, None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.body, "");
    assert_eq!(header(&head, "content-length"), Some(&*get.body.len().to_string()));
    assert_eq!(header(&head, "content-type"), Some("text/x-nix-narinfo"));

    // A path the cache does not hold, with or without credentials.
    let missing = "/cache/open/0000000000000000000000000000000a.narinfo";
    for auth in [None, Some(format!("Bearer {owner}"))] {
        for method in [Method::GET, Method::HEAD] {
            let answer = s.answer(method, missing, auth.as_deref()).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND);
        }
    }
}

#[tokio::test]
async fn a_private_narinfo_needs_credentials_and_an_outsider_sees_it_missing() {
    let s = server().await;
    let owner = s.user("owner").await;
    let outsider = s.user("outsider").await;
    s.cache(&owner, "closed", false).await;
    let hash = s.push_fixture("closed", &owner).await;
    let path = format!("/cache/closed/{hash}.narinfo");

    // Nix's netrc credentials (any login, the key as password, or the key as login) and a bearer token.
    let mut texts = Vec::new();
    for auth in [basic("nix", &owner), basic(&owner, ""), format!("Bearer {owner}")] {
        let answer = s.answer(Method::GET, &path, Some(&auth)).await;
        assert_eq!(answer.status, StatusCode::OK, "{auth}: {}", answer.body);
        assert!(answer.body.lines().any(|l| l.starts_with("Sig: ")), "{}", answer.body);
        texts.push(answer.body);
        let head = s.answer(Method::HEAD, &path, Some(&auth)).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.body, "");
    }
    assert!(texts.windows(2).all(|w| w[0] == w[1]));

    // Anonymous: asked for credentials, for an existing private cache and an unknown one alike.
    let anonymous = s.answer(Method::GET, &path, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&anonymous, "www-authenticate"),
        Some("Basic realm=\"Gradient cache\"")
    );
    let unknown = s
        .answer(Method::GET, &format!("/cache/nosuchcache/{hash}.narinfo"), None)
        .await;
    assert_eq!(unknown, anonymous);
    assert_eq!(
        s.answer(Method::HEAD, &path, None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // An outsider gets exactly the answer for a cache that does not exist (names aside).
    for auth in [basic("nix", &outsider), format!("Bearer {outsider}")] {
        let hidden = s.answer(Method::GET, &path, Some(&auth)).await;
        let absent = s
            .answer(Method::GET, &format!("/cache/nosuchcache/{hash}.narinfo"), Some(&auth))
            .await;
        assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.body);
        assert_eq!(hidden.headers, absent.headers);
        assert_eq!(
            hidden.body.replace("closed", "X"),
            absent.body.replace("nosuchcache", "X")
        );
        assert!(!hidden.body.contains("Sig:"));
    }

    // A wrong key is refused as such.
    for auth in [basic("nix", "gradient_wrong"), "Bearer gradient_wrong".to_owned()] {
        let wrong = s.answer(Method::GET, &path, Some(&auth)).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            header(&wrong, "www-authenticate"),
            Some("Basic realm=\"Gradient cache\"")
        );
    }
}

#[tokio::test]
async fn only_narinfo_reads_are_taken_and_they_are_counted_as_the_route_counts_them() {
    let s = server().await;
    let owner = s.user("owner").await;
    s.cache(&owner, "open", true).await;
    let hash = s.push_fixture("open", &owner).await;
    for (method, path) in [
        (Method::PUT, format!("/cache/open/{hash}.narinfo")),
        (Method::DELETE, format!("/cache/open/{hash}.narinfo")),
        (Method::GET, format!("/cache/open/{hash}.ls")),
        (Method::GET, "/cache/open/nix-cache-info".to_owned()),
        (Method::GET, "/cache/open/nar/abc.nar".to_owned()),
        (Method::GET, format!("/cache/op%65n/{hash}.narinfo")),
        (Method::GET, "/api/v1/health".to_owned()),
    ] {
        let req = http::Request::builder()
            .method(method.clone())
            .uri(&path)
            .body(())
            .expect("request");
        assert!(s.shortcut.answer(req).is_err(), "{method} {path} is the application's");
    }

    let count = |text: &str, method: &str, status: u16| {
        let series = format!(
            "gradient_http_requests_total{{route=\"/cache/{{cache}}/{{file}}\",method=\"{method}\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let kind = |text: &str, name: &str| {
        let series = format!("{name}{{kind=\"narinfo\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = s.metrics().await;
    s.short(Method::GET, &format!("/cache/open/{hash}.narinfo"), None).await;
    s.short(Method::HEAD, &format!("/cache/open/{hash}.narinfo"), None)
        .await;
    s.short(
        Method::GET,
        "/cache/open/0000000000000000000000000000000a.narinfo",
        None,
    )
    .await;
    let after = s.metrics().await;
    assert_eq!(count(&after, "GET", 200) - count(&before, "GET", 200), 1, "{after}");
    assert_eq!(count(&after, "HEAD", 200) - count(&before, "HEAD", 200), 1, "{after}");
    assert_eq!(count(&after, "GET", 404) - count(&before, "GET", 404), 1, "{after}");
    for (name, n) in [
        ("gradient_cache_requests_total", 3),
        ("gradient_cache_hits_total", 2),
        ("gradient_cache_misses_total", 1),
    ] {
        assert_eq!(kind(&after, name) - kind(&before, name), n, "{name}: {after}");
    }
    // The route counts the same request under the same series.
    s.routed(Method::GET, &format!("/cache/open/{hash}.narinfo"), None)
        .await;
    assert_eq!(count(&s.metrics().await, "GET", 200) - count(&after, "GET", 200), 1);
}

/// A read right once used (and so remembered, see `ServeMemo::reads`) ends at once with whatever granted it:
/// the key deleted, the member removed, the grant ended (by the organization or the cache's owner), the cache
/// made private or deleted, the organization deleted. Each answer comes from both the shortcut and the route;
/// the memo's hit count shows which answers came from memory (else this would pass with no memo at all).
#[tokio::test]
async fn a_read_right_ends_at_once_with_what_granted_it() {
    let s = server().await;
    let owner = s.user("owner").await;
    let member = s.user("member").await;
    s.cache(&owner, "closed", false).await;
    s.cache(&owner, "open", true).await;
    let hash = s.push_fixture("closed", &owner).await;
    s.push_fixture("open", &owner).await;
    let path = |cache: &str| format!("/cache/{cache}/{hash}.narinfo");
    let status = |auth: String, cache: &'static str| {
        let path = path(cache);
        let s = &s;
        async move { s.answer(Method::GET, &path, Some(&auth)).await.status }
    };
    let hits = || s.state.core.cache_read_memo_hits();
    // An answer whose read right was remembered: both the shortcut's and the route's come from memory.
    let from_memory = |auth: String, cache: &'static str| {
        let before = hits();
        let status = status(auth, cache);
        async move {
            let status = status.await;
            assert_eq!(hits() - before, 2, "{cache}: both answers from memory");
            status
        }
    };
    // An answer whose read right was not remembered: the shortcut asks storage (and remembers), the route then
    // answers from memory.
    let asked_anew = |auth: String, cache: &'static str| {
        let before = hits();
        let status = status(auth, cache);
        async move {
            let status = status.await;
            assert_eq!(hits() - before, 1, "{cache}: asked anew, then remembered");
            status
        }
    };

    // A second key of the owner's reads, twice (the second from memory), then is deleted: refused at once.
    let key = s
        .api(Method::POST, "/user/keys", Some(&owner), json!({"name": "second"}))
        .await;
    let (id, second) = (key["id"].as_str().expect("id"), key["key"].as_str().expect("key"));
    assert_eq!(asked_anew(basic("nix", second), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(format!("Bearer {second}"), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(basic("nix", second), "closed").await, StatusCode::OK);
    s.api(Method::DELETE, &format!("/user/keys/{id}"), Some(&owner), json!({}))
        .await;
    assert_eq!(status(basic("nix", second), "closed").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(format!("Bearer {second}"), "closed").await,
        StatusCode::UNAUTHORIZED
    );

    // A member of an organization the cache is granted to reads it; removed from it, refused at once.
    s.api(Method::POST, "/orgs", Some(&owner), json!({"name": "team"}))
        .await;
    let add = json!({"user": "member", "role": "View"});
    s.api(Method::POST, "/orgs/team/users", Some(&owner), add.clone()).await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::NOT_FOUND);
    s.api(Method::POST, "/orgs/team/subscribe/closed", Some(&owner), json!({}))
        .await;
    assert_eq!(asked_anew(basic("nix", &member), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(basic("nix", &member), "closed").await, StatusCode::OK);
    s.api(
        Method::DELETE,
        "/orgs/team/users",
        Some(&owner),
        json!({"user": "member"}),
    )
    .await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::NOT_FOUND);

    // Back in the organization (the grant stayed: the cache is the owner's, not the removed member's), then the
    // grant ends: refused at once.
    s.api(Method::POST, "/orgs/team/users", Some(&owner), add).await;
    assert_eq!(asked_anew(basic("nix", &member), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(basic("nix", &member), "closed").await, StatusCode::OK);
    s.api(Method::DELETE, "/orgs/team/subscribe/closed", Some(&owner), json!({}))
        .await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::NOT_FOUND);

    // A public cache read with a key, then made private: the outsider is refused at once.
    assert_eq!(asked_anew(format!("Bearer {member}"), "open").await, StatusCode::OK);
    assert_eq!(from_memory(format!("Bearer {member}"), "open").await, StatusCode::OK);
    s.api(Method::PATCH, "/caches/open", Some(&owner), json!({"public": false}))
        .await;
    assert_eq!(status(format!("Bearer {member}"), "open").await, StatusCode::NOT_FOUND);
    assert_eq!(status(format!("Bearer {owner}"), "open").await, StatusCode::OK);

    // The cache made the organization's push cache (which grants it): read. The push cache cleared, the grant
    // stays, asked anew; the cache's owner then ends the organization's subscription: refused at once.
    s.api(Method::PUT, "/orgs/team/push-cache/closed", Some(&owner), json!({}))
        .await;
    assert_eq!(asked_anew(basic("nix", &member), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(basic("nix", &member), "closed").await, StatusCode::OK);
    s.api(Method::DELETE, "/orgs/team/push-cache", Some(&owner), json!({}))
        .await;
    assert_eq!(asked_anew(basic("nix", &member), "closed").await, StatusCode::OK);
    s.api(
        Method::DELETE,
        "/caches/closed/subscribers/team",
        Some(&owner),
        json!({}),
    )
    .await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::NOT_FOUND);

    // The organization deleted with a grant in place: refused at once.
    s.api(Method::POST, "/orgs/team/subscribe/closed", Some(&owner), json!({}))
        .await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::OK);
    s.api(Method::DELETE, "/orgs/team", Some(&owner), json!({})).await;
    assert_eq!(status(basic("nix", &member), "closed").await, StatusCode::NOT_FOUND);

    // The cache deleted: its owner's remembered right goes with it.
    assert_eq!(asked_anew(format!("Bearer {owner}"), "closed").await, StatusCode::OK);
    assert_eq!(from_memory(format!("Bearer {owner}"), "closed").await, StatusCode::OK);
    s.api(Method::DELETE, "/caches/closed", Some(&owner), json!({})).await;
    assert_eq!(status(format!("Bearer {owner}"), "closed").await, StatusCode::NOT_FOUND);
}

/// HTTP authentication scheme names are case-insensitive (RFC 7235): `bearer`, `BASIC` and the like work.
#[tokio::test]
async fn the_auth_scheme_name_is_case_insensitive() {
    use base64::Engine;
    let s = server().await;
    let owner = s.user("owner").await;
    s.cache(&owner, "closed", false).await;
    let hash = s.push_fixture("closed", &owner).await;
    let path = format!("/cache/closed/{hash}.narinfo");
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("nix:{owner}"));
    for auth in [
        format!("bearer {owner}"),
        format!("BEARER {owner}"),
        format!("basic {encoded}"),
        format!("BASIC {encoded}"),
        format!("bAsIc {encoded}"),
    ] {
        let answer = s.answer(Method::GET, &path, Some(&auth)).await;
        assert_eq!(answer.status, StatusCode::OK, "{auth}: {}", answer.body);
        assert!(answer.body.lines().any(|l| l.starts_with("Sig: ")), "{}", answer.body);
    }
    let other = s.answer(Method::GET, &path, Some(&format!("Token {owner}"))).await;
    assert_eq!(
        other.status,
        StatusCode::UNAUTHORIZED,
        "an unknown scheme is no credential"
    );
}

/// Many requests at once with a key whose read right is not remembered (a Nix client's parallel narinfo
/// requests when the remembered right has just expired) ask storage once: the others wait for that answer and
/// take it from memory, instead of each taking a database connection of its own (a burst of 16 opened 16).
#[tokio::test]
async fn parallel_requests_with_one_key_ask_storage_once() {
    let s = server().await;
    let owner = s.user("owner").await;
    s.cache(&owner, "closed", false).await;
    let hash = s.push_fixture("closed", &owner).await;
    // A key never used to read: its right is not remembered.
    let key = s
        .api(Method::POST, "/user/keys", Some(&owner), json!({"name": "parallel"}))
        .await;
    let auth = format!("Bearer {}", key["key"].as_str().expect("key"));
    let path = format!("/cache/closed/{hash}.narinfo");
    let before = s.state.core.cache_read_memo_hits();
    let answers = futures_util::future::join_all((0..16).map(|_| s.short(Method::GET, &path, Some(&auth)))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK), "{answers:?}");
    assert_eq!(
        s.state.core.cache_read_memo_hits() - before,
        15,
        "one asked storage, the others took its answer from memory"
    );
    // An unknown key is refused to every one of them alike.
    let unknown = format!("Bearer GRAD{}", "0".repeat(40));
    let answers = futures_util::future::join_all((0..4).map(|_| s.short(Method::GET, &path, Some(&unknown)))).await;
    assert!(
        answers.iter().all(|a| a.status == StatusCode::UNAUTHORIZED),
        "{answers:?}"
    );
}
