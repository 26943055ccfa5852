use super::Timestamp;
use crate::OrgId;

/// Where an organization's commit statuses go: the forge's kind, its API base URL (e.g.
/// `https://api.github.com`, `https://gitea.example.com`) and an access token (sealed with the crypt secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeConnection {
    pub org_id: OrgId,
    pub forge: crate::forge::Forge,
    pub api_url: String,
    pub token: crate::crypt::Sealed,
    /// Declared in the server's declarative state (an `outbound` integration): the API cannot replace it.
    pub managed: bool,
}

/// The state a commit status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

impl CommitState {
    pub const ALL: [CommitState; 4] = [Self::Pending, Self::Success, Self::Failure, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A commit status waiting to be (or already) delivered to the organization's forge: an outbox row, so a
/// forge that is down loses nothing and blocks no build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    pub id: crate::StatusReportId,
    pub org_id: OrgId,
    pub evaluation_id: crate::EvaluationId,
    /// The project's repository URL (owner and name are taken from it when delivering).
    pub repository: String,
    pub commit: String,
    pub state: CommitState,
    pub target_url: String,
    pub description: String,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub delivered: bool,
    pub created_at: Timestamp,
}

/// An installation of the instance's GitHub App on a GitHub account (organization or user): commit statuses
/// of that account's repositories are reported with the installation's token. Belongs to no organization of
/// Gradient's: one App covers them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GithubInstallation {
    /// GitHub's id of the installation (positive, at most `i64::MAX`).
    pub id: u64,
    /// The account's login, lowercase.
    pub account: String,
    pub updated_at: Timestamp,
}

/// A link from an installation of the GitHub App to one of Gradient's organizations, made by a member of that
/// organization who proved to GitHub that they administer the installation's account. Only linked
/// organizations' projects get evaluations from the App's pushes and statuses through the App.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GithubInstallationLink {
    pub org_id: crate::OrgId,
    /// GitHub's id of the installation (positive, at most `i64::MAX`).
    pub installation_id: u64,
    /// The installation's account's login, lowercase, as GitHub named it when the link was made.
    pub account: String,
    /// The GitHub login (lowercase) of whoever proved control of the installation.
    pub linked_by: String,
    pub created_at: Timestamp,
}
