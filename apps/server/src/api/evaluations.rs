use super::dto::{Reply, ok};
use super::{MaybeToken, Tag, Token};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use gradient_domain::EvaluationId;
use gradient_domain::model::{Build, Evaluation};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct EvaluationsApi(pub AppState);

#[derive(Object)]
pub struct EvaluateRequest {
    /// The full commit hash to evaluate.
    pub commit: String,
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
    pub branch: Option<String>,
    /// Queued, Fetching, Evaluating, Building, Completed, Failed or Aborted.
    pub status: String,
    pub errors: Vec<AttributeErrorView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Evaluation> for EvaluationView {
    fn from(e: &Evaluation) -> Self {
        Self {
            id: e.id.0,
            project_id: e.project_id.0,
            commit: e.commit.clone(),
            branch: e.branch.clone(),
            status: e.status.as_str().to_owned(),
            errors: e
                .errors
                .iter()
                .map(|x| AttributeErrorView {
                    attribute: x.attribute.clone(),
                    message: x.message.clone(),
                })
                .collect(),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Object)]
pub struct BuildView {
    pub drv_path: String,
    /// Queued, Building, Completed, Failed, Aborted, Substituted or DependencyFailed.
    pub status: String,
    /// The end of the build's log, when it ran.
    pub log: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Build> for BuildView {
    fn from(b: &Build) -> Self {
        Self {
            drv_path: b.drv_path.clone(),
            status: b.status.as_str().to_owned(),
            log: b.log.clone(),
            updated_at: b.updated_at,
        }
    }
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
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

impl From<&gradient_domain::model::StatusReport> for StatusReportView {
    fn from(r: &gradient_domain::model::StatusReport) -> Self {
        Self {
            state: r.state.as_str().to_owned(),
            delivered: r.delivered,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
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
    /// Queues an evaluation of the project at a commit (`trigger_evaluation`).
    #[oai(path = "/projects/:org/:project/evaluate", method = "post")]
    async fn evaluate(
        &self,
        auth: Token,
        org: Path<String>,
        project: Path<String>,
        body: Json<EvaluateRequest>,
    ) -> Reply<EvaluationView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let e = self
            .0
            .app
            .trigger_evaluation(&caller, &org, &project, &body.0.commit)
            .await?;
        self.0.dispatch.notify_one();
        ok(EvaluationView::from(&e))
    }

    /// Acts on an evaluation: `{"method": "abort"}` (`abort_evaluation`) stops it; queued builds only it
    /// needs end Aborted and running ones are stopped on their workers.
    #[oai(path = "/evals/:id", method = "post")]
    async fn act(&self, auth: Token, id: Path<Uuid>, body: Json<EvaluationAction>) -> Reply<EvaluationView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        if body.0.method == "restart" {
            let e = self.0.app.restart_evaluation(&caller, EvaluationId(id.0)).await?;
            self.0.dispatch.notify_one();
            return ok(EvaluationView::from(&e));
        }
        if body.0.method != "abort" {
            return Err(super::ApiError::unprocessable(
                "unknown_method",
                format!("unknown method '{}' (abort, restart)", body.0.method),
            ));
        }
        let workers: Vec<_> = self.0.links.infos().iter().map(|w| w.id).collect();
        let running = self
            .0
            .app
            .abort_evaluation(&caller, EvaluationId(id.0), &workers)
            .await?;
        for (worker, job_id) in running {
            self.0
                .links
                .send(worker, gradient_domain::proto::ServerMessage::Abort { job_id });
        }
        let (e, _) = self.0.app.evaluation_for(&caller, EvaluationId(id.0)).await?;
        ok(EvaluationView::from(&e))
    }

    /// An evaluation with its builds.
    #[oai(path = "/evals/:id", method = "get")]
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
