//! Memberships of organizations.

use super::support::{ADMIN, VIEW, WRITE, membership, org, role, user};
use gradient_domain::model::{Member, RoleRef, User};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, RoleId, UserId};

/// `set_membership` adds a member, and changes the role of an existing one.
pub async fn set_membership_adds_and_changes_role<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let acme = org(s, "acme", alice.id, false).await;
    let deployer = role(s, acme.id, "Deployer").await;
    assert_eq!(
        s.membership(acme.id, bob.id).await.expect("membership"),
        None,
        "not a member yet"
    );
    for role in [VIEW, WRITE, RoleRef::Custom(deployer.id), ADMIN] {
        s.set_membership(&membership(acme.id, bob.id, role.clone()))
            .await
            .expect("set_membership");
        assert_eq!(
            s.membership(acme.id, bob.id).await.expect("membership"),
            Some(role),
            "bob's role"
        );
    }
    assert_eq!(
        s.members(acme.id).await.expect("members").len(),
        2,
        "changing a role adds no second row"
    );
}

/// Members are listed by username, with their role's name resolved (built-in or custom).
pub async fn members_are_listed_by_username_with_role_names<S: Storage>(s: &S) {
    let zed = user(s, "zed").await;
    let mia = user(s, "mia").await;
    let abe = user(s, "abe").await;
    let acme = org(s, "acme", zed.id, false).await;
    let deployer = role(s, acme.id, "Deployer").await;
    s.set_membership(&membership(acme.id, mia.id, RoleRef::Custom(deployer.id)))
        .await
        .expect("set_membership");
    s.set_membership(&membership(acme.id, abe.id, VIEW))
        .await
        .expect("set_membership");
    let member = |user: &User, role: RoleRef, role_name: &str| Member {
        user_id: user.id,
        username: user.username.clone(),
        role,
        role_name: role_name.to_owned(),
    };
    assert_eq!(
        s.members(acme.id).await.expect("members"),
        vec![
            member(&abe, VIEW, "View"),
            member(&mia, RoleRef::Custom(deployer.id), "Deployer"),
            member(&zed, ADMIN, "Admin"),
        ],
        "members by username"
    );
}

/// A membership must name an existing org and user, and a custom role of that same org; a refused write
/// changes nothing.
pub async fn membership_with_unknown_references_is_not_found<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let foreign = role(s, other.id, "Foreign").await;
    let refused = [
        ("unknown org", membership(OrgId::new(), bob.id, VIEW)),
        ("unknown user", membership(acme.id, UserId::new(), VIEW)),
        (
            "unknown custom role",
            membership(acme.id, bob.id, RoleRef::Custom(RoleId::new())),
        ),
        (
            "another org's role",
            membership(acme.id, bob.id, RoleRef::Custom(foreign.id)),
        ),
        (
            "existing member, another org's role",
            membership(acme.id, alice.id, RoleRef::Custom(foreign.id)),
        ),
    ];
    for (case, m) in &refused {
        assert_eq!(
            s.set_membership(m).await,
            Err(StorageError::NotFound),
            "set_membership with {case}"
        );
    }
    assert_eq!(
        s.membership(acme.id, bob.id).await.expect("membership"),
        None,
        "bob did not join"
    );
    assert_eq!(
        s.membership(acme.id, alice.id).await.expect("membership"),
        Some(ADMIN),
        "alice's role is kept"
    );
    assert_eq!(
        s.members(acme.id).await.expect("members").len(),
        1,
        "no member was added"
    );
}

/// Deleting a membership removes that member only, and reports whether there was one.
pub async fn delete_membership_removes_only_that_member<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    for org in [acme.id, other.id] {
        s.set_membership(&membership(org, bob.id, WRITE))
            .await
            .expect("set_membership");
    }
    assert!(
        s.delete_membership(acme.id, bob.id).await.expect("delete_membership"),
        "removing a member"
    );
    assert_eq!(
        s.membership(acme.id, bob.id).await.expect("membership"),
        None,
        "bob left acme"
    );
    assert!(
        !s.delete_membership(acme.id, bob.id).await.expect("delete_membership"),
        "removing him again"
    );
    assert!(
        !s.delete_membership(OrgId::new(), bob.id)
            .await
            .expect("delete_membership"),
        "unknown org"
    );
    assert_eq!(
        s.membership(other.id, bob.id).await.expect("membership"),
        Some(WRITE),
        "other org kept"
    );
    assert_eq!(
        s.membership(acme.id, alice.id).await.expect("membership"),
        Some(ADMIN),
        "alice kept"
    );
    assert_eq!(s.user(bob.id).await.expect("user"), Some(bob), "the user is kept");
}
