use super::Timestamp;
use crate::permissions::{BuiltinRole, PermissionSet};
use crate::{Name, OrgId, RoleId, UserId};

/// An organization owns projects, workers and forge integrations, and subscribes to caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub name: Name,
    pub display_name: String,
    pub description: String,
    /// Public organizations (and their projects, evaluations and builds) are readable by everyone.
    pub public: bool,
    pub created_by: UserId,
    pub created_at: Timestamp,
    /// Declared in the server's declarative state: the API cannot change or delete it, nor its members.
    pub managed: bool,
}

/// A custom role of one organization: a name and the permissions it grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub id: RoleId,
    pub org_id: OrgId,
    /// Never equal (case-insensitively) to a built-in role's name.
    pub name: String,
    pub permissions: PermissionSet,
    /// Declared in the NixOS module's state; such roles cannot be changed through the API.
    pub managed: bool,
}

/// The role a member holds: one of the built-in ones or a custom role of the organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleRef {
    Builtin(BuiltinRole),
    Custom(RoleId),
}

/// A user's membership of an organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub org_id: OrgId,
    pub user_id: UserId,
    pub role: RoleRef,
}

/// A membership as listed: with the member's username and the role's name resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user_id: UserId,
    pub username: Name,
    pub role: RoleRef,
    pub role_name: String,
}

/// An organization's SSH deploy key (see [`crate::deploy_key`]): the public `authorized_keys` line and the
/// private key file, sealed with the crypt secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgSshKey {
    pub org_id: OrgId,
    pub public_key: String,
    pub private_key: crate::crypt::Sealed,
    pub created_at: Timestamp,
}
