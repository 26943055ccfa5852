//! The API's JSON shapes and their conversions from and to domain types. Domain types never derive
//! poem-openapi traits; these do.

use super::ApiError;
pub use super::nullable::{Clearable, Nullable};
use chrono::{DateTime, Utc};
use gradient_domain::model::{self, InputOverride};
use gradient_domain::permissions::{Permission, PermissionSet};
use poem_openapi::Object;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON, ToJSON};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Every successful answer: `{"error": false, "message": <payload>}`.
#[derive(Object)]
pub struct Envelope<T: ParseFromJSON + ToJSON> {
    /// Always `false`.
    pub error: bool,
    pub message: T,
}

pub type Reply<T> = Result<Json<Envelope<T>>, ApiError>;

pub fn ok<T: ParseFromJSON + ToJSON>(message: T) -> Reply<T> {
    Ok(Json(Envelope { error: false, message }))
}

#[derive(Object)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl From<&model::User> for UserView {
    fn from(u: &model::User) -> Self {
        Self {
            id: u.id.0,
            username: u.username.to_string(),
            name: u.name.clone(),
            email: u.email.to_string(),
            email_verified: u.email_verified,
            created_at: u.created_at,
            managed: u.managed,
        }
    }
}

#[derive(Object)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    /// The organization the key is limited to, if any.
    pub organization: Nullable<Uuid>,
    /// The permissions the key is limited to, if any.
    pub permissions: Nullable<Vec<String>>,
    pub created_at: DateTime<Utc>,
    /// `null` until the key is first used.
    pub last_used_at: Nullable<DateTime<Utc>>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl From<&model::ApiKey> for ApiKeyView {
    fn from(k: &model::ApiKey) -> Self {
        Self {
            id: k.id.0,
            name: k.name.clone(),
            organization: k.scope.organization.map(|o| o.0).into(),
            permissions: k.scope.permissions.as_ref().map(permission_names).into(),
            created_at: k.created_at,
            last_used_at: k.last_used_at.into(),
            managed: k.managed,
        }
    }
}

pub fn permission_names(set: &PermissionSet) -> Vec<String> {
    set.iter().map(|p| p.as_str().to_owned()).collect()
}

/// Parses permission identifiers; an unknown one is a 422 listing the valid ones.
pub fn parse_permissions(names: &[String]) -> Result<PermissionSet, ApiError> {
    names
        .iter()
        .map(|n| {
            Permission::parse(n.trim()).ok_or_else(|| {
                let valid: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                ApiError::unprocessable(
                    "unknown_permission",
                    format!("unknown permission '{n}' (valid: {})", valid.join(", ")),
                )
            })
        })
        .collect()
}

#[derive(Object)]
pub struct OrgView {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub public: bool,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl From<&model::Org> for OrgView {
    fn from(o: &model::Org) -> Self {
        Self {
            id: o.id.0,
            name: o.name.to_string(),
            display_name: o.display_name.clone(),
            description: o.description.clone(),
            public: o.public,
            created_by: o.created_by.0,
            created_at: o.created_at,
            managed: o.managed,
        }
    }
}

#[derive(Object)]
pub struct MemberView {
    pub user_id: Uuid,
    pub username: String,
    /// `Admin`, `Write`, `View` or a custom role's name.
    pub role: String,
}

impl From<&model::Member> for MemberView {
    fn from(m: &model::Member) -> Self {
        Self {
            user_id: m.user_id.0,
            username: m.username.to_string(),
            role: m.role_name.clone(),
        }
    }
}

#[derive(Object)]
pub struct RoleView {
    pub name: String,
    pub permissions: Vec<String>,
    /// Built-in roles (`Admin`, `Write`, `View`) exist in every organization and cannot be deleted.
    pub builtin: bool,
    /// Managed by the server's declarative state; cannot be changed through the API.
    pub managed: bool,
}

impl From<&gradient_domain::service::RoleView> for RoleView {
    fn from(r: &gradient_domain::service::RoleView) -> Self {
        Self {
            name: r.name.clone(),
            permissions: permission_names(&r.permissions),
            builtin: r.builtin,
            managed: r.managed,
        }
    }
}

/// One flake input override: set exactly one of `url` or `keep_url` (answers leave the other out).
#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
pub struct InputOverrideView {
    /// A flake reference replacing the input's URL.
    pub url: Option<String>,
    /// Update the input, keeping the URL declared in the project's flake.nix.
    pub keep_url: Option<bool>,
}

pub fn overrides_to_view(o: &BTreeMap<String, InputOverride>) -> BTreeMap<String, InputOverrideView> {
    o.iter()
        .map(|(k, v)| {
            let view = match v {
                InputOverride::Url(u) => InputOverrideView {
                    url: Some(u.clone()),
                    keep_url: None,
                },
                InputOverride::KeepUrl => InputOverrideView {
                    url: None,
                    keep_url: Some(true),
                },
            };
            (k.clone(), view)
        })
        .collect()
}

pub fn overrides_from_view(
    o: BTreeMap<String, InputOverrideView>,
) -> Result<BTreeMap<String, InputOverride>, ApiError> {
    o.into_iter()
        .map(|(k, v)| {
            InputOverride::from_fields(v.url, v.keep_url)
                .map(|parsed| (k.clone(), parsed))
                .map_err(|m| ApiError::unprocessable("invalid_input", format!("flake input override '{k}': {m}")))
        })
        .collect()
}

#[derive(Object)]
pub struct ProjectView {
    pub id: Uuid,
    pub organization: String,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub repository: String,
    /// `null` means the repository's default branch.
    pub branch: Nullable<String>,
    pub wildcard: String,
    pub flake_input_overrides: BTreeMap<String, InputOverrideView>,
    /// `null` uses the server's `keepEvaluations`.
    pub keep_evaluations: Nullable<u32>,
    /// `null` disables polling.
    pub poll_interval_secs: Nullable<u32>,
    /// Cron expression (UTC); `null`: no schedule.
    pub schedule: Nullable<String>,
    pub active: bool,
    /// Pull requests (GitLab: merge requests) from the project's own repository are evaluated.
    pub pull_requests: bool,
    /// Pull requests from forks are evaluated too (their flakes run their authors' code on the workers).
    pub fork_pull_requests: bool,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl ProjectView {
    pub fn new(org: &str, p: &model::Project) -> Self {
        Self {
            id: p.id.0,
            organization: org.to_owned(),
            name: p.name.to_string(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            repository: p.repository.clone(),
            branch: p.branch.clone().into(),
            wildcard: p.wildcard.clone(),
            flake_input_overrides: overrides_to_view(&p.flake_input_overrides),
            keep_evaluations: p.keep_evaluations.into(),
            poll_interval_secs: p.poll_interval_secs.into(),
            schedule: p.schedule.clone().into(),
            active: p.active,
            pull_requests: p.pull_requests,
            fork_pull_requests: p.fork_pull_requests,
            created_by: p.created_by.0,
            created_at: p.created_at,
            managed: p.managed,
        }
    }
}

#[derive(Object)]
pub struct CacheView {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub public: bool,
    pub priority: i32,
    /// Priority announced to clients in `localIps`; `null`: they get `priority`.
    pub local_priority: Nullable<i32>,
    /// `zstd`, `xz` or `none`.
    pub compression: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl From<&model::Cache> for CacheView {
    fn from(c: &model::Cache) -> Self {
        Self {
            id: c.id.0,
            name: c.name.to_string(),
            display_name: c.display_name.clone(),
            description: c.description.clone(),
            public: c.public,
            priority: c.priority,
            local_priority: c.local_priority.into(),
            compression: c.compression.as_str().to_owned(),
            created_by: c.created_by.0,
            created_at: c.created_at,
            managed: c.managed,
        }
    }
}

/// A cache an organization subscribes to, and what the subscription lets it do.
#[derive(Object)]
pub struct SubscriptionView {
    #[oai(flatten)]
    pub cache: CacheView,
    /// Made by the cache's owner: the organization's members and jobs read the cache even when it is private.
    /// Otherwise the organization reads it only while it is public.
    pub granted: bool,
    /// The organization's jobs push what they build here (its push cache; at most one).
    pub push: bool,
}

impl From<&model::SubscribedCache> for SubscriptionView {
    fn from(s: &model::SubscribedCache) -> Self {
        Self {
            cache: CacheView::from(&s.cache),
            granted: s.granted,
            push: s.push,
        }
    }
}

/// An organization subscribed to a cache, as the cache's owner sees it.
#[derive(Object)]
pub struct SubscriberView {
    /// The organization's name.
    pub organization: String,
    pub display_name: String,
    /// Granted by the cache's owner: the organization reads the cache even when it is private.
    pub granted: bool,
    /// The organization's jobs push to the cache.
    pub push: bool,
}

impl From<&model::Subscriber> for SubscriberView {
    fn from(s: &model::Subscriber) -> Self {
        Self {
            organization: s.org.name.to_string(),
            display_name: s.org.display_name.clone(),
            granted: s.granted,
            push: s.push,
        }
    }
}

pub fn parse_compression(s: Option<String>) -> Result<Option<model::Compression>, ApiError> {
    s.map(|s| {
        model::Compression::parse(s.trim()).ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_compression",
                format!("unknown compression '{s}' (zstd, xz or none)"),
            )
        })
    })
    .transpose()
}
