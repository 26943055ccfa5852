use super::Timestamp;
use crate::status::EvaluationStatus;
use crate::{EvaluationId, ProjectId};

/// One evaluation of a project's flake at one commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub id: EvaluationId,
    pub project_id: ProjectId,
    /// Full commit hash.
    pub commit: String,
    pub branch: Option<String>,
    pub trigger: EvaluationTrigger,
    pub status: EvaluationStatus,
    /// Attribute-level errors (the attribute's path and Nix's message); others still build.
    pub errors: Vec<AttributeError>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What started an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvaluationTrigger {
    Manual,
    Poll,
    Webhook,
}

impl EvaluationTrigger {
    pub const ALL: [Self; 3] = [Self::Manual, Self::Poll, Self::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "Manual",
            Self::Poll => "Poll",
            Self::Webhook => "Webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An attribute that failed to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeError {
    pub attribute: String,
    pub message: String,
}
