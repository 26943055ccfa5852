//! The instance's GitHub App: deliveries to its webhook (`/hooks/github`) keep its installations and queue
//! evaluations of pushes to any organization's projects; commit statuses of repositories on an account with an
//! installation are reported with the installation's token (see [`super::statuses`]).
//!
//! Answers of [`Gradient::receive_github_app_webhook`]:
//! * no App configured: `NotFound` (404);
//! * a missing or wrong `X-Hub-Signature-256` (HMAC-SHA256 with the App's webhook secret): `Unauthenticated`
//!   (401), nothing stored or queued;
//! * a signed delivery that does not parse: `Invalid { code: "invalid_payload" }` (422), nothing stored;
//! * otherwise what [`crate::github_app::parse_event`] says it means: an installation stored or forgotten, a
//!   push's installation stored and one evaluation queued per active project, of any organization, whose
//!   repository and branch it matches (as for an organization's own webhook); anything else is ignored.

use super::{Gradient, Result, ServiceError};
use crate::forge::{self, Forge, HookHeaders};
use crate::github_app::{self, AppEvent, InstallationRef};
use crate::model::{Evaluation, GithubInstallation};
use crate::ports::{Clock, Storage};

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
                if let Some(installation) = &installation {
                    self.keep_installation(installation).await?;
                }
                let Some(push) = push else {
                    return Ok(Vec::new());
                };
                let projects = self.storage.active_projects().await?;
                self.queue_push(projects, &push).await
            }
            AppEvent::Ignored => Ok(Vec::new()),
        }
    }

    async fn keep_installation(&self, installation: &InstallationRef) -> Result<()> {
        let stored = GithubInstallation {
            id: installation.id,
            account: installation.account.clone(),
            updated_at: self.clock.now(),
        };
        Ok(self.storage.put_github_installation(&stored).await?)
    }

    /// The App's installation covering `repository` (see [`github_app::repository_owner`]), when an App is
    /// configured and its owner installed it: commit statuses of that repository go through it.
    pub(super) async fn github_app_installation(&self, repository: &str) -> Result<Option<GithubInstallation>> {
        let Some(app) = &self.settings.github_app else {
            return Ok(None);
        };
        let Some(owner) = github_app::repository_owner(repository, &app.api_url) else {
            return Ok(None);
        };
        Ok(self.storage.github_installation(&owner).await?)
    }
}
