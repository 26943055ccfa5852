//! Queueing evaluations: by hand, by a push (webhook), by polling; a push supersedes the running
//! evaluations of its branch, and old finished evaluations are pruned.

use super::super::Caller;
use super::{Gradient, Result, ServiceError};
use crate::model::{Build, Evaluation, EvaluationTrigger, JobId, JobKind, JobRecord, JobState};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use crate::status::EvaluationStatus;
use crate::{EvaluationId, Name, OrgId};

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Queues an evaluation of the project (`trigger_evaluation`): at `commit` when given (on the project's
    /// branch, if it has one), otherwise at the head of the project's branch, or of the repository's default
    /// branch when the project has none, asked of the repository through `git`. The evaluation names the
    /// commit and the branch it was found on, so the worker fetches that branch.
    pub async fn trigger_evaluation<G: crate::ports::git::Git>(
        &self,
        git: &G,
        caller: &Caller,
        org: &str,
        project: &str,
        commit: Option<&str>,
    ) -> Result<Evaluation> {
        let o = self.org_requiring(caller, org, Permission::TriggerEvaluation).await?;
        let name =
            Name::parse(project).map_err(|_| ServiceError::NotFound(format!("project '{org}/{project}' not found")))?;
        let p = self
            .storage
            .project(o.id, &name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("project '{org}/{project}' not found")))?;
        let (commit, branch) = match commit {
            Some(commit) => {
                let commit = commit.trim().to_lowercase();
                if !crate::forge::is_commit(&commit) {
                    return Err(ServiceError::invalid(
                        "invalid_commit",
                        "give the full commit hash (40 hexadecimal characters, or 64 in a SHA-256 repository)",
                    ));
                }
                (commit, p.branch.clone())
            }
            None => match branch_head(
                git,
                &p,
                self.repository_credential(p.org_id, &p.repository).await?.as_ref(),
            )
            .await
            {
                Ok(Some(head)) => head,
                Ok(None) => {
                    return Err(ServiceError::invalid(
                        "branch_not_found",
                        match &p.branch {
                            Some(b) => format!("the repository has no branch '{b}'"),
                            None => "the repository has no commit on its default branch".to_owned(),
                        },
                    ));
                }
                // git's own words stay out of the answer: they would tell the caller more about the server's
                // network and credentials than whether the repository answered.
                Err(_) => {
                    return Err(ServiceError::invalid(
                        "repository_unreachable",
                        "the server cannot read the repository's branch head: check its URL and that the server may \
                         reach it, or give a commit to evaluate",
                    ));
                }
            },
        };
        self.queue_evaluation_on(o.id, &p, &commit, branch, EvaluationTrigger::Manual)
            .await
    }

    /// Queues an evaluation of the project's branch at `commit`.
    pub async fn queue_evaluation(
        &self,
        org: OrgId,
        project: &crate::model::Project,
        commit: &str,
        trigger: EvaluationTrigger,
    ) -> Result<Evaluation> {
        self.queue_evaluation_on(org, project, commit, project.branch.clone(), trigger)
            .await
    }

    /// Queues an evaluation of `commit`, found on `branch` when known (a push names it): the worker fetches
    /// that branch, as a remote may not serve a commit by hash alone.
    pub async fn queue_evaluation_on(
        &self,
        org: OrgId,
        project: &crate::model::Project,
        commit: &str,
        branch: Option<String>,
        trigger: EvaluationTrigger,
    ) -> Result<Evaluation> {
        let now = self.clock.now();
        let evaluation = Evaluation {
            id: EvaluationId::new(),
            project_id: project.id,
            commit: commit.to_owned(),
            branch,
            trigger,
            status: EvaluationStatus::Queued,
            errors: Vec::new(),
            transitions: vec![crate::model::Transition {
                status: EvaluationStatus::Queued,
                at: now,
            }],
            created_at: now,
            updated_at: now,
        };
        self.storage.create_evaluation(&evaluation).await?;
        let job = JobRecord {
            id: JobId::new(),
            org_id: org,
            kind: JobKind::Evaluate {
                evaluation_id: evaluation.id,
            },
            state: JobState::Queued,
            created_at: now,
            attempts: 0,
        };
        self.storage.enqueue_job(&job).await?;
        self.fleet.wake();
        if self.settings.supersede_evaluations && trigger != EvaluationTrigger::Manual {
            self.supersede(project, &evaluation).await?;
        }
        self.prune_evaluations(project).await?;
        Ok(evaluation)
    }

    /// A push supersedes the evaluations of the same branch still running: they end Aborted (their queued
    /// builds that nothing else needs are dropped; builds already running finish, their outputs still useful).
    async fn supersede(&self, project: &crate::model::Project, newer: &Evaluation) -> Result<()> {
        for e in self.storage.evaluations(project.id, super::SUPERSEDE_WINDOW).await? {
            if e.id != newer.id && !e.status.is_terminal() && e.branch == newer.branch {
                let mut e = e;
                e.errors.push(crate::model::AttributeError {
                    attribute: String::new(),
                    message: format!("superseded by evaluation {} of commit {}", newer.id.0, newer.commit),
                });
                self.stop_evaluation(e, project.org_id, &[]).await?;
            }
        }
        Ok(())
    }

    /// Deletes the project's oldest finished evaluations beyond its `keep_evaluations` (or the server's).
    /// Evaluations still running are never deleted; their builds and derivations stay for other evaluations.
    async fn prune_evaluations(&self, project: &crate::model::Project) -> Result<()> {
        let keep = project
            .keep_evaluations
            .unwrap_or(self.settings.keep_evaluations)
            .max(1) as usize;
        let all = self.storage.evaluations(project.id, super::PRUNE_WINDOW).await?;
        for e in all.iter().skip(keep).filter(|e| e.status.is_terminal()) {
            self.storage.delete_evaluation(e.id).await?;
        }
        Ok(())
    }

    pub async fn evaluation_for(&self, caller: &Caller, id: EvaluationId) -> Result<(Evaluation, Vec<Build>)> {
        let missing = || ServiceError::NotFound(format!("evaluation {} not found", id.0));
        let e = self.storage.evaluation(id).await?.ok_or_else(missing)?;
        let p = self.storage.project_by_id(e.project_id).await?.ok_or_else(missing)?;
        self.require_view(caller, p.org_id, missing).await?;
        let builds = self.storage.builds_of_evaluation(e.id).await?;
        Ok((e, builds))
    }

    /// Polls one project: when its branch points at a commit its newest evaluation did not evaluate, that
    /// commit is queued (trigger Poll). Answers the evaluation queued, if any.
    pub async fn poll_project<G: crate::ports::git::Git>(
        &self,
        git: &G,
        project: &crate::model::Project,
    ) -> Result<Option<Evaluation>> {
        let credential = self.repository_credential(project.org_id, &project.repository).await?;
        let head = branch_head(git, project, credential.as_ref())
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let Some((head, branch)) = head else { return Ok(None) };
        let newest = self.storage.evaluations(project.id, 1).await?;
        if newest.first().is_some_and(|e| e.commit == head) {
            return Ok(None);
        }
        Ok(Some(
            self.queue_evaluation_on(project.org_id, project, &head, branch, EvaluationTrigger::Poll)
                .await?,
        ))
    }
}

/// The head of the project's branch, or of the repository's default branch when the project has none, with
/// the branch it is on (`None` only when the server does not name its default branch); `Ok(None)` when that
/// branch does not exist or has no commit.
async fn branch_head<G: crate::ports::git::Git>(
    git: &G,
    project: &crate::model::Project,
    credential: Option<&crate::deploy_key::RepositoryCredential>,
) -> std::result::Result<Option<(String, Option<String>)>, crate::ports::git::GitError> {
    match &project.branch {
        Some(b) => Ok(git
            .head(&project.repository, Some(b), credential)
            .await?
            .map(|commit| (commit, Some(b.clone())))),
        None => Ok(git
            .remote_head(&project.repository, credential)
            .await?
            .map(|h| (h.commit, h.branch))),
    }
}
