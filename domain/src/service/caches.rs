//! Binary caches and organizations' subscriptions to them. A cache belongs to the user who created it;
//! it is readable by everyone when public, otherwise by its owner and the members of subscribed
//! organizations.

use super::{Caller, Gradient, Result, ServiceError, check_multiline_text, check_text, display_texts};
use crate::model::{Cache, Compression, DEFAULT_CACHE_PRIORITY, Org};
use crate::nix::signing::{PublicKey, SecretKey};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage, StorageError};
use crate::{CacheId, Name};

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

fn check_priority(p: i32) -> Result<()> {
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
        Ok(self.storage.visible_caches(caller.user_id()).await?)
    }

    /// Whether the caller may read the cache (list it, fetch from it).
    pub async fn can_read_cache(&self, caller: &Caller, cache: &Cache) -> Result<bool> {
        if cache.public {
            return Ok(true);
        }
        let Some(user) = caller.user_id() else { return Ok(false) };
        if cache.created_by == user {
            return Ok(true);
        }
        for org in self.storage.subscribers(cache.id).await? {
            if self.storage.membership(org.id, user).await?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
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

    /// The cache, if the caller owns it (and, with an API key, the key is not restricted).
    async fn owned_cache(&self, caller: &Caller, name: &str) -> Result<Cache> {
        let cache = self.cache(caller, name).await?;
        let user = caller.require_user()?;
        let restricted = caller.is_restricted();
        if cache.created_by != user.id || restricted {
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
        self.storage.update_cache(&cache).await?;
        self.memo.forget_cache(cache.id);
        Ok(cache)
    }

    pub async fn delete_cache(&self, caller: &Caller, name: &str) -> Result<()> {
        let cache = self.owned_cache(caller, name).await?;
        self.storage.delete_cache(cache.id).await?;
        self.memo.forget_cache(cache.id);
        Ok(())
    }

    pub async fn subscriptions(&self, caller: &Caller, org: &str) -> Result<Vec<Cache>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        Ok(self.storage.subscriptions(org.id).await?)
    }

    /// Subscribes the organization to a cache the caller can read. Subscribing twice is a conflict.
    pub async fn subscribe(&self, caller: &Caller, org: &str, cache: &str) -> Result<(Org, Cache)> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        let cache = self.cache(caller, cache).await?;
        self.memo.forget_job_access();
        if !self.storage.subscribe(org.id, cache.id).await? {
            return Err(ServiceError::conflict(
                "already_subscribed",
                format!("'{}' is already subscribed to '{}'", org.name, cache.name),
            ));
        }
        Ok((org, cache))
    }

    pub async fn unsubscribe(&self, caller: &Caller, org: &str, cache: &str) -> Result<()> {
        let org = self.org_requiring(caller, org, Permission::ManageSubscriptions).await?;
        let parsed = Name::parse(cache).map_err(|_| not_found(cache))?;
        let found = self
            .storage
            .cache_by_name(&parsed)
            .await?
            .ok_or_else(|| not_found(cache))?;
        self.memo.forget_job_access();
        let removed = self.storage.unsubscribe(org.id, found.id).await?;
        self.memo.forget_job_access();
        if removed {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!(
                "'{}' is not subscribed to '{cache}'",
                org.name
            )))
        }
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
