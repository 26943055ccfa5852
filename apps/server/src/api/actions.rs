//! A project's actions: outgoing webhooks and mail on evaluation events, their deliveries and test deliveries.

use super::dto::{Nullable, Reply, ok};
use super::{Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use gradient_domain::model::{Action, ActionKind, Delivery};
use gradient_domain::service::{ActionChanges, ActionWithSecret, NewAction};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct ActionsApi(pub AppState);

#[derive(Object)]
pub struct NewActionRequest {
    /// Unique in the project; 1 to 64 characters.
    pub name: String,
    /// `webhook` or `mail`.
    pub kind: String,
    /// A webhook's http:// or https:// URL, held to the server's network policy like repositories (422
    /// `url_not_allowed`).
    pub url: Option<String>,
    /// A webhook's signing secret (16 to 256 characters); omitted: generated. Answered once.
    pub secret: Option<String>,
    /// A mail action's addresses (1 to 20); needs the server's `email.enable`.
    pub recipients: Option<Vec<String>>,
    /// Of `failed`, `fixed`, `completed`; default `["failed", "fixed"]` (changes of health only).
    pub events: Option<Vec<String>>,
    /// Default: true.
    pub enabled: Option<bool>,
}

/// Fields left out stay as they are.
#[derive(Object)]
pub struct ActionPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    /// Replaces a webhook's secret (answered once).
    pub secret: Option<String>,
    /// `true`: a new generated secret for the webhook (answered once).
    pub regenerate_secret: Option<bool>,
    pub recipients: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

#[derive(Object)]
pub struct ActionView {
    pub id: Uuid,
    pub name: String,
    /// `webhook` or `mail`.
    pub kind: String,
    /// A webhook's URL.
    pub url: Nullable<String>,
    /// A mail action's addresses.
    pub recipients: Nullable<Vec<String>>,
    pub events: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    /// The webhook's signing secret: only in the answer that made or replaced it; `null` otherwise.
    pub secret: Nullable<String>,
}

impl ActionView {
    fn new(a: &Action, secret: Option<String>) -> Self {
        let (url, recipients) = match &a.kind {
            ActionKind::Webhook { url, .. } => (Some(url.clone()), None),
            ActionKind::Mail { recipients } => (None, Some(recipients.iter().map(|e| e.to_string()).collect())),
        };
        Self {
            id: a.id.0,
            name: a.name.clone(),
            kind: a.kind.as_str().to_owned(),
            url: url.into(),
            recipients: recipients.into(),
            events: a.events.iter().map(|e| e.as_str().to_owned()).collect(),
            enabled: a.enabled,
            created_at: a.created_at,
            secret: secret.into(),
        }
    }
}

impl From<ActionWithSecret> for ActionView {
    fn from(a: ActionWithSecret) -> Self {
        Self::new(&a.action, a.secret)
    }
}

/// One delivery of an action.
#[derive(Object)]
pub struct DeliveryView {
    pub id: Uuid,
    /// `failed`, `fixed`, `completed`, or `test` for a test delivery.
    pub event: String,
    pub evaluation: Nullable<Uuid>,
    /// `pending` (an attempt is due at `next_attempt_at`), `delivered` or `failed` (given up).
    pub state: String,
    pub attempts: u32,
    /// The HTTP status of the last answer (webhooks).
    pub status_code: Nullable<u16>,
    /// Why the last attempt failed.
    pub error: Nullable<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id.0,
            event: d.event.map_or("test", |e| e.as_str()).to_owned(),
            evaluation: d.evaluation_id.map(|e| e.0).into(),
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            status_code: d.status_code.into(),
            error: d.last_error.clone().into(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[OpenApi(tag = "Tag::Projects")]
impl ActionsApi {
    /// The project's actions (members of its organization; never a secret).
    #[oai(
        path = "/projects/:org/:project/actions",
        method = "get",
        operation_id = "list_actions"
    )]
    async fn list(&self, auth: Token, org: Path<String>, project: Path<String>) -> Reply<Vec<ActionView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let actions = self.0.app.actions(&caller, &org, &project).await?;
        ok(actions.iter().map(|a| ActionView::new(a, None)).collect())
    }

    /// Adds an action to the project (`edit_project`); a webhook's secret is answered this once.
    #[oai(
        path = "/projects/:org/:project/actions",
        method = "post",
        operation_id = "create_action"
    )]
    async fn create(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        body: Json<NewActionRequest>,
    ) -> Reply<ActionView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let new = NewAction {
            name: b.name,
            kind: b.kind,
            url: b.url,
            secret: b.secret,
            recipients: b.recipients,
            events: b.events,
            enabled: b.enabled,
        };
        ok(self.0.app.create_action(&caller, &org, &project, new).await?.into())
    }

    #[oai(
        path = "/projects/:org/:project/actions/:action",
        method = "get",
        operation_id = "get_action"
    )]
    async fn get(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        action: Path<Uuid>,
    ) -> Reply<ActionView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let a = self
            .0
            .app
            .action(&caller, &org, &project, gradient_domain::ActionId(action.0))
            .await?;
        ok(ActionView::new(&a, None))
    }

    /// Changes an action (`edit_project`).
    #[oai(
        path = "/projects/:org/:project/actions/:action",
        method = "patch",
        operation_id = "edit_action"
    )]
    async fn patch(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        action: Path<Uuid>,
        body: Json<ActionPatch>,
    ) -> Reply<ActionView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let changes = ActionChanges {
            name: b.name,
            url: b.url,
            secret: b.secret,
            regenerate_secret: b.regenerate_secret.unwrap_or(false),
            recipients: b.recipients,
            events: b.events,
            enabled: b.enabled,
        };
        let id = gradient_domain::ActionId(action.0);
        ok(self
            .0
            .app
            .update_action(&caller, &org, &project, id, changes)
            .await?
            .into())
    }

    /// Deletes an action with its deliveries (`edit_project`).
    #[oai(
        path = "/projects/:org/:project/actions/:action",
        method = "delete",
        operation_id = "delete_action"
    )]
    async fn delete(&self, auth: Token, org: Path<String>, project: Path<String>, action: Path<Uuid>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let id = gradient_domain::ActionId(action.0);
        self.0.app.delete_action(&caller, &org, &project, id).await?;
        ok("deleted".to_owned())
    }

    /// The action's recent deliveries, newest first (the newest 50 are kept).
    #[oai(
        path = "/projects/:org/:project/actions/:action/deliveries",
        method = "get",
        operation_id = "list_action_deliveries"
    )]
    async fn deliveries(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        action: Path<Uuid>,
    ) -> Reply<Vec<DeliveryView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let id = gradient_domain::ActionId(action.0);
        let list = self.0.app.action_deliveries(&caller, &org, &project, id).await?;
        ok(list.iter().map(DeliveryView::from).collect())
    }

    /// Sends a test delivery (`edit_project`, event `test`): a webhook's goes out with the next deliveries, a mail
    /// action's at once.
    #[oai(
        path = "/projects/:org/:project/actions/:action/test",
        method = "post",
        operation_id = "test_action"
    )]
    async fn test(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        action: Path<Uuid>,
    ) -> Reply<DeliveryView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let id = gradient_domain::ActionId(action.0);
        let d = self.0.app.test_action(&caller, &org, &project, id).await?;
        ok(DeliveryView::from(&d))
    }
}
