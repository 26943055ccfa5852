//! No option without an effect: every `GRADIENT_*` variable the binaries read (`--print-config-schema`) is
//! exercised by a named test, and an option that cannot be honoured yet stops start-up with one line. Also the
//! log levels per area, seen in what the real binaries print.

use crate::harness::{Server, free_port, server_binary, start_failure};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Every variable of the server and the worker → the tests that exercise it (at least one; each must exist).
#[rustfmt::skip]
const OPTION_TESTS: &[(&str, &[&str])] = &[
    // Server.
    ("GRADIENT_PORT", &["serves_on_the_configured_port_and_stops_on_sigterm"]),
    ("GRADIENT_LISTEN_ADDR", &["values_are_read", "bad_values_name_the_variable"]),
    ("GRADIENT_DOMAIN", &["nix_cache_info_and_narinfo_follow_the_nix_protocol"]),
    ("GRADIENT_PUBLIC_URL", &["a_co_located_worker_is_registered_in_every_organization"]),
    ("GRADIENT_BASE_DIR", &["secrets_are_generated_once_with_mode_0600_and_checked"]),
    ("GRADIENT_JWT_SECRET_FILE", &["start_up_refuses_bad_configuration_with_one_line"]),
    ("GRADIENT_CRYPT_SECRET_FILE", &["start_up_refuses_bad_configuration_with_one_line"]),
    ("GRADIENT_METRICS_TOKEN_FILE", &["metrics_need_the_token_and_count_what_happens_without_naming_anything", "metrics_are_404_without_a_token_file"]),
    ("GRADIENT_DATABASE_URL", &["values_are_read"]),
    ("GRADIENT_DATABASE_URL_FILE", &["start_up_refuses_bad_configuration_with_one_line"]),
    ("GRADIENT_DATABASE_MAX_CONNECTIONS", &["bad_values_name_the_variable"]),
    ("GRADIENT_DATABASE_MIN_CONNECTIONS", &["defaults_are_the_seeds"]),
    ("GRADIENT_DATABASE_WEB_MAX_CONNECTIONS", &["defaults_are_the_seeds"]),
    ("GRADIENT_DATABASE_WEB_MIN_CONNECTIONS", &["defaults_are_the_seeds"]),
    ("GRADIENT_MAX_REQUEST_SIZE", &["malformed_and_oversized_requests_are_refused_with_json_errors"]),
    ("GRADIENT_DISCOVERABLE", &["an_undiscoverable_server_refuses_workers"]),
    ("GRADIENT_MAX_PROTO_CONNECTIONS", &["connections_beyond_the_limit_get_503_with_retry_after"]),
    ("GRADIENT_WORKER_HEARTBEAT_SECS", &["a_silent_worker_is_lost_and_its_jobs_requeued"]),
    ("GRADIENT_WORKER_LOST_AFTER_SECS", &["a_silent_worker_is_lost_and_its_jobs_requeued"]),
    ("GRADIENT_KEEP_EVALUATIONS", &["old_evaluations_are_pruned_beyond_keep_evaluations"]),
    ("GRADIENT_SUPERSEDE_EVALUATIONS", &["a_push_supersedes_the_running_evaluation_of_its_branch"]),
    ("GRADIENT_FRONTEND_DIR", &["the_web_ui_is_served_at_the_root"]),
    ("GRADIENT_LOG_LEVEL_DEFAULT", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_CACHE", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_WEB", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_PROTO", &["log_levels_per_area_change_what_the_server_logs", "log_levels_per_area_change_what_the_worker_logs"]),
    ("GRADIENT_ENABLE_REGISTRATION", &["registration_can_be_disabled"]),
    ("GRADIENT_CACHE_TTL_HOURS", &["unfetched_paths_expire_after_the_ttl"]),
    ("GRADIENT_CACHE_GC_INTERVAL_SECS", &["unfetched_paths_expire_after_the_ttl"]),
    ("GRADIENT_NAR_STORAGE_OPEN_TIMEOUT_SECS", &["a_store_that_does_not_open_the_nar_in_time_gets_503"]),
    ("GRADIENT_NAR_SEND_CHUNK_TIMEOUT_SECS", &["a_reader_that_stops_reading_is_cut_off_after_the_chunk_timeout", "a_stalled_reader_is_not_cut_off_before_the_chunk_timeout"]),
    ("GRADIENT_MAX_CONCURRENT_NAR_SERVES", &["downloads_beyond_the_limit_get_503_with_retry_after"]),
    ("GRADIENT_MAX_NAR_BUFFER_BYTES", &["a_download_holds_at_most_the_buffer_size"]),
    ("GRADIENT_TRUSTED_PROXIES", &["login_limits_follow_the_forwarded_address_only_from_trusted_proxies"]),
    ("GRADIENT_LOCAL_IPS", &["local_clients_get_the_local_priority"]),
    ("GRADIENT_ALLOW_LOCAL_REPOSITORIES", &["repositories_on_this_machine_are_refused_unless_the_operator_allows_them"]),
    ("GRADIENT_DENY_PRIVATE_NETWORKS", &["values_are_read"]),
    ("GRADIENT_GITHUB_APP_ENABLE", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_APP_ID", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE", &["the_github_app_hook_needs_an_app_a_valid_key_and_a_signature"]),
    ("GRADIENT_GITHUB_APP_API_URL", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_CLIENT_ID", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_GITHUB_APP_WEB_URL", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_NAR_STORE", &["values_are_read"]),
    ("GRADIENT_S3_ENDPOINT", &["values_are_read"]),
    ("GRADIENT_S3_REGION", &["values_are_read"]),
    ("GRADIENT_S3_ACCESS_KEY_ID", &["values_are_read"]),
    ("GRADIENT_S3_SECRET_ACCESS_KEY_FILE", &["values_are_read"]),
    ("GRADIENT_S3_PATH_STYLE", &["values_are_read"]),
    ("GRADIENT_LOCAL_WORKER_ID", &["a_co_located_worker_is_registered_in_every_organization"]),
    ("GRADIENT_LOCAL_WORKER_TOKEN_FILE", &["a_co_located_worker_is_registered_in_every_organization"]),
    // Refused at start-up until they work (`config::UNSUPPORTED`).
    ("GRADIENT_OIDC_ENABLE", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_REQUIRED", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_CLIENT_ID", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_CLIENT_SECRET_FILE", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_DISCOVERY_URL", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_SCOPES", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_OIDC_ICON_URL", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_ENABLE", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_REQUIRE_VERIFICATION", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_SMTP_HOST", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_SMTP_PORT", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_SMTP_USERNAME", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_SMTP_PASSWORD_FILE", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_FROM_ADDRESS", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_EMAIL_FROM_NAME", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_REPORT_ERRORS", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_SENTRY_DSN", &["options_that_cannot_work_yet_refuse_to_start"]),
    ("GRADIENT_DELETE_STATE", &["options_that_cannot_work_yet_refuse_to_start"]),
    // Worker.
    ("GRADIENT_SERVER_URL", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_WORKER_ID", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_PEERS_FILE", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_STATE_DIR", &["a_worker_keeps_its_id_across_restarts"]),
    ("GRADIENT_CAPABILITIES_FETCH", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_CAPABILITIES_EVAL", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_CAPABILITIES_BUILD", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_CAPABILITIES_SIGN", &["a_worker_connects_and_the_server_lists_it"]),
    ("GRADIENT_MAX_CONCURRENT_BUILDS", &["defaults_and_values"]),
    ("GRADIENT_EVAL_WORKERS", &["options_without_an_effect_refuse_anything_but_their_default"]),
    ("GRADIENT_MAX_CONCURRENT_EVALUATIONS", &["defaults_and_values"]),
    ("GRADIENT_MAX_EVALUATIONS_PER_WORKER", &["options_without_an_effect_refuse_anything_but_their_default"]),
    ("GRADIENT_PROBE_SUBSTITUTERS", &["defaults_and_values"]),
    ("GRADIENT_GCROOTS_DIR", &["defaults_and_values"]),
    ("GRADIENT_LOG_LEVEL_EVAL", &["log_levels_per_area_make_the_filter"]),
    ("GRADIENT_LOG_LEVEL_BUILD", &["log_levels_per_area_make_the_filter"]),
];

fn worker_binary() -> PathBuf {
    server_binary().with_file_name("gradient-worker")
}

fn schema(binary: &Path) -> Vec<String> {
    let out = Command::new(binary)
        .arg("--print-config-schema")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema JSON");
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x["name"].as_str().expect("name").to_owned())
        .collect()
}

/// The text of every Rust source of the workspace (tests are found by their `fn` lines).
fn sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_dir() && !["target", "node_modules", ".git", "web"].contains(&name) {
                walk(&p, out);
            } else if name.ends_with(".rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = String::new();
    walk(&root, &mut out);
    out
}

#[test]
fn every_variable_is_exercised_by_a_test_that_exists() {
    let mut read: BTreeSet<String> = schema(&server_binary()).into_iter().collect();
    read.extend(schema(&worker_binary()));
    let table: BTreeSet<String> = OPTION_TESTS.iter().map(|(v, _)| (*v).to_owned()).collect();
    let untested: Vec<_> = read.difference(&table).collect();
    assert!(
        untested.is_empty(),
        "variables no test exercises (add them to OPTION_TESTS): {untested:?}"
    );
    let unread: Vec<_> = table.difference(&read).collect();
    assert!(
        unread.is_empty(),
        "OPTION_TESTS names variables no binary reads: {unread:?}"
    );
    let code = sources();
    for (var, tests) in OPTION_TESTS {
        assert!(!tests.is_empty(), "{var}: no test");
        for test in *tests {
            assert!(
                code.contains(&format!("fn {test}(")),
                "{var}: the test {test} does not exist"
            );
        }
    }
}

#[tokio::test]
async fn options_that_cannot_work_yet_refuse_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (var, value) in [
        ("GRADIENT_OIDC_REQUIRED", "true"),
        ("GRADIENT_OIDC_ENABLE", "true"),
        ("GRADIENT_OIDC_CLIENT_ID", "gradient"),
        ("GRADIENT_OIDC_CLIENT_SECRET_FILE", "/run/secrets/oidc"),
        ("GRADIENT_OIDC_DISCOVERY_URL", "https://auth.example.com"),
        ("GRADIENT_OIDC_SCOPES", "openid"),
        ("GRADIENT_OIDC_ICON_URL", "https://auth.example.com/icon.png"),
        ("GRADIENT_EMAIL_ENABLE", "yes"),
        ("GRADIENT_EMAIL_REQUIRE_VERIFICATION", "true"),
        ("GRADIENT_EMAIL_SMTP_HOST", "smtp.example.com"),
        ("GRADIENT_EMAIL_SMTP_PORT", "25"),
        ("GRADIENT_EMAIL_SMTP_USERNAME", "gradient"),
        ("GRADIENT_EMAIL_SMTP_PASSWORD_FILE", "/run/secrets/smtp"),
        ("GRADIENT_EMAIL_FROM_ADDRESS", "ci@example.com"),
        ("GRADIENT_EMAIL_FROM_NAME", "CI"),
        ("GRADIENT_REPORT_ERRORS", "true"),
        ("GRADIENT_SENTRY_DSN", "https://key@sentry.example.com/1"),
        ("GRADIENT_DELETE_STATE", "false"),
    ] {
        let out = start_failure(dir.path(), &[(var, value)]);
        let lines: Vec<_> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}={value}: one line, got:\n{out}");
        assert!(
            lines[0].contains(var) && lines[0].contains("not supported"),
            "{var}={value}: {out}"
        );
    }
    // Their defaults (what the NixOS module writes when they are left alone) start.
    let server = Server::start(
        dir.path(),
        &[
            ("GRADIENT_OIDC_ENABLE", "false"),
            ("GRADIENT_OIDC_REQUIRED", "false"),
            ("GRADIENT_OIDC_SCOPES", "openid,email,profile"),
            ("GRADIENT_EMAIL_SMTP_PORT", "587"),
            ("GRADIENT_EMAIL_FROM_NAME", "Gradient"),
            ("GRADIENT_REPORT_ERRORS", "false"),
            ("GRADIENT_DELETE_STATE", "true"),
        ],
    )
    .await;
    server.stop();
}

/// Runs a binary for `run` with these variables; answers what it printed on stderr.
fn output_of(binary: &Path, vars: &[(&str, &str)], run: Duration) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr");
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("GRADIENT_BASE_DIR", dir.path())
        .env("GRADIENT_STATE_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starts");
    std::thread::sleep(run);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn log_levels_per_area_change_what_the_server_logs() {
    let port = free_port().to_string();
    let quiet_default = output_of(
        &server_binary(),
        &[
            ("GRADIENT_PORT", &port),
            ("GRADIENT_LOG_LEVEL_DEFAULT", "error"),
            ("GRADIENT_LOG_LEVEL_WEB", "info"),
            ("GRADIENT_LOG_LEVEL_PROTO", "debug"),
            ("GRADIENT_LOG_LEVEL_CACHE", "error"),
        ],
        Duration::from_secs(3),
    );
    assert!(quiet_default.contains("web UI"), "web at info:\n{quiet_default}");
    assert!(
        quiet_default.contains("worker link at /proto"),
        "proto at debug:\n{quiet_default}"
    );
    assert!(!quiet_default.contains("NAR store"), "cache at error:\n{quiet_default}");
    assert!(
        !quiet_default.contains("listening on"),
        "the default at error:\n{quiet_default}"
    );

    let port = free_port().to_string();
    let quiet_areas = output_of(
        &server_binary(),
        &[
            ("GRADIENT_PORT", &port),
            ("GRADIENT_LOG_LEVEL_DEFAULT", "info"),
            ("GRADIENT_LOG_LEVEL_WEB", "error"),
            ("GRADIENT_LOG_LEVEL_PROTO", "warn"),
        ],
        Duration::from_secs(3),
    );
    assert!(
        quiet_areas.contains("listening on"),
        "the default at info:\n{quiet_areas}"
    );
    assert!(quiet_areas.contains("NAR store"), "cache inherits info:\n{quiet_areas}");
    assert!(!quiet_areas.contains("web UI"), "web at error:\n{quiet_areas}");
    assert!(
        !quiet_areas.contains("worker link at /proto"),
        "proto at warn:\n{quiet_areas}"
    );
}

#[test]
fn log_levels_per_area_change_what_the_worker_logs() {
    // A server that is not there: the worker dials, loses the link and retries.
    let url = format!("ws://127.0.0.1:{}/proto", free_port());
    let common = [
        ("GRADIENT_SERVER_URL", url.as_str()),
        ("GRADIENT_PROBE_SUBSTITUTERS", "false"),
        ("GRADIENT_GCROOTS_DIR", ""),
    ];
    let mut vars = common.to_vec();
    vars.extend([
        ("GRADIENT_LOG_LEVEL_DEFAULT", "error"),
        ("GRADIENT_LOG_LEVEL_PROTO", "debug"),
    ]);
    let proto_debug = output_of(&worker_binary(), &vars, Duration::from_secs(3));
    assert!(proto_debug.contains("dialing ws://"), "proto at debug:\n{proto_debug}");
    assert!(proto_debug.contains("link lost"), "proto at debug:\n{proto_debug}");
    assert!(
        !proto_debug.contains("starting"),
        "the default at error:\n{proto_debug}"
    );

    let mut vars = common.to_vec();
    vars.extend([
        ("GRADIENT_LOG_LEVEL_DEFAULT", "info"),
        ("GRADIENT_LOG_LEVEL_PROTO", "error"),
    ]);
    let proto_error = output_of(&worker_binary(), &vars, Duration::from_secs(3));
    assert!(proto_error.contains("starting"), "the default at info:\n{proto_error}");
    assert!(!proto_error.contains("link lost"), "proto at error:\n{proto_error}");
    assert!(!proto_error.contains("reconnecting"), "proto at error:\n{proto_error}");
}
