//! Who may do what. Access to an organization (and everything in it) is decided here and nowhere else:
//! a member's role grants a set of permissions, an API key may narrow them, and a caller who cannot even see
//! a private organization is told it does not exist.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One thing a caller may be allowed to do inside an organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// See the organization, its members, projects, evaluations, builds and logs.
    ViewOrg,
    /// Change the organization's display name, description and visibility.
    EditOrg,
    DeleteOrg,
    /// Add and remove members and change their roles.
    ManageMembers,
    /// Create and delete custom roles.
    ManageRoles,
    CreateProject,
    EditProject,
    DeleteProject,
    /// Start evaluations by hand.
    TriggerEvaluation,
    /// Abort evaluations and restart failed builds.
    AbortEvaluation,
    /// Register and remove workers.
    ManageWorkers,
    /// Generate forge webhook secrets and manage forge integrations.
    ManageIntegrations,
    /// Subscribe the organization to caches and unsubscribe it.
    ManageSubscriptions,
}

impl Permission {
    pub const ALL: [Self; 13] = [
        Self::ViewOrg,
        Self::EditOrg,
        Self::DeleteOrg,
        Self::ManageMembers,
        Self::ManageRoles,
        Self::CreateProject,
        Self::EditProject,
        Self::DeleteProject,
        Self::TriggerEvaluation,
        Self::AbortEvaluation,
        Self::ManageWorkers,
        Self::ManageIntegrations,
        Self::ManageSubscriptions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ViewOrg => "view_org",
            Self::EditOrg => "edit_org",
            Self::DeleteOrg => "delete_org",
            Self::ManageMembers => "manage_members",
            Self::ManageRoles => "manage_roles",
            Self::CreateProject => "create_project",
            Self::EditProject => "edit_project",
            Self::DeleteProject => "delete_project",
            Self::TriggerEvaluation => "trigger_evaluation",
            Self::AbortEvaluation => "abort_evaluation",
            Self::ManageWorkers => "manage_workers",
            Self::ManageIntegrations => "manage_integrations",
            Self::ManageSubscriptions => "manage_subscriptions",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// What the permission allows, in a sentence (`GET /user/keys/permissions` answers it for clients to show).
    pub fn description(self) -> &'static str {
        match self {
            Self::ViewOrg => "See the organization, its members, projects, evaluations, builds and logs.",
            Self::EditOrg => "Change the organization's display name, description and visibility.",
            Self::DeleteOrg => "Delete the organization with everything in it.",
            Self::ManageMembers => "Add and remove members and change their roles.",
            Self::ManageRoles => "Create and delete custom roles.",
            Self::CreateProject => "Create projects.",
            Self::EditProject => "Change projects' settings.",
            Self::DeleteProject => "Delete projects.",
            Self::TriggerEvaluation => "Start evaluations by hand.",
            Self::AbortEvaluation => "Abort evaluations and restart failed builds.",
            Self::ManageWorkers => "Register and remove workers.",
            Self::ManageIntegrations => "Generate forge webhook secrets and manage forge integrations.",
            Self::ManageSubscriptions => "Subscribe the organization to caches and unsubscribe it.",
        }
    }
}

pub type PermissionSet = BTreeSet<Permission>;

/// The roles every organization has without creating them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BuiltinRole {
    /// Everything, including deleting the organization.
    Admin,
    /// Day-to-day CI work: projects, evaluations, builds.
    Write,
    /// Read-only.
    View,
}

impl BuiltinRole {
    pub const ALL: [Self; 3] = [Self::Admin, Self::Write, Self::View];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Write => "Write",
            Self::View => "View",
        }
    }

    /// Built-in role names are matched case-insensitively so a custom role can never shadow one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    pub fn permissions(self) -> PermissionSet {
        use Permission::*;
        match self {
            Self::Admin => Permission::ALL.into_iter().collect(),
            Self::Write => [ViewOrg, CreateProject, EditProject, TriggerEvaluation, AbortEvaluation]
                .into_iter()
                .collect(),
            Self::View => [ViewOrg].into_iter().collect(),
        }
    }
}

/// What an API key is limited to; `None` fields mean "as much as the owner has".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyScope {
    /// The only organization the key may act in.
    pub organization: Option<crate::OrgId>,
    /// The only permissions the key may use (intersected with the owner's role).
    pub permissions: Option<PermissionSet>,
}

/// What a caller can do in one organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrgAccess {
    /// The caller may not know the organization exists (a private organization they are not a member of).
    Hidden,
    /// The caller sees the organization and holds these permissions in it.
    Granted(PermissionSet),
}

/// Decides access to an organization.
///
/// * `public` — whether the organization is public (visible to everyone, read-only to non-members);
/// * `role` — the caller's permissions from their membership, if they are a member;
/// * `scope` — the API key's scope, when the caller authenticated with a key.
pub fn org_access(
    org: crate::OrgId,
    public: bool,
    role: Option<&PermissionSet>,
    scope: Option<&KeyScope>,
) -> OrgAccess {
    let out_of_scope = scope.and_then(|s| s.organization).is_some_and(|pinned| pinned != org);
    let mut granted = match role {
        Some(perms) if !out_of_scope => perms.clone(),
        _ if public => [Permission::ViewOrg].into_iter().collect(),
        _ => return OrgAccess::Hidden,
    };
    if out_of_scope {
        return if public {
            OrgAccess::Granted(granted)
        } else {
            OrgAccess::Hidden
        };
    }
    if let Some(limit) = scope.and_then(|s| s.permissions.as_ref()) {
        granted.retain(|p| limit.contains(p) || (*p == Permission::ViewOrg && public));
    }
    OrgAccess::Granted(granted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrgId;

    fn set(perms: &[Permission]) -> PermissionSet {
        perms.iter().copied().collect()
    }

    #[test]
    fn builtin_roles_nest() {
        let admin = BuiltinRole::Admin.permissions();
        let write = BuiltinRole::Write.permissions();
        let view = BuiltinRole::View.permissions();
        assert!(view.is_subset(&write) && write.is_subset(&admin));
        assert!(!write.contains(&Permission::DeleteOrg));
        assert!(!write.contains(&Permission::ManageMembers));
        assert_eq!(BuiltinRole::parse("admin"), Some(BuiltinRole::Admin));
        assert_eq!(BuiltinRole::parse("builder"), None);
    }

    #[test]
    fn access_table() {
        use Permission::*;
        let org = OrgId::new();
        let other = OrgId::new();
        let write = BuiltinRole::Write.permissions();
        let view_only = set(&[ViewOrg]);
        let pinned_elsewhere = KeyScope {
            organization: Some(other),
            permissions: None,
        };
        let pinned_here = KeyScope {
            organization: Some(org),
            permissions: None,
        };
        let read_key = KeyScope {
            organization: None,
            permissions: Some(set(&[ViewOrg])),
        };
        type Case<'a> = (
            &'a str,
            bool,
            Option<&'a PermissionSet>,
            Option<&'a KeyScope>,
            OrgAccess,
        );
        let cases: Vec<Case> = vec![
            ("outsider, private", false, None, None, OrgAccess::Hidden),
            (
                "outsider, public",
                true,
                None,
                None,
                OrgAccess::Granted(view_only.clone()),
            ),
            ("member", false, Some(&write), None, OrgAccess::Granted(write.clone())),
            (
                "member, key pinned here",
                false,
                Some(&write),
                Some(&pinned_here),
                OrgAccess::Granted(write.clone()),
            ),
            (
                "member, key pinned elsewhere",
                false,
                Some(&write),
                Some(&pinned_elsewhere),
                OrgAccess::Hidden,
            ),
            (
                "member of public, key pinned elsewhere",
                true,
                Some(&write),
                Some(&pinned_elsewhere),
                OrgAccess::Granted(view_only.clone()),
            ),
            (
                "member, read-only key",
                false,
                Some(&write),
                Some(&read_key),
                OrgAccess::Granted(view_only.clone()),
            ),
        ];
        for (name, public, role, scope, want) in cases {
            assert_eq!(org_access(org, public, role, scope), want, "{name}");
        }
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.as_str()));
        }
    }
}
