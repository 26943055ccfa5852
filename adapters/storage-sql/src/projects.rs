//! Projects.

use crate::{SqlStorage, db_error, from_json, stored_name, stored_u32, to_json, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::model::{InputOverride, Project};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Projects, Result, ScheduledProject};
use gradient_domain::{Name, OrgId, ProjectId, UserId};
use std::collections::BTreeMap;
use uuid::Uuid;

macro_rules! project_columns {
    () => {
        "id, org_id, name, display_name, description, repository, branch, wildcard, flake_input_overrides, \
         keep_evaluations, poll_interval_secs, active, created_by, created_at, managed, schedule, pull_requests, \
         fork_pull_requests"
    };
}
pub(crate) use project_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectRow {
    id: Uuid,
    org_id: Uuid,
    name: String,
    display_name: String,
    description: String,
    repository: String,
    branch: Option<String>,
    wildcard: String,
    flake_input_overrides: String,
    keep_evaluations: Option<i64>,
    poll_interval_secs: Option<i64>,
    active: bool,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    managed: bool,
    schedule: Option<String>,
    pull_requests: bool,
    fork_pull_requests: bool,
}

impl ProjectRow {
    pub(crate) fn into_project(self) -> Result<Project> {
        Ok(Project {
            id: ProjectId(self.id),
            org_id: OrgId(self.org_id),
            name: stored_name(&self.name, "project name")?,
            display_name: self.display_name,
            description: self.description,
            repository: self.repository,
            branch: self.branch,
            wildcard: self.wildcard,
            flake_input_overrides: from_json::<BTreeMap<String, InputOverride>>(
                &self.flake_input_overrides,
                "flake input overrides",
            )?,
            keep_evaluations: stored_u32(self.keep_evaluations, "keep_evaluations")?,
            poll_interval_secs: stored_u32(self.poll_interval_secs, "poll_interval_secs")?,
            schedule: self.schedule,
            active: self.active,
            pull_requests: self.pull_requests,
            fork_pull_requests: self.fork_pull_requests,
            created_by: UserId(self.created_by),
            created_at: self.created_at,
            managed: self.managed,
        })
    }
}

impl Projects for SqlStorage {
    async fn create_project(&self, project: &Project) -> Result<()> {
        let sql = concat!(
            "INSERT INTO projects (",
            project_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        );
        let overrides = to_json(&project.flake_input_overrides)?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(project.id.0)
            .bind(project.org_id.0)
            .bind(project.name.as_str())
            .bind(&project.display_name)
            .bind(&project.description)
            .bind(&project.repository)
            .bind(project.branch.as_deref())
            .bind(&project.wildcard)
            .bind(&overrides)
            .bind(project.keep_evaluations.map(i64::from))
            .bind(project.poll_interval_secs.map(i64::from))
            .bind(project.active)
            .bind(project.created_by.0)
            .bind(project.created_at)
            .bind(project.managed)
            .bind(project.schedule.as_deref())
            .bind(project.pull_requests)
            .bind(project.fork_pull_requests)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn project(&self, org: OrgId, name: &Name) -> Result<Option<Project>> {
        let sql = concat!(
            "SELECT ",
            project_columns!(),
            " FROM projects WHERE org_id = $1 AND name = $2"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, ProjectRow>(sql)
            .bind(org.0)
            .bind(name.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(ProjectRow::into_project).transpose()
    }

    async fn project_by_id(&self, id: ProjectId) -> Result<Option<Project>> {
        let sql = concat!("SELECT ", project_columns!(), " FROM projects WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, ProjectRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(ProjectRow::into_project).transpose()
    }

    async fn projects(&self, org: OrgId) -> Result<Vec<Project>> {
        let sql = concat!(
            "SELECT ",
            project_columns!(),
            " FROM projects WHERE org_id = $1 ORDER BY name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ProjectRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(ProjectRow::into_project).collect()
    }

    async fn polled_projects(&self) -> Result<Vec<Project>> {
        let sql = concat!(
            "SELECT ",
            project_columns!(),
            " FROM projects WHERE active AND poll_interval_secs IS NOT NULL ORDER BY id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ProjectRow>(sql).fetch_all(p).await).map_err(db_error)?;
        rows.into_iter().map(ProjectRow::into_project).collect()
    }

    async fn active_projects(&self) -> Result<Vec<Project>> {
        let sql = concat!("SELECT ", project_columns!(), " FROM projects WHERE active ORDER BY id");
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ProjectRow>(sql).fetch_all(p).await).map_err(db_error)?;
        rows.into_iter().map(ProjectRow::into_project).collect()
    }

    async fn update_project(&self, project: &Project) -> Result<()> {
        let sql = "UPDATE projects SET display_name = $2, description = $3, repository = $4, branch = $5, \
                   wildcard = $6, flake_input_overrides = $7, keep_evaluations = $8, poll_interval_secs = $9, \
                   active = $10, schedule = $11, pull_requests = $12, fork_pull_requests = $13 WHERE id = $1";
        let overrides = to_json(&project.flake_input_overrides)?;
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(project.id.0)
            .bind(&project.display_name)
            .bind(&project.description)
            .bind(&project.repository)
            .bind(project.branch.as_deref())
            .bind(&project.wildcard)
            .bind(&overrides)
            .bind(project.keep_evaluations.map(i64::from))
            .bind(project.poll_interval_secs.map(i64::from))
            .bind(project.active)
            .bind(project.schedule.as_deref())
            .bind(project.pull_requests)
            .bind(project.fork_pull_requests)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn delete_project(&self, id: ProjectId) -> Result<bool> {
        let sql = "DELETE FROM projects WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn scheduled_projects(&self) -> Result<Vec<ScheduledProject>> {
        let sql = concat!(
            "SELECT ",
            project_columns!(),
            ", schedule_anchor FROM projects WHERE active AND schedule IS NOT NULL ORDER BY id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ScheduledRow>(sql).fetch_all(p).await).map_err(db_error)?;
        rows.into_iter()
            .map(|r| Ok((r.project.into_project()?, r.schedule_anchor)))
            .collect()
    }

    async fn set_schedule_anchor(&self, id: ProjectId, at: Option<DateTime<Utc>>) -> Result<bool> {
        let sql = "UPDATE projects SET schedule_anchor = $2 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }
}

#[derive(sqlx::FromRow)]
struct ScheduledRow {
    #[sqlx(flatten)]
    project: ProjectRow,
    schedule_anchor: Option<DateTime<Utc>>,
}
