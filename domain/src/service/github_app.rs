//! The instance's GitHub App: deliveries to its webhook (`/hooks/github`) keep its installations and queue
//! evaluations of pushes; commit statuses of repositories on an account with an installation are reported with
//! the installation's token (see [`super::statuses`]).
//!
//! The App acts only for the Gradient organizations its installation is **linked** to. A link is made by a
//! member of the organization holding `manage_integrations` who proves to GitHub that they administer the
//! installation's account: GitHub's redirect to the App's setup URL after an installation carries an OAuth
//! `code`, which the server exchanges for that user's token and asks GitHub whether the user can access the
//! installation and is the account itself or an admin of its organization ([`crate::github_app::may_link`]).
//! A push delivered by an installation queues evaluations only in the organizations linked to it; statuses
//! go through the App only for projects of organizations linked to the installation covering their
//! repository. Other organizations' projects naming the same repository get nothing through the App (they can
//! still use their own webhook and forge connection).
//!
//! Answers of [`Gradient::receive_github_app_webhook`]:
//! * no App configured: `NotFound` (404);
//! * a missing or wrong `X-Hub-Signature-256` (HMAC-SHA256 with the App's webhook secret): `Unauthenticated`
//!   (401), nothing stored or queued;
//! * a signed delivery that does not parse: `Invalid { code: "invalid_payload" }` (422), nothing stored;
//! * otherwise what [`crate::github_app::parse_event`] says it means: an installation stored or forgotten, a
//!   push's installation stored and one evaluation queued per active project of an organization linked to
//!   that installation whose repository and branch it matches (as for an organization's own webhook); a push
//!   naming no installation queues nothing; a pull request event likewise, for those organizations' active
//!   projects, as for an organization's own webhook ([`super::webhooks`]); anything else is ignored.

use super::{Caller, Gradient, Result, ServiceError};
use crate::OrgId;
use crate::forge::{self, Forge, HookHeaders};
use crate::github_app::{self, AppEvent, InstallationRef};
use crate::model::{Evaluation, GithubInstallation, GithubInstallationLink};
use crate::permissions::Permission;
use crate::ports::forge::{ForgeApi, ForgeError};
use crate::ports::{Clock, Storage};
use std::collections::HashSet;

/// The GitHub App as the domain knows it: where its API is and the secret its webhook deliveries are signed
/// with. (Its private key stays in the forge adapter, which makes its tokens.)
#[derive(Clone)]
pub struct GithubAppSettings {
    pub app_id: u64,
    /// The API base URL, without a trailing slash (`https://api.github.com`).
    pub api_url: String,
    pub webhook_secret: Vec<u8>,
}

impl std::fmt::Debug for GithubAppSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubAppSettings")
            .field("app_id", &self.app_id)
            .field("api_url", &self.api_url)
            .field("webhook_secret", &"..")
            .finish()
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Handles a delivery to the App's webhook (see the module's documentation for the answers). Answers the
    /// evaluations queued.
    pub async fn receive_github_app_webhook(&self, headers: &HookHeaders, body: &[u8]) -> Result<Vec<Evaluation>> {
        let app = self
            .settings
            .github_app
            .as_ref()
            .ok_or_else(|| ServiceError::NotFound("no GitHub App is configured on this server".into()))?;
        if !forge::verify_signature(Forge::GitHub, headers, &app.webhook_secret, body) {
            return Err(ServiceError::Unauthenticated(
                "the webhook signature is missing or wrong".into(),
            ));
        }
        let event = github_app::parse_event(headers.github_event.as_deref(), body)
            .map_err(|e| ServiceError::invalid("invalid_payload", e.to_string()))?;
        match event {
            AppEvent::Installed(installation) => {
                self.keep_installation(&installation).await?;
                Ok(Vec::new())
            }
            AppEvent::Removed { id } => {
                self.storage.delete_github_installation(id).await?;
                Ok(Vec::new())
            }
            AppEvent::Push { installation, push } => {
                let Some(installation) = installation else {
                    return Ok(Vec::new());
                };
                self.keep_installation(&installation).await?;
                let Some(push) = push else {
                    return Ok(Vec::new());
                };
                let projects = self.linked_projects(&installation).await?;
                if projects.is_empty() {
                    return Ok(Vec::new());
                }
                self.queue_push(projects, &push).await
            }
            AppEvent::PullRequest {
                installation,
                pull_request,
            } => {
                let Some(installation) = installation else {
                    return Ok(Vec::new());
                };
                self.keep_installation(&installation).await?;
                let Some(pull_request) = pull_request else {
                    return Ok(Vec::new());
                };
                let projects = self.linked_projects(&installation).await?;
                self.handle_pull_request(projects, &pull_request).await
            }
            AppEvent::Ignored => Ok(Vec::new()),
        }
    }

    /// The active projects of the organizations linked to the installation that delivered an event (only
    /// they hear of it).
    async fn linked_projects(&self, installation: &InstallationRef) -> Result<Vec<crate::model::Project>> {
        let linked: HashSet<OrgId> = self
            .storage
            .github_installation_orgs(installation.id)
            .await?
            .into_iter()
            .collect();
        if linked.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .storage
            .active_projects()
            .await?
            .into_iter()
            .filter(|p| linked.contains(&p.org_id))
            .collect())
    }

    async fn keep_installation(&self, installation: &InstallationRef) -> Result<()> {
        let stored = GithubInstallation {
            id: installation.id,
            account: installation.account.clone(),
            updated_at: self.clock.now(),
        };
        Ok(self.storage.put_github_installation(&stored).await?)
    }

    /// The App's installation covering `repository` (see [`github_app::repository_owner`]) for the
    /// organization `org`, when an App is configured, the repository's owner installed it and the installation
    /// is linked to `org`: commit statuses of that organization's projects on that repository go through it.
    pub(super) async fn github_app_installation(
        &self,
        org: OrgId,
        repository: &str,
    ) -> Result<Option<GithubInstallation>> {
        let Some(app) = &self.settings.github_app else {
            return Ok(None);
        };
        let Some(owner) = github_app::repository_owner(repository, &app.api_url) else {
            return Ok(None);
        };
        let Some(installation) = self.storage.github_installation(&owner).await? else {
            return Ok(None);
        };
        let linked = self.storage.github_installation_orgs(installation.id).await?;
        Ok(linked.contains(&org).then_some(installation))
    }

    fn require_github_app(&self) -> Result<()> {
        match &self.settings.github_app {
            Some(_) => Ok(()),
            None => Err(ServiceError::NotFound(
                "no GitHub App is configured on this server".into(),
            )),
        }
    }

    /// Links the App's installation `installation` to the organization (`manage_integrations`), once GitHub
    /// confirmed, through the OAuth `code` it handed the caller's browser, that the GitHub user administers the
    /// installation's account (see the module's documentation). Linking again replaces the link. Answers:
    /// 404 without an App (or an organization hidden from the caller), 403 without the permission or when
    /// the GitHub user may not link the installation, 422 `invalid_installation` / `invalid_code` for
    /// malformed values and `code_refused` when GitHub refuses the code.
    pub async fn link_github_installation<F: ForgeApi>(
        &self,
        forge: &F,
        caller: &Caller,
        org: &str,
        installation: u64,
        code: &str,
    ) -> Result<GithubInstallationLink> {
        self.require_github_app()?;
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        if !github_app::valid_installation_id(installation) {
            return Err(ServiceError::invalid(
                "invalid_installation",
                "the installation id is a positive integer",
            ));
        }
        let code = code.trim();
        if !github_app::valid_oauth_code(code) {
            return Err(ServiceError::invalid(
                "invalid_code",
                "give the `code` GitHub added to the setup URL",
            ));
        }
        let access = match forge.github_installation_access(code, installation).await {
            Ok(access) => access,
            Err(ForgeError::Rejected(why)) => {
                return Err(ServiceError::invalid(
                    "code_refused",
                    format!("GitHub did not confirm the code (codes are good once, for 10 minutes): {why}"),
                ));
            }
            Err(e @ ForgeError::Unavailable(_)) => return Err(ServiceError::Internal(e.to_string())),
        };
        let Some(access) = access else {
            return Err(ServiceError::Forbidden(format!(
                "the GitHub user who authorized the App cannot access installation {installation}"
            )));
        };
        if !github_app::may_link(&access) {
            return Err(ServiceError::Forbidden(format!(
                "only GitHub account '{}' or an admin of it may link its installation",
                access.account
            )));
        }
        let link = GithubInstallationLink {
            org_id: o.id,
            installation_id: installation,
            account: access.account,
            linked_by: access.user,
            created_at: self.clock.now(),
        };
        self.storage.link_github_installation(&link).await?;
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::GithubInstallationLinked,
            format!("GitHub installation {installation}"),
            format!("account '{}'", link.account),
        )
        .await?;
        Ok(link)
    }

    /// The installations linked to the organization (`manage_integrations`).
    pub async fn github_installation_links_of(
        &self,
        caller: &Caller,
        org: &str,
    ) -> Result<Vec<GithubInstallationLink>> {
        self.require_github_app()?;
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        Ok(self.storage.github_installation_links(o.id).await?)
    }

    /// Removes the installation's link to the organization (`manage_integrations`): from then on the App
    /// queues nothing and reports nothing for it. 404 when there is no such link.
    pub async fn unlink_github_installation(&self, caller: &Caller, org: &str, installation: u64) -> Result<()> {
        self.require_github_app()?;
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        if !self.storage.unlink_github_installation(o.id, installation).await? {
            return Err(ServiceError::NotFound(format!(
                "installation {installation} is not linked to organization '{}'",
                o.name
            )));
        }
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::GithubInstallationUnlinked,
            format!("GitHub installation {installation}"),
            "",
        )
        .await
    }
}
