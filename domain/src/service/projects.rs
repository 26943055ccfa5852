//! Projects: a repository holding a flake, inside an organization.

use super::{Caller, Gradient, Result, ServiceError, check_multiline_text, check_text, display_texts, refuse_managed};
use crate::model::{AuditAction, DEFAULT_WILDCARD, InputOverride, Project};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage, StorageError};
use crate::reach::{self, NetworkPolicy};
use crate::wildcard::Wildcard;
use crate::{Name, ProjectId};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct NewProject {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub repository: String,
    pub branch: Option<String>,
    pub wildcard: Option<String>,
    pub flake_input_overrides: BTreeMap<String, InputOverride>,
    pub keep_evaluations: Option<u32>,
    pub poll_interval_secs: Option<u32>,
    /// A cron expression (see [`crate::schedule`]).
    pub schedule: Option<String>,
    pub active: Option<bool>,
    /// Default: true.
    pub pull_requests: Option<bool>,
    /// Default: false.
    pub fork_pull_requests: Option<bool>,
}

/// A partial update; `None` leaves a field unchanged. For the optional fields, `Some(None)` clears them.
#[derive(Clone, Debug, Default)]
pub struct ProjectChanges {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<Option<String>>,
    pub wildcard: Option<String>,
    pub flake_input_overrides: Option<BTreeMap<String, InputOverride>>,
    pub keep_evaluations: Option<Option<u32>>,
    pub poll_interval_secs: Option<Option<u32>>,
    pub schedule: Option<Option<String>>,
    pub active: Option<bool>,
    pub pull_requests: Option<bool>,
    pub fork_pull_requests: Option<bool>,
}

fn not_found(org: &str, name: &str) -> ServiceError {
    ServiceError::NotFound(format!("project '{org}/{name}' not found"))
}

/// Accepts the repository URL forms of [`reach::parse_remote`] that `policy` lets the server reach: a
/// malformed URL is `invalid_repository`, a `file://` URL or a local (or, when denied, private) host is
/// `repository_not_allowed`.
pub(crate) fn check_repository(url: &str, policy: &NetworkPolicy) -> Result<()> {
    let remote = reach::parse_remote(url).ok_or_else(|| {
        ServiceError::invalid(
            "invalid_repository",
            format!(
                "'{}' is not a repository URL (use {})",
                url.trim(),
                reach::REPOSITORY_FORMS
            ),
        )
    })?;
    reach::check_remote(&remote, policy).map_err(|why| ServiceError::invalid("repository_not_allowed", why))
}

/// Checks a schedule (422 `invalid_schedule`); answers it trimmed.
pub(crate) fn check_schedule(schedule: Option<String>) -> Result<Option<String>> {
    schedule
        .map(|s| crate::schedule::check(&s).map_err(|m| ServiceError::invalid("invalid_schedule", m)))
        .transpose()
}

pub(crate) fn check_wildcard(w: &str) -> Result<()> {
    check_text("wildcard", w, 2048)?;
    Wildcard::parse(w)
        .map(|_| ())
        .map_err(|m| ServiceError::invalid("invalid_wildcard", m))
}

pub(crate) fn check_branch(branch: &Option<String>) -> Result<()> {
    match branch {
        Some(b) => super::check_branch(b),
        None => Ok(()),
    }
}

pub(crate) fn check_overrides(o: &BTreeMap<String, InputOverride>) -> Result<()> {
    for (input, value) in o {
        if input.is_empty() || !input.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
            return Err(ServiceError::invalid(
                "invalid_input",
                format!("'{input}' is not a flake input name"),
            ));
        }
        if let InputOverride::Url(u) = value {
            check_text("flake input url", u, 2048)?;
        }
    }
    Ok(())
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The projects the poller looks at: active ones with a poll interval.
    pub async fn polled_projects(&self) -> Result<Vec<crate::model::Project>> {
        Ok(self.storage.polled_projects().await?)
    }

    pub async fn projects(&self, caller: &Caller, org: &str) -> Result<Vec<Project>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        Ok(self.storage.projects(org.id).await?)
    }

    pub async fn project(&self, caller: &Caller, org: &str, name: &str) -> Result<Project> {
        let o = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        self.project_in(o.id, org, name).await
    }

    async fn project_in(&self, org_id: crate::OrgId, org: &str, name: &str) -> Result<Project> {
        let parsed = Name::parse(name).map_err(|_| not_found(org, name))?;
        self.storage
            .project(org_id, &parsed)
            .await?
            .ok_or_else(|| not_found(org, name))
    }

    pub async fn create_project(&self, caller: &Caller, org: &str, new: NewProject) -> Result<Project> {
        let o = self.org_requiring(caller, org, Permission::CreateProject).await?;
        let user = caller.require_user()?;
        let name = Name::parse_as(new.name.trim_matches(' '), "project name")?;
        let wildcard = new.wildcard.unwrap_or_else(|| DEFAULT_WILDCARD.to_owned());
        check_repository(&new.repository, &self.settings.network)?;
        check_wildcard(&wildcard)?;
        check_branch(&new.branch)?;
        check_overrides(&new.flake_input_overrides)?;
        let schedule = check_schedule(new.schedule)?;
        let (display_name, description) = display_texts(&name, new.display_name, new.description)?;
        let project = Project {
            managed: false,
            id: ProjectId::new(),
            org_id: o.id,
            display_name,
            name,
            description,
            repository: new.repository.trim().to_owned(),
            branch: new.branch,
            wildcard,
            flake_input_overrides: new.flake_input_overrides,
            keep_evaluations: new.keep_evaluations,
            poll_interval_secs: new.poll_interval_secs,
            schedule,
            active: new.active.unwrap_or(true),
            pull_requests: new.pull_requests.unwrap_or(true),
            fork_pull_requests: new.fork_pull_requests.unwrap_or(false),
            created_by: user.id,
            created_at: self.clock.now(),
        };
        self.storage.create_project(&project).await.map_err(|e| match e {
            StorageError::Conflict(_) => ServiceError::conflict(
                "name_taken",
                format!("organization '{org}' already has a project named '{}'", project.name),
            ),
            other => other.into(),
        })?;
        self.audit(
            caller,
            o.id,
            AuditAction::ProjectCreated,
            format!("project '{}'", project.name),
            "",
        )
        .await?;
        Ok(project)
    }

    pub async fn update_project(&self, caller: &Caller, org: &str, name: &str, c: ProjectChanges) -> Result<Project> {
        let o = self.org_requiring(caller, org, Permission::EditProject).await?;
        let mut p = self.project_in(o.id, org, name).await?;
        refuse_managed(p.managed, format_args!("project '{org}/{}'", p.name))?;
        let before = p.clone();
        if let Some(v) = c.display_name {
            check_text("display_name", &v, 256)?;
            p.display_name = v.trim().to_owned();
        }
        if let Some(v) = c.description {
            check_multiline_text("description", &v, 4096)?;
            p.description = v;
        }
        if let Some(v) = c.repository {
            check_repository(&v, &self.settings.network)?;
            p.repository = v.trim().to_owned();
        }
        if let Some(v) = c.branch {
            check_branch(&v)?;
            p.branch = v;
        }
        if let Some(v) = c.wildcard {
            check_wildcard(&v)?;
            p.wildcard = v;
        }
        if let Some(v) = c.flake_input_overrides {
            check_overrides(&v)?;
            p.flake_input_overrides = v;
        }
        if let Some(v) = c.keep_evaluations {
            p.keep_evaluations = v;
        }
        if let Some(v) = c.poll_interval_secs {
            p.poll_interval_secs = v;
        }
        if let Some(v) = c.schedule {
            p.schedule = check_schedule(v)?;
        }
        if let Some(v) = c.active {
            p.active = v;
        }
        if let Some(v) = c.pull_requests {
            p.pull_requests = v;
        }
        if let Some(v) = c.fork_pull_requests {
            p.fork_pull_requests = v;
        }
        self.storage.update_project(&p).await?;
        if before.schedule != p.schedule {
            // A changed schedule starts anew: its first run is at its next time, not a catch-up of the old one's.
            self.storage.set_schedule_anchor(p.id, None).await?;
        }
        // Which fields changed, by name only: a repository URL may carry credentials.
        let changed: Vec<&str> = [
            ("display_name", before.display_name != p.display_name),
            ("description", before.description != p.description),
            ("repository", before.repository != p.repository),
            ("branch", before.branch != p.branch),
            ("wildcard", before.wildcard != p.wildcard),
            (
                "flake_input_overrides",
                before.flake_input_overrides != p.flake_input_overrides,
            ),
            ("keep_evaluations", before.keep_evaluations != p.keep_evaluations),
            ("poll_interval_secs", before.poll_interval_secs != p.poll_interval_secs),
            ("schedule", before.schedule != p.schedule),
            ("active", before.active != p.active),
            ("pull_requests", before.pull_requests != p.pull_requests),
            ("fork_pull_requests", before.fork_pull_requests != p.fork_pull_requests),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect();
        self.audit(
            caller,
            o.id,
            AuditAction::ProjectUpdated,
            format!("project '{}'", p.name),
            changed.join(", "),
        )
        .await?;
        Ok(p)
    }

    pub async fn delete_project(&self, caller: &Caller, org: &str, name: &str) -> Result<()> {
        let o = self.org_requiring(caller, org, Permission::DeleteProject).await?;
        let p = self.project_in(o.id, org, name).await?;
        refuse_managed(p.managed, format_args!("project '{org}/{}'", p.name))?;
        self.storage.delete_project(p.id).await?;
        self.audit(
            caller,
            o.id,
            AuditAction::ProjectDeleted,
            format!("project '{}'", p.name),
            "",
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls() {
        let default = NetworkPolicy::default();
        let local = NetworkPolicy::ALLOW_ALL;
        for ok in [
            "https://github.com/a/b",
            "ssh://git@host/a.git",
            "git@github.com:a/b.git",
            "git://host/a",
            "http://10.0.0.1/a",
        ] {
            assert!(check_repository(ok, &default).is_ok(), "{ok}");
        }
        let code = |url: &str, policy: &NetworkPolicy| check_repository(url, policy).err().map(|e| e.code());
        for bad in [
            "",
            "github.com/a/b",
            "https://",
            "https://a b",
            "/srv/repo",
            "ftp://x/y",
        ] {
            assert_eq!(code(bad, &local), Some("invalid_repository"), "{bad}");
        }
        for local_only in [
            "file:///srv/repo",
            "http://127.0.0.1:9/a",
            "http://localhost/a",
            "http://[::1]/a",
        ] {
            assert_eq!(
                code(local_only, &default),
                Some("repository_not_allowed"),
                "{local_only}"
            );
            assert_eq!(code(local_only, &local), None, "{local_only}");
        }
    }
}
