//! The declarative state's storage ([`Declared`]): the managed rows of each table, and a plan's writes run in
//! one transaction (the first failing write rolls back all of them).

use crate::BeginWrite;
use crate::caches::{CacheRow, cache_columns};
use crate::integrations::ConnectionRow;
use crate::orgs::{OrgRow, RoleRow, org_columns, role_columns, role_columns_of};
use crate::projects::{ProjectRow, project_columns};
use crate::users::{ApiKeyRow, UserRow, api_key_columns, user_columns};
use crate::workers::{RegistrationRow, registration_columns};
use crate::{SqlStorage, db_error, to_json, with_pool};
use gradient_domain::OrgId;
use gradient_domain::model::{Timestamp, WorkerRegistration};
use gradient_domain::ports::storage::{Declared, ManagedEntities, Result, StateWrite, StorageError};
use uuid::Uuid;

const PUT_USER: &str = concat!(
    "INSERT INTO users (",
    user_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET username = excluded.username, \
     name = excluded.name, email = excluded.email, password_hash = excluded.password_hash, \
     email_verified = excluded.email_verified, managed = excluded.managed"
);
const PUT_ORG: &str = concat!(
    "INSERT INTO orgs (",
    org_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, \
     description = excluded.description, public = excluded.public, managed = excluded.managed"
);
const PUT_ROLE: &str = "INSERT INTO roles (id, org_id, name, name_key, permissions, managed) \
                        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET \
                        permissions = excluded.permissions, managed = excluded.managed";
const SET_MEMBERSHIP: &str = "INSERT INTO memberships (org_id, user_id, builtin_role, role_id) VALUES ($1, $2, $3, $4) \
                              ON CONFLICT (org_id, user_id) \
                              DO UPDATE SET builtin_role = excluded.builtin_role, role_id = excluded.role_id";
const PUT_PROJECT: &str = concat!(
    "INSERT INTO projects (",
    project_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) ON CONFLICT (id) DO UPDATE SET \
     display_name = excluded.display_name, description = excluded.description, repository = excluded.repository, \
     branch = excluded.branch, wildcard = excluded.wildcard, flake_input_overrides = excluded.flake_input_overrides, \
     keep_evaluations = excluded.keep_evaluations, poll_interval_secs = excluded.poll_interval_secs, \
     active = excluded.active, managed = excluded.managed, schedule = excluded.schedule, pull_requests = excluded.pull_requests, \
     fork_pull_requests = excluded.fork_pull_requests"
);
const PUT_CACHE: &str = concat!(
    "INSERT INTO caches (",
    cache_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO UPDATE SET \
     display_name = excluded.display_name, description = excluded.description, public = excluded.public, \
     priority = excluded.priority, local_priority = excluded.local_priority, compression = excluded.compression, \
     signing_key = excluded.signing_key, created_by = excluded.created_by, managed = excluded.managed"
);
const GRANT: &str = "INSERT INTO subscriptions (org_id, cache_id, granted, push) VALUES ($1, $2, TRUE, FALSE) \
                     ON CONFLICT (org_id, cache_id) DO UPDATE SET granted = TRUE";
const PUT_API_KEY: &str = concat!(
    "INSERT INTO api_keys (",
    api_key_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
     hash = excluded.hash, scope = excluded.scope, managed = excluded.managed"
);
const PUT_WORKER: &str = concat!(
    "INSERT INTO worker_registrations (",
    registration_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (peer_id) DO UPDATE SET proof_key = excluded.proof_key, \
     managed = excluded.managed, url = excluded.url"
);
const PUT_WEBHOOK_SECRET: &str = "INSERT INTO org_webhook_secrets (org_id, secret, updated_at, managed) \
                                  VALUES ($1, $2, $3, $4) ON CONFLICT (org_id) DO UPDATE SET \
                                  secret = excluded.secret, updated_at = excluded.updated_at, managed = excluded.managed";
const PUT_FORGE_CONNECTION: &str = "INSERT INTO org_forge_connections (org_id, forge, api_url, token, updated_at, \
                                    managed) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org_id) DO UPDATE SET \
                                    forge = excluded.forge, api_url = excluded.api_url, token = excluded.token, \
                                    updated_at = excluded.updated_at, managed = excluded.managed";

/// The statement of a `Delete…` write and the id it binds.
fn delete_sql(write: &StateWrite) -> Option<(&'static str, Uuid)> {
    Some(match write {
        StateWrite::DeleteUser(id) => ("DELETE FROM users WHERE id = $1", id.0),
        StateWrite::DeleteOrg(id) => ("DELETE FROM orgs WHERE id = $1", id.0),
        StateWrite::DeleteRole(id) => ("DELETE FROM roles WHERE id = $1", id.0),
        StateWrite::DeleteProject(id) => ("DELETE FROM projects WHERE id = $1", id.0),
        StateWrite::DeleteCache(id) => ("DELETE FROM caches WHERE id = $1", id.0),
        StateWrite::DeleteApiKey(id) => ("DELETE FROM api_keys WHERE id = $1", id.0),
        StateWrite::DeleteWorkerRegistration(peer) => ("DELETE FROM worker_registrations WHERE peer_id = $1", peer.0),
        StateWrite::DeleteWebhookSecret(org) => ("DELETE FROM org_webhook_secrets WHERE org_id = $1", org.0),
        StateWrite::DeleteForgeConnection(org) => ("DELETE FROM org_forge_connections WHERE org_id = $1", org.0),
        _ => return None,
    })
}

impl Declared for SqlStorage {
    async fn managed_entities(&self) -> Result<ManagedEntities> {
        let users = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE managed ORDER BY username"
        );
        let orgs = concat!("SELECT ", org_columns!(), " FROM orgs WHERE managed ORDER BY name");
        let roles = concat!(
            "SELECT ",
            role_columns!(),
            " FROM roles WHERE managed ORDER BY org_id, name"
        );
        let projects = concat!(
            "SELECT ",
            project_columns!(),
            " FROM projects WHERE managed ORDER BY org_id, name"
        );
        let caches = concat!("SELECT ", cache_columns!(), " FROM caches WHERE managed ORDER BY name");
        let keys = concat!(
            "SELECT ",
            api_key_columns!(),
            " FROM api_keys WHERE managed ORDER BY created_at, id"
        );
        let workers = concat!(
            "SELECT ",
            registration_columns!(),
            " FROM worker_registrations WHERE managed ORDER BY created_at, peer_id"
        );
        let secrets = "SELECT org_id FROM org_webhook_secrets WHERE managed ORDER BY org_id";
        let connections = "SELECT org_id, forge, api_url, token, managed FROM org_forge_connections \
                           WHERE managed ORDER BY org_id";
        let (users, orgs, roles, projects, caches, keys, workers, secrets, connections) = with_pool!(self, |p| async {
            Ok::<_, sqlx::Error>((
                sqlx::query_as::<_, UserRow>(users).fetch_all(p).await?,
                sqlx::query_as::<_, OrgRow>(orgs).fetch_all(p).await?,
                sqlx::query_as::<_, RoleRow>(roles).fetch_all(p).await?,
                sqlx::query_as::<_, ProjectRow>(projects).fetch_all(p).await?,
                sqlx::query_as::<_, CacheRow>(caches).fetch_all(p).await?,
                sqlx::query_as::<_, ApiKeyRow>(keys).fetch_all(p).await?,
                sqlx::query_as::<_, RegistrationRow>(workers).fetch_all(p).await?,
                sqlx::query_as::<_, (Uuid,)>(secrets).fetch_all(p).await?,
                sqlx::query_as::<_, ConnectionRow>(connections).fetch_all(p).await?,
            ))
        }
        .await)
        .map_err(db_error)?;
        let mut m = ManagedEntities {
            users: users.into_iter().map(UserRow::into_user).collect::<Result<_>>()?,
            orgs: orgs.into_iter().map(OrgRow::into_org).collect::<Result<_>>()?,
            roles: roles.into_iter().map(RoleRow::into_role).collect::<Result<_>>()?,
            projects: projects
                .into_iter()
                .map(ProjectRow::into_project)
                .collect::<Result<_>>()?,
            caches: caches.into_iter().map(CacheRow::into_cache).collect::<Result<_>>()?,
            api_keys: keys.into_iter().map(ApiKeyRow::into_key).collect::<Result<_>>()?,
            workers: workers.into_iter().map(WorkerRegistration::from).collect(),
            webhook_secrets: secrets.into_iter().map(|(id,)| OrgId(id)).collect(),
            forge_connections: connections
                .into_iter()
                .map(ConnectionRow::into_connection)
                .collect::<Result<_>>()?,
        };
        // The engines order UUIDs differently (bytes on SQLite, PostgreSQL's own order): sort as the domain does.
        m.roles.sort_by(|a, b| (a.org_id, &a.name).cmp(&(b.org_id, &b.name)));
        m.projects.sort_by(|a, b| (a.org_id, &a.name).cmp(&(b.org_id, &b.name)));
        m.webhook_secrets.sort();
        m.forge_connections.sort_by_key(|c| c.org_id);
        Ok(m)
    }

    async fn webhook_secret_managed(&self, org: OrgId) -> Result<bool> {
        let sql = "SELECT managed FROM org_webhook_secrets WHERE org_id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, (bool,)>(sql)
            .bind(org.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.is_some_and(|(managed,)| managed))
    }

    async fn apply_state(&self, writes: &[StateWrite], at: Timestamp) -> Result<()> {
        // Encoded before the transaction opens: an unencodable value fails nothing half-way.
        let mut json = Vec::new();
        for write in writes {
            json.push(match write {
                StateWrite::PutRole(r) => Some(to_json(&r.permissions)?),
                StateWrite::PutProject(p) => Some(to_json(&p.flake_input_overrides)?),
                StateWrite::PutApiKey(k) => Some(to_json(&k.scope)?),
                _ => None,
            });
        }
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await.map_err(db_error)?;
            for (write, json) in writes.iter().zip(&json) {
                let json = json.as_deref().unwrap_or_default();
                if let Some((sql, id)) = delete_sql(write) {
                    sqlx::query(sql)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| match (write, db_error(e)) {
                            (StateWrite::DeleteRole(_), StorageError::NotFound) => {
                                StorageError::Conflict("role in use".into())
                            }
                            (_, other) => other,
                        })?;
                    continue;
                }
                let done = match write {
                    StateWrite::PutUser(u) => {
                        sqlx::query(PUT_USER)
                            .bind(u.id.0)
                            .bind(u.username.as_str())
                            .bind(&u.name)
                            .bind(u.email.as_str())
                            .bind(u.password_hash.as_deref())
                            .bind(u.email_verified)
                            .bind(u.created_at)
                            .bind(u.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutOrg(o) => {
                        sqlx::query(PUT_ORG)
                            .bind(o.id.0)
                            .bind(o.name.as_str())
                            .bind(&o.display_name)
                            .bind(&o.description)
                            .bind(o.public)
                            .bind(o.created_by.0)
                            .bind(o.created_at)
                            .bind(o.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutRole(r) => {
                        sqlx::query(PUT_ROLE)
                            .bind(r.id.0)
                            .bind(r.org_id.0)
                            .bind(&r.name)
                            .bind(r.name.to_ascii_lowercase())
                            .bind(json)
                            .bind(r.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::SetMembership(m) => {
                        let (builtin, custom) = role_columns_of(&m.role);
                        sqlx::query(SET_MEMBERSHIP)
                            .bind(m.org_id.0)
                            .bind(m.user_id.0)
                            .bind(builtin)
                            .bind(custom)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::DeleteMembership { org, user } => {
                        sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
                            .bind(org.0)
                            .bind(user.0)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutProject(p) => {
                        sqlx::query(PUT_PROJECT)
                            .bind(p.id.0)
                            .bind(p.org_id.0)
                            .bind(p.name.as_str())
                            .bind(&p.display_name)
                            .bind(&p.description)
                            .bind(&p.repository)
                            .bind(p.branch.as_deref())
                            .bind(&p.wildcard)
                            .bind(json)
                            .bind(p.keep_evaluations.map(i64::from))
                            .bind(p.poll_interval_secs.map(i64::from))
                            .bind(p.active)
                            .bind(p.created_by.0)
                            .bind(p.created_at)
                            .bind(p.managed)
                            .bind(p.schedule.as_deref())
                            .bind(p.pull_requests)
                            .bind(p.fork_pull_requests)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutCache(c) => {
                        sqlx::query(PUT_CACHE)
                            .bind(c.id.0)
                            .bind(c.name.as_str())
                            .bind(&c.display_name)
                            .bind(&c.description)
                            .bind(c.public)
                            .bind(c.priority)
                            .bind(c.local_priority)
                            .bind(c.compression.as_str())
                            .bind(&c.signing_key.0)
                            .bind(c.created_by.0)
                            .bind(c.created_at)
                            .bind(c.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::Grant { org, cache } => {
                        sqlx::query(GRANT).bind(org.0).bind(cache.0).execute(&mut *tx).await
                    }
                    StateWrite::Revoke { org, cache } => {
                        sqlx::query("DELETE FROM subscriptions WHERE org_id = $1 AND cache_id = $2")
                            .bind(org.0)
                            .bind(cache.0)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::SetPushCache { org, cache } => {
                        sqlx::query("UPDATE subscriptions SET push = FALSE WHERE org_id = $1 AND push")
                            .bind(org.0)
                            .execute(&mut *tx)
                            .await
                            .map_err(db_error)?;
                        match cache {
                            None => continue,
                            Some(cache) => {
                                let set = sqlx::query(
                                    "UPDATE subscriptions SET push = TRUE \
                                     WHERE org_id = $1 AND cache_id = $2 AND granted",
                                )
                                .bind(org.0)
                                .bind(cache.0)
                                .execute(&mut *tx)
                                .await
                                .map_err(db_error)?;
                                if set.rows_affected() == 0 {
                                    return Err(StorageError::NotFound);
                                }
                                continue;
                            }
                        }
                    }
                    StateWrite::PutApiKey(k) => {
                        sqlx::query(PUT_API_KEY)
                            .bind(k.id.0)
                            .bind(k.user_id.0)
                            .bind(&k.name)
                            .bind(&k.hash)
                            .bind(json)
                            .bind(k.created_at)
                            .bind(k.last_used_at)
                            .bind(k.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutWorkerRegistration(r) => {
                        sqlx::query(PUT_WORKER)
                            .bind(r.peer_id.0)
                            .bind(r.org_id.0)
                            .bind(r.worker_id.0)
                            .bind(&r.proof_key.0)
                            .bind(r.created_at)
                            .bind(r.managed)
                            .bind(&r.url)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutWebhookSecret { org, secret, managed } => {
                        sqlx::query(PUT_WEBHOOK_SECRET)
                            .bind(org.0)
                            .bind(&secret.0)
                            .bind(at)
                            .bind(*managed)
                            .execute(&mut *tx)
                            .await
                    }
                    StateWrite::PutForgeConnection(c) => {
                        sqlx::query(PUT_FORGE_CONNECTION)
                            .bind(c.org_id.0)
                            .bind(c.forge.as_str())
                            .bind(&c.api_url)
                            .bind(&c.token.0)
                            .bind(at)
                            .bind(c.managed)
                            .execute(&mut *tx)
                            .await
                    }
                    // Deletes ran above.
                    _ => continue,
                };
                done.map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        }
        .await)
    }
}
