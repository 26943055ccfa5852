//! Projects' actions and their deliveries.

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, from_json, to_json, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::{Action, ActionEvent, ActionKind, Delivery, DeliveryState};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Actions, Result};
use gradient_domain::{ActionId, DeliveryId, Email, EvaluationId, OrgId, ProjectId};
use uuid::Uuid;

macro_rules! action_columns {
    () => {
        "id, org_id, project_id, name, kind, url, secret, recipients, events, enabled, created_at"
    };
}

macro_rules! delivery_columns {
    () => {
        "id, action_id, evaluation_id, event, body, state, attempts, status_code, last_error, next_attempt_at, \
         created_at, updated_at"
    };
}

#[derive(sqlx::FromRow)]
struct ActionRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Uuid,
    name: String,
    kind: String,
    url: Option<String>,
    secret: Option<String>,
    recipients: Option<String>,
    events: String,
    enabled: bool,
    created_at: DateTime<Utc>,
}

impl ActionRow {
    fn into_action(self) -> Result<Action> {
        let kind = match (self.kind.as_str(), self.url, self.secret, self.recipients) {
            ("webhook", Some(url), Some(secret), _) => ActionKind::Webhook {
                url,
                secret: Sealed(secret),
            },
            ("mail", _, _, Some(r)) => ActionKind::Mail {
                recipients: from_json::<Vec<String>>(&r, "action recipients")?
                    .iter()
                    .map(|e| Email::parse(e).map_err(|e| corrupt("action recipient", e)))
                    .collect::<Result<_>>()?,
            },
            (other, ..) => return Err(corrupt("action kind", other)),
        };
        let events = from_json::<Vec<String>>(&self.events, "action events")?
            .iter()
            .map(|e| ActionEvent::parse(e).ok_or_else(|| corrupt("action event", e)))
            .collect::<Result<_>>()?;
        Ok(Action {
            id: ActionId(self.id),
            org_id: OrgId(self.org_id),
            project_id: ProjectId(self.project_id),
            name: self.name,
            kind,
            events,
            enabled: self.enabled,
            created_at: self.created_at,
        })
    }
}

/// The kind-specific columns: url, secret, recipients (JSON).
fn kind_columns(kind: &ActionKind) -> Result<(Option<String>, Option<String>, Option<String>)> {
    Ok(match kind {
        ActionKind::Webhook { url, secret } => (Some(url.clone()), Some(secret.0.clone()), None),
        ActionKind::Mail { recipients } => {
            let r: Vec<&str> = recipients.iter().map(|e| e.as_str()).collect();
            (None, None, Some(to_json(&r)?))
        }
    })
}

fn events_json(events: &[ActionEvent]) -> Result<String> {
    let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    to_json(&names)
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    action_id: Uuid,
    evaluation_id: Option<Uuid>,
    event: Option<String>,
    body: String,
    state: String,
    attempts: i64,
    status_code: Option<i64>,
    last_error: Option<String>,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl DeliveryRow {
    fn into_delivery(self) -> Result<Delivery> {
        Ok(Delivery {
            id: DeliveryId(self.id),
            action_id: ActionId(self.action_id),
            evaluation_id: self.evaluation_id.map(EvaluationId),
            event: self
                .event
                .map(|e| ActionEvent::parse(&e).ok_or_else(|| corrupt("delivery event", &e)))
                .transpose()?,
            body: self.body,
            state: DeliveryState::parse(&self.state).ok_or_else(|| corrupt("delivery state", &self.state))?,
            attempts: u32::try_from(self.attempts).map_err(|e| corrupt("delivery attempts", e))?,
            status_code: self
                .status_code
                .map(|c| u16::try_from(c).map_err(|e| corrupt("delivery status code", e)))
                .transpose()?,
            last_error: self.last_error,
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl Actions for SqlStorage {
    async fn create_action(&self, action: &Action) -> Result<()> {
        let sql = concat!(
            "INSERT INTO actions (",
            action_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        let (url, secret, recipients) = kind_columns(&action.kind)?;
        let events = events_json(&action.events)?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(action.id.0)
            .bind(action.org_id.0)
            .bind(action.project_id.0)
            .bind(&action.name)
            .bind(action.kind.as_str())
            .bind(url.as_deref())
            .bind(secret.as_deref())
            .bind(recipients.as_deref())
            .bind(&events)
            .bind(action.enabled)
            .bind(action.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn action(&self, id: ActionId) -> Result<Option<Action>> {
        let sql = concat!("SELECT ", action_columns!(), " FROM actions WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, ActionRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(ActionRow::into_action).transpose()
    }

    async fn actions_of(&self, project: ProjectId) -> Result<Vec<Action>> {
        let sql = concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE project_id = $1 ORDER BY name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ActionRow>(sql)
            .bind(project.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(ActionRow::into_action).collect()
    }

    async fn update_action(&self, action: &Action) -> Result<()> {
        let sql = "UPDATE actions SET name = $2, kind = $3, url = $4, secret = $5, recipients = $6, events = $7, \
                   enabled = $8 WHERE id = $1";
        let (url, secret, recipients) = kind_columns(&action.kind)?;
        let events = events_json(&action.events)?;
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(action.id.0)
            .bind(&action.name)
            .bind(action.kind.as_str())
            .bind(url.as_deref())
            .bind(secret.as_deref())
            .bind(recipients.as_deref())
            .bind(&events)
            .bind(action.enabled)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn delete_action(&self, id: ActionId) -> Result<bool> {
        let sql = "DELETE FROM actions WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn add_delivery(&self, delivery: &Delivery, keep: u32) -> Result<()> {
        let insert = concat!(
            "INSERT INTO action_deliveries (",
            delivery_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        // The deliveries beyond the newest `keep` of the action.
        let trim = "DELETE FROM action_deliveries WHERE action_id = $1 AND id NOT IN \
                    (SELECT id FROM action_deliveries WHERE action_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2)";
        let keep = i64::from(keep);
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            sqlx::query(insert)
                .bind(delivery.id.0)
                .bind(delivery.action_id.0)
                .bind(delivery.evaluation_id.map(|e| e.0))
                .bind(delivery.event.map(ActionEvent::as_str))
                .bind(&delivery.body)
                .bind(delivery.state.as_str())
                .bind(i64::from(delivery.attempts))
                .bind(delivery.status_code.map(i64::from))
                .bind(delivery.last_error.as_deref())
                .bind(delivery.next_attempt_at)
                .bind(delivery.created_at)
                .bind(delivery.updated_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(trim)
                .bind(delivery.action_id.0)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        }
        .await)
        .map_err(db_error)
    }

    async fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>> {
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM action_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             ORDER BY created_at, id LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, DeliveryRow>(sql)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(DeliveryRow::into_delivery).collect()
    }

    async fn update_delivery(&self, delivery: &Delivery) -> Result<()> {
        let sql = "UPDATE action_deliveries SET state = $2, attempts = $3, status_code = $4, last_error = $5, \
                   next_attempt_at = $6, updated_at = $7 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(delivery.id.0)
            .bind(delivery.state.as_str())
            .bind(i64::from(delivery.attempts))
            .bind(delivery.status_code.map(i64::from))
            .bind(delivery.last_error.as_deref())
            .bind(delivery.next_attempt_at)
            .bind(delivery.updated_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn deliveries_of(&self, action: ActionId, limit: u32) -> Result<Vec<Delivery>> {
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM action_deliveries WHERE action_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, DeliveryRow>(sql)
            .bind(action.0)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(DeliveryRow::into_delivery).collect()
    }
}
