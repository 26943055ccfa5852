//! Declarative state's use cases: read what a document's plan depends on, plan it, and apply it in one
//! transaction (see [`crate::state`] and `docs/state.md`).

use super::Gradient;
use crate::ports::storage::StateWrite;
use crate::ports::{Clock, Storage, StorageError};
use crate::state::{Context, Current, Document, Plan, Secrets, StateError};
use crate::{Name, OrgId, UserId};
use std::collections::BTreeSet;

fn database(e: StorageError) -> StateError {
    StateError::new("database", e.to_string())
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Reads every entity the document declares or refers to, the contents of the organizations and caches
    /// involved, and every managed entity.
    pub async fn state_current(&self, doc: &Document) -> Result<Current, StateError> {
        let s = &self.storage;
        let mut cur = Current {
            managed: s.managed_entities().await.map_err(database)?,
            ..Current::default()
        };
        let mut usernames: BTreeSet<Name> = BTreeSet::new();
        usernames.extend(doc.users.iter().map(|u| u.username.clone()));
        for o in &doc.orgs {
            usernames.insert(o.created_by.clone());
            usernames.extend(o.members.keys().cloned());
        }
        usernames.extend(doc.projects.iter().map(|p| p.created_by.clone()));
        usernames.extend(doc.caches.iter().map(|c| c.created_by.clone()));
        usernames.extend(doc.api_keys.iter().map(|k| k.owned_by.clone()));
        for name in usernames {
            if let Some(u) = s.user_by_username(&name).await.map_err(database)? {
                cur.users.insert(name, u);
            }
        }
        for u in &doc.users {
            if let Some(other) = s.user_by_email(u.email.as_str()).await.map_err(database)? {
                cur.emails.insert(u.email.as_str().to_owned(), other);
            }
        }
        let mut org_names: BTreeSet<Name> = BTreeSet::new();
        org_names.extend(doc.orgs.iter().map(|o| o.name.clone()));
        org_names.extend(doc.roles.iter().map(|r| r.organization.clone()));
        org_names.extend(doc.projects.iter().map(|p| p.organization.clone()));
        org_names.extend(doc.caches.iter().flat_map(|c| c.organizations.iter().cloned()));
        org_names.extend(doc.api_keys.iter().filter_map(|k| k.organization.clone()));
        org_names.extend(doc.workers.iter().flat_map(|w| w.organizations.iter().cloned()));
        org_names.extend(doc.integrations.iter().map(|i| i.organization().clone()));
        for name in org_names {
            if let Some(o) = s.org_by_name(&name).await.map_err(database)? {
                cur.orgs.insert(name, o);
            }
        }
        // Organizations of managed entities, so the plan can name them.
        let m = &cur.managed;
        let mut org_ids: BTreeSet<OrgId> = cur.orgs.values().map(|o| o.id).collect();
        org_ids.extend(m.orgs.iter().map(|o| o.id));
        org_ids.extend(m.roles.iter().map(|r| r.org_id));
        org_ids.extend(m.projects.iter().map(|p| p.org_id));
        org_ids.extend(m.workers.iter().map(|w| w.org_id));
        org_ids.extend(m.webhook_secrets.iter().copied());
        org_ids.extend(m.forge_connections.iter().map(|c| c.org_id));
        for id in &org_ids {
            if !cur.orgs.values().any(|o| o.id == *id)
                && let Some(o) = s.org(*id).await.map_err(database)?
            {
                cur.orgs.insert(o.name.clone(), o);
            }
        }
        let owners: BTreeSet<UserId> = cur.managed.api_keys.iter().map(|k| k.user_id).collect();
        for id in owners {
            if !cur.users.values().any(|u| u.id == id)
                && let Some(u) = s.user(id).await.map_err(database)?
            {
                cur.users.insert(u.username.clone(), u);
            }
        }
        for id in org_ids {
            cur.roles.insert(id, s.roles(id).await.map_err(database)?);
            cur.members.insert(id, s.members(id).await.map_err(database)?);
            cur.projects.insert(id, s.projects(id).await.map_err(database)?);
            cur.subscriptions
                .insert(id, s.subscriptions(id).await.map_err(database)?);
            cur.workers
                .insert(id, s.worker_registrations(id).await.map_err(database)?);
            if let Some(secret) = s.webhook_secret(id).await.map_err(database)? {
                let managed = s.webhook_secret_managed(id).await.map_err(database)?;
                cur.webhook_secrets.insert(id, (secret, managed));
            }
            if let Some(c) = s.forge_connection(id).await.map_err(database)? {
                cur.forge_connections.insert(id, c);
            }
        }
        let cache_names: BTreeSet<Name> = doc.caches.iter().map(|c| c.name.clone()).collect();
        for name in cache_names {
            if let Some(c) = s.cache_by_name(&name).await.map_err(database)? {
                cur.subscribers
                    .insert(c.id, s.subscribers(c.id).await.map_err(database)?);
                cur.caches.insert(name, c);
            }
        }
        let users: Vec<UserId> = cur.users.values().map(|u| u.id).collect();
        for id in users {
            cur.api_keys.insert(id, s.api_keys(id).await.map_err(database)?);
        }
        Ok(cur)
    }

    fn state_context(&self) -> Context<'_> {
        Context {
            crypt: &self.crypt,
            now: self.clock.now(),
            domain: &self.settings.domain,
            local_worker: self.settings.local_worker.as_ref(),
        }
    }

    /// The plan of `doc` against the database. Without `secrets` no file is compared (a check that reads
    /// none); such a plan is only for showing.
    pub async fn plan_state(&self, doc: &Document, secrets: Option<&Secrets>) -> Result<Plan, StateError> {
        let cur = self.state_current(doc).await?;
        crate::state::plan::plan(doc, &cur, secrets, &self.state_context())
    }

    /// Plans `doc` and writes the plan in one transaction: all of it or nothing. Answers the plan applied.
    pub async fn apply_state(&self, doc: &Document, secrets: &Secrets) -> Result<Plan, StateError> {
        let plan = self.plan_state(doc, Some(secrets)).await?;
        if plan.writes.is_empty() {
            return Ok(plan);
        }
        self.memo.forget_job_access();
        self.memo.forget_api_keys();
        let result = self.storage.apply_state(&plan.writes, self.clock.now()).await;
        // Whatever happened, nothing remembered about the caches this plan touches may be kept.
        for write in &plan.writes {
            match write {
                StateWrite::PutCache(c) => self.memo.forget_cache(c.id),
                StateWrite::DeleteCache(id) => self.memo.forget_cache(*id),
                _ => {}
            }
        }
        self.memo.forget_job_access();
        self.memo.forget_api_keys();
        result.map_err(|e| {
            let why = match e {
                StorageError::NotFound => "a write refers to a row that is missing, or deletes a user still recorded \
                                           as the creator of an organization, project or cache"
                    .to_owned(),
                StorageError::Conflict(what) if what == "role in use" => {
                    "a role to delete is still held by a member of an organization the document does not manage"
                        .to_owned()
                }
                StorageError::Conflict(what) => {
                    format!("the {what} is taken by something the document does not manage")
                }
                StorageError::Unavailable(m) | StorageError::Failed(m) => m,
            };
            StateError::new("database", format!("nothing was changed: {why}"))
        })?;
        self.audit_state_changes(&plan)
            .await
            .map_err(|e| StateError::new("database", format!("the state was applied, its audit entries not: {e}")))?;
        Ok(plan)
    }

    /// One audit entry per change the plan made inside an organization that still exists (its organization,
    /// roles, members, projects, workers and integrations), in the organization's log.
    async fn audit_state_changes(&self, plan: &Plan) -> crate::service::Result<()> {
        for change in &plan.changes {
            let org_name = match change.kind {
                "organization" => change.name.as_str(),
                "role" | "project" | "worker" | "integration" => match change.name.split_once('/') {
                    Some((org, _)) => org,
                    None => continue,
                },
                _ => continue,
            };
            let Ok(name) = crate::Name::parse(org_name) else {
                continue;
            };
            let Some(org) = self.storage.org_by_name(&name).await? else {
                continue;
            };
            let mut detail = change.action.as_str().to_owned();
            if !change.fields.is_empty() {
                detail.push_str(": ");
                detail.push_str(&change.fields.join(", "));
            }
            self.audit_state(org.id, format!("{} '{}'", change.kind, change.name), detail)
                .await?;
        }
        Ok(())
    }
}
