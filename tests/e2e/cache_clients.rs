//! What Nix tools ask a cache for besides substitution, with the real `nix` as the client: `nix log --store
//! <cache>` reads a derivation's build log (`log/<drv>`), and a path's NAR listing (`<hash>.ls`) is the one Nix
//! itself writes with `write-nar-listing`, for pushes by `nix copy` and by a worker alike.

use crate::cache::{Cache, private_cache, worker_push};
use crate::harness::Server;
use crate::nix::{build_closure, nix, nix_ok};
use crate::pipeline::{evaluate, org_with_project, script_repo, start_worker, wait_for_completed};
use serde_json::Value;
use std::path::Path;

fn hash_part(path: &str) -> &str {
    &Path::new(path).file_name().and_then(|n| n.to_str()).expect("name")[..32]
}

/// The `.ls` listing Nix itself writes for `path` into a `file://` cache.
fn listing_by_nix(dir: &Path, path: &str) -> String {
    let to = format!("file://{}?compression=none&write-nar-listing=true", dir.display());
    nix_ok(&["copy", "--to", &to, path]);
    std::fs::read_to_string(dir.join(format!("{}.ls", hash_part(path)))).expect("Nix wrote a listing")
}

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(key) = key {
        req = req.basic_auth("anyone", Some(key));
    }
    let resp = req.send().await.expect("GET");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

/// `nix store ls -R` of `path` in the cache, with the cache's netrc.
fn ls_in_cache(cache: &Cache, path: &str, json: bool) -> std::process::Output {
    let mut args = vec![
        "store",
        "ls",
        "--store",
        &cache.url,
        "--option",
        "netrc-file",
        &cache.netrc,
        "-R",
    ];
    if json {
        args.push("--json");
    }
    args.push(path);
    nix(&args)
}

#[tokio::test]
async fn a_pushed_paths_listing_is_the_one_nix_writes_and_nix_store_ls_reads_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copied = build_closure(dir.path(), "ls-copy", 1);
    let imported = build_closure(dir.path(), "ls-import", 1);
    let cache = private_cache(dir.path(), &[]).await;
    // One closure pushed by `nix copy` (PUT nar + narinfo), the other as a worker pushes (an export stream).
    let to = format!("{}?compression=zstd", cache.url);
    let mut push = vec!["copy", "--to", &to, "--option", "netrc-file", &cache.netrc];
    push.extend(copied.iter().map(String::as_str));
    nix_ok(&push);
    assert_eq!(worker_push(&cache, &imported).await, imported.len() as u64);

    for (n, path) in [&copied[0], &copied[1], &imported[0], &imported[1]]
        .into_iter()
        .enumerate()
    {
        let expected = listing_by_nix(&dir.path().join(format!("reference-{n}")), path);
        let url = format!("{}/{}.ls", cache.url, hash_part(path));
        assert_eq!(get(&url, Some(&cache.key)).await, (200, expected.clone()), "{path}");
        // The cache's read rules: no credentials, no listing.
        assert_eq!(get(&url, None).await.0, 401, "{path}");
    }

    // `nix store ls` lists a pushed tree from the cache: files, executables, symlinks.
    let base = &copied[0];
    let out = ls_in_cache(&cache, base, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    for entry in [
        "./bin/hello",
        "./share/greeting",
        "./share/empty",
        "./share/big",
        "./link",
    ] {
        assert!(listed.lines().any(|l| l == entry), "{entry} in {listed}");
    }
    let out = ls_in_cache(&cache, base, true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tree: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(tree["entries"]["bin"]["entries"]["hello"]["executable"], true, "{tree}");
    assert_eq!(tree["entries"]["link"]["target"], "../share/greeting", "{tree}");
    assert_eq!(tree["entries"]["share"]["entries"]["big"]["size"], 1 << 20, "{tree}");

    // A path pushed before listings were written has none: 404, and Nix reads the NAR instead.
    let narinfo = get(&format!("{}/{}.narinfo", cache.url, hash_part(base)), Some(&cache.key))
        .await
        .1;
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
    let caches = std::fs::read_dir(dir.path().join("nars")).expect("the NAR store");
    let mut removed = 0;
    for c in caches {
        let listing = c.expect("entry").path().join(format!("{nar_url}.ls"));
        if listing.exists() {
            std::fs::remove_file(listing).expect("rm");
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "the listing lives next to its NAR");
    let url = format!("{}/{}.ls", cache.url, hash_part(base));
    assert_eq!(get(&url, Some(&cache.key)).await.0, 404);
    let out = ls_in_cache(&cache, base, false);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "./bin/hello"));

    // A client that writes listings itself (`write-nar-listing=true`) may push them; the server keeps its own.
    let resp = reqwest::Client::new()
        .put(&url)
        .basic_auth("anyone", Some(&cache.key))
        .body("{\"version\":1,\"root\":{\"type\":\"symlink\",\"target\":\"forged\"}}")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 204);
    assert_eq!(get(&url, Some(&cache.key)).await.0, 404);
    cache.server.stop();
}

#[tokio::test]
async fn nix_log_prints_a_built_derivations_log_from_its_organizations_private_push_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = script_repo(
        dir.path(),
        "log-repo",
        "greeter",
        "echo the greeter was built here; echo ok > $out",
    );
    let server = Server::start(dir.path(), &[]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let key = c.token.clone().expect("key");
    let worker = start_worker(&c, dir.path(), &server.url, "builder").await;
    let id = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    let drv = done["builds"][0]["drv_path"].as_str().expect("drv").to_owned();
    let cache_url = format!("{}/cache/main", server.url);
    let netrc = dir.path().join("netrc-log");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let netrc = netrc.to_str().expect("path");

    let out = nix(&["log", "--store", &cache_url, "--option", "netrc-file", netrc, &drv]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("the greeter was built here"),
        "{printed}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        worker.log_text()
    );

    // By an output path too: Nix finds the derivation in the output's narinfo (`Deriver:`).
    let shown: Value = serde_json::from_str(&nix_ok(&["show-derivation", &drv])).expect("JSON");
    let output = shown[&drv]["outputs"]["out"]["path"].as_str().expect("out").to_owned();
    let out = nix(&["log", "--store", &cache_url, "--option", "netrc-file", netrc, &output]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the greeter was built here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // It came from the cache: without credentials the same command gets nothing.
    let out = nix(&["log", "--store", &cache_url, &drv]);
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("the greeter"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Over HTTP: plain text; the cache's read rules apply, and a derivation nobody built has no log.
    let drv_name = Path::new(&drv).file_name().and_then(|n| n.to_str()).expect("name");
    let url = format!("{cache_url}/log/{drv_name}");
    let (status, body) = get(&url, Some(&key)).await;
    assert_eq!(status, 200);
    assert!(body.contains("the greeter was built here"), "{body}");
    assert_eq!(get(&url, None).await.0, 401, "a private cache asks for credentials");
    let mut outsider = crate::harness::Client::new(&server);
    let outsider_key = outsider.register_with_key("outsider").await;
    let (status, as_outsider) = get(&url, Some(&outsider_key)).await;
    let (_, missing_cache) = get(
        &format!("{}/cache/nosuchcache/log/{drv_name}", server.url),
        Some(&outsider_key),
    )
    .await;
    assert_eq!(status, 404, "{as_outsider}");
    assert_eq!(
        as_outsider.replace("main", "nosuchcache"),
        missing_cache,
        "an outsider learns nothing a missing cache would not tell"
    );
    let unknown = format!("{cache_url}/log/{}-unknown.drv", "0".repeat(32));
    assert_eq!(get(&unknown, Some(&key)).await.0, 404);
    let out = nix(&[
        "log",
        "--store",
        &cache_url,
        "--option",
        "netrc-file",
        netrc,
        &format!("/nix/store/{}-unknown.drv", "0".repeat(32)),
    ]);
    assert!(!out.status.success());
    let resp = reqwest::Client::new()
        .put(&url)
        .basic_auth("anyone", Some(&key))
        .body("forged log")
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 405);
    worker.kill();
    server.stop();
}
