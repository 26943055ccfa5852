//! What caches hold: NAR file records and cached paths (narinfos).

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, db_size, from_json, stored_size, to_json, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::CacheId;
use gradient_domain::model::{CachedPath, Compression, NarFile, Timestamp};
use gradient_domain::ports::storage::{CacheContents, Result};
use std::collections::BTreeSet;
use uuid::Uuid;

macro_rules! nar_file_columns {
    () => {
        "cache_id, url, compression, file_hash, file_size, nar_hash, nar_size, created_at"
    };
}

macro_rules! cached_path_columns {
    () => {
        "cache_id, hash_part, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, \
         deriver, system, ca, created_at, last_fetched_at"
    };
}

fn stored_compression(s: &str) -> Result<Compression> {
    Compression::parse(s).ok_or_else(|| corrupt("compression", s))
}

#[derive(sqlx::FromRow)]
struct NarFileRow {
    cache_id: Uuid,
    url: String,
    compression: String,
    file_hash: String,
    file_size: i64,
    nar_hash: String,
    nar_size: i64,
    created_at: DateTime<Utc>,
}

impl NarFileRow {
    fn into_nar_file(self) -> Result<NarFile> {
        Ok(NarFile {
            cache_id: CacheId(self.cache_id),
            compression: stored_compression(&self.compression)?,
            url: self.url,
            file_hash: self.file_hash,
            file_size: stored_size(self.file_size, "nar file size")?,
            nar_hash: self.nar_hash,
            nar_size: stored_size(self.nar_size, "nar size")?,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CachedPathRow {
    cache_id: Uuid,
    hash_part: String,
    store_path: String,
    url: String,
    compression: String,
    file_hash: String,
    file_size: i64,
    nar_hash: String,
    nar_size: i64,
    refs: String,
    deriver: Option<String>,
    system: Option<String>,
    ca: Option<String>,
    created_at: DateTime<Utc>,
    last_fetched_at: DateTime<Utc>,
}

impl CachedPathRow {
    fn into_cached_path(self) -> Result<CachedPath> {
        Ok(CachedPath {
            cache_id: CacheId(self.cache_id),
            compression: stored_compression(&self.compression)?,
            hash_part: self.hash_part,
            store_path: self.store_path,
            url: self.url,
            file_hash: self.file_hash,
            file_size: stored_size(self.file_size, "cached path file size")?,
            nar_hash: self.nar_hash,
            nar_size: stored_size(self.nar_size, "cached path nar size")?,
            references: from_json(&self.refs, "cached path references")?,
            deriver: self.deriver,
            system: self.system,
            ca: self.ca,
            created_at: self.created_at,
            last_fetched_at: self.last_fetched_at,
        })
    }
}

const PUT_NAR_FILE: &str = concat!(
    "INSERT INTO nar_files (",
    nar_file_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
    "ON CONFLICT (cache_id, url) DO UPDATE SET compression = excluded.compression, ",
    "file_hash = excluded.file_hash, file_size = excluded.file_size, nar_hash = excluded.nar_hash, ",
    "nar_size = excluded.nar_size, created_at = excluded.created_at"
);

const PUT_CACHED_PATH: &str = concat!(
    "INSERT INTO cached_paths (",
    cached_path_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ",
    "ON CONFLICT (cache_id, hash_part) DO NOTHING"
);

fn nar_file_sizes(file: &NarFile) -> Result<(i64, i64)> {
    Ok((
        db_size(file.file_size, "nar file size")?,
        db_size(file.nar_size, "nar size")?,
    ))
}

fn bind_nar_file<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    file: &'q NarFile,
    file_size: i64,
    nar_size: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(file.cache_id.0)
        .bind(file.url.as_str())
        .bind(file.compression.as_str())
        .bind(file.file_hash.as_str())
        .bind(file_size)
        .bind(file.nar_hash.as_str())
        .bind(nar_size)
        .bind(file.created_at)
}

/// A cached path's values that are converted before binding.
struct CachedPathValues {
    file_size: i64,
    nar_size: i64,
    refs: String,
}

impl CachedPathValues {
    fn of(path: &CachedPath) -> Result<Self> {
        Ok(Self {
            file_size: db_size(path.file_size, "cached path file size")?,
            nar_size: db_size(path.nar_size, "cached path nar size")?,
            refs: to_json(&path.references)?,
        })
    }

    fn bind<'q, DB: sqlx::Database>(
        &'q self,
        q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
        path: &'q CachedPath,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
    where
        Uuid: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        q.bind(path.cache_id.0)
            .bind(path.hash_part.as_str())
            .bind(path.store_path.as_str())
            .bind(path.url.as_str())
            .bind(path.compression.as_str())
            .bind(path.file_hash.as_str())
            .bind(self.file_size)
            .bind(path.nar_hash.as_str())
            .bind(self.nar_size)
            .bind(self.refs.as_str())
            .bind(path.deriver.as_deref())
            .bind(path.system.as_deref())
            .bind(path.ca.as_deref())
            .bind(path.created_at)
            .bind(path.last_fetched_at)
    }
}

impl CacheContents for SqlStorage {
    async fn put_nar_file(&self, file: &NarFile) -> Result<()> {
        // A missing cache fails the foreign key: NotFound.
        let (file_size, nar_size) = nar_file_sizes(file)?;
        with_pool!(self, |p| bind_nar_file(
            sqlx::query(PUT_NAR_FILE),
            file,
            file_size,
            nar_size
        )
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(db_error)
    }

    async fn put_nar_files(&self, files: &[NarFile]) -> Result<()> {
        // One statement per file in one transaction: the text (and its prepared statement) stays the same
        // whatever the batch size, far from any limit on bound parameters.
        if files.is_empty() {
            return Ok(());
        }
        let sizes = files.iter().map(nar_file_sizes).collect::<Result<Vec<_>>>()?;
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            for (file, (file_size, nar_size)) in files.iter().zip(&sizes) {
                bind_nar_file(sqlx::query(PUT_NAR_FILE), file, *file_size, *nar_size)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn nar_file(&self, cache: CacheId, url: &str) -> Result<Option<NarFile>> {
        let sql = concat!(
            "SELECT ",
            nar_file_columns!(),
            " FROM nar_files WHERE cache_id = $1 AND url = $2"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, NarFileRow>(sql)
            .bind(cache.0)
            .bind(url)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(NarFileRow::into_nar_file).transpose()
    }

    async fn delete_nar_file(&self, cache: CacheId, url: &str) -> Result<bool> {
        let sql = "DELETE FROM nar_files WHERE cache_id = $1 AND url = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(cache.0)
            .bind(url)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn orphan_nar_files(&self, before: Timestamp, limit: u32) -> Result<Vec<NarFile>> {
        // Ties are broken by cache and url, the same way in memory.
        let sql = concat!(
            "SELECT ",
            nar_file_columns!(),
            " FROM nar_files n WHERE n.created_at < $1 AND NOT EXISTS ",
            "(SELECT 1 FROM cached_paths c WHERE c.cache_id = n.cache_id AND c.url = n.url) ",
            "ORDER BY n.created_at, n.cache_id, n.url LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, NarFileRow>(sql)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(NarFileRow::into_nar_file).collect()
    }

    async fn put_cached_path(&self, path: &CachedPath) -> Result<bool> {
        // A missing cache fails the foreign key: NotFound. A path already there is kept as it is.
        let values = CachedPathValues::of(path)?;
        with_pool!(self, |p| values
            .bind(sqlx::query(PUT_CACHED_PATH), path)
            .execute(p)
            .await
            .map(|r| r.rows_affected() > 0))
        .map_err(db_error)
    }

    async fn put_cached_paths(&self, paths: &[CachedPath]) -> Result<Vec<bool>> {
        // As `put_nar_files`: one statement per path, in order, in one transaction.
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let values = paths.iter().map(CachedPathValues::of).collect::<Result<Vec<_>>>()?;
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut stored = Vec::with_capacity(paths.len());
            for (path, values) in paths.iter().zip(&values) {
                let done = values
                    .bind(sqlx::query(PUT_CACHED_PATH), path)
                    .execute(&mut *tx)
                    .await?;
                stored.push(done.rows_affected() > 0);
            }
            tx.commit().await?;
            Ok(stored)
        }
        .await)
        .map_err(db_error)
    }

    async fn cached_path(&self, cache: CacheId, hash_part: &str) -> Result<Option<CachedPath>> {
        let sql = concat!(
            "SELECT ",
            cached_path_columns!(),
            " FROM cached_paths WHERE cache_id = $1 AND hash_part = $2"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, CachedPathRow>(sql)
            .bind(cache.0)
            .bind(hash_part)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(CachedPathRow::into_cached_path).transpose()
    }

    async fn held_hash_parts(&self, cache: CacheId, hash_parts: &[String]) -> Result<Vec<String>> {
        let wanted: Vec<&String> = hash_parts
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut held = Vec::new();
        // Well under SQLite's and PostgreSQL's limits on bound parameters.
        for chunk in wanted.chunks(500) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT hash_part FROM cached_paths WHERE cache_id = $1 AND hash_part IN ({})",
                placeholders.join(", ")
            );
            let rows = with_pool!(self, |p| {
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(cache.0);
                for h in chunk {
                    q = q.bind(h.as_str());
                }
                q.fetch_all(p).await
            })
            .map_err(db_error)?;
            held.extend(rows);
        }
        Ok(held)
    }

    async fn nar_url_in_use(&self, cache: CacheId, url: &str) -> Result<bool> {
        let sql = "SELECT 1 FROM cached_paths WHERE cache_id = $1 AND url = $2 LIMIT 1";
        let found = with_pool!(self, |p| sqlx::query_scalar::<_, i32>(sql)
            .bind(cache.0)
            .bind(url)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn touch_cached_paths(&self, cache: CacheId, hash_parts: &[String], at: Timestamp) -> Result<u64> {
        // One statement per distinct path, in one transaction: the query text stays the same whatever the
        // batch size, and a hash part given twice counts once.
        let sql = "UPDATE cached_paths SET last_fetched_at = $3 WHERE cache_id = $1 AND hash_part = $2";
        let distinct: BTreeSet<&str> = hash_parts.iter().map(String::as_str).collect();
        if distinct.is_empty() {
            return Ok(0);
        }
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut touched = 0;
            for hash_part in &distinct {
                touched += sqlx::query(sql)
                    .bind(cache.0)
                    .bind(*hash_part)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(touched)
        }
        .await)
        .map_err(db_error)
    }

    async fn stale_cached_paths(&self, before: Timestamp, limit: u32) -> Result<Vec<CachedPath>> {
        // Ties are broken by cache and hash part, the same way in memory.
        let sql = concat!(
            "SELECT ",
            cached_path_columns!(),
            " FROM cached_paths WHERE last_fetched_at < $1 ",
            "ORDER BY last_fetched_at, cache_id, hash_part LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, CachedPathRow>(sql)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(CachedPathRow::into_cached_path).collect()
    }

    async fn delete_cached_path(&self, cache: CacheId, hash_part: &str) -> Result<bool> {
        let sql = "DELETE FROM cached_paths WHERE cache_id = $1 AND hash_part = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(cache.0)
            .bind(hash_part)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn cache_usage(&self, cache: CacheId) -> Result<(u64, u64)> {
        // SUM of BIGINT is NUMERIC on PostgreSQL: cast it back so both engines answer two 64-bit integers.
        let sql = "SELECT COUNT(*), CAST(COALESCE(SUM(file_size), 0) AS BIGINT) FROM cached_paths \
                   WHERE cache_id = $1";
        let (count, bytes) = with_pool!(self, |p| sqlx::query_as::<_, (i64, i64)>(sql)
            .bind(cache.0)
            .fetch_one(p)
            .await)
        .map_err(db_error)?;
        Ok((
            stored_size(count, "cached path count")?,
            stored_size(bytes, "cache usage")?,
        ))
    }
}
