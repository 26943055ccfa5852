//! Commit statuses: an organization's forge connection, the status reports queued as its evaluations move
//! (pending when one starts, then success, failure or error, linking to the evaluation), and their delivery
//! through the forge port.
//!
//! A report goes through the instance's GitHub App when one is configured, the project's repository is on
//! a GitHub account that installed it ([`crate::github_app::repository_owner`]) and that installation is
//! linked to the project's organization (see [`super::github_app`]), with the installation's token; otherwise through the organization's forge connection; with neither, no report is queued.
//!
//! Reports go through an outbox: a status change only stores a report, and [`Gradient::deliver_due_statuses`]
//! sends the due ones. A forge that is down or refuses a report does not fail anything: the attempt is
//! recorded (visible on the evaluation) and retried with exponential backoff, from
//! [`FIRST_RETRY`] doubling up to [`LAST_RETRY`]. Reports are sent oldest first, so the forge sees every state
//! in order (pending, then the end); a report whose evaluation already has a newer one delivered is not sent any
//! more (it would overwrite the newer state on the forge).

use super::{Caller, Gradient, Result, ServiceError, refuse_managed};
use crate::EvaluationId;
use crate::StatusReportId;
use crate::forge::Forge;
use crate::model::{CommitState, Evaluation, ForgeConnection, StatusReport};
use crate::permissions::Permission;
use crate::ports::forge::{ForgeApi, ForgeTarget};
use crate::ports::{Clock, Storage};
use crate::status::EvaluationStatus;
use chrono::TimeDelta;

/// The delay before the first retry of a failed delivery.
pub const FIRST_RETRY: TimeDelta = TimeDelta::seconds(5);
/// The longest delay between two attempts.
pub const LAST_RETRY: TimeDelta = TimeDelta::minutes(10);

/// The delay after `attempts` failed attempts: 5 s, 10 s, 20 s, ... at most 10 min.
pub fn retry_delay(attempts: u32) -> TimeDelta {
    let factor = 1i64 << attempts.saturating_sub(1).min(16);
    (FIRST_RETRY * factor as i32).min(LAST_RETRY)
}

/// The commit state an evaluation's move from `from` to `to` reports, if any: pending when it leaves the
/// queue, then its end.
pub fn commit_state(from: EvaluationStatus, to: EvaluationStatus) -> Option<CommitState> {
    match to {
        EvaluationStatus::Completed => Some(CommitState::Success),
        EvaluationStatus::Failed => Some(CommitState::Failure),
        EvaluationStatus::Aborted => Some(CommitState::Error),
        EvaluationStatus::Queued => None,
        _ if from == EvaluationStatus::Queued || from.is_terminal() => Some(CommitState::Pending),
        _ => None,
    }
}

fn describe(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "The evaluation is running",
        CommitState::Success => "Every build succeeded",
        CommitState::Failure => "The evaluation or a build failed",
        CommitState::Error => "The evaluation was aborted",
    }
}

/// Checks a forge's API base URL (an http:// or https:// URL the network policy lets the server reach);
/// answers it without surrounding spaces and trailing slashes.
pub(crate) fn check_api_url(api_url: &str, policy: &crate::reach::NetworkPolicy) -> Result<String> {
    let api_url = api_url.trim().trim_end_matches('/');
    let plain = api_url.len() <= 2048 && !api_url.contains(|c: char| c.is_whitespace() || c.is_control());
    let Some(remote) = plain.then(|| crate::reach::parse_http_url(api_url)).flatten() else {
        return Err(ServiceError::invalid(
            "invalid_api_url",
            "the API URL is an http:// or https:// URL",
        ));
    };
    crate::reach::check_remote(&remote, policy).map_err(|why| ServiceError::invalid("api_url_not_allowed", why))?;
    Ok(api_url.to_owned())
}

/// Checks a forge access token; answers it without surrounding whitespace.
pub(crate) fn check_forge_token(token: &str) -> Result<&str> {
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(ServiceError::invalid("invalid_token", "give the forge's access token"));
    }
    Ok(token)
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Sets where the organization's commit statuses go (`manage_integrations`). The token is stored sealed
    /// and never answered.
    pub async fn set_forge_connection(
        &self,
        caller: &Caller,
        org: &str,
        forge: &str,
        api_url: &str,
        token: &str,
    ) -> Result<ForgeConnection> {
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        let managed = self.storage.forge_connection(o.id).await?.is_some_and(|c| c.managed);
        refuse_managed(
            managed,
            format_args!("the forge connection of organization '{}'", o.name),
        )?;
        let forge = Forge::parse(forge).ok_or_else(|| {
            ServiceError::invalid("invalid_forge", "the forge is one of gitea, forgejo, gitlab, github")
        })?;
        let api_url = check_api_url(api_url, &self.settings.network)?;
        let token = check_forge_token(token)?;
        let connection = ForgeConnection {
            managed: false,
            org_id: o.id,
            forge,
            api_url,
            token: self.crypt.seal(token.as_bytes()),
        };
        self.storage.set_forge_connection(&connection, self.clock.now()).await?;
        // The forge's kind only: neither the token nor the API URL (which could name a private host) is kept.
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::ForgeConnectionSet,
            format!("organization '{}'", o.name),
            format!("forge {}", forge.as_str()),
        )
        .await?;
        Ok(connection)
    }

    /// The organization's forge connection, if any (`manage_integrations`).
    pub async fn forge_connection_of(&self, caller: &Caller, org: &str) -> Result<Option<ForgeConnection>> {
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        Ok(self.storage.forge_connection(o.id).await?)
    }

    /// The commit statuses of an evaluation, oldest first, for callers who may view its organization.
    pub async fn evaluation_statuses(&self, caller: &Caller, id: EvaluationId) -> Result<Vec<StatusReport>> {
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        let e = self.storage.evaluation(id).await?.ok_or_else(missing)?;
        let p = self.storage.project_by_id(e.project_id).await?.ok_or_else(missing)?;
        self.require_view(caller, p.org_id, missing).await?;
        Ok(self.storage.statuses_of(id).await?)
    }

    /// Queues the commit status an evaluation's move from `from` reports, when the GitHub App covers its
    /// repository for its organization (linked) or its organization has a forge connection. Called wherever an evaluation's status changes.
    pub(super) async fn report_status_change(&self, from: EvaluationStatus, e: &Evaluation) -> Result<()> {
        if from == e.status {
            return Ok(());
        }
        let Some(state) = commit_state(from, e.status) else {
            return Ok(());
        };
        self.enqueue_commit_status(e, state).await
    }

    async fn enqueue_commit_status(&self, e: &Evaluation, state: CommitState) -> Result<()> {
        let Some(p) = self.storage.project_by_id(e.project_id).await? else {
            return Ok(());
        };
        if self.github_app_installation(p.org_id, &p.repository).await?.is_none()
            && self.storage.forge_connection(p.org_id).await?.is_none()
        {
            return Ok(());
        }
        let now = self.clock.now();
        let report = StatusReport {
            id: StatusReportId::new(),
            org_id: p.org_id,
            evaluation_id: e.id,
            repository: p.repository.clone(),
            // A pull request's status goes on its head, the commit the forge shows on it.
            commit: e.status_commit().to_owned(),
            state,
            target_url: format!(
                "{}/api/v1/evals/{}",
                self.settings.public_url.trim_end_matches('/'),
                e.id.0
            ),
            description: describe(state).to_owned(),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            delivered: false,
            created_at: now,
        };
        Ok(self.storage.enqueue_status(&report).await?)
    }

    /// Sends up to `limit` due status reports through `forge`. Each is marked delivered, or its failure is
    /// recorded and it is tried again later (see the module's documentation). Answers how many were sent.
    pub async fn deliver_due_statuses<F: ForgeApi>(&self, forge: &F, limit: u32) -> Result<usize> {
        let now = self.clock.now();
        let mut sent = 0;
        for report in self.storage.due_statuses(now, limit).await? {
            // Once a newer report of the evaluation reached the forge, this one would overwrite it.
            let newer_delivered = self
                .storage
                .statuses_of(report.evaluation_id)
                .await?
                .iter()
                .skip_while(|r| r.id != report.id)
                .skip(1)
                .any(|r| r.delivered);
            if newer_delivered {
                self.storage.status_delivered(report.id).await?;
                continue;
            }
            let result = match self.status_target(forge, &report).await? {
                Ok(target) => forge
                    .set_status(
                        &target,
                        &report.commit,
                        report.state,
                        &report.target_url,
                        &report.description,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                Err(problem) => Err(problem),
            };
            match result {
                Ok(()) => {
                    self.storage.status_delivered(report.id).await?;
                    sent += 1;
                }
                Err(error) => {
                    let next = now + retry_delay(report.attempts + 1);
                    self.storage.status_failed(report.id, &error, next).await?;
                }
            }
        }
        Ok(sent)
    }

    /// Where a report goes, or why it cannot go now: through the GitHub App when its repository is on an
    /// account with an installation linked to the report's organization, else through the organization's forge
    /// connection.
    async fn status_target<F: ForgeApi>(
        &self,
        forge: &F,
        report: &StatusReport,
    ) -> Result<std::result::Result<ForgeTarget, String>> {
        if let Some(installation) = self.github_app_installation(report.org_id, &report.repository).await?
            && let Some(app) = &self.settings.github_app
        {
            return Ok(match forge.installation_token(installation.id).await {
                Ok(token) => Ok(ForgeTarget {
                    forge: Forge::GitHub,
                    api_url: app.api_url.clone(),
                    token,
                    repository_url: report.repository.clone(),
                }),
                Err(e) => Err(format!(
                    "no token for the GitHub App's installation on '{}': {e}",
                    installation.account
                )),
            });
        }
        let Some(connection) = self.storage.forge_connection(report.org_id).await? else {
            return Ok(Err("the organization has no forge connection".into()));
        };
        let token = match self.crypt.open(&connection.token) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => return Ok(Err(format!("the forge token cannot be opened: {e}"))),
        };
        Ok(Ok(ForgeTarget {
            forge: connection.forge,
            api_url: connection.api_url,
            token,
            repository_url: report.repository.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_evaluation() {
        use EvaluationStatus::*;
        assert_eq!(commit_state(Queued, Fetching), Some(CommitState::Pending));
        assert_eq!(commit_state(Queued, Evaluating), Some(CommitState::Pending));
        assert_eq!(commit_state(Fetching, Evaluating), None);
        assert_eq!(commit_state(Evaluating, Building), None);
        assert_eq!(commit_state(Building, Completed), Some(CommitState::Success));
        assert_eq!(commit_state(Building, Failed), Some(CommitState::Failure));
        assert_eq!(commit_state(Queued, Aborted), Some(CommitState::Error));
    }

    #[test]
    fn retries_back_off_exponentially_up_to_ten_minutes() {
        assert_eq!(retry_delay(1), TimeDelta::seconds(5));
        assert_eq!(retry_delay(2), TimeDelta::seconds(10));
        assert_eq!(retry_delay(3), TimeDelta::seconds(20));
        assert_eq!(retry_delay(8), TimeDelta::seconds(600));
        assert_eq!(retry_delay(1000), TimeDelta::seconds(600));
    }
}
