//! Reading builds: an evaluation's builds with the attributes that selected them, one build with its
//! derivation, and a build's stored log. Callers see builds of the organizations they may view; anything else is
//! NotFound, as if it did not exist.

use super::{Caller, Gradient, Result, ServiceError};
use crate::changes::{self, AttributeBuild, AttributeChange, RootCause};
use crate::model::{Build, Derivation, Evaluation};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use crate::status::BuildStatus;
use crate::{BuildId, EvaluationId, OrgId};
use std::collections::{BTreeMap, HashMap};

/// A build as an evaluation lists it: with the attributes of the evaluation that selected its derivation
/// (empty for a dependency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluationBuildView {
    pub build: Build,
    pub attributes: Vec<String>,
    /// The build existed before this evaluation (an earlier evaluation needed the same derivation): it was not
    /// built again for this one.
    pub reused: bool,
}

/// An evaluation compared with the project's previous one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluationDiff {
    pub previous: Option<EvaluationId>,
    pub changes: Vec<AttributeChange>,
    pub root_causes: Vec<RootCause>,
    /// This evaluation's builds (the ones the changes and causes name, and the rest).
    pub builds: Vec<EvaluationBuildView>,
}

/// One row per attribute of an evaluation's builds.
fn attribute_builds(builds: &[EvaluationBuildView]) -> Vec<AttributeBuild> {
    builds
        .iter()
        .flat_map(|b| {
            b.attributes.iter().map(|a| AttributeBuild {
                attribute: a.clone(),
                drv_path: b.build.drv_path.clone(),
                status: b.build.status,
            })
        })
        .collect()
}

/// A stored log's text and what was left out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogText {
    pub text: String,
    pub omitted: u64,
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// Nothing, if the caller may view the organization; otherwise `missing()` (what it may not see does not
    /// exist for it).
    pub(super) async fn require_view(
        &self,
        caller: &Caller,
        org: OrgId,
        missing: impl Fn() -> ServiceError,
    ) -> Result<()> {
        let o = self.storage.org(org).await?.ok_or_else(&missing)?;
        self.org_requiring(caller, o.name.as_str(), Permission::ViewOrg)
            .await
            .map(|_| ())
            .map_err(|_| missing())
    }

    /// The builds an evaluation needs, by `.drv` path, with the attributes that selected them.
    pub async fn evaluation_builds(
        &self,
        caller: &Caller,
        id: EvaluationId,
    ) -> Result<(Evaluation, Vec<EvaluationBuildView>)> {
        let (e, builds) = self.evaluation_for(caller, id).await?;
        let mut attributes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in self.storage.entry_points(id).await? {
            attributes.entry(entry.drv_path).or_default().push(entry.attribute);
        }
        let views = builds
            .into_iter()
            .map(|build| EvaluationBuildView {
                attributes: attributes.remove(&build.drv_path).unwrap_or_default(),
                reused: build.created_at < e.created_at,
                build,
            })
            .collect();
        Ok((e, views))
    }

    /// One build with its derivation (`None` only if the derivation row is gone).
    pub async fn build_for(&self, caller: &Caller, id: BuildId) -> Result<(Build, Option<Derivation>)> {
        let missing = || ServiceError::NotFound(format!("build {} not found", id.0));
        let build = self.storage.build_by_id(id).await?.ok_or_else(missing)?;
        self.require_view(caller, build.org_id, missing).await?;
        let derivation = self.storage.derivation(build.org_id, &build.drv_path).await?;
        Ok((build, derivation))
    }

    /// A build's stored log. NotFound (`no_log`) while it has none: it has not run, or it is running (its live
    /// log is streamed instead).
    pub async fn build_log_for(&self, caller: &Caller, id: BuildId) -> Result<LogText> {
        let (build, _) = self.build_for(caller, id).await?;
        self.stored_log(&build).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "build {} has no stored log (status {})",
                id.0,
                build.status.as_str()
            ))
        })
    }

    /// The organization's build of `drv` as it is now, without permission checks (for callers that checked
    /// already: a live log stream polls it for the build's end).
    pub async fn build_now(&self, org: crate::OrgId, drv: &str) -> Result<Option<Build>> {
        Ok(self.storage.build(org, drv).await?)
    }

    /// A build's stored log, uncompressed, without permission checks (for callers that checked already).
    pub async fn stored_log(&self, build: &Build) -> Result<Option<LogText>> {
        let Some(log) = self.storage.build_log(build.id).await? else {
            return Ok(None);
        };
        let text = crate::logs::decompress(&log.compressed, crate::logs::MAX_STORED_LOG)
            .map_err(|e| ServiceError::Internal(format!("the stored log of build {} is unreadable: {e}", build.id)))?;
        Ok(Some(LogText {
            text,
            omitted: log.omitted,
        }))
    }

    /// What changed since the previous evaluation of the same project (the newest one created before it that has
    /// builds), attribute by attribute, and this evaluation's failures grouped by root cause. `previous` is
    /// `None` when there is none (then every attribute is new).
    pub async fn evaluation_diff(&self, caller: &Caller, id: EvaluationId) -> Result<EvaluationDiff> {
        let (e, builds) = self.evaluation_builds(caller, id).await?;
        // The newest earlier evaluation that got as far as builds: one that failed to evaluate (or is still
        // evaluating) has none, and comparing with it would call every failure new.
        let mut earlier: Vec<_> = self
            .storage
            .evaluations(e.project_id, super::EVALUATION_LIST_LIMIT)
            .await?
            .into_iter()
            .filter(|p| p.id != e.id && p.created_at < e.created_at)
            // A branch's evaluation is compared with the branch's; a pull request's with its own earlier ones or
            // the branch's.
            .filter(|p| {
                p.pull_request.is_none()
                    || p.pull_request.as_ref().map(|pr| pr.number) == e.pull_request.as_ref().map(|pr| pr.number)
            })
            .collect();
        earlier.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        let mut previous = None;
        let mut before = Vec::new();
        for p in earlier {
            let (_, theirs) = self.evaluation_builds(caller, p.id).await?;
            if !theirs.is_empty() {
                previous = Some(p);
                before = theirs;
                break;
            }
        }
        let changes = changes::compare(&attribute_builds(&before), &attribute_builds(&builds));
        let mut inputs = HashMap::new();
        for b in builds
            .iter()
            .filter(|b| b.build.status == BuildStatus::DependencyFailed)
        {
            if let Some(d) = self.storage.derivation(b.build.org_id, &b.build.drv_path).await? {
                inputs.insert(b.build.drv_path.clone(), d.inputs);
            }
        }
        let statuses: Vec<(String, BuildStatus)> = builds
            .iter()
            .map(|b| (b.build.drv_path.clone(), b.build.status))
            .collect();
        Ok(EvaluationDiff {
            previous: previous.map(|p| p.id),
            changes,
            root_causes: changes::root_causes(&statuses, &inputs),
            builds,
        })
    }
}
