//! The state document (`docs/state.md`) read into checked entries. Every error names the entry and the field
//! (`projects.web-app.repository`), so one line tells the operator what to fix.

use super::StateError;
use crate::forge::Forge;
use crate::model::{Compression, DEFAULT_CACHE_PRIORITY, DEFAULT_WILDCARD, InputOverride};
use crate::permissions::{BuiltinRole, Permission, PermissionSet};
use crate::reach::NetworkPolicy;
use crate::service::{ServiceError, check_multiline_text, check_text};
use crate::{Email, Name, WorkerId};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The only version of the document.
pub const VERSION: i64 = 1;

/// The collections of the document, in the order they are read and reported.
pub const COLLECTIONS: [&str; 8] = [
    "users",
    "organizations",
    "roles",
    "projects",
    "caches",
    "api_keys",
    "workers",
    "integrations",
];

/// A read and checked state document. Each collection is in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// `None`: the server's own setting decides (`GRADIENT_DELETE_STATE`).
    pub delete_state: Option<bool>,
    pub users: Vec<UserEntry>,
    pub orgs: Vec<OrgEntry>,
    pub roles: Vec<RoleEntry>,
    pub projects: Vec<ProjectEntry>,
    pub caches: Vec<CacheEntry>,
    pub api_keys: Vec<ApiKeyEntry>,
    pub workers: Vec<WorkerEntry>,
    pub integrations: Vec<IntegrationEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub key: String,
    pub username: Name,
    pub name: String,
    pub email: Email,
    pub password_file: Option<String>,
    pub email_verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgEntry {
    pub key: String,
    pub name: Name,
    pub display_name: String,
    pub description: String,
    pub public: bool,
    pub created_by: Name,
    /// Username → role name (a built-in role's canonical name, or a custom role's name as written).
    pub members: BTreeMap<Name, String>,
    pub push_cache: Option<Name>,
}

impl OrgEntry {
    /// The whole membership: `members`, plus the creator as Admin unless listed.
    pub fn effective_members(&self) -> BTreeMap<Name, String> {
        let mut members = self.members.clone();
        members
            .entry(self.created_by.clone())
            .or_insert_with(|| BuiltinRole::Admin.as_str().to_owned());
        members
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleEntry {
    pub key: String,
    pub name: String,
    pub organization: Name,
    pub permissions: PermissionSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectEntry {
    pub key: String,
    pub name: Name,
    pub organization: Name,
    pub display_name: String,
    pub description: String,
    pub repository: String,
    pub branch: Option<String>,
    pub wildcard: String,
    pub keep_evaluations: Option<u32>,
    pub poll_interval_secs: Option<u32>,
    pub schedule: Option<String>,
    pub active: bool,
    pub pull_requests: bool,
    pub fork_pull_requests: bool,
    pub created_by: Name,
    pub flake_input_overrides: BTreeMap<String, InputOverride>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub key: String,
    pub name: Name,
    pub display_name: String,
    pub description: String,
    pub public: bool,
    pub priority: i32,
    pub local_priority: Option<i32>,
    pub compression: Compression,
    pub signing_key_file: Option<String>,
    pub created_by: Name,
    pub organizations: BTreeSet<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyEntry {
    pub key: String,
    pub name: String,
    pub key_file: String,
    pub owned_by: Name,
    pub permissions: Option<PermissionSet>,
    pub organization: Option<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEntry {
    pub key: String,
    pub worker_id: WorkerId,
    pub organizations: BTreeSet<Name>,
    pub token_file: String,
    /// A listening worker's `/proto` URL, which the server dials (`None`: the worker dials).
    pub url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IntegrationKind {
    /// The organization's webhook secret.
    Inbound,
    /// Where the organization's commit statuses go.
    Outbound,
}

impl IntegrationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntegrationEntry {
    Inbound {
        key: String,
        organization: Name,
        secret_file: String,
    },
    Outbound {
        key: String,
        organization: Name,
        forge: Forge,
        endpoint_url: String,
        access_token_file: String,
    },
}

impl IntegrationEntry {
    pub fn key(&self) -> &str {
        match self {
            Self::Inbound { key, .. } | Self::Outbound { key, .. } => key,
        }
    }

    pub fn organization(&self) -> &Name {
        match self {
            Self::Inbound { organization, .. } | Self::Outbound { organization, .. } => organization,
        }
    }

    pub fn kind(&self) -> IntegrationKind {
        match self {
            Self::Inbound { .. } => IntegrationKind::Inbound,
            Self::Outbound { .. } => IntegrationKind::Outbound,
        }
    }
}

/// A secret file the document names: where (entry and field) and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFile {
    pub at: String,
    pub path: String,
}

impl Document {
    /// Reads and checks a document: its shape, every field's value, and the rules that need nothing but the
    /// document (names unique, references between entries that must be declared here). References to what
    /// may already exist in the database are checked by the planner.
    pub fn parse(json: &str, network: &NetworkPolicy) -> Result<Self, StateError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| StateError::new("document", format!("not valid JSON: {e}")))?;
        let Value::Object(top) = value else {
            return Err(StateError::new("document", "must be a JSON object"));
        };
        let mut doc = Fields::new("document".into(), "", &top);
        if let Some(version) = doc.int("version")?
            && version != VERSION
        {
            return Err(doc.err("version", format!("must be {VERSION} (the only version)")));
        }
        let delete_state = doc.bool("delete_state")?;
        let mut entries: BTreeMap<&str, Vec<Entry<'_>>> = BTreeMap::new();
        for collection in COLLECTIONS {
            let mut list = Vec::new();
            if let Some(map) = doc.object(collection)? {
                for (key, value) in map {
                    let Value::Object(entry) = value else {
                        return Err(StateError::new(format!("{collection}.{key}"), "must be an object"));
                    };
                    list.push((key.clone(), entry));
                }
            }
            entries.insert(collection, list);
        }
        doc.finish()?;
        let mut d = Document {
            delete_state,
            ..Document::default()
        };
        for (key, map) in &entries["users"] {
            d.users.push(user(key, map)?);
        }
        for (key, map) in &entries["organizations"] {
            d.orgs.push(org(key, map)?);
        }
        for (key, map) in &entries["roles"] {
            d.roles.push(role(key, map)?);
        }
        for (key, map) in &entries["projects"] {
            d.projects.push(project(key, map, network)?);
        }
        for (key, map) in &entries["caches"] {
            d.caches.push(cache(key, map)?);
        }
        for (key, map) in &entries["api_keys"] {
            d.api_keys.push(api_key(key, map)?);
        }
        for (key, map) in &entries["workers"] {
            d.workers.push(worker(key, map, network)?);
        }
        for (key, map) in &entries["integrations"] {
            d.integrations.push(integration(key, map, network)?);
        }
        d.check_unique()?;
        d.check_internal_references()?;
        Ok(d)
    }

    /// Every secret file the document names, in document order.
    pub fn secret_files(&self) -> Vec<SecretFile> {
        let mut files = Vec::new();
        let mut add = |at: String, path: &str| {
            files.push(SecretFile {
                at,
                path: path.to_owned(),
            })
        };
        for u in &self.users {
            if let Some(p) = &u.password_file {
                add(format!("users.{}.password_file", u.key), p);
            }
        }
        for c in &self.caches {
            if let Some(p) = &c.signing_key_file {
                add(format!("caches.{}.signing_key_file", c.key), p);
            }
        }
        for k in &self.api_keys {
            add(format!("api_keys.{}.key_file", k.key), &k.key_file);
        }
        for w in &self.workers {
            add(format!("workers.{}.token_file", w.key), &w.token_file);
        }
        for i in &self.integrations {
            match i {
                IntegrationEntry::Inbound { key, secret_file, .. } => {
                    add(format!("integrations.{key}.secret_file"), secret_file)
                }
                IntegrationEntry::Outbound {
                    key, access_token_file, ..
                } => add(format!("integrations.{key}.access_token_file"), access_token_file),
            }
        }
        files
    }

    fn check_unique(&self) -> Result<(), StateError> {
        fn first_twice<'a, K: Ord>(items: impl IntoIterator<Item = (K, &'a str)>) -> Option<(&'a str, &'a str)> {
            let mut seen: BTreeMap<K, &str> = BTreeMap::new();
            for (k, key) in items {
                if let Some(first) = seen.insert(k, key) {
                    return Some((first, key));
                }
            }
            None
        }
        let dup = |collection: &str, field: &str, (first, second): (&str, &str)| {
            StateError::new(
                format!("{collection}.{second}.{field}"),
                format!("the same as {collection}.{first}'s"),
            )
        };
        if let Some(d) = first_twice(self.users.iter().map(|u| (u.username.clone(), u.key.as_str()))) {
            return Err(dup("users", "username", d));
        }
        if let Some(d) = first_twice(self.users.iter().map(|u| (u.email.as_str().to_owned(), u.key.as_str()))) {
            return Err(dup("users", "email", d));
        }
        if let Some(d) = first_twice(self.orgs.iter().map(|o| (o.name.clone(), o.key.as_str()))) {
            return Err(dup("organizations", "name", d));
        }
        if let Some(d) = first_twice(
            self.roles
                .iter()
                .map(|r| ((r.organization.clone(), r.name.to_ascii_lowercase()), r.key.as_str())),
        ) {
            return Err(dup("roles", "name", d));
        }
        if let Some(d) = first_twice(
            self.projects
                .iter()
                .map(|p| ((p.organization.clone(), p.name.clone()), p.key.as_str())),
        ) {
            return Err(dup("projects", "name", d));
        }
        if let Some(d) = first_twice(self.caches.iter().map(|c| (c.name.clone(), c.key.as_str()))) {
            return Err(dup("caches", "name", d));
        }
        if let Some(d) = first_twice(
            self.api_keys
                .iter()
                .map(|k| ((k.owned_by.clone(), k.name.clone()), k.key.as_str())),
        ) {
            return Err(dup("api_keys", "name", d));
        }
        if let Some(d) = first_twice(self.workers.iter().flat_map(|w| {
            w.organizations
                .iter()
                .map(|o| ((o.clone(), w.worker_id), w.key.as_str()))
        })) {
            return Err(dup("workers", "worker_id", d));
        }
        if let Some(d) = first_twice(
            self.integrations
                .iter()
                .map(|i| ((i.organization().clone(), i.kind()), i.key())),
        ) {
            return Err(StateError::new(
                format!("integrations.{}.kind", d.1),
                format!(
                    "integrations.{} already is this organization's integration of this kind",
                    d.0
                ),
            ));
        }
        Ok(())
    }

    /// What must be declared in the document itself: a push cache (a grant this document makes). References
    /// that may name what already exists are checked by the planner.
    fn check_internal_references(&self) -> Result<(), StateError> {
        for o in &self.orgs {
            if let Some(cache) = &o.push_cache {
                let granted = self
                    .caches
                    .iter()
                    .any(|c| c.name == *cache && c.organizations.contains(&o.name));
                if !granted {
                    return Err(StateError::new(
                        format!("organizations.{}.push_cache", o.key),
                        format!(
                            "no cache '{cache}' in the document lists '{}' in its organizations",
                            o.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An entry of a collection: its key and its fields.
type Entry<'a> = (String, &'a Map<String, Value>);

/// An entry's fields, read one by one so each error names its field; unknown fields are refused.
struct Fields<'a> {
    path: String,
    /// What the path of a field is joined with (`.`, or nothing at the top level).
    sep: &'static str,
    map: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(path: String, sep: &'static str, map: &'a Map<String, Value>) -> Self {
        Self {
            path,
            sep,
            map,
            used: BTreeSet::new(),
        }
    }

    fn entry(collection: &str, key: &str, map: &'a Map<String, Value>) -> Self {
        Self::new(format!("{collection}.{key}"), ".", map)
    }

    fn at(&self, field: &str) -> String {
        if self.sep.is_empty() {
            field.to_owned()
        } else {
            format!("{}{}{field}", self.path, self.sep)
        }
    }

    fn err(&self, field: &str, message: impl Into<String>) -> StateError {
        StateError::new(self.at(field), message)
    }

    /// The field's value; `None` when absent or null.
    fn get(&mut self, field: &'static str) -> Option<&'a Value> {
        self.used.insert(field);
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn str(&mut self, field: &'static str) -> Result<Option<String>, StateError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(field, "must be a string")),
        }
    }

    fn required_str(&mut self, field: &'static str) -> Result<String, StateError> {
        self.str(field)?.ok_or_else(|| self.err(field, "is required"))
    }

    fn bool(&mut self, field: &'static str) -> Result<Option<bool>, StateError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(field, "must be true or false")),
        }
    }

    fn int(&mut self, field: &'static str) -> Result<Option<i64>, StateError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(field, "must be an integer")),
        }
    }

    fn positive_u32(&mut self, field: &'static str) -> Result<Option<u32>, StateError> {
        match self.int(field)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| self.err(field, "must be a positive integer")),
        }
    }

    fn object(&mut self, field: &'static str) -> Result<Option<&'a Map<String, Value>>, StateError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.err(field, "must be an object")),
        }
    }

    fn str_list(&mut self, field: &'static str) -> Result<Option<Vec<String>>, StateError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.err(field, "must be a list of strings")),
            Some(_) => Err(self.err(field, "must be a list of strings")),
        }
    }

    fn name(&mut self, field: &'static str, what: &'static str) -> Result<Option<Name>, StateError> {
        self.str(field)?
            .map(|s| Name::parse_as(&s, what).map_err(|e| self.err(field, e.to_string())))
            .transpose()
    }

    fn required_name(&mut self, field: &'static str, what: &'static str) -> Result<Name, StateError> {
        self.name(field, what)?.ok_or_else(|| self.err(field, "is required"))
    }

    /// A name defaulting to the entry's key.
    fn name_or_key(&mut self, field: &'static str, key: &str, what: &'static str) -> Result<Name, StateError> {
        let s = self.str(field)?.unwrap_or_else(|| key.to_owned());
        Name::parse_as(&s, what).map_err(|e| self.err(field, e.to_string()))
    }

    fn names(&mut self, field: &'static str, what: &'static str) -> Result<Option<BTreeSet<Name>>, StateError> {
        let Some(list) = self.str_list(field)? else {
            return Ok(None);
        };
        list.iter()
            .map(|s| Name::parse_as(s, what).map_err(|e| self.err(field, e.to_string())))
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Some)
    }

    fn path(&mut self, field: &'static str) -> Result<Option<String>, StateError> {
        match self.str(field)? {
            None => Ok(None),
            Some(p) if p.starts_with('/') && !p.contains(char::is_control) => Ok(Some(p)),
            Some(_) => Err(self.err(field, "must be an absolute path")),
        }
    }

    fn required_path(&mut self, field: &'static str) -> Result<String, StateError> {
        self.path(field)?.ok_or_else(|| self.err(field, "is required"))
    }

    fn permissions(&mut self, field: &'static str) -> Result<Option<PermissionSet>, StateError> {
        let Some(list) = self.str_list(field)? else {
            return Ok(None);
        };
        list.iter()
            .map(|p| {
                Permission::parse(p).ok_or_else(|| {
                    self.err(
                        field,
                        format!("'{p}' is not a permission (see GET /api/v1/user/keys/permissions)"),
                    )
                })
            })
            .collect::<Result<PermissionSet, _>>()
            .map(Some)
    }

    /// Checks a value with one of the API's rules, reporting its message against the field.
    fn check(&self, field: &str, r: Result<(), ServiceError>) -> Result<(), StateError> {
        r.map_err(|e| self.err(field, e.to_string()))
    }

    /// Display name (the name when absent or empty) and description.
    fn texts(&mut self, name: &Name) -> Result<(String, String), StateError> {
        let display = self.str("display_name")?.unwrap_or_default();
        self.check("display_name", check_text("display_name", &display, 256))?;
        let description = self.str("description")?.unwrap_or_default();
        self.check("description", check_multiline_text("description", &description, 4096))?;
        let display = display.trim();
        Ok((
            if display.is_empty() {
                name.to_string()
            } else {
                display.to_owned()
            },
            description,
        ))
    }

    fn finish(&self) -> Result<(), StateError> {
        match self.map.keys().find(|k| !self.used.contains(k.as_str())) {
            Some(unknown) => Err(StateError::new(self.at(unknown), "unknown field")),
            None => Ok(()),
        }
    }
}

fn user(key: &str, map: &Map<String, Value>) -> Result<UserEntry, StateError> {
    let mut f = Fields::entry("users", key, map);
    let username = f.name_or_key("username", key, "username")?;
    let name = f.str("name")?.unwrap_or_else(|| username.to_string());
    f.check("name", check_text("name", &name, 256))?;
    let email = f.required_str("email")?;
    let email = Email::parse(&email).map_err(|e| f.err("email", e.to_string()))?;
    let entry = UserEntry {
        key: key.to_owned(),
        username,
        name: name.trim().to_owned(),
        email,
        password_file: f.path("password_file")?,
        email_verified: f.bool("email_verified")?.unwrap_or(true),
    };
    f.finish()?;
    Ok(entry)
}

fn org(key: &str, map: &Map<String, Value>) -> Result<OrgEntry, StateError> {
    let mut f = Fields::entry("organizations", key, map);
    let name = f.name_or_key("name", key, "organization name")?;
    let (display_name, description) = f.texts(&name)?;
    let public = f.bool("public")?.unwrap_or(false);
    let created_by = f.required_name("created_by", "username")?;
    let mut members = BTreeMap::new();
    if let Some(m) = f.object("members")? {
        for (user, role) in m {
            let at = format!("members.{user}");
            let user = Name::parse_as(user, "username").map_err(|e| f.err(&at, e.to_string()))?;
            let Some(role) = role.as_str() else {
                return Err(f.err(&at, "must be a role name (Admin, Write, View or a custom role)"));
            };
            let role = match BuiltinRole::parse(role) {
                Some(b) => b.as_str().to_owned(),
                None if role.trim().is_empty() => return Err(f.err(&at, "must name a role")),
                None => role.trim().to_owned(),
            };
            members.insert(user, role);
        }
    }
    let push_cache = f.name("push_cache", "cache name")?;
    f.finish()?;
    Ok(OrgEntry {
        key: key.to_owned(),
        name,
        display_name,
        description,
        public,
        created_by,
        members,
        push_cache,
    })
}

fn role(key: &str, map: &Map<String, Value>) -> Result<RoleEntry, StateError> {
    let mut f = Fields::entry("roles", key, map);
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    let name = name.trim().to_owned();
    f.check("name", check_text("name", &name, 64))?;
    if name.is_empty() {
        return Err(f.err("name", "must not be empty"));
    }
    if BuiltinRole::parse(&name).is_some() {
        return Err(f.err("name", "is a built-in role's name (Admin, Write, View)"));
    }
    let organization = f.required_name("organization", "organization name")?;
    let permissions = f
        .permissions("permissions")?
        .ok_or_else(|| f.err("permissions", "is required"))?;
    if permissions.is_empty() {
        return Err(f.err("permissions", "must not be empty"));
    }
    f.finish()?;
    Ok(RoleEntry {
        key: key.to_owned(),
        name,
        organization,
        permissions,
    })
}

fn project(key: &str, map: &Map<String, Value>, network: &NetworkPolicy) -> Result<ProjectEntry, StateError> {
    use crate::service::projects::{check_branch, check_overrides, check_repository, check_wildcard};
    let mut f = Fields::entry("projects", key, map);
    let name = f.name_or_key("name", key, "project name")?;
    let organization = f.required_name("organization", "organization name")?;
    let (display_name, description) = f.texts(&name)?;
    let repository = f.required_str("repository")?.trim().to_owned();
    f.check("repository", check_repository(&repository, network))?;
    let branch = f.str("branch")?;
    f.check("branch", check_branch(&branch))?;
    let wildcard = f.str("wildcard")?.unwrap_or_else(|| DEFAULT_WILDCARD.to_owned());
    f.check("wildcard", check_wildcard(&wildcard))?;
    let keep_evaluations = f.positive_u32("keep_evaluations")?;
    let poll_interval_secs = f.positive_u32("poll_interval_secs")?;
    let schedule = match f.str("schedule")? {
        Some(s) => Some(crate::schedule::check(&s).map_err(|m| f.err("schedule", m))?),
        None => None,
    };
    let active = f.bool("active")?.unwrap_or(true);
    let pull_requests = f.bool("pull_requests")?.unwrap_or(true);
    let fork_pull_requests = f.bool("fork_pull_requests")?.unwrap_or(false);
    let created_by = f.required_name("created_by", "username")?;
    let mut overrides = BTreeMap::new();
    if let Some(m) = f.object("flake_input_overrides")? {
        for (input, value) in m {
            let at = format!("flake_input_overrides.{input}");
            let Value::Object(o) = value else {
                return Err(f.err(&at, "must be an object with url or keep_url"));
            };
            let mut o = Fields::new(f.at(&at), ".", o);
            let url = o.str("url")?;
            let keep_url = o.bool("keep_url")?;
            o.finish()?;
            let value = InputOverride::from_fields(url, keep_url).map_err(|m| f.err(&at, m))?;
            overrides.insert(input.clone(), value);
        }
    }
    f.check("flake_input_overrides", check_overrides(&overrides))?;
    f.finish()?;
    Ok(ProjectEntry {
        key: key.to_owned(),
        name,
        organization,
        display_name,
        description,
        repository,
        branch,
        wildcard,
        keep_evaluations,
        poll_interval_secs,
        schedule,
        active,
        pull_requests,
        fork_pull_requests,
        created_by,
        flake_input_overrides: overrides,
    })
}

fn cache(key: &str, map: &Map<String, Value>) -> Result<CacheEntry, StateError> {
    use crate::service::caches::check_priority;
    let mut f = Fields::entry("caches", key, map);
    let name = f.name_or_key("name", key, "cache name")?;
    let (display_name, description) = f.texts(&name)?;
    let public = f.bool("public")?.unwrap_or(false);
    let priority = match f.int("priority")? {
        None => DEFAULT_CACHE_PRIORITY,
        Some(p) => i32::try_from(p).map_err(|_| f.err("priority", "must be between 0 and 1000"))?,
    };
    f.check("priority", check_priority(priority))?;
    let local_priority = match f.int("local_priority")? {
        None => None,
        Some(p) => {
            let p = i32::try_from(p).map_err(|_| f.err("local_priority", "must be between 0 and 1000"))?;
            f.check("local_priority", check_priority(p))?;
            Some(p)
        }
    };
    let compression = match f.str("compression")? {
        None => Compression::Zstd,
        Some(c) => Compression::parse(&c).ok_or_else(|| f.err("compression", "must be zstd, xz or none"))?,
    };
    let entry = CacheEntry {
        key: key.to_owned(),
        name,
        display_name,
        description,
        public,
        priority,
        local_priority,
        compression,
        signing_key_file: f.path("signing_key_file")?,
        created_by: f.required_name("created_by", "username")?,
        organizations: f.names("organizations", "organization name")?.unwrap_or_default(),
    };
    f.finish()?;
    Ok(entry)
}

fn api_key(key: &str, map: &Map<String, Value>) -> Result<ApiKeyEntry, StateError> {
    let mut f = Fields::entry("api_keys", key, map);
    let name = f.str("name")?.unwrap_or_else(|| key.to_owned());
    let name = name.trim().to_owned();
    f.check("name", check_text("name", &name, 128))?;
    if name.is_empty() {
        return Err(f.err("name", "must not be empty"));
    }
    let entry = ApiKeyEntry {
        key: key.to_owned(),
        name,
        key_file: f.required_path("key_file")?,
        owned_by: f.required_name("owned_by", "username")?,
        permissions: f.permissions("permissions")?,
        organization: f.name("organization", "organization name")?,
    };
    f.finish()?;
    Ok(entry)
}

fn worker(key: &str, map: &Map<String, Value>, network: &NetworkPolicy) -> Result<WorkerEntry, StateError> {
    let mut f = Fields::entry("workers", key, map);
    let id = f.required_str("worker_id")?;
    let worker_id = crate::service::workers::parse_worker_id(&id).map_err(|e| f.err("worker_id", e.to_string()))?;
    let organizations = f
        .names("organizations", "organization name")?
        .ok_or_else(|| f.err("organizations", "is required"))?;
    if organizations.is_empty() {
        return Err(f.err("organizations", "must not be empty"));
    }
    let entry = WorkerEntry {
        key: key.to_owned(),
        worker_id,
        organizations,
        token_file: f.required_path("token_file")?,
        url: match f.str("url")? {
            None => None,
            Some(url) => Some(
                crate::service::workers::check_worker_url(&url, network).map_err(|e| f.err("url", e.to_string()))?,
            ),
        },
    };
    f.finish()?;
    Ok(entry)
}

fn integration(key: &str, map: &Map<String, Value>, network: &NetworkPolicy) -> Result<IntegrationEntry, StateError> {
    let mut f = Fields::entry("integrations", key, map);
    let organization = f.required_name("organization", "organization name")?;
    let kind = f.required_str("kind")?;
    let forge = match f.str("forge_type")? {
        None => None,
        Some(s) => {
            Some(Forge::parse(&s).ok_or_else(|| f.err("forge_type", "must be github, gitea, forgejo or gitlab"))?)
        }
    };
    let secret_file = f.path("secret_file")?;
    let endpoint_url = f.str("endpoint_url")?;
    let access_token_file = f.path("access_token_file")?;
    f.finish()?;
    let key = key.to_owned();
    match kind.as_str() {
        "inbound" => {
            if endpoint_url.is_some() {
                return Err(f.err("endpoint_url", "is for outbound integrations only"));
            }
            if access_token_file.is_some() {
                return Err(f.err("access_token_file", "is for outbound integrations only"));
            }
            Ok(IntegrationEntry::Inbound {
                key,
                organization,
                secret_file: secret_file.ok_or_else(|| f.err("secret_file", "is required for inbound integrations"))?,
            })
        }
        "outbound" => {
            if secret_file.is_some() {
                return Err(f.err("secret_file", "is for inbound integrations only"));
            }
            let forge = forge.ok_or_else(|| f.err("forge_type", "is required for outbound integrations"))?;
            let url = endpoint_url.ok_or_else(|| f.err("endpoint_url", "is required for outbound integrations"))?;
            let endpoint_url = crate::service::statuses::check_api_url(&url, network)
                .map_err(|e| f.err("endpoint_url", e.to_string()))?;
            Ok(IntegrationEntry::Outbound {
                key,
                organization,
                forge,
                endpoint_url,
                access_token_file: access_token_file
                    .ok_or_else(|| f.err("access_token_file", "is required for outbound integrations"))?,
            })
        }
        _ => Err(f.err("kind", "must be inbound or outbound")),
    }
}
