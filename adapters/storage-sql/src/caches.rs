//! Caches and the organizations' subscriptions to them.

use crate::BeginWrite;
use crate::orgs::{OrgRow, org_columns};
use crate::{SqlStorage, corrupt, db_error, stored_name, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::{Cache, Compression, SubscribedCache, Subscriber, Subscription};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Caches, Result};
use gradient_domain::{CacheId, Name, OrgId, UserId};

#[derive(sqlx::FromRow)]
struct SubscribedRow {
    #[sqlx(flatten)]
    cache: CacheRow,
    granted: bool,
    push: bool,
}

#[derive(sqlx::FromRow)]
struct SubscriberRow {
    #[sqlx(flatten)]
    org: OrgRow,
    granted: bool,
    push: bool,
}
use uuid::Uuid;

macro_rules! cache_columns {
    () => {
        "id, name, display_name, description, public, priority, local_priority, compression, signing_key, \
         created_by, created_at, managed"
    };
}
pub(crate) use cache_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct CacheRow {
    id: Uuid,
    name: String,
    display_name: String,
    description: String,
    public: bool,
    priority: i32,
    local_priority: Option<i32>,
    compression: String,
    signing_key: String,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    managed: bool,
}

impl CacheRow {
    pub(crate) fn into_cache(self) -> Result<Cache> {
        Ok(Cache {
            id: CacheId(self.id),
            name: stored_name(&self.name, "cache name")?,
            display_name: self.display_name,
            description: self.description,
            public: self.public,
            priority: self.priority,
            local_priority: self.local_priority,
            compression: Compression::parse(&self.compression)
                .ok_or_else(|| corrupt("cache compression", &self.compression))?,
            signing_key: Sealed(self.signing_key),
            created_by: UserId(self.created_by),
            created_at: self.created_at,
            managed: self.managed,
        })
    }
}

impl Caches for SqlStorage {
    async fn create_cache(&self, cache: &Cache) -> Result<()> {
        let sql = concat!(
            "INSERT INTO caches (",
            cache_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        with_pool!(self, |p| sqlx::query(sql)
            .bind(cache.id.0)
            .bind(cache.name.as_str())
            .bind(&cache.display_name)
            .bind(&cache.description)
            .bind(cache.public)
            .bind(cache.priority)
            .bind(cache.local_priority)
            .bind(cache.compression.as_str())
            .bind(&cache.signing_key.0)
            .bind(cache.created_by.0)
            .bind(cache.created_at)
            .bind(cache.managed)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn cache_by_name(&self, name: &Name) -> Result<Option<Cache>> {
        let sql = concat!("SELECT ", cache_columns!(), " FROM caches WHERE name = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, CacheRow>(sql)
            .bind(name.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(CacheRow::into_cache).transpose()
    }

    async fn cache(&self, id: CacheId) -> Result<Option<Cache>> {
        let sql = concat!("SELECT ", cache_columns!(), " FROM caches WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, CacheRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(CacheRow::into_cache).transpose()
    }

    async fn visible_caches(&self, user: Option<UserId>) -> Result<Vec<Cache>> {
        let sql = concat!(
            "SELECT ",
            cache_columns!(),
            " FROM caches c WHERE c.public OR c.created_by = $1 OR EXISTS ",
            "(SELECT 1 FROM subscriptions s JOIN memberships m ON m.org_id = s.org_id ",
            "WHERE s.cache_id = c.id AND s.granted AND m.user_id = $1) ORDER BY c.name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, CacheRow>(sql)
            .bind(user.map(|u| u.0))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(CacheRow::into_cache).collect()
    }

    async fn update_cache(&self, cache: &Cache) -> Result<()> {
        let sql = "UPDATE caches SET display_name = $2, description = $3, public = $4, priority = $5, \
                   local_priority = $6, compression = $7, signing_key = $8 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(cache.id.0)
            .bind(&cache.display_name)
            .bind(&cache.description)
            .bind(cache.public)
            .bind(cache.priority)
            .bind(cache.local_priority)
            .bind(cache.compression.as_str())
            .bind(&cache.signing_key.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn delete_cache(&self, id: CacheId) -> Result<bool> {
        // Subscriptions, NAR file records and cached paths go with it (ON DELETE CASCADE).
        let sql = "DELETE FROM caches WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn subscribe(&self, sub: &Subscription) -> Result<bool> {
        // A grant upgrades an existing subscription; a plain one never downgrades it. Push is set elsewhere.
        let exists = "SELECT 1 FROM subscriptions WHERE org_id = $1 AND cache_id = $2";
        let upsert = "INSERT INTO subscriptions (org_id, cache_id, granted, push) VALUES ($1, $2, $3, FALSE) \
                      ON CONFLICT (org_id, cache_id) DO UPDATE SET granted = subscriptions.granted OR excluded.granted";
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let existed = sqlx::query(exists)
                .bind(sub.org_id.0)
                .bind(sub.cache_id.0)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            sqlx::query(upsert)
                .bind(sub.org_id.0)
                .bind(sub.cache_id.0)
                .bind(sub.granted)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(!existed)
        }
        .await)
        .map_err(db_error)
    }

    async fn set_push_cache(&self, org: OrgId, cache: Option<CacheId>) -> Result<bool> {
        // Cleared first, then set, in one transaction: the unique index on (org) WHERE push is checked row by row.
        let clear = "UPDATE subscriptions SET push = FALSE WHERE org_id = $1 AND push";
        let set = "UPDATE subscriptions SET push = TRUE WHERE org_id = $1 AND cache_id = $2 AND granted";
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            sqlx::query(clear).bind(org.0).execute(&mut *tx).await?;
            if let Some(cache) = cache {
                let done = sqlx::query(set)
                    .bind(org.0)
                    .bind(cache.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(db_error)
    }

    async fn unsubscribe(&self, org: OrgId, cache: CacheId) -> Result<bool> {
        let sql = "DELETE FROM subscriptions WHERE org_id = $1 AND cache_id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(org.0)
            .bind(cache.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn subscriptions(&self, org: OrgId) -> Result<Vec<SubscribedCache>> {
        let sql = concat!(
            "SELECT ",
            cache_columns!(),
            ", s.granted, s.push FROM caches JOIN subscriptions s ON s.cache_id = caches.id ",
            "WHERE s.org_id = $1 ORDER BY name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, SubscribedRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(SubscribedCache {
                    cache: r.cache.into_cache()?,
                    granted: r.granted,
                    push: r.push,
                })
            })
            .collect()
    }

    async fn subscribers(&self, cache: CacheId) -> Result<Vec<Subscriber>> {
        let sql = concat!(
            "SELECT ",
            org_columns!(),
            ", s.granted, s.push FROM orgs JOIN subscriptions s ON s.org_id = orgs.id ",
            "WHERE s.cache_id = $1 ORDER BY name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, SubscriberRow>(sql)
            .bind(cache.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(Subscriber {
                    org: r.org.into_org()?,
                    granted: r.granted,
                    push: r.push,
                })
            })
            .collect()
    }
}
