//! Organizations' forge integrations: webhook secrets (stored sealed, as given).

use crate::{SqlStorage, db_error, with_pool};
use gradient_domain::OrgId;
use gradient_domain::crypt::Sealed;
use gradient_domain::model::Timestamp;
use gradient_domain::ports::storage::{Integrations, Result};

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
}
