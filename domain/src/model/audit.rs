use super::Timestamp;
use crate::{OrgId, UserId};

/// One line of an organization's audit log: who changed what in it, and when. Written by the use cases
/// right after the change; it never holds a secret (tokens, webhook secrets, keys): only names and what kind
/// of change it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Assigned by the storage when the entry is recorded, increasing; ignored on write. The log's cursor.
    pub seq: u64,
    pub org_id: OrgId,
    pub at: Timestamp,
    /// The user who acted; `None` for the declarative state.
    pub actor_id: Option<UserId>,
    /// The actor's username at that time (kept when the user is deleted), or `state`.
    pub actor: String,
    /// How the actor was authenticated.
    pub via: AuditVia,
    pub action: AuditAction,
    /// What the change was made to, e.g. `project 'web'` or `member 'alice'`.
    pub target: String,
    /// What changed, in a few words (e.g. `role Write → Admin`, `fields: public, description`); may be empty.
    pub detail: String,
}

/// How the actor of an audit entry was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditVia {
    Session,
    ApiKey,
    /// The server's declarative state document.
    State,
}

impl AuditVia {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::ApiKey => "api_key",
            Self::State => "state",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Session, Self::ApiKey, Self::State]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// What was done. The stable names (`as_str`) are what the API answers and the storage keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    OrgCreated,
    OrgUpdated,
    MemberSet,
    MemberRemoved,
    RoleCreated,
    RoleDeleted,
    ProjectCreated,
    ProjectUpdated,
    ProjectDeleted,
    CacheSubscribed,
    CacheUnsubscribed,
    PushCacheSet,
    PushCacheCleared,
    WorkerRegistered,
    WorkerDeleted,
    WebhookSecretCreated,
    SshKeyRotated,
    ForgeConnectionSet,
    GithubInstallationLinked,
    GithubInstallationUnlinked,
    ApiKeyCreated,
    ApiKeyDeleted,
    EvaluationAborted,
    EvaluationRestarted,
    StateApplied,
    ActionCreated,
    ActionUpdated,
    ActionDeleted,
}

impl AuditAction {
    pub const ALL: [Self; 28] = [
        Self::OrgCreated,
        Self::OrgUpdated,
        Self::MemberSet,
        Self::MemberRemoved,
        Self::RoleCreated,
        Self::RoleDeleted,
        Self::ProjectCreated,
        Self::ProjectUpdated,
        Self::ProjectDeleted,
        Self::CacheSubscribed,
        Self::CacheUnsubscribed,
        Self::PushCacheSet,
        Self::PushCacheCleared,
        Self::WorkerRegistered,
        Self::WorkerDeleted,
        Self::WebhookSecretCreated,
        Self::SshKeyRotated,
        Self::ForgeConnectionSet,
        Self::GithubInstallationLinked,
        Self::GithubInstallationUnlinked,
        Self::ApiKeyCreated,
        Self::ApiKeyDeleted,
        Self::EvaluationAborted,
        Self::EvaluationRestarted,
        Self::StateApplied,
        Self::ActionCreated,
        Self::ActionUpdated,
        Self::ActionDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrgCreated => "org.created",
            Self::OrgUpdated => "org.updated",
            Self::MemberSet => "member.set",
            Self::MemberRemoved => "member.removed",
            Self::RoleCreated => "role.created",
            Self::RoleDeleted => "role.deleted",
            Self::ProjectCreated => "project.created",
            Self::ProjectUpdated => "project.updated",
            Self::ProjectDeleted => "project.deleted",
            Self::CacheSubscribed => "cache.subscribed",
            Self::CacheUnsubscribed => "cache.unsubscribed",
            Self::PushCacheSet => "push_cache.set",
            Self::PushCacheCleared => "push_cache.cleared",
            Self::WorkerRegistered => "worker.registered",
            Self::WorkerDeleted => "worker.deleted",
            Self::WebhookSecretCreated => "webhook_secret.created",
            Self::SshKeyRotated => "ssh_key.rotated",
            Self::ForgeConnectionSet => "forge_connection.set",
            Self::GithubInstallationLinked => "github_installation.linked",
            Self::GithubInstallationUnlinked => "github_installation.unlinked",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyDeleted => "api_key.deleted",
            Self::EvaluationAborted => "evaluation.aborted",
            Self::EvaluationRestarted => "evaluation.restarted",
            Self::StateApplied => "state.applied",
            Self::ActionCreated => "action.created",
            Self::ActionUpdated => "action.updated",
            Self::ActionDeleted => "action.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_and_via_names_read_back() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
        }
        let names: std::collections::BTreeSet<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names.len(), AuditAction::ALL.len(), "every action has its own name");
        for v in [AuditVia::Session, AuditVia::ApiKey, AuditVia::State] {
            assert_eq!(AuditVia::parse(v.as_str()), Some(v));
        }
    }
}
