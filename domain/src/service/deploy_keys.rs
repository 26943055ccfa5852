//! Organizations' SSH deploy keys (see [`crate::deploy_key`]) and the credential each repository is fetched
//! with.
//!
//! * Reading the public key: members of the organization only; everyone else, a public organization's
//!   visitors included, gets the answer for a missing organization (404). The key is generated on the
//!   organization's creation, or at the first read for organizations older than keys.
//! * Rotating: `manage_integrations` (Admins); the old key stops working at once (its private half is gone).
//! * The private half is opened only by [`Gradient::repository_credential`], for the server's own `git` and
//!   for an evaluation job's assignment; no answer of the API carries it. The same function gives an https
//!   repository covered by the GitHub App's installation linked to the organization an installation token.

use super::{Caller, Gradient, Result, ServiceError};
use crate::OrgId;
use crate::deploy_key::{self, RepositoryCredential};
use crate::model::{AuditAction, Org, OrgSshKey, Timestamp};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};

/// An organization's public key as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshKeyView {
    /// The `authorized_keys` line: `ssh-ed25519 AAAA… gradient-<org>`.
    pub public_key: String,
    /// `SHA256:…`, as `ssh-keygen -l` and the forges show it.
    pub fingerprint: String,
    pub created_at: Timestamp,
}

impl SshKeyView {
    fn of(key: &OrgSshKey) -> Self {
        Self {
            fingerprint: deploy_key::fingerprint(&key.public_key).unwrap_or_default(),
            public_key: key.public_key.clone(),
            created_at: key.created_at,
        }
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The organization, when the caller is one of its members; the missing-organization answer otherwise.
    async fn org_of_member(&self, caller: &Caller, org: &str) -> Result<Org> {
        let (o, _) = self.org_with_access(caller, org).await?;
        let member = match caller.user_id() {
            Some(user) => self.storage.membership(o.id, user).await?.is_some(),
            None => false,
        };
        if !member {
            return Err(ServiceError::NotFound(format!("organization '{org}' not found")));
        }
        Ok(o)
    }

    fn new_ssh_key(&self, org: &Org) -> OrgSshKey {
        let pair = deploy_key::generate(org.name.as_str());
        OrgSshKey {
            org_id: org.id,
            public_key: pair.public,
            private_key: self.crypt.seal(pair.private.as_bytes()),
            created_at: self.clock.now(),
        }
    }

    /// The organization's key, generated and stored now when it has none yet.
    pub(super) async fn ensure_org_ssh_key(&self, org: &Org) -> Result<OrgSshKey> {
        if let Some(key) = self.storage.org_ssh_key(org.id).await? {
            return Ok(key);
        }
        Ok(self.storage.init_org_ssh_key(&self.new_ssh_key(org)).await?)
    }

    /// The organization's public deploy key (members only; see the module's documentation).
    pub async fn org_ssh_key(&self, caller: &Caller, org: &str) -> Result<SshKeyView> {
        let o = self.org_of_member(caller, org).await?;
        Ok(SshKeyView::of(&self.ensure_org_ssh_key(&o).await?))
    }

    /// Replaces the organization's deploy key with a new one (`manage_integrations`); answers the new public
    /// key.
    pub async fn rotate_org_ssh_key(&self, caller: &Caller, org: &str) -> Result<SshKeyView> {
        let o = self.org_of_member(caller, org).await?;
        let o = self
            .org_requiring(caller, o.name.as_str(), Permission::ManageIntegrations)
            .await?;
        let key = self.new_ssh_key(&o);
        self.storage.set_org_ssh_key(&key).await?;
        let view = SshKeyView::of(&key);
        self.audit(
            caller,
            o.id,
            AuditAction::SshKeyRotated,
            format!("organization '{}'", o.name),
            view.fingerprint.clone(),
        )
        .await?;
        Ok(view)
    }

    /// What the organization `org` fetches `repository` with: its deploy key for SSH URLs; for an https
    /// repository the GitHub App's installation linked to `org` covers, a token of that installation; nothing
    /// otherwise (the URL alone). A key that does not open or a token GitHub does not give is no credential
    /// (the fetch then fails saying the repository refused it, or works for a public repository): one
    /// organization's trouble never stops the dispatch of other jobs. Storage errors are errors.
    pub(crate) async fn repository_credential(
        &self,
        org: OrgId,
        repository: &str,
    ) -> Result<Option<RepositoryCredential>> {
        let Some(remote) = crate::reach::parse_remote(repository) else {
            return Ok(None);
        };
        match remote.transport {
            crate::reach::Transport::Ssh => {
                let Some(o) = self.storage.org(org).await? else {
                    return Ok(None);
                };
                let key = self.ensure_org_ssh_key(&o).await?;
                Ok(self
                    .crypt
                    .open(&key.private_key)
                    .ok()
                    .and_then(|k| String::from_utf8(k).ok())
                    .map(|private_key| RepositoryCredential::SshKey { private_key }))
            }
            crate::reach::Transport::Https => {
                let Some(installation) = self.github_app_installation(org, repository).await? else {
                    return Ok(None);
                };
                Ok(self
                    .app_tokens
                    .repository_token(installation.id)
                    .await
                    .ok()
                    .map(|token| RepositoryCredential::HttpsToken { token }))
            }
            _ => Ok(None),
        }
    }
}
