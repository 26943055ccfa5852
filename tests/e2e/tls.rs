//! `wss://` for real: the server behind nginx terminating TLS on loopback with a certificate of a CA the test
//! makes (openssl), the worker dialing `wss://` and trusting that CA through `GRADIENT_CA_FILE`, its pushes to
//! the cache going over https through the same nginx; and a worker without the CA refused by verification.
//! The other direction too: a listening worker behind nginx, dialed by the server over `wss://` trusting the
//! CA through the server's own `GRADIENT_CA_FILE`.

use crate::harness::{Server, free_port};
use crate::listening::{start_listening, wait_until_connected};
use crate::nix::NIX_CONFIG;
use crate::pipeline::{evaluate, flake_repo, org_with_project, start_worker_with, wait_for_completed};
use reqwest::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian's openssl package; scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a certificate it signed for 127.0.0.1 and localhost (`server.pem`, `server.key`).
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("extensions");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca: Vec<&str> = ["req", "-x509"]
        .into_iter()
        .chain(ec)
        .chain([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Gradient test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .collect();
    openssl(dir, &ca);
    let csr: Vec<&str> = ["req"]
        .into_iter()
        .chain(ec)
        .chain(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"])
        .collect();
    openssl(dir, &csr);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// nginx (Debian's) in the foreground as this user, with its own configuration, pid file, logs and temporary
/// directories under `dir`, terminating TLS on a free loopback port and proxying everything, WebSocket
/// upgrades included, to `upstream`.
struct Nginx {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Nginx {
    async fn start(dir: &Path, upstream: &str) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).expect("nginx dir");
        make_certificates(&dir);
        let port = free_port();
        let d = dir.display();
        // As root the master process would hand its workers to `nobody`, who cannot enter the temporary dir.
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/server.pem;
    ssl_certificate_key {d}/server.key;
    client_max_body_size 0;
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let conf = dir.join("nginx.conf");
        // One process (`master_process off`), tied to the test: nothing of it outlives the test.
        let child = crate::harness::tied(nginx)
            .args(["-p"])
            .arg(&dir)
            .args(["-e"])
            .arg(dir.join("error.log"))
            .args(["-c"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr log"))
            .spawn()
            .expect("nginx starts (Debian's nginx package; scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Nginx {
            child,
            url: format!("https://127.0.0.1:{port}"),
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::harness::kill_group(&mut self.child);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The server with its public URL at nginx: the cache URLs it gives workers are https ones.
async fn server_behind(dir: &Path) -> (Server, Nginx) {
    let port = free_port();
    let nginx = Nginx::start(dir, &format!("http://127.0.0.1:{port}")).await;
    let server = Server::start_on(dir, port, &[("GRADIENT_PUBLIC_URL", nginx.url.as_str())]).await;
    (server, nginx)
}

#[tokio::test]
async fn a_worker_dials_wss_through_a_tls_terminator_and_builds_a_flake_pushing_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let (server, nginx) = server_behind(dir.path()).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let ca = nginx.ca();
    let worker = start_worker_with(
        &c,
        dir.path(),
        &nginx.url,
        "tls",
        &[("GRADIENT_CA_FILE", ca.to_str().expect("path"))],
    )
    .await;
    assert!(
        worker.log_text().contains("connected to wss://127.0.0.1:"),
        "{}",
        worker.log_text()
    );
    let id = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &id, &worker).await;
    assert_eq!(done["evaluation"]["status"], "Completed");

    // The pushes went through nginx (the imports answered). (The worker's Nix no longer asks the cache here: a
    // run whose inputs are all in the store goes without Gradient's caches as substituters.)
    let access = nginx.access_log();
    let imports = access
        .lines()
        .filter(|l| l.contains("POST /cache/main/import") && l.contains("\" 200 "))
        .count();
    assert!(imports >= 1, "the pushes went over https: {access}");

    // What was pushed is in the cache, read over https by a client trusting the CA.
    let key = c.token.clone().expect("the API key");
    let pem = std::fs::read(&ca).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let builds = c.ok(Method::GET, &format!("/evals/{id}/builds"), None).await;
    let drv = builds
        .as_array()
        .expect("builds")
        .iter()
        .find_map(|b| b["drv_path"].as_str().filter(|p| p.ends_with("-c.drv")))
        .expect("c")
        .to_owned();
    let out = crate::nix::nix(&["show-derivation", &drv]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let c_out = shown[&drv]["outputs"]["out"]["path"].as_str().expect("out").to_owned();
    let hash = c_out
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .expect("hash")
        .to_owned();
    let narinfo = http
        .get(format!("{}/cache/main/{hash}.narinfo", nginx.url))
        .bearer_auth(&key)
        .send()
        .await
        .expect("narinfo over https");
    assert_eq!(narinfo.status(), 200, "{c_out} is in the cache");

    // A Nix client trusting the CA substitutes it over https as well.
    let netrc = dir.path().join("netrc-client");
    std::fs::write(&netrc, format!("machine 127.0.0.1 login t password {key}\n")).expect("netrc");
    let fresh = dir.path().join("client-store");
    let copy = Command::new("nix")
        .args(["copy", "--from", &format!("{}/cache/main", nginx.url), "--to"])
        .arg(&fresh)
        .args(["--option", "netrc-file"])
        .arg(&netrc)
        .args(["--option", "require-sigs", "false", &c_out])
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("NIX_SSL_CERT_FILE", &ca)
        .output()
        .expect("nix runs");
    assert!(
        copy.status.success(),
        "substituting {c_out} over https: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
    // The link went through nginx too: nginx logs the upgrade (101) when the link ends.
    worker.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nginx.access_log().contains("GET /proto HTTP/1.1\" 101") {
        assert!(Instant::now() < deadline, "{}", nginx.access_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}

#[tokio::test]
async fn a_worker_without_the_ca_is_refused_by_tls_verification_and_never_falls_back_to_ws() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, _) = flake_repo(dir.path());
    let (server, nginx) = server_behind(dir.path()).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let id = uuid::Uuid::new_v4().to_string();
    let r = c
        .ok(
            Method::POST,
            "/orgs/acme/workers",
            Some(serde_json::json!({"worker_id": id})),
        )
        .await;
    let peers = dir.path().join("peers-untrusting");
    std::fs::write(
        &peers,
        format!(
            "{}:{}\n",
            r["peer_id"].as_str().expect("peer"),
            r["token"].as_str().expect("token")
        ),
    )
    .expect("peers");
    let url = format!("wss://{}/proto", nginx.url.trim_start_matches("https://"));
    let worker = crate::harness::Worker::start(
        dir.path(),
        "untrusting",
        &[
            ("GRADIENT_SERVER_URL", url.as_str()),
            ("GRADIENT_WORKER_ID", id.as_str()),
            ("GRADIENT_PEERS_FILE", peers.to_str().expect("path")),
            ("GRADIENT_CAPABILITIES_BUILD", "true"),
            ("NIX_CONFIG", NIX_CONFIG),
        ],
    );
    worker
        .wait_for_log(&format!(
            "TLS verification of {url} failed: the server's certificate is not trusted (UnknownIssuer); \
             a server certificate from a private CA needs its CA in GRADIENT_CA_FILE"
        ))
        .await;
    let log = worker.log_text();
    assert!(!log.contains("connected to"), "{log}");
    // Nothing reached the server: no upgrade through nginx, none on the server's plain port.
    let access = nginx.access_log();
    assert!(!access.contains("/proto"), "{access}");
    let workers = c.ok(Method::GET, "/orgs/acme/workers", None).await;
    assert!(
        workers
            .as_array()
            .expect("workers")
            .iter()
            .all(|w| w["connected"] != true),
        "{workers}"
    );
    worker.kill();
    server.stop();
}

#[tokio::test]
async fn an_unreadable_or_empty_ca_file_stops_the_worker_at_start_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("file");
    let missing = dir.path().join("missing.pem");
    for (name, file, says) in [
        ("not-pem", &not_pem, "GRADIENT_CA_FILE: holds no PEM certificate"),
        ("missing", &missing, "GRADIENT_CA_FILE: cannot read"),
    ] {
        let worker = crate::harness::Worker::start(
            dir.path(),
            name,
            &[
                ("GRADIENT_SERVER_URL", "wss://127.0.0.1:1/proto"),
                ("GRADIENT_CA_FILE", file.to_str().expect("path")),
            ],
        );
        worker.wait_for_log(says).await;
    }
}

/// A CA the machine trusts (its bundle, here through `SSL_CERT_FILE`) needs no `GRADIENT_CA_FILE`.
#[tokio::test]
async fn a_ca_in_the_systems_bundle_is_trusted_without_the_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, _) = flake_repo(dir.path());
    let (server, nginx) = server_behind(dir.path()).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let ca = nginx.ca();
    let worker = start_worker_with(
        &c,
        dir.path(),
        &nginx.url,
        "system",
        &[("SSL_CERT_FILE", ca.to_str().expect("path"))],
    )
    .await;
    assert!(
        worker.log_text().contains("connected to wss://127.0.0.1:"),
        "{}",
        worker.log_text()
    );
    worker.kill();
    server.stop();
}

/// A listening worker behind nginx (TLS with the test CA's certificate, proxying to the worker's plain port):
/// the server trusts the CA through its `GRADIENT_CA_FILE`, dials `wss://`, and the worker builds a flake. A
/// server without the CA never gets a link: the certificate fails verification.
#[tokio::test]
async fn the_server_dials_a_listening_worker_over_wss_trusting_its_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (repository, commit) = flake_repo(dir.path());
    let worker_port = free_port();
    let nginx = Nginx::start(dir.path(), &format!("http://127.0.0.1:{worker_port}")).await;
    let ca = nginx.ca();
    let wss = format!("wss://{}/proto", nginx.url.trim_start_matches("https://"));

    // Without the CA: the server dials, verification fails, nothing reaches the worker.
    let untrusting = tempfile::tempdir().expect("tempdir");
    let server = Server::start(untrusting.path(), &[("GRADIENT_LOG_LEVEL_PROTO", "debug")]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let id = uuid::Uuid::new_v4().to_string();
    let registered = c
        .ok(
            Method::POST,
            "/orgs/acme/workers",
            Some(serde_json::json!({"worker_id": id, "url": wss})),
        )
        .await;
    let peers = dir.path().join("peers");
    std::fs::write(
        &peers,
        format!(
            "{}:{}\n",
            registered["peer_id"].as_str().expect("peer"),
            registered["token"].as_str().expect("token")
        ),
    )
    .expect("peers");
    let peers = peers.to_str().expect("path");
    let all = [
        ("GRADIENT_CAPABILITIES_FETCH", "true"),
        ("GRADIENT_CAPABILITIES_EVAL", "true"),
    ];
    let worker = start_listening(dir.path(), "behind-nginx", &id, worker_port, peers, &all);
    worker.wait_for_log("listening on ws://").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains(&format!("cannot reach worker {id} at {wss}")) {
            assert!(log.to_lowercase().contains("certificate"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "the server never dialed: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !worker.log_text().contains("connected to the server"),
        "{}",
        worker.log_text()
    );
    server.stop();

    // With the CA: the link goes through nginx and the worker evaluates and builds the flake.
    let server = Server::start(dir.path(), &[("GRADIENT_CA_FILE", ca.to_str().expect("path"))]).await;
    let c = org_with_project(&server, &repository, "packages.*.*").await;
    let registered = c
        .ok(
            Method::POST,
            "/orgs/acme/workers",
            Some(serde_json::json!({"worker_id": id, "url": wss})),
        )
        .await;
    std::fs::write(
        peers,
        format!(
            "{}:{}\n",
            registered["peer_id"].as_str().expect("peer"),
            registered["token"].as_str().expect("token")
        ),
    )
    .expect("peers");
    drop(worker);
    let worker = start_listening(dir.path(), "behind-nginx-again", &id, worker_port, peers, &all);
    wait_until_connected(&c, &id, &worker).await;
    let eval = evaluate(&c, &commit).await;
    let done = wait_for_completed(&c, &server, &eval, &worker).await;
    let builds = done["builds"].as_array().expect("builds");
    assert_eq!(builds.len(), 4, "{done}");
    assert!(builds.iter().all(|b| b["status"] == "Completed"), "{done}");
    // The link went through nginx: nginx logs the upgrade (101) when the link ends.
    worker.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nginx.access_log().contains("GET /proto HTTP/1.1\" 101") {
        assert!(Instant::now() < deadline, "{}", nginx.access_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
