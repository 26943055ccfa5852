//! Starting and stopping the real server.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `target/<profile>/gradient-server`, next to this test's own executable.
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GRADIENT_SERVER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("gradient-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p gradient-server` first",
        bin.display()
    );
    bin
}

/// A command for a process that must not outlive its test: it runs through util-linux's `setpriv --pdeathsig
/// KILL`, so the kernel kills it when the thread that started it (the test's) ends, however the test ends (even
/// killed, when no `Drop` runs), and in a process group of its own, which [`kill_group`] ends with whatever the
/// process started (nginx's workers, a worker's Nix processes). `setpriv` execs the program: the child's pid
/// is the program's.
pub fn tied(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program).process_group(0);
    cmd
}

/// Kills a process started with [`tied`] and its whole process group, and reaps it.
pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The admin URL of the test PostgreSQL server; `scripts/test` starts it and sets this.
pub fn postgres_admin_url() -> String {
    std::env::var("GRADIENT_TEST_POSTGRES_URL")
        .expect("GRADIENT_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts PostgreSQL")
}

/// Creates an empty database and answers its URL.
pub fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let name = format!("gradient_e2e_{}", uuid::Uuid::new_v4().simple());
    let (base, query) = admin.split_once('?').map_or((admin.as_str(), ""), |(b, q)| (b, q));
    let host = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap_or("/var/run/postgresql");
    let status = Command::new("psql")
        .args([
            "-h",
            host,
            "-d",
            "postgres",
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()
        .expect("psql runs");
    assert!(status.success(), "CREATE DATABASE failed");
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    if query.is_empty() {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}?{query}")
    }
}

pub struct Server {
    pub url: String,
    child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts the server with `GRADIENT_BASE_DIR=base_dir` and the given extra variables, and waits until
    /// `/api/v1/health` answers.
    pub async fn start(base_dir: &Path, vars: &[(&str, &str)]) -> Server {
        Self::start_on(base_dir, free_port(), vars).await
    }

    /// Starts on a given port (to restart a server where its workers expect it).
    pub async fn start_on(base_dir: &Path, port: u16, vars: &[(&str, &str)]) -> Server {
        let log = base_dir.join(format!("server-{port}.log"));
        let child = Self::spawn(base_dir, port, vars, &log);
        let url = format!("http://127.0.0.1:{port}");
        let mut server = Server { url, child, log };
        server.wait_healthy().await;
        server
    }

    fn spawn(base_dir: &Path, port: u16, vars: &[(&str, &str)], log: &Path) -> Child {
        let out = std::fs::File::create(log).expect("log file");
        let mut cmd = tied(server_binary());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRADIENT_BASE_DIR", base_dir)
            .env("GRADIENT_PORT", port.to_string())
            // The tests' repositories and forges live on this machine (file://, 127.0.0.1); a test of the
            // default policy passes GRADIENT_ALLOW_LOCAL_REPOSITORIES=false.
            .env("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true")
            .stdout(out.try_clone().expect("clone"))
            .stderr(out);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.spawn().expect("server starts")
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/api/v1/health", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}) before becoming healthy:\n{log}");
            }
            assert!(Instant::now() < deadline, "server did not become healthy:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process id (`setpriv` and the server's own restart with its allocator's setting keep it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server a signal (`HUP`, …), as `systemctl reload` or `kill` would.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Stops the server with SIGTERM, as systemd would, and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("server did not stop within 20 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Runs the server binary expecting it to refuse to start; answers its stderr+stdout.
pub fn start_failure(base_dir: &Path, vars: &[(&str, &str)]) -> String {
    let log = base_dir.join("failed-start.log");
    let mut child = Server::spawn(base_dir, free_port(), vars, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "the server was expected to refuse to start");
            return std::fs::read_to_string(&log).unwrap_or_default();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server was expected to refuse to start but kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tiny API client: every call checks the envelope.
pub struct Client {
    pub base: String,
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &Server) -> Self {
        Self {
            base: format!("{}/api/v1", server.url),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        assert_eq!(v["error"], false);
        v["message"].clone()
    }

    /// A GET answering text (not the JSON envelope): the status and the body.
    pub async fn text(&self, path: &str) -> (u16, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Registers, logs in and creates an API key; the client then uses the key.
    pub async fn register_with_key(&mut self, user: &str) -> String {
        use reqwest::Method;
        let reg =
            json!({"username": user, "name": user, "email": format!("{user}@example.com"), "password": "password123"});
        self.ok(Method::POST, "/auth/basic/register", Some(reg)).await;
        let jwt = self
            .ok(
                Method::POST,
                "/auth/basic/login",
                Some(json!({"loginname": user, "password": "password123"})),
            )
            .await;
        self.token = jwt.as_str().map(str::to_owned);
        let key = self.ok(Method::POST, "/user/keys", Some(json!({"name": "e2e"}))).await;
        let key = key["key"].as_str().expect("key").to_owned();
        self.token = Some(key.clone());
        key
    }

    /// Creates the organization `acme` with a new cache `main` as its push cache; answers the cache's public key.
    pub async fn acme_with_cache(&self) -> String {
        use reqwest::Method;
        self.ok(Method::POST, "/orgs", Some(json!({"name": "acme"}))).await;
        self.ok(Method::POST, "/caches", Some(json!({"name": "main"}))).await;
        self.ok(Method::PUT, "/orgs/acme/push-cache/main", None).await;
        let key = self.ok(Method::GET, "/caches/main/public-key", None).await;
        key.as_str().expect("public key").to_owned()
    }
}

/// A `gradient-worker` process with its own state directory and log.
pub struct Worker {
    child: Child,
    pub log: PathBuf,
}

impl Worker {
    /// Kills the worker with SIGKILL, as a crash or the OOM killer would.
    pub fn sigkill(mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn start(dir: &Path, name: &str, vars: &[(&str, &str)]) -> Worker {
        Self::start_as(dir, name, vars, false)
    }

    /// [`Worker::start`] as a script's background job (`gradient-worker &`): with SIGINT and SIGQUIT ignored.
    pub fn start_as_background_job(dir: &Path, name: &str, vars: &[(&str, &str)]) -> Worker {
        Self::start_as(dir, name, vars, true)
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start_as(dir: &Path, name: &str, vars: &[(&str, &str)], background_job: bool) -> Worker {
        let bin = server_binary().with_file_name("gradient-worker");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p gradient-worker` first",
            bin.display()
        );
        let log = dir.join(format!("worker-{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = if background_job {
            let mut sh = tied("/bin/sh");
            sh.args(["-c", r#"trap "" INT QUIT; exec "$0""#]).arg(bin);
            sh
        } else {
            tied(bin)
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRADIENT_STATE_DIR", dir.join(format!("worker-{name}")))
            .stdout(out.try_clone().expect("clone"))
            .stderr(out);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Worker {
            child: cmd.spawn().expect("worker starts"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "worker log never said {needle:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Whether a process whose command line contains `needle` runs (zombies left out: dead, not yet reaped).
fn runs(needle: &str) -> bool {
    let out = Command::new("ps").args(["-eo", "stat=,args="]).output().expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| !l.trim_start().starts_with('Z') && l.contains(needle))
}

/// The processes whose command line contains `needle`, as `ps` shows them.
fn matching(needle: &str) -> String {
    let out = Command::new("ps")
        .args(["-eo", "pid,ppid,stat,args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits up to 10 s for no process matching `needle` to run; answers whether none does.
fn gone(needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(needle) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_tied_process_dies_with_the_thread_that_started_it_and_with_its_group_everything_it_started() {
    let unique = || format!("sleep 300.{}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000);
    // Started by a thread that ends without killing it (a test that died before any `Drop` ran).
    let left = unique();
    let command = left.clone();
    std::thread::spawn(move || {
        let child = tied("/bin/sh")
            .args(["-c", &format!("exec {command}")])
            .spawn()
            .expect("sh");
        // Running (so `setpriv` has set its parent-death signal) before the thread ends, as in any test.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runs(&command) {
            assert!(Instant::now() < deadline, "the process did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::mem::forget(child);
    })
    .join()
    .expect("thread");
    assert!(
        gone(&left),
        "the process outlived the thread that started it: {}",
        matching(&left)
    );

    // A process that started another in the background (nginx's master and its workers): both end.
    let (first, second) = (unique(), unique());
    let mut child = tied("/bin/sh")
        .args(["-c", &format!("{first} & {second}")])
        .spawn()
        .expect("sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(runs(&first) && runs(&second)) {
        assert!(Instant::now() < deadline, "the processes did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&mut child);
    assert!(gone(&second), "the process itself");
    assert!(gone(&first), "what it started in the background");
}
