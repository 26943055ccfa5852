//! Organizations' forge integrations: webhook secrets and forge connections (secrets stored sealed, as
//! given), the commit status outbox (`seq` keeps the order reports were enqueued in), and the GitHub App's
//! installations.

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, db_size, stored_size, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::crypt::Sealed;
use gradient_domain::forge::Forge;
use gradient_domain::model::{
    CommitState, ForgeConnection, GithubInstallation, GithubInstallationLink, OrgSshKey, StatusReport, Timestamp,
};
use gradient_domain::ports::storage::{Integrations, Result};
use gradient_domain::{EvaluationId, OrgId, StatusReportId};
use uuid::Uuid;

impl Integrations for SqlStorage {
    async fn set_webhook_secret(&self, org: OrgId, secret: &Sealed, at: Timestamp) -> Result<()> {
        // An unknown organization fails the foreign key: NotFound.
        let sql = "INSERT INTO org_webhook_secrets (org_id, secret, updated_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (org_id) DO UPDATE SET secret = excluded.secret, updated_at = excluded.updated_at";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(org.0)
            .bind(&secret.0)
            .bind(at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn webhook_secret(&self, org: OrgId) -> Result<Option<Sealed>> {
        let sql = "SELECT secret FROM org_webhook_secrets WHERE org_id = $1";
        let secret = with_pool!(self, |p| sqlx::query_scalar::<_, String>(sql)
            .bind(org.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(secret.map(Sealed))
    }

    async fn set_org_ssh_key(&self, key: &OrgSshKey) -> Result<()> {
        // An unknown organization fails the foreign key: NotFound.
        let sql = "INSERT INTO org_ssh_keys (org_id, public_key, private_key, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (org_id) DO UPDATE SET public_key = excluded.public_key, \
                   private_key = excluded.private_key, created_at = excluded.created_at";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(key.org_id.0)
            .bind(&key.public_key)
            .bind(&key.private_key.0)
            .bind(key.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn init_org_ssh_key(&self, key: &OrgSshKey) -> Result<OrgSshKey> {
        let sql = "INSERT INTO org_ssh_keys (org_id, public_key, private_key, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (org_id) DO NOTHING";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(key.org_id.0)
            .bind(&key.public_key)
            .bind(&key.private_key.0)
            .bind(key.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        self.org_ssh_key(key.org_id)
            .await?
            .ok_or(gradient_domain::ports::StorageError::NotFound)
    }

    async fn org_ssh_key(&self, org: OrgId) -> Result<Option<OrgSshKey>> {
        let sql = "SELECT public_key, private_key, created_at FROM org_ssh_keys WHERE org_id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, (String, String, DateTime<Utc>)>(sql)
            .bind(org.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        Ok(row.map(|(public_key, private_key, created_at)| OrgSshKey {
            org_id: org,
            public_key,
            private_key: Sealed(private_key),
            created_at,
        }))
    }

    async fn set_forge_connection(&self, connection: &ForgeConnection, at: Timestamp) -> Result<()> {
        self.set_forge_connection_row(connection, at).await
    }

    async fn forge_connection(&self, org: OrgId) -> Result<Option<ForgeConnection>> {
        self.forge_connection_row(org).await
    }

    async fn enqueue_status(&self, report: &StatusReport) -> Result<()> {
        self.enqueue_status_row(report).await
    }

    async fn due_statuses(&self, now: Timestamp, limit: u32) -> Result<Vec<StatusReport>> {
        self.due_status_rows(now, limit).await
    }

    async fn status_delivered(&self, id: StatusReportId) -> Result<bool> {
        self.status_delivered_row(id).await
    }

    async fn status_failed(&self, id: StatusReportId, error: &str, next_attempt_at: Timestamp) -> Result<bool> {
        self.status_failed_row(id, error, next_attempt_at).await
    }

    async fn statuses_of(&self, evaluation: EvaluationId) -> Result<Vec<StatusReport>> {
        self.status_rows_of(evaluation).await
    }

    async fn put_github_installation(&self, installation: &GithubInstallation) -> Result<()> {
        let id = db_size(installation.id, "installation id")?;
        // The account's previous installation goes first, so the unique account never collides.
        let forget = "DELETE FROM github_installations WHERE account = $1 AND installation_id <> $2";
        let put = "INSERT INTO github_installations (installation_id, account, updated_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (installation_id) DO UPDATE SET account = excluded.account, \
                   updated_at = excluded.updated_at";
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            sqlx::query(forget)
                .bind(&installation.account)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(put)
                .bind(id)
                .bind(&installation.account)
                .bind(installation.updated_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn github_installation(&self, account: &str) -> Result<Option<GithubInstallation>> {
        let sql = "SELECT installation_id, account, updated_at FROM github_installations WHERE account = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, InstallationRow>(sql)
            .bind(account)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(|r| {
            Ok(GithubInstallation {
                id: stored_size(r.installation_id, "installation id")?,
                account: r.account,
                updated_at: r.updated_at,
            })
        })
        .transpose()
    }

    async fn delete_github_installation(&self, id: u64) -> Result<bool> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(false);
        };
        let sql = "DELETE FROM github_installations WHERE installation_id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn link_github_installation(&self, link: &GithubInstallationLink) -> Result<()> {
        let id = db_size(link.installation_id, "installation id")?;
        // An unknown organization fails the foreign key: NotFound.
        let sql = "INSERT INTO github_installation_links (org_id, installation_id, account, linked_by, created_at) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org_id, installation_id) DO UPDATE SET \
                   account = excluded.account, linked_by = excluded.linked_by, created_at = excluded.created_at";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(link.org_id.0)
            .bind(id)
            .bind(&link.account)
            .bind(&link.linked_by)
            .bind(link.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    async fn github_installation_links(&self, org: OrgId) -> Result<Vec<GithubInstallationLink>> {
        let sql = "SELECT org_id, installation_id, account, linked_by, created_at FROM github_installation_links \
                   WHERE org_id = $1 ORDER BY installation_id";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, LinkRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                Ok(GithubInstallationLink {
                    org_id: OrgId(r.org_id),
                    installation_id: stored_size(r.installation_id, "installation id")?,
                    account: r.account,
                    linked_by: r.linked_by,
                    created_at: r.created_at,
                })
            })
            .collect()
    }

    async fn github_installation_orgs(&self, installation: u64) -> Result<Vec<OrgId>> {
        let Ok(id) = i64::try_from(installation) else {
            return Ok(Vec::new());
        };
        let sql = "SELECT org_id FROM github_installation_links WHERE installation_id = $1";
        let rows =
            with_pool!(self, |p| sqlx::query_scalar::<_, Uuid>(sql).bind(id).fetch_all(p).await).map_err(db_error)?;
        Ok(rows.into_iter().map(OrgId).collect())
    }

    async fn unlink_github_installation(&self, org: OrgId, installation: u64) -> Result<bool> {
        let Ok(id) = i64::try_from(installation) else {
            return Ok(false);
        };
        let sql = "DELETE FROM github_installation_links WHERE org_id = $1 AND installation_id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(org.0)
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }
}

#[derive(sqlx::FromRow)]
struct LinkRow {
    org_id: Uuid,
    installation_id: i64,
    account: String,
    linked_by: String,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct InstallationRow {
    installation_id: i64,
    account: String,
    updated_at: DateTime<Utc>,
}

macro_rules! report_columns {
    () => {
        "id, org_id, evaluation_id, repository, commit_hash, state, target_url, description, attempts, \
         next_attempt_at, last_error, delivered, created_at"
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct ConnectionRow {
    org_id: Uuid,
    forge: String,
    api_url: String,
    token: String,
    managed: bool,
}

impl ConnectionRow {
    pub(crate) fn into_connection(self) -> Result<ForgeConnection> {
        Ok(ForgeConnection {
            org_id: OrgId(self.org_id),
            forge: Forge::parse(&self.forge).ok_or_else(|| corrupt("forge", &self.forge))?,
            api_url: self.api_url,
            token: Sealed(self.token),
            managed: self.managed,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ReportRow {
    id: Uuid,
    org_id: Uuid,
    evaluation_id: Uuid,
    repository: String,
    commit_hash: String,
    state: String,
    target_url: String,
    description: String,
    attempts: i64,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    delivered: bool,
    created_at: DateTime<Utc>,
}

impl ReportRow {
    fn into_report(self) -> Result<StatusReport> {
        Ok(StatusReport {
            id: StatusReportId(self.id),
            org_id: OrgId(self.org_id),
            evaluation_id: EvaluationId(self.evaluation_id),
            repository: self.repository,
            commit: self.commit_hash,
            state: CommitState::parse(&self.state).ok_or_else(|| corrupt("commit state", &self.state))?,
            target_url: self.target_url,
            description: self.description,
            attempts: u32::try_from(self.attempts).map_err(|e| corrupt("status attempts", e))?,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            delivered: self.delivered,
            created_at: self.created_at,
        })
    }
}

impl SqlStorage {
    pub(crate) async fn set_forge_connection_row(&self, c: &ForgeConnection, at: Timestamp) -> Result<()> {
        // An unknown organization fails the foreign key: NotFound.
        let sql = "INSERT INTO org_forge_connections (org_id, forge, api_url, token, updated_at, managed) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org_id) DO UPDATE SET forge = excluded.forge, \
                   api_url = excluded.api_url, token = excluded.token, updated_at = excluded.updated_at, \
                   managed = excluded.managed";
        with_pool!(self, |p| sqlx::query(sql)
            .bind(c.org_id.0)
            .bind(c.forge.as_str())
            .bind(&c.api_url)
            .bind(&c.token.0)
            .bind(at)
            .bind(c.managed)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    pub(crate) async fn forge_connection_row(&self, org: OrgId) -> Result<Option<ForgeConnection>> {
        let sql = "SELECT org_id, forge, api_url, token, managed FROM org_forge_connections WHERE org_id = $1";
        let row = with_pool!(self, |p| sqlx::query_as::<_, ConnectionRow>(sql)
            .bind(org.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(ConnectionRow::into_connection).transpose()
    }

    pub(crate) async fn enqueue_status_row(&self, r: &StatusReport) -> Result<()> {
        let sql = concat!(
            "INSERT INTO status_reports (",
            report_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        with_pool!(self, |p| sqlx::query(sql)
            .bind(r.id.0)
            .bind(r.org_id.0)
            .bind(r.evaluation_id.0)
            .bind(&r.repository)
            .bind(&r.commit)
            .bind(r.state.as_str())
            .bind(&r.target_url)
            .bind(&r.description)
            .bind(i64::from(r.attempts))
            .bind(r.next_attempt_at)
            .bind(&r.last_error)
            .bind(r.delivered)
            .bind(r.created_at)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)
    }

    pub(crate) async fn due_status_rows(&self, now: Timestamp, limit: u32) -> Result<Vec<StatusReport>> {
        let sql = concat!(
            "SELECT ",
            report_columns!(),
            " FROM status_reports WHERE delivered = FALSE AND next_attempt_at <= $1 ORDER BY seq LIMIT $2"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ReportRow>(sql)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(ReportRow::into_report).collect()
    }

    pub(crate) async fn status_delivered_row(&self, id: StatusReportId) -> Result<bool> {
        let sql = "UPDATE status_reports SET delivered = TRUE WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    pub(crate) async fn status_failed_row(&self, id: StatusReportId, error: &str, next: Timestamp) -> Result<bool> {
        let sql = "UPDATE status_reports SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3 \
                   WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .bind(error)
            .bind(next)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    pub(crate) async fn status_rows_of(&self, evaluation: EvaluationId) -> Result<Vec<StatusReport>> {
        let sql = concat!(
            "SELECT ",
            report_columns!(),
            " FROM status_reports WHERE evaluation_id = $1 ORDER BY seq"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, ReportRow>(sql)
            .bind(evaluation.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(ReportRow::into_report).collect()
    }
}
