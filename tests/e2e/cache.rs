//! The binary cache with Nix 2.8 as the client: `nix copy --to` pushes a closure into a private cache with a
//! netrc, or a worker's push sends it as an export stream (the cache client port's contract), and
//! `nix copy --from` substitutes it into a fresh store trusting only the cache's key; and the refusals
//! (tampered signature, mismatching uploads, broken export streams, missing credentials).

use crate::harness::{Client, Server};
use crate::nix::{NIX_CONFIG, build_closure, nix_ok, nix_store, substitute};
use gradient_cache_http::HttpCacheClient;
use gradient_domain::ports::cache_client::{CacheClient, CacheClientError};
use gradient_domain::proto::PushTarget;
use gradient_nix_cli::NixCli;
use reqwest::Method;
use serde_json::json;
use std::path::Path;

pub(crate) struct Cache {
    pub(crate) server: Server,
    pub(crate) url: String,
    pub(crate) public_key: String,
    pub(crate) netrc: String,
    pub(crate) key: String,
}

pub(crate) async fn private_cache(dir: &Path, vars: &[(&str, &str)]) -> Cache {
    let server = Server::start(dir, vars).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("pusher").await;
    c.ok(Method::POST, "/caches", Some(json!({"name": "main", "public": false})))
        .await;
    let public_key = c
        .ok(Method::GET, "/caches/main/public-key", None)
        .await
        .as_str()
        .expect("key")
        .to_owned();
    let netrc = dir.join("netrc");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login token password {key}\n")).expect("netrc");
    let url = format!("{}/cache/main", server.url);
    Cache {
        server,
        url,
        public_key,
        netrc: netrc.to_str().expect("path").to_owned(),
        key,
    }
}

/// Pushes with `nix copy`, substitutes into a fresh store with signatures required, and verifies every path.
fn push_and_substitute(cache: &Cache, dir: &Path, paths: &[String]) {
    let to = format!("{}?compression=zstd", cache.url);
    let mut push = vec!["copy", "--to", &to, "--option", "netrc-file", &cache.netrc];
    push.extend(paths.iter().map(String::as_str));
    nix_ok(&push);
    substitute_and_verify(cache, &dir.join("fresh-store"), paths);
}

/// The narinfo of `path` as the cache serves it (HTTP Basic with any login, as from a netrc), checked to be
/// signed by the cache's key.
async fn signed_narinfo(cache: &Cache, path: &str) -> String {
    let hash = &Path::new(path).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let narinfo = reqwest::Client::new()
        .get(format!("{}/{hash}.narinfo", cache.url))
        .basic_auth("anyone", Some(&cache.key))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let key_name = cache.public_key.split(':').next().expect("name");
    assert!(
        narinfo.lines().any(|l| l.starts_with(&format!("Sig: {key_name}:"))),
        "{narinfo}"
    );
    narinfo
}

fn target(cache: &Cache) -> PushTarget {
    PushTarget {
        cache_url: cache.url.clone(),
        token: cache.key.clone(),
    }
}

/// Pushes as a worker does (the closure, one question, one export stream): how many paths were imported.
pub(crate) async fn worker_push(cache: &Cache, paths: &[String]) -> u64 {
    let nix = NixCli::new().env("NIX_CONFIG", NIX_CONFIG);
    let client = HttpCacheClient::new().expect("client");
    gradient_domain::push::push(&nix, &client, &target(cache), paths)
        .await
        .expect("push")
}

/// Substitutes into the fresh store `fresh` with signatures required, and verifies every path.
fn substitute_and_verify(cache: &Cache, fresh: &Path, paths: &[String]) {
    let fresh = fresh.to_str().expect("path");
    let wanted: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = substitute(&cache.url, fresh, Some(&cache.netrc), &cache.public_key, &wanted);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in paths {
        let out = nix_store(&["--store", fresh, "--verify-path", p]);
        assert!(
            out.status.success(),
            "{p} does not verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn nix_pushes_a_closure_and_a_fresh_store_substitutes_it_with_signatures_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "fs", 50);
    let cache = private_cache(dir.path(), &[]).await;
    push_and_substitute(&cache, dir.path(), &paths);

    // Anonymous reads of a private cache are asked for credentials.
    let resp = reqwest::get(format!("{}/nix-cache-info", cache.url))
        .await
        .expect("GET");
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic"))
    );
    let hash = Path::new(&paths[0]).file_name().and_then(|n| n.to_str()).expect("name")[..32].to_owned();
    assert_eq!(
        reqwest::get(format!("{}/{hash}.narinfo", cache.url))
            .await
            .expect("GET")
            .status(),
        401
    );

    // With the key, the narinfo is served signed by the cache's key.
    signed_narinfo(&cache, &paths[0]).await;
    cache.server.stop();
}

#[tokio::test]
async fn a_workers_export_stream_fills_the_cache_and_a_fresh_store_substitutes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "import", 50);
    let cache = private_cache(dir.path(), &[]).await;
    assert_eq!(worker_push(&cache, &paths).await, paths.len() as u64);
    substitute_and_verify(&cache, &dir.path().join("fresh-store"), &paths);
    let client = HttpCacheClient::new().expect("client");
    assert_eq!(client.missing(&target(&cache), &paths).await, Ok(vec![]));
    // A second push sends nothing.
    assert_eq!(worker_push(&cache, &paths).await, 0);
    // The narinfo is signed by the cache and names the cache's compression.
    let narinfo = signed_narinfo(&cache, &paths[0]).await;
    assert!(
        narinfo.contains("Compression: zstd\n") && narinfo.contains(".nar.zst\n"),
        "{narinfo}"
    );
    cache.server.stop();
}

/// `nix-store --export` of `paths`.
fn export(paths: &[String]) -> Vec<u8> {
    let mut args = vec!["--export"];
    args.extend(paths.iter().map(String::as_str));
    let out = nix_store(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn broken_or_unauthorized_imports_keep_the_paths_before_and_nothing_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "import-refused", 1);
    let (base, top) = (&paths[0], &paths[1]);
    let cache = private_cache(dir.path(), &[]).await;
    let client = HttpCacheClient::new().expect("client");
    let http = reqwest::Client::new();
    let import = |body: Vec<u8>, token: &str| {
        http.post(format!("{}/import", cache.url))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    let whole = export(&paths);

    // Without the right credential: refused, nothing imported.
    let resp = import(whole.clone(), "not-a-token").await.expect("POST");
    assert_eq!(resp.status(), 401);
    let wrong = PushTarget {
        token: "not-a-token".into(),
        ..target(&cache)
    };
    assert!(matches!(
        client.missing(&wrong, &paths).await,
        Err(CacheClientError::Refused { status: 401, .. })
    ));

    // A path whose reference is neither in the cache nor earlier in the stream.
    let resp = import(export(std::slice::from_ref(top)), &cache.key)
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.expect("text");
    assert!(
        text.contains("(reference_missing)") && text.contains(base.as_str()),
        "{text}"
    );
    assert_eq!(client.missing(&target(&cache), &paths).await, Ok(paths.clone()));

    // Cut inside the second path: the first is imported, the second is not.
    let resp = import(whole[..whole.len() - 100].to_vec(), &cache.key)
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.expect("text").contains("(invalid_export)"));
    assert_eq!(client.missing(&target(&cache), &paths).await, Ok(vec![top.clone()]));

    // Bytes that are not an export stream at all.
    let resp = import(b"definitely not an export".to_vec(), &cache.key)
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    assert_eq!(client.missing(&target(&cache), &paths).await, Ok(vec![top.clone()]));

    // Only POST is answered.
    let resp = http
        .get(format!("{}/import", cache.url))
        .bearer_auth(&cache.key)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));

    // Questions about things that are not store paths are refused.
    let resp = http
        .post(format!("{}/missing", cache.url))
        .bearer_auth(&cache.key)
        .body("/etc/passwd\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.expect("text").contains("(invalid_store_path)"));

    // The push that follows sends only what is missing, and the whole closure substitutes.
    assert_eq!(worker_push(&cache, &paths).await, 1);
    substitute_and_verify(&cache, &dir.path().join("fresh-store"), &paths);
    cache.server.stop();
}

#[tokio::test]
async fn a_tampered_signature_is_refused_by_nix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "tamper", 1);
    let cache = private_cache(dir.path(), &[]).await;
    let to = format!("{}?compression=zstd", cache.url);
    let mut push = vec!["copy", "--to", &to, "--option", "netrc-file", &cache.netrc];
    push.extend(paths.iter().map(String::as_str));
    nix_ok(&push);

    // Mirror what the server serves into a file:// cache, once as served and once with the signature altered.
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        let key = cache.key.clone();
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("GET")
                .bytes()
                .await
                .expect("body")
        }
    };
    for (name, tamper) in [("mirror-ok", false), ("mirror-tampered", true)] {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("nar")).expect("mkdir");
        std::fs::write(
            root.join("nix-cache-info"),
            get(format!("{}/nix-cache-info", cache.url)).await,
        )
        .expect("write");
        for p in &paths {
            let hash = &Path::new(p).file_name().and_then(|n| n.to_str()).expect("name")[..32];
            let text = String::from_utf8(get(format!("{}/{hash}.narinfo", cache.url)).await.to_vec()).expect("utf-8");
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("URL: "))
                .expect("URL line")
                .to_owned();
            std::fs::write(root.join(&url), get(format!("{}/{url}", cache.url)).await).expect("write nar");
            let text = if tamper {
                // Flip one base64 character of the signature.
                text.lines()
                    .map(|l| match l.strip_prefix("Sig: ") {
                        Some(sig) => {
                            let (name, b64) = sig.split_once(':').expect("name:sig");
                            let first = if b64.starts_with('A') { 'B' } else { 'A' };
                            format!("Sig: {name}:{first}{}", &b64[1..])
                        }
                        None => l.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n"
            } else {
                text
            };
            std::fs::write(root.join(format!("{hash}.narinfo")), text).expect("write narinfo");
        }
        let from = format!("file://{}", root.display());
        let store = dir.path().join(format!("{name}-store"));
        let store = store.to_str().expect("path");
        let wanted: Vec<&str> = paths.iter().map(String::as_str).collect();
        let out = substitute(&from, store, None, &cache.public_key, &wanted);
        if tamper {
            assert!(!out.status.success(), "Nix accepted a tampered signature");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("signature"), "{stderr}");
        } else {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    cache.server.stop();
}

#[tokio::test]
async fn uploads_that_do_not_match_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "mismatch", 1);
    let cache = private_cache(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let nar = nix_store(&["--dump", &paths[0]]).stdout;

    // A NAR whose bytes are not what its URL names.
    let wrong_url = format!("{}/nar/{}.nar", cache.url, "0".repeat(52));
    let resp = http
        .put(&wrong_url)
        .bearer_auth(&cache.key)
        .body(nar.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        http.head(&wrong_url)
            .bearer_auth(&cache.key)
            .send()
            .await
            .expect("HEAD")
            .status(),
        404
    );

    // Bytes that are not a NAR at all.
    let garbage = b"this is not a NAR".to_vec();
    let garbage_url = format!("{}/nar/{}.nar", cache.url, nix32_sha256(&garbage));
    let resp = http
        .put(&garbage_url)
        .bearer_auth(&cache.key)
        .body(garbage)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    assert_eq!(
        http.head(&garbage_url)
            .bearer_auth(&cache.key)
            .send()
            .await
            .expect("HEAD")
            .status(),
        404
    );

    // A valid NAR, then a narinfo that lies about it: refused, and the NAR is gone too.
    let good_url = format!("nar/{}.nar", nix32_sha256(&nar));
    let resp = http
        .put(format!("{}/{good_url}", cache.url))
        .bearer_auth(&cache.key)
        .body(nar.clone())
        .send()
        .await
        .expect("PUT");
    assert!(resp.status().is_success(), "{}", resp.status());
    let info = nix_ok(&["path-info", "--json", &paths[0]]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    let hash = &Path::new(&paths[0]).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let narinfo = format!(
        "StorePath: {}\nURL: {good_url}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
        paths[0],
        info[0]["narHash"].as_str().expect("narHash"),
        info[0]["narSize"].as_u64().expect("narSize") + 1,
    );
    let resp = http
        .put(format!("{}/{hash}.narinfo", cache.url))
        .bearer_auth(&cache.key)
        .body(narinfo)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.expect("text").contains("NarSize"));
    assert_eq!(
        http.get(format!("{}/{hash}.narinfo", cache.url))
            .bearer_auth(&cache.key)
            .send()
            .await
            .expect("GET")
            .status(),
        404
    );
    assert_eq!(
        http.head(format!("{}/{good_url}", cache.url))
            .bearer_auth(&cache.key)
            .send()
            .await
            .expect("HEAD")
            .status(),
        404
    );
    let stored: Vec<_> = walk(&dir.path().join("nars"))
        .into_iter()
        .filter(|p| !p.contains("/.tmp"))
        .collect();
    assert!(stored.is_empty(), "nothing is left in the NAR store: {stored:?}");

    // Without write permission (a key of another user), pushing is forbidden.
    let mut other = Client::new(&cache.server);
    let other_key = other.register_with_key("intruder").await;
    let resp = http
        .put(format!("{}/{good_url}", cache.url))
        .bearer_auth(&other_key)
        .body(nar)
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 404, "a private cache is invisible to others");
    cache.server.stop();
}

fn nix32_sha256(bytes: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(file.path(), bytes).expect("write");
    let out = nix_ok(&[
        "hash",
        "file",
        "--type",
        "sha256",
        "--base32",
        file.path().to_str().expect("path"),
    ]);
    out.trim().to_owned()
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn the_same_with_nars_on_an_s3_compatible_server() {
    let endpoint = std::env::var("GRADIENT_TEST_S3_ENDPOINT")
        .expect("GRADIENT_TEST_S3_ENDPOINT is not set: run the suite with scripts/test, which starts moto");
    let bucket = format!("gradient-e2e-{}", uuid::Uuid::new_v4().simple());
    let resp = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(resp.status().is_success(), "creating the bucket: {}", resp.status());
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "test-secret\n").expect("write");
    let store = format!("s3://{bucket}/gradient");
    let vars = [
        ("GRADIENT_NAR_STORE", store.as_str()),
        ("GRADIENT_S3_ENDPOINT", endpoint.as_str()),
        ("GRADIENT_S3_ACCESS_KEY_ID", "test"),
        ("GRADIENT_S3_SECRET_ACCESS_KEY_FILE", secret.to_str().expect("path")),
        ("RUST_S3_SKIP_LOCATION_CONSTRAINT", "true"),
    ];
    let paths = build_closure(dir.path(), "s3", 50);
    let cache = private_cache(dir.path(), &vars).await;
    push_and_substitute(&cache, dir.path(), &paths);
    // And as a worker pushes: an export stream.
    let imported = build_closure(dir.path(), "s3-import", 20);
    assert_eq!(worker_push(&cache, &imported).await, imported.len() as u64);
    substitute_and_verify(&cache, &dir.path().join("fresh-store-import"), &imported);
    assert!(
        walk(&dir.path().join("nars")).is_empty(),
        "nothing was written to the local NAR directory"
    );
    cache.server.stop();
}

#[tokio::test]
async fn priority_follows_the_client_address_and_nars_serve_byte_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = build_closure(dir.path(), "range", 1);
    let server = Server::start(dir.path(), &[("GRADIENT_LOCAL_IPS", "10.0.0.0/8")]).await;
    let mut c = Client::new(&server);
    let key = c.register_with_key("ranger").await;
    c.ok(
        Method::POST,
        "/caches",
        Some(json!({"name": "pub", "public": true, "priority": 40, "local_priority": 5})),
    )
    .await;
    let url = format!("{}/cache/pub", server.url);
    let http = reqwest::Client::new();
    let info = |xff: Option<&'static str>| {
        let mut req = http.get(format!("{url}/nix-cache-info"));
        if let Some(x) = xff {
            req = req.header("X-Forwarded-For", x);
        }
        async move { req.send().await.expect("GET").text().await.expect("text") }
    };
    // The test talks from 127.0.0.1, a trusted proxy by default, so its X-Forwarded-For is believed.
    assert!(info(None).await.contains("Priority: 40"));
    assert!(info(Some("10.1.2.3")).await.contains("Priority: 5"));
    assert!(info(Some("192.0.2.1")).await.contains("Priority: 40"));
    assert!(info(None).await.starts_with("StoreDir: /nix/store\n"));

    let netrc = dir.path().join("netrc-range");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let to = format!("{url}?compression=none");
    nix_ok(&[
        "copy",
        "--to",
        &to,
        "--option",
        "netrc-file",
        netrc.to_str().expect("path"),
        &paths[0],
    ]);
    let hash = &Path::new(&paths[0]).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let narinfo = http
        .get(format!("{url}/{hash}.narinfo"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
    let whole = http
        .get(format!("{url}/{nar_url}"))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(
        whole.to_vec(),
        nix_store(&["--dump", &paths[0]]).stdout,
        "the NAR is served byte for byte"
    );
    let part = http
        .get(format!("{url}/{nar_url}"))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .expect("GET");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers().get("content-range").and_then(|v| v.to_str().ok()),
        Some(format!("bytes 100-199/{}", whole.len()).as_str())
    );
    assert_eq!(part.bytes().await.expect("bytes").to_vec(), whole[100..200].to_vec());
    let bad = http
        .get(format!("{url}/{nar_url}"))
        .header("Range", format!("bytes={}-", whole.len()))
        .send()
        .await;
    assert_eq!(bad.expect("GET").status(), 416);
    let head = http.head(format!("{url}/{nar_url}")).send().await.expect("HEAD");
    assert_eq!(
        head.headers().get("content-length").and_then(|v| v.to_str().ok()),
        Some(whole.len().to_string().as_str())
    );
    server.stop();
}
