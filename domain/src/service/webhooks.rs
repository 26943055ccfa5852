//! Forge webhooks: an organization's webhook secret, and pushes from Gitea, Forgejo, GitLab and GitHub that
//! queue evaluations of the organization's matching projects (see [`crate::forge`] for the formats).
//!
//! Answers of [`Gradient::receive_webhook`]:
//! * an unknown forge (`/hooks/{forge}/…` names none of the four): `NotFound` (404);
//! * an unknown organization, an organization without a webhook secret, a missing or wrong signature:
//!   `Unauthenticated` (401), the same answer for all of them, so a delivery learns nothing about which
//!   organizations exist (private ones included); nothing queued;
//! * a signed delivery that is not a push (pings included), a deleted branch or a tag: nothing queued;
//! * a signed push whose payload does not parse: `Invalid { code: "invalid_payload" }` (422);
//! * a signed push: one evaluation per active project whose repository is the pushed one and whose branch
//!   (or, without a branch, the repository's default branch when the payload names it) is the pushed one;
//! * a signed pull request event (GitHub's and Gitea's `pull_request`, GitLab's `Merge Request Hook`): opened,
//!   reopened or new commits: one evaluation of the pull request's commit (see [`forge::PullRequestEvent`]) per
//!   project [`pull_request_triggers`], superseding that pull request's running evaluation; closed or merged:
//!   the pull request's running evaluations are aborted; any other action (labels, edits, reviews): nothing.

use super::{Caller, Gradient, Result, ServiceError, refuse_managed};
use crate::forge::{self, Forge, HookHeaders};
use crate::model::{Evaluation, EvaluationTrigger, Org, Project, PullRequestSource};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use crate::{Name, ProjectId};
use rand::RngCore;

/// How many evaluations of a project the evaluation list answers at most.
pub const EVALUATION_LIST_LIMIT: u32 = 50;

/// Whether a push to `push` triggers `project`.
pub(super) fn push_triggers(project: &Project, push: &forge::Push) -> bool {
    if !project.active {
        return false;
    }
    if !push
        .repository_urls
        .iter()
        .any(|url| forge::same_repository(url, &project.repository))
    {
        return false;
    }
    match (&project.branch, &push.default_branch) {
        (Some(branch), _) => *branch == push.branch,
        (None, Some(default)) => *default == push.branch,
        (None, None) => true,
    }
}

/// Whether a pull request event is about `project`'s repository and the branch it evaluates: the pull request
/// asks to merge into the project's branch (or, without one, the repository's default branch when the payload
/// names it).
fn pull_request_targets(project: &Project, pr: &forge::PullRequestEvent) -> bool {
    pull_request_repository(project, pr)
        && match (&project.branch, &pr.default_branch) {
            (Some(branch), _) => *branch == pr.base_branch,
            (None, Some(default)) => *default == pr.base_branch,
            (None, None) => true,
        }
}

/// Whether the pull request is one of `project`'s repository.
fn pull_request_repository(project: &Project, pr: &forge::PullRequestEvent) -> bool {
    pr.repository_urls
        .iter()
        .any(|url| forge::same_repository(url, &project.repository))
}

/// Whether a pull request's new commit is evaluated for `project`: an active project with pull requests on
/// that the pull request targets, and for a fork's pull request only with `fork_pull_requests` (a fork's flake
/// runs its author's code on the organization's workers).
pub(super) fn pull_request_triggers(project: &Project, pr: &forge::PullRequestEvent) -> bool {
    project.active
        && project.pull_requests
        && (!pr.fork || project.fork_pull_requests)
        && pull_request_targets(project, pr)
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Generates a new webhook secret for the organization (32 random bytes, hex), replacing the previous
    /// one. The secret is stored sealed and answered only here. Requires `manage_integrations`.
    pub async fn create_webhook_secret(&self, caller: &Caller, org: &str) -> Result<(Org, String)> {
        let o = self.org_requiring(caller, org, Permission::ManageIntegrations).await?;
        let managed = self.storage.webhook_secret_managed(o.id).await?;
        refuse_managed(managed, format_args!("the webhook secret of organization '{}'", o.name))?;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = hex::encode(raw);
        self.storage
            .set_webhook_secret(o.id, &self.crypt.seal(secret.as_bytes()), self.clock.now())
            .await?;
        // That a new secret replaced the old one; never the secret.
        self.audit(
            caller,
            o.id,
            crate::model::AuditAction::WebhookSecretCreated,
            format!("organization '{}'", o.name),
            "new secret",
        )
        .await?;
        Ok((o, secret))
    }

    /// Handles a webhook delivery to `/hooks/{forge}/{org}` (see the module's documentation for the answers).
    /// Answers the evaluations queued.
    pub async fn receive_webhook(
        &self,
        forge: &str,
        org: &str,
        headers: &HookHeaders,
        body: &[u8],
    ) -> Result<Vec<Evaluation>> {
        let forge = Forge::parse(forge)
            .ok_or_else(|| ServiceError::NotFound(format!("no forge '{forge}' (gitea, forgejo, gitlab, github)")))?;
        let refused = || ServiceError::Unauthenticated("the webhook signature is missing or wrong".into());
        let name = Name::parse(org).map_err(|_| refused())?;
        let o = self.storage.org_by_name(&name).await?.ok_or_else(refused)?;
        let sealed = self.storage.webhook_secret(o.id).await?.ok_or_else(refused)?;
        let secret = self
            .crypt
            .open(&sealed)
            .map_err(|e| ServiceError::Internal(format!("opening the webhook secret of '{org}': {e}")))?;
        if !forge::verify_signature(forge, headers, &secret, body) {
            return Err(refused());
        }
        if forge::is_pull_request(forge, headers) {
            let Some(pr) = forge::parse_pull_request(forge, body)
                .map_err(|e| ServiceError::invalid("invalid_payload", e.to_string()))?
            else {
                return Ok(Vec::new());
            };
            let projects = self.storage.projects(o.id).await?;
            return self.handle_pull_request(projects, &pr).await;
        }
        if !forge::is_push(forge, headers) {
            return Ok(Vec::new());
        }
        let Some(push) =
            forge::parse_push(forge, body).map_err(|e| ServiceError::invalid("invalid_payload", e.to_string()))?
        else {
            return Ok(Vec::new());
        };
        let projects = self.storage.projects(o.id).await?;
        self.queue_push(projects, &push).await
    }

    /// Queues an evaluation of the pushed commit for each of `projects` the push triggers (see
    /// [`push_triggers`]); answers them.
    pub(super) async fn queue_push(&self, projects: Vec<Project>, push: &forge::Push) -> Result<Vec<Evaluation>> {
        // A branch no project could name (too long, control characters) queues nothing and says why.
        super::check_branch(&push.branch)?;
        let mut queued = Vec::new();
        for project in projects {
            if push_triggers(&project, push) {
                queued.push(
                    self.queue_evaluation_on(
                        project.org_id,
                        &project,
                        &push.commit,
                        Some(push.branch.clone()),
                        EvaluationTrigger::Webhook,
                    )
                    .await?,
                );
            }
        }
        Ok(queued)
    }

    /// Acts on a pull request event for `projects` (see the module's documentation); answers the evaluations
    /// queued (none for a closed pull request, whose running evaluations are aborted).
    pub(super) async fn handle_pull_request(
        &self,
        projects: Vec<Project>,
        pr: &forge::PullRequestEvent,
    ) -> Result<Vec<Evaluation>> {
        let mut queued = Vec::new();
        for project in projects {
            match pr.action {
                forge::PullRequestAction::Evaluate if pull_request_triggers(&project, pr) => {
                    let source = PullRequestSource {
                        number: pr.number,
                        fork: pr.fork,
                        head_repository: pr.head_repository.clone(),
                        head_branch: pr.head_branch.clone(),
                        head_commit: pr.head_commit.clone(),
                        fetch_ref: pr.fetch_ref.clone(),
                    };
                    queued.push(
                        self.queue_evaluation_of(
                            project.org_id,
                            &project,
                            &pr.commit,
                            Some(pr.head_branch.clone()),
                            EvaluationTrigger::Webhook,
                            Some(source),
                        )
                        .await?,
                    );
                }
                // Whatever the settings and its base branch are now: what runs of a closed pull request is
                // wasted work.
                forge::PullRequestAction::Close if pull_request_repository(&project, pr) => {
                    self.close_pull_request(&project, pr.number).await?;
                }
                _ => {}
            }
        }
        Ok(queued)
    }

    /// The project's newest evaluations (at most [`EVALUATION_LIST_LIMIT`]), for callers who may view the
    /// organization.
    pub async fn project_evaluations(&self, caller: &Caller, org: &str, project: &str) -> Result<Vec<Evaluation>> {
        let p: Project = self.project(caller, org, project).await?;
        let id: ProjectId = p.id;
        Ok(self.storage.evaluations(id, EVALUATION_LIST_LIMIT).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OrgId, UserId};

    fn project(repository: &str, branch: Option<&str>, active: bool) -> Project {
        Project {
            managed: false,
            id: ProjectId::new(),
            org_id: OrgId::new(),
            name: Name::parse("web").expect("name"),
            display_name: String::new(),
            description: String::new(),
            repository: repository.to_owned(),
            branch: branch.map(str::to_owned),
            wildcard: "packages.*.*".to_owned(),
            flake_input_overrides: Default::default(),
            keep_evaluations: None,
            poll_interval_secs: None,
            schedule: None,
            active,
            pull_requests: true,
            fork_pull_requests: false,
            created_by: UserId::new(),
            created_at: chrono::Utc::now(),
        }
    }

    fn push(default_branch: Option<&str>) -> forge::Push {
        forge::Push {
            commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            branch: "main".to_owned(),
            default_branch: default_branch.map(str::to_owned),
            repository_urls: vec![
                "https://git.example.com/acme/web".to_owned(),
                "git@git.example.com:acme/web.git".to_owned(),
            ],
        }
    }

    #[test]
    fn which_projects_a_push_triggers() {
        let repo = "https://git.example.com/acme/web.git";
        let cases = [
            (project(repo, Some("main"), true), push(None), true),
            (
                project("ssh://git@git.example.com/acme/web", None, true),
                push(None),
                true,
            ),
            (project(repo, None, true), push(Some("main")), true),
            (project(repo, None, true), push(Some("trunk")), false),
            (project(repo, Some("dev"), true), push(Some("main")), false),
            (project(repo, Some("main"), false), push(None), false),
            (
                project("https://git.example.com/acme/api.git", None, true),
                push(None),
                false,
            ),
        ];
        for (i, (p, push, triggers)) in cases.iter().enumerate() {
            assert_eq!(push_triggers(p, push), *triggers, "case {i}");
        }
    }
}
