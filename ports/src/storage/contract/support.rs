//! Builders for the scenarios' data. Every row gets a fresh id and every name a random suffix, so scenarios
//! never collide with each other's rows.

use chrono::{TimeDelta, Utc};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::{
    ApiKey, Cache, CachedPath, Compression, InputOverride, JobId, JobKind, JobRecord, JobState, Membership, NarFile,
    Org, Project, Role, RoleRef, Session, Subscription, Timestamp, User, WorkerRegistration, truncate_to_micros,
};
use gradient_domain::permissions::{BuiltinRole, KeyScope, Permission};
use gradient_domain::ports::Storage;
use gradient_domain::{
    ApiKeyId, CacheId, Email, EvaluationId, Name, OrgId, PeerId, ProjectId, RoleId, SessionId, UserId, WorkerId,
};
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
        managed: false,
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
        managed: false,
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
        managed: false,
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
        managed: false,
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
        schedule: Some("0 3 * * *".to_owned()),
        active: true,
        pull_requests: true,
        fork_pull_requests: false,
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
        managed: false,
        id: CacheId::new(),
        name: name(prefix),
        display_name: format!("Cache {prefix}"),
        description: format!("Outputs of {prefix}"),
        public,
        priority: 30,
        local_priority: Some(10),
        compression: Compression::Zstd,
        signing_key: signing_key(),
        created_by: creator,
        created_at: now(),
    }
}

/// A fresh sealed-looking signing key (storage keeps it as an opaque string).
pub(super) fn signing_key() -> Sealed {
    Sealed(format!("v1:{}", hash()))
}

pub(super) async fn cache<S: Storage>(s: &S, prefix: &str, creator: UserId, public: bool) -> Cache {
    let cache = new_cache(prefix, creator, public);
    s.create_cache(&cache)
        .await
        .expect("create_cache of a new cache succeeds");
    cache
}

/// A random time some ten years ago, for scenarios that query every cache with a cutoff: rows dated a few
/// seconds after it are older than any other scenario's rows dated around now.
pub(super) fn long_ago() -> Timestamp {
    let jitter = Uuid::new_v4().as_u128() % 100_000_000;
    now() - TimeDelta::days(3650) - TimeDelta::seconds(i64::try_from(jitter).unwrap_or(0))
}

/// A zstd NAR file record of 5 GB (sizes above 2^32 must survive), created now.
pub(super) fn new_nar_file(cache: CacheId) -> NarFile {
    let file_hash = hash();
    NarFile {
        cache_id: cache,
        url: format!("nar/{file_hash}.nar.zst"),
        compression: Compression::Zstd,
        file_hash: format!("sha256:{file_hash}"),
        file_size: 5_000_000_000,
        nar_hash: format!("sha256:{}", hash()),
        nar_size: 12_000_000_000,
        created_at: now(),
    }
}

pub(super) async fn nar_file<S: Storage>(s: &S, cache: CacheId) -> NarFile {
    let file = new_nar_file(cache);
    s.put_nar_file(&file)
        .await
        .expect("put_nar_file in an existing cache succeeds");
    file
}

/// A cached path whose narinfo points at `file`, with every optional field set, fetched when created.
pub(super) fn new_cached_path(file: &NarFile, name: &str) -> CachedPath {
    let hash_part = hash()[..32].to_owned();
    let created_at = now();
    CachedPath {
        cache_id: file.cache_id,
        store_path: format!("/nix/store/{hash_part}-{name}"),
        hash_part,
        url: file.url.clone(),
        compression: file.compression,
        file_hash: file.file_hash.clone(),
        file_size: file.file_size,
        nar_hash: file.nar_hash.clone(),
        nar_size: file.nar_size,
        references: vec![
            format!("0a{}-glibc-2.40", &hash()[..30]),
            format!("5f{}-{name}", &hash()[..30]),
            format!("zz{}-openssl-3.3.2", &hash()[..30]),
        ],
        deriver: Some(format!("{}-{name}.drv", &hash()[..32])),
        system: Some("x86_64-linux".to_owned()),
        ca: Some(format!("fixed:r:sha256:{}", hash())),
        created_at,
        last_fetched_at: created_at,
    }
}

/// Stores a NAR file in `cache` and a path referring to it.
pub(super) async fn cached_path<S: Storage>(s: &S, cache: CacheId, name: &str) -> CachedPath {
    let file = nar_file(s, cache).await;
    let path = new_cached_path(&file, name);
    s.put_cached_path(&path)
        .await
        .expect("put_cached_path in an existing cache succeeds");
    path
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

/// A registration of `worker` under `org`, created now.
pub(super) fn new_worker_registration(org: OrgId, worker: WorkerId) -> WorkerRegistration {
    WorkerRegistration {
        managed: false,
        peer_id: PeerId::new(),
        org_id: org,
        worker_id: worker,
        proof_key: gradient_domain::crypt::Sealed(format!("v1:{}", hash())),
        created_at: now(),
        url: None,
    }
}

pub(super) async fn worker_registration<S: Storage>(s: &S, org: OrgId, worker: WorkerId) -> WorkerRegistration {
    let registration = new_worker_registration(org, worker);
    s.create_worker_registration(&registration)
        .await
        .expect("create_worker_registration of a new registration succeeds");
    registration
}

/// A fresh derivation path named `name`.
pub(super) fn derivation(name: &str) -> String {
    format!("/nix/store/{}-{name}.drv", &hash()[..32])
}

/// A queued job, created now, that builds a fresh derivation needing two system features.
pub(super) fn new_build_job(org: OrgId, name: &str) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        org_id: org,
        kind: JobKind::Build {
            derivation: derivation(name),
            system: "x86_64-linux".to_owned(),
            required_features: vec!["kvm".to_owned(), "big-parallel".to_owned()],
        },
        state: JobState::Queued,
        created_at: now(),
        attempts: 0,
    }
}

/// A queued job, created now, that evaluates a fresh evaluation.
pub(super) fn new_evaluation_job(org: OrgId) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        org_id: org,
        kind: JobKind::Evaluate {
            evaluation_id: EvaluationId::new(),
        },
        state: JobState::Queued,
        created_at: now(),
        attempts: 0,
    }
}

/// Enqueues `job`, which must be new work: storage answers the job itself.
pub(super) async fn enqueue<S: Storage>(s: &S, job: JobRecord) -> JobRecord {
    let stored = s.enqueue_job(&job).await.expect("enqueue_job of new work succeeds");
    assert_eq!(stored, job, "enqueueing new work answers the job itself");
    job
}

/// A subscription made by the cache's owner (a grant), without push.
pub(super) fn grant(org: OrgId, cache: CacheId) -> Subscription {
    Subscription {
        org_id: org,
        cache_id: cache,
        granted: true,
        push: false,
    }
}

/// The caches an organization subscribes to, without the subscription's flags.
pub(super) async fn subscribed_caches<S: Storage>(s: &S, org: OrgId) -> Vec<Cache> {
    s.subscriptions(org)
        .await
        .expect("subscriptions")
        .into_iter()
        .map(|c| c.cache)
        .collect()
}

/// The organizations subscribed to a cache, without the subscription's flags.
pub(super) async fn subscriber_orgs<S: Storage>(s: &S, cache: CacheId) -> Vec<Org> {
    s.subscribers(cache)
        .await
        .expect("subscribers")
        .into_iter()
        .map(|sub| sub.org)
        .collect()
}
