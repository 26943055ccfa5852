//! Organizations, their custom roles and their members.

use crate::BeginWrite;
use crate::{SqlStorage, corrupt, db_error, from_json, stored_name, to_json, with_pool};
use chrono::{DateTime, Utc};
use gradient_domain::model::{Member, Membership, Org, Role, RoleRef};
use gradient_domain::permissions::{BuiltinRole, PermissionSet};
use gradient_domain::ports::StorageError;
use gradient_domain::ports::storage::{Orgs, Result};
use gradient_domain::{Name, OrgId, RoleId, UserId};
use uuid::Uuid;

macro_rules! org_columns {
    () => {
        "id, name, display_name, description, public, created_by, created_at, managed"
    };
}
pub(crate) use org_columns;

macro_rules! role_columns {
    () => {
        "id, org_id, name, permissions, managed"
    };
}
pub(crate) use role_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct OrgRow {
    id: Uuid,
    name: String,
    display_name: String,
    description: String,
    public: bool,
    created_by: Uuid,
    created_at: DateTime<Utc>,
    managed: bool,
}

impl OrgRow {
    pub(crate) fn into_org(self) -> Result<Org> {
        Ok(Org {
            id: OrgId(self.id),
            name: stored_name(&self.name, "org name")?,
            display_name: self.display_name,
            description: self.description,
            public: self.public,
            created_by: UserId(self.created_by),
            created_at: self.created_at,
            managed: self.managed,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RoleRow {
    id: Uuid,
    org_id: Uuid,
    name: String,
    permissions: String,
    managed: bool,
}

impl RoleRow {
    pub(crate) fn into_role(self) -> Result<Role> {
        Ok(Role {
            id: RoleId(self.id),
            org_id: OrgId(self.org_id),
            name: self.name,
            permissions: from_json::<PermissionSet>(&self.permissions, "role permissions")?,
            managed: self.managed,
        })
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: Uuid,
    username: String,
    builtin_role: Option<String>,
    role_id: Option<Uuid>,
    role_name: Option<String>,
}

/// Stored form of a role reference: (built-in role name, custom role id), exactly one set.
pub(crate) fn role_columns_of(role: &RoleRef) -> (Option<&'static str>, Option<Uuid>) {
    match role {
        RoleRef::Builtin(b) => (Some(b.as_str()), None),
        RoleRef::Custom(id) => (None, Some(id.0)),
    }
}

fn role_ref(builtin: Option<&str>, custom: Option<Uuid>) -> Result<RoleRef> {
    match (builtin, custom) {
        (Some(name), None) => BuiltinRole::parse(name)
            .map(RoleRef::Builtin)
            .ok_or_else(|| corrupt("membership role", format!("unknown built-in role {name:?}"))),
        (None, Some(id)) => Ok(RoleRef::Custom(RoleId(id))),
        _ => Err(corrupt(
            "membership role",
            "not exactly one of built-in and custom role",
        )),
    }
}

impl Orgs for SqlStorage {
    async fn create_org(&self, org: &Org) -> Result<()> {
        let insert_org = concat!(
            "INSERT INTO orgs (",
            org_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        let insert_admin = "INSERT INTO memberships (org_id, user_id, builtin_role) VALUES ($1, $2, $3)";
        with_pool!(self, |p| async {
            let mut tx = p.begin_write().await?;
            sqlx::query(insert_org)
                .bind(org.id.0)
                .bind(org.name.as_str())
                .bind(&org.display_name)
                .bind(&org.description)
                .bind(org.public)
                .bind(org.created_by.0)
                .bind(org.created_at)
                .bind(org.managed)
                .execute(&mut *tx)
                .await?;
            sqlx::query(insert_admin)
                .bind(org.id.0)
                .bind(org.created_by.0)
                .bind(BuiltinRole::Admin.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(db_error)
    }

    async fn org_by_name(&self, name: &Name) -> Result<Option<Org>> {
        let sql = concat!("SELECT ", org_columns!(), " FROM orgs WHERE name = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, OrgRow>(sql)
            .bind(name.as_str())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(OrgRow::into_org).transpose()
    }

    async fn org(&self, id: OrgId) -> Result<Option<Org>> {
        let sql = concat!("SELECT ", org_columns!(), " FROM orgs WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, OrgRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(OrgRow::into_org).transpose()
    }

    async fn visible_orgs(&self, user: Option<UserId>) -> Result<Vec<Org>> {
        let sql = concat!(
            "SELECT ",
            org_columns!(),
            " FROM orgs o WHERE o.public OR EXISTS ",
            "(SELECT 1 FROM memberships m WHERE m.org_id = o.id AND m.user_id = $1) ORDER BY o.name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, OrgRow>(sql)
            .bind(user.map(|u| u.0))
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(OrgRow::into_org).collect()
    }

    async fn update_org(&self, org: &Org) -> Result<()> {
        let sql = "UPDATE orgs SET display_name = $2, description = $3, public = $4 WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(org.id.0)
            .bind(&org.display_name)
            .bind(&org.description)
            .bind(org.public)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        if done == 0 { Err(StorageError::NotFound) } else { Ok(()) }
    }

    async fn delete_org(&self, id: OrgId) -> Result<bool> {
        // Memberships, roles, projects and subscriptions go with it (ON DELETE CASCADE), in one statement.
        let sql = "DELETE FROM orgs WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }

    async fn create_role(&self, role: &Role) -> Result<()> {
        let sql = "INSERT INTO roles (id, org_id, name, name_key, permissions, managed) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        let permissions = to_json(&role.permissions)?;
        with_pool!(self, |p| sqlx::query(sql)
            .bind(role.id.0)
            .bind(role.org_id.0)
            .bind(&role.name)
            .bind(role.name.to_ascii_lowercase())
            .bind(&permissions)
            .bind(role.managed)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn roles(&self, org: OrgId) -> Result<Vec<Role>> {
        let sql = concat!(
            "SELECT ",
            role_columns!(),
            " FROM roles WHERE org_id = $1 ORDER BY name_key, name"
        );
        let rows = with_pool!(self, |p| sqlx::query_as::<_, RoleRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter().map(RoleRow::into_role).collect()
    }

    async fn role_by_name(&self, org: OrgId, name: &str) -> Result<Option<Role>> {
        let sql = concat!(
            "SELECT ",
            role_columns!(),
            " FROM roles WHERE org_id = $1 AND name_key = $2"
        );
        let row = with_pool!(self, |p| sqlx::query_as::<_, RoleRow>(sql)
            .bind(org.0)
            .bind(name.to_ascii_lowercase())
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(RoleRow::into_role).transpose()
    }

    async fn role(&self, id: RoleId) -> Result<Option<Role>> {
        let sql = concat!("SELECT ", role_columns!(), " FROM roles WHERE id = $1");
        let row = with_pool!(self, |p| sqlx::query_as::<_, RoleRow>(sql)
            .bind(id.0)
            .fetch_optional(p)
            .await)
        .map_err(db_error)?;
        row.map(RoleRow::into_role).transpose()
    }

    async fn delete_role(&self, id: RoleId) -> Result<bool> {
        // A membership holding the role makes the foreign key refuse the delete.
        let sql = "DELETE FROM roles WHERE id = $1";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(id.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| match db_error(e) {
            StorageError::NotFound => StorageError::Conflict("role in use".to_owned()),
            other => other,
        })?;
        Ok(done > 0)
    }

    async fn set_membership(&self, membership: &Membership) -> Result<()> {
        // The custom role's foreign key includes the organization, so a role of another one is NotFound.
        let sql = "INSERT INTO memberships (org_id, user_id, builtin_role, role_id) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (org_id, user_id) \
                   DO UPDATE SET builtin_role = excluded.builtin_role, role_id = excluded.role_id";
        let (builtin, custom) = role_columns_of(&membership.role);
        with_pool!(self, |p| sqlx::query(sql)
            .bind(membership.org_id.0)
            .bind(membership.user_id.0)
            .bind(builtin)
            .bind(custom)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(db_error)?;
        Ok(())
    }

    async fn membership(&self, org: OrgId, user: UserId) -> Result<Option<RoleRef>> {
        let sql = "SELECT builtin_role, role_id FROM memberships WHERE org_id = $1 AND user_id = $2";
        let row = with_pool!(self, |p| {
            sqlx::query_as::<_, (Option<String>, Option<Uuid>)>(sql)
                .bind(org.0)
                .bind(user.0)
                .fetch_optional(p)
                .await
        })
        .map_err(db_error)?;
        row.map(|(builtin, custom)| role_ref(builtin.as_deref(), custom))
            .transpose()
    }

    async fn members(&self, org: OrgId) -> Result<Vec<Member>> {
        let sql = "SELECT m.user_id, u.username, m.builtin_role, m.role_id, r.name AS role_name \
                   FROM memberships m JOIN users u ON u.id = m.user_id LEFT JOIN roles r ON r.id = m.role_id \
                   WHERE m.org_id = $1 ORDER BY u.username";
        let rows = with_pool!(self, |p| sqlx::query_as::<_, MemberRow>(sql)
            .bind(org.0)
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        rows.into_iter()
            .map(|r| {
                let role = role_ref(r.builtin_role.as_deref(), r.role_id)?;
                let role_name = match &role {
                    RoleRef::Builtin(b) => b.as_str().to_owned(),
                    RoleRef::Custom(_) => r.role_name.ok_or_else(|| corrupt("membership", "role missing"))?,
                };
                Ok(Member {
                    user_id: UserId(r.user_id),
                    username: stored_name(&r.username, "username")?,
                    role,
                    role_name,
                })
            })
            .collect()
    }

    async fn delete_membership(&self, org: OrgId, user: UserId) -> Result<bool> {
        let sql = "DELETE FROM memberships WHERE org_id = $1 AND user_id = $2";
        let done = with_pool!(self, |p| sqlx::query(sql)
            .bind(org.0)
            .bind(user.0)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(done > 0)
    }
}
