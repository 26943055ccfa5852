//! Faults lose nothing (issue #18), the worker link's and the healing half: a PostgreSQL of the test's own
//! stopped and started while a batch builds and its reports arrive, and a worker whose packets are dropped by a
//! TCP proxy the test controls. Each test prints what it did and what it found.

use crate::harness::{Client, Server, Worker, free_port};
use crate::pipeline::{commit_flake, evaluate, org_with_project, start_worker_with, wait_for_end};
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of this test alone (its own data directory, socket directory and port), so stopping it
/// disturbs no other test. Run as the `postgres` user when the test runs as root (initdb refuses root).
struct PrivatePostgres {
    root: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> Self {
        let root = std::env::temp_dir().join(format!("gradient-faults-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("mkdir");
        let uid = Command::new("id").arg("-u").output().expect("id runs");
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:postgres", root.to_str().expect("path")])
                .status()
                .expect("chown runs");
            assert!(chown.success());
        }
        let pg = Self {
            root,
            port: free_port(),
            as_postgres,
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        pg.up();
        let out = Command::new("psql")
            .args([
                "-h",
                pg.socket_dir(),
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
            ])
            .args(["-c", "CREATE DATABASE gradient"])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn data(&self) -> String {
        self.root.join("data").to_str().expect("path").to_owned()
    }

    fn socket_dir(&self) -> &str {
        self.root.to_str().expect("path")
    }

    fn url(&self) -> String {
        format!(
            "postgres:///gradient?host={}&port={}&user=postgres",
            self.socket_dir(),
            self.port
        )
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let bin = format!("{PG_BIN}/{tool}");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &bin]);
            c
        } else {
            Command::new(&bin)
        };
        cmd.args(args).current_dir("/").output().expect("postgres tool runs")
    }

    fn up(&self) {
        let log = self.root.join("postgres.log");
        let options = format!("-p {} -k {} -c listen_addresses=''", self.port, self.socket_dir());
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().expect("path"),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops it as an operator's `systemctl stop postgresql` would (fast: sessions are cut).
    fn down(&self) {
        let out = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A flake of `n` independent packages `p0 … p{n-1}`, each taking `secs` seconds to build.
fn batch_repo(dir: &Path, n: usize, secs: u32) -> (String, String) {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let packages: String = (0..n)
        .map(|i| {
            format!(
                "      p{i} = derivation {{ name = \"p{i}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; nonce = \"{nonce}\"; args = [ \"-c\" \"echo building p{i}; /usr/bin/sleep {secs}; echo p{i} > $out\" ]; }};\n"
            )
        })
        .collect();
    let flake =
        format!("{{\n  outputs = {{ self }}: {{\n    packages.x86_64-linux = {{\n{packages}    }};\n  }};\n}}\n");
    commit_flake(dir, "batch", &flake)
}

/// The evaluation's builds as the API lists them.
async fn builds(c: &Client, id: &str) -> Vec<Value> {
    c.ok(Method::GET, &format!("/evals/{id}/builds"), None)
        .await
        .as_array()
        .expect("builds")
        .clone()
}

fn statuses(builds: &[Value]) -> Vec<String> {
    builds
        .iter()
        .map(|b| b["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// How many times each build reached `status`, by its transitions.
fn times_reached(build: &Value, status: &str) -> usize {
    build["transitions"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["status"] == status).count())
        .unwrap_or(0)
}

async fn health(server: &Server) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/health", server.url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("health answers");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls the health check until it answers `want`; answers its body and how long it took.
async fn health_becomes(server: &Server, want: u16, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let (status, body) = health(server).await;
        if status == want {
            return (body, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "health still answers {status} {body} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn postgresql_restarted_and_stopped_mid_batch_loses_no_report_and_health_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = PrivatePostgres::start();
    let n = 24;
    let (repository, commit) = batch_repo(dir.path(), n, 1);
    let url = pg.url();
    let server = Server::start(dir.path(), &[("GRADIENT_DATABASE_URL", url.as_str())]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let worker = start_worker_with(
        &c,
        dir.path(),
        &server.url,
        "w",
        &[("GRADIENT_MAX_CONCURRENT_BUILDS", "4")],
    )
    .await;
    let (status, _) = health(&server).await;
    assert_eq!(status, 200);

    let id = evaluate(&c, &commit).await;
    // A restart while the evaluation's reports arrive.
    worker.wait_for_log("running evaluation job").await;
    pg.down();
    pg.up();
    println!("restarted PostgreSQL while the evaluation ran");

    // A 5 s stop while the batch builds and its outcomes arrive.
    let deadline = Instant::now() + Duration::from_secs(120);
    let before = loop {
        let (status, _) = c.call(Method::GET, &format!("/evals/{id}/builds"), None).await;
        if status == 200 {
            let b = builds(&c, &id).await;
            let done = statuses(&b).iter().filter(|s| *s == "Completed").count();
            if done > 0 {
                break done;
            }
        }
        assert!(Instant::now() < deadline, "no build completed:\n{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pg.down();
    let stopped = Instant::now();
    println!("stopped PostgreSQL with {before} of {n} builds recorded Completed");
    let (body, took) = health_becomes(&server, 503, Duration::from_secs(10)).await;
    println!("health answered 503 after {:.1} s: {body}", took.as_secs_f64());
    assert_eq!(body["code"], "database_unavailable", "{body}");
    assert_eq!(body["error"], true, "{body}");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    pg.up();
    println!(
        "started PostgreSQL again after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    let (body, took) = health_becomes(&server, 200, Duration::from_secs(40)).await;
    println!("health answered 200 again after {:.1} s: {body}", took.as_secs_f64());

    let done = wait_for_end(&c, &server, &id).await;
    let server_log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let worker_log = worker.log_text();
    let b = builds(&c, &id).await;
    let completed = statuses(&b).iter().filter(|s| *s == "Completed").count();
    let waited = count(&server_log, "retrying it until the database answers");
    let paused = count(&server_log, "paused: the database is unavailable");
    let resumed = count(&server_log, "resumed: the database answers again");
    let dispatch_errors = count(&server_log, "dispatching failed");
    let push_retries = count(&worker_log, "the push failed");
    let ran = count(&worker_log, "running build job");
    println!(
        "evaluation {}; {completed}/{} builds Completed; the server held {waited} report(s) until the database \
         answered; loops paused {paused} time(s) and resumed {resumed} time(s) ({dispatch_errors} dispatch error \
         line(s)); the worker ran {ran} build job(s) and retried {push_retries} push(es)",
        done["evaluation"]["status"],
        b.len()
    );
    assert_eq!(
        done["evaluation"]["status"], "Completed",
        "{done}\n{worker_log}\n{server_log}"
    );
    assert_eq!(b.len(), n, "{b:?}");
    assert_eq!(completed, n, "{b:?}");
    for build in &b {
        assert_eq!(times_reached(build, "Completed"), 1, "recorded once: {build}");
        assert_eq!(times_reached(build, "Building"), 1, "built once: {build}");
    }
    assert_eq!(ran, n, "each build ran once:\n{worker_log}");
    assert_eq!(dispatch_errors, 0, "no error per tick:\n{server_log}");
    assert!(resumed >= 1, "the loops said they resumed:\n{server_log}");
    worker.kill();
    server.stop();
}

/// A TCP proxy in front of the server that the test can switch to dropping every byte, both ways, without
/// closing anything (as a network dropping packets does); switched back, it forwards again.
struct Proxy {
    port: u16,
    dropping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let dropping = Arc::new(AtomicBool::new(false));
        let flag = dropping.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, flag.clone()), pump(ro, wi, flag));
                });
            }
        });
        Self { port, dropping, task }
    }

    fn drop_packets(&self, on: bool) {
        self.dropping.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, dropping what it reads while `dropping`; an end read while dropping is not passed on
/// either (no FIN crosses a network that drops packets): the connection is held open, silent.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if dropping.load(Ordering::SeqCst) {
            if n == 0 {
                // Held open until the proxy is dropped with the test.
                std::future::pending::<()>().await;
            }
            continue;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}

#[tokio::test]
async fn a_worker_whose_packets_are_dropped_is_lost_its_builds_requeued_once_and_its_offline_work_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 4;
    let (repository, commit) = batch_repo(dir.path(), n, 8);
    let server = Server::start(
        dir.path(),
        &[
            ("GRADIENT_WORKER_HEARTBEAT_SECS", "1"),
            ("GRADIENT_WORKER_LOST_AFTER_SECS", "4"),
        ],
    )
    .await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let port: u16 = server.url.rsplit(':').next().expect("port").parse().expect("port");
    let proxy = Proxy::start(port).await;
    // The link goes through the proxy; pushes go to the server's public URL, past it.
    let proxied = format!("http://127.0.0.1:{}", proxy.port);
    let worker: Worker = start_worker_with(
        &c,
        dir.path(),
        &proxied,
        "w",
        &[("GRADIENT_MAX_CONCURRENT_BUILDS", "8")],
    )
    .await;

    let id = evaluate(&c, &commit).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let b = builds(&c, &id).await;
        if b.len() == n && statuses(&b).iter().all(|s| s == "Building") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the builds did not start: {b:?}\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.drop_packets(true);
    let cut = Instant::now();
    println!("dropping every packet of the worker's link with {n} builds running");

    // Detected by heartbeats: the builds say Queued again.
    loop {
        let b = builds(&c, &id).await;
        if statuses(&b).iter().all(|s| s == "Queued") {
            println!(
                "the server declared the worker lost and requeued its builds after {:.1} s",
                cut.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(cut.elapsed() < Duration::from_secs(20), "not requeued: {b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker builds on offline; once it has finished (and pushed, past the proxy), the network comes back.
    let offline = Instant::now() + Duration::from_secs(60);
    while count(&worker.log_text(), "server was silent") == 0 || cut.elapsed() < Duration::from_secs(14) {
        assert!(Instant::now() < offline, "{}", worker.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let still_queued = statuses(&builds(&c, &id).await);
    proxy.drop_packets(false);
    println!(
        "the network came back after {:.1} s (the builds still said {still_queued:?})",
        cut.elapsed().as_secs_f64()
    );

    let done = wait_for_end(&c, &server, &id).await;
    let server_log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let worker_log = worker.log_text();
    let b = builds(&c, &id).await;
    let ran = count(&worker_log, "running build job");
    let resent = worker_log.contains("not acknowledged yet");
    println!(
        "evaluation {} after {:.1} s; builds {:?}; the worker ran {ran} build job(s) for {n} builds and sent its \
         unacknowledged reports again: {resent}",
        done["evaluation"]["status"],
        cut.elapsed().as_secs_f64(),
        statuses(&b)
    );
    assert_eq!(
        done["evaluation"]["status"], "Completed",
        "{done}\n{worker_log}\n{server_log}"
    );
    assert_eq!(ran, n, "nothing was built twice:\n{worker_log}");
    assert!(resent, "the outcomes finished offline were sent again:\n{worker_log}");
    for build in &b {
        assert_eq!(build["status"], "Completed", "{build}");
        assert_eq!(times_reached(build, "Queued"), 2, "queued, then requeued once: {build}");
        assert_eq!(times_reached(build, "Completed"), 1, "recorded once: {build}");
    }
    worker.kill();
    server.stop();
}
