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
        self.queue_evaluation_of(org, project, commit, branch, trigger, None)
            .await
    }

    /// Queues an evaluation of `commit`, of the pull request `pull_request` when given (fetched by its ref,
    /// superseding that pull request's running evaluations rather than the branch's).
    pub(crate) async fn queue_evaluation_of(
        &self,
        org: OrgId,
        project: &crate::model::Project,
        commit: &str,
        branch: Option<String>,
        trigger: EvaluationTrigger,
        pull_request: Option<crate::model::PullRequestSource>,
    ) -> Result<Evaluation> {
        let now = self.clock.now();
        let evaluation = Evaluation {
            id: EvaluationId::new(),
            project_id: project.id,
            commit: commit.to_owned(),
            branch,
            trigger,
            pull_request,
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
        // A manual or scheduled evaluation is asked for as such: it supersedes nothing (a schedule re-evaluating a
        // branch must not abort the evaluation of a push that is running).
        if self.settings.supersede_evaluations
            && !matches!(trigger, EvaluationTrigger::Manual | EvaluationTrigger::Schedule)
        {
            self.supersede(project, &evaluation).await?;
        }
        self.prune_evaluations(project).await?;
        Ok(evaluation)
    }

    /// A push supersedes the evaluations of the same branch still running (a pull request's new commits, those
    /// of the same pull request): they end Aborted (their queued builds that nothing else needs are dropped;
    /// builds already running finish, their outputs still useful).
    async fn supersede(&self, project: &crate::model::Project, newer: &Evaluation) -> Result<()> {
        let number = |e: &Evaluation| e.pull_request.as_ref().map(|pr| pr.number);
        for e in self.storage.evaluations(project.id, super::SUPERSEDE_WINDOW).await? {
            let same = match number(newer) {
                Some(n) => number(&e) == Some(n),
                None => number(&e).is_none() && e.branch == newer.branch,
            };
            if e.id != newer.id && !e.status.is_terminal() && same {
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
        // The newest evaluation of a branch: pull requests' evaluations are of other commits.
        let newest = self.storage.evaluations(project.id, super::SUPERSEDE_WINDOW).await?;
        if newest
            .iter()
            .find(|e| e.pull_request.is_none())
            .is_some_and(|e| e.commit == head)
        {
            return Ok(None);
        }
        Ok(Some(
            self.queue_evaluation_on(project.org_id, project, &head, branch, EvaluationTrigger::Poll)
                .await?,
        ))
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Runs the schedules that are due (see [`crate::schedule`]): for each active project with a schedule whose
    /// time came since its anchor, its branch head is queued (trigger Schedule), whether or not it was evaluated
    /// before; the anchor moves to now (so the times missed while the server was down make one run). A project
    /// seen for the first time only gets its anchor. A branch head that cannot be read is logged by the caller
    /// and that run is skipped (the anchor moves all the same: the next run is at the next time). Answers the
    /// evaluations queued, and the projects whose head could not be read with why.
    pub async fn run_schedules<G: crate::ports::git::Git>(
        &self,
        git: &G,
    ) -> Result<(Vec<Evaluation>, Vec<(crate::model::Project, String)>)> {
        use crate::schedule::{self, Decision, Schedule};
        let now = self.clock.now();
        let mut queued = Vec::new();
        let mut failed = Vec::new();
        for (project, anchor) in self.storage.scheduled_projects().await? {
            let Some(expression) = &project.schedule else { continue };
            let Ok(parsed) = Schedule::parse(expression) else {
                continue;
            };
            match schedule::due(&parsed, anchor, now) {
                Decision::Wait => continue,
                Decision::Start => {
                    self.storage.set_schedule_anchor(project.id, Some(now)).await?;
                }
                Decision::Run => {
                    self.storage.set_schedule_anchor(project.id, Some(now)).await?;
                    let credential = self.repository_credential(project.org_id, &project.repository).await?;
                    match branch_head(git, &project, credential.as_ref()).await {
                        Ok(Some((head, branch))) => queued.push(
                            self.queue_evaluation_on(
                                project.org_id,
                                &project,
                                &head,
                                branch,
                                EvaluationTrigger::Schedule,
                            )
                            .await?,
                        ),
                        Ok(None) => failed.push((project, "the branch has no commit".to_owned())),
                        Err(e) => failed.push((project, e.to_string())),
                    }
                }
            }
        }
        Ok((queued, failed))
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
