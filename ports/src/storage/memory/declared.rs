//! The declarative state's writes on the in-memory state: a batch runs on a copy that replaces the state only
//! when every write succeeded.

use super::MemoryStorage;
use super::state::State;
use gradient_domain::OrgId;
use gradient_domain::model::{Subscription, Timestamp};
use gradient_domain::ports::storage::{Declared, ManagedEntities, Result, StateWrite, StorageError};
use std::sync::PoisonError;

impl State {
    fn apply_write(&mut self, write: &StateWrite) -> Result<()> {
        match write {
            StateWrite::PutUser(user) => {
                let Some(created_at) = self.users.get(&user.id).map(|u| u.created_at) else {
                    return self.create_user(user);
                };
                let others = || self.users.values().filter(|u| u.id != user.id);
                if others().any(|u| u.username == user.username) {
                    return Err(StorageError::Conflict("username".into()));
                }
                if others().any(|u| u.email == user.email) {
                    return Err(StorageError::Conflict("email".into()));
                }
                let user = gradient_domain::model::User {
                    created_at,
                    ..user.clone()
                };
                self.users.insert(user.id, user);
                Ok(())
            }
            StateWrite::DeleteUser(id) => {
                if !self.users.contains_key(id) {
                    return Ok(());
                }
                let creator = self.orgs.values().any(|o| o.created_by == *id)
                    || self.projects.values().any(|p| p.created_by == *id)
                    || self.caches.values().any(|c| c.created_by == *id);
                if creator {
                    return Err(StorageError::NotFound);
                }
                self.users.remove(id);
                self.sessions.retain(|_, s| s.user_id != *id);
                self.api_keys.retain(|_, k| k.user_id != *id);
                self.memberships.retain(|(_, user), _| user != id);
                self.email_tokens.retain(|_, t| t.user_id != *id);
                self.no_evaluation_mail.remove(id);
                self.oidc_identities.retain(|_, i| i.user_id != *id);
                self.oidc_flows.retain(|_, f| f.link_user != Some(*id));
                Ok(())
            }
            StateWrite::PutOrg(org) => match self.orgs.get_mut(&org.id) {
                Some(stored) => {
                    stored.display_name.clone_from(&org.display_name);
                    stored.description.clone_from(&org.description);
                    stored.public = org.public;
                    stored.managed = org.managed;
                    Ok(())
                }
                None => {
                    self.create_org(org)?;
                    self.memberships.remove(&(org.id, org.created_by));
                    Ok(())
                }
            },
            StateWrite::DeleteOrg(id) => {
                self.delete_org(*id);
                Ok(())
            }
            StateWrite::PutRole(role) => match self.roles.get_mut(&role.id) {
                Some(stored) => {
                    stored.permissions.clone_from(&role.permissions);
                    stored.managed = role.managed;
                    Ok(())
                }
                None => self.create_role(role),
            },
            StateWrite::DeleteRole(id) => self.delete_role(*id).map(|_| ()),
            StateWrite::SetMembership(m) => self.set_membership(m),
            StateWrite::DeleteMembership { org, user } => {
                self.memberships.remove(&(*org, *user));
                Ok(())
            }
            StateWrite::PutProject(project) => {
                if self.projects.contains_key(&project.id) {
                    self.update_project(project)?;
                    if let Some(stored) = self.projects.get_mut(&project.id) {
                        stored.managed = project.managed;
                    }
                    Ok(())
                } else {
                    self.create_project(project)
                }
            }
            StateWrite::DeleteProject(id) => {
                self.delete_project(*id);
                Ok(())
            }
            StateWrite::PutCache(cache) => {
                if self.caches.contains_key(&cache.id) {
                    if !self.users.contains_key(&cache.created_by) {
                        return Err(StorageError::NotFound);
                    }
                    self.update_cache(cache)?;
                    if let Some(stored) = self.caches.get_mut(&cache.id) {
                        stored.created_by = cache.created_by;
                        stored.managed = cache.managed;
                    }
                    Ok(())
                } else {
                    self.create_cache(cache)
                }
            }
            StateWrite::DeleteCache(id) => {
                self.delete_cache(*id);
                Ok(())
            }
            StateWrite::Grant { org, cache } => self
                .subscribe(&Subscription {
                    org_id: *org,
                    cache_id: *cache,
                    granted: true,
                    push: false,
                })
                .map(|_| ()),
            StateWrite::Revoke { org, cache } => {
                self.subscriptions.remove(&(*org, *cache));
                Ok(())
            }
            StateWrite::SetPushCache { org, cache } => {
                if self.set_push_cache(*org, *cache) {
                    Ok(())
                } else {
                    Err(StorageError::NotFound)
                }
            }
            StateWrite::PutApiKey(key) => match self.api_keys.get(&key.id) {
                Some(_) => {
                    if self.api_keys.values().any(|k| k.id != key.id && k.hash == key.hash) {
                        return Err(StorageError::Conflict("api key".into()));
                    }
                    if let Some(stored) = self.api_keys.get_mut(&key.id) {
                        stored.name.clone_from(&key.name);
                        stored.hash.clone_from(&key.hash);
                        stored.scope.clone_from(&key.scope);
                        stored.managed = key.managed;
                    }
                    Ok(())
                }
                None => self.create_api_key(key),
            },
            StateWrite::DeleteApiKey(id) => {
                self.api_keys.remove(id);
                Ok(())
            }
            StateWrite::PutWorkerRegistration(r) => match self.worker_registrations.get_mut(&r.peer_id) {
                Some(stored) => {
                    stored.proof_key.clone_from(&r.proof_key);
                    stored.managed = r.managed;
                    Ok(())
                }
                None => self.create_worker_registration(r),
            },
            StateWrite::DeleteWorkerRegistration(peer) => {
                self.worker_registrations.remove(peer);
                Ok(())
            }
            StateWrite::PutWebhookSecret { org, secret, managed } => {
                self.require_org(*org)?;
                self.webhook_secrets.insert(*org, secret.clone());
                if *managed {
                    self.managed_webhook_secrets.insert(*org);
                } else {
                    self.managed_webhook_secrets.remove(org);
                }
                Ok(())
            }
            StateWrite::DeleteWebhookSecret(org) => {
                self.webhook_secrets.remove(org);
                self.managed_webhook_secrets.remove(org);
                Ok(())
            }
            StateWrite::PutForgeConnection(c) => {
                self.require_org(c.org_id)?;
                self.forge_connections.insert(c.org_id, c.clone());
                Ok(())
            }
            StateWrite::DeleteForgeConnection(org) => {
                self.forge_connections.remove(org);
                Ok(())
            }
        }
    }

    fn require_org(&self, org: OrgId) -> Result<()> {
        if self.orgs.contains_key(&org) {
            Ok(())
        } else {
            Err(StorageError::NotFound)
        }
    }

    fn managed_entities(&self) -> ManagedEntities {
        let mut m = ManagedEntities {
            users: self.users.values().filter(|u| u.managed).cloned().collect(),
            orgs: self.orgs.values().filter(|o| o.managed).cloned().collect(),
            roles: self.roles.values().filter(|r| r.managed).cloned().collect(),
            projects: self.projects.values().filter(|p| p.managed).cloned().collect(),
            caches: self.caches.values().filter(|c| c.managed).cloned().collect(),
            api_keys: self.api_keys.values().filter(|k| k.managed).cloned().collect(),
            workers: self
                .worker_registrations
                .values()
                .filter(|w| w.managed)
                .cloned()
                .collect(),
            webhook_secrets: self.managed_webhook_secrets.iter().copied().collect(),
            forge_connections: self.forge_connections.values().filter(|c| c.managed).cloned().collect(),
        };
        m.users.sort_by(|a, b| a.username.cmp(&b.username));
        m.orgs.sort_by(|a, b| a.name.cmp(&b.name));
        m.roles.sort_by(|a, b| (a.org_id, &a.name).cmp(&(b.org_id, &b.name)));
        m.projects.sort_by(|a, b| (a.org_id, &a.name).cmp(&(b.org_id, &b.name)));
        m.caches.sort_by(|a, b| a.name.cmp(&b.name));
        m.api_keys.sort_by_key(|k| (k.created_at, k.id));
        m.workers.sort_by_key(|w| (w.created_at, w.peer_id));
        m.webhook_secrets.sort();
        m.forge_connections.sort_by_key(|c| c.org_id);
        m
    }
}

impl Declared for MemoryStorage {
    async fn managed_entities(&self) -> Result<ManagedEntities> {
        self.with(|s| Ok(s.managed_entities()))
    }

    async fn webhook_secret_managed(&self, org: OrgId) -> Result<bool> {
        self.with(|s| Ok(s.managed_webhook_secrets.contains(&org)))
    }

    async fn apply_state(&self, writes: &[StateWrite], _at: Timestamp) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = state.clone();
        for write in writes {
            next.apply_write(write)?;
        }
        *state = next;
        Ok(())
    }
}
