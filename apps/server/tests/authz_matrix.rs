//! The authorization matrix: every operation of the OpenAPI document × every kind of caller, with the HTTP
//! status each must get. The table is written to what the rules of issue #11 require (see
//! `docs/security.md`); where today's server answers otherwise, the cell is listed in [`KNOWN_GAPS`]
//! (printed and tolerated until fixed, then it must leave the list). A new operation in the document without a
//! row fails the test, and so does a row or gap naming no operation.
//!
//! In-process like `tests/api.rs` (poem's TestClient over `gradient_server::app`), once on SQLite and once on
//! PostgreSQL (`GRADIENT_TEST_POSTGRES_URL`, a fresh database). Users and shared keys are made once per
//! backend; every cell gets a fresh fixture (its own organization, caches, project, evaluation, worker…), so a
//! DELETE or a create in one cell cannot change another's answer.
//!
//! The job token is a real one: the fixture's evaluation is dispatched through the domain's scheduler
//! (`state.app.dispatch`, as the server's dispatcher does) to a worker of the organization, and the token is the
//! push credential of the job it answers. The worker token is the registration token a worker logs in with.

use futures_util::StreamExt;
use gradient_domain::logs::LogBuffer;
use gradient_domain::model::Capabilities;
use gradient_domain::proto::{EvaluatedDerivation, Job, JobOutcome};
use gradient_domain::scheduler::WorkerInfo;
use gradient_domain::{OrgId, WorkerId};
use gradient_server::config::Config;
use gradient_server::state::AppState;
use poem::EndpointExt;
use poem::endpoint::BoxEndpoint;
use poem::http::{Method, StatusCode};
use poem::test::TestClient;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// The callers, in the order of the table's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// No credentials.
    Anonymous,
    /// A user who is not a member of the organization.
    Outsider,
    /// Members with the built-in roles.
    View,
    Write,
    Admin,
    /// An API key of the Admin, pinned to the organization.
    OrgKey,
    /// An API key of the Admin, limited to `view_org`.
    ViewKey,
    /// The push token of one of the organization's jobs.
    Job,
    /// A worker's registration token.
    Worker,
}

const CALLERS: [Who; 9] = [
    Who::Anonymous,
    Who::Outsider,
    Who::View,
    Who::Write,
    Who::Admin,
    Who::OrgKey,
    Who::ViewKey,
    Who::Job,
    Who::Worker,
];

/// Every operation × caller. Columns: anonymous, outsider (a user who is no member), View, Write and Admin members,
/// the Admin's key pinned to the organization, the Admin's key limited to `view_org`, a job token of the
/// organization, a worker's registration token.
///
/// The organization is private; `{cache}` is the Admin's private cache, the organization's push cache (granted by the Admin)
/// (except for subscribing, where it is another user's public cache); `{id}` is the evaluation, the build or an
/// API key of the Admin; `{peer}` a worker registration of the organization. Webhook deliveries are
/// authenticated by their signature, not by a bearer token: the organization's is signed (200 for everyone);
/// the GitHub App's answers 404 for everyone because no App is configured here.
#[rustfmt::skip]
const MATRIX: &[(&str, [u16; 9])] = &[
    //                                           anon outs view writ admn okey vkey job  wrkr
    ("POST /auth/basic/login",                  [200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST /auth/basic/register",               [200, 200, 200, 200, 200, 200, 200, 200, 200]),
    // Mail is off here: the mail operations answer so for everyone (the flows are tests/e2e/email.rs).
    ("POST /auth/email/resend",                 [422, 422, 422, 422, 422, 422, 422, 422, 422]),
    ("POST /auth/email/verify",                 [422, 422, 422, 422, 422, 422, 422, 422, 422]),
    ("POST /auth/password/forgot",              [422, 422, 422, 422, 422, 422, 422, 422, 422]),
    ("POST /auth/password/reset",               [422, 422, 422, 422, 422, 422, 422, 422, 422]),
    ("POST /auth/logout",                       [401, 200, 200, 200, 200, 422, 422, 401, 401]),
    // No OpenID Provider is configured here: single sign-on is 404 for everyone who may reach it.
    ("GET /auth/oidc/login",                    [404, 404, 404, 404, 404, 404, 404, 404, 404]),
    ("GET /auth/oidc/callback",                 [404, 404, 404, 404, 404, 404, 404, 404, 404]),
    ("GET /builds/{id}",                        [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /builds/{id}/log",                    [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /builds/{id}/log/live",               [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /caches",                             [200, 200, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /caches",                            [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("DELETE /caches/{cache}",                  [401, 404, 403, 403, 200, 403, 403, 401, 401]),
    ("GET /caches/{cache}",                     [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("PATCH /caches/{cache}",                   [401, 404, 403, 403, 200, 403, 403, 401, 401]),
    ("GET /caches/{cache}/public-key",          [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /caches/{cache}/stats",               [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /caches/{cache}/subscribers",         [401, 404, 403, 403, 200, 403, 403, 401, 401]),
    ("DELETE /caches/{cache}/subscribers/{org}", [401, 404, 403, 403, 200, 403, 403, 401, 401]),
    ("GET /config",                             [200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET /evals/{id}",                         [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /evals/{id}",                        [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("GET /evals/{id}/builds",                  [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /evals/{id}/diff",                    [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /evals/{id}/events",                  [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /evals/{id}/log",                     [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /hooks/github",                      [404, 404, 404, 404, 404, 404, 404, 404, 404]),
    ("POST /hooks/{forge}/{org}",               [200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET /health",                             [200, 200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET /orgs",                               [200, 200, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /orgs",                              [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("DELETE /orgs/{org}",                      [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /orgs/{org}",                         [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("PATCH /orgs/{org}",                       [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /orgs/{org}/forge",                   [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("PUT /orgs/{org}/forge",                   [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("DELETE /orgs/{org}/roles",                [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /orgs/{org}/roles",                   [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /orgs/{org}/roles",                  [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    // No GitHub App is configured here: its links exist for nobody (the permission rules are domain tests).
    ("GET /orgs/{org}/github-installations",    [401, 404, 404, 404, 404, 404, 404, 401, 401]),
    ("POST /orgs/{org}/github-installations",   [401, 404, 404, 404, 404, 404, 404, 401, 401]),
    ("DELETE /orgs/{org}/github-installations/{installation}", [401, 404, 404, 404, 404, 404, 404, 401, 401]),
    ("GET /orgs/{org}/push-cache",              [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("DELETE /orgs/{org}/push-cache",           [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("PUT /orgs/{org}/push-cache/{cache}",      [401, 404, 403, 403, 200, 403, 403, 401, 401]),
    ("GET /orgs/{org}/subscribe",               [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("DELETE /orgs/{org}/subscribe/{cache}",    [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("POST /orgs/{org}/subscribe/{cache}",      [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("DELETE /orgs/{org}/users",                [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /orgs/{org}/users",                   [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /orgs/{org}/users",                  [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("POST /orgs/{org}/webhook-secret",         [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    // The deploy key: members read it (anyone else gets the missing organization's 404); Admins rotate it.
    ("GET /orgs/{org}/ssh-key",                 [401, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /orgs/{org}/ssh-key/rotate",         [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /orgs/{org}/workers",                 [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /orgs/{org}/events",                  [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /orgs/{org}/overview",                [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /orgs/{org}/workers",                [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("DELETE /orgs/{org}/workers/{peer}",       [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /projects/{org}",                     [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /projects/{org}",                    [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("DELETE /projects/{org}/{project}",        [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /projects/{org}/{project}",           [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("PATCH /projects/{org}/{project}",         [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("POST /projects/{org}/{project}/evaluate", [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("GET /projects/{org}/{project}/evaluations", [404, 404, 200, 200, 200, 200, 200, 401, 401]),
    // Actions: members read (no secret), whoever may edit the project manages; `{action}` is a webhook action of
    // the project.
    ("GET /projects/{org}/{project}/actions",   [401, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /projects/{org}/{project}/actions",  [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("GET /projects/{org}/{project}/actions/{action}", [401, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("PATCH /projects/{org}/{project}/actions/{action}", [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("DELETE /projects/{org}/{project}/actions/{action}", [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("GET /projects/{org}/{project}/actions/{action}/deliveries", [401, 404, 200, 200, 200, 200, 200, 401, 401]),
    ("POST /projects/{org}/{project}/actions/{action}/test", [401, 404, 403, 200, 200, 200, 403, 401, 401]),
    ("GET /user",                               [401, 200, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /user/mail",                          [401, 200, 200, 200, 200, 200, 200, 401, 401]),
    ("PUT /user/mail",                          [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("GET /user/keys",                          [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("POST /user/keys",                         [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("DELETE /user/keys/{id}",                  [401, 404, 404, 404, 200, 403, 403, 401, 401]),
    ("GET /user/keys/permissions",              [401, 200, 200, 200, 200, 200, 200, 401, 401]),
    ("GET /user/sessions",                      [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    // With `keep_current=true`, and after every other cell (see `LAST`): it revokes the caller's other sessions.
    ("DELETE /user/sessions",                   [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    // `{id}` is a fresh session of the Admin's: another user's session is answered like a missing one.
    ("DELETE /user/sessions/{id}",              [401, 404, 404, 404, 200, 403, 403, 401, 401]),
    ("GET /orgs/{org}/audit-log",               [401, 404, 403, 403, 200, 200, 403, 401, 401]),
    ("GET /user/oidc",                          [401, 200, 200, 200, 200, 403, 403, 401, 401]),
    ("POST /user/oidc/link",                    [401, 404, 404, 404, 404, 404, 404, 401, 401]),
];

/// Operations whose cells run one at a time after all the others: revoking a user's other sessions would end the
/// fresh sessions other cells open meanwhile.
const LAST: &[&str] = &["DELETE /user/sessions"];

/// Routes outside the document (not under `/api/v1`, not JSON) × the same callers. `/metrics` is for the scraper
/// holding the metrics token (`GRADIENT_METRICS_TOKEN_FILE`, configured here) only: no user, key, job or worker
/// credential reads it (the scraper's 200 is checked apart).
#[rustfmt::skip]
const OUTSIDE_THE_DOCUMENT: &[(&str, [u16; 9])] = &[
    //                                           anon outs view writ admn okey vkey job  wrkr
    ("GET /metrics",                            [401, 401, 401, 401, 401, 401, 401, 401, 401]),
];

/// The metrics scraper's token in the matrix's server.
const METRICS_TOKEN: &str = "matrix-metrics-token-0123456789abcdef";

/// Cells where today's server does not yet do what the table requires: (operation, caller, required, actual).
/// They are printed and tolerated; any other mismatch fails, and so does a gap that is fixed (remove it here).
/// Each belongs to a rule of issue #11 that another branch implements.
#[rustfmt::skip]
const KNOWN_GAPS: &[(&str, Who, u16, u16)] = &[];

/// Cells where an anonymous caller or an outsider can tell a private thing from a missing one (status, error code
/// or message differ, names aside): (operation, caller). Tolerated and printed like [`KNOWN_GAPS`].
const KNOWN_LEAKS: &[(&str, Who)] = &[];

/// How many cells run at once on PostgreSQL, where a few at once hide the latency of its commits; SQLite writes
/// one at a time anyway and is fastest one cell after the other.
const CONCURRENT_CELLS_POSTGRES: usize = 8;

/// One cell's outcome.
struct Cell {
    /// Its fixture's number (the order cells were started in).
    n: usize,
    op: &'static str,
    who: Who,
    expected: u16,
    actual: (u16, String),
    /// How the answer about a private thing differed from the answer about a missing one.
    leak: Option<String>,
}

/// Runs the whole matrix on one backend; `database_url` is `None` for SQLite in the base directory.
async fn run_matrix(backend: &str, database_url: Option<String>, concurrent_cells: usize) {
    let started = Instant::now();
    let env = Env::new(database_url).await;
    let operations = document_operations(&env).await;
    check_table_covers(&operations);

    // Cells are independent (each has its own fixture), so they may run at once; those of `LAST` afterwards.
    let cells = |last: bool| {
        MATRIX
            .iter()
            .filter(move |(op, _)| LAST.contains(op) == last)
            .flat_map(|(op, row)| {
                CALLERS
                    .into_iter()
                    .zip(row.iter().copied())
                    .map(move |(who, want)| (*op, who, want))
            })
    };
    let env = &env;
    let run_cell = |(op, who, expected): (&'static str, Who, u16)| async move {
        let n = env.next();
        let fx = env.fixture(n, op, who).await;
        let actual = env.call_operation(&fx, op, who).await;
        // Rule: a caller who may not see a thing is answered exactly as about a missing thing.
        let leak = if matches!(who, Who::Anonymous | Who::Outsider) && names_a_thing(op) {
            let ghost = Fixture::ghost(n);
            let missing = env.call_operation(&ghost, op, who).await;
            let (seen, unseen) = (answer_shape(&actual, &fx), answer_shape(&missing, &ghost));
            (seen != unseen).then(|| format!("{seen:?} for a private thing, {unseen:?} for a missing one"))
        } else {
            None
        };
        Cell {
            n,
            op,
            who,
            expected,
            actual,
            leak,
        }
    };
    let mut results: Vec<Cell> = futures_util::stream::iter(cells(false))
        .map(run_cell)
        .buffer_unordered(concurrent_cells)
        .collect()
        .await;
    for cell in cells(true) {
        results.push(run_cell(cell).await);
    }
    results.sort_by_key(|c| c.n);

    let checked = results.len();
    let mut tolerated = Vec::new();
    let mut failures = Vec::new();
    for (op, row) in OUTSIDE_THE_DOCUMENT {
        let (method, path) = op.split_once(' ').expect("METHOD /path");
        for (who, expected) in CALLERS.into_iter().zip(row.iter().copied()) {
            let fx = env.fixture(env.next(), op, who).await;
            let status = env.outside(method, path, env.credential(&fx, who)).await;
            if status != expected {
                failures.push(format!("{op} as {who:?}: expected {expected}, got {status}"));
            }
        }
    }
    assert_eq!(
        env.outside("GET", "/metrics", Some(METRICS_TOKEN)).await,
        200,
        "the scraper reads /metrics"
    );
    let mut fixed_gaps = Vec::new();
    for Cell {
        op,
        who,
        expected,
        actual,
        leak,
        ..
    } in results
    {
        let gap = KNOWN_GAPS.iter().find(|(o, w, _, _)| *o == op && *w == who);
        match gap {
            _ if actual.0 == expected => {
                if gap.is_some() {
                    fixed_gaps.push(format!("{op} as {who:?}: now {expected} as required"));
                }
            }
            Some((_, _, required, known)) if *required == expected && *known == actual.0 => {
                tolerated.push(format!("{op} as {who:?}: required {expected}, got {}", actual.0));
            }
            _ => failures.push(format!(
                "{op} as {who:?}: expected {expected}, got {}: {}",
                actual.0,
                excerpt(&actual.1)
            )),
        }
        let known_leak = KNOWN_LEAKS.iter().any(|(o, w)| *o == op && *w == who);
        match leak {
            Some(leak) if known_leak => tolerated.push(format!("leak: {op} as {who:?}: {leak}")),
            Some(leak) => failures.push(format!("{op} as {who:?} tells private from missing: {leak}")),
            None if known_leak => fixed_gaps.push(format!(
                "{op} as {who:?}: no longer tells a private thing from a missing one (KNOWN_LEAKS)"
            )),
            None => {}
        }
    }
    println!(
        "authorization matrix on {backend}: {} operations × {} callers = {checked} cells checked in {:.1} s, \
         {} known gaps tolerated",
        MATRIX.len(),
        CALLERS.len(),
        started.elapsed().as_secs_f64(),
        tolerated.len()
    );
    for t in &tolerated {
        println!("  known gap: {t}");
    }
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!(
            "{} of {checked} cells differ from the matrix:\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    if !fixed_gaps.is_empty() {
        problems.push(format!(
            "these known gaps are fixed; remove them from KNOWN_GAPS / KNOWN_LEAKS:\n{}",
            fixed_gaps.join("\n")
        ));
    }
    assert!(problems.is_empty(), "{backend}: {}", problems.join("\n"));
}

#[tokio::test]
async fn every_operation_answers_every_caller_as_the_matrix_says_on_sqlite() {
    run_matrix("SQLite", None, 1).await;
}

#[tokio::test]
async fn every_operation_answers_every_caller_as_the_matrix_says_on_postgresql() {
    run_matrix("PostgreSQL", Some(fresh_postgres_database()), CONCURRENT_CELLS_POSTGRES).await;
}

/// The operations of the served document (`METHOD /path`), checked against the committed one.
async fn document_operations(env: &Env) -> BTreeSet<String> {
    let resp = env.client.get("/api/v1/openapi.json").send().await;
    assert_eq!(resp.0.status(), StatusCode::OK);
    let served: Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.expect("body")).expect("the document is JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi/gradient.json"))
            .expect("openapi/gradient.json"),
    )
    .expect("the committed document is JSON");
    let operations = |doc: &Value| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "delete", "patch", "head", "options", "trace"].contains(&method.as_str()) {
                    out.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        out
    };
    let (served, committed) = (operations(&served), operations(&committed));
    assert_eq!(
        served, committed,
        "the served document and openapi/gradient.json list different operations"
    );
    served
}

/// Every operation has exactly one row, every row and gap names an operation.
fn check_table_covers(operations: &BTreeSet<String>) {
    let mut rows = BTreeMap::new();
    for (op, _) in MATRIX {
        assert!(rows.insert(op.to_string(), ()).is_none(), "{op} has two rows");
    }
    let missing: Vec<_> = operations.iter().filter(|o| !rows.contains_key(*o)).collect();
    assert!(
        missing.is_empty(),
        "operations of the OpenAPI document without a row in the authorization matrix: {missing:?}"
    );
    let unknown: Vec<_> = rows.keys().filter(|o| !operations.contains(*o)).collect();
    assert!(
        unknown.is_empty(),
        "rows naming no operation of the document: {unknown:?}"
    );
    for (op, who, required, _) in KNOWN_GAPS {
        let row = MATRIX.iter().find(|(o, _)| o == op);
        let row = row.unwrap_or_else(|| panic!("the known gap {op} names no row"));
        let column = CALLERS.iter().position(|w| w == who).expect("caller");
        assert_eq!(
            row.1[column], *required,
            "the known gap {op} as {who:?} disagrees with its row"
        );
    }
}

/// Creates an empty PostgreSQL database and answers its URL (as `tests/e2e/harness.rs` does).
fn fresh_postgres_database() -> String {
    let admin = std::env::var("GRADIENT_TEST_POSTGRES_URL").expect(
        "GRADIENT_TEST_POSTGRES_URL is not set: point it at a PostgreSQL server where the user may create databases \
         (scripts/test sets it)",
    );
    let name = format!("gradient_matrix_{}", uuid::Uuid::new_v4().simple());
    let (base, query) = admin.split_once('?').map_or((admin.as_str(), ""), |(b, q)| (b, q));
    let host = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap_or("/var/run/postgresql");
    let mut psql = std::process::Command::new("psql");
    psql.args([
        "-h",
        host,
        "-d",
        "postgres",
        "-q",
        "-c",
        &format!("CREATE DATABASE {name}"),
    ]);
    if let Some(user) = query.split('&').find_map(|kv| kv.strip_prefix("user=")) {
        psql.args(["-U", user]);
    }
    let status = psql.status().expect("psql runs");
    assert!(status.success(), "CREATE DATABASE failed");
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    if query.is_empty() {
        format!("{prefix}/{name}")
    } else {
        format!("{prefix}/{name}?{query}")
    }
}

const PASSWORD: &str = "password123";

struct Account {
    name: String,
    session: String,
}

struct Env {
    client: TestClient<BoxEndpoint<'static, poem::Response>>,
    state: AppState,
    /// What each worker the fixtures connected is sent (the tests play their links).
    links: std::sync::Mutex<HashMap<WorkerId, tokio::sync::mpsc::UnboundedReceiver<gradient_server::link::Outgoing>>>,
    /// Creates the organizations (and is their first Admin).
    owner: Account,
    outsider: Account,
    view: Account,
    write: Account,
    admin: Account,
    /// Added as a View member only where an operation removes a member, and added by the operation that adds one.
    extra: Account,
    /// The Admin's key limited to `view_org`.
    view_key: String,
    counter: std::sync::atomic::AtomicUsize,
    _dir: tempfile::TempDir,
}

/// One cell's world.
#[derive(Default)]
struct Fixture {
    org: String,
    private_cache: String,
    public_cache: String,
    project: String,
    evaluation: Option<String>,
    build: Option<String>,
    /// The `.drv` of the fixture's build.
    drv: Option<String>,
    peer: Option<String>,
    worker_token: Option<String>,
    job_token: Option<String>,
    org_key: Option<String>,
    admin_key_id: Option<String>,
    webhook_secret: Option<String>,
    action: Option<String>,
}

impl Fixture {
    /// Names and ids of nothing that exists.
    fn ghost(n: usize) -> Self {
        let id = || Some(uuid::Uuid::new_v4().to_string());
        Self {
            org: format!("ghost{n}"),
            private_cache: format!("ghostcache{n}"),
            public_cache: format!("ghostpublic{n}"),
            project: "web".to_owned(),
            evaluation: id(),
            build: id(),
            drv: None,
            peer: id(),
            admin_key_id: id(),
            action: id(),
            ..Self::default()
        }
    }
}

impl Env {
    async fn new(database_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vars = HashMap::new();
        vars.insert("GRADIENT_BASE_DIR".to_owned(), dir.path().display().to_string());
        if let Some(url) = database_url {
            vars.insert("GRADIENT_DATABASE_URL".to_owned(), url);
        }
        let token_file = dir.path().join("metrics-token");
        std::fs::write(&token_file, format!("{METRICS_TOKEN}\n")).expect("metrics token");
        vars.insert(
            "GRADIENT_METRICS_TOKEN_FILE".to_owned(),
            token_file.display().to_string(),
        );
        let config = Config::from_vars(&vars).expect("config");
        let state = gradient_server::build_state(&config).await.expect("state");
        let client = TestClient::new(gradient_server::app(state.clone()).boxed());
        let mut env = Self {
            client,
            state,
            links: Default::default(),
            owner: placeholder(),
            outsider: placeholder(),
            view: placeholder(),
            write: placeholder(),
            admin: placeholder(),
            extra: placeholder(),
            view_key: String::new(),
            counter: Default::default(),
            _dir: dir,
        };
        env.owner = env.account("owner").await;
        env.outsider = env.account("outsider").await;
        env.view = env.account("viewer").await;
        env.write = env.account("writer").await;
        env.admin = env.account("admin").await;
        env.extra = env.account("extra").await;
        let key = env
            .ok(
                Method::POST,
                "/user/keys",
                Some(&env.admin.session),
                Some(json!({"name": "read-only", "permissions": ["view_org"]})),
            )
            .await;
        env.view_key = key["key"].as_str().expect("key").to_owned();
        env
    }

    fn next(&self) -> usize {
        self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    async fn account(&self, name: &str) -> Account {
        let body =
            json!({"username": name, "name": name, "email": format!("{name}@example.com"), "password": PASSWORD});
        self.ok(Method::POST, "/auth/basic/register", None, Some(body)).await;
        Account {
            name: name.to_owned(),
            session: self.login(name).await,
        }
    }

    async fn login(&self, name: &str) -> String {
        let login = json!({"loginname": name, "password": PASSWORD});
        let token = self.ok(Method::POST, "/auth/basic/login", None, Some(login)).await;
        token.as_str().expect("token").to_owned()
    }

    /// Sends a request; answers the status and the body as text.
    /// The bearer credential a caller holds (sessions, keys and tokens as in the matrix).
    fn credential<'a>(&'a self, fx: &'a Fixture, who: Who) -> Option<&'a str> {
        match who {
            Who::Anonymous => None,
            Who::Outsider => Some(self.outsider.session.as_str()),
            Who::View => Some(self.view.session.as_str()),
            Who::Write => Some(self.write.session.as_str()),
            Who::Admin => Some(self.admin.session.as_str()),
            Who::OrgKey => fx.org_key.as_deref(),
            Who::ViewKey => Some(self.view_key.as_str()),
            Who::Job => fx.job_token.as_deref(),
            Who::Worker => fx.worker_token.as_deref(),
        }
    }

    /// A request to a route outside the API document; answers the status.
    async fn outside(&self, method: &str, path: &str, token: Option<&str>) -> u16 {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, path);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.send().await.0.status().as_u16()
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> (u16, String) {
        let mut req = self.client.request(method, format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.body_json(&b);
        }
        let resp = req.send().await;
        let status = resp.0.status().as_u16();
        // A live stream may not end: its status is the answer; dropping it closes the stream.
        let streams = resp
            .0
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if streams {
            return (status, String::new());
        }
        (status, resp.0.into_body().into_string().await.expect("body"))
    }

    /// Asserts success (fixtures are made by callers who may) and answers the envelope's message.
    async fn ok(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let (status, text) = self.send(method.clone(), path, token, body, &[]).await;
        assert_eq!(status, 200, "fixture: {method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        v["message"].clone()
    }

    /// A fresh world for one cell, with what the operation and the caller need.
    async fn fixture(&self, n: usize, op: &str, who: Who) -> Fixture {
        let owner = Some(self.owner.session.as_str());
        let admin = Some(self.admin.session.as_str());
        let path = op.split_once(' ').expect("METHOD /path").1;
        let mut fx = Fixture {
            org: format!("org{n}"),
            private_cache: format!("private{n}"),
            public_cache: format!("public{n}"),
            project: "web".to_owned(),
            ..Fixture::default()
        };
        let org = self
            .ok(Method::POST, "/orgs", owner, Some(json!({"name": fx.org})))
            .await;
        let org_id = OrgId(org["id"].as_str().expect("id").parse().expect("uuid"));
        for (member, role) in [(&self.view, "View"), (&self.write, "Write"), (&self.admin, "Admin")] {
            let body = json!({"user": member.name, "role": role});
            self.ok(Method::POST, &format!("/orgs/{}/users", fx.org), owner, Some(body))
                .await;
        }
        self.ok(Method::POST, "/caches", admin, Some(json!({"name": fx.private_cache})))
            .await;
        self.ok(
            Method::PUT,
            &format!("/orgs/{}/push-cache/{}", fx.org, fx.private_cache),
            admin,
            None,
        )
        .await;
        self.ok(
            Method::POST,
            "/caches",
            owner,
            Some(json!({"name": fx.public_cache, "public": true})),
        )
        .await;
        let project = json!({"name": fx.project, "repository": "https://git.example.com/acme/web.git"});
        self.ok(Method::POST, &format!("/projects/{}", fx.org), owner, Some(project))
            .await;

        if op == "DELETE /orgs/{org}/users" {
            let body = json!({"user": self.extra.name, "role": "View"});
            self.ok(Method::POST, &format!("/orgs/{}/users", fx.org), owner, Some(body))
                .await;
        }
        if op == "DELETE /orgs/{org}/roles" {
            let body = json!({"name": "custom", "permissions": ["view_org"]});
            self.ok(Method::POST, &format!("/orgs/{}/roles", fx.org), owner, Some(body))
                .await;
        }
        if path.contains("{action}") {
            let body = json!({"name": "hook", "kind": "webhook", "url": "https://hooks.example.com/ci"});
            let action = self
                .ok(
                    Method::POST,
                    &format!("/projects/{}/{}/actions", fx.org, fx.project),
                    owner,
                    Some(body),
                )
                .await;
            fx.action = Some(action["id"].as_str().expect("id").to_owned());
        }
        if op == "POST /hooks/{forge}/{org}" {
            let secret = self
                .ok(Method::POST, &format!("/orgs/{}/webhook-secret", fx.org), owner, None)
                .await;
            fx.webhook_secret = Some(secret["secret"].as_str().expect("secret").to_owned());
        }
        if op == "DELETE /user/keys/{id}" {
            let key = self
                .ok(
                    Method::POST,
                    "/user/keys",
                    admin,
                    Some(json!({"name": format!("doomed{n}")})),
                )
                .await;
            fx.admin_key_id = Some(key["id"].as_str().expect("id").to_owned());
        }
        if op == "DELETE /user/sessions/{id}" {
            // A fresh session of the Admin's, found through its own list; kept where `{id}` is read from.
            let token = self.login(&self.admin.name).await;
            let sessions = self.ok(Method::GET, "/user/sessions", Some(&token), None).await;
            let current = sessions
                .as_array()
                .expect("sessions")
                .iter()
                .find(|s| s["current"] == true)
                .expect("the current session is listed");
            fx.admin_key_id = Some(current["id"].as_str().expect("id").to_owned());
        }
        if who == Who::OrgKey {
            let body = json!({"name": format!("pinned{n}"), "organization": fx.org});
            let key = self.ok(Method::POST, "/user/keys", admin, Some(body)).await;
            fx.org_key = Some(key["key"].as_str().expect("key").to_owned());
        }
        if path.contains("{peer}") || who == Who::Worker {
            let body = json!({"worker_id": uuid::Uuid::new_v4().to_string()});
            let reg = self
                .ok(Method::POST, &format!("/orgs/{}/workers", fx.org), owner, Some(body))
                .await;
            fx.peer = Some(reg["peer_id"].as_str().expect("peer").to_owned());
            fx.worker_token = Some(reg["token"].as_str().expect("token").to_owned());
        }
        if path.starts_with("/evals/") || path.starts_with("/builds/") || who == Who::Job {
            let build = path.starts_with("/builds/") || path == "/evals/{id}/log";
            self.evaluation(&mut fx, n, org_id, build).await;
        }
        fx
    }

    /// Queues an evaluation and hands it to a worker of the organization, as the server's dispatcher does; the
    /// job's push token is the fixture's job token. With `build`, the worker reports one derivation and its
    /// build with a log.
    async fn evaluation(&self, fx: &mut Fixture, n: usize, org: OrgId, build: bool) {
        let commit = format!("{n:040x}");
        let e = self
            .ok(
                Method::POST,
                &format!("/projects/{}/{}/evaluate", fx.org, fx.project),
                Some(&self.owner.session),
                Some(json!({"commit": commit})),
            )
            .await;
        fx.evaluation = Some(e["id"].as_str().expect("id").to_owned());
        let worker = WorkerInfo {
            id: WorkerId(uuid::Uuid::new_v4()),
            capabilities: Capabilities {
                fetch: true,
                eval: true,
                build: true,
                sign: false,
            },
            systems: vec!["x86_64-linux".into()],
            features: Vec::new(),
            max_concurrent_builds: 4,
            max_concurrent_evaluations: 4,
            queued_builds: 0,
            orgs: [org].into_iter().collect(),
            pushing: Default::default(),
        };
        let dispatched = self.dispatch(&worker).await;
        let Some(Job::Evaluate { job_id, push, .. }) = dispatched.into_iter().next() else {
            panic!("fixture: the evaluation was not dispatched to the organization's worker");
        };
        fx.job_token = Some(push.expect("the organization subscribes to a cache: jobs push").token);
        if !build {
            return;
        }
        let app = &self.state.app;
        let drv = format!("/nix/store/{}-hello.drv", nix_hash(n));
        fx.drv = Some(drv.clone());
        let derivation = EvaluatedDerivation {
            attribute: Some("packages.x86_64-linux.hello".into()),
            drv_path: drv.clone(),
            outputs: [("out".to_owned(), format!("/nix/store/{}-hello", nix_hash(n + 1)))].into(),
            system: "x86_64-linux".into(),
            required_features: Vec::new(),
            input_drvs: Vec::new(),
        };
        app.record_eval_result(job_id, worker.id, &worker.orgs, vec![derivation], Vec::new())
            .await
            .expect("eval result");
        app.record_job_finished(job_id, worker.id, &worker.orgs, JobOutcome::Success, None)
            .await
            .expect("eval finished");
        let Some(Job::Build { job_id, .. }) = self.dispatch(&worker).await.into_iter().next() else {
            panic!("fixture: the build was not dispatched");
        };
        let mut log = LogBuffer::default();
        log.append("building hello\n");
        app.record_job_finished(job_id, worker.id, &worker.orgs, JobOutcome::Success, Some(log))
            .await
            .expect("build finished");
        let builds = self
            .ok(
                Method::GET,
                &format!("/evals/{}/builds", fx.evaluation.as_deref().unwrap_or_default()),
                Some(&self.owner.session),
                None,
            )
            .await;
        fx.build = Some(builds[0]["id"].as_str().expect("build id").to_owned());
    }

    /// Connects `worker` (once) and runs dispatch rounds until it is handed something: rounds are global and
    /// fixtures run at once, so another fixture's round may be the one that hands this worker its job.
    async fn dispatch(&self, worker: &WorkerInfo) -> Vec<Job> {
        let links = &self.state.fleet.links;
        if !links.is_worker_connected(worker.id) {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let proved = worker
                .orgs
                .iter()
                .map(|o| (gradient_domain::PeerId::new(), *o))
                .collect();
            links.insert(worker.id, proved, tx);
            links.set_info(worker.id, worker.clone());
            self.links.lock().expect("links").insert(worker.id, rx);
        }
        for _ in 0..100 {
            self.state.app.dispatch().await.expect("dispatch");
            let mut jobs = Vec::new();
            if let Some(rx) = self.links.lock().expect("links").get_mut(&worker.id) {
                while let Ok(out) = rx.try_recv() {
                    if let gradient_server::link::Outgoing::Send(gradient_domain::proto::ServerMessage::Assign {
                        job,
                    }) = out
                    {
                        jobs.push(job);
                    }
                }
            }
            if !jobs.is_empty() {
                return jobs;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Vec::new()
    }

    /// Calls `op` as `who` with the fixture's names and a valid body; answers the status and the body.
    async fn call_operation(&self, fx: &Fixture, op: &str, who: Who) -> (u16, String) {
        let (method, template) = op.split_once(' ').expect("METHOD /path");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let id = if template.starts_with("/builds/") {
            fx.build.clone()
        } else if template.starts_with("/evals/") {
            fx.evaluation.clone()
        } else {
            fx.admin_key_id.clone()
        };
        let cache = if op == "POST /orgs/{org}/subscribe/{cache}" {
            &fx.public_cache
        } else {
            &fx.private_cache
        };
        let path = template
            .replace("{org}", &fx.org)
            .replace("{cache}", cache)
            .replace("{project}", &fx.project)
            .replace("{forge}", "gitlab")
            .replace("{installation}", "4242")
            .replace("{peer}", fx.peer.as_deref().unwrap_or("-"))
            .replace("{action}", fx.action.as_deref().unwrap_or("-"))
            .replace("{id}", id.as_deref().unwrap_or("-"));
        // The log stream by evaluation names its build's `.drv` in the query.
        let path = if op == "GET /evals/{id}/log" {
            format!("{path}?drv={}", fx.drv.as_deref().unwrap_or("/nix/store/none.drv"))
        } else if op == "DELETE /user/sessions" {
            // The shared sessions of the matrix's users must outlive their cell.
            format!("{path}?keep_current=true")
        } else {
            path
        };
        assert!(
            !path.contains(['{', '}']),
            "{op}: a path parameter has no value in the fixture"
        );
        let n = self.next();
        let (body, headers) = request_for(op, n, fx, self);
        // Logging out ends the session: those cells use a session of their own.
        let fresh;
        let token = match who {
            Who::Anonymous => None,
            Who::Outsider | Who::View | Who::Write | Who::Admin if op == "POST /auth/logout" => {
                let account = match who {
                    Who::Outsider => &self.outsider,
                    Who::View => &self.view,
                    Who::Write => &self.write,
                    _ => &self.admin,
                };
                fresh = self.login(&account.name).await;
                Some(fresh.as_str())
            }
            Who::Outsider => Some(self.outsider.session.as_str()),
            Who::View => Some(self.view.session.as_str()),
            Who::Write => Some(self.write.session.as_str()),
            Who::Admin => Some(self.admin.session.as_str()),
            Who::OrgKey => fx.org_key.as_deref(),
            Who::ViewKey => Some(self.view_key.as_str()),
            Who::Job => fx.job_token.as_deref(),
            Who::Worker => fx.worker_token.as_deref(),
        };
        self.send(method, &path, token, body, &headers).await
    }
}

/// Whether the operation's path names something of the organization (hooks aside: a signed delivery is
/// authenticated by its signature, which only the organization's forge has).
fn names_a_thing(op: &str) -> bool {
    op.contains('{') && !op.contains("/hooks/")
}

/// What a caller learns from an answer: its status, error code and message with the fixture's names and ids
/// replaced by placeholders.
fn answer_shape(answer: &(u16, String), fx: &Fixture) -> (u16, String, String) {
    let v: Value = serde_json::from_str(&answer.1).unwrap_or(Value::Null);
    let mut message = v["message"].as_str().unwrap_or_default().to_owned();
    let names = [
        (Some(&fx.org), "{org}"),
        (Some(&fx.private_cache), "{cache}"),
        (Some(&fx.public_cache), "{cache}"),
        (fx.evaluation.as_ref(), "{id}"),
        (fx.build.as_ref(), "{id}"),
        (fx.admin_key_id.as_ref(), "{id}"),
        (fx.peer.as_ref(), "{peer}"),
    ];
    for (name, placeholder) in names {
        if let Some(name) = name {
            message = message.replace(name.as_str(), placeholder);
        }
    }
    (answer.0, v["code"].as_str().unwrap_or_default().to_owned(), message)
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A valid request body (and headers) for each operation that takes one.
fn request_for(op: &str, n: usize, fx: &Fixture, env: &Env) -> (Option<Value>, Vec<(&'static str, String)>) {
    let body = match op {
        "POST /auth/basic/login" => json!({"loginname": env.owner.name, "password": PASSWORD}),
        "POST /auth/basic/register" => {
            json!({"username": format!("new{n}"), "name": "New", "email": format!("new{n}@example.com"), "password": PASSWORD})
        }
        "POST /auth/email/resend" => json!({"loginname": env.owner.name}),
        "POST /auth/email/verify" => json!({"token": "no-such-token"}),
        "POST /auth/password/forgot" => json!({"email": format!("{}@example.com", env.owner.name)}),
        "POST /auth/password/reset" => json!({"token": "no-such-token", "password": PASSWORD}),
        "PUT /user/mail" => json!({"evaluation_mail": false}),
        "POST /caches" => json!({"name": format!("cache{n}")}),
        "PATCH /caches/{cache}" => json!({"description": "changed"}),
        "POST /evals/{id}" => json!({"method": "abort"}),
        "POST /hooks/github" => {
            return (
                Some(json!({"zen": "ping"})),
                vec![("X-GitHub-Event", "ping".to_owned())],
            );
        }
        "POST /hooks/{forge}/{org}" => {
            let secret = fx.webhook_secret.clone().expect("webhook secret");
            let headers = vec![("X-Gitlab-Event", "Note Hook".to_owned()), ("X-Gitlab-Token", secret)];
            return (Some(json!({"object_kind": "note"})), headers);
        }
        "POST /orgs" => json!({"name": format!("neworg{n}")}),
        "PATCH /orgs/{org}" => json!({"description": "changed"}),
        "PUT /orgs/{org}/forge" => json!({"forge": "gitea", "api_url": "https://gitea.example.com", "token": "t"}),
        "DELETE /orgs/{org}/roles" => json!({"name": "custom"}),
        "POST /orgs/{org}/roles" => json!({"name": format!("role{n}"), "permissions": ["view_org"]}),
        "POST /orgs/{org}/github-installations" => json!({"installation_id": 4242, "code": "abc123"}),
        "DELETE /orgs/{org}/users" => json!({"user": env.extra.name}),
        "POST /orgs/{org}/users" => json!({"user": env.extra.name, "role": "View"}),
        "POST /orgs/{org}/workers" => json!({"worker_id": uuid::Uuid::new_v4().to_string()}),
        "POST /projects/{org}" => {
            json!({"name": format!("project{n}"), "repository": "https://git.example.com/acme/new.git"})
        }
        "PATCH /projects/{org}/{project}" => json!({"description": "changed"}),
        "POST /projects/{org}/{project}/actions" => {
            json!({"name": format!("hook{n}"), "kind": "webhook", "url": "https://hooks.example.com/new"})
        }
        "PATCH /projects/{org}/{project}/actions/{action}" => json!({"enabled": false}),
        "POST /projects/{org}/{project}/evaluate" => json!({"commit": format!("{:040x}", n + (1 << 40))}),
        "POST /user/keys" => json!({"name": format!("key{n}")}),
        _ => return (None, Vec::new()),
    };
    (Some(body), Vec::new())
}

/// A store path hash (32 characters of Nix's base-32 alphabet) unique to `n`.
fn nix_hash(n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut out = vec![b'0'; 32];
    let mut v = n;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[v % 32];
        v /= 32;
    }
    String::from_utf8(out).expect("ASCII")
}

fn placeholder() -> Account {
    Account {
        name: String::new(),
        session: String::new(),
    }
}
