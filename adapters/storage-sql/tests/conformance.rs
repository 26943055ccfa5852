//! The storage contract on both engines, plus what only a SQL adapter can get wrong: data surviving a
//! reconnect, idempotent migrations, the web pool, URL handling.
//!
//! PostgreSQL tests need `GRADIENT_TEST_POSTGRES_URL`: a URL of a server where the user may create databases
//! (each test gets a fresh one).

#![allow(clippy::unwrap_used)]

use gradient_domain::crypt::Sealed;
use gradient_domain::model::{
    Cache, CachedPath, Compression, JobId, JobKind, JobRecord, JobState, NarFile, Org, User, WorkerRegistration,
};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{CacheContents, Caches, Evaluations, Meta, Orgs, Queue, Users, Workers};
use gradient_domain::{CacheId, Email, EvaluationId, Name, OrgId, PeerId, UserId, WorkerId};
use gradient_storage_sql::{PoolSizes, SqlStorage, connect};
use sqlx::Connection;
use std::path::{Path, PathBuf};

const POSTGRES_URL_VAR: &str = "GRADIENT_TEST_POSTGRES_URL";

/// Small pools: many tests run at once.
fn pools() -> PoolSizes {
    PoolSizes {
        max: 4,
        min: 0,
        web_max: 2,
        web_min: 0,
    }
}

/// A path for a new SQLite database in a temporary directory that outlives the test.
fn sqlite_path() -> PathBuf {
    tempfile::tempdir().unwrap().keep().join("gradient.db")
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn fresh_sqlite() -> SqlStorage {
    connect(&sqlite_url(&sqlite_path()), pools()).await.unwrap()
}

fn postgres_admin_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set: point it at a PostgreSQL server where the user may create databases, \
             e.g. {POSTGRES_URL_VAR}='postgres:///postgres?host=/var/run/postgresql&user=root' \
             (scripts set it when they run the tests)"
        )
    })
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// Creates an empty database on the test server and returns its URL. Names carry the creating process's id,
/// so databases left by test processes that have exited are dropped on the way.
async fn create_postgres_database() -> String {
    let admin_url = postgres_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let stale: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'gradient_test_p%'")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    for name in stale {
        let pid = name
            .trim_start_matches("gradient_test_p")
            .split('_')
            .next()
            .unwrap_or("");
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            // Another process may be dropping it too; a failure here is harmless.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
    let name = format!(
        "gradient_test_p{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    with_database(&admin_url, &name)
}

async fn fresh_postgres() -> SqlStorage {
    connect(&create_postgres_database().await, pools()).await.unwrap()
}

mod sqlite {
    gradient_ports::storage_contract!(crate::fresh_sqlite);
}

mod postgres {
    gradient_ports::storage_contract!(crate::fresh_postgres);
}

// Adapter-specific tests.

fn user(username: &str) -> User {
    User {
        managed: false,
        id: UserId::new(),
        username: Name::parse(username).unwrap(),
        name: "Alice Example".to_owned(),
        email: Email::parse(&format!("{username}@example.com")).unwrap(),
        password_hash: None,
        email_verified: true,
        created_at: gradient_domain::model::truncate_to_micros(chrono::Utc::now()),
    }
}

fn org(name: &str, creator: UserId) -> Org {
    Org {
        managed: false,
        id: OrgId::new(),
        name: Name::parse(name).unwrap(),
        display_name: "Example".to_owned(),
        description: String::new(),
        public: false,
        created_by: creator,
        created_at: gradient_domain::model::truncate_to_micros(chrono::Utc::now()),
    }
}

/// A private cache named "main" made by `creator`.
fn main_cache(creator: UserId) -> Cache {
    Cache {
        managed: false,
        id: CacheId::new(),
        name: Name::parse("main").unwrap(),
        display_name: "Main".to_owned(),
        description: String::new(),
        public: false,
        priority: 30,
        local_priority: None,
        compression: Compression::Zstd,
        signing_key: Sealed("v1:key".to_owned()),
        created_by: creator,
        created_at: gradient_domain::model::truncate_to_micros(chrono::Utc::now()),
    }
}

/// Writes through one connection, closes it, reads back through a new one.
async fn survives_reconnect(url: &str) {
    let alice = user("alice");
    let acme = org("acme", alice.id);
    {
        let s = connect(url, pools()).await.unwrap();
        s.create_user(&alice).await.unwrap();
        s.create_org(&acme).await.unwrap();
        s.meta_init("check", "v1").await.unwrap();
        s.close().await;
    }
    let s = connect(url, pools()).await.unwrap();
    assert_eq!(s.user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(s.org_by_name(&acme.name).await.unwrap(), Some(acme.clone()));
    assert_eq!(s.members(acme.id).await.unwrap().len(), 1);
    assert_eq!(s.meta("check").await.unwrap().as_deref(), Some("v1"));
    s.close().await;
}

/// The job queue outlives the server: queued and assigned jobs, and the workers' registrations, read back
/// whole through a new connection, and the queue carries on from where it was.
async fn queue_survives_reconnect(url: &str) {
    let alice = user("alice");
    let acme = org("acme", alice.id);
    let now = gradient_domain::model::truncate_to_micros(chrono::Utc::now());
    let worker = WorkerId::new();
    let registration = WorkerRegistration {
        managed: false,
        peer_id: PeerId::new(),
        org_id: acme.id,
        worker_id: worker,
        proof_key: gradient_domain::crypt::Sealed("v1:sealed-proof-key".to_owned()),
        created_at: now,
        url: None,
    };
    let queued = JobRecord {
        id: JobId::new(),
        org_id: acme.id,
        kind: JobKind::Build {
            derivation: "/nix/store/0000000000000000000000000000000a-hello.drv".to_owned(),
            system: "x86_64-linux".to_owned(),
            required_features: vec!["kvm".to_owned()],
        },
        state: JobState::Queued,
        created_at: now,
        attempts: 1,
    };
    let evaluation = JobRecord {
        id: JobId::new(),
        kind: JobKind::Evaluate {
            evaluation_id: EvaluationId::new(),
        },
        created_at: now - chrono::TimeDelta::seconds(1),
        attempts: 0,
        ..queued.clone()
    };
    {
        let s = connect(url, pools()).await.unwrap();
        s.create_user(&alice).await.unwrap();
        s.create_org(&acme).await.unwrap();
        s.create_worker_registration(&registration).await.unwrap();
        s.enqueue_job(&queued).await.unwrap();
        s.enqueue_job(&evaluation).await.unwrap();
        assert!(s.assign_job(evaluation.id, worker, now).await.unwrap());
        s.close().await;
    }
    let s = connect(url, pools()).await.unwrap();
    assert_eq!(s.queued_jobs(10).await.unwrap(), vec![queued.clone()]);
    let assigned = JobRecord {
        state: JobState::Assigned { worker, since: now },
        ..evaluation.clone()
    };
    assert_eq!(s.jobs_assigned_to(worker).await.unwrap(), vec![assigned]);
    assert_eq!(s.worker_registrations_for(worker).await.unwrap(), vec![registration]);
    assert_eq!(
        s.enqueue_job(&JobRecord {
            id: JobId::new(),
            ..queued.clone()
        })
        .await
        .unwrap(),
        queued,
        "still built once"
    );
    assert_eq!(
        s.requeue_jobs(worker, &[evaluation.id]).await.unwrap(),
        1,
        "the worker's job is taken back after the restart"
    );
    assert_eq!(
        s.queued_jobs(10).await.unwrap(),
        vec![
            JobRecord {
                attempts: 1,
                ..evaluation
            },
            queued
        ],
        "both queued, oldest first"
    );
    s.close().await;
}

/// Connecting again runs the migrations again, which must change nothing.
async fn migrations_are_idempotent(url: &str) {
    let first = connect(url, pools()).await.unwrap();
    let second = connect(url, pools()).await.unwrap();
    let bob = user("bob");
    first.create_user(&bob).await.unwrap();
    assert_eq!(second.user(bob.id).await.unwrap(), Some(bob));
    first.close().await;
    second.close().await;
}

/// The web handle uses its own pool on the same database.
async fn web_handle_sees_the_same_data(s: SqlStorage) {
    let web = s.for_web();
    assert_eq!(web.backend(), s.backend());
    let carol = user("carol");
    s.create_user(&carol).await.unwrap();
    assert_eq!(web.user(carol.id).await.unwrap(), Some(carol.clone()));
    let dave = user("dave");
    web.create_user(&dave).await.unwrap();
    assert_eq!(s.user_by_username(&dave.username).await.unwrap(), Some(dave));
}

/// A row colliding on several unique rules reports the same one on both engines (and in memory): the id
/// first, then in the order the trait lists them.
async fn multiple_collisions_report_the_first_rule(s: SqlStorage) {
    let conflict = |what: &str| Err(StorageError::Conflict(what.to_owned()));
    let erin = user("erin");
    s.create_user(&erin).await.unwrap();
    assert_eq!(s.create_user(&erin).await, conflict("user id"));
    assert_eq!(
        s.create_user(&User {
            id: UserId::new(),
            ..erin.clone()
        })
        .await,
        conflict("username")
    );
    let acme = org("acme", erin.id);
    s.create_org(&acme).await.unwrap();
    assert_eq!(s.create_org(&acme).await, conflict("org id"));
    assert_eq!(
        s.create_org(&Org {
            id: OrgId::new(),
            ..acme.clone()
        })
        .await,
        conflict("org name")
    );
}

#[tokio::test]
async fn sqlite_data_survives_reconnect() {
    survives_reconnect(&sqlite_url(&sqlite_path())).await;
}

#[tokio::test]
async fn postgres_data_survives_reconnect() {
    survives_reconnect(&create_postgres_database().await).await;
}

#[tokio::test]
async fn sqlite_queue_survives_reconnect() {
    queue_survives_reconnect(&sqlite_url(&sqlite_path())).await;
}

#[tokio::test]
async fn postgres_queue_survives_reconnect() {
    queue_survives_reconnect(&create_postgres_database().await).await;
}

/// A fresh SQLite database with the schema as it was before migration `version` (the migrations numbered below
/// it): its URL and a pool to write old rows with.
async fn sqlite_before(version: &str) -> (String, sqlx::SqlitePool) {
    let path = sqlite_path();
    let url = sqlite_url(&path);
    let before = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < version {
            std::fs::copy(entry.path(), before.path().join(&name)).unwrap();
        }
    }
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    (url, pool)
}

/// Migration 0011 on a database written by the version before it: registrations keep their stored proof key
/// (sealed at the server's next start), and each organization gets the derivations its builds and entry points
/// use with their inputs' closure, and no other organization's.
#[tokio::test]
async fn sqlite_migration_0011_keeps_registrations_and_gives_each_organization_its_derivations() {
    let (url, pool) = sqlite_before("0011").await;
    let (a, b) = (OrgId::new(), OrgId::new());
    let (user, project, evaluation, peer) = (UserId::new(), uuid::Uuid::new_v4(), EvaluationId::new(), PeerId::new());
    let key_hex = "06dd158119b33cabff2f809a9b37c4b8054c73fec81715cd65353b1b520bcedc";
    let drv = |n: &str| format!("/nix/store/{}-{n}.drv", n.repeat(32).get(..32).unwrap().to_owned());
    let statements: Vec<(String, Vec<uuid::Uuid>)> = vec![
        (
            "INSERT INTO users (id, username, name, email, password_hash, email_verified, created_at) \
             VALUES ($1, 'u', 'u', 'u@example.com', NULL, 1, '2020-01-01T00:00:00Z')"
                .into(),
            vec![user.0],
        ),
        (
            "INSERT INTO orgs (id, name, display_name, description, public, created_by, created_at) \
             VALUES ($1, 'a', 'a', '', 0, $2, '2020-01-01T00:00:00Z'), ($3, 'b', 'b', '', 0, $2, '2020-01-01T00:00:00Z')"
                .into(),
            vec![a.0, user.0, b.0],
        ),
        (
            "INSERT INTO projects (id, org_id, name, display_name, description, repository, branch, wildcard, \
             flake_input_overrides, keep_evaluations, poll_interval_secs, active, created_by, created_at) \
             VALUES ($1, $2, 'p', 'p', '', 'https://example.com/p.git', NULL, '*', '{}', NULL, NULL, 1, $3, \
             '2020-01-01T00:00:00Z')"
                .into(),
            vec![project, a.0, user.0],
        ),
        (
            "INSERT INTO evaluations (id, project_id, commit_hash, branch, trigger_kind, status, errors, created_at, \
             updated_at) VALUES ($1, $2, 'c', NULL, 'Manual', 'Evaluating', '[]', '2020-01-01T00:00:00Z', \
             '2020-01-01T00:00:00Z')"
                .into(),
            vec![evaluation.0, project],
        ),
        (
            format!(
                "INSERT INTO derivations (drv_path, system, required_features, outputs, inputs) VALUES \
                 ('{x}', 'x86_64-linux', '[]', '{{}}', '[\"{y}\"]'), ('{y}', 'x86_64-linux', '[]', '{{}}', '[]'), \
                 ('{z}', 'x86_64-linux', '[]', '{{}}', '[]')",
                x = drv("x"),
                y = drv("y"),
                z = drv("z")
            ),
            vec![],
        ),
        (
            format!("INSERT INTO entry_points (evaluation_id, attribute, drv_path) VALUES ($1, 'x', '{}')", drv("x")),
            vec![evaluation.0],
        ),
        (
            format!(
                "INSERT INTO worker_registrations (peer_id, org_id, worker_id, token_hash, created_at) \
                 VALUES ($1, $2, $3, '{key_hex}', '2020-01-01T00:00:00Z')"
            ),
            vec![peer.0, a.0, uuid::Uuid::new_v4()],
        ),
    ];
    for (sql, binds) in statements {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in binds {
            q = q.bind(v);
        }
        q.execute(&pool).await.unwrap();
    }
    pool.close().await;

    let s = connect(&url, pools()).await.unwrap();
    let got = s.worker_registration(peer).await.unwrap().unwrap();
    assert_eq!(
        got.proof_key,
        Sealed(key_hex.to_owned()),
        "kept for the start-up step to seal"
    );
    for name in ["x", "y"] {
        let d = s.derivation(a, &drv(name)).await.unwrap();
        assert!(
            d.is_some(),
            "{name}: the entry point and its input are the organization's"
        );
    }
    assert_eq!(
        s.derivation(a, &drv("x")).await.unwrap().unwrap().inputs,
        vec![drv("y")]
    );
    assert_eq!(s.derivation(a, &drv("z")).await.unwrap(), None, "used by nobody");
    assert_eq!(
        s.derivation(b, &drv("x")).await.unwrap(),
        None,
        "not another organization's"
    );
}

/// Migration 0009 on a database written before it: a subscription becomes a grant (and the org's first granted
/// cache its push cache) only where the cache's owner created the organization and is still its Admin. A
/// subscription another tenant made to a public cache, with the owner added to her organization without asking,
/// reads the cache only while it is public and pushes nowhere.
#[tokio::test]
async fn sqlite_migration_0009_grants_only_what_the_cache_owner_made() {
    let (url, pool) = sqlite_before("0009").await;
    let (victim, mallory) = (UserId::new(), UserId::new());
    let (theirs, hers) = (OrgId::new(), OrgId::new());
    let (cache, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let t = "'2020-01-01T00:00:00Z'";
    let statements: Vec<(String, Vec<uuid::Uuid>)> = vec![
        (
            "INSERT INTO users (id, username, name, email, password_hash, email_verified, created_at) VALUES \
             ($1, 'v', 'v', 'v@example.com', NULL, 1, '2020-01-01T00:00:00Z'), \
             ($2, 'm', 'm', 'm@example.com', NULL, 1, '2020-01-01T00:00:00Z')"
                .into(),
            vec![victim.0, mallory.0],
        ),
        (
            format!(
                "INSERT INTO orgs (id, name, display_name, description, public, created_by, created_at) VALUES \
                 ($1, 'theirs', 't', '', 0, $2, {t}), ($3, 'hers', 'h', '', 0, $4, {t})"
            ),
            vec![theirs.0, victim.0, hers.0, mallory.0],
        ),
        (
            "INSERT INTO memberships (org_id, user_id, builtin_role, role_id) VALUES \
             ($1, $2, 'Admin', NULL), ($3, $4, 'Admin', NULL), ($3, $2, 'View', NULL)"
                .into(),
            vec![theirs.0, victim.0, hers.0, mallory.0],
        ),
        (
            format!(
                "INSERT INTO caches (id, name, display_name, description, public, priority, local_priority, \
                 compression, created_by, created_at) VALUES \
                 ($1, 'main', 'main', '', 1, 30, NULL, 'zstd', $2, {t}), \
                 ($3, 'zeta', 'zeta', '', 0, 30, NULL, 'zstd', $2, {t})"
            ),
            vec![cache, victim.0, other],
        ),
        (
            "INSERT INTO subscriptions (org_id, cache_id) VALUES ($1, $2), ($1, $3), ($4, $2)".into(),
            vec![theirs.0, cache, other, hers.0],
        ),
    ];
    for (sql, binds) in statements {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in binds {
            q = q.bind(v);
        }
        q.execute(&pool).await.unwrap();
    }
    pool.close().await;

    let s = connect(&url, pools()).await.unwrap();
    let flags = |subs: Vec<gradient_domain::model::SubscribedCache>| {
        subs.into_iter()
            .map(|c| (c.cache.name.to_string(), c.granted, c.push))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        flags(s.subscriptions(theirs).await.unwrap()),
        vec![("main".to_owned(), true, true), ("zeta".to_owned(), true, false)],
        "the owner's own organization: granted, and its first cache by name is its push cache"
    );
    assert_eq!(
        flags(s.subscriptions(hers).await.unwrap()),
        vec![("main".to_owned(), false, false)],
        "another tenant's subscription: no grant, no push, though she made the owner a member"
    );
}

/// A database file created by the server is readable by its owner only, and so are SQLite's WAL files.
#[tokio::test]
async fn sqlite_database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let path = sqlite_path();
    let s = connect(&sqlite_url(&path), pools()).await.unwrap();
    s.create_user(&user("alice")).await.unwrap();
    let dir = path.parent().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", entry.path().display());
        checked += 1;
    }
    assert!(checked >= 2, "the database and its WAL");
}

#[tokio::test]
async fn sqlite_migrations_are_idempotent() {
    migrations_are_idempotent(&sqlite_url(&sqlite_path())).await;
}

#[tokio::test]
async fn postgres_migrations_are_idempotent() {
    migrations_are_idempotent(&create_postgres_database().await).await;
}

#[tokio::test]
async fn sqlite_web_handle_sees_the_same_data() {
    let s = fresh_sqlite().await;
    assert_eq!(s.backend(), "sqlite");
    web_handle_sees_the_same_data(s).await;
}

#[tokio::test]
async fn postgres_web_handle_sees_the_same_data() {
    let s = fresh_postgres().await;
    assert_eq!(s.backend(), "postgres");
    web_handle_sees_the_same_data(s).await;
}

#[tokio::test]
async fn sqlite_multiple_collisions_report_the_first_rule() {
    multiple_collisions_report_the_first_rule(fresh_sqlite().await).await;
}

#[tokio::test]
async fn postgres_multiple_collisions_report_the_first_rule() {
    multiple_collisions_report_the_first_rule(fresh_postgres().await).await;
}

/// A stored row that is no longer valid in the domain is reported, not a panic.
async fn invalid_rows_fail(s: SqlStorage, url: &str) {
    let frank = user("frank");
    s.create_user(&frank).await.unwrap();
    let sql = "UPDATE users SET username = 'Not A Name' WHERE username = 'frank'";
    if s.backend() == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    match s.user(frank.id).await {
        Err(StorageError::Failed(message)) => {
            assert!(message.contains("username"), "{message}")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Many writers at once: SQLite's busy timeout makes them wait for each other instead of failing.
async fn concurrent_writers_agree(s: SqlStorage) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = if i % 2 == 0 { s.clone() } else { s.for_web() };
            tokio::spawn(async move {
                let u = user(&format!("writer{i}"));
                s.create_user(&u).await.unwrap();
                s.meta_init("secret-check", &format!("value{i}")).await.unwrap()
            })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        values.push(task.await.unwrap());
    }
    values.dedup();
    assert_eq!(values.len(), 1, "every writer reads the first value: {values:?}");
    assert_eq!(s.meta("secret-check").await.unwrap(), values.pop());
}

#[tokio::test]
async fn sqlite_invalid_rows_fail() {
    let url = sqlite_url(&sqlite_path());
    invalid_rows_fail(connect(&url, pools()).await.unwrap(), &url).await;
}

#[tokio::test]
async fn postgres_invalid_rows_fail() {
    let url = create_postgres_database().await;
    invalid_rows_fail(connect(&url, pools()).await.unwrap(), &url).await;
}

/// Sizes are stored as signed 64-bit integers: a larger one is refused as Failed and stores nothing, and
/// a negative stored one is reported, not wrapped.
async fn sizes_beyond_i64_fail(s: SqlStorage, url: &str) {
    let gina = user("gina");
    s.create_user(&gina).await.unwrap();
    let cache = main_cache(gina.id);
    let now = cache.created_at;
    s.create_cache(&cache).await.unwrap();
    let file = NarFile {
        cache_id: cache.id,
        url: "nar/huge.nar.zst".to_owned(),
        compression: Compression::Zstd,
        file_hash: "sha256:huge".to_owned(),
        file_size: u64::MAX,
        nar_hash: "sha256:huge-nar".to_owned(),
        nar_size: 1,
        created_at: now,
    };
    assert!(matches!(s.put_nar_file(&file).await, Err(StorageError::Failed(_))));
    assert_eq!(s.nar_file(cache.id, &file.url).await.unwrap(), None);
    let path = CachedPath {
        cache_id: cache.id,
        hash_part: "00000000000000000000000000000000".to_owned(),
        store_path: "/nix/store/00000000000000000000000000000000-huge".to_owned(),
        url: file.url.clone(),
        compression: Compression::Zstd,
        file_hash: file.file_hash.clone(),
        file_size: 1,
        nar_hash: file.nar_hash.clone(),
        nar_size: 1 << 63,
        references: vec![],
        deriver: None,
        system: None,
        ca: None,
        created_at: now,
        last_fetched_at: now,
    };
    assert!(matches!(s.put_cached_path(&path).await, Err(StorageError::Failed(_))));
    assert_eq!(s.cached_path(cache.id, &path.hash_part).await.unwrap(), None);

    let largest = CachedPath {
        nar_size: i64::MAX.unsigned_abs(),
        ..path.clone()
    };
    s.put_cached_path(&largest).await.unwrap();
    assert_eq!(s.cached_path(cache.id, &path.hash_part).await.unwrap(), Some(largest));
    let sql = "UPDATE cached_paths SET file_size = -1";
    if s.backend() == "sqlite" {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    match s.cached_path(cache.id, &path.hash_part).await {
        Err(StorageError::Failed(message)) => assert!(message.contains("size"), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_sizes_beyond_i64_fail() {
    let url = sqlite_url(&sqlite_path());
    sizes_beyond_i64_fail(connect(&url, pools()).await.unwrap(), &url).await;
}

#[tokio::test]
async fn postgres_sizes_beyond_i64_fail() {
    let url = create_postgres_database().await;
    sizes_beyond_i64_fail(connect(&url, pools()).await.unwrap(), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_writers_agree() {
    concurrent_writers_agree(fresh_sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_writers_agree() {
    concurrent_writers_agree(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let path = sqlite_path();
    let s = connect(&sqlite_url(&path), pools()).await.unwrap();
    assert!(path.exists(), "the database file is created");
    s.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&sqlite_url(&path)).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn unknown_url_scheme_is_a_clear_error() {
    for url in [
        "mysql://user:secret@localhost/gradient",
        "/var/lib/gradient/db.sqlite",
        "",
    ] {
        match connect(url, PoolSizes::default()).await {
            Err(StorageError::Unavailable(message)) => {
                assert!(
                    message.contains("sqlite://") && message.contains("postgres://"),
                    "{message}"
                );
                assert!(
                    !message.contains("secret"),
                    "the URL's password is not echoed: {message}"
                );
            }
            other => panic!("{url:?}: expected Unavailable, got {:?}", other.map(|s| s.backend())),
        }
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    let url = "postgres:///gradient?host=/nonexistent-socket-dir&user=nobody";
    let result = connect(
        url,
        PoolSizes {
            max: 1,
            min: 0,
            web_max: 1,
            web_min: 0,
        },
    )
    .await;
    assert!(
        matches!(result, Err(StorageError::Unavailable(_))),
        "{:?}",
        result.map(|s| s.backend())
    );
}

#[test]
fn database_name_is_replaced_in_urls() {
    let cases = [
        (
            "postgres:///postgres?host=/run/postgresql&user=root",
            "postgres:///t?host=/run/postgresql&user=root",
        ),
        ("postgres://u:p@db:5432/postgres", "postgres://u:p@db:5432/t"),
        ("postgresql://db", "postgresql://db/t"),
    ];
    for (url, want) in cases {
        assert_eq!(with_database(url, "t"), want);
    }
}

/// A transaction that reads and then writes waits for another connection's write to end, as a single write
/// does, instead of failing with "database is locked": SQLite refuses a deferred transaction's upgrade from
/// reading to writing at once, without its busy timeout, so the adapter's writing transactions start with
/// `BEGIN IMMEDIATE`. (Seen in CI: `subscribe` — a read, then an upsert — failed while the pool's other
/// connection was still rolling back the failed write before it.)
#[tokio::test]
async fn sqlite_a_read_then_write_transaction_waits_for_another_writer() {
    let path = sqlite_path();
    let url = sqlite_url(&path);
    let s = connect(&url, pools()).await.unwrap();
    let alice = user("alice");
    let acme = org("acme", alice.id);
    s.create_user(&alice).await.unwrap();
    s.create_org(&acme).await.unwrap();
    let cache = main_cache(alice.id);
    s.create_cache(&cache).await.unwrap();

    // Another connection holds the write lock for a moment.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    sqlx::query("INSERT INTO meta (name, value) VALUES ('held', 'yes')")
        .execute(&mut other)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        other
    });

    let subscription = gradient_domain::model::Subscription {
        org_id: acme.id,
        cache_id: cache.id,
        granted: true,
        push: false,
    };
    assert_eq!(s.subscribe(&subscription).await, Ok(true), "waits, then subscribes");
    release.await.unwrap().close().await.unwrap();
    assert_eq!(s.meta("held").await.unwrap().as_deref(), Some("yes"));
    s.close().await;
}
