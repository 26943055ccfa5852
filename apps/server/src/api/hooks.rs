//! Forge webhooks: generating an organization's webhook secret, receiving pushes from Gitea, Forgejo, GitLab
//! and GitHub, and the GitHub App's deliveries; listing a project's evaluations (to see what a push queued);
//! the organization's forge connection commit statuses are reported through.

use super::dto::{Nullable, Reply, ok};
use super::evaluations::EvaluationView;
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use gradient_domain::forge::{Forge, HookHeaders};
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Object, OpenApi};
use std::collections::BTreeMap;
use uuid::Uuid;

pub struct HooksApi(pub AppState);

#[derive(Object)]
pub struct WebhookSecretView {
    /// The webhook URL pattern: replace `{forge}` with `gitea`, `forgejo`, `gitlab` or `github`.
    pub url: String,
    /// The webhook URL for each forge.
    pub urls: BTreeMap<String, String>,
    /// The secret to configure in the forge (HMAC key, or GitLab's secret token). Shown only once.
    pub secret: String,
}

#[derive(Object)]
pub struct WebhookReceipt {
    /// The evaluations the delivery queued (none for pings, other events and pushes matching no project).
    pub queued: Vec<Uuid>,
}

#[derive(Object)]
pub struct ForgeConnectionRequest {
    /// `gitea`, `forgejo`, `gitlab` or `github`.
    pub forge: String,
    /// The forge's API base URL: `https://api.github.com` for GitHub, the instance's URL for Gitea, Forgejo and
    /// GitLab.
    pub api_url: String,
    /// An access token allowed to set commit statuses. Stored encrypted; never answered.
    pub token: String,
}

#[derive(Object)]
pub struct ForgeConnectionView {
    pub forge: String,
    pub api_url: String,
    /// Declared in the server's declarative state: the API refuses to change or delete it (409 `managed`).
    pub managed: bool,
}

impl From<&gradient_domain::model::ForgeConnection> for ForgeConnectionView {
    fn from(c: &gradient_domain::model::ForgeConnection) -> Self {
        Self {
            forge: c.forge.as_str().to_owned(),
            api_url: c.api_url.clone(),
            managed: c.managed,
        }
    }
}

#[derive(Object)]
pub struct GithubInstallationLinkRequest {
    /// The installation's id: `installation_id` in the App's setup URL after an installation.
    pub installation_id: u64,
    /// The OAuth `code` GitHub added to the setup URL (good once, for 10 minutes). It proves that the GitHub
    /// user administers the installation's account.
    pub code: String,
}

#[derive(Object)]
pub struct GithubInstallationLinkView {
    pub installation_id: u64,
    /// The GitHub account (organization or user) the installation belongs to, lowercase.
    pub account: String,
    /// The GitHub user who proved control of the installation.
    pub linked_by: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<&gradient_domain::model::GithubInstallationLink> for GithubInstallationLinkView {
    fn from(l: &gradient_domain::model::GithubInstallationLink) -> Self {
        Self {
            installation_id: l.installation_id,
            account: l.account.clone(),
            linked_by: l.linked_by.clone(),
            created_at: l.created_at,
        }
    }
}

#[OpenApi(tag = "Tag::Hooks")]
impl HooksApi {
    /// Links an installation of the instance's GitHub App to the organization (`manage_integrations`): from
    /// then on the App's pushes queue evaluations of the organization's projects, and their commit statuses go
    /// through the App. GitHub must confirm, through the `code` of the App's setup URL, that the GitHub user is
    /// the installation's account or an admin of its organization. 403 when it does not; 422 `code_refused`
    /// when GitHub refuses the code; 404 when no GitHub App is configured.
    #[oai(
        path = "/orgs/:org/github-installations",
        method = "post",
        operation_id = "link_github_installation"
    )]
    async fn link_github_installation(
        &self,
        auth: Token,
        org: Path<String>,
        body: Json<GithubInstallationLinkRequest>,
    ) -> Reply<GithubInstallationLinkView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let link = self
            .0
            .app
            .link_github_installation(&self.0.forge, &caller, &org, body.0.installation_id, &body.0.code)
            .await?;
        ok(GithubInstallationLinkView::from(&link))
    }

    /// The GitHub App installations linked to the organization (`manage_integrations`).
    #[oai(
        path = "/orgs/:org/github-installations",
        method = "get",
        operation_id = "list_github_installations"
    )]
    async fn github_installations(&self, auth: Token, org: Path<String>) -> Reply<Vec<GithubInstallationLinkView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let links = self.0.app.github_installation_links_of(&caller, &org).await?;
        ok(links.iter().map(GithubInstallationLinkView::from).collect())
    }

    /// Unlinks the installation from the organization (`manage_integrations`): the App no longer queues
    /// evaluations or reports statuses for it. 404 when it is not linked.
    #[oai(
        path = "/orgs/:org/github-installations/:installation",
        method = "delete",
        operation_id = "unlink_github_installation"
    )]
    async fn unlink_github_installation(
        &self,
        auth: Token,
        org: Path<String>,
        installation: Path<u64>,
    ) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0
            .app
            .unlink_github_installation(&caller, &org, installation.0)
            .await?;
        ok("unlinked".to_owned())
    }

    /// Sets where the organization's commit statuses go (`manage_integrations`): pending when an evaluation
    /// starts, then success, failure or error, linking to the evaluation.
    #[oai(path = "/orgs/:org/forge", method = "put", operation_id = "set_forge")]
    async fn set_forge(
        &self,
        auth: Token,
        org: Path<String>,
        body: Json<ForgeConnectionRequest>,
    ) -> Reply<ForgeConnectionView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let c = self
            .0
            .app
            .set_forge_connection(&caller, &org, &b.forge, &b.api_url, &b.token)
            .await?;
        ok(ForgeConnectionView::from(&c))
    }

    /// The organization's forge connection, without its token (`manage_integrations`); null when none is set.
    #[oai(path = "/orgs/:org/forge", method = "get", operation_id = "get_forge")]
    async fn get_forge(&self, auth: Token, org: Path<String>) -> Reply<Nullable<ForgeConnectionView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let c = self.0.app.forge_connection_of(&caller, &org).await?;
        ok(c.as_ref().map(ForgeConnectionView::from).into())
    }

    /// Generates the organization's webhook secret, replacing the previous one (`manage_integrations`).
    /// The answer is the only time the secret is shown.
    #[oai(
        path = "/orgs/:org/webhook-secret",
        method = "post",
        operation_id = "create_webhook_secret"
    )]
    async fn create_secret(&self, auth: Token, org: Path<String>) -> Reply<WebhookSecretView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let (o, secret) = self.0.app.create_webhook_secret(&caller, &org).await?;
        let base = format!("{}/api/v1/hooks", self.0.public_url());
        ok(WebhookSecretView {
            url: format!("{base}/{{forge}}/{}", o.name),
            urls: Forge::ALL
                .into_iter()
                .map(|f| (f.as_str().to_owned(), format!("{base}/{}/{}", f.as_str(), o.name)))
                .collect(),
            secret,
        })
    }

    /// Receives a forge's webhook delivery, signed with the organization's webhook secret (`X-Gitea-Signature`
    /// / `X-Forgejo-Signature`: hex HMAC-SHA256 of the body; `X-Gitlab-Token`: the secret; `X-Hub-Signature-256`:
    /// `sha256=` + hex HMAC-SHA256). A push queues an evaluation of the pushed commit for every active project
    /// of the organization whose repository and branch it matches; other events are accepted and ignored.
    /// 401 when the signature is missing or wrong, and likewise for an unknown organization or one without a
    /// webhook secret (a delivery learns nothing about which organizations exist); 404 for an unknown forge.
    #[oai(path = "/hooks/:forge/:org", method = "post", operation_id = "receive_forge_hook")]
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        forge: Path<String>,
        org: Path<String>,
        #[oai(name = "X-Gitea-Event")] gitea_event: Header<Option<String>>,
        #[oai(name = "X-Forgejo-Event")] forgejo_event: Header<Option<String>>,
        #[oai(name = "X-Gitlab-Event")] gitlab_event: Header<Option<String>>,
        #[oai(name = "X-GitHub-Event")] github_event: Header<Option<String>>,
        #[oai(name = "X-Gitea-Signature")] gitea_signature: Header<Option<String>>,
        #[oai(name = "X-Forgejo-Signature")] forgejo_signature: Header<Option<String>>,
        #[oai(name = "X-Gitlab-Token")] gitlab_token: Header<Option<String>>,
        #[oai(name = "X-Hub-Signature-256")] hub_signature_256: Header<Option<String>>,
        body: Binary<Vec<u8>>,
    ) -> Reply<WebhookReceipt> {
        let headers = HookHeaders {
            gitea_event: gitea_event.0,
            forgejo_event: forgejo_event.0,
            gitlab_event: gitlab_event.0,
            github_event: github_event.0,
            gitea_signature: gitea_signature.0,
            forgejo_signature: forgejo_signature.0,
            gitlab_token: gitlab_token.0,
            hub_signature_256: hub_signature_256.0,
        };
        let queued = self.0.app.receive_webhook(&forge, &org, &headers, &body.0).await?;
        ok(WebhookReceipt {
            queued: queued.iter().map(|e| e.id.0).collect(),
        })
    }

    /// Receives a delivery of the instance's GitHub App (its webhook URL), signed with the App's webhook secret
    /// (`X-Hub-Signature-256`: `sha256=` + hex HMAC-SHA256 of the body). `installation` events (created,
    /// new_permissions_accepted and unsuspend; deleted and suspend) and `installation_repositories` events keep
    /// the App's installations, which commit statuses of the accounts' repositories are reported with for the
    /// organizations linked to them. A push records its installation and queues an evaluation of the pushed
    /// commit for every active project of the organizations linked to that installation whose repository and
    /// branch it matches; other events are accepted and ignored. 401 when the signature is missing or wrong;
    /// 404 when no GitHub App is configured.
    #[oai(path = "/hooks/github", method = "post", operation_id = "receive_github_app_hook")]
    async fn receive_github_app(
        &self,
        #[oai(name = "X-GitHub-Event")] github_event: Header<Option<String>>,
        #[oai(name = "X-Hub-Signature-256")] hub_signature_256: Header<Option<String>>,
        body: Binary<Vec<u8>>,
    ) -> Reply<WebhookReceipt> {
        let headers = HookHeaders {
            github_event: github_event.0,
            hub_signature_256: hub_signature_256.0,
            ..HookHeaders::default()
        };
        let queued = self.0.app.receive_github_app_webhook(&headers, &body.0).await?;
        ok(WebhookReceipt {
            queued: queued.iter().map(|e| e.id.0).collect(),
        })
    }

    /// The project's newest evaluations (at most 50), newest first.
    #[oai(
        path = "/projects/:org/:project/evaluations",
        method = "get",
        operation_id = "list_project_evaluations",
        tag = "Tag::Projects"
    )]
    async fn evaluations(
        &self,
        auth: MaybeToken,
        org: Path<String>,
        project: Path<String>,
    ) -> Reply<Vec<EvaluationView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        let list = self.0.app.project_evaluations(&caller, &org, &project).await?;
        ok(list.iter().map(EvaluationView::from).collect())
    }
}
