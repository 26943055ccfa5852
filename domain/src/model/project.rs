use super::Timestamp;
use crate::{Name, OrgId, ProjectId, UserId};
use std::collections::BTreeMap;

/// A git repository holding a flake, evaluated and built on every push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub org_id: OrgId,
    pub name: Name,
    pub display_name: String,
    pub description: String,
    /// Clone URL (https, ssh or file).
    pub repository: String,
    /// Branch to evaluate; `None` means the remote's default branch.
    pub branch: Option<String>,
    /// Comma-separated attribute patterns selecting the entry points, `!` for exclusions
    /// (e.g. `packages.x86_64-linux.*, checks.*.*, !checks.*.slow`).
    pub wildcard: String,
    /// Flake input overrides applied when fetching, by input name.
    pub flake_input_overrides: BTreeMap<String, InputOverride>,
    /// How many evaluations to keep; `None` uses the server's `keepEvaluations`.
    pub keep_evaluations: Option<u32>,
    /// Seconds between polls of the branch head; `None` disables polling (webhooks only).
    pub poll_interval_secs: Option<u32>,
    /// A cron expression (UTC; see [`crate::schedule`]): the branch head is evaluated at these times, new commit
    /// or not. `None`: no schedule.
    pub schedule: Option<String>,
    /// Inactive projects are neither polled nor triggered by webhooks.
    pub active: bool,
    /// Pull requests (GitLab: merge requests) from the project's own repository are evaluated (default on).
    pub pull_requests: bool,
    /// Pull requests from forks are evaluated too (default off: a fork's flake would run anyone's code on the
    /// organization's workers). Only with `pull_requests`.
    pub fork_pull_requests: bool,
    pub created_by: UserId,
    pub created_at: Timestamp,
    /// Declared in the server's declarative state: the API cannot change or delete it.
    pub managed: bool,
}

/// One flake input override: exactly one of a replacement URL or "update, keeping the declared URL".
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputOverride {
    Url(String),
    KeepUrl,
}

impl InputOverride {
    /// Builds an override from its two optional fields; exactly one must be set.
    pub fn from_fields(url: Option<String>, keep_url: Option<bool>) -> Result<Self, &'static str> {
        match (url, keep_url.unwrap_or(false)) {
            (Some(url), false) if !url.trim().is_empty() => Ok(Self::Url(url)),
            (None, true) => Ok(Self::KeepUrl),
            (Some(_), true) => Err("set either url or keep_url, not both"),
            _ => Err("set url to a flake reference, or keep_url to true"),
        }
    }
}

/// The default attribute selection for a new project.
pub const DEFAULT_WILDCARD: &str = "packages.*.*, checks.*.*";
