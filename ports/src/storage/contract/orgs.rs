//! Organizations.

use super::support::{
    ADMIN, VIEW, cache, conflict, grant, membership, name, new_org, org, org_names, project, role, seconds,
    subscribed_caches, subscriber_orgs, user,
};
use gradient_domain::UserId;
use gradient_domain::model::{Member, RoleRef};
use gradient_domain::ports::{Storage, StorageError};

/// An organization reads back whole by id and name, and its creator is its only member, as Admin.
pub async fn org_round_trips_and_creator_is_admin<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    for public in [true, false] {
        let org = new_org("acme", alice.id, public);
        s.create_org(&org).await.expect("create_org");
        assert_eq!(s.org(org.id).await.expect("org"), Some(org.clone()), "org by id");
        assert_eq!(
            s.org_by_name(&org.name).await.expect("org_by_name"),
            Some(org.clone()),
            "org by name"
        );
        assert_eq!(
            s.membership(org.id, alice.id).await.expect("membership"),
            Some(ADMIN),
            "creator's role"
        );
        let creator = Member {
            user_id: alice.id,
            username: alice.username.clone(),
            role: ADMIN,
            role_name: "Admin".to_owned(),
        };
        assert_eq!(
            s.members(org.id).await.expect("members"),
            vec![creator],
            "the creator is the only member"
        );
    }
}

/// Reads of an organization that does not exist are empty; updating it is NotFound, deleting it false.
pub async fn absent_orgs_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let ghost = new_org("ghost", alice.id, true);
    assert_eq!(s.org(ghost.id).await.expect("org"), None, "unknown org id");
    assert_eq!(
        s.org_by_name(&ghost.name).await.expect("org_by_name"),
        None,
        "unknown org name"
    );
    assert_eq!(
        s.update_org(&ghost).await,
        Err(StorageError::NotFound),
        "update_org of an unknown org"
    );
    assert_eq!(
        s.org(ghost.id).await.expect("org"),
        None,
        "a failed update creates nothing"
    );
    assert!(
        !s.delete_org(ghost.id).await.expect("delete_org"),
        "delete_org of an unknown org"
    );
    assert_eq!(
        s.membership(ghost.id, alice.id).await.expect("membership"),
        None,
        "membership of unknown org"
    );
    assert_eq!(
        s.members(ghost.id).await.expect("members"),
        vec![],
        "members of an unknown org"
    );
}

/// A taken organization name is refused with Conflict("org name"), creating neither org nor membership.
pub async fn taken_org_name_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let original = org(s, "acme", alice.id, false).await;
    let mut copy = new_org("copy", bob.id, true);
    copy.name = original.name.clone();
    assert_eq!(
        s.create_org(&copy).await,
        Err(conflict("org name")),
        "create_org with a taken name"
    );
    assert_eq!(
        s.org(original.id).await.expect("org"),
        Some(original.clone()),
        "the original org is intact"
    );
    assert_eq!(s.org(copy.id).await.expect("org"), None, "no row for the refused org");
    assert_eq!(
        s.membership(copy.id, bob.id).await.expect("membership"),
        None,
        "no membership in it"
    );
    assert_eq!(
        s.membership(original.id, bob.id).await.expect("membership"),
        None,
        "bob did not join the original"
    );
    assert_eq!(
        org_names(
            &s.visible_orgs(Some(bob.id)).await.expect("visible_orgs"),
            &[&original, &copy]
        ),
        vec![],
        "bob sees neither org"
    );
}

/// An organization must be created by an existing user; the refusal leaves no org and no membership.
pub async fn org_of_unknown_creator_is_not_found<S: Storage>(s: &S) {
    let ghost = UserId::new();
    let org = new_org("acme", ghost, true);
    assert_eq!(
        s.create_org(&org).await,
        Err(StorageError::NotFound),
        "org of an unknown creator"
    );
    assert_eq!(s.org(org.id).await.expect("org"), None, "no row by id");
    assert_eq!(
        s.org_by_name(&org.name).await.expect("org_by_name"),
        None,
        "no row by name"
    );
    assert_eq!(s.members(org.id).await.expect("members"), vec![], "no membership");
}

/// `update_org` changes display name, description and visibility, and nothing else.
pub async fn update_org_changes_only_editable_fields<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let original = org(s, "acme", alice.id, false).await;
    let mut edit = original.clone();
    edit.display_name = "Acme Corporation".to_owned();
    edit.description = String::new();
    edit.public = true;
    edit.name = name("renamed");
    edit.created_by = bob.id;
    edit.created_at = original.created_at - seconds(3600);
    s.update_org(&edit).await.expect("update_org");
    let mut expected = original.clone();
    expected.display_name = edit.display_name.clone();
    expected.description = edit.description.clone();
    expected.public = true;
    assert_eq!(
        s.org(original.id).await.expect("org"),
        Some(expected.clone()),
        "only editable fields changed"
    );
    assert_eq!(
        s.org_by_name(&original.name).await.expect("org_by_name"),
        Some(expected),
        "name is unchanged"
    );
    assert_eq!(
        s.org_by_name(&edit.name).await.expect("org_by_name"),
        None,
        "the new name was not taken"
    );
}

/// Without a user, only public organizations are visible, by name.
pub async fn anonymous_sees_only_public_orgs<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let zulu = org(s, "zulu", alice.id, true).await;
    let secret = org(s, "secret", alice.id, false).await;
    let alpha = org(s, "alpha", alice.id, true).await;
    let listed = s.visible_orgs(None).await.expect("visible_orgs");
    assert_eq!(
        org_names(&listed, &[&zulu, &secret, &alpha]),
        vec![alpha.name.clone(), zulu.name.clone()],
        "public orgs, by name"
    );
    let listed_alpha = listed.iter().find(|o| o.id == alpha.id).cloned();
    assert_eq!(listed_alpha, Some(alpha), "listed orgs are whole");
}

/// A user sees public organizations plus the private ones they are a member of, by name.
pub async fn members_see_their_private_orgs<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let public = org(s, "papa", alice.id, true).await;
    let alices = org(s, "alpha", alice.id, false).await;
    let joined = org(s, "zulu", alice.id, false).await;
    let bobs = org(s, "bravo", bob.id, false).await;
    s.set_membership(&membership(joined.id, bob.id, VIEW))
        .await
        .expect("set_membership");
    let ours = [&public, &alices, &joined, &bobs];
    assert_eq!(
        org_names(&s.visible_orgs(Some(bob.id)).await.expect("visible_orgs"), &ours),
        vec![bobs.name.clone(), public.name.clone(), joined.name.clone()],
        "bob's view"
    );
    assert_eq!(
        org_names(&s.visible_orgs(Some(alice.id)).await.expect("visible_orgs"), &ours),
        vec![alices.name.clone(), public.name.clone(), joined.name.clone()],
        "alice's view"
    );
    assert_eq!(
        org_names(&s.visible_orgs(Some(UserId::new())).await.expect("visible_orgs"), &ours),
        vec![public.name.clone()],
        "an unknown user sees only public orgs"
    );
}

/// Deleting an organization deletes its memberships, roles, projects and subscriptions, and nothing else.
pub async fn delete_org_cascades<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    let deployer = role(s, doomed.id, "Deployer").await;
    let kept_role = role(s, kept.id, "Deployer").await;
    s.set_membership(&membership(doomed.id, bob.id, RoleRef::Custom(deployer.id)))
        .await
        .expect("set_membership");
    let doomed_project = project(s, doomed.id, "app", alice.id).await;
    let kept_project = project(s, kept.id, "app", alice.id).await;
    let shared = cache(s, "shared", alice.id, false).await;
    for org in [doomed.id, kept.id] {
        assert!(
            s.subscribe(&grant(org, shared.id)).await.expect("subscribe"),
            "first subscription"
        );
    }

    assert!(
        s.delete_org(doomed.id).await.expect("delete_org"),
        "deleting an existing org"
    );
    assert_eq!(s.org(doomed.id).await.expect("org"), None, "the org is gone");
    assert_eq!(
        s.org_by_name(&doomed.name).await.expect("org_by_name"),
        None,
        "its name is free"
    );
    assert_eq!(
        s.members(doomed.id).await.expect("members"),
        vec![],
        "its memberships are gone"
    );
    assert_eq!(
        s.membership(doomed.id, bob.id).await.expect("membership"),
        None,
        "bob's membership is gone"
    );
    assert_eq!(s.roles(doomed.id).await.expect("roles"), vec![], "its roles are gone");
    assert_eq!(s.role(deployer.id).await.expect("role"), None, "its role by id is gone");
    assert_eq!(
        s.projects(doomed.id).await.expect("projects"),
        vec![],
        "its projects are gone"
    );
    assert_eq!(
        s.project_by_id(doomed_project.id).await.expect("project_by_id"),
        None,
        "its project by id"
    );
    assert_eq!(
        subscribed_caches(s, doomed.id).await,
        vec![],
        "its subscriptions are gone"
    );
    assert_eq!(
        subscriber_orgs(s, shared.id).await,
        vec![kept.clone()],
        "cache subscribers"
    );
    assert!(
        !s.delete_org(doomed.id).await.expect("delete_org"),
        "deleting it again reports false"
    );

    assert_eq!(
        s.org(kept.id).await.expect("org"),
        Some(kept.clone()),
        "the other org is untouched"
    );
    assert_eq!(
        s.role(kept_role.id).await.expect("role"),
        Some(kept_role),
        "the other org's role is untouched"
    );
    assert_eq!(
        s.projects(kept.id).await.expect("projects"),
        vec![kept_project],
        "the other org's project"
    );
    assert_eq!(
        s.membership(kept.id, alice.id).await.expect("membership"),
        Some(ADMIN),
        "the other membership"
    );
    assert_eq!(
        s.cache(shared.id).await.expect("cache"),
        Some(shared),
        "the cache itself is kept"
    );
    assert_eq!(
        s.user(bob.id).await.expect("user"),
        Some(bob),
        "members are kept as users"
    );
}
