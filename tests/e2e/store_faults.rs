//! Faults under the binary cache's NAR store (issue #18, the object store, disk and crash half): an S3 server
//! that disappears or stalls during a push or a download, a disk that fills during a push, and the server
//! killed with SIGKILL in the middle of an import. Each test says what it did and what it found; the
//! README's "What survives what" table sums them up.
//!
//! The S3 tests start their own moto process (`GRADIENT_TEST_MOTO_SERVER`, which `scripts/test` sets to the
//! venv's `moto_server`) so they can kill, stop and restart it while the suite's shared one stays up.

use crate::cache::{Cache, private_cache};
use crate::harness::{Server, free_port};
use crate::nix::{NIX_CONFIG, build_closure, nix, nix_store, substitute};
use crate::pipeline::{evaluate, org_with_project, script_repo, start_worker, wait_for_completed};
use gradient_cache_http::HttpCacheClient;
use gradient_domain::ports::cache_client::CacheClient;
use gradient_domain::proto::PushTarget;
use gradient_nix_cli::NixCli;
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A moto S3 server of this test's own, on a port of its own.
struct Moto {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn binary() -> String {
        std::env::var("GRADIENT_TEST_MOTO_SERVER").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/gradient-test/venv/bin/moto_server")
        })
    }

    async fn start(dir: &Path) -> Moto {
        let mut moto = Moto {
            child: None,
            port: free_port(),
            log: dir.join("moto.log"),
        };
        moto.spawn().await;
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let bin = Self::binary();
        assert!(
            Path::new(&bin).exists(),
            "{bin} is missing: set GRADIENT_TEST_MOTO_SERVER to moto's `moto_server` (scripts/test does)"
        );
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("moto log");
        let child = crate::harness::tied(bin)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .expect("moto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/", self.endpoint())).await.is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("moto runs").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} moto");
    }

    /// The S3 server disappears: killed, its connections reset, nothing listening on its port.
    fn kill(&mut self) {
        self.signal("KILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Started again on the same port. moto keeps nothing on disk: the bucket is created again, empty.
    async fn restart(&mut self, bucket: &str) {
        self.spawn().await;
        self.create_bucket(bucket).await;
    }

    async fn create_bucket(&self, bucket: &str) {
        let resp = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await
            .expect("create bucket");
        assert!(resp.status().is_success(), "creating the bucket: {}", resp.status());
    }

    /// Multipart uploads in progress in `bucket`.
    async fn uploads_in_progress(&self, bucket: &str) -> usize {
        let Ok(resp) = reqwest::get(format!("{}/{bucket}?uploads", self.endpoint())).await else {
            return 0;
        };
        resp.text().await.unwrap_or_default().matches("<UploadId>").count()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process must be continued to die of SIGTERM; SIGKILL needs neither.
            crate::harness::kill_group(&mut child);
        }
    }
}

/// The server's variables for a NAR store in `bucket` on `moto`, with downloads' store waits of 2 s.
fn s3_vars(dir: &Path, moto: &Moto, bucket: &str) -> Vec<(String, String)> {
    let secret = dir.join("s3-secret");
    std::fs::write(&secret, "test-secret\n").expect("write");
    vec![
        ("GRADIENT_NAR_STORE".into(), format!("s3://{bucket}/gradient")),
        ("GRADIENT_S3_ENDPOINT".into(), moto.endpoint()),
        ("GRADIENT_S3_ACCESS_KEY_ID".into(), "test".into()),
        (
            "GRADIENT_S3_SECRET_ACCESS_KEY_FILE".into(),
            secret.to_str().expect("path").into(),
        ),
        ("RUST_S3_SKIP_LOCATION_CONSTRAINT".into(), "true".into()),
        ("GRADIENT_NAR_STORAGE_OPEN_TIMEOUT_SECS".into(), "2".into()),
    ]
}

fn borrowed(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn target(cache: &Cache) -> PushTarget {
    PushTarget {
        cache_url: cache.url.clone(),
        token: cache.key.clone(),
    }
}

/// One push as a worker makes it (the closure, one question, export streams), tried once.
async fn push_once(cache: &Cache, paths: &[String]) -> Result<u64, String> {
    let nix = NixCli::new().env("NIX_CONFIG", NIX_CONFIG);
    let client = HttpCacheClient::new().expect("client");
    gradient_domain::push::push(&nix, &client, &target(cache), paths)
        .await
        .map_err(|e| e.to_string())
}

/// Of `candidates`, the paths the cache says it holds (the complement of what `missing` answers).
async fn listed(cache: &Cache, candidates: &[String]) -> Vec<String> {
    let client = HttpCacheClient::new().expect("client");
    let missing = client.missing(&target(cache), candidates).await.expect("missing");
    candidates.iter().filter(|p| !missing.contains(p)).cloned().collect()
}

/// Substitutes `paths` from the cache into a fresh store with signatures required and verifies each.
fn verifies(cache: &Cache, fresh: &Path, paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    let fresh = fresh.to_str().expect("path");
    let wanted: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = substitute(&cache.url, fresh, Some(&cache.netrc), &cache.public_key, &wanted);
    assert!(
        out.status.success(),
        "nix copy --from the cache with require-sigs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in paths {
        let out = nix_store(&["--store", fresh, "--verify-path", p]);
        assert!(
            out.status.success(),
            "{p} does not verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn hash_part(path: &str) -> &str {
    &Path::new(path).file_name().and_then(|n| n.to_str()).expect("name")[..32]
}

async fn narinfo_status(cache: &Cache, path: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/{}.narinfo", cache.url, hash_part(path)))
        .basic_auth("t", Some(&cache.key))
        .send()
        .await
        .expect("GET narinfo")
        .status()
        .as_u16()
}

/// An import of `nix-store --export` of `paths` sent by hand: the status, `Retry-After` and body.
async fn raw_import(cache: &Cache, paths: &[String]) -> (u16, Option<String>, String) {
    let mut args = vec!["--export"];
    args.extend(paths.iter().map(String::as_str));
    let export = nix_store(&args);
    assert!(export.status.success());
    let resp = reqwest::Client::new()
        .post(format!("{}/import", cache.url))
        .bearer_auth(&cache.key)
        .body(export.stdout)
        .send()
        .await
        .expect("POST import");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, resp.text().await.unwrap_or_default())
}

/// Files below `dir/.tmp` (an uploading NAR store's temporary files).
fn temporary_files(nars: &Path) -> Vec<String> {
    std::fs::read_dir(nars.join(".tmp"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_s3_server_that_disappears_mid_push_fails_it_clearly_and_the_push_succeeds_on_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut moto = Moto::start(dir.path()).await;
    let bucket = format!("gradient-faults-{}", uuid::Uuid::new_v4().simple());
    moto.create_bucket(&bucket).await;
    let vars = s3_vars(dir.path(), &moto, &bucket);
    let cache = private_cache(dir.path(), &borrowed(&vars)).await;
    let paths = build_closure(dir.path(), "s3-outage", 120);

    // The push starts; once S3 holds a multipart upload of the big NAR, moto is killed.
    let pushing = {
        let (url, key) = (cache.url.clone(), cache.key.clone());
        let paths = paths.clone();
        tokio::spawn(async move {
            let nix = NixCli::new().env("NIX_CONFIG", NIX_CONFIG);
            let client = HttpCacheClient::new().expect("client");
            let target = PushTarget {
                cache_url: url,
                token: key,
            };
            gradient_domain::push::push(&nix, &client, &target, &paths)
                .await
                .map_err(|e| e.to_string())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.uploads_in_progress(&bucket).await == 0 {
        assert!(
            Instant::now() < deadline && !pushing.is_finished(),
            "no multipart upload was seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    moto.kill();
    println!("moto killed while the server was sending a multipart upload of the 120 MiB NAR");
    let failed = pushing.await.expect("task");
    println!("the push answered: {failed:?}");
    let failed = failed.expect_err("the push fails");
    assert!(
        failed.contains("503") && failed.contains("storage_unavailable"),
        "a clear error: {failed}"
    );

    // While S3 is gone: 503 storage_unavailable with Retry-After, nothing recorded.
    let (status, retry, body) = raw_import(&cache, &paths).await;
    println!(
        "an import while S3 is gone: {status}, Retry-After {retry:?}, {}",
        body.trim()
    );
    assert_eq!(status, 503);
    assert!(retry.is_some() && body.contains("storage_unavailable"), "{body}");
    assert!(
        listed(&cache, &paths).await.is_empty(),
        "nothing half-written is listed"
    );
    for p in &paths {
        assert_eq!(narinfo_status(&cache, p).await, 404, "no narinfo for {p}");
    }
    println!("no path of the closure is listed, and none has a narinfo");

    // moto back (empty, as moto keeps nothing): the push, tried again as a worker does, succeeds, and
    // everything listed substitutes.
    moto.restart(&bucket).await;
    let imported = {
        let nix = NixCli::new().env("NIX_CONFIG", NIX_CONFIG);
        let client = HttpCacheClient::new().expect("client");
        gradient_domain::push::push_retrying(&nix, &client, &target(&cache), &paths, |delay, e| {
            println!("the push again failed ({e}); trying again in {}s", delay.as_secs());
            tokio::time::sleep(delay)
        })
        .await
        .expect("the push again")
    };
    println!("after moto restarted, the push again imported {imported} paths");
    assert_eq!(imported, paths.len() as u64);
    let held = listed(&cache, &paths).await;
    assert_eq!(held, paths);
    verifies(&cache, &dir.path().join("fresh"), &held);
    assert_eq!(
        moto.uploads_in_progress(&bucket).await,
        0,
        "no multipart upload is left"
    );
    println!(
        "all {} listed paths substitute with require-sigs; no multipart upload is left",
        held.len()
    );

    // A stalled S3 (moto stopped, SIGSTOP): a download is answered 503 after narStorageOpenTimeoutSecs (2 s)
    // instead of hanging; one already streaming is cut off after 2 s without a byte from the store.
    let narinfo = reqwest::Client::new()
        .get(format!("{}/{}.narinfo", cache.url, hash_part(&paths[0])))
        .basic_auth("t", Some(&cache.key))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
    let nar_size: u64 = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("FileSize: "))
        .and_then(|s| s.parse().ok())
        .expect("FileSize");
    let http = reqwest::Client::new();
    let get_nar = || {
        http.get(format!("{}/{nar_url}", cache.url))
            .basic_auth("t", Some(&cache.key))
            .send()
    };
    moto.signal("STOP");
    let started = Instant::now();
    let resp = get_nar().await.expect("GET nar");
    let waited = started.elapsed();
    println!(
        "a NAR download while moto is stopped: {} after {:.1}s",
        resp.status(),
        waited.as_secs_f64()
    );
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    moto.signal("CONT");

    let mut resp = get_nar().await.expect("GET nar");
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("a first piece").map_or(0, |c| c.len());
    moto.signal("STOP");
    let started = Instant::now();
    let mut received = first as u64;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await {
            Ok(Ok(Some(c))) => received += c.len() as u64,
            Ok(Ok(None)) => break "ended",
            Ok(Err(_)) => break "failed",
            Err(_) => break "still hanging after 60 s",
        }
    };
    println!(
        "a download that was streaming when moto stopped: {ended} after {:.1}s with {received} of {nar_size} bytes",
        started.elapsed().as_secs_f64()
    );
    assert!(received < nar_size, "the download could not be whole");
    assert_ne!(ended, "still hanging after 60 s");
    moto.signal("CONT");
    verifies(&cache, &dir.path().join("fresh-after-stall"), &held);
    println!("moto continued: the closure substitutes again");
    cache.server.stop();
}

#[tokio::test]
async fn a_workers_push_that_meets_a_stalled_s3_is_retried_without_building_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(dir.path()).await;
    let bucket = format!("gradient-faults-{}", uuid::Uuid::new_v4().simple());
    moto.create_bucket(&bucket).await;
    let vars = s3_vars(dir.path(), &moto, &bucket);
    // The build says when it runs, waits for the test to stall S3, then writes 20 MiB.
    let flag = dir.path().join("s3-stopped");
    let script = format!(
        "echo building once; while [ ! -e {} ]; do /usr/bin/sleep 0.2; done; /usr/bin/head -c 20M /dev/urandom > $out",
        flag.display()
    );
    let (repository, commit) = script_repo(dir.path(), "stall-repo", "stall", &script);
    let server = Server::start(dir.path(), &borrowed(&vars)).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker(&c, dir.path(), &server.url, "w").await;
    let id = evaluate(&c, &commit).await;
    worker.wait_for_log("running build job").await;
    moto.signal("STOP");
    std::fs::write(&flag, b"").expect("flag");
    println!("moto stopped (SIGSTOP) while the build ran; its output goes to S3 next");

    // The server's S3 request times out (60 s), the import fails 503, and the worker tries again.
    let deadline = Instant::now() + Duration::from_secs(150);
    while !worker.log_text().contains("trying again in") {
        assert!(
            Instant::now() < deadline,
            "the worker never retried its push:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let line = worker
        .log_text()
        .lines()
        .find(|l| l.contains("trying again in"))
        .unwrap_or_default()
        .to_owned();
    println!("the worker: {line}");
    assert!(
        line.contains("storage_unavailable"),
        "{line}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    moto.signal("CONT");
    println!("moto continued");

    let done = wait_for_completed(&c, &server, &id, &worker).await;
    let builds = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
    let build = builds.as_array().and_then(|b| b.first()).expect("a build").clone();
    println!(
        "the evaluation ended {} with its build {}",
        done["evaluation"]["status"], build["status"]
    );
    assert_eq!(build["status"], "Completed");
    let log = worker.log_text();
    assert_eq!(
        log.matches("running build job").count(),
        1,
        "the build ran once:\n{log}"
    );
    // The output is in the cache, signed.
    let key = c
        .ok(Method::GET, "/caches/main/public-key", None)
        .await
        .as_str()
        .expect("key")
        .to_owned();
    let detail = c
        .ok(
            Method::GET,
            &format!("/builds/{}", build["id"].as_str().expect("id")),
            None,
        )
        .await;
    let out_path = detail["derivation"]["outputs"]["out"]
        .as_str()
        .expect("the output path")
        .to_owned();
    let netrc = dir.path().join("netrc-ci");
    std::fs::write(
        &netrc,
        format!(
            "machine 127.0.0.1 login t password {}\n",
            c.token.clone().expect("token")
        ),
    )
    .expect("netrc");
    let fresh = dir.path().join("fresh");
    let got = substitute(
        &format!("{}/cache/main", server.url),
        fresh.to_str().expect("path"),
        Some(netrc.to_str().expect("path")),
        &key,
        &[&out_path],
    );
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    println!("the build ran once and its output {out_path} substitutes with require-sigs");
    worker.kill();
    server.stop();
}

/// A tmpfs of `size` mounted on `at`, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallDisk(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_the_push_with_507_keeps_serving_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nars = dir.path().join("nars");
    let _disk = match SmallDisk::mount(&nars, "64m") {
        Ok(disk) => disk,
        Err(why) => {
            println!("SKIPPED: cannot mount a 64 MiB tmpfs for the NAR store here ({why})");
            return;
        }
    };
    println!("the NAR store is a 64 MiB tmpfs at {}", nars.display());
    let store = format!("file://{}", nars.display());
    let cache = private_cache(dir.path(), &[("GRADIENT_NAR_STORE", store.as_str())]).await;
    let small = build_closure(dir.path(), "disk-small", 5);
    assert_eq!(push_once(&cache, &small).await, Ok(small.len() as u64));
    println!("a 5 MiB closure was pushed");

    // 100 MiB of random bytes do not fit: a worker's import and `nix copy --to` are both refused.
    let big = build_closure(dir.path(), "disk-big", 100);
    let (status, retry, body) = raw_import(&cache, &big).await;
    println!(
        "an import of a 100 MiB closure: {status}, Retry-After {retry:?}, {}",
        body.trim()
    );
    assert_eq!(status, 507);
    assert!(body.contains("insufficient_storage"), "{body}");
    let failed = push_once(&cache, &big).await.expect_err("the worker's push fails");
    assert!(
        failed.contains("507") && failed.contains("insufficient_storage"),
        "{failed}"
    );
    let to = format!("{}?compression=none", cache.url);
    let copy = nix(&["copy", "--to", &to, "--option", "netrc-file", &cache.netrc, &big[0]]);
    let stderr = String::from_utf8_lossy(&copy.stderr);
    // Nix 2.8 tries a 5xx upload again (with a body it already consumed, refused as not a NAR): the 507 is
    // what its first attempt met.
    println!(
        "nix copy --to of the big path: {}, {}",
        copy.status,
        stderr.lines().find(|l| l.contains("507")).unwrap_or_default().trim()
    );
    assert!(!copy.status.success());
    assert!(stderr.contains("507"), "{stderr}");

    let leftovers = temporary_files(&nars);
    println!("temporary files left in the NAR store: {leftovers:?}");
    assert!(leftovers.is_empty());
    for p in &big {
        assert_eq!(narinfo_status(&cache, p).await, 404, "no narinfo for {p}");
    }
    let mut candidates = small.clone();
    candidates.extend(big.iter().cloned());
    let held = listed(&cache, &candidates).await;
    assert_eq!(held, small, "the cache lists exactly the small closure");
    verifies(&cache, &dir.path().join("fresh"), &held);
    println!("the cache lists only the small closure, and it substitutes with require-sigs");
    cache.server.stop();
}

/// SIGKILLs the server once its NAR store holds a temporary file (an upload under way): answers their names.
/// `pusher_done` says whether the push ended already (then the test could never see one).
async fn kill_mid_upload(server: &Server, nars: &Path, mut pusher_done: impl FnMut() -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let files = temporary_files(nars);
        if !files.is_empty() {
            server.signal("KILL");
            return files;
        }
        assert!(
            Instant::now() < deadline && !pusher_done(),
            "no upload was seen under way"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_server_killed_mid_import_leaves_no_partial_path_and_no_temporary_file_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nars = dir.path().join("nars");
    let mut cache = private_cache(dir.path(), &[]).await;
    // The restarts below reuse the port the server was started on.
    let port: u16 = cache
        .server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // What the cache holds before: it must come through both crashes whole.
    let before = build_closure(dir.path(), "kill-before", 2);
    assert_eq!(push_once(&cache, &before).await, Ok(before.len() as u64));
    let paths = build_closure(dir.path(), "kill-import", 150);
    let copied = build_closure(dir.path(), "kill-copy", 150);
    let mut candidates = before.clone();
    candidates.extend(paths.iter().cloned());
    candidates.extend(copied.iter().cloned());

    // 1. A worker's import (an export stream), killed while the big NAR is being written.
    let pushing = {
        let (url, key, paths) = (cache.url.clone(), cache.key.clone(), paths.clone());
        tokio::spawn(async move {
            let nix = NixCli::new().env("NIX_CONFIG", NIX_CONFIG);
            let client = HttpCacheClient::new().expect("client");
            let target = PushTarget {
                cache_url: url,
                token: key,
            };
            gradient_domain::push::push(&nix, &client, &target, &paths)
                .await
                .is_ok()
        })
    };
    let seen = kill_mid_upload(&cache.server, &nars, || pushing.is_finished()).await;
    println!("server SIGKILLed during an import, with the temporary file(s) {seen:?} being written");
    assert!(!pushing.await.expect("task"), "the interrupted push failed");
    cache.server = restart(dir.path(), port, cache.server).await;
    let left = temporary_files(&nars);
    println!("after the restart, temporary files: {left:?}");
    assert!(left.is_empty(), "the start-up sweep removed them");
    let held = listed(&cache, &candidates).await;
    assert_eq!(
        held, before,
        "the cache lists what it held before, and nothing of the interrupted push"
    );
    verifies(&cache, &dir.path().join("fresh-1"), &held);
    println!(
        "listed after the crash: {} path(s), all substitute with require-sigs",
        held.len()
    );

    // 2. `nix copy --to` (a NAR PUT, then its narinfo), killed while the big NAR is being written.
    let to = format!("{}?compression=zstd", cache.url);
    // One attempt per request: Nix would otherwise try the killed server again for a while.
    let mut copy = Command::new("nix")
        .args(["copy", "--to", &to, "--option", "netrc-file", &cache.netrc])
        .args(["--option", "download-attempts", "1"])
        .args(&copied)
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nix copy");
    let seen = kill_mid_upload(&cache.server, &nars, || copy.try_wait().expect("wait").is_some()).await;
    println!("server SIGKILLed during `nix copy --to`, with {seen:?} being written");
    assert!(
        !copy.wait().expect("nix copy ends").success(),
        "the interrupted copy failed"
    );
    cache.server = restart(dir.path(), port, cache.server).await;
    let left = temporary_files(&nars);
    println!("after the restart, temporary files: {left:?}");
    assert!(left.is_empty());
    let held = listed(&cache, &candidates).await;
    assert_eq!(
        held, before,
        "the cache lists what it held before, and nothing of the interrupted copy"
    );
    verifies(&cache, &dir.path().join("fresh-2"), &held);
    println!(
        "listed after the crash: {} path(s), all substitute with require-sigs",
        held.len()
    );

    // Both pushes again: everything arrives whole.
    assert!(push_once(&cache, &paths).await.is_ok());
    let copy = nix(&[
        "copy",
        "--to",
        &to,
        "--option",
        "netrc-file",
        &cache.netrc,
        &copied[copied.len() - 1],
    ]);
    assert!(copy.status.success(), "{}", String::from_utf8_lossy(&copy.stderr));
    let held = listed(&cache, &candidates).await;
    assert_eq!(
        held.len(),
        candidates.len(),
        "everything is held after the pushes again"
    );
    verifies(&cache, &dir.path().join("fresh-3"), &held);
    assert!(temporary_files(&nars).is_empty());
    println!(
        "pushed again: all {} paths substitute with require-sigs, no temporary file",
        held.len()
    );
    cache.server.stop();
}

/// Restarts a killed server on its port with the same base directory.
async fn restart(dir: &Path, port: u16, killed: Server) -> Server {
    drop(killed);
    Server::start_on(dir, port, &[]).await
}
