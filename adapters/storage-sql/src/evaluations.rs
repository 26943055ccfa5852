//! Evaluations, derivations, entry points and builds. Writes that touch several rows run in one transaction;
//! build-once is the builds table's primary key (organization, `.drv` path) with `ON CONFLICT DO NOTHING`.

use crate::BeginWrite;
use crate::{
    SqlStorage, corrupt, db_error, db_size, from_json, placeholders, rows_per_statement, stored_size, to_json,
    value_rows, with_pool,
};
use chrono::{DateTime, Utc};
use gradient_domain::model::{
    AttributeError, Build, BuildLog, Derivation, EntryPoint, Evaluation, EvaluationTrigger, PullRequestSource,
    Timestamp, Transition,
};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{BuildSwap, Evaluations, Result, Run};
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use gradient_domain::{BuildId, EvaluationId, OrgId, ProjectId};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use uuid::Uuid;

macro_rules! evaluation_columns {
    () => {
        "id, project_id, commit_hash, branch, trigger_kind, status, errors, transitions, created_at, updated_at, \
         scheduled, pull_request"
    };
}

macro_rules! build_columns {
    () => {
        "id, org_id, drv_path, status, transitions, created_at, updated_at"
    };
}

/// An attribute error as stored in the JSON `errors` column.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredError {
    attribute: String,
    message: String,
}

/// A status change as stored in the JSON `transitions` columns.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTransition {
    status: String,
    at: String,
}

fn transitions_json<S: Copy>(transitions: &[Transition<S>], name: impl Fn(S) -> &'static str) -> Result<String> {
    let stored: Vec<StoredTransition> = transitions
        .iter()
        .map(|t| StoredTransition {
            status: name(t.status).to_owned(),
            at: t.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        })
        .collect();
    to_json(&stored)
}

fn parse_transitions<S>(json: &str, what: &str, parse: impl Fn(&str) -> Option<S>) -> Result<Vec<Transition<S>>> {
    let stored: Vec<StoredTransition> = from_json(json, what)?;
    stored
        .into_iter()
        .map(|t| {
            Ok(Transition {
                status: parse(&t.status).ok_or_else(|| corrupt(what, &t.status))?,
                at: DateTime::parse_from_rfc3339(&t.at)
                    .map_err(|e| corrupt(what, e))?
                    .with_timezone(&Utc),
            })
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct EvaluationRow {
    id: Uuid,
    project_id: Uuid,
    commit_hash: String,
    branch: Option<String>,
    trigger_kind: String,
    status: String,
    errors: String,
    transitions: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    scheduled: bool,
    pull_request: Option<String>,
}

impl EvaluationRow {
    fn into_evaluation(self) -> Result<Evaluation> {
        let errors: Vec<StoredError> = from_json(&self.errors, "evaluation errors")?;
        Ok(Evaluation {
            id: EvaluationId(self.id),
            project_id: ProjectId(self.project_id),
            commit: self.commit_hash,
            branch: self.branch,
            // A scheduled evaluation is stored as polled with the `scheduled` flag (the column's CHECK predates
            // schedules).
            trigger: match EvaluationTrigger::parse(&self.trigger_kind) {
                Some(EvaluationTrigger::Poll) if self.scheduled => EvaluationTrigger::Schedule,
                Some(t) => t,
                None => return Err(corrupt("evaluation trigger", &self.trigger_kind)),
            },
            pull_request: self
                .pull_request
                .as_deref()
                .map(|json| from_json::<PullRequestSource>(json, "evaluation pull request"))
                .transpose()?,
            status: EvaluationStatus::parse(&self.status).ok_or_else(|| corrupt("evaluation status", &self.status))?,
            errors: errors
                .into_iter()
                .map(|e| AttributeError {
                    attribute: e.attribute,
                    message: e.message,
                })
                .collect(),
            transitions: parse_transitions(&self.transitions, "evaluation transitions", EvaluationStatus::parse)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn errors_json(errors: &[AttributeError]) -> Result<String> {
    let stored: Vec<StoredError> = errors
        .iter()
        .map(|e| StoredError {
            attribute: e.attribute.clone(),
            message: e.message.clone(),
        })
        .collect();
    to_json(&stored)
}

#[derive(sqlx::FromRow)]
struct DerivationRow {
    drv_path: String,
    system: String,
    required_features: String,
    outputs: String,
    inputs: String,
}

impl DerivationRow {
    fn into_derivation(self) -> Result<Derivation> {
        Ok(Derivation {
            drv_path: self.drv_path,
            system: self.system,
            required_features: from_json(&self.required_features, "derivation required features")?,
            outputs: from_json::<BTreeMap<String, String>>(&self.outputs, "derivation outputs")?,
            inputs: from_json(&self.inputs, "derivation inputs")?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EntryPointRow {
    evaluation_id: Uuid,
    attribute: String,
    drv_path: String,
}

impl EntryPointRow {
    fn into_entry_point(self) -> EntryPoint {
        EntryPoint {
            evaluation_id: EvaluationId(self.evaluation_id),
            attribute: self.attribute,
            drv_path: self.drv_path,
        }
    }
}

#[derive(sqlx::FromRow)]
struct BuildRow {
    id: Uuid,
    org_id: Uuid,
    drv_path: String,
    status: String,
    transitions: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl BuildRow {
    fn into_build(self) -> Result<Build> {
        Ok(Build {
            id: BuildId(self.id),
            org_id: OrgId(self.org_id),
            status: BuildStatus::parse(&self.status).ok_or_else(|| corrupt("build status", &self.status))?,
            drv_path: self.drv_path,
            transitions: parse_transitions(&self.transitions, "build transitions", BuildStatus::parse)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct BuildLogRow {
    build_id: Uuid,
    compressed: Vec<u8>,
    size: i64,
    omitted: i64,
    created_at: DateTime<Utc>,
}

/// Inside an async block answering `sqlx::Error`: the statement of `update_build_if` on executor `$e` (an
/// expression evaluated once per statement, e.g. `&mut *tx`): Some(written), or None when the build is absent.
macro_rules! update_build_from {
    ($e:expr, $from:expr, $build:expr, $transitions:expr) => {
        update_build_from!($e, $from, $build, $transitions, None::<Run>)
    };
    ($e:expr, $from:expr, $build:expr, $transitions:expr, $run:expr) => {{
        let b: &Build = $build;
        let run: Option<Run> = $run;
        let update = sqlx::query(match run {
            None => {
                "UPDATE builds SET status = $3, transitions = $4, updated_at = $5 \
                 WHERE org_id = $1 AND drv_path = $2 AND status = $6"
            }
            // Only while the run's job is still in that assignment.
            Some(_) => {
                "UPDATE builds SET status = $3, transitions = $4, updated_at = $5 \
                 WHERE org_id = $1 AND drv_path = $2 AND status = $6 AND EXISTS (SELECT 1 FROM jobs \
                 WHERE jobs.id = $7 AND jobs.state = 'assigned' AND jobs.worker_id = $8 AND jobs.attempts = $9)"
            }
        })
        .bind(b.org_id.0)
        .bind(&b.drv_path)
        .bind(b.status.as_str())
        .bind($transitions)
        .bind(b.updated_at)
        .bind(BuildStatus::as_str($from));
        let update = match run {
            None => update,
            Some(r) => update.bind(r.job.0).bind(r.worker.0).bind(i64::from(r.attempts)),
        };
        let n = update.execute($e).await?.rows_affected();
        if n > 0 {
            Some(true)
        } else {
            // Its status moved meanwhile, or it is absent.
            let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM builds WHERE org_id = $1 AND drv_path = $2")
                .bind(b.org_id.0)
                .bind(&b.drv_path)
                .fetch_one($e)
                .await?;
            (found > 0).then_some(false)
        }
    }};
}

impl Evaluations for SqlStorage {
    async fn create_evaluation(&self, evaluation: &Evaluation) -> Result<()> {
        let sql = concat!(
            "INSERT INTO evaluations (",
            evaluation_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let errors = errors_json(&evaluation.errors)?;
        let scheduled = evaluation.trigger == EvaluationTrigger::Schedule;
        let trigger = if scheduled {
            EvaluationTrigger::Poll
        } else {
            evaluation.trigger
        };
        let transitions = transitions_json(&evaluation.transitions, EvaluationStatus::as_str)?;
        let pull_request = evaluation.pull_request.as_ref().map(to_json).transpose()?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(evaluation.id.0)
            .bind(evaluation.project_id.0)
            .bind(&evaluation.commit)
            .bind(evaluation.branch.as_deref())
            .bind(trigger.as_str())
            .bind(evaluation.status.as_str())
            .bind(&errors)
            .bind(&transitions)
            .bind(evaluation.created_at)
            .bind(evaluation.updated_at)
            .bind(scheduled)
            .bind(pull_request.as_deref())
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn evaluation(&self, id: EvaluationId) -> Result<Option<Evaluation>> {
        let sql = concat!("SELECT ", evaluation_columns!(), " FROM evaluations WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, EvaluationRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(EvaluationRow::into_evaluation).transpose()
    }

    async fn evaluations(&self, project: ProjectId, limit: u32) -> Result<Vec<Evaluation>> {
        let sql = concat!(
            "SELECT ",
            evaluation_columns!(),
            " FROM evaluations WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, EvaluationRow>(sql)
            .bind(project.0)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(EvaluationRow::into_evaluation).collect()
    }

    async fn update_evaluation(&self, evaluation: &Evaluation) -> Result<()> {
        let sql = "UPDATE evaluations SET status = $2, errors = $3, updated_at = $4, transitions = $5 WHERE id = $1";
        let errors = errors_json(&evaluation.errors)?;
        let transitions = transitions_json(&evaluation.transitions, EvaluationStatus::as_str)?;
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(evaluation.id.0)
            .bind(evaluation.status.as_str())
            .bind(&errors)
            .bind(evaluation.updated_at)
            .bind(&transitions)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn update_evaluation_if(&self, from: EvaluationStatus, evaluation: &Evaluation) -> Result<bool> {
        let sql = "UPDATE evaluations SET status = $2, errors = $3, updated_at = $4, transitions = $5 \
                   WHERE id = $1 AND status = $6";
        let exists = "SELECT COUNT(*) FROM evaluations WHERE id = $1";
        let errors = errors_json(&evaluation.errors)?;
        let transitions = transitions_json(&evaluation.transitions, EvaluationStatus::as_str)?;
        let written = with_pool!(self, |p| async {
            let n = sqlx::query(sql)
                .bind(evaluation.id.0)
                .bind(evaluation.status.as_str())
                .bind(&errors)
                .bind(evaluation.updated_at)
                .bind(&transitions)
                .bind(from.as_str())
                .execute(p)
                .await?
                .rows_affected();
            if n > 0 {
                return Ok(Some(true));
            }
            // Its status moved meanwhile, or it is absent.
            let found: i64 = sqlx::query_scalar(exists).bind(evaluation.id.0).fetch_one(p).await?;
            Ok::<_, sqlx::Error>((found > 0).then_some(false))
        }
        .await)
        .map_err(db_error)?;
        written.ok_or(StorageError::NotFound)
    }

    async fn delete_evaluation(&self, id: EvaluationId) -> Result<bool> {
        let sql = "DELETE FROM evaluations WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn put_derivations(&self, org: OrgId, derivations: &[Derivation]) -> Result<()> {
        if derivations.is_empty() {
            return Ok(());
        }
        // Within the list, the first of a path wins.
        let mut seen = HashSet::new();
        let derivations: Vec<&Derivation> = derivations
            .iter()
            .filter(|d| seen.insert(d.drv_path.as_str()))
            .collect();
        let encoded = derivations
            .iter()
            .map(|d| {
                Ok((
                    to_json(&d.required_features)?,
                    to_json(&d.outputs)?,
                    to_json(&d.inputs)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // A few multi-row statements for the whole list, in one transaction.
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut added: HashSet<String> = HashSet::new();
            for (chunk, encoded) in derivations
                .chunks(rows_per_statement(6, 0))
                .zip(encoded.chunks(rows_per_statement(6, 0)))
            {
                let known = format!(
                    "INSERT INTO derivations (drv_path) VALUES {} ON CONFLICT (drv_path) DO NOTHING",
                    value_rows(chunk.len(), 1, 1)
                );
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query(sqlx::AssertSqlSafe(known)).persistent(false);
                for d in chunk {
                    q = q.bind(d.drv_path.as_str());
                }
                q.execute(&mut *tx).await?;
                let insert = format!(
                    "INSERT INTO org_derivations (org_id, drv_path, system, required_features, outputs, inputs) \
                     VALUES {} ON CONFLICT (org_id, drv_path) DO NOTHING RETURNING drv_path",
                    value_rows(chunk.len(), 6, 1)
                );
                // Only numbered placeholders are formatted into the text.
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(insert)).persistent(false);
                for (d, (features, outputs, inputs)) in chunk.iter().zip(encoded) {
                    q = q
                        .bind(org.0)
                        .bind(d.drv_path.as_str())
                        .bind(d.system.as_str())
                        .bind(features.as_str())
                        .bind(outputs.as_str())
                        .bind(inputs.as_str());
                }
                added.extend(q.fetch_all(&mut *tx).await?);
            }
            // The edges of the derivations stored now (one kept from before has its own already).
            let edges: Vec<(&str, &str)> = derivations
                .iter()
                .filter(|d| added.contains(&d.drv_path))
                .flat_map(|d| {
                    d.inputs
                        .iter()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .map(|input| (d.drv_path.as_str(), input.as_str()))
                })
                .collect();
            for chunk in edges.chunks(rows_per_statement(2, 1)) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
                    .collect();
                let insert = format!(
                    "INSERT INTO derivation_inputs (org_id, drv_path, input) VALUES {} ON CONFLICT DO NOTHING",
                    rows.join(", ")
                );
                // Only numbered placeholders are formatted into the text.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(insert)).persistent(false).bind(org.0);
                for (drv_path, input) in chunk {
                    q = q.bind(*drv_path).bind(*input);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn derivation(&self, org: OrgId, drv_path: &str) -> Result<Option<Derivation>> {
        let sql = "SELECT drv_path, system, required_features, outputs, inputs FROM org_derivations \
                   WHERE org_id = $1 AND drv_path = $2";
        let row = with_pool!(self, |p| sqlx::query_as::<_, DerivationRow>(sql)
            .bind(org.0)
            .bind(drv_path)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(DerivationRow::into_derivation).transpose()
    }

    async fn derivations(&self, org: OrgId, drv_paths: &[String]) -> Result<Vec<Derivation>> {
        let wanted: Vec<&String> = drv_paths.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let mut found = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(rows_per_statement(1, 1)) {
            let sql = format!(
                "SELECT drv_path, system, required_features, outputs, inputs FROM org_derivations \
                 WHERE org_id = $1 AND drv_path IN ({})",
                placeholders(chunk.len(), 2)
            );
            let rows = with_pool!(self, |p| {
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query_as::<_, DerivationRow>(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(org.0);
                for path in chunk {
                    q = q.bind(path.as_str());
                }
                q.fetch_all(p).await
            })
            .map_err(db_error)?;
            for row in rows {
                found.push(row.into_derivation()?);
            }
        }
        found.sort_by(|a, b| a.drv_path.cmp(&b.drv_path));
        Ok(found)
    }

    async fn add_entry_points(&self, evaluation: EvaluationId, entry_points: &[EntryPoint]) -> Result<()> {
        if entry_points.iter().any(|e| e.evaluation_id != evaluation) {
            return Err(StorageError::Conflict("entry point evaluation".to_owned()));
        }
        if entry_points.is_empty() {
            return if self.evaluation_exists(evaluation).await? {
                Ok(())
            } else {
                Err(StorageError::NotFound)
            };
        }
        // The foreign keys report a missing evaluation or derivation (NotFound); the transaction is then
        // dropped, undoing the rows already written.
        // An attribute given twice takes its last derivation (one statement may not change a row twice).
        let mut last: BTreeMap<&str, &str> = BTreeMap::new();
        for entry_point in entry_points {
            last.insert(&entry_point.attribute, &entry_point.drv_path);
        }
        let last: Vec<(&str, &str)> = last.into_iter().collect();
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            for chunk in last.chunks(rows_per_statement(2, 1)) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO entry_points (evaluation_id, attribute, drv_path) VALUES {} \
                     ON CONFLICT (evaluation_id, attribute) DO UPDATE SET drv_path = excluded.drv_path",
                    rows.join(", ")
                );
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(evaluation.0);
                for (attribute, drv_path) in chunk {
                    q = q.bind(*attribute).bind(*drv_path);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn entry_points(&self, evaluation: EvaluationId) -> Result<Vec<EntryPoint>> {
        let sql = "SELECT evaluation_id, attribute, drv_path FROM entry_points WHERE evaluation_id = $1 \
                   ORDER BY attribute";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, EntryPointRow>(sql)
            .bind(evaluation.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows.into_iter().map(EntryPointRow::into_entry_point).collect())
    }

    async fn link_builds(
        &self,
        evaluation: EvaluationId,
        org: OrgId,
        drv_paths: &[String],
        at: Timestamp,
    ) -> Result<Vec<Build>> {
        let wanted: BTreeSet<&str> = drv_paths.iter().map(String::as_str).collect();
        if wanted.is_empty() {
            let org_exists = "SELECT 1 FROM orgs WHERE id = $1";
            let found = with_pool!(self, |p| sqlx::query_scalar::<_, i32>(org_exists)
                .bind(org.0)
                .fetch_optional(p)
                .await)
            .map_err(db_error)?;
            return if found.is_some() && self.evaluation_exists(evaluation).await? {
                Ok(Vec::new())
            } else {
                Err(StorageError::NotFound)
            };
        }
        // Writes first, so the foreign keys report a missing organization, derivation or evaluation (NotFound)
        // and an SQLite transaction never has to upgrade from reading to writing.
        let wanted: Vec<&str> = wanted.into_iter().collect();
        let queued = transitions_json(&Build::queued(org, "", at).transitions, BuildStatus::as_str)?;
        let ids: Vec<Uuid> = wanted.iter().map(|_| BuildId::new().0).collect();
        let mut rows = with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let per = rows_per_statement(2, 4);
            for (chunk, ids) in wanted.chunks(per).zip(ids.chunks(per)) {
                // Every build shares the organization, status, transitions and time: $1 to $4.
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, $1, ${}, $2, $3, $4, $4)", 2 * i + 5, 2 * i + 6))
                    .collect();
                let insert = format!(
                    concat!(
                        "INSERT INTO builds (",
                        build_columns!(),
                        ") VALUES {} ON CONFLICT (org_id, drv_path) DO NOTHING"
                    ),
                    rows.join(", ")
                );
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query(sqlx::AssertSqlSafe(insert))
                    .persistent(false)
                    .bind(org.0)
                    .bind(BuildStatus::Queued.as_str())
                    .bind(&queued)
                    .bind(at);
                for (drv_path, id) in chunk.iter().zip(ids) {
                    q = q.bind(*id).bind(*drv_path);
                }
                q.execute(&mut *tx).await?;
                let link = format!(
                    "INSERT INTO evaluation_builds (evaluation_id, org_id, drv_path) VALUES {} \
                     ON CONFLICT (evaluation_id, drv_path) DO NOTHING",
                    (0..chunk.len())
                        .map(|i| format!("($1, $2, ${})", i + 3))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                // Only numbered placeholders are formatted into the text.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(link))
                    .persistent(false)
                    .bind(evaluation.0)
                    .bind(org.0);
                for drv_path in chunk {
                    q = q.bind(*drv_path);
                }
                q.execute(&mut *tx).await?;
            }
            let mut rows = Vec::with_capacity(wanted.len());
            for chunk in wanted.chunks(rows_per_statement(1, 1)) {
                let select = format!(
                    concat!(
                        "SELECT ",
                        build_columns!(),
                        " FROM builds WHERE org_id = $1 AND drv_path IN ({})"
                    ),
                    placeholders(chunk.len(), 2)
                );
                // Only numbered placeholders are formatted into the text.
                let mut q = sqlx::query_as::<_, BuildRow>(sqlx::AssertSqlSafe(select))
                    .persistent(false)
                    .bind(org.0);
                for drv_path in chunk {
                    q = q.bind(*drv_path);
                }
                rows.extend(q.fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(rows)
        }
        .await)
        .map_err(db_error)?;
        rows.sort_by(|a, b| a.drv_path.cmp(&b.drv_path));
        rows.into_iter().map(BuildRow::into_build).collect()
    }

    async fn build(&self, org: OrgId, drv_path: &str) -> Result<Option<Build>> {
        let sql = concat!(
            "SELECT ",
            build_columns!(),
            " FROM builds WHERE org_id = $1 AND drv_path = $2"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, BuildRow>(sql)
            .bind(org.0)
            .bind(drv_path)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(BuildRow::into_build).transpose()
    }

    async fn builds(&self, org: OrgId, drv_paths: &[String]) -> Result<Vec<Build>> {
        let wanted: Vec<&String> = drv_paths.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let mut found = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(rows_per_statement(1, 1)) {
            let sql = format!(
                concat!(
                    "SELECT ",
                    build_columns!(),
                    " FROM builds WHERE org_id = $1 AND drv_path IN ({})"
                ),
                placeholders(chunk.len(), 2)
            );
            let rows = with_pool!(self, |p| {
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query_as::<_, BuildRow>(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(org.0);
                for path in chunk {
                    q = q.bind(path.as_str());
                }
                q.fetch_all(p).await
            })
            .map_err(db_error)?;
            for row in rows {
                found.push(row.into_build()?);
            }
        }
        found.sort_by(|a, b| a.drv_path.cmp(&b.drv_path));
        Ok(found)
    }

    async fn build_statuses(&self, org: OrgId, drv_paths: &[String]) -> Result<Vec<(String, BuildStatus)>> {
        let wanted: Vec<&String> = drv_paths.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let mut found = Vec::with_capacity(wanted.len());
        // Well under SQLite's and PostgreSQL's limits on bound parameters.
        for chunk in wanted.chunks(500) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT drv_path, status FROM builds WHERE org_id = $1 AND drv_path IN ({})",
                placeholders.join(", ")
            );
            let rows = with_pool!(self, |p| {
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(org.0);
                for path in chunk {
                    q = q.bind(path.as_str());
                }
                q.fetch_all(p).await
            })
            .map_err(db_error)?;
            for (path, status) in rows {
                let status = BuildStatus::parse(&status).ok_or_else(|| corrupt("build status", &status))?;
                found.push((path, status));
            }
        }
        Ok(found)
    }

    async fn count_builds(&self, evaluation: EvaluationId, statuses: &[BuildStatus]) -> Result<u64> {
        if statuses.is_empty() {
            return Ok(0);
        }
        let placeholders: Vec<String> = (0..statuses.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM evaluation_builds l JOIN builds b ON b.org_id = l.org_id AND b.drv_path = l.drv_path \
             WHERE l.evaluation_id = $1 AND b.status IN ({})",
            placeholders.join(", ")
        );
        let count = with_pool!(self, |p| {
            // Only numbered placeholders are formatted into the text.
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone())).bind(evaluation.0);
            for status in statuses {
                q = q.bind(status.as_str());
            }
            q.fetch_one(p).await
        })
        .map_err(db_error)?;
        stored_size(count, "build count")
    }

    async fn has_builds(&self, evaluation: EvaluationId, statuses: &[BuildStatus]) -> Result<bool> {
        if statuses.is_empty() {
            return Ok(false);
        }
        let placeholders: Vec<String> = (0..statuses.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT 1 FROM evaluation_builds l JOIN builds b ON b.org_id = l.org_id AND b.drv_path = l.drv_path \
             WHERE l.evaluation_id = $1 AND b.status IN ({}) LIMIT 1",
            placeholders.join(", ")
        );
        let found = with_pool!(self, |p| {
            // Only numbered placeholders are formatted into the text.
            let mut q = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(sql.clone())).bind(evaluation.0);
            for status in statuses {
                q = q.bind(status.as_str());
            }
            q.fetch_optional(p).await
        })
        .map_err(db_error)?;
        Ok(found.is_some())
    }

    async fn build_by_id(&self, id: BuildId) -> Result<Option<Build>> {
        let sql = concat!("SELECT ", build_columns!(), " FROM builds WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, BuildRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(BuildRow::into_build).transpose()
    }

    async fn put_build_log(&self, log: &BuildLog) -> Result<()> {
        let sql = "INSERT INTO build_logs (build_id, compressed, size, omitted, created_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (build_id) DO UPDATE SET \
                   compressed = excluded.compressed, size = excluded.size, omitted = excluded.omitted, \
                   created_at = excluded.created_at";
        let size = db_size(log.size, "log size")?;
        let omitted = db_size(log.omitted, "log omitted")?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(log.build_id.0)
            .bind(&log.compressed)
            .bind(size)
            .bind(omitted)
            .bind(log.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn build_log(&self, build: BuildId) -> Result<Option<BuildLog>> {
        let sql = "SELECT build_id, compressed, size, omitted, created_at FROM build_logs WHERE build_id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, BuildLogRow>(sql)
            .bind(build.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(|r| {
            Ok(BuildLog {
                build_id: BuildId(r.build_id),
                compressed: r.compressed,
                size: stored_size(r.size, "log size")?,
                omitted: stored_size(r.omitted, "log omitted")?,
                created_at: r.created_at,
            })
        })
        .transpose()
    }

    async fn builds_of_evaluation(&self, evaluation: EvaluationId) -> Result<Vec<Build>> {
        let sql = "SELECT b.id, b.org_id, b.drv_path, b.status, b.transitions, b.created_at, b.updated_at \
                   FROM evaluation_builds l JOIN builds b ON b.org_id = l.org_id AND b.drv_path = l.drv_path \
                   WHERE l.evaluation_id = $1 ORDER BY b.drv_path";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, BuildRow>(sql)
            .bind(evaluation.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(BuildRow::into_build).collect()
    }

    async fn update_build(&self, build: &Build) -> Result<()> {
        let sql =
            "UPDATE builds SET status = $3, transitions = $4, updated_at = $5 WHERE org_id = $1 AND drv_path = $2";
        let transitions = transitions_json(&build.transitions, BuildStatus::as_str)?;
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(build.org_id.0)
            .bind(&build.drv_path)
            .bind(build.status.as_str())
            .bind(&transitions)
            .bind(build.updated_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn update_build_if(&self, from: BuildStatus, build: &Build) -> Result<bool> {
        let transitions = transitions_json(&build.transitions, BuildStatus::as_str)?;
        let written = with_pool!(self, |p| async {
            let written: Option<bool> = update_build_from!(p, from, build, &transitions);
            Ok::<_, sqlx::Error>(written)
        }
        .await)
        .map_err(db_error)?;
        written.ok_or(StorageError::NotFound)
    }

    async fn end_builds(&self, builds: &[(BuildStatus, Build, Option<Run>)], logs: &[BuildLog]) -> Result<Vec<bool>> {
        // The statements of `update_build_if` and `put_build_log`, in one transaction: a build that is absent
        // rolls everything back.
        let put = "INSERT INTO build_logs (build_id, compressed, size, omitted, created_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (build_id) DO UPDATE SET \
                   compressed = excluded.compressed, size = excluded.size, omitted = excluded.omitted, \
                   created_at = excluded.created_at";
        if builds.is_empty() && logs.is_empty() {
            return Ok(Vec::new());
        }
        let mut updates = Vec::with_capacity(builds.len());
        for (from, b, run) in builds {
            updates.push((*from, b, transitions_json(&b.transitions, BuildStatus::as_str)?, *run));
        }
        let mut puts = Vec::with_capacity(logs.len());
        for l in logs {
            puts.push((l, db_size(l.size, "log size")?, db_size(l.omitted, "log omitted")?));
        }
        let written = with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut written = Vec::with_capacity(updates.len());
            for (from, b, transitions, run) in &updates {
                match update_build_from!(&mut *tx, *from, *b, transitions, *run) {
                    Some(w) => written.push(w),
                    None => {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                }
            }
            for (l, size, omitted) in &puts {
                sqlx::query(put)
                    .bind(l.build_id.0)
                    .bind(&l.compressed)
                    .bind(*size)
                    .bind(*omitted)
                    .bind(l.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Some(written))
        }
        .await)
        .map_err(db_error)?;
        written.ok_or(StorageError::NotFound)
    }

    async fn update_builds_if(&self, builds: &[(BuildStatus, Build)]) -> Result<Vec<BuildSwap>> {
        let mut listed = HashSet::new();
        if !builds
            .iter()
            .all(|(_, b)| listed.insert((b.org_id.0, b.drv_path.as_str())))
        {
            return Err(StorageError::Conflict("build listed twice".into()));
        }
        let rows = builds
            .iter()
            .map(|(from, b)| Ok((*from, b, transitions_json(&b.transitions, BuildStatus::as_str)?)))
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One statement per group of builds (UPDATE … FROM VALUES … RETURNING, on both engines), each row
        // written only where its status is still the one given; then, for the few that were not, what they are.
        let found = with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut written: HashSet<(Uuid, String)> = HashSet::new();
            for chunk in rows.chunks(rows_per_statement(6, 0)) {
                let sql = format!(
                    "UPDATE builds SET status = v.column3, transitions = v.column4, updated_at = v.column5 \
                     FROM (VALUES {}) AS v \
                     WHERE builds.org_id = v.column1 AND builds.drv_path = v.column2 AND builds.status = v.column6 \
                     RETURNING builds.org_id, builds.drv_path",
                    value_rows(chunk.len(), 6, 1)
                );
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query_as::<_, (Uuid, String)>(sqlx::AssertSqlSafe(sql)).persistent(false);
                for (from, b, transitions) in chunk {
                    q = q
                        .bind(b.org_id.0)
                        .bind(b.drv_path.as_str())
                        .bind(b.status.as_str())
                        .bind(transitions.as_str())
                        .bind(b.updated_at)
                        .bind(from.as_str());
                }
                written.extend(q.fetch_all(&mut *tx).await?);
            }
            let mut found = Vec::with_capacity(rows.len());
            for (_, b, _) in &rows {
                if written.contains(&(b.org_id.0, b.drv_path.clone())) {
                    found.push(Ok(BuildSwap::Written));
                    continue;
                }
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM builds WHERE org_id = $1 AND drv_path = $2")
                        .bind(b.org_id.0)
                        .bind(&b.drv_path)
                        .fetch_optional(&mut *tx)
                        .await?;
                found.push(match status {
                    None => Ok(BuildSwap::Absent),
                    Some(s) => BuildStatus::parse(&s)
                        .map(BuildSwap::Moved)
                        .ok_or_else(|| corrupt("build status", &s)),
                });
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(found)
        }
        .await)
        .map_err(db_error)?;
        found.into_iter().collect()
    }

    async fn dependents(&self, org: OrgId, drv_path: &str) -> Result<Vec<String>> {
        let sql = "SELECT drv_path FROM derivation_inputs WHERE org_id = $1 AND input = $2 ORDER BY drv_path";
        with_pool!(self, |p| sqlx::query_scalar::<_, String>(sql)
            .bind(org.0)
            .bind(drv_path)
            .fetch_all(p)
            .await)
        .map_err(db_error)
    }

    async fn evaluations_needing(&self, org: OrgId, drv_path: &str) -> Result<Vec<EvaluationId>> {
        let sql = "SELECT e.id FROM evaluation_builds l JOIN evaluations e ON e.id = l.evaluation_id \
                   WHERE l.org_id = $1 AND l.drv_path = $2 ORDER BY e.created_at, e.id";
        let ids = with_pool!(self, |p| sqlx::query_scalar::<_, Uuid>(sql)
            .bind(org.0)
            .bind(drv_path)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(ids.into_iter().map(EvaluationId).collect())
    }
}

impl SqlStorage {
    async fn evaluation_exists(&self, id: EvaluationId) -> Result<bool> {
        let sql = "SELECT 1 FROM evaluations WHERE id = $1";
        let found = with_pool!(self, |p| sqlx::query_scalar::<_, i32>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(found.is_some())
    }
}
