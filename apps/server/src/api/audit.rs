//! Organizations' audit logs.

use super::dto::{Reply, ok};
use super::nullable::Nullable;
use super::{Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct AuditApi(pub AppState);

/// One change made to the organization.
#[derive(Object)]
pub struct AuditEntryView {
    /// The entry's place in the log (increasing); pages are cut with it.
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The user who acted, `null` for the declarative state.
    pub actor_id: Nullable<Uuid>,
    /// Their username at that time, or `state`.
    pub actor: String,
    /// `session`, `api_key` or `state`.
    pub via: String,
    /// What was done, e.g. `project.created`, `member.set`, `worker.deleted` (`docs/audit.md` lists them).
    pub action: String,
    /// What it was done to, e.g. `project 'web'`.
    pub target: String,
    /// What changed, in a few words; may be empty. Never a secret.
    pub detail: String,
}

/// A page of the audit log, newest first.
#[derive(Object)]
pub struct AuditPageView {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next: Nullable<u64>,
}

#[OpenApi(tag = "Tag::Orgs")]
impl AuditApi {
    /// The organization's audit log, newest first: who created, changed or deleted what, and when. For its
    /// admins only (a caller who cannot see the organization gets 404, other members 403). `before` is the
    /// previous page's `next`; `limit` is 1 to 100 (default 100). Each organization keeps its newest 10,000
    /// entries.
    #[oai(path = "/orgs/:org/audit-log", method = "get", operation_id = "get_org_audit_log")]
    async fn audit_log(
        &self,
        auth: Token,
        org: Path<String>,
        before: Query<Option<u64>>,
        limit: Query<Option<u32>>,
    ) -> Reply<AuditPageView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let page = self.0.app.audit_log(&caller, &org, before.0, limit.0).await?;
        ok(AuditPageView {
            entries: page
                .entries
                .into_iter()
                .map(|e| AuditEntryView {
                    seq: e.seq,
                    at: e.at,
                    actor_id: e.actor_id.map(|u| u.0).into(),
                    actor: e.actor,
                    via: e.via.as_str().to_owned(),
                    action: e.action.as_str().to_owned(),
                    target: e.target,
                    detail: e.detail,
                })
                .collect(),
            next: page.next.into(),
        })
    }
}
