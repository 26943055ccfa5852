//! The plan: what applying a state document changes, per entity, and the storage writes that do it.
//!
//! * An entry stands for the entity with the same natural key (see `docs/state.md`); an existing entity the
//!   API created is adopted (updated, and managed from then on).
//! * Secrets are compared with what is stored, never rewritten when equal, so applying the same document
//!   twice plans nothing.
//! * Managed entities the document no longer declares are unmanaged, or deleted with `delete_state`.
//! * Writes are ordered so each refers only to what exists by then: puts (users, organizations, roles,
//!   memberships, projects, caches, grants, push caches, keys, workers, integrations), then unmanaging, then
//!   deletes (organizations, with what they hold; projects, roles, caches, users). Leaving keys, worker
//!   registrations and integrations are deleted before anything else: nothing refers to them.

use super::StateError;
use super::document::{Document, IntegrationEntry, IntegrationKind};
use crate::auth;
use crate::crypt::{Crypt, Sealed};
use crate::model::{
    ApiKey, Cache, ForgeConnection, Member, Membership, Org, Project, Role, RoleRef, SubscribedCache, Subscriber,
    Timestamp, User, WorkerRegistration,
};
use crate::nix::signing::SecretKey;
use crate::permissions::{BuiltinRole, KeyScope};
use crate::ports::storage::{ManagedEntities, StateWrite};
use crate::{ApiKeyId, CacheId, Name, OrgId, PeerId, ProjectId, RoleId, UserId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a change does to an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Create,
    Update,
    Delete,
    Unmanage,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Unmanage => "unmanage",
        }
    }
}

/// One entity's change: `update project acme/web-app: repository, flake_input_overrides`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub action: Action,
    /// `user`, `organization`, `role`, `project`, `cache`, `api key`, `worker`, `integration`.
    pub kind: &'static str,
    /// The entity's name (`org/name` for what lives in an organization, `owner/name` for API keys).
    pub name: String,
    /// For updates, the fields that change (`managed` when an unmanaged entity is adopted).
    pub fields: Vec<&'static str>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.action.as_str(), self.kind, self.name)?;
        if !self.fields.is_empty() {
            write!(f, ": {}", self.fields.join(", "))?;
        }
        Ok(())
    }
}

/// The changes, in the order they are listed, and the writes that make them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub writes: Vec<StateWrite>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    /// `plan: 2 to create, 1 to update, 0 to delete, 1 to unmanage`, or `plan: no changes`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "plan: no changes".into();
        }
        format!(
            "plan: {} to create, {} to update, {} to delete, {} to unmanage",
            self.count(Action::Create),
            self.count(Action::Update),
            self.count(Action::Delete),
            self.count(Action::Unmanage)
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        write!(f, "{}", self.summary())
    }
}

/// The secret files' contents, by path, as read ([`super::secret_contents`] is applied here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, path: impl Into<String>, raw: &str) {
        self.0.insert(path.into(), super::secret_contents(raw).to_owned());
    }

    fn get(&self, path: &str) -> Option<&str> {
        self.0.get(path).map(String::as_str)
    }
}

/// What the planner needs besides the document and the database.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub crypt: &'a Crypt,
    pub now: Timestamp,
    /// The server's public host name: generated cache signing keys are named `<host>-<cache>`.
    pub domain: &'a str,
    /// The co-located worker: no declared registration may take its id, and every organization the state
    /// creates gets its registration (unmanaged: the server's own), as organizations the API creates do.
    pub local_worker: Option<&'a crate::service::LocalWorker>,
}

/// What the database holds that the plan depends on: every entity the document names or refers to (looked
/// up by name), the contents of the organizations and caches involved, and every managed entity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub users: BTreeMap<Name, User>,
    /// Users by email, for the emails the document declares.
    pub emails: BTreeMap<String, User>,
    pub orgs: BTreeMap<Name, Org>,
    pub roles: BTreeMap<OrgId, Vec<Role>>,
    pub members: BTreeMap<OrgId, Vec<Member>>,
    pub projects: BTreeMap<OrgId, Vec<Project>>,
    pub subscriptions: BTreeMap<OrgId, Vec<SubscribedCache>>,
    pub caches: BTreeMap<Name, Cache>,
    pub subscribers: BTreeMap<CacheId, Vec<Subscriber>>,
    pub api_keys: BTreeMap<UserId, Vec<ApiKey>>,
    pub workers: BTreeMap<OrgId, Vec<WorkerRegistration>>,
    /// Sealed secret and managed flag.
    pub webhook_secrets: BTreeMap<OrgId, (Sealed, bool)>,
    pub forge_connections: BTreeMap<OrgId, ForgeConnection>,
    pub managed: ManagedEntities,
}

impl Current {
    fn user_by_id(&self, id: UserId) -> Option<&User> {
        self.users.values().chain(&self.managed.users).find(|u| u.id == id)
    }

    fn org_by_id(&self, id: OrgId) -> Option<&Org> {
        self.orgs.values().chain(&self.managed.orgs).find(|o| o.id == id)
    }

    fn org_name(&self, id: OrgId) -> String {
        self.org_by_id(id)
            .map_or_else(|| id.to_string(), |o| o.name.to_string())
    }
}

/// Plans `doc` against `cur`. `secrets` is `None` for a check that reads no files: secrets then count as
/// unchanged, and the writes are not meant to be applied.
pub fn plan(doc: &Document, cur: &Current, secrets: Option<&Secrets>, cx: &Context<'_>) -> Result<Plan, StateError> {
    let mut p = Planner::new(doc, cur, secrets, cx);
    p.users()?;
    p.org_ids();
    p.roles()?;
    p.orgs()?;
    p.projects()?;
    p.caches()?;
    p.push_caches()?;
    p.api_keys()?;
    p.workers()?;
    p.integrations()?;
    p.leaving();
    Ok(p.finish())
}

#[derive(Default)]
struct Writes {
    users: Vec<StateWrite>,
    orgs: Vec<StateWrite>,
    roles: Vec<StateWrite>,
    members: Vec<StateWrite>,
    projects: Vec<StateWrite>,
    caches: Vec<StateWrite>,
    grants: Vec<StateWrite>,
    push: Vec<StateWrite>,
    keys: Vec<StateWrite>,
    workers: Vec<StateWrite>,
    integrations: Vec<StateWrite>,
    unmanage: Vec<StateWrite>,
    /// By deletion rank (0 first).
    deletes: BTreeMap<u8, Vec<StateWrite>>,
}

struct Planner<'a> {
    doc: &'a Document,
    cur: &'a Current,
    secrets: Option<&'a Secrets>,
    cx: &'a Context<'a>,
    user_ids: BTreeMap<Name, UserId>,
    org_ids: BTreeMap<Name, OrgId>,
    /// (org, lowercase name) → role.
    role_ids: BTreeMap<(OrgId, String), RoleId>,
    cache_ids: BTreeMap<Name, CacheId>,
    /// Organization changes are listed once, with the fields of the organization, its members and push cache.
    org_changes: BTreeMap<Name, (Action, BTreeSet<&'static str>)>,
    /// Existing managed entities the document still declares.
    kept_api_keys: BTreeSet<ApiKeyId>,
    kept_workers: BTreeSet<PeerId>,
    changes: Vec<Change>,
    w: Writes,
}

/// Compares two values, noting the field when they differ.
fn diff<T: PartialEq>(fields: &mut Vec<&'static str>, field: &'static str, old: &T, new: &T) {
    if old != new {
        fields.push(field);
    }
}

impl<'a> Planner<'a> {
    fn new(doc: &'a Document, cur: &'a Current, secrets: Option<&'a Secrets>, cx: &'a Context<'a>) -> Self {
        Self {
            doc,
            cur,
            secrets,
            cx,
            user_ids: BTreeMap::new(),
            org_ids: BTreeMap::new(),
            role_ids: BTreeMap::new(),
            cache_ids: BTreeMap::new(),
            org_changes: BTreeMap::new(),
            kept_api_keys: BTreeSet::new(),
            kept_workers: BTreeSet::new(),
            changes: Vec::new(),
            w: Writes::default(),
        }
    }

    /// The contents of a secret file; `None` when checking without files.
    fn secret(&self, at: String, path: &str) -> Result<Option<&'a str>, StateError> {
        match self.secrets {
            None => Ok(None),
            Some(s) => s
                .get(path)
                .map(Some)
                .ok_or_else(|| StateError::new(at, format!("{path} was not read"))),
        }
    }

    fn change(&mut self, action: Action, kind: &'static str, name: String, fields: Vec<&'static str>) {
        self.changes.push(Change {
            action,
            kind,
            name,
            fields,
        });
    }

    /// Whether an existing managed entity leaves the document and is deleted (so cannot be referred to).
    fn deleting(&self) -> bool {
        self.doc.delete_state == Some(true)
    }

    /// Whether an existing entity stays in the database (one the document still declares, or one that is
    /// unmanaged, or kept unmanaged without `delete_state`).
    fn stays(&self, managed: bool) -> bool {
        !(managed && self.deleting())
    }

    fn resolve_user(&self, at: String, name: &Name) -> Result<UserId, StateError> {
        if let Some(id) = self.user_ids.get(name) {
            return Ok(*id);
        }
        match self.cur.users.get(name) {
            Some(u) if self.stays(u.managed) => Ok(u.id),
            Some(_) => Err(StateError::new(
                at,
                format!("user '{name}' leaves the document and is deleted (delete_state)"),
            )),
            None => Err(StateError::new(
                at,
                format!("no user '{name}' in the document or the database"),
            )),
        }
    }

    fn resolve_org(&self, at: String, name: &Name) -> Result<OrgId, StateError> {
        self.org_ids
            .get(name)
            .copied()
            .ok_or_else(|| match self.cur.orgs.get(name) {
                Some(_) => StateError::new(
                    at,
                    format!("organization '{name}' leaves the document and is deleted (delete_state)"),
                ),
                None => StateError::new(at, format!("no organization '{name}' in the document or the database")),
            })
    }

    fn users(&mut self) -> Result<(), StateError> {
        for u in &self.doc.users {
            let existing = self.cur.users.get(&u.username);
            if let Some(other) = self.cur.emails.get(u.email.as_str())
                && other.username != u.username
            {
                return Err(StateError::new(
                    format!("users.{}.email", u.key),
                    format!("already the email of user '{}'", other.username),
                ));
            }
            let at = format!("users.{}.password_file", u.key);
            let password_hash = match &u.password_file {
                None => None,
                Some(path) => match self.secret(at.clone(), path)? {
                    // Checking without files: the password counts as unchanged.
                    None => existing.and_then(|e| e.password_hash.clone()).or(Some(String::new())),
                    Some(content) if content.starts_with("$argon2id$") => {
                        if argon2::password_hash::PasswordHash::new(content).is_err() {
                            return Err(StateError::new(at, "holds no valid argon2id hash"));
                        }
                        Some(content.to_owned())
                    }
                    Some(content) => {
                        auth::check_password_policy(content).map_err(|m| StateError::new(at.clone(), m))?;
                        match existing.and_then(|e| e.password_hash.as_deref()) {
                            Some(stored) if auth::verify_password(content, stored) => Some(stored.to_owned()),
                            _ => Some(auth::hash_password(content)),
                        }
                    }
                },
            };
            let user = User {
                id: existing.map_or_else(UserId::new, |e| e.id),
                username: u.username.clone(),
                name: u.name.clone(),
                email: u.email.clone(),
                password_hash,
                email_verified: u.email_verified,
                created_at: existing.map_or(self.cx.now, |e| e.created_at),
                managed: true,
            };
            self.user_ids.insert(u.username.clone(), user.id);
            match existing {
                None => self.change(Action::Create, "user", u.username.to_string(), vec![]),
                Some(e) => {
                    let mut fields = Vec::new();
                    diff(&mut fields, "name", &e.name, &user.name);
                    diff(&mut fields, "email", &e.email, &user.email);
                    diff(&mut fields, "password_file", &e.password_hash, &user.password_hash);
                    diff(&mut fields, "email_verified", &e.email_verified, &user.email_verified);
                    diff(&mut fields, "managed", &e.managed, &user.managed);
                    if fields.is_empty() {
                        continue;
                    }
                    self.change(Action::Update, "user", u.username.to_string(), fields);
                }
            }
            self.w.users.push(StateWrite::PutUser(user));
        }
        // Existing users the document refers to without declaring them.
        for (name, u) in &self.cur.users {
            if !self.user_ids.contains_key(name) && self.stays(u.managed) {
                self.user_ids.insert(name.clone(), u.id);
            }
        }
        Ok(())
    }

    /// Ids of the organizations declared (existing or new) and of existing ones that stay.
    fn org_ids(&mut self) {
        for o in &self.doc.orgs {
            let existing = self.cur.orgs.get(&o.name);
            self.org_ids
                .insert(o.name.clone(), existing.map_or_else(OrgId::new, |e| e.id));
            // Listed here, before what the organization holds; its fields (and whether it is listed at all) are
            // settled by `finish`, once its members and push cache are planned.
            self.changes.push(Change {
                action: if existing.is_some() {
                    Action::Update
                } else {
                    Action::Create
                },
                kind: "organization",
                name: o.name.to_string(),
                fields: vec![],
            });
        }
        for (name, o) in &self.cur.orgs {
            if !self.org_ids.contains_key(name) && self.stays(o.managed) {
                self.org_ids.insert(name.clone(), o.id);
            }
        }
    }

    fn roles(&mut self) -> Result<(), StateError> {
        let declared: BTreeSet<(Name, String)> = self
            .doc
            .roles
            .iter()
            .map(|r| (r.organization.clone(), r.name.to_ascii_lowercase()))
            .collect();
        for r in &self.doc.roles {
            let org_id = self.resolve_org(format!("roles.{}.organization", r.key), &r.organization)?;
            let existing = self
                .cur
                .roles
                .get(&org_id)
                .and_then(|roles| roles.iter().find(|e| e.name.eq_ignore_ascii_case(&r.name)));
            let role = Role {
                id: existing.map_or_else(RoleId::new, |e| e.id),
                org_id,
                name: existing.map_or_else(|| r.name.clone(), |e| e.name.clone()),
                permissions: r.permissions.clone(),
                managed: true,
            };
            self.role_ids.insert((org_id, r.name.to_ascii_lowercase()), role.id);
            let name = format!("{}/{}", r.organization, role.name);
            match existing {
                None => self.change(Action::Create, "role", name, vec![]),
                Some(e) => {
                    let mut fields = Vec::new();
                    diff(&mut fields, "permissions", &e.permissions, &role.permissions);
                    diff(&mut fields, "managed", &e.managed, &role.managed);
                    if fields.is_empty() {
                        continue;
                    }
                    self.change(Action::Update, "role", name, fields);
                }
            }
            self.w.roles.push(StateWrite::PutRole(role));
        }
        // Existing custom roles that stay may be held by declared members.
        for (org_id, roles) in &self.cur.roles {
            let org = self.cur.org_by_id(*org_id).map(|o| o.name.clone());
            for role in roles {
                let leaves = role.managed
                    && self.deleting()
                    && !org
                        .as_ref()
                        .is_some_and(|o| declared.contains(&(o.clone(), role.name.to_ascii_lowercase())));
                if !leaves {
                    self.role_ids
                        .entry((*org_id, role.name.to_ascii_lowercase()))
                        .or_insert(role.id);
                }
            }
        }
        Ok(())
    }

    fn orgs(&mut self) -> Result<(), StateError> {
        for o in &self.doc.orgs {
            let creator = self.resolve_user(format!("organizations.{}.created_by", o.key), &o.created_by)?;
            let existing = self.cur.orgs.get(&o.name);
            let org = Org {
                id: self.org_ids[&o.name],
                name: o.name.clone(),
                display_name: o.display_name.clone(),
                description: o.description.clone(),
                public: o.public,
                created_by: existing.map_or(creator, |e| e.created_by),
                created_at: existing.map_or(self.cx.now, |e| e.created_at),
                managed: true,
            };
            let mut fields = BTreeSet::new();
            let action = match existing {
                None => Action::Create,
                Some(e) => {
                    let mut f = Vec::new();
                    diff(&mut f, "display_name", &e.display_name, &org.display_name);
                    diff(&mut f, "description", &e.description, &org.description);
                    diff(&mut f, "public", &e.public, &org.public);
                    diff(&mut f, "managed", &e.managed, &org.managed);
                    fields.extend(f);
                    Action::Update
                }
            };
            if existing.is_none() || !fields.is_empty() {
                self.w.orgs.push(StateWrite::PutOrg(org.clone()));
            }
            if let (None, Some(local)) = (existing, self.cx.local_worker) {
                self.w
                    .workers
                    .push(StateWrite::PutWorkerRegistration(WorkerRegistration {
                        peer_id: PeerId::new(),
                        org_id: org.id,
                        worker_id: local.id,
                        proof_key: crate::proto::seal_proof_key(self.cx.crypt, &local.proof_key),
                        created_at: self.cx.now,
                        managed: false,
                        url: None,
                    }));
            }
            // Members: the whole membership.
            let current: BTreeMap<UserId, RoleRef> = match existing {
                None => BTreeMap::new(),
                Some(_) => self
                    .cur
                    .members
                    .get(&org.id)
                    .into_iter()
                    .flatten()
                    .map(|m| (m.user_id, m.role.clone()))
                    .collect(),
            };
            let mut desired = BTreeMap::new();
            for (user, role) in o.effective_members() {
                let at = format!("organizations.{}.members.{user}", o.key);
                let user_id = self.resolve_user(at.clone(), &user)?;
                let role = match BuiltinRole::parse(&role) {
                    Some(b) => RoleRef::Builtin(b),
                    None => {
                        RoleRef::Custom(*self.role_ids.get(&(org.id, role.to_ascii_lowercase())).ok_or_else(|| {
                            StateError::new(
                                at,
                                format!(
                                    "no role '{role}' in organization '{}' (Admin, Write, View or a custom role)",
                                    o.name
                                ),
                            )
                        })?)
                    }
                };
                desired.insert(user_id, role);
            }
            for (user, role) in &desired {
                if current.get(user) != Some(role) {
                    self.w.members.push(StateWrite::SetMembership(Membership {
                        org_id: org.id,
                        user_id: *user,
                        role: role.clone(),
                    }));
                    fields.insert("members");
                }
            }
            for user in current.keys() {
                if !desired.contains_key(user) {
                    self.w.members.push(StateWrite::DeleteMembership {
                        org: org.id,
                        user: *user,
                    });
                    fields.insert("members");
                }
            }
            if action == Action::Create {
                fields.clear();
            }
            if action == Action::Create || !fields.is_empty() {
                self.org_changes.insert(o.name.clone(), (action, fields));
            }
        }
        Ok(())
    }

    fn projects(&mut self) -> Result<(), StateError> {
        for p in &self.doc.projects {
            let org_id = self.resolve_org(format!("projects.{}.organization", p.key), &p.organization)?;
            let creator = self.resolve_user(format!("projects.{}.created_by", p.key), &p.created_by)?;
            let existing = self
                .cur
                .projects
                .get(&org_id)
                .and_then(|ps| ps.iter().find(|e| e.name == p.name));
            let project = Project {
                id: existing.map_or_else(ProjectId::new, |e| e.id),
                org_id,
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                description: p.description.clone(),
                repository: p.repository.clone(),
                branch: p.branch.clone(),
                wildcard: p.wildcard.clone(),
                flake_input_overrides: p.flake_input_overrides.clone(),
                keep_evaluations: p.keep_evaluations,
                poll_interval_secs: p.poll_interval_secs,
                schedule: p.schedule.clone(),
                active: p.active,
                pull_requests: p.pull_requests,
                fork_pull_requests: p.fork_pull_requests,
                created_by: existing.map_or(creator, |e| e.created_by),
                created_at: existing.map_or(self.cx.now, |e| e.created_at),
                managed: true,
            };
            let name = format!("{}/{}", p.organization, p.name);
            match existing {
                None => self.change(Action::Create, "project", name, vec![]),
                Some(e) => {
                    let mut f = Vec::new();
                    diff(&mut f, "display_name", &e.display_name, &project.display_name);
                    diff(&mut f, "description", &e.description, &project.description);
                    diff(&mut f, "repository", &e.repository, &project.repository);
                    diff(&mut f, "branch", &e.branch, &project.branch);
                    diff(&mut f, "wildcard", &e.wildcard, &project.wildcard);
                    diff(
                        &mut f,
                        "flake_input_overrides",
                        &e.flake_input_overrides,
                        &project.flake_input_overrides,
                    );
                    diff(
                        &mut f,
                        "keep_evaluations",
                        &e.keep_evaluations,
                        &project.keep_evaluations,
                    );
                    diff(
                        &mut f,
                        "poll_interval_secs",
                        &e.poll_interval_secs,
                        &project.poll_interval_secs,
                    );
                    diff(&mut f, "schedule", &e.schedule, &project.schedule);
                    diff(&mut f, "active", &e.active, &project.active);
                    diff(&mut f, "pull_requests", &e.pull_requests, &project.pull_requests);
                    diff(
                        &mut f,
                        "fork_pull_requests",
                        &e.fork_pull_requests,
                        &project.fork_pull_requests,
                    );
                    diff(&mut f, "managed", &e.managed, &project.managed);
                    if f.is_empty() {
                        continue;
                    }
                    self.change(Action::Update, "project", name, f);
                }
            }
            self.w.projects.push(StateWrite::PutProject(project));
        }
        Ok(())
    }

    fn new_signing_key(&self, cache: &Name) -> Result<Sealed, StateError> {
        let host = self.cx.domain.rsplit_once(':').map_or(self.cx.domain, |(h, _)| h);
        let key = SecretKey::generate(&format!("{host}-{cache}")).map_err(|e| {
            StateError::new(
                format!("caches.{cache}.name"),
                format!("cannot name the signing key: {e}"),
            )
        })?;
        Ok(self.cx.crypt.seal(key.to_string().as_bytes()))
    }

    fn caches(&mut self) -> Result<(), StateError> {
        for c in &self.doc.caches {
            let owner = self.resolve_user(format!("caches.{}.created_by", c.key), &c.created_by)?;
            let existing = self.cur.caches.get(&c.name);
            let signing_key = match (&c.signing_key_file, existing) {
                (Some(path), _) => {
                    let at = format!("caches.{}.signing_key_file", c.key);
                    match self.secret(at.clone(), path)? {
                        None => existing.map_or_else(|| Sealed(String::new()), |e| e.signing_key.clone()),
                        Some(content) => {
                            SecretKey::parse(content).map_err(|e| {
                                StateError::new(at, format!("holds no secret key (nix key generate-secret): {e}"))
                            })?;
                            let stored = existing.and_then(|e| self.cx.crypt.open(&e.signing_key).ok());
                            match existing {
                                Some(e) if stored.as_deref() == Some(content.as_bytes()) => e.signing_key.clone(),
                                _ => self.cx.crypt.seal(content.as_bytes()),
                            }
                        }
                    }
                }
                (None, Some(e)) if !e.signing_key.0.is_empty() => e.signing_key.clone(),
                (None, _) => self.new_signing_key(&c.name)?,
            };
            let cache = Cache {
                id: existing.map_or_else(CacheId::new, |e| e.id),
                name: c.name.clone(),
                display_name: c.display_name.clone(),
                description: c.description.clone(),
                public: c.public,
                priority: c.priority,
                local_priority: c.local_priority,
                compression: c.compression,
                signing_key,
                created_by: owner,
                created_at: existing.map_or(self.cx.now, |e| e.created_at),
                managed: true,
            };
            self.cache_ids.insert(c.name.clone(), cache.id);
            let mut fields = Vec::new();
            if let Some(e) = existing {
                diff(&mut fields, "display_name", &e.display_name, &cache.display_name);
                diff(&mut fields, "description", &e.description, &cache.description);
                diff(&mut fields, "public", &e.public, &cache.public);
                diff(&mut fields, "priority", &e.priority, &cache.priority);
                diff(&mut fields, "local_priority", &e.local_priority, &cache.local_priority);
                diff(&mut fields, "compression", &e.compression, &cache.compression);
                diff(&mut fields, "signing_key_file", &e.signing_key, &cache.signing_key);
                diff(&mut fields, "created_by", &e.created_by, &cache.created_by);
                diff(&mut fields, "managed", &e.managed, &cache.managed);
            }
            if existing.is_none() || !fields.is_empty() {
                self.w.caches.push(StateWrite::PutCache(cache.clone()));
            }
            // Grants: the cache's whole list.
            let granted: BTreeSet<OrgId> = match existing {
                None => BTreeSet::new(),
                Some(_) => self
                    .cur
                    .subscribers
                    .get(&cache.id)
                    .into_iter()
                    .flatten()
                    .filter(|s| s.granted)
                    .map(|s| s.org.id)
                    .collect(),
            };
            let mut desired = BTreeSet::new();
            for org in &c.organizations {
                desired.insert(self.resolve_org(format!("caches.{}.organizations", c.key), org)?);
            }
            for org in desired.difference(&granted) {
                self.w.grants.push(StateWrite::Grant {
                    org: *org,
                    cache: cache.id,
                });
            }
            for org in granted.difference(&desired) {
                self.w.grants.push(StateWrite::Revoke {
                    org: *org,
                    cache: cache.id,
                });
            }
            if desired != granted {
                fields.push("organizations");
            }
            match existing {
                None => self.change(Action::Create, "cache", c.name.to_string(), vec![]),
                Some(_) if !fields.is_empty() => self.change(Action::Update, "cache", c.name.to_string(), fields),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn push_caches(&mut self) -> Result<(), StateError> {
        for o in &self.doc.orgs {
            let org_id = self.org_ids[&o.name];
            let desired = o.push_cache.as_ref().map(|c| self.cache_ids[c]);
            let current = if self.cur.orgs.contains_key(&o.name) {
                self.cur
                    .subscriptions
                    .get(&org_id)
                    .into_iter()
                    .flatten()
                    .find(|s| s.push)
                    .map(|s| s.cache.id)
            } else {
                None
            };
            // A revoked grant takes the push flag with it: set it again when the plan revokes the current one.
            let revoked =
                current.is_some_and(|c| self.w.grants.contains(&StateWrite::Revoke { org: org_id, cache: c }));
            let effective = if revoked { None } else { current };
            if desired != effective {
                self.w.push.push(StateWrite::SetPushCache {
                    org: org_id,
                    cache: desired,
                });
            }
            if desired != current {
                let entry = self
                    .org_changes
                    .entry(o.name.clone())
                    .or_insert((Action::Update, BTreeSet::new()));
                if entry.0 == Action::Update {
                    entry.1.insert("push_cache");
                }
            }
        }
        Ok(())
    }

    fn api_keys(&mut self) -> Result<(), StateError> {
        for k in &self.doc.api_keys {
            let owner = self.resolve_user(format!("api_keys.{}.owned_by", k.key), &k.owned_by)?;
            let organization = match &k.organization {
                Some(o) => Some(self.resolve_org(format!("api_keys.{}.organization", k.key), o)?),
                None => None,
            };
            let existing = {
                let keys = self.cur.api_keys.get(&owner).map(Vec::as_slice).unwrap_or_default();
                keys.iter()
                    .find(|e| e.managed && e.name == k.name)
                    .or_else(|| keys.iter().find(|e| e.name == k.name))
            };
            let at = format!("api_keys.{}.key_file", k.key);
            let hash = match self.secret(at.clone(), &k.key_file)? {
                None => existing.map_or_else(String::new, |e| e.hash.clone()),
                Some(token) => {
                    let token = token.trim();
                    let long_enough = token
                        .strip_prefix(auth::API_KEY_PREFIX)
                        .is_some_and(|s| s.chars().count() >= 32 && !s.contains(char::is_whitespace));
                    if !long_enough {
                        return Err(StateError::new(
                            at,
                            "must hold the whole token: GRAD and at least 32 more characters, no spaces",
                        ));
                    }
                    auth::api_key_hash(token).unwrap_or_default()
                }
            };
            let key = ApiKey {
                id: existing.map_or_else(ApiKeyId::new, |e| e.id),
                user_id: owner,
                name: k.name.clone(),
                hash,
                scope: KeyScope {
                    organization,
                    permissions: k.permissions.clone(),
                },
                created_at: existing.map_or(self.cx.now, |e| e.created_at),
                last_used_at: existing.and_then(|e| e.last_used_at),
                managed: true,
            };
            // The token of another key (one that stays, unmanaged or not): refused here rather than by the
            // database's uniqueness rule, so the message names the entry.
            let taken = self
                .cur
                .api_keys
                .values()
                .flatten()
                .chain(&self.cur.managed.api_keys)
                .find(|other| other.id != key.id && other.hash == key.hash && !key.hash.is_empty());
            if let Some(other) = taken
                && !(other.managed && self.deleting())
            {
                return Err(StateError::new(
                    format!("api_keys.{}.key_file", k.key),
                    format!(
                        "holds the token of another API key ('{}'); give each key its own",
                        other.name
                    ),
                ));
            }
            self.kept_api_keys.insert(key.id);
            let name = format!("{}/{}", k.owned_by, k.name);
            match existing {
                None => self.change(Action::Create, "api key", name, vec![]),
                Some(e) => {
                    let mut f = Vec::new();
                    diff(&mut f, "key_file", &e.hash, &key.hash);
                    diff(&mut f, "permissions", &e.scope.permissions, &key.scope.permissions);
                    diff(&mut f, "organization", &e.scope.organization, &key.scope.organization);
                    diff(&mut f, "managed", &e.managed, &key.managed);
                    if f.is_empty() {
                        continue;
                    }
                    self.change(Action::Update, "api key", name, f);
                }
            }
            self.w.keys.push(StateWrite::PutApiKey(key));
        }
        Ok(())
    }

    fn workers(&mut self) -> Result<(), StateError> {
        for wk in &self.doc.workers {
            if self.cx.local_worker.map(|l| l.id) == Some(wk.worker_id) {
                return Err(StateError::new(
                    format!("workers.{}.worker_id", wk.key),
                    "is this server's own worker's id; choose another",
                ));
            }
            let at = format!("workers.{}.token_file", wk.key);
            let proof_key = match self.secret(at.clone(), &wk.token_file)? {
                None => None,
                Some(token) => {
                    crate::service::check_token(token).map_err(|e| StateError::new(at, e.to_string()))?;
                    Some(crate::proto::proof_key(token.trim()))
                }
            };
            for org in &wk.organizations {
                let org_id = self.resolve_org(format!("workers.{}.organizations", wk.key), org)?;
                let existing = self
                    .cur
                    .workers
                    .get(&org_id)
                    .and_then(|ws| ws.iter().find(|r| r.worker_id == wk.worker_id));
                let same_key = match (existing, proof_key) {
                    (Some(e), Some(key)) => crate::proto::open_proof_key(self.cx.crypt, &e.proof_key) == Some(key),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                let registration = WorkerRegistration {
                    peer_id: existing.map_or_else(PeerId::new, |e| e.peer_id),
                    org_id,
                    worker_id: wk.worker_id,
                    proof_key: match (existing, proof_key) {
                        (Some(e), _) if same_key => e.proof_key.clone(),
                        (_, Some(key)) => crate::proto::seal_proof_key(self.cx.crypt, &key),
                        (_, None) => Sealed(String::new()),
                    },
                    created_at: existing.map_or(self.cx.now, |e| e.created_at),
                    managed: true,
                    url: wk.url.clone(),
                };
                self.kept_workers.insert(registration.peer_id);
                let name = format!("{org}/{}", wk.worker_id);
                match existing {
                    None => self.change(Action::Create, "worker", name, vec![]),
                    Some(e) => {
                        let mut f = Vec::new();
                        if !same_key {
                            f.push("token_file");
                        }
                        diff(&mut f, "managed", &e.managed, &registration.managed);
                        diff(&mut f, "url", &e.url, &registration.url);
                        if f.is_empty() {
                            continue;
                        }
                        self.change(Action::Update, "worker", name, f);
                    }
                }
                self.w.workers.push(StateWrite::PutWorkerRegistration(registration));
            }
        }
        Ok(())
    }

    /// Whether a sealed value opens to `plain`.
    fn opens_to(&self, sealed: &Sealed, plain: &str) -> bool {
        self.cx
            .crypt
            .open(sealed)
            .is_ok_and(|v| auth::secrets_equal(&v, plain.as_bytes()))
    }

    fn integrations(&mut self) -> Result<(), StateError> {
        for i in &self.doc.integrations {
            let key = i.key();
            let org_id = self.resolve_org(format!("integrations.{key}.organization"), i.organization())?;
            let name = format!("{}/{}", i.organization(), i.kind().as_str());
            match i {
                IntegrationEntry::Inbound { secret_file, .. } => {
                    let at = format!("integrations.{key}.secret_file");
                    let content = self.secret(at.clone(), secret_file)?;
                    if content.is_some_and(|c| c.trim().is_empty() || c.len() > 4096) {
                        return Err(StateError::new(at, "must hold the webhook secret (1 to 4096 bytes)"));
                    }
                    let existing = self.cur.webhook_secrets.get(&org_id);
                    let same = match (existing, content) {
                        (Some((sealed, _)), Some(c)) => self.opens_to(sealed, c),
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    let secret = match (existing, content) {
                        (Some((sealed, _)), _) if same => sealed.clone(),
                        (_, Some(c)) => self.cx.crypt.seal(c.as_bytes()),
                        (_, None) => Sealed(String::new()),
                    };
                    let mut f = Vec::new();
                    if let Some((_, managed)) = existing {
                        if !same {
                            f.push("secret_file");
                        }
                        diff(&mut f, "managed", managed, &true);
                        if f.is_empty() {
                            continue;
                        }
                    }
                    let action = if existing.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    };
                    self.change(action, "integration", name, f);
                    self.w.integrations.push(StateWrite::PutWebhookSecret {
                        org: org_id,
                        secret,
                        managed: true,
                    });
                }
                IntegrationEntry::Outbound {
                    forge,
                    endpoint_url,
                    access_token_file,
                    ..
                } => {
                    let at = format!("integrations.{key}.access_token_file");
                    let token = match self.secret(at.clone(), access_token_file)? {
                        None => None,
                        Some(t) => Some(
                            crate::service::statuses::check_forge_token(t)
                                .map_err(|e| StateError::new(at, e.to_string()))?,
                        ),
                    };
                    let existing = self.cur.forge_connections.get(&org_id);
                    let same_token = match (existing, token) {
                        (Some(e), Some(t)) => self.opens_to(&e.token, t),
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    let connection = ForgeConnection {
                        org_id,
                        forge: *forge,
                        api_url: endpoint_url.clone(),
                        token: match (existing, token) {
                            (Some(e), _) if same_token => e.token.clone(),
                            (_, Some(t)) => self.cx.crypt.seal(t.as_bytes()),
                            (_, None) => Sealed(String::new()),
                        },
                        managed: true,
                    };
                    let mut f = Vec::new();
                    if let Some(e) = existing {
                        diff(&mut f, "forge_type", &e.forge, &connection.forge);
                        diff(&mut f, "endpoint_url", &e.api_url, &connection.api_url);
                        if !same_token {
                            f.push("access_token_file");
                        }
                        diff(&mut f, "managed", &e.managed, &true);
                        if f.is_empty() {
                            continue;
                        }
                    }
                    let action = if existing.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    };
                    self.change(action, "integration", name, f);
                    self.w.integrations.push(StateWrite::PutForgeConnection(connection));
                }
            }
        }
        Ok(())
    }

    /// Managed entities the document no longer declares: unmanaged, or deleted with `delete_state`.
    fn leaving(&mut self) {
        let cur: &'a Current = self.cur;
        let doc: &'a Document = self.doc;
        let m = &cur.managed;
        let delete = self.deleting();
        let action = if delete { Action::Delete } else { Action::Unmanage };
        let leave = |p: &mut Self, kind: &'static str, name: String, rank: u8, del: StateWrite, keep: StateWrite| {
            p.change(action, kind, name, vec![]);
            if delete {
                p.w.deletes.entry(rank).or_default().push(del);
            } else {
                p.w.unmanage.push(keep);
            }
        };
        let declared_users: BTreeSet<&Name> = doc.users.iter().map(|u| &u.username).collect();
        let declared_orgs: BTreeSet<&Name> = doc.orgs.iter().map(|o| &o.name).collect();
        let declared_caches: BTreeSet<&Name> = doc.caches.iter().map(|c| &c.name).collect();
        let declared_roles: BTreeSet<(String, String)> = self
            .doc
            .roles
            .iter()
            .map(|r| (r.organization.to_string(), r.name.to_ascii_lowercase()))
            .collect();
        let declared_projects: BTreeSet<(String, String)> = self
            .doc
            .projects
            .iter()
            .map(|p| (p.organization.to_string(), p.name.to_string()))
            .collect();
        let inbound: BTreeSet<String> = self
            .doc
            .integrations
            .iter()
            .filter(|i| i.kind() == IntegrationKind::Inbound)
            .map(|i| i.organization().to_string())
            .collect();
        let outbound: BTreeSet<String> = self
            .doc
            .integrations
            .iter()
            .filter(|i| i.kind() == IntegrationKind::Outbound)
            .map(|i| i.organization().to_string())
            .collect();

        for k in &m.api_keys {
            if !self.kept_api_keys.contains(&k.id) {
                let owner = cur
                    .user_by_id(k.user_id)
                    .map_or_else(|| k.user_id.to_string(), |u| u.username.to_string());
                let keep = ApiKey {
                    managed: false,
                    ..k.clone()
                };
                leave(
                    self,
                    "api key",
                    format!("{owner}/{}", k.name),
                    0,
                    StateWrite::DeleteApiKey(k.id),
                    StateWrite::PutApiKey(keep),
                );
            }
        }
        for r in &m.workers {
            if !self.kept_workers.contains(&r.peer_id) {
                let keep = WorkerRegistration {
                    managed: false,
                    ..r.clone()
                };
                let name = format!("{}/{}", cur.org_name(r.org_id), r.worker_id);
                leave(
                    self,
                    "worker",
                    name,
                    0,
                    StateWrite::DeleteWorkerRegistration(r.peer_id),
                    StateWrite::PutWorkerRegistration(keep),
                );
            }
        }
        for org in &m.webhook_secrets {
            let org_name = cur.org_name(*org);
            if !inbound.contains(&org_name) {
                let secret = cur
                    .webhook_secrets
                    .get(org)
                    .map_or_else(|| Sealed(String::new()), |(s, _)| s.clone());
                let keep = StateWrite::PutWebhookSecret {
                    org: *org,
                    secret,
                    managed: false,
                };
                leave(
                    self,
                    "integration",
                    format!("{org_name}/inbound"),
                    0,
                    StateWrite::DeleteWebhookSecret(*org),
                    keep,
                );
            }
        }
        for c in &m.forge_connections {
            let org_name = cur.org_name(c.org_id);
            if !outbound.contains(&org_name) {
                let keep = ForgeConnection {
                    managed: false,
                    ..c.clone()
                };
                leave(
                    self,
                    "integration",
                    format!("{org_name}/outbound"),
                    0,
                    StateWrite::DeleteForgeConnection(c.org_id),
                    StateWrite::PutForgeConnection(keep),
                );
            }
        }
        for p in &m.projects {
            let org_name = cur.org_name(p.org_id);
            if !declared_projects.contains(&(org_name.clone(), p.name.to_string())) {
                let keep = Project {
                    managed: false,
                    ..p.clone()
                };
                leave(
                    self,
                    "project",
                    format!("{org_name}/{}", p.name),
                    2,
                    StateWrite::DeleteProject(p.id),
                    StateWrite::PutProject(keep),
                );
            }
        }
        for r in &m.roles {
            let org_name = cur.org_name(r.org_id);
            if !declared_roles.contains(&(org_name.clone(), r.name.to_ascii_lowercase())) {
                let keep = Role {
                    managed: false,
                    ..r.clone()
                };
                leave(
                    self,
                    "role",
                    format!("{org_name}/{}", r.name),
                    2,
                    StateWrite::DeleteRole(r.id),
                    StateWrite::PutRole(keep),
                );
            }
        }
        for c in &m.caches {
            if !declared_caches.contains(&c.name) {
                let keep = Cache {
                    managed: false,
                    ..c.clone()
                };
                leave(
                    self,
                    "cache",
                    c.name.to_string(),
                    3,
                    StateWrite::DeleteCache(c.id),
                    StateWrite::PutCache(keep),
                );
            }
        }
        for o in &m.orgs {
            if !declared_orgs.contains(&o.name) {
                let keep = Org {
                    managed: false,
                    ..o.clone()
                };
                leave(
                    self,
                    "organization",
                    o.name.to_string(),
                    1,
                    StateWrite::DeleteOrg(o.id),
                    StateWrite::PutOrg(keep),
                );
            }
        }
        for u in &m.users {
            if !declared_users.contains(&u.username) {
                let keep = User {
                    managed: false,
                    ..u.clone()
                };
                leave(
                    self,
                    "user",
                    u.username.to_string(),
                    5,
                    StateWrite::DeleteUser(u.id),
                    StateWrite::PutUser(keep),
                );
            }
        }
    }

    fn finish(mut self) -> Plan {
        // Organization changes carry the fields found for the organization, its members and push cache; an
        // organization that did not change is not listed.
        let org_changes = std::mem::take(&mut self.org_changes);
        self.changes.retain_mut(|c| {
            if c.kind != "organization" || c.action == Action::Delete || c.action == Action::Unmanage {
                return true;
            }
            let Ok(name) = Name::parse(&c.name) else {
                return true;
            };
            match org_changes.get(&name) {
                Some((action, fields)) => {
                    c.action = *action;
                    c.fields = fields.iter().copied().collect();
                    true
                }
                None => false,
            }
        });
        let mut w = self.w;
        // Keys, registrations and integrations that leave go first: nothing refers to them, and a new key may
        // reuse a leaving one's token.
        let mut writes = w.deletes.remove(&0).unwrap_or_default();
        for part in [
            w.users,
            w.orgs,
            w.roles,
            w.members,
            w.projects,
            w.caches,
            w.grants,
            w.push,
            w.keys,
            w.workers,
            w.integrations,
            w.unmanage,
        ] {
            writes.extend(part);
        }
        for (_, part) in w.deletes {
            writes.extend(part);
        }
        Plan {
            changes: self.changes,
            writes,
        }
    }
}
