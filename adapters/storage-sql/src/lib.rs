//! Gradient's storage port ([`gradient_domain::ports::Storage`]) on SQLite (the embedded default) and
//! PostgreSQL, with identical behaviour on both.
//!
//! * [`connect`] picks the engine from the URL scheme (`sqlite://<path>`, `postgres://`, `postgresql://`),
//!   opens two connection pools — the main one (scheduler, workers, cache) and a smaller one for the HTTP
//!   API, reached through [`SqlStorage::for_web`] — and runs the migrations (`migrations/sqlite`,
//!   `migrations/postgres`).
//! * Queries over a list of values (`IN ($2, $3, …)`), and multi-row writes (`VALUES (…), (…)`), bind at most
//!   500 values each (`BINDS_PER_STATEMENT`; far below both engines'
//!   limits on bound parameters, 65,535 on PostgreSQL) and are not kept prepared (`persistent(false)`): their
//!   text changes with the list's length, and sqlx keeps up to 100 prepared statements per connection.
//! * Every query is written once, with `$1, $2…` placeholders and `Uuid` / `DateTime<Utc>` binds that both
//!   engines understand; the `with_pool!` macro runs the same body against whichever pool is active.
//! * The schema enforces the rules: unique constraints (named the same on both engines) become
//!   `Conflict("<what>")`, a missing referenced row becomes `NotFound`, cascades delete what an
//!   organization or cache owns, and a custom role still held by a member cannot be deleted.
//! * The job queue's state changes are single conditional `UPDATE`s (compare-and-set), and build-once is a
//!   partial unique index over active jobs.
//! * Sizes (`u64` in the domain) are stored as signed 64-bit integers; a value that does not fit either way
//!   is reported as `Failed`.
//! * Rows that do not decode into domain types (an invalid name, bad JSON) are reported as `Failed`.

mod actions;
mod audit;
mod cache_contents;
mod caches;
mod evaluations;
mod identities;
mod integrations;
mod mailing;
mod meta;
mod orgs;
mod projects;
mod queue;
mod state;
mod users;
mod workers;

use gradient_domain::ports::StorageError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

type Result<T> = std::result::Result<T, StorageError>;

/// How long an SQLite connection waits for another writer before giving up. Generous: on a loaded machine a
/// writer's commit with its WAL checkpoint can take seconds, and a request that waits is better than one that
/// fails with "database is locked" (seen once with 5 s in a contract scenario while the whole suite ran).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Each SQLite connection's page cache, in KiB (SQLite's default is 2,000). The pools grow to 40-odd
/// connections under load, each with its own cache in the server's memory (up to 48 × 2 MB with the default
/// pool sizes); the operating system caches the database file for all of them, and in WAL mode a
/// connection's cache is emptied whenever another connection has written, which a CI server's connections do
/// all the time: a large one per connection mostly holds pages that will be thrown away.
const SQLITE_CACHE_KIB: u32 = 256;

/// How long a SQLite connection lives (then it is closed, and opened again only if the pool needs it). Each
/// is a thread of this process with its own copy of the schema (about 0.2 MB for Gradient's 35 tables), page
/// cache and prepared statements (0.4–0.5 MB once used): a burst of pushes opened dozens, which otherwise
/// stayed for sqlx's 30-minute default lifetime (its idle timeout never fires: the pool hands idle
/// connections out in turn, so background queries keep them all used). The pool checks its idle connections
/// once per lifetime, so a burst's connections are gone 15–30 s after it. Opening one and reading the schema
/// costs about 2 ms: a busy pool of 16 reopens about one connection a second.
pub const SQLITE_CONNECTION_LIFETIME: Duration = Duration::from_secs(15);

/// Opens a transaction that will write. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a
/// deferred transaction that reads and then writes cannot wait for another connection's write — SQLite refuses
/// that upgrade at once with "database is locked", without its busy timeout — so any read-then-write
/// transaction failed whenever another connection wrote at the same moment. PostgreSQL's `BEGIN` is kept.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send
    {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = std::result::Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send
    {
        self.begin()
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection limits of the two pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    /// Main pool (scheduler, worker connections, cache): most connections.
    pub max: u32,
    /// Main pool: connections kept open when idle.
    pub min: u32,
    /// Web pool (HTTP API): most connections.
    pub web_max: u32,
    /// Web pool: connections kept open when idle.
    pub web_min: u32,
}

impl Default for PoolSizes {
    fn default() -> Self {
        Self {
            max: 32,
            min: 2,
            web_max: 16,
            web_min: 1,
        }
    }
}

/// One engine's connection pool.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// One pool's connections (see [`SqlStorage::pool_use`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUse {
    pub name: &'static str,
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// The storage port on SQL. Cheap to clone; clones share the pools.
#[derive(Clone, Debug)]
pub struct SqlStorage {
    /// The pool this handle's queries use: `main` or `web`.
    pub(crate) pool: Pool,
    main: Pool,
    web: Pool,
    /// Whether `pool` is the web pool.
    on_web: bool,
}

/// Runs `$body` with `$p` bound to the active pool, whichever engine it is: `with_pool!(self, |p| …)`. The
/// body is compiled once per engine, so the same query text and binds serve both. (It looks like a closure so
/// rustfmt formats it; it is not one: `$body` is pasted into each arm of a `match`.)
macro_rules! with_pool {
    ($storage:expr, |$p:ident| $body:expr) => {
        match &$storage.pool {
            $crate::Pool::Sqlite($p) => $body,
            $crate::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Connects to the database named by `url` and brings its schema up to date.
///
/// `sqlite://<path>` creates the file if it is missing and uses WAL journaling, foreign keys and a busy
/// timeout; `postgres://…` / `postgresql://…` take the usual libpq-style URL.
pub async fn connect(url: &str, pools: PoolSizes) -> Result<SqlStorage> {
    let (main, web) = if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StorageError::Unavailable(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            // A negative size is in KiB.
            .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));
        create_private_file(options.get_filename())?;
        let open = |max: u32, min: u32| {
            SqlitePoolOptions::new()
                .max_connections(max.max(1))
                .min_connections(min.min(max))
                .max_lifetime(SQLITE_CONNECTION_LIFETIME)
        };
        let main = open(pools.max, pools.min)
            .connect_with(options.clone())
            .await
            .map_err(connecting)?;
        SQLITE_MIGRATIONS.run(&main).await.map_err(migrating)?;
        let web = open(pools.web_max, pools.web_min)
            .connect_with(options)
            .await
            .map_err(connecting)?;
        (Pool::Sqlite(main), Pool::Sqlite(web))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StorageError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        let open = |max: u32, min: u32| {
            PgPoolOptions::new()
                .max_connections(max.max(1))
                .min_connections(min.min(max))
        };
        let main = open(pools.max, pools.min)
            .connect_with(options.clone())
            .await
            .map_err(connecting)?;
        POSTGRES_MIGRATIONS.run(&main).await.map_err(migrating)?;
        let web = open(pools.web_max, pools.web_min)
            .connect_with(options)
            .await
            .map_err(connecting)?;
        (Pool::Postgres(main), Pool::Postgres(web))
    } else {
        // Only the scheme is echoed: the rest of the URL may hold a password.
        let scheme = url.split_once(':').map_or("(none)", |(scheme, _)| scheme);
        return Err(StorageError::Unavailable(format!(
            "unsupported database URL scheme '{scheme}': use sqlite://<path> or postgres://…"
        )));
    };
    Ok(SqlStorage {
        pool: main.clone(),
        main,
        web,
        on_web: false,
    })
}

impl SqlStorage {
    /// A handle whose queries use the web pool, so HTTP traffic cannot starve the scheduler and workers.
    pub fn for_web(&self) -> SqlStorage {
        SqlStorage {
            pool: self.web.clone(),
            main: self.main.clone(),
            web: self.web.clone(),
            on_web: true,
        }
    }

    /// `"web"` for a handle from [`Self::for_web`], `"main"` otherwise.
    pub fn pool_name(&self) -> &'static str {
        if self.on_web { "web" } else { "main" }
    }

    /// Each pool (`main`, `web`) with its open and idle connections and its maximum, for the server's metrics.
    pub fn pool_use(&self) -> [PoolUse; 2] {
        let of = |name, pool: &Pool| match pool {
            Pool::Sqlite(p) => PoolUse {
                name,
                open: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            },
            Pool::Postgres(p) => PoolUse {
                name,
                open: p.size(),
                idle: p.num_idle() as u32,
                max: p.options().get_max_connections(),
            },
        };
        [of("main", &self.main), of("web", &self.web)]
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Closes both pools (for every handle sharing them), waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.main.close().await;
        self.web.close().await;
    }
}

/// Creates a missing SQLite database file owner-only (0600) before SQLite opens it, so the database (and its
/// `-wal` and `-shm` files, which SQLite creates with the database file's mode) are never readable by others,
/// whatever the umask. An existing file is left as it is; in-memory databases have no file.
fn create_private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" || path.exists() {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StorageError::Unavailable(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))),
    }
}

fn connecting(e: sqlx::Error) -> StorageError {
    StorageError::Unavailable(format!("connecting to the database: {e}"))
}

fn migrating(e: sqlx::migrate::MigrateError) -> StorageError {
    StorageError::Unavailable(format!("migrating the database: {e}"))
}

/// Unique constraints and what a violation of each means: (constraint name on PostgreSQL, the columns
/// SQLite names in "UNIQUE constraint failed: …", the conflict reported).
const UNIQUE_RULES: &[(&str, &str, &str)] = &[
    ("users_pkey", "users.id", "user id"),
    ("sessions_pkey", "sessions.id", "session id"),
    ("api_keys_pkey", "api_keys.id", "api key id"),
    ("orgs_pkey", "orgs.id", "org id"),
    ("roles_pkey", "roles.id", "role id"),
    ("projects_pkey", "projects.id", "project id"),
    ("caches_pkey", "caches.id", "cache id"),
    ("users_username_key", "users.username", "username"),
    ("users_email_key", "users.email", "email"),
    ("orgs_name_key", "orgs.name", "org name"),
    ("roles_name_key", "roles.org_id, roles.name_key", "role name"),
    ("projects_name_key", "projects.org_id, projects.name", "project name"),
    ("caches_name_key", "caches.name", "cache name"),
    ("api_keys_hash_key", "api_keys.hash", "api key"),
    ("email_tokens_pkey", "email_tokens.hash", "email token"),
    ("worker_registrations_pkey", "worker_registrations.peer_id", "peer id"),
    (
        "worker_registrations_worker_key",
        "worker_registrations.org_id, worker_registrations.worker_id",
        "worker registration",
    ),
    // `enqueue_job` inserts with ON CONFLICT DO NOTHING and reports a taken id itself; listed for completeness.
    ("jobs_pkey", "jobs.id", "job id"),
    ("evaluations_pkey", "evaluations.id", "evaluation id"),
    ("status_reports_id_key", "status_reports.id", "status report id"),
    ("actions_pkey", "actions.id", "action id"),
    ("actions_name_key", "actions.project_id, actions.name", "action name"),
    ("action_deliveries_pkey", "action_deliveries.id", "delivery id"),
    // `put_github_installation` replaces by id and deletes the account's other installation first; listed
    // for completeness.
    (
        "oidc_identities_pkey",
        "oidc_identities.issuer, oidc_identities.subject",
        "oidc identity",
    ),
    ("oidc_flows_pkey", "oidc_flows.state", "oidc flow"),
    (
        "github_installations_account_key",
        "github_installations.account",
        "github installation account",
    ),
];

/// Maps a database error: unique violation → `Conflict(what)`, foreign key violation → `NotFound`; the
/// database out of reach (I/O, TLS, the pool, a crashed connection) → `Unavailable`, which loops and worker
/// reports retry; anything else (a refused statement, a value that does not decode) → `Failed`, which retrying
/// would not cure.
pub(crate) fn db_error(e: sqlx::Error) -> StorageError {
    if let sqlx::Error::Database(d) = &e {
        match d.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                let sqlite_columns = d.message().strip_prefix("UNIQUE constraint failed: ");
                let what = UNIQUE_RULES
                    .iter()
                    .find(|(pg, sqlite, _)| d.constraint() == Some(*pg) || sqlite_columns == Some(*sqlite))
                    .map_or("unique constraint", |(_, _, what)| *what);
                return StorageError::Conflict(what.to_owned());
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => return StorageError::NotFound,
            _ => {}
        }
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StorageError::Unavailable(e.to_string()),
        // A server shutting down or restarting answers with an error of its own (PostgreSQL's class 57P,
        // 08: connection exceptions) rather than a closed socket.
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) => {
            StorageError::Unavailable(e.to_string())
        }
        // Contention that passes: PostgreSQL's deadlock (40P01) and serialization failure (40001), SQLite's
        // busy and locked (primary codes 5 and 6, extended codes in the bits above). Tried again, it goes
        // through: unavailable, not failed (a worker's reports are then kept and sent again).
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| transient(&c)) => {
            StorageError::Unavailable(e.to_string())
        }
        _ => StorageError::Failed(e.to_string()),
    }
}

/// Whether a database error code is contention that passes when tried again (see `db_error`).
/// PostgreSQL's codes are SQLSTATEs, five characters; SQLite's are numbers below 10,000.
fn transient(code: &str) -> bool {
    match code.len() {
        5 => code == "40P01" || code == "40001",
        _ => code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
    }
}

/// How many parameters one statement binds at most. Far below both engines' limits (65,535 on PostgreSQL), and
/// small for a reason of SQLite's: it looks each numbered parameter up by name in a list (`$N` is a named
/// parameter there), when the statement is parsed and again when a value is bound, so a statement's cost grows
/// with the square of its parameters (6,000 of them took longer than the same rows in a dozen statements).
pub(crate) const BINDS_PER_STATEMENT: usize = 500;

/// How many rows of `width` parameters one statement takes, beside `shared` parameters bound once.
pub(crate) fn rows_per_statement(width: usize, shared: usize) -> usize {
    (BINDS_PER_STATEMENT.saturating_sub(shared) / width.max(1)).max(1)
}

/// `$first, $first+1, …`: `n` numbered placeholders, for `IN (…)`.
pub(crate) fn placeholders(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, …), (…), …`: `rows` groups of `width` numbered placeholders, for a multi-row `VALUES`.
pub(crate) fn value_rows(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(width, first + r * width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stored value that does not decode into its domain type.
/// A size, count or id as stored: a signed 64-bit integer on both engines.
pub(crate) fn db_size(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StorageError::Failed(format!("{what} {v} is too large for the database")))
}

/// A stored size, count or id read back.
pub(crate) fn stored_size(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|e| corrupt(what, e))
}

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Failed(format!("stored {what} is invalid: {e}"))
}

/// Parses a stored name.
pub(crate) fn stored_name(s: &str, what: &'static str) -> Result<gradient_domain::Name> {
    gradient_domain::Name::parse_as(s, what).map_err(|e| corrupt(what, e))
}

/// Decodes a stored JSON document.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

/// Encodes a value as a JSON document for storage.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StorageError::Failed(format!("encoding a JSON column: {e}")))
}

/// Converts a stored count that must fit a `u32`.
pub(crate) fn stored_u32(v: Option<i64>, what: &str) -> Result<Option<u32>> {
    v.map(|v| u32::try_from(v).map_err(|e| corrupt(what, e))).transpose()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn sqlite_connections_of_both_pools_keep_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("gradient.db").display());
        let storage = super::connect(&url, super::PoolSizes::default()).await.unwrap();
        for handle in [&storage, &storage.for_web()] {
            let super::Pool::Sqlite(pool) = &handle.pool else {
                panic!("an SQLite pool")
            };
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(pool).await.unwrap();
            assert_eq!(size, -i64::from(super::SQLITE_CACHE_KIB), "{}", handle.pool_name());
        }
    }

    #[test]
    fn contention_is_told_from_other_database_errors() {
        // SQLite: busy (5), locked (6) and their extended codes (busy_snapshot 517, locked_sharedcache 262,
        // busy_timeout 773); PostgreSQL: deadlock and serialization failure.
        for code in ["5", "6", "517", "262", "773", "40P01", "40001"] {
            assert!(super::transient(code), "{code}");
        }
        // SQLite's constraint (19, 2067), PostgreSQL's unique violation, syntax error and truncation.
        for code in ["19", "2067", "23505", "42601", "22001"] {
            assert!(!super::transient(code), "{code}");
        }
    }
}
