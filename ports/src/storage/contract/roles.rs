//! Custom roles of organizations.

use super::support::{conflict, new_role, org, role, user};
use gradient_domain::model::{Membership, RoleRef};
use gradient_domain::permissions::{BuiltinRole, Permission};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, RoleId};

/// A role reads back whole by id, by name (ignoring case) and in its organization's list.
pub async fn role_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let mut managed = new_role(acme.id, "Release Managers");
    managed.permissions = Permission::ALL.into_iter().collect();
    managed.managed = true;
    let mut powerless = new_role(acme.id, "Guests");
    powerless.permissions.clear();
    for role in [&managed, &powerless] {
        s.create_role(role).await.expect("create_role");
        assert_eq!(s.role(role.id).await.expect("role"), Some(role.clone()), "role by id");
        assert_eq!(
            s.role_by_name(acme.id, &role.name).await.expect("role_by_name"),
            Some(role.clone()),
            "role by its exact name"
        );
    }
    for spelling in ["release managers", "RELEASE MANAGERS", "rElEaSe MaNaGeRs"] {
        assert_eq!(
            s.role_by_name(acme.id, spelling).await.expect("role_by_name"),
            Some(managed.clone()),
            "role by name spelled {spelling:?}"
        );
    }
}

/// An organization's roles are listed by name, and only its own.
pub async fn roles_are_listed_by_name_per_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let testers = role(s, acme.id, "testers").await;
    let deployers = role(s, acme.id, "deployers").await;
    let reviewers = role(s, acme.id, "reviewers").await;
    let foreign = role(s, other.id, "auditors").await;
    assert_eq!(
        s.roles(acme.id).await.expect("roles"),
        vec![deployers, reviewers, testers],
        "acme's roles"
    );
    assert_eq!(
        s.roles(other.id).await.expect("roles"),
        vec![foreign],
        "the other org's roles"
    );
}

/// Role names are unique per organization ignoring case: a clash is Conflict("role name") and changes nothing,
/// while another organization may reuse the name.
pub async fn taken_role_name_conflicts_case_insensitively<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let original = role(s, acme.id, "Deployers").await;
    for spelling in ["Deployers", "deployers", "DEPLOYERS"] {
        let copy = new_role(acme.id, spelling);
        assert_eq!(
            s.create_role(&copy).await,
            Err(conflict("role name")),
            "create_role named {spelling:?}"
        );
        assert_eq!(
            s.role(copy.id).await.expect("role"),
            None,
            "no row for the refused role"
        );
    }
    assert_eq!(
        s.roles(acme.id).await.expect("roles"),
        vec![original],
        "acme still has only the original"
    );
    let elsewhere = role(s, other.id, "deployers").await;
    assert_eq!(
        s.roles(other.id).await.expect("roles"),
        vec![elsewhere],
        "another org reuses the name"
    );
}

/// A role must belong to an existing organization.
pub async fn role_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    let role = new_role(OrgId::new(), "Orphans");
    assert_eq!(
        s.create_role(&role).await,
        Err(StorageError::NotFound),
        "role of an unknown org"
    );
    assert_eq!(
        s.role(role.id).await.expect("role"),
        None,
        "no row for the refused role"
    );
    assert_eq!(
        s.roles(role.org_id).await.expect("roles"),
        vec![],
        "an unknown org has no roles"
    );
}

/// Reads of a role that does not exist are empty, and deleting it reports false.
pub async fn absent_roles_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    role(s, other.id, "Deployers").await;
    assert_eq!(s.role(RoleId::new()).await.expect("role"), None, "unknown role id");
    assert_eq!(
        s.roles(acme.id).await.expect("roles"),
        vec![],
        "an org without custom roles"
    );
    assert_eq!(
        s.role_by_name(acme.id, "Deployers").await.expect("role_by_name"),
        None,
        "a role of another org is not found by name"
    );
    assert_eq!(
        s.role_by_name(acme.id, BuiltinRole::Admin.as_str())
            .await
            .expect("role_by_name"),
        None,
        "built-in roles are not stored as custom roles"
    );
    assert!(
        !s.delete_role(RoleId::new()).await.expect("delete_role"),
        "deleting an unknown role"
    );
}

/// A role held by a member cannot be deleted (Conflict("role in use")); once free it can, once.
pub async fn role_in_use_cannot_be_deleted<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let acme = org(s, "acme", alice.id, false).await;
    let deployers = role(s, acme.id, "Deployers").await;
    let held = Membership {
        org_id: acme.id,
        user_id: bob.id,
        role: RoleRef::Custom(deployers.id),
    };
    s.set_membership(&held).await.expect("set_membership");
    assert_eq!(
        s.delete_role(deployers.id).await,
        Err(conflict("role in use")),
        "deleting a held role"
    );
    assert_eq!(
        s.role(deployers.id).await.expect("role"),
        Some(deployers.clone()),
        "the role is still there"
    );
    assert_eq!(
        s.membership(acme.id, bob.id).await.expect("membership"),
        Some(RoleRef::Custom(deployers.id)),
        "bob still holds it"
    );
    let view = Membership {
        role: RoleRef::Builtin(BuiltinRole::View),
        ..held
    };
    s.set_membership(&view).await.expect("set_membership");
    assert!(
        s.delete_role(deployers.id).await.expect("delete_role"),
        "deleting the now unused role"
    );
    assert_eq!(s.role(deployers.id).await.expect("role"), None, "the role is gone");
    assert!(
        !s.delete_role(deployers.id).await.expect("delete_role"),
        "deleting it again reports false"
    );
}
