//! Organizations' audit logs (`docs/audit.md`): who created, changed or deleted what, and when.
//!
//! The use cases record an entry right after each change they make to an organization (settings, members
//! and roles, projects, cache subscriptions and the push cache, workers, webhook secret, forge connection and
//! GitHub App links, API keys pinned to it, aborted and restarted evaluations, declarative state applies).
//! Entries name things and kinds of change, never a secret: no token, webhook secret, key or password ever
//! reaches them (the use cases pass names only). Each organization keeps its newest [`AUDIT_KEEP`] entries;
//! older ones are deleted as new ones arrive, and the log is deleted with its organization. Only the
//! organization's admins (callers holding every permission there) read it.

use super::{Caller, Gradient, Result, ServiceError};
use crate::OrgId;
use crate::model::{AuditAction, AuditEntry, AuditVia};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};

/// Entries kept per organization; the oldest go first.
pub const AUDIT_KEEP: u32 = 10_000;
/// Entries per page at most (and by default).
pub const AUDIT_PAGE: u32 = 100;

/// A page of an audit log, newest first; `next` is the cursor of the following (older) page, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<u64>,
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// A page of the organization's audit log, newest first: entries older than the cursor `before` (from
    /// the previous page's `next`), at most `limit` (1 to [`AUDIT_PAGE`]). Admins only: 404 for callers who
    /// cannot see the organization, 401/403 for the others.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        org: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<AuditPage> {
        let (org, perms) = self.org_with_access(caller, org).await?;
        if !Permission::ALL.iter().all(|p| perms.contains(p)) {
            caller.require_user()?;
            return Err(ServiceError::Forbidden(format!(
                "only the admins of organization '{}' read its audit log",
                org.name
            )));
        }
        let limit = limit.unwrap_or(AUDIT_PAGE);
        if !(1..=AUDIT_PAGE).contains(&limit) {
            return Err(ServiceError::invalid(
                "invalid_input",
                format!("limit must be between 1 and {AUDIT_PAGE}"),
            ));
        }
        // One more than asked tells whether an older page exists.
        let mut entries = self.storage.audit_log(org.id, before, limit + 1).await?;
        let next = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(AuditPage { entries, next })
    }

    /// Records that `caller` did `action` to `target` in the organization.
    pub(crate) async fn audit(
        &self,
        caller: &Caller,
        org: OrgId,
        action: AuditAction,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Result<()> {
        let (actor_id, actor, via) = match caller {
            Caller::Session { user, .. } => (Some(user.id), user.username.to_string(), AuditVia::Session),
            Caller::Key { user, .. } => (Some(user.id), user.username.to_string(), AuditVia::ApiKey),
            // Anonymous callers change nothing in an organization; recorded as such should one ever do.
            Caller::Anonymous => (None, "anonymous".to_owned(), AuditVia::Session),
        };
        self.record(AuditEntry {
            seq: 0,
            org_id: org,
            at: self.clock.now(),
            actor_id,
            actor,
            via,
            action,
            target: target.into(),
            detail: detail.into(),
        })
        .await
    }

    /// Records a change the declarative state made.
    pub(crate) async fn audit_state(
        &self,
        org: OrgId,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Result<()> {
        self.record(AuditEntry {
            seq: 0,
            org_id: org,
            at: self.clock.now(),
            actor_id: None,
            actor: "state".to_owned(),
            via: AuditVia::State,
            action: AuditAction::StateApplied,
            target: target.into(),
            detail: detail.into(),
        })
        .await
    }

    async fn record(&self, entry: AuditEntry) -> Result<()> {
        self.storage.record_audit(&entry, AUDIT_KEEP).await?;
        Ok(())
    }
}
