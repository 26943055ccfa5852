use super::dto::{Clearable, InputOverrideView, ProjectView, Reply, ok, overrides_from_view};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use gradient_domain::service::{NewProject, ProjectChanges};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use std::collections::BTreeMap;

pub struct ProjectsApi(pub AppState);

#[derive(Object)]
pub struct NewProjectRequest {
    /// Lowercase letters, digits, `-` and `_`; 1 to 64 characters.
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// Clone URL: https://, ssh://, git://, file:// or user@host:path.
    pub repository: String,
    /// Branch to evaluate; default: the repository's default branch.
    pub branch: Option<String>,
    /// Comma-separated attribute patterns, `*` for any one attribute, `!` to exclude.
    /// Default: `packages.*.*, checks.*.*`.
    pub wildcard: Option<String>,
    /// Flake input overrides by input name.
    pub flake_input_overrides: Option<BTreeMap<String, InputOverrideView>>,
    /// Evaluations to keep; default: the server's `keepEvaluations`.
    pub keep_evaluations: Option<u32>,
    /// Seconds between polls of the branch head; default: no polling.
    pub poll_interval_secs: Option<u32>,
    /// A cron expression in UTC (`0 3 * * *`; six fields with leading seconds; `@daily`): the branch head is
    /// evaluated at those times, new commit or not. Runs at least 10 s apart (422 `invalid_schedule`).
    pub schedule: Option<String>,
    /// Default: true.
    pub active: Option<bool>,
    /// Evaluate pull requests (GitLab: merge requests) from the project's own repository. Default: true.
    pub pull_requests: Option<bool>,
    /// Evaluate pull requests from forks too: their flakes run their authors' code on the organization's
    /// workers. Default: false.
    pub fork_pull_requests: Option<bool>,
}

/// Fields left out stay as they are; `null` clears `branch`, `keep_evaluations`, `poll_interval_secs` and
/// `schedule`.
#[derive(Object)]
pub struct ProjectPatch {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub repository: Option<String>,
    pub branch: Clearable<String>,
    pub wildcard: Option<String>,
    /// Replaces all overrides; `{}` removes them.
    pub flake_input_overrides: Option<BTreeMap<String, InputOverrideView>>,
    pub keep_evaluations: Clearable<u32>,
    pub poll_interval_secs: Clearable<u32>,
    /// `null` removes the schedule.
    pub schedule: Clearable<String>,
    pub active: Option<bool>,
    pub pull_requests: Option<bool>,
    pub fork_pull_requests: Option<bool>,
}

#[OpenApi(tag = "Tag::Projects")]
impl ProjectsApi {
    /// The organization's projects.
    #[oai(path = "/projects/:org", method = "get", operation_id = "list_projects")]
    async fn list(&self, auth: MaybeToken, org: Path<String>) -> Reply<Vec<ProjectView>> {
        let caller = self.0.caller(auth.bearer()).await?;
        let projects = self.0.app.projects(&caller, &org).await?;
        ok(projects.iter().map(|p| ProjectView::new(&org, p)).collect())
    }

    /// Creates a project (`create_project`).
    #[oai(path = "/projects/:org", method = "post", operation_id = "create_project")]
    async fn create(&self, auth: Token, org: Path<String>, body: Json<NewProjectRequest>) -> Reply<ProjectView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let new = NewProject {
            name: b.name,
            display_name: b.display_name,
            description: b.description,
            repository: b.repository,
            branch: b.branch,
            wildcard: b.wildcard,
            flake_input_overrides: overrides_from_view(b.flake_input_overrides.unwrap_or_default())?,
            keep_evaluations: b.keep_evaluations,
            poll_interval_secs: b.poll_interval_secs,
            schedule: b.schedule,
            active: b.active,
            pull_requests: b.pull_requests,
            fork_pull_requests: b.fork_pull_requests,
        };
        let p = self.0.app.create_project(&caller, &org, new).await?;
        ok(ProjectView::new(&org, &p))
    }

    #[oai(path = "/projects/:org/:project", method = "get", operation_id = "get_project")]
    async fn get(&self, auth: MaybeToken, org: Path<String>, project: Path<String>) -> Reply<ProjectView> {
        let caller = self.0.caller(auth.bearer()).await?;
        ok(ProjectView::new(
            &org,
            &self.0.app.project(&caller, &org, &project).await?,
        ))
    }

    /// Changes a project (`edit_project`).
    #[oai(path = "/projects/:org/:project", method = "patch", operation_id = "edit_project")]
    async fn patch(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        body: Json<ProjectPatch>,
    ) -> Reply<ProjectView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let b = body.0;
        let changes = ProjectChanges {
            display_name: b.display_name,
            description: b.description,
            repository: b.repository,
            branch: b.branch.change(),
            wildcard: b.wildcard,
            flake_input_overrides: b.flake_input_overrides.map(overrides_from_view).transpose()?,
            keep_evaluations: b.keep_evaluations.change(),
            poll_interval_secs: b.poll_interval_secs.change(),
            schedule: b.schedule.change(),
            active: b.active,
            pull_requests: b.pull_requests,
            fork_pull_requests: b.fork_pull_requests,
        };
        let p = self.0.app.update_project(&caller, &org, &project, changes).await?;
        ok(ProjectView::new(&org, &p))
    }

    /// Deletes a project (`delete_project`).
    #[oai(path = "/projects/:org/:project", method = "delete", operation_id = "delete_project")]
    async fn delete(&self, auth: Token, org: Path<String>, project: Path<String>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_project(&caller, &org, &project).await?;
        ok("deleted".to_owned())
    }
}
