//! The persistent job queue. Each state change is one conditional `UPDATE`, so it is a compare-and-set on
//! both engines; build-once is two partial unique indexes over the active (queued or assigned) jobs.

use crate::BeginWrite;
use crate::{
    SqlStorage, corrupt, db_error, from_json, placeholders, rows_per_statement, to_json, value_rows, with_pool,
};
use chrono::{DateTime, Utc};
use gradient_domain::model::{JobId, JobKind, JobRecord, JobState, Timestamp};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Queue, Result, Run};
use gradient_domain::{EvaluationId, OrgId, WorkerId};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

macro_rules! job_columns {
    () => {
        "id, org_id, kind, evaluation_id, derivation, system, required_features, state, worker_id, assigned_at, \
         attempts, created_at"
    };
}

/// How many times `enqueue_job` tries again when the job in its way finishes between its statements.
const ENQUEUE_TRIES: usize = 5;

#[derive(sqlx::FromRow, Clone)]
struct JobRow {
    id: Uuid,
    org_id: Uuid,
    kind: String,
    evaluation_id: Option<Uuid>,
    derivation: Option<String>,
    system: Option<String>,
    required_features: Option<String>,
    state: String,
    worker_id: Option<Uuid>,
    assigned_at: Option<DateTime<Utc>>,
    attempts: i64,
    created_at: DateTime<Utc>,
}

impl JobRow {
    fn into_job(self) -> Result<JobRecord> {
        let kind = match (
            self.kind.as_str(),
            self.evaluation_id,
            self.derivation,
            self.system,
            self.required_features,
        ) {
            ("evaluate", Some(evaluation_id), None, None, None) => JobKind::Evaluate {
                evaluation_id: EvaluationId(evaluation_id),
            },
            ("build", None, Some(derivation), Some(system), Some(features)) => JobKind::Build {
                derivation,
                system,
                required_features: from_json(&features, "job required features")?,
            },
            (kind, ..) => return Err(corrupt("job kind", format!("{kind:?} with mismatched fields"))),
        };
        let state = match (self.state.as_str(), self.worker_id, self.assigned_at) {
            ("queued", None, None) => JobState::Queued,
            ("assigned", Some(worker), Some(since)) => JobState::Assigned {
                worker: WorkerId(worker),
                since,
            },
            ("done", None, None) => JobState::Done,
            ("failed", None, None) => JobState::Failed,
            (state, ..) => return Err(corrupt("job state", format!("{state:?} with mismatched assignment"))),
        };
        Ok(JobRecord {
            id: JobId(self.id),
            org_id: OrgId(self.org_id),
            kind,
            state,
            created_at: self.created_at,
            attempts: u32::try_from(self.attempts).map_err(|e| corrupt("job attempts", e))?,
        })
    }
}

/// A job's kind as stored: (kind, evaluation id, derivation, system, required features as JSON).
type KindColumns<'a> = (
    &'static str,
    Option<Uuid>,
    Option<&'a str>,
    Option<&'a str>,
    Option<String>,
);

fn kind_columns(kind: &JobKind) -> Result<KindColumns<'_>> {
    Ok(match kind {
        JobKind::Evaluate { evaluation_id } => ("evaluate", Some(evaluation_id.0), None, None, None),
        JobKind::Build {
            derivation,
            system,
            required_features,
        } => (
            "build",
            None,
            Some(derivation.as_str()),
            Some(system.as_str()),
            Some(to_json(required_features)?),
        ),
    })
}

/// A job's state as stored: (state, assigned worker, assignment time).
fn state_columns(state: &JobState) -> (&'static str, Option<Uuid>, Option<Timestamp>) {
    match state {
        JobState::Queued => ("queued", None, None),
        JobState::Assigned { worker, since } => ("assigned", Some(worker.0), Some(*since)),
        JobState::Done => ("done", None, None),
        JobState::Failed => ("failed", None, None),
    }
}

/// Ends a run's job (`Queue::finish_job`): $1 job, $2 worker, $3 attempts, $4 its outcome. A compare-and-set on
/// the run: the job must still be assigned to that worker and taken back that many times.
const FINISH_RUN: &str = "UPDATE jobs SET state = $4, worker_id = NULL, assigned_at = NULL \
                          WHERE id = $1 AND state = 'assigned' AND worker_id = $2 AND attempts = $3";

impl Queue for SqlStorage {
    async fn enqueue_job(&self, job: &JobRecord) -> Result<JobRecord> {
        // The insert does nothing when a unique rule stands in its way: the build-once indexes or the id. The
        // statements that follow tell which (a missing organization still fails the foreign key: NotFound).
        let insert = concat!(
            "INSERT INTO jobs (",
            job_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING"
        );
        let active = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE org_id = $1 AND state IN ('queued', 'assigned') ",
            "AND (evaluation_id = $2 OR derivation = $3)"
        );
        let taken = "SELECT 1 FROM jobs WHERE id = $1";
        let (kind, evaluation_id, derivation, system, features) = kind_columns(&job.kind)?;
        let (state, worker, assigned_at) = state_columns(&job.state);
        for _ in 0..ENQUEUE_TRIES {
            let inserted = with_pool!(self, |p| sqlx::query(insert)
                .bind(job.id.0)
                .bind(job.org_id.0)
                .bind(kind)
                .bind(evaluation_id)
                .bind(derivation)
                .bind(system)
                .bind(features.as_deref())
                .bind(state)
                .bind(worker)
                .bind(assigned_at)
                .bind(i64::from(job.attempts))
                .bind(job.created_at)
                .execute(p)
                .await
                .map(|r| r.rows_affected()))
            .map_err(db_error)?;
            if inserted > 0 {
                return Ok(job.clone());
            }
            if job.state.is_active() {
                let existing = with_pool!(self, |p| sqlx::query_as::<_, JobRow>(active)
                    .bind(job.org_id.0)
                    .bind(evaluation_id)
                    .bind(derivation)
                    .fetch_optional(p)
                    .await)
                .map_err(db_error)?;
                if let Some(existing) = existing {
                    return existing.into_job();
                }
            }
            let id_taken = with_pool!(self, |p| sqlx::query_scalar::<_, i32>(taken)
                .bind(job.id.0)
                .fetch_optional(p)
                .await)
            .map_err(db_error)?;
            if id_taken.is_some() {
                return Err(StorageError::Conflict("job id".to_owned()));
            }
            // The active job in the way finished (or its organization went) in between: try again.
        }
        Err(StorageError::Unavailable(
            "enqueueing a job kept racing with concurrent changes".to_owned(),
        ))
    }

    async fn enqueue_jobs(&self, jobs: &[JobRecord]) -> Result<Vec<JobRecord>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let columns = jobs
            .iter()
            .map(|j| Ok((kind_columns(&j.kind)?, state_columns(&j.state))))
            .collect::<Result<Vec<_>>>()?;
        for _ in 0..ENQUEUE_TRIES {
            // As `enqueue_job`, a few statements for the whole list: the inserts do nothing where a unique rule
            // stands in the way; the active jobs then answer for theirs, and a taken id fails the whole list.
            let standing: Option<Vec<Result<JobRecord>>> = with_pool!(self, |p| async {
                let mut tx = p.begin_write().await?;
                let mut inserted: HashSet<Uuid> = HashSet::new();
                let per = rows_per_statement(12, 0);
                for (chunk, cols) in jobs.chunks(per).zip(columns.chunks(per)) {
                    let sql = format!(
                        concat!(
                            "INSERT INTO jobs (",
                            job_columns!(),
                            ") VALUES {} ON CONFLICT DO NOTHING RETURNING id"
                        ),
                        value_rows(chunk.len(), 12, 1)
                    );
                    // Only numbered placeholders are formatted into the text.
                    // Not kept prepared: the text changes with the number of values (see the crate documentation).
                    let mut q = sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(sql)).persistent(false);
                    for (job, ((kind, evaluation_id, derivation, system, features), (state, worker, at))) in
                        chunk.iter().zip(cols)
                    {
                        q = q
                            .bind(job.id.0)
                            .bind(job.org_id.0)
                            .bind(*kind)
                            .bind(*evaluation_id)
                            .bind(*derivation)
                            .bind(*system)
                            .bind(features.as_deref())
                            .bind(*state)
                            .bind(*worker)
                            .bind(*at)
                            .bind(i64::from(job.attempts))
                            .bind(job.created_at);
                    }
                    inserted.extend(q.fetch_all(&mut *tx).await?);
                }
                // The active jobs standing for the subjects of those not inserted, per organization.
                let mut subjects: HashMap<Uuid, (Vec<&str>, Vec<Uuid>)> = HashMap::new();
                for (job, ((_, evaluation_id, derivation, ..), _)) in jobs.iter().zip(&columns) {
                    if inserted.contains(&job.id.0) || !job.state.is_active() {
                        continue;
                    }
                    let (drvs, evaluations) = subjects.entry(job.org_id.0).or_default();
                    drvs.extend(derivation);
                    evaluations.extend(evaluation_id);
                }
                let mut active: HashMap<(Uuid, Option<Uuid>, Option<String>), JobRow> = HashMap::new();
                for (org, (drvs, evaluations)) in &subjects {
                    for chunk in drvs.chunks(rows_per_statement(1, 1)) {
                        let sql = format!(
                            concat!(
                                "SELECT ",
                                job_columns!(),
                                " FROM jobs WHERE org_id = $1 AND state IN ('queued', 'assigned') ",
                                "AND derivation IN ({})"
                            ),
                            placeholders(chunk.len(), 2)
                        );
                        // Only numbered placeholders are formatted into the text.
                        let mut q = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
                            .persistent(false)
                            .bind(*org);
                        for d in chunk {
                            q = q.bind(*d);
                        }
                        for row in q.fetch_all(&mut *tx).await? {
                            active.insert((row.org_id, None, row.derivation.clone()), row);
                        }
                    }
                    for chunk in evaluations.chunks(rows_per_statement(1, 1)) {
                        let sql = format!(
                            concat!(
                                "SELECT ",
                                job_columns!(),
                                " FROM jobs WHERE org_id = $1 AND state IN ('queued', 'assigned') ",
                                "AND evaluation_id IN ({})"
                            ),
                            placeholders(chunk.len(), 2)
                        );
                        // Only numbered placeholders are formatted into the text.
                        let mut q = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql))
                            .persistent(false)
                            .bind(*org);
                        for e in chunk {
                            q = q.bind(*e);
                        }
                        for row in q.fetch_all(&mut *tx).await? {
                            active.insert((row.org_id, row.evaluation_id, None), row);
                        }
                    }
                }
                let mut standing = Vec::with_capacity(jobs.len());
                let mut unresolved = Vec::new();
                for (job, ((_, evaluation_id, derivation, ..), _)) in jobs.iter().zip(&columns) {
                    if inserted.contains(&job.id.0) {
                        standing.push(Ok(job.clone()));
                        continue;
                    }
                    let key = (job.org_id.0, *evaluation_id, derivation.map(str::to_owned));
                    match active.get(&key).filter(|_| job.state.is_active()) {
                        Some(row) => standing.push(row.clone().into_job()),
                        None => {
                            unresolved.push(job.id.0);
                            standing.push(Err(StorageError::NotFound));
                        }
                    }
                }
                for chunk in unresolved.chunks(rows_per_statement(1, 0)) {
                    let sql = format!("SELECT id FROM jobs WHERE id IN ({})", placeholders(chunk.len(), 1));
                    // Only numbered placeholders are formatted into the text.
                    let mut q = sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(sql)).persistent(false);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    if !q.fetch_all(&mut *tx).await?.is_empty() {
                        // Dropped, the transaction undoes the inserts.
                        return Ok(Err(StorageError::Conflict("job id".to_owned())));
                    }
                }
                if !unresolved.is_empty() {
                    // The active job in the way finished (or its organization went) in between: try again.
                    return Ok(Ok(None));
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Ok(Some(standing)))
            }
            .await)
            .map_err(db_error)??;
            if let Some(standing) = standing {
                return standing.into_iter().collect();
            }
        }
        Err(StorageError::Unavailable(
            "enqueueing jobs kept racing with concurrent changes".to_owned(),
        ))
    }

    async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        let sql = concat!("SELECT ", job_columns!(), " FROM jobs WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, JobRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(JobRow::into_job).transpose()
    }

    async fn queued_jobs(&self, limit: u32) -> Result<Vec<JobRecord>> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'queued' ORDER BY created_at, id LIMIT $1"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, JobRow>(sql)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn queued_jobs_of(&self, org: OrgId, limit: u32) -> Result<Vec<JobRecord>> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'queued' AND org_id = $2 ORDER BY created_at, id LIMIT $1"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, JobRow>(sql)
            .bind(i64::from(limit))
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn assign_job(&self, id: JobId, worker: WorkerId, at: Timestamp) -> Result<bool> {
        let sql = "UPDATE jobs SET state = 'assigned', worker_id = $2, assigned_at = $3 \
                   WHERE id = $1 AND state = 'queued'";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(worker.0)
            .bind(at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn assign_jobs(&self, assignments: &[(JobId, WorkerId)], at: Timestamp) -> Result<Vec<JobId>> {
        // Per worker, the jobs for it (a job listed twice goes to its first worker).
        let mut seen = HashSet::new();
        let mut per_worker: Vec<(WorkerId, Vec<Uuid>)> = Vec::new();
        for (job, worker) in assignments {
            if !seen.insert(*job) {
                continue;
            }
            match per_worker.iter_mut().find(|(w, _)| w == worker) {
                Some((_, jobs)) => jobs.push(job.0),
                None => per_worker.push((*worker, vec![job.0])),
            }
        }
        if per_worker.is_empty() {
            return Ok(Vec::new());
        }
        let assigned: HashSet<Uuid> = with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut assigned = HashSet::new();
            for (worker, jobs) in &per_worker {
                for chunk in jobs.chunks(rows_per_statement(1, 2)) {
                    let sql = format!(
                        "UPDATE jobs SET state = 'assigned', worker_id = $1, assigned_at = $2 \
                         WHERE state = 'queued' AND id IN ({}) RETURNING id",
                        placeholders(chunk.len(), 3)
                    );
                    // Only numbered placeholders are formatted into the text.
                    // Not kept prepared: the text changes with the number of values (see the crate documentation).
                    let mut q = sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(sql))
                        .persistent(false)
                        .bind(worker.0)
                        .bind(at);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    assigned.extend(q.fetch_all(&mut *tx).await?);
                }
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(assigned)
        }
        .await)
        .map_err(db_error)?;
        let mut answered = HashSet::new();
        Ok(assignments
            .iter()
            .map(|(job, _)| *job)
            .filter(|job| assigned.contains(&job.0) && answered.insert(*job))
            .collect())
    }

    async fn requeue_jobs(&self, worker: WorkerId, jobs: &[JobId]) -> Result<u64> {
        let mut requeued = 0;
        // Well under SQLite's and PostgreSQL's limits on bound parameters.
        for chunk in jobs.chunks(500) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            // Attempts stop at u32::MAX, as in memory, so the row still reads back.
            let sql = format!(
                "UPDATE jobs SET state = 'queued', worker_id = NULL, assigned_at = NULL, \
                 attempts = CASE WHEN attempts < 4294967295 THEN attempts + 1 ELSE attempts END \
                 WHERE state = 'assigned' AND worker_id = $1 AND id IN ({})",
                placeholders.join(", ")
            );
            requeued += with_pool!(self, |p| {
                // Only numbered placeholders are formatted into the text.
                // Not kept prepared: the text changes with the number of values (see the crate documentation).
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .persistent(false)
                    .bind(worker.0);
                for job in chunk {
                    q = q.bind(job.0);
                }
                q.execute(p).await.map(|r| r.rows_affected())
            })
            .map_err(db_error)?;
        }
        Ok(requeued)
    }

    async fn finish_job(&self, run: Run, done: bool) -> Result<bool> {
        let outcome = if done { "done" } else { "failed" };
        let finished = with_pool!(self, |p| sqlx::query(FINISH_RUN)
            .bind(run.job.0)
            .bind(run.worker.0)
            .bind(i64::from(run.attempts))
            .bind(outcome)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(finished > 0)
    }

    async fn finish_jobs(&self, runs: &[(Run, bool)]) -> Result<Vec<bool>> {
        // One statement per job (the text stays the same whatever the batch's size), in one transaction.
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            let mut ended = Vec::with_capacity(runs.len());
            for (run, done) in runs {
                let n = sqlx::query(FINISH_RUN)
                    .bind(run.job.0)
                    .bind(run.worker.0)
                    .bind(i64::from(run.attempts))
                    .bind(if *done { "done" } else { "failed" })
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                ended.push(n > 0);
            }
            tx.commit().await?;
            Ok(ended)
        }
        .await)
        .map_err(db_error)
    }

    async fn cancel_queued_job(&self, id: JobId) -> Result<bool> {
        let sql = "UPDATE jobs SET state = 'failed' WHERE id = $1 AND state = 'queued'";
        let cancelled = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(cancelled > 0)
    }

    async fn jobs_assigned_to(&self, worker: WorkerId) -> Result<Vec<JobRecord>> {
        let sql = concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = 'assigned' AND worker_id = $1 ORDER BY created_at, id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, JobRow>(sql)
            .bind(worker.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(JobRow::into_job).collect()
    }
}
