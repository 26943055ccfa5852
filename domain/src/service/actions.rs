//! Projects' actions: outgoing webhooks and mail when evaluations fail, are fixed or complete (what fires and
//! what is sent is decided in [`crate::actions`]). Whoever may edit the project manages its actions; its
//! organization's members read them (never a webhook's secret, which is sealed at rest and shown once, when
//! created or replaced); anyone else gets the answer for a missing project.
//!
//! Webhook deliveries go through an outbox: an evaluation's end only stores a delivery, and
//! [`Gradient::deliver_due_webhooks`] sends the due ones through the [`WebhookSender`] port, retrying with
//! backoff up to [`MAX_ATTEMPTS`]. Mail is handed to the mail port at once (the server's mail queue retries an
//! unavailable mail server) and recorded as a delivery too.

use super::{Caller, Gradient, Result, ServiceError, check_text};
use crate::actions::{self, DELIVERY_LOG_KEEP, MAX_ACTIONS_PER_PROJECT, MAX_ATTEMPTS, MAX_RECIPIENTS, SECRET_LEN};
use crate::mail::HealthChange;
use crate::model::{Action, ActionEvent, ActionKind, AuditAction, Delivery, DeliveryState, Evaluation, Org, Project};
use crate::permissions::Permission;
use crate::ports::mail::Mail;
use crate::ports::webhook::{Outgoing, OutgoingError, WebhookSender};
use crate::ports::{Clock, Storage, StorageError};
use crate::{ActionId, DeliveryId, Email, Name};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

/// Deliveries answered per action at most (the log keeps [`DELIVERY_LOG_KEEP`]).
pub const DELIVERY_PAGE: u32 = DELIVERY_LOG_KEEP;

/// A new action as asked for: `kind` is `webhook` (with `url`, and `secret` or one is generated) or `mail`
/// (with `recipients`).
#[derive(Clone, Debug, Default)]
pub struct NewAction {
    pub name: String,
    pub kind: String,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub recipients: Option<Vec<String>>,
    /// Default: `failed` and `fixed`.
    pub events: Option<Vec<String>>,
    /// Default: true.
    pub enabled: Option<bool>,
}

/// A partial update; `None` leaves a field unchanged. `url` and `secret` are for webhooks, `recipients` for
/// mail. A `secret` replaces the webhook's (`regenerate_secret` makes a new one).
#[derive(Clone, Debug, Default)]
pub struct ActionChanges {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub regenerate_secret: bool,
    pub recipients: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// An action with, once, the secret it signs with (when it was just made or replaced).
#[derive(Clone, Debug)]
pub struct ActionWithSecret {
    pub action: Action,
    pub secret: Option<String>,
}

fn project_missing(org: &str, project: &str) -> ServiceError {
    ServiceError::NotFound(format!("project '{org}/{project}' not found"))
}

fn action_missing(id: ActionId) -> ServiceError {
    ServiceError::NotFound(format!("action {} not found", id.0))
}

fn generate_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ServiceError::invalid(
            "invalid_input",
            "an action's name has 1 to 64 characters",
        ));
    }
    check_text("name", name, 64)?;
    Ok(name.to_owned())
}

fn check_secret(secret: &str) -> Result<String> {
    if !SECRET_LEN.contains(&secret.len()) || secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ServiceError::invalid(
            "invalid_secret",
            format!(
                "a webhook secret has {} to {} characters, without spaces or control characters",
                SECRET_LEN.start(),
                SECRET_LEN.end()
            ),
        ));
    }
    Ok(secret.to_owned())
}

/// Checks a webhook's URL: an http:// or https:// URL the network policy lets the server reach (the same rule as
/// repositories: 422 `invalid_url` or `url_not_allowed`).
pub(crate) fn check_url(url: &str, policy: &crate::reach::NetworkPolicy) -> Result<String> {
    let url = url.trim();
    let plain = url.len() <= 2048 && !url.contains(|c: char| c.is_whitespace() || c.is_control());
    let Some(remote) = plain.then(|| crate::reach::parse_http_url(url)).flatten() else {
        return Err(ServiceError::invalid(
            "invalid_url",
            "a webhook's URL is an http:// or https:// URL",
        ));
    };
    crate::reach::check_remote(&remote, policy).map_err(|why| ServiceError::invalid("url_not_allowed", why))?;
    Ok(url.to_owned())
}

fn check_recipients(recipients: &[String]) -> Result<Vec<Email>> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(ServiceError::invalid(
            "invalid_recipients",
            format!("a mail action has 1 to {MAX_RECIPIENTS} addresses"),
        ));
    }
    let mut out = Vec::new();
    for r in recipients {
        let e = Email::parse(r.trim())?;
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

fn check_events(events: Option<&[String]>) -> Result<Vec<ActionEvent>> {
    actions::parse_events(events).map_err(|m| ServiceError::invalid("invalid_events", m))
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The organization and project, when the caller holds `perm` there; the missing-project answer otherwise.
    /// Reading (`ViewOrg`) also needs membership: an action's URL and addresses are not for a public
    /// organization's visitors.
    async fn project_for_actions(
        &self,
        caller: &Caller,
        org: &str,
        project: &str,
        perm: Permission,
    ) -> Result<(Org, Project)> {
        let missing = || project_missing(org, project);
        let o = match self.org_requiring(caller, org, perm).await {
            Ok(o) => o,
            // A caller who sees the organization but may not manage its actions learns only that.
            Err(ServiceError::Forbidden(m)) if perm != Permission::ViewOrg => {
                if self.may_read_actions(caller, org).await? {
                    return Err(ServiceError::Forbidden(m));
                }
                return Err(missing());
            }
            Err(ServiceError::Forbidden(_)) => return Err(missing()),
            Err(e) => return Err(e),
        };
        if perm == Permission::ViewOrg && !self.is_member(caller, &o).await? {
            return Err(missing());
        }
        let name = Name::parse(project).map_err(|_| missing())?;
        let p = self.storage.project(o.id, &name).await?.ok_or_else(missing)?;
        Ok((o, p))
    }

    async fn is_member(&self, caller: &Caller, o: &Org) -> Result<bool> {
        let Some(user) = caller.user_id() else {
            return Ok(false);
        };
        Ok(self.storage.membership(o.id, user).await?.is_some())
    }

    async fn may_read_actions(&self, caller: &Caller, org: &str) -> Result<bool> {
        match self.org_requiring(caller, org, Permission::ViewOrg).await {
            Ok(o) => self.is_member(caller, &o).await,
            Err(_) => Ok(false),
        }
    }

    async fn action_of(&self, project: &Project, id: ActionId) -> Result<Action> {
        match self.storage.action(id).await? {
            Some(a) if a.project_id == project.id => Ok(a),
            _ => Err(action_missing(id)),
        }
    }

    /// The project's actions (members of its organization).
    pub async fn actions(&self, caller: &Caller, org: &str, project: &str) -> Result<Vec<Action>> {
        let (_, p) = self
            .project_for_actions(caller, org, project, Permission::ViewOrg)
            .await?;
        Ok(self.storage.actions_of(p.id).await?)
    }

    /// One action of the project (members of its organization).
    pub async fn action(&self, caller: &Caller, org: &str, project: &str, id: ActionId) -> Result<Action> {
        let (_, p) = self
            .project_for_actions(caller, org, project, Permission::ViewOrg)
            .await?;
        self.action_of(&p, id).await
    }

    /// Adds an action to the project (`edit_project`). A webhook without a secret gets a generated one; the
    /// secret is answered this once.
    pub async fn create_action(
        &self,
        caller: &Caller,
        org: &str,
        project: &str,
        new: NewAction,
    ) -> Result<ActionWithSecret> {
        let (o, p) = self
            .project_for_actions(caller, org, project, Permission::EditProject)
            .await?;
        let name = check_name(&new.name)?;
        let events = check_events(new.events.as_deref())?;
        let (kind, secret) = match new.kind.trim() {
            "webhook" => {
                if new.recipients.is_some() {
                    return Err(ServiceError::invalid("invalid_input", "a webhook has no recipients"));
                }
                let url = check_url(
                    new.url
                        .as_deref()
                        .ok_or_else(|| ServiceError::invalid("invalid_url", "a webhook needs the URL it posts to"))?,
                    &self.settings.network,
                )?;
                let secret = match new.secret {
                    Some(s) => check_secret(&s)?,
                    None => generate_secret(),
                };
                let sealed = self.crypt.seal(secret.as_bytes());
                (ActionKind::Webhook { url, secret: sealed }, Some(secret))
            }
            "mail" => {
                self.require_mail()?;
                if new.url.is_some() || new.secret.is_some() {
                    return Err(ServiceError::invalid(
                        "invalid_input",
                        "a mail action has recipients, no URL or secret",
                    ));
                }
                let recipients = check_recipients(new.recipients.as_deref().unwrap_or_default())?;
                (ActionKind::Mail { recipients }, None)
            }
            _ => {
                return Err(ServiceError::invalid(
                    "invalid_kind",
                    "an action's kind is webhook or mail",
                ));
            }
        };
        if self.storage.actions_of(p.id).await?.len() >= MAX_ACTIONS_PER_PROJECT {
            return Err(ServiceError::invalid(
                "too_many_actions",
                format!("a project has at most {MAX_ACTIONS_PER_PROJECT} actions"),
            ));
        }
        let action = Action {
            id: ActionId::new(),
            org_id: o.id,
            project_id: p.id,
            name,
            kind,
            events,
            enabled: new.enabled.unwrap_or(true),
            created_at: self.clock.now(),
        };
        self.storage
            .create_action(&action)
            .await
            .map_err(|e| name_taken(e, &action.name))?;
        self.audit(
            caller,
            o.id,
            AuditAction::ActionCreated,
            format!("project '{}'", p.name),
            format!("{} action '{}'", action.kind.as_str(), action.name),
        )
        .await?;
        Ok(ActionWithSecret { action, secret })
    }

    /// Changes an action (`edit_project`); a new secret (given or regenerated) is answered this once.
    pub async fn update_action(
        &self,
        caller: &Caller,
        org: &str,
        project: &str,
        id: ActionId,
        c: ActionChanges,
    ) -> Result<ActionWithSecret> {
        let (o, p) = self
            .project_for_actions(caller, org, project, Permission::EditProject)
            .await?;
        let mut a = self.action_of(&p, id).await?;
        let mut shown = None;
        if let Some(name) = c.name {
            a.name = check_name(&name)?;
        }
        if let Some(events) = c.events {
            a.events = check_events(Some(&events))?;
        }
        if let Some(enabled) = c.enabled {
            a.enabled = enabled;
        }
        match &mut a.kind {
            ActionKind::Webhook { url, secret } => {
                if c.recipients.is_some() {
                    return Err(ServiceError::invalid("invalid_input", "a webhook has no recipients"));
                }
                if let Some(u) = c.url {
                    *url = check_url(&u, &self.settings.network)?;
                }
                let new_secret = match (c.secret, c.regenerate_secret) {
                    (Some(_), true) => {
                        return Err(ServiceError::invalid(
                            "invalid_input",
                            "give a secret or ask for a new one, not both",
                        ));
                    }
                    (Some(s), false) => Some(check_secret(&s)?),
                    (None, true) => Some(generate_secret()),
                    (None, false) => None,
                };
                if let Some(s) = new_secret {
                    *secret = self.crypt.seal(s.as_bytes());
                    shown = Some(s);
                }
            }
            ActionKind::Mail { recipients } => {
                if c.url.is_some() || c.secret.is_some() || c.regenerate_secret {
                    return Err(ServiceError::invalid(
                        "invalid_input",
                        "a mail action has recipients, no URL or secret",
                    ));
                }
                if let Some(r) = c.recipients {
                    *recipients = check_recipients(&r)?;
                }
            }
        }
        self.storage
            .update_action(&a)
            .await
            .map_err(|e| name_taken(e, &a.name))?;
        self.audit(
            caller,
            o.id,
            AuditAction::ActionUpdated,
            format!("project '{}'", p.name),
            format!("{} action '{}'", a.kind.as_str(), a.name),
        )
        .await?;
        Ok(ActionWithSecret {
            action: a,
            secret: shown,
        })
    }

    /// Deletes an action with its deliveries (`edit_project`).
    pub async fn delete_action(&self, caller: &Caller, org: &str, project: &str, id: ActionId) -> Result<()> {
        let (o, p) = self
            .project_for_actions(caller, org, project, Permission::EditProject)
            .await?;
        let a = self.action_of(&p, id).await?;
        self.storage.delete_action(a.id).await?;
        self.audit(
            caller,
            o.id,
            AuditAction::ActionDeleted,
            format!("project '{}'", p.name),
            format!("{} action '{}'", a.kind.as_str(), a.name),
        )
        .await?;
        Ok(())
    }

    /// The action's recent deliveries, newest first (members of its organization).
    pub async fn action_deliveries(
        &self,
        caller: &Caller,
        org: &str,
        project: &str,
        id: ActionId,
    ) -> Result<Vec<Delivery>> {
        let (_, p) = self
            .project_for_actions(caller, org, project, Permission::ViewOrg)
            .await?;
        let a = self.action_of(&p, id).await?;
        Ok(self.storage.deliveries_of(a.id, DELIVERY_PAGE).await?)
    }

    /// Sends a test delivery (`edit_project`): a webhook's is queued (event `test`) and goes out with the next
    /// deliveries; a mail action's test mail is handed over at once. Answers the delivery as recorded.
    pub async fn test_action(&self, caller: &Caller, org: &str, project: &str, id: ActionId) -> Result<Delivery> {
        let (o, p) = self
            .project_for_actions(caller, org, project, Permission::EditProject)
            .await?;
        let a = self.action_of(&p, id).await?;
        let now = self.clock.now();
        match &a.kind {
            ActionKind::Webhook { .. } => {
                let d = pending(a.id, None, None, actions::test_body(&o, &p, &a.name, now), now);
                self.storage.add_delivery(&d, DELIVERY_LOG_KEEP).await?;
                Ok(d)
            }
            ActionKind::Mail { recipients } => {
                self.require_mail()?;
                let subject = format!("{}/{}: a test of the action '{}'", o.name, p.name, a.name);
                let body = format!(
                    "Hello,\n\nthis is a test of the action '{}' of the project {}/{}: it mails this address when the \
                     project's evaluations {}.\n",
                    a.name,
                    o.name,
                    p.name,
                    a.events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
                );
                self.mail_all(&a, recipients, None, None, subject, body).await
            }
        }
    }

    /// After evaluation `e` ended with health change `change` (see [`crate::mail::health_change`]): each enabled
    /// action of its project that follows the event it is gets a delivery. Never fails the CI loop for a
    /// target: only storage errors are answered.
    pub(super) async fn fire_actions(&self, e: &Evaluation, change: Option<HealthChange>) -> Result<()> {
        let Some(project) = self.storage.project_by_id(e.project_id).await? else {
            return Ok(());
        };
        let actions = self.storage.actions_of(project.id).await?;
        if actions.is_empty() {
            return Ok(());
        }
        let Some(org) = self.storage.org(project.org_id).await? else {
            return Ok(());
        };
        let now = self.clock.now();
        for a in actions.iter().filter(|a| a.enabled) {
            let Some(event) = actions::fired(&a.events, e.status, change) else {
                continue;
            };
            match &a.kind {
                ActionKind::Webhook { .. } => {
                    let body = actions::webhook_body(&self.settings.public_url, &org, &project, e, event, now);
                    let d = pending(a.id, Some(e.id), Some(event), body, now);
                    self.storage.add_delivery(&d, DELIVERY_LOG_KEEP).await?;
                }
                ActionKind::Mail { recipients } => {
                    if !self.settings.email.enabled {
                        continue;
                    }
                    let (subject, body) = actions::mail_text(&self.settings.public_url, &org, &project, e, event);
                    self.mail_all(a, recipients, Some(e.id), Some(event), subject, body)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Hands one mail per recipient to the mailer and records the delivery.
    async fn mail_all(
        &self,
        a: &Action,
        recipients: &[Email],
        evaluation: Option<crate::EvaluationId>,
        event: Option<ActionEvent>,
        subject: String,
        body: String,
    ) -> Result<Delivery> {
        let now = self.clock.now();
        let mut errors = Vec::new();
        for to in recipients {
            let mail = Mail {
                to: to.clone(),
                to_name: String::new(),
                subject: subject.clone(),
                body: body.clone(),
            };
            if let Err(e) = self.mailer.send(mail).await {
                errors.push(format!("{to}: {e}"));
            }
        }
        let mut d = pending(a.id, evaluation, event, subject, now);
        d.attempts = 1;
        if errors.is_empty() {
            d.state = DeliveryState::Delivered;
        } else {
            d.state = DeliveryState::Failed;
            d.last_error = Some(errors.join("; "));
        }
        self.storage.add_delivery(&d, DELIVERY_LOG_KEEP).await?;
        Ok(d)
    }

    /// Sends up to `limit` due webhook deliveries through `sender`: a 2xx answer delivers one; another answer or
    /// an unreachable target is tried again after [`actions::retry_delay`], up to [`MAX_ATTEMPTS`] attempts; a
    /// target the network policy forbids is not tried again. Answers how many were delivered.
    pub async fn deliver_due_webhooks<W: WebhookSender>(&self, sender: &W, limit: u32) -> Result<usize> {
        let mut delivered = 0;
        for mut d in self.storage.due_deliveries(self.clock.now(), limit).await? {
            let Some(a) = self.storage.action(d.action_id).await? else {
                continue;
            };
            let outcome = match &a.kind {
                ActionKind::Webhook { url, secret } => match self.crypt.open(secret) {
                    Ok(secret) => {
                        let event = d.event.map_or("test", ActionEvent::as_str);
                        let request = Outgoing {
                            url: url.clone(),
                            headers: actions::webhook_headers(&secret, d.body.as_bytes(), event, d.id),
                            body: d.body.clone().into_bytes(),
                        };
                        sender.post(&request).await
                    }
                    Err(e) => Err(OutgoingError::Refused(format!("the secret cannot be opened: {e}"))),
                },
                ActionKind::Mail { .. } => Err(OutgoingError::Refused("a mail action has no webhook".into())),
            };
            let now = self.clock.now();
            d.attempts += 1;
            d.updated_at = now;
            match outcome {
                Ok(code) => {
                    d.status_code = Some(code);
                    if (200..300).contains(&code) {
                        d.state = DeliveryState::Delivered;
                        d.last_error = None;
                        delivered += 1;
                    } else {
                        d.last_error = Some(format!("the target answered HTTP {code}"));
                        retry_or_give_up(&mut d, now);
                    }
                }
                Err(OutgoingError::Unavailable(why)) => {
                    d.status_code = None;
                    d.last_error = Some(why);
                    retry_or_give_up(&mut d, now);
                }
                Err(OutgoingError::Refused(why)) => {
                    d.status_code = None;
                    d.last_error = Some(why);
                    d.state = DeliveryState::Failed;
                }
            }
            match self.storage.update_delivery(&d).await {
                // Deleted with its action meanwhile.
                Err(StorageError::NotFound) => {}
                other => other?,
            }
        }
        Ok(delivered)
    }
}

fn retry_or_give_up(d: &mut Delivery, now: crate::model::Timestamp) {
    if d.attempts >= MAX_ATTEMPTS {
        d.state = DeliveryState::Failed;
    } else {
        d.state = DeliveryState::Pending;
        d.next_attempt_at = now + actions::retry_delay(d.attempts);
    }
}

fn pending(
    action: ActionId,
    evaluation: Option<crate::EvaluationId>,
    event: Option<ActionEvent>,
    body: String,
    now: crate::model::Timestamp,
) -> Delivery {
    Delivery {
        id: DeliveryId::new(),
        action_id: action,
        evaluation_id: evaluation,
        event,
        body,
        state: DeliveryState::Pending,
        attempts: 0,
        status_code: None,
        last_error: None,
        next_attempt_at: now,
        created_at: now,
        updated_at: now,
    }
}

fn name_taken(e: StorageError, name: &str) -> ServiceError {
    match e {
        StorageError::Conflict(_) => ServiceError::conflict(
            "name_taken",
            format!("the project already has an action named '{name}'"),
        ),
        other => other.into(),
    }
}
