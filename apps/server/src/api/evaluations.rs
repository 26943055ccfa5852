use super::dto::{Nullable, Reply, ok};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use gradient_domain::model::{Build, Derivation, Evaluation, Transition};
use gradient_domain::service::EvaluationBuildView;
use gradient_domain::{BuildId, EvaluationId};
use poem_openapi::param::Path;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};
use std::collections::BTreeMap;
use uuid::Uuid;

pub struct EvaluationsApi(pub AppState);

/// What to evaluate. The body may be absent or `{}`: the head of the project's branch (or of the
/// repository's default branch) is evaluated.
#[derive(Object)]
pub struct EvaluateRequest {
    /// The full commit hash to evaluate; absent: the head of the project's branch, or of the repository's
    /// default branch when the project has none.
    pub commit: Option<String>,
}

#[derive(Object)]
pub struct AttributeErrorView {
    /// The attribute path, or empty for an error of the whole evaluation.
    pub attribute: String,
    pub message: String,
}

#[derive(Object)]
pub struct EvaluationView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub commit: String,
    /// The branch the commit was pushed to or polled from; `null` when unknown (e.g. a manual evaluation).
    pub branch: Nullable<String>,
    /// What started it: Manual, Poll or Webhook.
    pub trigger: String,
    /// The pull request (GitLab: merge request) it evaluates; `null` for a branch's commit.
    pub pull_request: Nullable<PullRequestView>,
    /// Queued, Fetching, Evaluating, Building, Completed, Failed or Aborted.
    pub status: String,
    pub errors: Vec<AttributeErrorView>,
    /// Every status it took and when, oldest first.
    pub transitions: Vec<TransitionView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a pull request's evaluation comes from.
#[derive(Object)]
pub struct PullRequestView {
    /// The pull request's number (GitLab: the merge request's iid).
    pub number: u64,
    /// Whether it comes from a fork: another repository than the project's.
    pub fork: bool,
    /// The repository the pull request comes from; `null` when the forge no longer names it (a deleted fork).
    pub head_repository: Nullable<String>,
    /// The branch of that repository.
    pub head_branch: String,
    /// The pull request's head commit, where commit statuses go. `commit` is the one evaluated: the same,
    /// or GitHub's test merge commit when GitHub said the pull request merges cleanly.
    pub head_commit: String,
    /// The ref of the project's repository the commit is fetched by (`refs/pull/N/head`, `refs/pull/N/merge`,
    /// `refs/merge-requests/N/head`).
    pub fetch_ref: String,
}

impl From<&gradient_domain::model::PullRequestSource> for PullRequestView {
    fn from(pr: &gradient_domain::model::PullRequestSource) -> Self {
        Self {
            number: pr.number,
            fork: pr.fork,
            head_repository: pr.head_repository.clone().into(),
            head_branch: pr.head_branch.clone(),
            head_commit: pr.head_commit.clone(),
            fetch_ref: pr.fetch_ref.clone(),
        }
    }
}

/// A status something took, and when.
#[derive(Object)]
pub struct TransitionView {
    pub status: String,
    pub at: DateTime<Utc>,
}

fn transitions<S: Copy>(list: &[Transition<S>], name: impl Fn(S) -> &'static str) -> Vec<TransitionView> {
    list.iter()
        .map(|t| TransitionView {
            status: name(t.status).to_owned(),
            at: t.at,
        })
        .collect()
}

impl From<&Evaluation> for EvaluationView {
    fn from(e: &Evaluation) -> Self {
        Self {
            id: e.id.0,
            project_id: e.project_id.0,
            commit: e.commit.clone(),
            branch: e.branch.clone().into(),
            trigger: e.trigger.as_str().to_owned(),
            pull_request: e.pull_request.as_ref().map(PullRequestView::from).into(),
            status: e.status.as_str().to_owned(),
            errors: e
                .errors
                .iter()
                .map(|x| AttributeErrorView {
                    attribute: x.attribute.clone(),
                    message: x.message.clone(),
                })
                .collect(),
            transitions: transitions(&e.transitions, |s| s.as_str()),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// An organization's build of one derivation (built once however many evaluations need it).
#[derive(Object)]
pub struct BuildView {
    pub id: Uuid,
    pub drv_path: String,
    /// Queued, Building, Completed, Failed, Aborted, Substituted or DependencyFailed.
    pub status: String,
    /// Every status it took and when, oldest first.
    pub transitions: Vec<TransitionView>,
    pub created_at: DateTime<Utc>,
    /// When it last started building.
    pub started_at: Nullable<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Nullable<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Build> for BuildView {
    fn from(b: &Build) -> Self {
        Self {
            id: b.id.0,
            drv_path: b.drv_path.clone(),
            status: b.status.as_str().to_owned(),
            transitions: transitions(&b.transitions, |s| s.as_str()),
            created_at: b.created_at,
            started_at: b.started_at().into(),
            finished_at: b.finished_at().into(),
            updated_at: b.updated_at,
        }
    }
}

/// A build in an evaluation's list: with the attributes that selected its derivation (empty for a
/// dependency).
#[derive(Object)]
pub struct EvaluationBuildItem {
    #[oai(flatten)]
    pub build: BuildView,
    pub attributes: Vec<String>,
    /// The build was made for an earlier evaluation that needed the same derivation: this one reused it
    /// (build once), it was not built again.
    pub reused: bool,
}

impl From<&EvaluationBuildView> for EvaluationBuildItem {
    fn from(v: &EvaluationBuildView) -> Self {
        Self {
            build: BuildView::from(&v.build),
            attributes: v.attributes.clone(),
            reused: v.reused,
        }
    }
}

/// An evaluation compared with the previous evaluation of its project.
#[derive(Object)]
pub struct EvaluationDiffView {
    /// The evaluation compared with; `null` for a project's first evaluation (every attribute is new).
    pub previous: Nullable<Uuid>,
    /// The attributes whose outcome changed, by change then attribute.
    pub changes: Vec<AttributeChangeView>,
    /// Failed builds with the dependency-failed builds they broke, the most harmful first; a cause of `null`
    /// groups dependency failures whose failed dependency is not among this evaluation's builds.
    pub root_causes: Vec<RootCauseView>,
}

/// One attribute whose outcome changed.
#[derive(Object)]
pub struct AttributeChangeView {
    /// newly_failing, newly_fixed, still_failing, new or removed.
    pub change: String,
    pub attribute: String,
    /// Its build in this evaluation (in the previous one, for a removed attribute).
    pub build: BuildRef,
    pub status: String,
    /// Its build's status in the previous evaluation; `null` for a new attribute.
    pub previous_status: Nullable<String>,
}

/// A failed build and what it broke.
#[derive(Object)]
pub struct RootCauseView {
    pub cause: Nullable<BuildRef>,
    pub dependents: Vec<BuildRef>,
}

/// A build named in a comparison.
#[derive(Object)]
pub struct BuildRef {
    pub drv_path: String,
    /// `null` when the build is not one of this evaluation's (a removed attribute's).
    pub build_id: Nullable<Uuid>,
    /// The attributes of this evaluation that selected it.
    pub attributes: Vec<String>,
    pub status: Nullable<String>,
}

/// The derivation a build realises.
#[derive(Object)]
pub struct DerivationView {
    pub system: String,
    pub required_features: Vec<String>,
    /// Output name → store path.
    pub outputs: BTreeMap<String, String>,
    /// The `.drv` paths of its inputs.
    pub inputs: Vec<String>,
}

impl From<&Derivation> for DerivationView {
    fn from(d: &Derivation) -> Self {
        Self {
            system: d.system.clone(),
            required_features: d.required_features.clone(),
            outputs: d.outputs.clone(),
            inputs: d.inputs.clone(),
        }
    }
}

#[derive(Object)]
pub struct BuildDetail {
    pub build: BuildView,
    /// `null` when the server no longer knows the derivation.
    pub derivation: Nullable<DerivationView>,
}

#[derive(ApiResponse)]
enum LogResponse {
    /// The stored log as text. Long logs keep their start and their end, with a line saying how many bytes
    /// were left out between them.
    #[oai(status = 200)]
    Log(
        PlainText<String>,
        /// How many bytes of what the build printed were left out of this log.
        #[oai(header = "X-Gradient-Log-Omitted")]
        u64,
    ),
}

/// An action on an evaluation.
#[derive(Object)]
pub struct EvaluationAction {
    /// `abort`: stop the evaluation and the builds only it needs; `restart`: build its failed, aborted and
    /// dependency-failed derivations again.
    pub method: String,
}

/// A commit status reported (or to be reported) to the forge for an evaluation.
#[derive(Object)]
pub struct StatusReportView {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    pub delivered: bool,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Nullable<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<&gradient_domain::model::StatusReport> for StatusReportView {
    fn from(r: &gradient_domain::model::StatusReport) -> Self {
        Self {
            state: r.state.as_str().to_owned(),
            delivered: r.delivered,
            attempts: r.attempts,
            last_error: r.last_error.clone().into(),
            next_attempt_at: r.next_attempt_at,
        }
    }
}

#[derive(Object)]
pub struct EvaluationDetail {
    pub evaluation: EvaluationView,
    pub builds: Vec<BuildView>,
    /// The commit statuses for the forge, oldest first (empty without a forge connection).
    pub statuses: Vec<StatusReportView>,
}

#[OpenApi(tag = "Tag::Projects")]
impl EvaluationsApi {
    /// Queues an evaluation of the project (`trigger_evaluation`).
    ///
    /// At `commit`, or, with no body, `{}` or no `commit`, at the head of the project's branch (the repository's default branch when the project has
    /// none), which the server asks the repository for. The answer names the commit and the branch.
    /// 422 `branch_not_found` when that branch has no commit, `repository_unreachable` when the repository
    /// cannot be read.
    #[oai(
        path = "/projects/:org/:project/evaluate",
        method = "post",
        operation_id = "evaluate_project"
    )]
    async fn evaluate(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        body: Json<Option<EvaluateRequest>>,
    ) -> Reply<EvaluationView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let commit = body.0.and_then(|b| b.commit);
        let git = gradient_git_cli::GitCli::new(self.0.app.settings().network);
        let e = self
            .0
            .app
            .trigger_evaluation(&git, &caller, &org, &project, commit.as_deref())
            .await?;
        ok(EvaluationView::from(&e))
    }

    /// Acts on an evaluation: `{"method": "abort"}` (`abort_evaluation`) stops it; queued builds only it
    /// needs end Aborted and running ones are stopped on their workers.
    #[oai(path = "/evals/:id", method = "post", operation_id = "act_on_evaluation")]
    async fn act(&self, auth: Token, id: Path<Uuid>, body: Json<EvaluationAction>) -> Reply<EvaluationView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        if body.0.method == "restart" {
            let e = self.0.app.restart_evaluation(&caller, EvaluationId(id.0)).await?;
            return ok(EvaluationView::from(&e));
        }
        if body.0.method != "abort" {
            return Err(super::ApiError::unprocessable(
                "unknown_method",
                format!("unknown method '{}' (abort, restart)", body.0.method),
            ));
        }
        let e = self.0.app.abort_evaluation(&caller, EvaluationId(id.0)).await?;
        ok(EvaluationView::from(&e))
    }

    /// The builds an evaluation needs, by `.drv` path, with the attributes that selected them.
    #[oai(path = "/evals/:id/builds", method = "get", operation_id = "list_evaluation_builds")]
    async fn builds(&self, auth: MaybeToken, id: Path<Uuid>) -> Reply<Vec<EvaluationBuildItem>> {
        let caller = self.0.caller(auth.bearer()).await?;
        let (_, builds) = self.0.app.evaluation_builds(&caller, EvaluationId(id.0)).await?;
        ok(builds.iter().map(EvaluationBuildItem::from).collect())
    }

    /// What changed since the previous evaluation of the same project: attributes newly failing, newly fixed,
    /// still failing, new and removed; and this evaluation's failures grouped by root cause (a
    /// dependency-failed build under each failed build it depends on).
    #[oai(path = "/evals/:id/diff", method = "get", operation_id = "get_evaluation_diff")]
    async fn diff(&self, auth: MaybeToken, id: Path<Uuid>) -> Reply<EvaluationDiffView> {
        let caller = self.0.caller(auth.bearer()).await?;
        let d = self.0.app.evaluation_diff(&caller, EvaluationId(id.0)).await?;
        let by_drv: BTreeMap<&str, &EvaluationBuildView> =
            d.builds.iter().map(|b| (b.build.drv_path.as_str(), b)).collect();
        let build_ref = |drv: &str| {
            let b = by_drv.get(drv);
            BuildRef {
                drv_path: drv.to_owned(),
                build_id: b.map(|b| b.build.id.0).into(),
                attributes: b.map(|b| b.attributes.clone()).unwrap_or_default(),
                status: b.map(|b| b.build.status.as_str().to_owned()).into(),
            }
        };
        ok(EvaluationDiffView {
            previous: d.previous.map(|p| p.0).into(),
            changes: d
                .changes
                .iter()
                .map(|c| AttributeChangeView {
                    change: c.change.as_str().to_owned(),
                    attribute: c.attribute.clone(),
                    build: build_ref(&c.drv_path),
                    status: c.status.as_str().to_owned(),
                    previous_status: c.previous_status.map(|s| s.as_str().to_owned()).into(),
                })
                .collect(),
            root_causes: d
                .root_causes
                .iter()
                .map(|r| RootCauseView {
                    cause: r.cause.as_deref().map(&build_ref).into(),
                    dependents: r.dependents.iter().map(|d| build_ref(d)).collect(),
                })
                .collect(),
        })
    }

    /// One build with its derivation.
    #[oai(path = "/builds/:id", method = "get", operation_id = "get_build")]
    async fn build(&self, auth: MaybeToken, id: Path<Uuid>) -> Reply<BuildDetail> {
        let caller = self.0.caller(auth.bearer()).await?;
        let (build, derivation) = self.0.app.build_for(&caller, BuildId(id.0)).await?;
        ok(BuildDetail {
            build: BuildView::from(&build),
            derivation: derivation.as_ref().map(DerivationView::from).into(),
        })
    }

    /// A build's stored log (`text/plain`), once the build has run; a running build's log is streamed by
    /// `GET /evals/{id}/log?drv=…`.
    #[oai(path = "/builds/:id/log", method = "get", operation_id = "get_build_log")]
    async fn build_log(&self, auth: MaybeToken, id: Path<Uuid>) -> Result<LogResponse, super::ApiError> {
        let caller = self.0.caller(auth.bearer()).await?;
        let log = self.0.app.build_log_for(&caller, BuildId(id.0)).await?;
        Ok(LogResponse::Log(PlainText(log.text), log.omitted))
    }

    /// An evaluation with its builds.
    #[oai(path = "/evals/:id", method = "get", operation_id = "get_evaluation")]
    async fn get(&self, auth: MaybeToken, id: Path<Uuid>) -> Reply<EvaluationDetail> {
        let caller = self.0.caller(auth.bearer()).await?;
        let (e, builds) = self.0.app.evaluation_for(&caller, EvaluationId(id.0)).await?;
        let statuses = self.0.app.evaluation_statuses(&caller, e.id).await?;
        ok(EvaluationDetail {
            evaluation: EvaluationView::from(&e),
            builds: builds.iter().map(BuildView::from).collect(),
            statuses: statuses.iter().map(StatusReportView::from).collect(),
        })
    }
}
