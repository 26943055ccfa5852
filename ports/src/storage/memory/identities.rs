//! OIDC identities and sign-ins in progress.

use super::MemoryStorage;
use gradient_domain::UserId;
use gradient_domain::model::{OidcFlow, OidcIdentity, Timestamp, User};
use gradient_domain::ports::storage::{Identities, Result, StorageError};

fn key(identity: &OidcIdentity) -> (String, String) {
    (identity.issuer.clone(), identity.subject.clone())
}

impl Identities for MemoryStorage {
    async fn create_oidc_user(&self, user: &User, identity: &OidcIdentity) -> Result<()> {
        self.with(|s| {
            // The user's own conflicts first, as the SQL adapter meets them (it inserts the user first).
            s.check_new_user(user)?;
            if s.oidc_identities.contains_key(&key(identity)) {
                return Err(StorageError::Conflict("oidc identity".into()));
            }
            s.create_user(user)?;
            s.oidc_identities.insert(key(identity), identity.clone());
            Ok(())
        })
    }

    async fn link_oidc_identity(&self, identity: &OidcIdentity) -> Result<()> {
        self.with(|s| {
            if !s.users.contains_key(&identity.user_id) {
                return Err(StorageError::NotFound);
            }
            if s.oidc_identities.contains_key(&key(identity)) {
                return Err(StorageError::Conflict("oidc identity".into()));
            }
            s.oidc_identities.insert(key(identity), identity.clone());
            Ok(())
        })
    }

    async fn user_by_oidc_identity(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        self.with(|s| {
            Ok(s.oidc_identities
                .get(&(issuer.to_owned(), subject.to_owned()))
                .and_then(|i| s.users.get(&i.user_id))
                .cloned())
        })
    }

    async fn oidc_identities(&self, user: UserId) -> Result<Vec<OidcIdentity>> {
        self.with(|s| {
            let mut found: Vec<_> = s
                .oidc_identities
                .values()
                .filter(|i| i.user_id == user)
                .cloned()
                .collect();
            found.sort_by(|a, b| (a.created_at, &a.issuer, &a.subject).cmp(&(b.created_at, &b.issuer, &b.subject)));
            Ok(found)
        })
    }

    async fn create_oidc_flow(&self, flow: &OidcFlow) -> Result<()> {
        self.with(|s| {
            if s.oidc_flows.contains_key(&flow.state) {
                return Err(StorageError::Conflict("oidc flow".into()));
            }
            if let Some(user) = flow.link_user
                && !s.users.contains_key(&user)
            {
                return Err(StorageError::NotFound);
            }
            s.oidc_flows.insert(flow.state.clone(), flow.clone());
            Ok(())
        })
    }

    async fn take_oidc_flow(&self, state: &str) -> Result<Option<OidcFlow>> {
        self.with(|s| Ok(s.oidc_flows.remove(state)))
    }

    async fn delete_expired_oidc_flows(&self, now: Timestamp) -> Result<u64> {
        self.with(|s| {
            let before = s.oidc_flows.len();
            s.oidc_flows.retain(|_, f| f.expires_at >= now);
            Ok((before - s.oidc_flows.len()) as u64)
        })
    }
}
