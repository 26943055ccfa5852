use super::dto::{CacheView, Clearable, Reply, SubscriberView, ok, parse_compression};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use gradient_domain::service::{CacheChanges, NewCache};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

pub struct CachesApi(pub AppState);

/// What a cache holds.
#[derive(Object)]
pub struct CacheStatsView {
    /// Store paths (narinfos) in the cache.
    pub paths: u64,
    /// Their compressed NAR size in bytes.
    pub bytes: u64,
    /// The store paths this server served last (their narinfo answered), newest first: each path once, at most
    /// 20, kept in memory only (a restart starts empty).
    pub recent_hits: Vec<CacheHitView>,
}

#[derive(Object)]
pub struct CacheHitView {
    pub store_path: String,
    /// When it was last served.
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Object)]
pub struct NewCacheRequest {
    /// Lowercase letters, digits, `-` and `_`; 1 to 64 characters.
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Public caches can be read without credentials. Default: private.
    #[oai(default)]
    pub public: bool,
    /// `Priority:` announced in nix-cache-info, 0 to 1000, lower preferred. Default: 30.
    pub priority: Option<i32>,
    /// Priority announced to clients in `localIps`.
    pub local_priority: Option<i32>,
    /// `zstd` (default), `xz` or `none`.
    pub compression: Option<String>,
}

/// Fields left out stay as they are; `local_priority: null` clears it.
#[derive(Object)]
pub struct CachePatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: Option<bool>,
    pub priority: Option<i32>,
    pub local_priority: Clearable<i32>,
    pub compression: Option<String>,
}

#[OpenApi(tag = "Tag::Caches")]
impl CachesApi {
    /// Public caches, the caller's own, and those subscribed by the caller's organizations.
    #[oai(path = "/caches", method = "get", operation_id = "list_caches")]
    async fn list(&self, auth: MaybeToken) -> Reply<Vec<CacheView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self.0.app.caches(&caller).await?.iter().map(CacheView::from).collect())
    }

    /// Creates a cache owned by the caller.
    #[oai(path = "/caches", method = "post", operation_id = "create_cache")]
    async fn create(&self, auth: Token, body: Json<NewCacheRequest>) -> Reply<CacheView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let new = NewCache {
            name: b.name,
            display_name: b.display_name,
            description: b.description,
            public: b.public,
            priority: b.priority,
            local_priority: b.local_priority,
            compression: parse_compression(b.compression)?,
        };
        ok(CacheView::from(&self.0.app.create_cache(&caller, new).await?))
    }

    #[oai(path = "/caches/:cache", method = "get", operation_id = "get_cache")]
    async fn get(&self, auth: MaybeToken, cache: Path<String>) -> Reply<CacheView> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(CacheView::from(&self.0.app.cache(&caller, &cache).await?))
    }

    /// Changes a cache (owner only).
    #[oai(path = "/caches/:cache", method = "patch", operation_id = "edit_cache")]
    async fn patch(&self, auth: Token, cache: Path<String>, body: Json<CachePatch>) -> Reply<CacheView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let changes = CacheChanges {
            display_name: b.display_name,
            description: b.description,
            public: b.public,
            priority: b.priority,
            local_priority: b.local_priority.change(),
            compression: parse_compression(b.compression)?,
        };
        ok(CacheView::from(
            &self.0.app.update_cache(&caller, &cache, changes).await?,
        ))
    }

    /// The cache's public signing key (`name:base64`), for Nix's `trusted-public-keys`.
    #[oai(
        path = "/caches/:cache/public-key",
        method = "get",
        operation_id = "get_cache_public_key"
    )]
    async fn public_key(&self, auth: MaybeToken, cache: Path<String>) -> Reply<String> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(self.0.app.cache_public_key(&caller, &cache).await?.to_string())
    }

    /// How much the cache holds: its number of store paths and their compressed size.
    #[oai(path = "/caches/:cache/stats", method = "get", operation_id = "get_cache_stats")]
    async fn stats(&self, auth: MaybeToken, cache: Path<String>) -> Reply<CacheStatsView> {
        let caller = self.0.caller(auth.bearer()).await?;
        let s = self.0.app.cache_stats(&caller, &cache).await?;
        ok(CacheStatsView {
            paths: s.paths,
            bytes: s.bytes,
            recent_hits: s
                .recent_hits
                .into_iter()
                .map(|h| CacheHitView {
                    store_path: h.store_path,
                    at: h.at,
                })
                .collect(),
        })
    }

    /// Every organization subscribed to the cache, with what each subscription allows (owner only).
    #[oai(
        path = "/caches/:cache/subscribers",
        method = "get",
        operation_id = "list_cache_subscribers"
    )]
    async fn subscribers(&self, auth: Token, cache: Path<String>) -> Reply<Vec<SubscriberView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(self
            .0
            .app
            .cache_subscribers(&caller, &cache)
            .await?
            .iter()
            .map(SubscriberView::from)
            .collect())
    }

    /// Ends an organization's subscription to the cache, and any push by its jobs (owner only).
    #[oai(
        path = "/caches/:cache/subscribers/:org",
        method = "delete",
        operation_id = "revoke_cache_subscriber"
    )]
    async fn revoke_subscriber(&self, auth: Token, cache: Path<String>, org: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.revoke_subscriber(&caller, &cache, &org).await?;
        ok("revoked".to_owned())
    }

    /// Deletes a cache and its subscriptions (owner only).
    #[oai(path = "/caches/:cache", method = "delete", operation_id = "delete_cache")]
    async fn delete(&self, auth: Token, cache: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_cache(&caller, &cache).await?;
        ok("deleted".to_owned())
    }
}
