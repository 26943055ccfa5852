//! Small installation-wide values.

use crate::{SqlStorage, corrupt, db_error, stored_size, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Meta, Result, Totals};
use gradient_domain::status::{BuildStatus, EvaluationStatus};

/// `(status, count)` rows read into statuses.
fn by_status<T>(rows: Vec<(String, i64)>, parse: fn(&str) -> Option<T>, what: &str) -> Result<Vec<(T, u64)>> {
    rows.into_iter()
        .map(|(status, n)| {
            let status = parse(&status).ok_or_else(|| corrupt(what, format!("unknown status {status:?}")))?;
            Ok((status, stored_size(n, what)?))
        })
        .collect()
}

impl Meta for SqlStorage {
    async fn totals(&self) -> Result<Totals> {
        let evaluations = "SELECT status, COUNT(*) FROM evaluations GROUP BY status";
        let builds = "SELECT status, COUNT(*) FROM builds GROUP BY status";
        let jobs = "SELECT \
                      COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0), \
                      COALESCE(SUM(CASE WHEN state = 'assigned' THEN 1 ELSE 0 END), 0) \
                    FROM jobs WHERE state IN ('queued', 'assigned')";
        let oldest = "SELECT created_at FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1";
        let nars = "SELECT COUNT(*), CAST(COALESCE(SUM(file_size), 0) AS BIGINT) FROM nar_files";
        let (evaluations, builds, (queued, assigned), oldest, (files, bytes)) = with_pool!(self, |p| async {
            let evaluations = sqlx::query_as::<_, (String, i64)>(evaluations).fetch_all(p).await?;
            let builds = sqlx::query_as::<_, (String, i64)>(builds).fetch_all(p).await?;
            let jobs = sqlx::query_as::<_, (i64, i64)>(jobs).fetch_one(p).await?;
            let oldest = sqlx::query_scalar::<_, DateTime<Utc>>(oldest).fetch_optional(p).await?;
            let nars = sqlx::query_as::<_, (i64, i64)>(nars).fetch_one(p).await?;
            Ok::<_, sqlx::Error>((evaluations, builds, jobs, oldest, nars))
        }
        .await)
        .map_err(db_error)?;
        Ok(Totals {
            evaluations: by_status(evaluations, EvaluationStatus::parse, "evaluation status")?,
            builds: by_status(builds, BuildStatus::parse, "build status")?,
            queued_jobs: stored_size(queued, "job count")?,
            oldest_queued_job: oldest,
            assigned_jobs: stored_size(assigned, "job count")?,
            nar_files: stored_size(files, "NAR file count")?,
            nar_bytes: stored_size(bytes, "NAR bytes")?,
        })
    }

    async fn meta(&self, key: &str) -> Result<Option<String>> {
        let sql = "SELECT value FROM meta WHERE name = $1";
        with_pool!(self, |p| sqlx::query_scalar::<_, String>(sql)
            .bind(key)
            .fetch_optional(p)
            .await)
        .map_err(db_error)
    }

    async fn meta_init(&self, key: &str, value: &str) -> Result<String> {
        // The first writer wins; everyone then reads what it stored. A set value never changes, so the
        // read needs no transaction.
        let insert = "INSERT INTO meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        let select = "SELECT value FROM meta WHERE name = $1";
        let stored = with_pool!(self, |p| async {
            sqlx::query(insert).bind(key).bind(value).execute(p).await?;
            sqlx::query_scalar::<_, String>(select)
                .bind(key)
                .fetch_optional(p)
                .await
        }
        .await)
        .map_err(db_error)?;
        stored.ok_or_else(|| StorageError::Unavailable(format!("meta value {key:?} vanished after insert")))
    }
}
