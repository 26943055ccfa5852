//! Small installation-wide values.

use crate::{SqlStorage, db_error, with_pool};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Meta, Result};

impl Meta for SqlStorage {
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
