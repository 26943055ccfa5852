//! Organizations' audit logs.

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, db_size, stored_size, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::model::{AuditAction, AuditEntry, AuditVia};
use gradient_domain::ports::storage::{Audit, Result};
use gradient_domain::{OrgId, UserId};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    org_id: Uuid,
    at: DateTime<Utc>,
    actor_id: Option<Uuid>,
    actor: String,
    via: String,
    action: String,
    target: String,
    detail: String,
}

impl AuditRow {
    fn into_entry(self) -> Result<AuditEntry> {
        Ok(AuditEntry {
            seq: stored_size(self.seq, "audit seq")?,
            org_id: OrgId(self.org_id),
            at: self.at,
            actor_id: self.actor_id.map(UserId),
            actor: self.actor,
            via: AuditVia::parse(&self.via).ok_or_else(|| corrupt("audit via", &self.via))?,
            action: AuditAction::parse(&self.action).ok_or_else(|| corrupt("audit action", &self.action))?,
            target: self.target,
            detail: self.detail,
        })
    }
}

impl Audit for SqlStorage {
    async fn record_audit(&self, entry: &AuditEntry, keep: u32) -> Result<u64> {
        let insert = "INSERT INTO audit_log (org_id, at, actor_id, actor, via, action, target, detail) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq";
        // The entries beyond the newest `keep` of the organization: one index range on (org_id, seq).
        let trim = "DELETE FROM audit_log WHERE org_id = $1 AND seq <= \
                    (SELECT seq FROM audit_log WHERE org_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)";
        let keep = i64::from(keep);
        let seq = with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let seq: i64 = sqlx::query_scalar(insert)
                .bind(entry.org_id.0)
                .bind(entry.at)
                .bind(entry.actor_id.map(|u| u.0))
                .bind(&entry.actor)
                .bind(entry.via.as_str())
                .bind(entry.action.as_str())
                .bind(&entry.target)
                .bind(&entry.detail)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(trim)
                .bind(entry.org_id.0)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(seq)
        }
        .await)
        .map_err(db_error)?;
        stored_size(seq, "audit seq")
    }

    async fn audit_log(&self, org: OrgId, before: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let before = match before {
            Some(b) => db_size(b, "audit cursor")?,
            None => i64::MAX,
        };
        let sql = "SELECT seq, org_id, at, actor_id, actor, via, action, target, detail FROM audit_log \
                   WHERE org_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, AuditRow>(sql)
            .bind(org.0)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(AuditRow::into_entry).collect()
    }
}
