use super::dto::{CacheView, MemberView, OrgView, Reply, RoleView, SubscriptionView, ok, parse_permissions};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use gradient_domain::service::{NewOrg, OrgChanges};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

pub struct OrgsApi(pub AppState);

#[derive(Object)]
pub struct NewOrgRequest {
    /// Lowercase letters, digits, `-` and `_`; 1 to 64 characters.
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Public organizations are readable by everyone. Default: private.
    #[oai(default)]
    pub public: bool,
}

/// Fields left out stay as they are.
#[derive(Object)]
pub struct OrgPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: Option<bool>,
}

#[derive(Object)]
pub struct MemberRequest {
    /// The member's username.
    pub user: String,
    /// `Admin`, `Write`, `View` or a custom role's name. Default: `View`.
    pub role: Option<String>,
}

#[derive(Object)]
pub struct RemoveMemberRequest {
    /// The member's username.
    pub user: String,
}

#[derive(Object)]
pub struct NewRoleRequest {
    pub name: String,
    /// Permission identifiers, e.g. `view_org`, `trigger_evaluation`.
    pub permissions: Vec<String>,
}

#[derive(Object)]
pub struct RemoveRoleRequest {
    pub name: String,
}

#[OpenApi(tag = "Tag::Orgs")]
impl OrgsApi {
    /// Organizations the caller belongs to, and public ones.
    #[oai(path = "/orgs", method = "get", operation_id = "list_orgs")]
    async fn list(&self, auth: MaybeToken) -> Reply<Vec<OrgView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self.0.app.orgs(&caller).await?.iter().map(OrgView::from).collect())
    }

    /// Creates an organization; the caller becomes its Admin.
    #[oai(path = "/orgs", method = "post", operation_id = "create_org")]
    async fn create(&self, auth: Token, body: Json<NewOrgRequest>) -> Reply<OrgView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let new = NewOrg {
            name: b.name,
            display_name: b.display_name,
            description: b.description,
            public: b.public,
        };
        ok(OrgView::from(&self.0.app.create_org(&caller, new).await?))
    }

    #[oai(path = "/orgs/:org", method = "get", operation_id = "get_org")]
    async fn get(&self, auth: MaybeToken, org: Path<String>) -> Reply<OrgView> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(OrgView::from(&self.0.app.visible_org(&caller, &org).await?))
    }

    /// Changes the display name, description or visibility (`edit_org`).
    #[oai(path = "/orgs/:org", method = "patch", operation_id = "edit_org")]
    async fn patch(&self, auth: Token, org: Path<String>, body: Json<OrgPatch>) -> Reply<OrgView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let changes = OrgChanges {
            display_name: b.display_name,
            description: b.description,
            public: b.public,
        };
        ok(OrgView::from(&self.0.app.update_org(&caller, &org, changes).await?))
    }

    /// Deletes the organization with its projects, roles, subscriptions and worker registrations
    /// (`delete_org`); workers connected for it lose those registrations at once.
    #[oai(path = "/orgs/:org", method = "delete", operation_id = "delete_org")]
    async fn delete(&self, auth: Token, org: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_org(&caller, &org).await?;
        ok("deleted".to_owned())
    }

    /// Members and their roles.
    #[oai(path = "/orgs/:org/users", method = "get", operation_id = "list_org_members")]
    async fn members(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<MemberView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self
            .0
            .app
            .members(&caller, &org)
            .await?
            .iter()
            .map(MemberView::from)
            .collect())
    }

    /// Adds a member, or changes a member's role (`manage_members`). The last Admin cannot be demoted.
    #[oai(path = "/orgs/:org/users", method = "post", operation_id = "set_org_member")]
    async fn set_member(&self, auth: Token, org: Path<String>, body: Json<MemberRequest>) -> Reply<MemberView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let role = body.0.role.unwrap_or_else(|| "View".to_owned());
        ok(MemberView::from(
            &self.0.app.set_member(&caller, &org, &body.0.user, &role).await?,
        ))
    }

    /// Removes a member (`manage_members`). The last Admin cannot be removed.
    #[oai(path = "/orgs/:org/users", method = "delete", operation_id = "remove_org_member")]
    async fn remove_member(&self, auth: Token, org: Path<String>, body: Json<RemoveMemberRequest>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.remove_member(&caller, &org, &body.0.user).await?;
        ok("removed".to_owned())
    }

    /// Built-in and custom roles.
    #[oai(path = "/orgs/:org/roles", method = "get", operation_id = "list_org_roles")]
    async fn roles(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<RoleView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self
            .0
            .app
            .roles(&caller, &org)
            .await?
            .iter()
            .map(RoleView::from)
            .collect())
    }

    /// Creates a custom role (`manage_roles`).
    #[oai(path = "/orgs/:org/roles", method = "post", operation_id = "create_org_role")]
    async fn create_role(&self, auth: Token, org: Path<String>, body: Json<NewRoleRequest>) -> Reply<RoleView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let perms = parse_permissions(&body.0.permissions)?;
        ok(RoleView::from(
            &self.0.app.create_role(&caller, &org, &body.0.name, perms).await?,
        ))
    }

    /// Deletes a custom role no member holds (`manage_roles`).
    #[oai(path = "/orgs/:org/roles", method = "delete", operation_id = "delete_org_role")]
    async fn delete_role(&self, auth: Token, org: Path<String>, body: Json<RemoveRoleRequest>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_role(&caller, &org, &body.0.name).await?;
        ok("deleted".to_owned())
    }

    /// The caches the organization subscribes to, with what each subscription allows.
    #[oai(
        path = "/orgs/:org/subscribe",
        method = "get",
        operation_id = "list_org_subscriptions"
    )]
    async fn subscriptions(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<SubscriptionView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self
            .0
            .app
            .subscriptions(&caller, &org)
            .await?
            .iter()
            .map(SubscriptionView::from)
            .collect())
    }

    /// Subscribes the organization to a cache (`manage_subscriptions`): its workers substitute from it. The
    /// cache's owner grants it (read even when private); anyone else may subscribe only to a public cache,
    /// read while it stays public. Jobs push only to the push cache (`PUT /orgs/{org}/push-cache/{cache}`).
    #[oai(
        path = "/orgs/:org/subscribe/:cache",
        method = "post",
        operation_id = "subscribe_org"
    )]
    async fn subscribe(&self, auth: Token, org: Path<String>, cache: Path<String>) -> Reply<CacheView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let (_, cache) = self.0.app.subscribe(&caller, &org, &cache).await?;
        ok(CacheView::from(&cache))
    }

    /// Ends a subscription (`manage_subscriptions`).
    #[oai(
        path = "/orgs/:org/subscribe/:cache",
        method = "delete",
        operation_id = "unsubscribe_org"
    )]
    async fn unsubscribe(&self, auth: Token, org: Path<String>, cache: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.unsubscribe(&caller, &org, &cache).await?;
        ok("unsubscribed".to_owned())
    }

    /// The organization's push cache, where its jobs push what they build; `null` when it has none (its jobs
    /// then build without pushing).
    #[oai(path = "/orgs/:org/push-cache", method = "get", operation_id = "get_org_push_cache")]
    async fn push_cache(&self, auth: MaybeToken, org: Path<String>) -> Reply<Option<CacheView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self
            .0
            .app
            .push_cache(&caller, &org)
            .await?
            .as_ref()
            .map(CacheView::from))
    }

    /// Makes a cache the organization's push cache (`manage_subscriptions` in the organization, and only the
    /// cache's owner with a session or an unrestricted key): the organization is subscribed with a grant.
    #[oai(
        path = "/orgs/:org/push-cache/:cache",
        method = "put",
        operation_id = "set_org_push_cache"
    )]
    async fn set_push_cache(&self, auth: Token, org: Path<String>, cache: Path<String>) -> Reply<CacheView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let (_, cache) = self.0.app.set_push_cache(&caller, &org, &cache).await?;
        ok(CacheView::from(&cache))
    }

    /// The organization's jobs stop pushing (`manage_subscriptions`); its subscriptions stay.
    #[oai(
        path = "/orgs/:org/push-cache",
        method = "delete",
        operation_id = "clear_org_push_cache"
    )]
    async fn clear_push_cache(&self, auth: Token, org: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.clear_push_cache(&caller, &org).await?;
        ok("cleared".to_owned())
    }

    /// The organization's SSH deploy key, to add to the forge as a read-only deploy key: repositories with
    /// `ssh://` or `git@host:path` URLs are fetched with it. Members only (anyone else: 404, as for a missing
    /// organization). Generated with the organization (or now, for an older one); the private half never
    /// leaves the server but inside the evaluation jobs that fetch such a repository.
    #[oai(path = "/orgs/:org/ssh-key", method = "get", operation_id = "get_org_ssh_key")]
    async fn ssh_key(&self, auth: Token, org: Path<String>) -> Reply<SshKeyView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(SshKeyView::from(&self.0.app.org_ssh_key(&caller, &org).await?))
    }

    /// Replaces the organization's SSH deploy key with a new one (`manage_integrations`): the old key stops
    /// working at once, so the new public key must be added to the forge before the next fetch.
    #[oai(
        path = "/orgs/:org/ssh-key/rotate",
        method = "post",
        operation_id = "rotate_org_ssh_key"
    )]
    async fn rotate_ssh_key(&self, auth: Token, org: Path<String>) -> Reply<SshKeyView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(SshKeyView::from(&self.0.app.rotate_org_ssh_key(&caller, &org).await?))
    }
}

/// An organization's SSH deploy key (its public half).
#[derive(Object)]
pub struct SshKeyView {
    /// The OpenSSH `authorized_keys` line: `ssh-ed25519 AAAA… gradient-<org>`.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` and the forges show it.
    pub fingerprint: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&gradient_domain::service::SshKeyView> for SshKeyView {
    fn from(k: &gradient_domain::service::SshKeyView) -> Self {
        Self {
            public_key: k.public_key.clone(),
            fingerprint: k.fingerprint.clone(),
            created_at: k.created_at,
        }
    }
}
