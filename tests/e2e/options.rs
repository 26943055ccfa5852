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
    ("GRADIENT_PORT", &["sqlite_quick_start_flow_survives_a_restart", "bad_values_name_the_variable", "a_discoverable_worker_listens_instead_of_dialing", "a_dialing_and_a_listening_worker_build_the_same_flake", "a_dialing_worker_refuses_the_listeners_options"]),
    ("GRADIENT_LISTEN_ADDR", &["values_are_read", "bad_values_name_the_variable", "a_discoverable_worker_listens_instead_of_dialing", "a_dialing_and_a_listening_worker_build_the_same_flake", "a_dialing_worker_refuses_the_listeners_options"]),
    ("GRADIENT_DOMAIN", &["nixos_server_unit_postgres_and_nginx_of_the_seeds_minimal_setup"]),
    ("GRADIENT_PUBLIC_URL", &["signed_forge_pushes_queue_evaluations_of_the_matching_project"]),
    ("GRADIENT_BASE_DIR", &["first_start_generates_private_secrets_and_a_changed_crypt_secret_is_refused"]),
    ("GRADIENT_JWT_SECRET_FILE", &["secrets_are_generated_once_with_mode_0600_and_checked"]),
    ("GRADIENT_CRYPT_SECRET_FILE", &["bad_configuration_stops_start_up_with_one_line_naming_the_variable"]),
    ("GRADIENT_METRICS_TOKEN_FILE", &["metrics_need_the_token_and_count_what_happens_without_naming_anything", "metrics_are_404_without_a_token_file"]),
    ("GRADIENT_DATABASE_URL", &["postgres_quick_start_flow_survives_a_restart", "every_operation_answers_every_caller_as_the_matrix_says_on_postgresql"]),
    ("GRADIENT_DATABASE_URL_FILE", &["bad_configuration_stops_start_up_with_one_line_naming_the_variable", "schemathesis_finds_no_server_error_and_no_answer_outside_the_document_on_postgres"]),
    ("GRADIENT_DATABASE_MAX_CONNECTIONS", &["the_database_pools_are_sized_as_configured"]),
    ("GRADIENT_DATABASE_MIN_CONNECTIONS", &["the_database_pools_are_sized_as_configured"]),
    ("GRADIENT_DATABASE_WEB_MAX_CONNECTIONS", &["the_database_pools_are_sized_as_configured"]),
    ("GRADIENT_DATABASE_WEB_MIN_CONNECTIONS", &["the_database_pools_are_sized_as_configured"]),
    ("GRADIENT_MAX_REQUEST_SIZE", &["malformed_and_oversized_requests_are_refused_with_json_errors"]),
    ("GRADIENT_DISCOVERABLE", &["a_server_that_is_not_discoverable_refuses_upgrades", "a_discoverable_worker_listens_instead_of_dialing", "a_dialing_and_a_listening_worker_build_the_same_flake"]),
    ("GRADIENT_MAX_PROTO_CONNECTIONS", &["connection_limits_and_bad_frames_affect_only_the_offending_connection", "a_listening_worker_makes_the_dialer_prove_itself_and_answers_503_when_full", "a_dialing_worker_refuses_the_listeners_options"]),
    ("GRADIENT_WORKER_HEARTBEAT_SECS", &["welcome_carries_the_anded_capabilities_and_heartbeat_settings", "a_worker_whose_packets_are_dropped_is_lost_its_builds_requeued_once_and_its_offline_work_kept"]),
    ("GRADIENT_WORKER_LOST_AFTER_SECS", &["welcome_carries_the_anded_capabilities_and_heartbeat_settings", "a_worker_killed_mid_build_is_lost_and_another_worker_finishes_the_build", "a_worker_whose_packets_are_dropped_is_lost_its_builds_requeued_once_and_its_offline_work_kept"]),
    ("GRADIENT_KEEP_EVALUATIONS", &["only_the_newest_finished_evaluations_are_kept"]),
    ("GRADIENT_SUPERSEDE_EVALUATIONS", &["a_push_supersedes_the_running_evaluation_of_its_branch"]),
    ("GRADIENT_FRONTEND_DIR", &["the_page_is_served_at_the_root_and_for_deep_links_without_caching", "a_configured_directory_without_a_build_stops_start_up_naming_the_variable"]),
    ("GRADIENT_LOG_LEVEL_DEFAULT", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_CACHE", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_WEB", &["log_levels_per_area_change_what_the_server_logs"]),
    ("GRADIENT_LOG_LEVEL_PROTO", &["log_levels_per_area_change_what_the_server_logs", "log_levels_per_area_change_what_the_worker_logs"]),
    ("GRADIENT_ENABLE_REGISTRATION", &["registration_can_be_disabled"]),
    ("GRADIENT_CACHE_TTL_HOURS", &["paths_not_fetched_within_the_ttl_are_collected_with_their_bytes"]),
    ("GRADIENT_CACHE_GC_INTERVAL_SECS", &["paths_not_fetched_within_the_ttl_are_collected_with_their_bytes"]),
    ("GRADIENT_NAR_STORAGE_OPEN_TIMEOUT_SECS", &["a_store_that_does_not_open_the_nar_in_time_gets_503", "an_s3_server_that_disappears_mid_push_fails_it_clearly_and_the_push_succeeds_on_retry"]),
    ("GRADIENT_NAR_SEND_CHUNK_TIMEOUT_SECS", &["a_reader_that_stops_reading_is_cut_off_after_the_chunk_timeout", "a_stalled_reader_is_not_cut_off_before_the_chunk_timeout"]),
    ("GRADIENT_MAX_CONCURRENT_NAR_SERVES", &["downloads_beyond_the_limit_get_503_with_retry_after"]),
    ("GRADIENT_MAX_NAR_BUFFER_BYTES", &["a_download_holds_at_most_the_buffer_size"]),
    ("GRADIENT_TRUSTED_PROXIES", &["only_trusted_proxies_name_the_client_address"]),
    ("GRADIENT_LOCAL_IPS", &["priority_follows_the_client_address_and_nars_serve_byte_ranges"]),
    ("GRADIENT_ALLOW_LOCAL_REPOSITORIES", &["repositories_on_this_machine_are_refused_unless_the_operator_allows_them"]),
    ("GRADIENT_DENY_PRIVATE_NETWORKS", &["repositories_on_this_machine_are_refused_unless_the_operator_allows_them"]),
    ("GRADIENT_GITHUB_APP_ENABLE", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_APP_ID", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE", &["the_github_app_hook_needs_an_app_a_valid_key_and_a_signature"]),
    ("GRADIENT_GITHUB_APP_API_URL", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_CLIENT_ID", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE", &["the_github_app_queues_pushes_and_reports_statuses_with_a_cached_installation_token"]),
    ("GRADIENT_GITHUB_APP_WEB_URL", &["the_github_app_needs_its_id_and_files_when_enabled"]),
    ("GRADIENT_NAR_STORE", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_S3_ENDPOINT", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_S3_REGION", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_S3_ACCESS_KEY_ID", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_S3_SECRET_ACCESS_KEY_FILE", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_S3_PATH_STYLE", &["the_same_with_nars_on_an_s3_compatible_server"]),
    ("GRADIENT_LOCAL_WORKER_ID", &["the_co_located_worker_is_registered_in_every_new_organization"]),
    ("GRADIENT_LOCAL_WORKER_TOKEN_FILE", &["the_co_located_worker_is_registered_in_every_new_organization"]),
    // Refused at start-up until they work (`config::UNSUPPORTED`).
    ("GRADIENT_EMAIL_ENABLE", &["registration_mails_a_link_that_verifies_the_address_before_login", "email_needs_a_server_and_a_sender_and_verification_needs_email"]),
    ("GRADIENT_EMAIL_REQUIRE_VERIFICATION", &["registration_mails_a_link_that_verifies_the_address_before_login", "email_needs_a_server_and_a_sender_and_verification_needs_email"]),
    ("GRADIENT_EMAIL_SMTP_HOST", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_EMAIL_SMTP_PORT", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_EMAIL_SMTP_USERNAME", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_EMAIL_SMTP_PASSWORD_FILE", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_EMAIL_FROM_ADDRESS", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_EMAIL_FROM_NAME", &["registration_mails_a_link_that_verifies_the_address_before_login"]),
    ("GRADIENT_OIDC_ENABLE", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again", "oidc_settings_are_checked"]),
    ("GRADIENT_OIDC_REQUIRED", &["required_oidc_refuses_password_login_and_registration_and_needs_a_working_provider", "oidc_settings_are_checked"]),
    ("GRADIENT_OIDC_CLIENT_ID", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again", "oidc_settings_are_checked"]),
    ("GRADIENT_OIDC_CLIENT_SECRET_FILE", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again"]),
    ("GRADIENT_OIDC_DISCOVERY_URL", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again", "oidc_settings_are_checked"]),
    ("GRADIENT_OIDC_SCOPES", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again"]),
    ("GRADIENT_OIDC_ICON_URL", &["oidc_sign_in_through_a_real_provider_makes_an_account_and_signs_in_as_it_again", "oidc_settings_are_checked"]),
    ("GRADIENT_DELETE_STATE", &["sqlite_declarative_state", "postgres_declarative_state"]),
    ("GRADIENT_STATE_FILE", &["sqlite_declarative_state", "postgres_declarative_state", "an_invalid_state_document_stops_start_up"]),
    ("GRADIENT_REPORT_ERRORS", &["internal_errors_are_reported_without_secrets", "error_reports_need_both_settings_and_the_defaults_start"]),
    ("GRADIENT_SENTRY_DSN", &["internal_errors_are_reported_without_secrets", "error_reports_need_both_settings_and_the_defaults_start"]),
    // Worker.
    ("GRADIENT_SERVER_URL", &["a_registered_worker_connects_and_deleting_its_registration_disconnects_it"]),
    ("GRADIENT_WORKER_ID", &["two_workers_evaluate_and_build_a_flake_into_the_signed_cache"]),
    ("GRADIENT_PEERS_FILE", &["wrong_tokens_unknown_workers_and_malformed_peers_files_are_refused", "the_wildcard_peer_answers_any_challenge"]),
    ("GRADIENT_CA_FILE", &["a_worker_dials_wss_through_a_tls_terminator_and_builds_a_flake_pushing_over_https", "an_unreadable_or_empty_ca_file_stops_the_worker_at_start_naming_the_variable", "the_server_dials_a_listening_worker_over_wss_trusting_its_ca_file"]),
    ("GRADIENT_STATE_DIR", &["a_state_dir_created_here_is_owner_only"]),
    ("GRADIENT_CAPABILITIES_FETCH", &["two_workers_evaluate_and_build_a_flake_into_the_signed_cache", "capability_decides_the_kind_of_job"]),
    ("GRADIENT_CAPABILITIES_EVAL", &["two_workers_evaluate_and_build_a_flake_into_the_signed_cache", "capability_decides_the_kind_of_job"]),
    ("GRADIENT_CAPABILITIES_BUILD", &["two_workers_evaluate_and_build_a_flake_into_the_signed_cache", "capability_decides_the_kind_of_job"]),
    ("GRADIENT_CAPABILITIES_SIGN", &["welcome_carries_the_anded_capabilities_and_heartbeat_settings", "signing_and_federating_refuse_to_start_saying_why"]),
    ("GRADIENT_CAPABILITIES_FEDERATE", &["signing_and_federating_refuse_to_start_saying_why"]),
    ("GRADIENT_MAX_CONCURRENT_BUILDS", &["defaults_and_values", "slots_bound_what_a_worker_runs"]),
    ("GRADIENT_EVAL_WORKERS", &["evaluator_processes_are_at_least_one", "an_evaluation_is_split_between_evaluator_processes", "an_evaluator_process_is_replaced_after_its_evaluations", "evaluator_processes_work_side_by_side_and_split_their_evaluations"]),
    ("GRADIENT_MAX_CONCURRENT_EVALUATIONS", &["slots_bound_what_a_worker_runs"]),
    ("GRADIENT_MAX_EVALUATIONS_PER_WORKER", &["evaluations_per_evaluator_process_are_read_zero_meaning_never", "an_evaluator_process_is_replaced_after_its_evaluations"]),
    ("GRADIENT_MAX_NIXDAEMON_CONNECTIONS", &["the_nix_daemon_connections_bound_is_at_least_one", "never_more_nix_processes_than_the_bound_over_all_clones", "a_worker_runs_no_more_nix_processes_at_once_than_its_bound"]),
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
async fn error_reports_need_both_settings_and_the_defaults_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Error reports need both settings: one alone is refused, never silently off or sent elsewhere.
    for (var, value) in [
        ("GRADIENT_REPORT_ERRORS", "true"),
        ("GRADIENT_SENTRY_DSN", "https://key@sentry.example.com/1"),
    ] {
        let out = start_failure(dir.path(), &[(var, value)]);
        let lines: Vec<_> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}={value}: one line, got:\n{out}");
        assert!(lines[0].contains(&format!("{var}: ")), "{var}={value}: {out}");
    }
    // Their defaults (what the NixOS module writes when they are left alone) start.
    let server = Server::start(
        dir.path(),
        &[
            ("GRADIENT_OIDC_ENABLE", "false"),
            ("GRADIENT_OIDC_REQUIRED", "false"),
            ("GRADIENT_OIDC_SCOPES", "openid,email,profile"),
            ("GRADIENT_REPORT_ERRORS", "false"),
        ],
    )
    .await;
    server.stop();
}

/// Runs a binary for `run` with these variables; answers what it printed on stderr.
fn output_of(binary: &Path, vars: &[(&str, &str)], run: Duration) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr");
    let mut cmd = crate::harness::tied(binary);
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
    crate::harness::kill_group(&mut child);
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

/// The environment the process `pid` runs with now (after any `exec`), as `NAME=value` lines.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The server gives the memory it frees back to the system at once (mimalloc's purge delay 0: an idle server
/// otherwise kept ~6 MB freed at start, and a sign-in's 19 MiB, until the allocator next ran), by starting
/// itself again with the variable set; an operator's own value is kept, and the server still answers.
#[tokio::test]
async fn the_server_runs_with_freed_memory_returned_at_once_unless_the_operator_chose_a_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    for sub in ["default", "chosen"] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
    }
    let server = Server::start(&dir.path().join("default"), &[]).await;
    let env = environment_of(server.pid());
    assert!(env.contains(&"MIMALLOC_PURGE_DELAY=0".to_owned()), "{env:?}");
    // Still named after its binary (what `ps`, `pgrep` and the journal show), not after `/proc/self/exe`.
    let name = std::fs::read_to_string(format!("/proc/{}/comm", server.pid())).expect("comm");
    assert_eq!(name.trim(), "gradient-server");
    assert!(
        env.iter().any(|v| v.starts_with("GRADIENT_BASE_DIR=")),
        "the rest of the environment is kept"
    );
    server.stop();
    let server = Server::start(&dir.path().join("chosen"), &[("MIMALLOC_PURGE_DELAY", "250")]).await;
    let env = environment_of(server.pid());
    assert!(env.contains(&"MIMALLOC_PURGE_DELAY=250".to_owned()), "{env:?}");
    assert!(!env.contains(&"MIMALLOC_PURGE_DELAY=0".to_owned()));
    server.stop();
}
