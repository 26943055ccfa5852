use super::Timestamp;
use crate::crypt::Sealed;
use crate::{ActionId, DeliveryId, Email, EvaluationId, OrgId, ProjectId};

/// An evaluation event an action can follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionEvent {
    /// The project's evaluations started failing (a first failure, or a failure after a success).
    Failed,
    /// The project's evaluations pass again after failing.
    Fixed,
    /// Any evaluation that completed (every build succeeded), changed or not.
    Completed,
}

impl ActionEvent {
    pub const ALL: [Self; 3] = [Self::Failed, Self::Fixed, Self::Completed];
    /// What an action follows when it does not say: changes of health only.
    pub const DEFAULT: [Self; 2] = [Self::Failed, Self::Fixed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Fixed => "fixed",
            Self::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// What an action does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// POSTs a JSON body to `url`, signed with HMAC-SHA256 under `secret` (sealed with the crypt secret).
    Webhook { url: String, secret: Sealed },
    /// Mails each address (one message each, through the mail port).
    Mail { recipients: Vec<Email> },
}

impl ActionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Mail { .. } => "mail",
        }
    }
}

/// A project's action: what to do when its evaluations meet one of `events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub id: ActionId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    /// A short label, unique in the project.
    pub name: String,
    pub kind: ActionKind,
    /// Sorted, without duplicates, never empty.
    pub events: Vec<ActionEvent>,
    pub enabled: bool,
    pub created_at: Timestamp,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its (next) attempt.
    Pending,
    /// Accepted (a 2xx answer, or mail handed over).
    Delivered,
    /// Given up after the last attempt, or refused for good.
    Failed,
}

impl DeliveryState {
    pub const ALL: [Self; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// One delivery of an action for one event (or a test delivery): its body as sent, and how its attempts went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub action_id: ActionId,
    /// `None` for a test delivery.
    pub evaluation_id: Option<EvaluationId>,
    /// `None` for a test delivery.
    pub event: Option<ActionEvent>,
    /// The JSON body (a webhook's) or the mail's subject.
    pub body: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The HTTP status of the last answer, if one came.
    pub status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub next_attempt_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}
