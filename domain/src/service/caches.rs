//! Binary caches and organizations' subscriptions to them. A cache belongs to the user who created it;
//! it is readable by everyone when public, otherwise by its owner and the members of organizations the owner
//! granted it to. Writing is the owner's, and the jobs' of the organizations whose push cache it is (set by the
//! owner). See `docs/security.md`.

use super::{Caller, Gradient, Result, ServiceError, check_multiline_text, check_text, display_texts, refuse_managed};
use crate::model::{
    AuditAction, Cache, Compression, DEFAULT_CACHE_PRIORITY, Org, SubscribedCache, Subscriber, Subscription,
};
use crate::nix::signing::{PublicKey, SecretKey};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage, StorageError};
use crate::{CacheId, Name};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub paths: u64,
    /// Compressed (NAR file) bytes.
    pub bytes: u64,
    /// The paths this server served last, newest first (see [`super::recent_hits`] for the bounds).
    pub recent_hits: Vec<super::CacheHit>,
}

#[derive(Clone, Debug, Default)]
pub struct NewCache {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: bool,
    pub priority: Option<i32>,
    pub local_priority: Option<i32>,
    pub compression: Option<Compression>,
}

/// A partial update; `local_priority: Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct CacheChanges {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: Option<bool>,
    pub priority: Option<i32>,
    pub local_priority: Option<Option<i32>>,
    pub compression: Option<Compression>,
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("cache '{name}' not found"))
}

pub(crate) fn check_priority(p: i32) -> Result<()> {
    if (0..=1000).contains(&p) {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "invalid_priority",
            "priorities range from 0 to 1000 (lower is preferred)",
        ))
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    pub async fn caches(&self, caller: &Caller) -> Result<Vec<Cache>> {
        let caches = self.storage.visible_caches(caller.user_id()).await?;
        if caller.scope().and_then(|s| s.organization).is_none() {
            return Ok(caches);
        }
        // A key pinned to an organization lists what it may read, not everything its owner may.
        let mut readable = Vec::with_capacity(caches.len());
        for cache in caches {
            if self.can_read_cache(caller, &cache).await? {
                readable.push(cache);
            }
        }
        Ok(readable)
    }

    /// Whether the caller may read the cache (list it, fetch from it): public caches; the owner's own (not
    /// with a key pinned to an organization); caches granted to an organization the caller is a member of
    /// (with a pinned key, only that organization).
    pub async fn can_read_cache(&self, caller: &Caller, cache: &Cache) -> Result<bool> {
        if cache.public {
            return Ok(true);
        }
        let Some(user) = caller.user_id() else { return Ok(false) };
        let pinned = caller.scope().and_then(|s| s.organization);
        if cache.created_by == user && pinned.is_none() {
            return Ok(true);
        }
        for sub in self.storage.subscribers(cache.id).await? {
            if sub.granted
                && pinned.is_none_or(|p| p == sub.org.id)
                && self.storage.membership(sub.org.id, user).await?.is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the caller owns the cache and acts with all of their rights (a session or an unrestricted key).
    fn is_owner(caller: &Caller, cache: &Cache) -> bool {
        caller.user_id() == Some(cache.created_by) && !caller.is_restricted()
    }

    pub async fn cache(&self, caller: &Caller, name: &str) -> Result<Cache> {
        let parsed = Name::parse(name).map_err(|_| not_found(name))?;
        let mut cache = self
            .storage
            .cache_by_name(&parsed)
            .await?
            .ok_or_else(|| not_found(name))?;
        if !self.can_read_cache(caller, &cache).await? {
            return Err(not_found(name));
        }
        if cache.signing_key.0.is_empty() {
            // Caches created before signing keys existed get theirs on first use.
            cache.signing_key = self.new_signing_key(&cache.name)?;
            self.storage.update_cache(&cache).await?;
        }
        Ok(cache)
    }

    /// How much a cache the caller may read holds: its number of paths and their compressed bytes.
    pub async fn cache_stats(&self, caller: &Caller, name: &str) -> Result<CacheStats> {
        let cache = self.cache(caller, name).await?;
        let (paths, bytes) = self.storage.cache_usage(cache.id).await?;
        Ok(CacheStats {
            paths,
            bytes,
            recent_hits: self.memo.recent_hits.of(cache.id),
        })
    }

    /// The cache, if the caller owns it (and, with an API key, the key is not restricted).
    async fn owned_cache(&self, caller: &Caller, name: &str) -> Result<Cache> {
        let cache = self.cache(caller, name).await?;
        caller.require_user()?;
        if !Self::is_owner(caller, &cache) {
            return Err(ServiceError::Forbidden(format!(
                "only the owner of cache '{name}' may change it"
            )));
        }
        Ok(cache)
    }

    pub async fn create_cache(&self, caller: &Caller, new: NewCache) -> Result<Cache> {
        let user = caller.require_user()?;
        if caller.is_restricted() {
            return Err(ServiceError::Forbidden(
                "a restricted API key cannot create caches".into(),
            ));
        }
        let name = Name::parse_as(new.name.trim_matches(' '), "cache name")?;
        let priority = new.priority.unwrap_or(DEFAULT_CACHE_PRIORITY);
        check_priority(priority)?;
        if let Some(p) = new.local_priority {
            check_priority(p)?;
        }
        let (display_name, description) = display_texts(&name, new.display_name, new.description)?;
        let cache = Cache {
            managed: false,
            signing_key: self.new_signing_key(&name)?,
            id: CacheId::new(),
            display_name,
            name,
            description,
            public: new.public,
            priority,
            local_priority: new.local_priority,
            compression: new.compression.unwrap_or(Compression::Zstd),
            created_by: user.id,
            created_at: self.clock.now(),
        };
        self.storage.create_cache(&cache).await.map_err(|e| match e {
            StorageError::Conflict(_) => {
                ServiceError::conflict("name_taken", format!("a cache named '{}' already exists", cache.name))
            }
            other => other.into(),
        })?;
        Ok(cache)
    }

    pub async fn update_cache(&self, caller: &Caller, name: &str, c: CacheChanges) -> Result<Cache> {
        let mut cache = self.owned_cache(caller, name).await?;
        refuse_managed(cache.managed, format_args!("cache '{}'", cache.name))?;
        if let Some(v) = c.display_name {
            check_text("display_name", &v, 256)?;
            cache.display_name = v.trim().to_owned();
        }
        if let Some(v) = c.description {
            check_multiline_text("description", &v, 4096)?;
            cache.description = v;
        }
        if let Some(v) = c.public {
            cache.public = v;
        }
        if let Some(v) = c.priority {
            check_priority(v)?;
            cache.priority = v;
        }
        if let Some(v) = c.local_priority {
            if let Some(p) = v {
                check_priority(p)?;
            }
            cache.local_priority = v;
        }
        if let Some(v) = c.compression {
            cache.compression = v;
        }
        // Forgotten even when storage fails: the change may have been made all the same.
        let updated = self.storage.update_cache(&cache).await;
        self.memo.forget_cache(cache.id);
        updated?;
        Ok(cache)
    }

    pub async fn delete_cache(&self, caller: &Caller, name: &str) -> Result<()> {
        let cache = self.owned_cache(caller, name).await?;
        refuse_managed(cache.managed, format_args!("cache '{}'", cache.name))?;
        let deleted = self.storage.delete_cache(cache.id).await;
        self.memo.forget_cache(cache.id);
        deleted?;
        Ok(())
    }

    /// The organization's subscriptions, with what each lets it do.
    /// The organization's subscriptions to caches the caller may read: a private cache stays hidden from
    /// whoever cannot read it (a visitor of a public organization, or members of one that only followed a cache
    /// that has since become private).
    pub async fn subscriptions(&self, caller: &Caller, org: &str) -> Result<Vec<SubscribedCache>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        let mut readable = Vec::new();
        for sub in self.storage.subscriptions(org.id).await? {
            if self.can_read_cache(caller, &sub.cache).await? {
                readable.push(sub);
            }
        }
        Ok(readable)
    }

    /// Subscribes the organization to a cache. The cache's owner grants it (the org's members and jobs read it
    /// even when private); anyone else may only subscribe to a public cache, which the org then reads while it
    /// stays public. A private cache the caller can read but does not own is refused: only its owner chooses
    /// who reads it. Subscribing twice is a conflict, unless the second is the owner's grant.
    pub async fn subscribe(&self, caller: &Caller, org: &str, cache: &str) -> Result<(Org, Cache)> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        let cache = self.cache(caller, cache).await?;
        let granted = Self::is_owner(caller, &cache);
        if granted {
            // A managed cache's grants are the state document's whole list.
            refuse_managed(cache.managed, format_args!("the grants of cache '{}'", cache.name))?;
        }
        if !granted && !cache.public {
            return Err(ServiceError::Forbidden(format!(
                "only the owner of the private cache '{}' may subscribe organizations to it",
                cache.name
            )));
        }
        let existing = self.storage.subscriptions(org.id).await?;
        // Subscribing again is a conflict, unless it is the owner's grant of a plain subscription.
        if existing
            .iter()
            .any(|s| s.cache.id == cache.id && (s.granted || !granted))
        {
            return Err(ServiceError::conflict(
                "already_subscribed",
                format!("'{}' is already subscribed to '{}'", org.name, cache.name),
            ));
        }
        self.memo.forget_job_access();
        let subscribed = self
            .storage
            .subscribe(&Subscription {
                org_id: org.id,
                cache_id: cache.id,
                granted,
                push: false,
            })
            .await;
        self.memo.forget_job_access();
        subscribed?;
        let detail = if granted {
            "granted by its owner"
        } else {
            "public cache"
        };
        self.audit(
            caller,
            org.id,
            AuditAction::CacheSubscribed,
            format!("cache '{}'", cache.name),
            detail,
        )
        .await?;
        Ok((org, cache))
    }

    pub async fn unsubscribe(&self, caller: &Caller, org: &str, cache: &str) -> Result<()> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        let missing = || ServiceError::NotFound(format!("'{}' is not subscribed to '{cache}'", org.name));
        let parsed = Name::parse(cache).map_err(|_| missing())?;
        let found = self.storage.cache_by_name(&parsed).await?.ok_or_else(missing)?;
        // Removing a grant or the push cache the state document declared is the document's to do.
        if let Some(s) = self
            .storage
            .subscriptions(org.id)
            .await?
            .into_iter()
            .find(|s| s.cache.id == found.id)
        {
            if s.granted {
                refuse_managed(found.managed, format_args!("the grants of cache '{}'", found.name))?;
            }
            if s.push {
                refuse_managed(
                    org.managed,
                    format_args!("the push cache of organization '{}'", org.name),
                )?;
            }
        }
        self.memo.forget_job_access();
        let removed = self.storage.unsubscribe(org.id, found.id).await;
        self.memo.forget_job_access();
        let removed = removed?;
        if !removed {
            return Err(missing());
        }
        self.audit(
            caller,
            org.id,
            AuditAction::CacheUnsubscribed,
            format!("cache '{}'", found.name),
            "",
        )
        .await
    }

    /// The organization's push cache: where its jobs push what they build.
    pub async fn push_cache(&self, caller: &Caller, org: &str) -> Result<Option<Cache>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        // Shown only to whoever may read it (see `subscriptions`).
        Ok(self
            .subscriptions(caller, org.name.as_str())
            .await?
            .into_iter()
            .find(|s| s.push)
            .map(|s| s.cache))
    }

    /// Makes a cache the organization's push cache. Only the cache's owner may (writing a cache is the owner's
    /// right, and this lends it to the org's jobs), holding `manage_subscriptions` in the organization; the org
    /// is subscribed with a grant if it was not.
    pub async fn set_push_cache(&self, caller: &Caller, org: &str, cache: &str) -> Result<(Org, Cache)> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        let cache = self.cache(caller, cache).await?;
        if !Self::is_owner(caller, &cache) {
            return Err(ServiceError::Forbidden(format!(
                "only the owner of cache '{}' may let an organization's jobs push to it",
                cache.name
            )));
        }
        refuse_managed(
            org.managed,
            format_args!("the push cache of organization '{}'", org.name),
        )?;
        self.memo.forget_job_access();
        let set = async {
            self.storage
                .subscribe(&Subscription {
                    org_id: org.id,
                    cache_id: cache.id,
                    granted: true,
                    push: false,
                })
                .await?;
            self.storage.set_push_cache(org.id, Some(cache.id)).await
        }
        .await;
        self.memo.forget_job_access();
        let set = set?;
        if !set {
            return Err(ServiceError::Internal(format!(
                "the grant of '{}' to '{}' vanished while it was made the push cache",
                cache.name, org.name
            )));
        }
        self.audit(
            caller,
            org.id,
            AuditAction::PushCacheSet,
            format!("cache '{}'", cache.name),
            "",
        )
        .await?;
        Ok((org, cache))
    }

    /// The organization's jobs no longer push anywhere (they still build and read their caches).
    pub async fn clear_push_cache(&self, caller: &Caller, org: &str) -> Result<()> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        refuse_managed(
            org.managed,
            format_args!("the push cache of organization '{}'", org.name),
        )?;
        self.memo.forget_job_access();
        let cleared = self.storage.set_push_cache(org.id, None).await;
        self.memo.forget_job_access();
        cleared?;
        self.audit(
            caller,
            org.id,
            AuditAction::PushCacheCleared,
            format!("organization '{}'", org.name),
            "",
        )
        .await
    }

    /// Every organization subscribed to the cache, with what each may do: for its owner only.
    pub async fn cache_subscribers(&self, caller: &Caller, cache: &str) -> Result<Vec<Subscriber>> {
        let cache = self.owned_cache(caller, cache).await?;
        Ok(self.storage.subscribers(cache.id).await?)
    }

    /// The cache's owner ends an organization's subscription (and with it any push by its jobs).
    pub async fn revoke_subscriber(&self, caller: &Caller, cache: &str, org: &str) -> Result<()> {
        let cache = self.owned_cache(caller, cache).await?;
        let missing = || ServiceError::NotFound(format!("no organization '{org}' subscribes to '{}'", cache.name));
        let parsed = Name::parse(org).map_err(|_| missing())?;
        let found = self.storage.org_by_name(&parsed).await?.ok_or_else(missing)?;
        refuse_managed(cache.managed, format_args!("the grants of cache '{}'", cache.name))?;
        self.memo.forget_job_access();
        let removed = self.storage.unsubscribe(found.id, cache.id).await;
        self.memo.forget_job_access();
        let removed = removed?;
        if !removed {
            return Err(missing());
        }
        self.audit(
            caller,
            found.id,
            AuditAction::CacheUnsubscribed,
            format!("cache '{}'", cache.name),
            "revoked by the cache's owner",
        )
        .await
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// A new sealed signing key, named after the server's host and the cache as Nix users expect
    /// (`host-cache:…`).
    fn new_signing_key(&self, cache: &Name) -> Result<crate::crypt::Sealed> {
        let host = self
            .settings
            .domain
            .rsplit_once(':')
            .map_or(self.settings.domain.as_str(), |(h, _)| h);
        let key = SecretKey::generate(&format!("{host}-{cache}"))
            .map_err(|e| ServiceError::Internal(format!("cannot name the signing key: {e}")))?;
        Ok(self.crypt.seal(key.to_string().as_bytes()))
    }

    /// The cache's secret signing key, opened with the crypt secret.
    pub fn cache_secret_key(&self, cache: &Cache) -> Result<SecretKey> {
        let raw = self
            .crypt
            .open(&cache.signing_key)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let text = String::from_utf8(raw).map_err(|_| ServiceError::Internal("signing key is not text".into()))?;
        SecretKey::parse(&text).map_err(|e| ServiceError::Internal(format!("stored signing key: {e}")))
    }

    /// The public key clients put in `trusted-public-keys`, for a cache the caller can read.
    pub async fn cache_public_key(&self, caller: &Caller, name: &str) -> Result<PublicKey> {
        let cache = self.cache(caller, name).await?;
        Ok(self.cache_secret_key(&cache)?.public())
    }
}
