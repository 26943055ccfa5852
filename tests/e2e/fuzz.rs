//! API fuzzing: schemathesis (`st`, installed by `scripts/test` into the test venv) against the real server's
//! served OpenAPI document, every operation, seeded and bounded, with an API key whose user owns an
//! organization, a project, a cache, an evaluation, a worker registration and a second key, so the generated
//! requests get past 404. No answer may be a 5xx, and every answer must match the document: its status is
//! documented, its content type too, and its body fits the schema.

use crate::harness::{Client, Server};
use reqwest::Method;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pinned in `scripts/lib.sh` (`ensure_schemathesis`), which exports its path as `GRADIENT_SCHEMATHESIS`.
fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRADIENT_SCHEMATHESIS") {
        return Some(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let st = cache.join("gradient-test/venv/bin/st");
    st.exists().then_some(st)
}

/// The checks every answer must pass: no 5xx; status, content type, headers and body as documented; and a
/// method a path does not have answers 405 with an `Allow` that lists exactly the documented methods.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,unsupported_method,\
                      allow_header_conformance";
/// Fixed, so a failure reproduces with the same requests.
const SEED: &str = "20261205";
/// Generated cases per operation and phase.
const MAX_EXAMPLES: &str = "25";
/// The whole fuzzing must end within this, or the test fails.
const DEADLINE: Duration = Duration::from_secs(360);

/// What the fuzzed key owns; path parameters are pinned to these so operations reach real data.
struct Owned {
    key: String,
    evaluation: String,
    peer: String,
    spare_key: String,
}

async fn own_data(c: &mut Client) -> Owned {
    let key = c.register_with_key("alice").await;
    c.acme_with_cache().await;
    let project = json!({"name": "web", "repository": "https://git.example.com/acme/web.git"});
    c.ok(Method::POST, "/projects/acme", Some(project)).await;
    let evaluation = c
        .ok(
            Method::POST,
            "/projects/acme/web/evaluate",
            Some(json!({"commit": "0123456789abcdef0123456789abcdef01234567"})),
        )
        .await["id"]
        .as_str()
        .expect("evaluation id")
        .to_owned();
    let worker = json!({"worker_id": uuid::Uuid::new_v4().to_string()});
    let peer = c.ok(Method::POST, "/orgs/acme/workers", Some(worker)).await["peer_id"]
        .as_str()
        .expect("peer id")
        .to_owned();
    c.ok(Method::POST, "/orgs/acme/webhook-secret", None).await;
    let spare_key = c.ok(Method::POST, "/user/keys", Some(json!({"name": "spare"}))).await["id"]
        .as_str()
        .expect("key id")
        .to_owned();
    Owned {
        key,
        evaluation,
        peer,
        spare_key,
    }
}

/// Values the generator draws from besides its own, so bodies get past validation (valid names, emails,
/// commits, …) and reach the database with the text that breaks things (NUL, escapes, long lines). A forge
/// `api_url` is always a loopback address: the server posts commit statuses there.
const DICTIONARIES: &str = r#"
[dictionaries.names]
values = ["acme2", "web2", "main2", "x", "a-b_c", "bob", "role1", "n0"]
[dictionaries.logins]
values = ["alice", "alice@example.com", "bob", "a\u0000b", "\u0000"]
[dictionaries.emails]
values = ["u1@example.com", "u2@example.com", "bob@example.com"]
[dictionaries.passwords]
values = ["password123", "another-password"]
[dictionaries.texts]
values = ["a\u0000b", "\u0000", "\u001b[31mred", "two\nlines", "\u00e4\u00df\U0001F600", "'; DROP TABLE orgs; --"]
[dictionaries.branches]
values = ["main", "release/1.0", "a\u0000b", "\u0000", "a b", "-x"]
[dictionaries.repositories]
values = ["https://git.example.com/acme/x.git", "ssh://git@git.example.com/acme/x.git"]
[dictionaries.commits]
values = ["0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"]
[dictionaries.uuids]
values = ["6f1c2d0e-8a4b-4c3d-9e2f-1a2b3c4d5e6f", "0b9c8d7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e"]
[dictionaries.forges]
values = ["gitea", "forgejo", "gitlab", "github"]
[dictionaries.loopback]
values = ["http://127.0.0.1:9", "http://127.0.0.1:9/api", "http://127.0.0.1:9/a\u0000b"]
[dictionaries.actions]
values = ["abort", "restart"]
[dictionaries.roles]
values = ["Admin", "Write", "View", "role1", "a\u0000b"]
[dictionaries.permissions]
values = ["view_org", "edit_org", "manage_members", "create_project", "trigger_evaluation", "manage_workers"]
[dictionaries.compressions]
values = ["zstd", "xz", "none"]
[dictionaries.wildcards]
values = ["packages.*.*", "checks.*.*, !checks.x86_64-linux.slow"]

[parameters]
"path.org" = "acme"
"path.project" = "web"
"path.cache" = "main"
"path.forge" = "gitea"
"body.name" = { dictionary = "names", probability = 0.5 }
"body.username" = { dictionary = "names", probability = 0.5 }
"body.user" = { dictionary = "names", probability = 0.5 }
"body.organization" = { dictionary = "names", probability = 0.5 }
"body.loginname" = { dictionary = "logins", probability = 0.5 }
"body.email" = { dictionary = "emails", probability = 0.5 }
"body.password" = { dictionary = "passwords", probability = 0.5 }
"body.display_name" = { dictionary = "texts", probability = 0.3 }
"body.description" = { dictionary = "texts", probability = 0.3 }
"body.branch" = { dictionary = "branches", probability = 0.5 }
"body.repository" = { dictionary = "repositories", probability = 0.5 }
"body.commit" = { dictionary = "commits", probability = 0.5 }
"body.worker_id" = { dictionary = "uuids", probability = 0.5 }
"body.forge" = { dictionary = "forges", probability = 0.5 }
"body.api_url" = { dictionary = "loopback", probability = 1.0 }
"body.method" = { dictionary = "actions", probability = 0.5 }
"body.role" = { dictionary = "roles", probability = 0.5 }
"body.permissions[*]" = { dictionary = "permissions", probability = 0.5 }
"body.compression" = { dictionary = "compressions", probability = 0.5 }
"body.wildcard" = { dictionary = "wildcards", probability = 0.5 }
"#;

/// schemathesis' configuration: the dictionaries, and the path parameters of each operation pinned to what
/// `alice` owns.
fn config(owned: &Owned) -> String {
    // No build exists without a worker: `/builds/{id}` is fuzzed with an id that answers 404.
    let build = uuid::Uuid::new_v4().to_string();
    let mut toml = String::from(DICTIONARIES);
    for (path, id) in [
        ("/evals/{id}", owned.evaluation.as_str()),
        ("/evals/{id}/builds", owned.evaluation.as_str()),
        ("/builds/{id}", build.as_str()),
        ("/builds/{id}/log", build.as_str()),
        ("/user/keys/{id}", owned.spare_key.as_str()),
    ] {
        toml.push_str(&format!(
            "\n[[operations]]\ninclude-path = \"{path}\"\nparameters = {{ \"path.id\" = \"{id}\" }}\n"
        ));
    }
    toml.push_str(&format!(
        "\n[[operations]]\ninclude-path = \"/orgs/{{org}}/workers/{{peer}}\"\nparameters = {{ \"path.peer\" = \"{}\" }}\n",
        owned.peer
    ));
    toml
}

/// Runs `st run` with `extra` arguments; answers its output, failing the test if it does not pass.
async fn run(st: &Path, dir: &Path, server: &Server, key: &str, name: &str, extra: &[&str]) -> String {
    let out_path = dir.join(format!("schemathesis-{name}.log"));
    let out = std::fs::File::create(&out_path).expect("log file");
    let mut child = Command::new(st)
        .arg("--config-file")
        .arg(dir.join("schemathesis.toml"))
        .args(["--no-color", "run"])
        .arg(format!("{}/api/v1/openapi.json", server.url))
        .args(["--url", &format!("{}/api/v1", server.url)])
        .args(["--checks", CHECKS, "--seed", SEED, "--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--generation-database", "none"])
        // Hypothesis' health checks judge the generator's speed, not the server: on a loaded machine they
        // would fail a run that found nothing.
        .args(["--suppress-health-check", "all"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(extra)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("st starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis ({name}) ran longer than {DEADLINE:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let cases = output
        .lines()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_default()
        .trim();
    eprintln!("schemathesis ({name}) took {:.0?}: {cases}", started.elapsed());
    assert!(
        status.success(),
        "schemathesis ({name}) found failures ({status}):\n{output}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    output
}

/// Fuzzes a server started with `vars`; answers nothing, fails on the first finding.
async fn fuzz(vars: &[(&str, &str)]) {
    let Some(st) = schemathesis() else {
        eprintln!(
            "SKIPPED: schemathesis is not installed (scripts/test installs it into the test venv; or set GRADIENT_SCHEMATHESIS to its `st`)"
        );
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Generated webhook and forge URLs are delivered to by the server's loops: never to a private network (the
    // harness already allows loopback, where nothing answers them).
    let mut vars = vars.to_vec();
    vars.push(("GRADIENT_DENY_PRIVATE_NETWORKS", "true"));
    let server = Server::start(dir.path(), &vars).await;
    let mut c = Client::new(&server);
    let owned = own_data(&mut c).await;
    std::fs::write(dir.path().join("schemathesis.toml"), config(&owned)).expect("config");

    // Everything but deletions first, so the data stays while it is fuzzed; then the deletions.
    let mut outputs = vec![
        run(
            &st,
            dir.path(),
            &server,
            &owned.key,
            "all-but-delete",
            // The live streams do not end while what they follow runs: each case would wait out the request
            // timeout. Their answers (statuses, errors, events) are tested by tests/api.rs, the authorization
            // matrix and pipeline.rs.
            &["--exclude-method", "DELETE", "--exclude-path-regex", STREAMS],
        )
        .await,
    ];
    outputs.push(
        run(
            &st,
            dir.path(),
            &server,
            &owned.key,
            "delete",
            &["--include-method", "DELETE"],
        )
        .await,
    );

    // Every operation of the document was exercised.
    let spec: serde_json::Value = reqwest::get(format!("{}/api/v1/openapi.json", server.url))
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    let streams = stream_operations(&spec);
    let operations: usize = spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|ops| ops.as_object().map_or(0, |o| o.len()))
        .sum::<usize>()
        - streams;
    let all = outputs.join("\n");
    assert_eq!(
        operations_tested(&all),
        operations,
        "not every operation was fuzzed:\n{all}"
    );
    // No request the fuzzer sent made the server log an internal error either.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(
        !log.contains("internal error: "),
        "the server logged an internal error:\n{log}"
    );
    eprintln!("fuzzing took {:.0?} in all", started.elapsed());
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document_on_sqlite() {
    fuzz(&[]).await;
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document_on_postgres() {
    let url = crate::harness::fresh_postgres_database();
    let dir = tempfile::tempdir().expect("tempdir");
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    fuzz(&[("GRADIENT_DATABASE_URL_FILE", url_file.to_str().expect("utf-8 path"))]).await;
}

/// Sums the summaries' "Tested: N" (under "API Operations:") over the runs.
/// The operations answering `text/event-stream` (left out of the fuzzing, see [`STREAMS`]).
fn stream_operations(spec: &serde_json::Value) -> usize {
    spec["paths"]
        .as_object()
        .expect("paths")
        .values()
        .flat_map(|ops| ops.as_object().into_iter().flat_map(|o| o.values()))
        .filter(|op| op["responses"]["200"]["content"].get("text/event-stream").is_some())
        .count()
}

/// The paths of the live streams.
const STREAMS: &str = r"/events$|/log/live$|^/evals/\{id\}/log$";

fn operations_tested(output: &str) -> usize {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Tested:"))
        .filter_map(|rest| rest.trim().parse::<usize>().ok())
        .sum()
}
