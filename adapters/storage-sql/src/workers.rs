//! Workers registered under organizations.

use crate::{SqlStorage, db_error, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::WorkerRegistration;
use gradient_domain::ports::storage::{Result, Workers};
use gradient_domain::{OrgId, PeerId, WorkerId};
use uuid::Uuid;

macro_rules! registration_columns {
    () => {
        "peer_id, org_id, worker_id, proof_key, created_at, managed, url"
    };
}
pub(crate) use registration_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct RegistrationRow {
    peer_id: Uuid,
    org_id: Uuid,
    worker_id: Uuid,
    proof_key: String,
    created_at: DateTime<Utc>,
    managed: bool,
    url: Option<String>,
}

impl From<RegistrationRow> for WorkerRegistration {
    fn from(r: RegistrationRow) -> Self {
        WorkerRegistration {
            peer_id: PeerId(r.peer_id),
            org_id: OrgId(r.org_id),
            worker_id: WorkerId(r.worker_id),
            proof_key: gradient_domain::crypt::Sealed(r.proof_key),
            created_at: r.created_at,
            managed: r.managed,
            url: r.url,
        }
    }
}

impl Workers for SqlStorage {
    async fn create_worker_registration(&self, registration: &WorkerRegistration) -> Result<()> {
        // A missing organization fails the foreign key: NotFound.
        let sql = concat!(
            "INSERT INTO worker_registrations (",
            registration_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        );
        with_pool!(self, |p| sqlx::query(sql)
            .bind(registration.peer_id.0)
            .bind(registration.org_id.0)
            .bind(registration.worker_id.0)
            .bind(&registration.proof_key.0)
            .bind(registration.created_at)
            .bind(registration.managed)
            .bind(&registration.url)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn worker_registrations(&self, org: OrgId) -> Result<Vec<WorkerRegistration>> {
        let sql = concat!(
            "SELECT ",
            registration_columns!(),
            " FROM worker_registrations WHERE org_id = $1 ORDER BY created_at, peer_id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, RegistrationRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows.into_iter().map(WorkerRegistration::from).collect())
    }

    async fn worker_registrations_for(&self, worker: WorkerId) -> Result<Vec<WorkerRegistration>> {
        let sql = concat!(
            "SELECT ",
            registration_columns!(),
            " FROM worker_registrations WHERE worker_id = $1 ORDER BY created_at, peer_id"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, RegistrationRow>(sql)
            .bind(worker.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(rows.into_iter().map(WorkerRegistration::from).collect())
    }

    async fn worker_registration(&self, peer: PeerId) -> Result<Option<WorkerRegistration>> {
        let sql = concat!(
            "SELECT ",
            registration_columns!(),
            " FROM worker_registrations WHERE peer_id = $1"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, RegistrationRow>(sql)
            .bind(peer.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.map(WorkerRegistration::from))
    }

    async fn delete_worker_registration(&self, org: OrgId, peer: PeerId) -> Result<bool> {
        let sql = "DELETE FROM worker_registrations WHERE org_id = $1 AND peer_id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(org.0)
            .bind(peer.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn all_worker_registrations(&self) -> Result<Vec<WorkerRegistration>> {
        let sql = concat!(
            "SELECT ",
            registration_columns!(),
            " FROM worker_registrations ORDER BY created_at, peer_id"
        );
        let rows =
            with_pool!(self, |p| sqlx::query_as::<_, RegistrationRow>(sql).fetch_all(p).await).map_err(db_error)?;
        Ok(rows.into_iter().map(WorkerRegistration::from).collect())
    }

    async fn set_worker_proof_key(&self, peer: PeerId, old: &Sealed, new: &Sealed) -> Result<bool> {
        let sql = "UPDATE worker_registrations SET proof_key = $1 WHERE peer_id = $2 AND proof_key = $3";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(&new.0)
            .bind(peer.0)
            .bind(&old.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }
}
