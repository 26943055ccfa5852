//! Organizations, their members and their roles.

use super::{Caller, Gradient, Result, ServiceError, check_multiline_text, check_text, display_texts, refuse_managed};
use crate::model::{AuditAction, Member, Membership, Org, Role, RoleRef};
use crate::permissions::{BuiltinRole, OrgAccess, Permission, PermissionSet, org_access};
use crate::ports::{Clock, Storage, StorageError};
use crate::{Name, OrgId, RoleId};

#[derive(Clone, Debug)]
pub struct NewOrg {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: bool,
}

/// A partial update: `None` leaves the field as it is.
#[derive(Clone, Debug, Default)]
pub struct OrgChanges {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub public: Option<bool>,
}

/// A role as listed: built-in or custom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleView {
    pub name: String,
    pub permissions: PermissionSet,
    pub builtin: bool,
    pub managed: bool,
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("organization '{name}' not found"))
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    async fn role_permissions(&self, role: &RoleRef) -> Result<PermissionSet> {
        Ok(match role {
            RoleRef::Builtin(b) => b.permissions(),
            RoleRef::Custom(id) => self.storage.role(*id).await?.map(|r| r.permissions).unwrap_or_default(),
        })
    }

    /// The organization and what the caller may do in it; NotFound when it is absent or hidden.
    pub(crate) async fn org_with_access(&self, caller: &Caller, name: &str) -> Result<(Org, PermissionSet)> {
        let parsed = Name::parse(name).map_err(|_| not_found(name))?;
        let org = self
            .storage
            .org_by_name(&parsed)
            .await?
            .ok_or_else(|| not_found(name))?;
        let role = match caller.user_id() {
            Some(user) => match self.storage.membership(org.id, user).await? {
                Some(role) => Some(self.role_permissions(&role).await?),
                None => None,
            },
            None => None,
        };
        match org_access(org.id, org.public, role.as_ref(), caller.scope()) {
            OrgAccess::Hidden => Err(not_found(name)),
            OrgAccess::Granted(perms) => Ok((org, perms)),
        }
    }

    /// The organization if the caller can see it.
    pub async fn visible_org(&self, caller: &Caller, name: &str) -> Result<Org> {
        Ok(self.org_with_access(caller, name).await?.0)
    }

    /// The organization, if the caller holds `perm` in it: 404 when hidden, 401 for anonymous callers,
    /// 403 for users without the permission.
    pub(crate) async fn org_requiring(&self, caller: &Caller, name: &str, perm: Permission) -> Result<Org> {
        Ok(self.org_with_permission(caller, name, perm).await?.0)
    }

    /// As [`Self::org_requiring`], with every permission the caller holds there.
    pub(crate) async fn org_with_permission(
        &self,
        caller: &Caller,
        name: &str,
        perm: Permission,
    ) -> Result<(Org, PermissionSet)> {
        let (org, perms) = self.org_with_access(caller, name).await?;
        if perms.contains(&perm) {
            return Ok((org, perms));
        }
        caller.require_user()?;
        Err(ServiceError::Forbidden(format!(
            "you need the '{}' permission in organization '{}'",
            perm.as_str(),
            org.name
        )))
    }

    pub async fn orgs(&self, caller: &Caller) -> Result<Vec<Org>> {
        let orgs = self.storage.visible_orgs(caller.user_id()).await?;
        // A key pinned to one organization lists only that one (and public ones).
        Ok(match caller.scope().and_then(|s| s.organization) {
            Some(pinned) => orgs.into_iter().filter(|o| o.id == pinned || o.public).collect(),
            None => orgs,
        })
    }

    pub async fn create_org(&self, caller: &Caller, new: NewOrg) -> Result<Org> {
        let user = caller.require_user()?;
        if caller.is_restricted() {
            return Err(ServiceError::Forbidden(
                "a restricted API key cannot create organizations".into(),
            ));
        }
        let name = Name::parse_as(new.name.trim_matches(' '), "organization name")?;
        let (display_name, description) = display_texts(&name, new.display_name, new.description)?;
        let org = Org {
            managed: false,
            id: OrgId::new(),
            display_name,
            name,
            description,
            public: new.public,
            created_by: user.id,
            created_at: self.clock.now(),
        };
        self.storage.create_org(&org).await.map_err(|e| match e {
            StorageError::Conflict(_) => ServiceError::conflict(
                "name_taken",
                format!("an organization named '{}' already exists", org.name),
            ),
            other => other.into(),
        })?;
        self.audit(
            caller,
            org.id,
            AuditAction::OrgCreated,
            format!("organization '{}'", org.name),
            "",
        )
        .await?;
        // Its deploy key, so members can add it to their forge before the first project.
        self.ensure_org_ssh_key(&org).await?;
        if let Some(local) = &self.settings.local_worker {
            let registration = crate::model::WorkerRegistration {
                managed: false,
                peer_id: crate::PeerId::new(),
                org_id: org.id,
                worker_id: local.id,
                proof_key: crate::proto::seal_proof_key(&self.crypt, &local.proof_key),
                created_at: self.clock.now(),
                url: None,
            };
            match self.storage.create_worker_registration(&registration).await {
                Ok(()) | Err(StorageError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(org)
    }

    pub async fn update_org(&self, caller: &Caller, name: &str, changes: OrgChanges) -> Result<Org> {
        let mut org = self.org_requiring(caller, name, Permission::EditOrg).await?;
        refuse_managed(org.managed, format_args!("organization '{}'", org.name))?;
        let before = org.clone();
        if let Some(d) = changes.display_name {
            check_text("display_name", &d, 256)?;
            org.display_name = d.trim().to_owned();
        }
        if let Some(d) = changes.description {
            check_multiline_text("description", &d, 4096)?;
            org.description = d;
        }
        if let Some(p) = changes.public {
            org.public = p;
        }
        let mut changed = Vec::new();
        if before.display_name != org.display_name {
            changed.push("display_name".to_owned());
        }
        if before.description != org.description {
            changed.push("description".to_owned());
        }
        if before.public != org.public {
            changed.push(format!("public = {}", org.public));
        }
        self.storage.update_org(&org).await?;
        self.audit(
            caller,
            org.id,
            AuditAction::OrgUpdated,
            format!("organization '{}'", org.name),
            changed.join(", "),
        )
        .await?;
        Ok(org)
    }

    /// Deletes the organization with everything in it. Its jobs running on connected workers are stopped
    /// there, and every link authorized by its worker registrations loses them (a link left with none is
    /// closed), as when one registration is deleted.
    pub async fn delete_org(&self, caller: &Caller, name: &str) -> Result<()> {
        let org = self.org_requiring(caller, name, Permission::DeleteOrg).await?;
        refuse_managed(org.managed, format_args!("organization '{}'", org.name))?;
        let peers: Vec<crate::PeerId> = self
            .storage
            .worker_registrations(org.id)
            .await?
            .into_iter()
            .map(|r| r.peer_id)
            .collect();
        let mut running = Vec::new();
        for w in self.fleet.connected().iter().filter(|w| w.orgs.contains(&org.id)) {
            for job in self.storage.jobs_assigned_to(w.id).await? {
                if job.org_id == org.id {
                    running.push((w.id, job.id));
                }
            }
        }
        self.memo.forget_job_access();
        let deleted = self.storage.delete_org(org.id).await;
        self.memo.forget_job_access();
        deleted?;
        for (worker, job) in running {
            self.fleet.abort(worker, org.id, job);
        }
        for peer in peers {
            self.fleet.revoke(peer);
        }
        Ok(())
    }

    pub async fn members(&self, caller: &Caller, org: &str) -> Result<Vec<Member>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        Ok(self.storage.members(org.id).await?)
    }

    async fn resolve_role(&self, org: OrgId, role: &str) -> Result<RoleRef> {
        if let Some(b) = BuiltinRole::parse(role) {
            return Ok(RoleRef::Builtin(b));
        }
        match self.storage.role_by_name(org, role).await? {
            Some(r) => Ok(RoleRef::Custom(r.id)),
            None => Err(ServiceError::invalid(
                "unknown_role",
                format!("the organization has no role '{role}'"),
            )),
        }
    }

    async fn admin_count(&self, org: OrgId) -> Result<usize> {
        let members = self.storage.members(org).await?;
        Ok(members
            .iter()
            .filter(|m| m.role == RoleRef::Builtin(BuiltinRole::Admin))
            .count())
    }

    /// Adds a user to the organization or changes their role. Nobody grants a role with a permission they do
    /// not hold, changes the role of someone holding one they do not, or demotes the last Admin.
    pub async fn set_member(&self, caller: &Caller, org: &str, username: &str, role: &str) -> Result<Member> {
        let (org, mine) = self.org_with_permission(caller, org, Permission::ManageMembers).await?;
        refuse_managed(
            org.managed,
            format_args!("the membership of organization '{}'", org.name),
        )?;
        let user = self.user_named(username).await?;
        let role = self.resolve_role(org.id, role).await?;
        let granted = self.role_permissions(&role).await?;
        if !granted.is_subset(&mine) {
            return Err(exceeds_yours("grant a role with permissions you do not hold"));
        }
        let current = self.storage.membership(org.id, user.id).await?;
        if let Some(current) = &current
            && !self.role_permissions(current).await?.is_subset(&mine)
        {
            return Err(exceeds_yours(
                "change the role of a member who holds permissions you do not",
            ));
        }
        if current == Some(RoleRef::Builtin(BuiltinRole::Admin))
            && role != RoleRef::Builtin(BuiltinRole::Admin)
            && self.admin_count(org.id).await? <= 1
        {
            return Err(last_admin());
        }
        self.storage
            .set_membership(&Membership {
                org_id: org.id,
                user_id: user.id,
                role: role.clone(),
            })
            .await?;
        let role_name = self.role_name(&role).await?;
        let detail = match &current {
            Some(old) => format!("role {} → {role_name}", self.role_name(old).await?),
            None => format!("added as {role_name}"),
        };
        self.audit(
            caller,
            org.id,
            AuditAction::MemberSet,
            format!("member '{}'", user.username),
            detail,
        )
        .await?;
        Ok(Member {
            user_id: user.id,
            username: user.username,
            role,
            role_name,
        })
    }

    /// Removes a member: everything they could do through the membership ends with it (access is decided
    /// at every request), and so do the organization's subscriptions to the member's own caches. Nobody removes
    /// a member holding a permission they do not hold, nor the last Admin.
    pub async fn remove_member(&self, caller: &Caller, org: &str, username: &str) -> Result<()> {
        let (org, mine) = self.org_with_permission(caller, org, Permission::ManageMembers).await?;
        refuse_managed(
            org.managed,
            format_args!("the membership of organization '{}'", org.name),
        )?;
        let user = self.user_named(username).await?;
        let current = self.storage.membership(org.id, user.id).await?;
        let Some(current) = current else {
            return Err(ServiceError::NotFound(format!(
                "'{username}' is not a member of '{}'",
                org.name
            )));
        };
        if caller.user_id() != Some(user.id) && !self.role_permissions(&current).await?.is_subset(&mine) {
            return Err(exceeds_yours("remove a member who holds permissions you do not"));
        }
        if current == RoleRef::Builtin(BuiltinRole::Admin) && self.admin_count(org.id).await? <= 1 {
            return Err(last_admin());
        }
        // Forgotten before and after, whether or not storage (or the audit below) fails: no read right
        // checked meanwhile outlives the membership.
        self.memo.forget_job_access();
        let deleted = self.storage.delete_membership(org.id, user.id).await;
        self.memo.forget_job_access();
        deleted?;
        let detail = format!("was {}", self.role_name(&current).await?);
        self.audit(
            caller,
            org.id,
            AuditAction::MemberRemoved,
            format!("member '{}'", user.username),
            detail,
        )
        .await?;
        // What the member lent the organization goes with them: its subscriptions to their caches (grants and
        // push), so its jobs neither push to nor trust the keys of an outsider's caches.
        self.memo.forget_job_access();
        let lent = async {
            for sub in self.storage.subscriptions(org.id).await? {
                if sub.cache.created_by == user.id {
                    self.storage.unsubscribe(org.id, sub.cache.id).await?;
                }
            }
            Ok::<_, crate::ports::StorageError>(())
        }
        .await;
        self.memo.forget_job_access();
        Ok(lent?)
    }

    async fn user_named(&self, username: &str) -> Result<crate::model::User> {
        let missing = || ServiceError::NotFound(format!("user '{username}' not found"));
        let name = Name::parse(username.trim()).map_err(|_| missing())?;
        self.storage.user_by_username(&name).await?.ok_or_else(missing)
    }

    async fn role_name(&self, role: &RoleRef) -> Result<String> {
        Ok(match role {
            RoleRef::Builtin(b) => b.as_str().to_owned(),
            RoleRef::Custom(id) => self.storage.role(*id).await?.map(|r| r.name).unwrap_or_default(),
        })
    }

    /// Built-in roles first, then the organization's custom roles.
    pub async fn roles(&self, caller: &Caller, org: &str) -> Result<Vec<RoleView>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        let mut out: Vec<RoleView> = BuiltinRole::ALL
            .into_iter()
            .map(|b| RoleView {
                name: b.as_str().into(),
                permissions: b.permissions(),
                builtin: true,
                managed: true,
            })
            .collect();
        out.extend(self.storage.roles(org.id).await?.into_iter().map(|r| RoleView {
            name: r.name,
            permissions: r.permissions,
            builtin: false,
            managed: r.managed,
        }));
        Ok(out)
    }

    pub async fn create_role(
        &self,
        caller: &Caller,
        org: &str,
        name: &str,
        permissions: PermissionSet,
    ) -> Result<RoleView> {
        let (org, mine) = self.org_with_permission(caller, org, Permission::ManageRoles).await?;
        if !permissions.is_subset(&mine) {
            return Err(exceeds_yours("create a role with permissions you do not hold"));
        }
        let name = name.trim_matches(' ');
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "invalid_name",
                "a role name must be 1 to 64 printable characters",
            ));
        }
        if BuiltinRole::parse(name).is_some() {
            return Err(ServiceError::conflict(
                "role_exists",
                format!("'{name}' is a built-in role"),
            ));
        }
        if permissions.is_empty() {
            return Err(ServiceError::invalid(
                "invalid_input",
                "a role needs at least one permission",
            ));
        }
        let role = Role {
            id: RoleId::new(),
            org_id: org.id,
            name: name.to_owned(),
            permissions,
            managed: false,
        };
        self.storage.create_role(&role).await.map_err(|e| match e {
            StorageError::Conflict(_) => ServiceError::conflict("role_exists", format!("a role named '{name}' exists")),
            other => other.into(),
        })?;
        let detail: Vec<&str> = role.permissions.iter().map(|p| p.as_str()).collect();
        self.audit(
            caller,
            org.id,
            AuditAction::RoleCreated,
            format!("role '{}'", role.name),
            detail.join(", "),
        )
        .await?;
        Ok(RoleView {
            name: role.name,
            permissions: role.permissions,
            builtin: false,
            managed: false,
        })
    }

    pub async fn delete_role(&self, caller: &Caller, org: &str, name: &str) -> Result<()> {
        let (org, mine) = self.org_with_permission(caller, org, Permission::ManageRoles).await?;
        if BuiltinRole::parse(name).is_some() {
            return Err(ServiceError::Forbidden(format!(
                "'{name}' is a built-in role and cannot be deleted"
            )));
        }
        let missing = || ServiceError::NotFound(format!("the organization has no role '{name}'"));
        // No role is named with control characters (`create_role` refuses them): nothing to look up.
        if name.contains(char::is_control) {
            return Err(missing());
        }
        let role = self
            .storage
            .role_by_name(org.id, name.trim())
            .await?
            .ok_or_else(missing)?;
        refuse_managed(role.managed, format_args!("role '{}'", role.name))?;
        if !role.permissions.is_subset(&mine) {
            return Err(exceeds_yours("delete a role with permissions you do not hold"));
        }
        self.storage.delete_role(role.id).await.map_err(|e| match e {
            StorageError::Conflict(_) => {
                ServiceError::conflict("role_in_use", format!("members still hold the role '{name}'"))
            }
            other => other.into(),
        })?;
        self.audit(
            caller,
            org.id,
            AuditAction::RoleDeleted,
            format!("role '{}'", role.name),
            "",
        )
        .await?;
        Ok(())
    }
}

/// Refused: the caller would act beyond their own permissions (403).
fn exceeds_yours(what: &str) -> ServiceError {
    ServiceError::Forbidden(format!("you cannot {what}"))
}

fn last_admin() -> ServiceError {
    ServiceError::conflict("last_admin", "an organization must keep at least one Admin")
}
