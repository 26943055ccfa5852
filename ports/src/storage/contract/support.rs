//! Builders for the scenarios' data. Every row gets a fresh id and every name a random suffix, so scenarios
//! never collide with each other's rows.

use chrono::{TimeDelta, Utc};
use gradient_domain::model::{
    ApiKey, Cache, Compression, InputOverride, Membership, Org, Project, Role, RoleRef, Session, Timestamp, User,
    truncate_to_micros,
};
use gradient_domain::permissions::{BuiltinRole, KeyScope, Permission};
use gradient_domain::ports::Storage;
use gradient_domain::{ApiKeyId, CacheId, Email, Name, OrgId, ProjectId, RoleId, SessionId, UserId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Now, at the precision storage keeps.
pub(super) fn now() -> Timestamp {
    truncate_to_micros(Utc::now())
}

pub(super) fn seconds(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// `prefix` followed by 12 random hex digits. Scenarios that check ordering give their rows prefixes that
/// differ in the first letter, so the order does not depend on the suffix.
pub(super) fn name(prefix: &str) -> Name {
    let suffix = Uuid::new_v4().simple().to_string();
    Name::parse(&format!("{prefix}{}", &suffix[..12])).expect("scenario names are valid")
}

/// A random lowercase hex SHA-256-like string.
pub(super) fn hash() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

pub(super) fn new_user(prefix: &str) -> User {
    let username = name(prefix);
    User {
        id: UserId::new(),
        email: Email::parse(&format!("{username}@example.com")).expect("scenario emails are valid"),
        name: format!("{prefix} the tester"),
        username,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned()),
        email_verified: true,
        created_at: now(),
    }
}

pub(super) async fn user<S: Storage>(s: &S, prefix: &str) -> User {
    let user = new_user(prefix);
    s.create_user(&user).await.expect("create_user of a new user succeeds");
    user
}

pub(super) fn new_session(user: UserId) -> Session {
    let created_at = now();
    Session {
        id: SessionId::new(),
        user_id: user,
        created_at,
        expires_at: created_at + TimeDelta::days(30),
    }
}

pub(super) fn new_api_key(user: UserId, name: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        user_id: user,
        name: name.to_owned(),
        hash: hash(),
        scope: KeyScope::default(),
        created_at: now(),
        last_used_at: None,
    }
}

pub(super) fn new_org(prefix: &str, creator: UserId, public: bool) -> Org {
    Org {
        id: OrgId::new(),
        name: name(prefix),
        display_name: format!("The {prefix} organization"),
        description: format!("Everything {prefix} builds"),
        public,
        created_by: creator,
        created_at: now(),
    }
}

pub(super) async fn org<S: Storage>(s: &S, prefix: &str, creator: UserId, public: bool) -> Org {
    let org = new_org(prefix, creator, public);
    s.create_org(&org).await.expect("create_org of a new org succeeds");
    org
}

pub(super) fn new_role(org: OrgId, name: &str) -> Role {
    Role {
        id: RoleId::new(),
        org_id: org,
        name: name.to_owned(),
        permissions: [Permission::ViewOrg, Permission::TriggerEvaluation]
            .into_iter()
            .collect(),
        managed: false,
    }
}

pub(super) async fn role<S: Storage>(s: &S, org: OrgId, name: &str) -> Role {
    let role = new_role(org, name);
    s.create_role(&role).await.expect("create_role of a new role succeeds");
    role
}

/// A project with every optional field set and both kinds of input override.
pub(super) fn new_project(org: OrgId, prefix: &str, creator: UserId) -> Project {
    let overrides = BTreeMap::from([
        (
            "nixpkgs".to_owned(),
            InputOverride::Url("github:NixOS/nixpkgs/nixos-unstable".to_owned()),
        ),
        ("utils".to_owned(), InputOverride::KeepUrl),
    ]);
    Project {
        id: ProjectId::new(),
        org_id: org,
        name: name(prefix),
        display_name: format!("Project {prefix}"),
        description: format!("Builds {prefix}"),
        repository: format!("https://git.example.com/{prefix}.git"),
        branch: Some("main".to_owned()),
        wildcard: "packages.*.*, checks.*.*, !checks.*.slow".to_owned(),
        flake_input_overrides: overrides,
        keep_evaluations: Some(25),
        poll_interval_secs: Some(300),
        active: true,
        created_by: creator,
        created_at: now(),
    }
}

pub(super) async fn project<S: Storage>(s: &S, org: OrgId, prefix: &str, creator: UserId) -> Project {
    let project = new_project(org, prefix, creator);
    s.create_project(&project)
        .await
        .expect("create_project of a new project succeeds");
    project
}

pub(super) fn new_cache(prefix: &str, creator: UserId, public: bool) -> Cache {
    Cache {
        id: CacheId::new(),
        name: name(prefix),
        display_name: format!("Cache {prefix}"),
        description: format!("Outputs of {prefix}"),
        public,
        priority: 30,
        local_priority: Some(10),
        compression: Compression::Zstd,
        created_by: creator,
        created_at: now(),
    }
}

pub(super) async fn cache<S: Storage>(s: &S, prefix: &str, creator: UserId, public: bool) -> Cache {
    let cache = new_cache(prefix, creator, public);
    s.create_cache(&cache)
        .await
        .expect("create_cache of a new cache succeeds");
    cache
}

/// The names of the orgs in `listed` that are among `ours`, in listed order (other scenarios' rows ignored).
pub(super) fn org_names(listed: &[Org], ours: &[&Org]) -> Vec<Name> {
    listed
        .iter()
        .filter(|o| ours.iter().any(|our| our.id == o.id))
        .map(|o| o.name.clone())
        .collect()
}

/// The names of the caches in `listed` that are among `ours`, in listed order.
pub(super) fn cache_names(listed: &[Cache], ours: &[&Cache]) -> Vec<Name> {
    listed
        .iter()
        .filter(|c| ours.iter().any(|our| our.id == c.id))
        .map(|c| c.name.clone())
        .collect()
}

pub(super) fn conflict(what: &str) -> gradient_domain::ports::StorageError {
    gradient_domain::ports::StorageError::Conflict(what.to_owned())
}

pub(super) const ADMIN: RoleRef = RoleRef::Builtin(BuiltinRole::Admin);
pub(super) const WRITE: RoleRef = RoleRef::Builtin(BuiltinRole::Write);
pub(super) const VIEW: RoleRef = RoleRef::Builtin(BuiltinRole::View);

pub(super) fn membership(org: OrgId, user: UserId, role: RoleRef) -> Membership {
    Membership {
        org_id: org,
        user_id: user,
        role,
    }
}
