//! Projects of organizations.

use super::support::{conflict, name, new_project, org, project, seconds, user};
use gradient_domain::model::InputOverride;
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, ProjectId};
use std::collections::BTreeMap;

/// A project reads back whole by org and name and by id, with optional fields set or not and with or without
/// input overrides of either kind.
pub async fn project_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let full = new_project(acme.id, "full", alice.id);
    let mut bare = new_project(acme.id, "bare", alice.id);
    bare.description = String::new();
    bare.branch = None;
    bare.flake_input_overrides = BTreeMap::new();
    bare.keep_evaluations = None;
    bare.poll_interval_secs = None;
    bare.active = false;
    let mut extremes = new_project(acme.id, "extremes", alice.id);
    extremes.keep_evaluations = Some(u32::MAX);
    extremes.poll_interval_secs = Some(0);
    extremes.flake_input_overrides = BTreeMap::from([("only-keep".to_owned(), InputOverride::KeepUrl)]);
    for project in [&full, &bare, &extremes] {
        s.create_project(project).await.expect("create_project");
        assert_eq!(
            s.project_by_id(project.id).await.expect("project_by_id"),
            Some(project.clone()),
            "project by id"
        );
        assert_eq!(
            s.project(acme.id, &project.name).await.expect("project"),
            Some(project.clone()),
            "project by org and name"
        );
    }
}

/// An organization's projects are listed by name, and only its own.
pub async fn projects_are_listed_by_name_per_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let web = project(s, acme.id, "web", alice.id).await;
    let api = project(s, acme.id, "api", alice.id).await;
    let mobile = project(s, acme.id, "mobile", alice.id).await;
    let foreign = project(s, other.id, "foreign", alice.id).await;
    assert_eq!(
        s.projects(acme.id).await.expect("projects"),
        vec![api, mobile, web],
        "acme's projects"
    );
    assert_eq!(
        s.projects(other.id).await.expect("projects"),
        vec![foreign],
        "the other org's projects"
    );
}

/// Project names are unique per organization: a clash is Conflict("project name") and changes nothing, while
/// another organization may reuse the name.
pub async fn taken_project_name_conflicts_per_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let original = project(s, acme.id, "app", alice.id).await;
    let mut copy = new_project(acme.id, "copy", alice.id);
    copy.name = original.name.clone();
    assert_eq!(
        s.create_project(&copy).await,
        Err(conflict("project name")),
        "create_project, taken name"
    );
    assert_eq!(
        s.project_by_id(copy.id).await.expect("project_by_id"),
        None,
        "no row for the refused project"
    );
    assert_eq!(
        s.project(acme.id, &original.name).await.expect("project"),
        Some(original.clone()),
        "the name still finds the original project"
    );
    assert_eq!(
        s.projects(acme.id).await.expect("projects"),
        vec![original.clone()],
        "acme's only project"
    );
    let mut elsewhere = new_project(other.id, "elsewhere", alice.id);
    elsewhere.name = original.name.clone();
    s.create_project(&elsewhere)
        .await
        .expect("create_project with the same name in another org");
    assert_eq!(
        s.project(other.id, &original.name).await.expect("project"),
        Some(elsewhere),
        "the other org's"
    );
}

/// A project must belong to an existing organization.
pub async fn project_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let project = new_project(OrgId::new(), "orphan", alice.id);
    assert_eq!(
        s.create_project(&project).await,
        Err(StorageError::NotFound),
        "project of an unknown org"
    );
    assert_eq!(
        s.project_by_id(project.id).await.expect("project_by_id"),
        None,
        "no row for the refused project"
    );
    assert_eq!(
        s.projects(project.org_id).await.expect("projects"),
        vec![],
        "an unknown org has no projects"
    );
}

/// `update_project` changes every field but id, organization, name, creator and creation time.
pub async fn update_project_changes_only_editable_fields<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let original = project(s, acme.id, "app", alice.id).await;
    let edit = gradient_domain::model::Project {
        managed: false,
        id: original.id,
        org_id: other.id,
        name: name("renamed"),
        display_name: "Renamed app".to_owned(),
        description: "Now with more tests".to_owned(),
        repository: "ssh://git@git.example.com/app.git".to_owned(),
        branch: None,
        wildcard: "checks.x86_64-linux.*".to_owned(),
        flake_input_overrides: BTreeMap::from([
            ("nixpkgs".to_owned(), InputOverride::KeepUrl),
            (
                "home-manager".to_owned(),
                InputOverride::Url("github:nix-community/home-manager".to_owned()),
            ),
        ]),
        keep_evaluations: None,
        poll_interval_secs: None,
        schedule: Some("*/10 * * * * *".to_owned()),
        active: false,
        pull_requests: false,
        fork_pull_requests: true,
        created_by: bob.id,
        created_at: original.created_at - seconds(3600),
    };
    s.update_project(&edit).await.expect("update_project");
    let expected = gradient_domain::model::Project {
        id: original.id,
        org_id: original.org_id,
        name: original.name.clone(),
        created_by: original.created_by,
        created_at: original.created_at,
        ..edit.clone()
    };
    assert_eq!(
        s.project_by_id(original.id).await.expect("project_by_id"),
        Some(expected.clone()),
        "by id"
    );
    assert_eq!(
        s.project(acme.id, &original.name).await.expect("project"),
        Some(expected.clone()),
        "by name"
    );
    assert_eq!(
        s.projects(other.id).await.expect("projects"),
        vec![],
        "it did not move to another org"
    );

    let mut back = expected.clone();
    back.branch = Some("release".to_owned());
    back.keep_evaluations = Some(3);
    back.poll_interval_secs = Some(60);
    back.flake_input_overrides.clear();
    back.active = true;
    back.pull_requests = true;
    back.fork_pull_requests = false;
    s.update_project(&back)
        .await
        .expect("update_project setting the options again");
    assert_eq!(
        s.project_by_id(original.id).await.expect("project_by_id"),
        Some(back),
        "options set again"
    );
}

/// Reads of a project that does not exist are empty; updating it is NotFound, deleting it false.
pub async fn absent_projects_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let ghost = new_project(acme.id, "ghost", alice.id);
    assert_eq!(
        s.project_by_id(ghost.id).await.expect("project_by_id"),
        None,
        "unknown project id"
    );
    assert_eq!(
        s.project(acme.id, &ghost.name).await.expect("project"),
        None,
        "unknown project name"
    );
    assert_eq!(
        s.projects(acme.id).await.expect("projects"),
        vec![],
        "an org without projects"
    );
    assert_eq!(
        s.update_project(&ghost).await,
        Err(StorageError::NotFound),
        "update of an unknown project"
    );
    assert_eq!(
        s.project_by_id(ghost.id).await.expect("project_by_id"),
        None,
        "a failed update creates nothing"
    );
    assert!(
        !s.delete_project(ProjectId::new()).await.expect("delete_project"),
        "deleting an unknown project"
    );
}

/// Deleting a project removes it alone, and reports whether it existed.
pub async fn delete_project_removes_only_that_project<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let doomed = project(s, acme.id, "doomed", alice.id).await;
    let kept = project(s, acme.id, "kept", alice.id).await;
    assert!(
        s.delete_project(doomed.id).await.expect("delete_project"),
        "deleting an existing project"
    );
    assert_eq!(
        s.project_by_id(doomed.id).await.expect("project_by_id"),
        None,
        "the project is gone"
    );
    assert_eq!(
        s.project(acme.id, &doomed.name).await.expect("project"),
        None,
        "its name is free"
    );
    assert!(
        !s.delete_project(doomed.id).await.expect("delete_project"),
        "deleting it again reports false"
    );
    assert_eq!(
        s.projects(acme.id).await.expect("projects"),
        vec![kept],
        "the other project is untouched"
    );
    assert_eq!(s.org(acme.id).await.expect("org"), Some(acme), "the org is untouched");
}

/// The projects to poll: active ones with a poll interval, of every organization, by id.
pub async fn polled_projects_are_the_active_ones_with_an_interval<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let mut wanted = Vec::new();
    for (org_id, name, interval, active) in [
        (acme.id, "polled", Some(60), true),
        (other.id, "elsewhere", Some(5), true),
        (acme.id, "hooked", None, true),
        (acme.id, "paused", Some(60), false),
    ] {
        let mut p = new_project(org_id, name, alice.id);
        p.poll_interval_secs = interval;
        p.active = active;
        s.create_project(&p).await.expect("create_project");
        if interval.is_some() && active {
            wanted.push(p);
        }
    }
    wanted.sort_by_key(|p| p.id);
    let polled: Vec<_> = s
        .polled_projects()
        .await
        .expect("polled_projects")
        .into_iter()
        .filter(|p| p.org_id == acme.id || p.org_id == other.id)
        .collect();
    assert_eq!(polled, wanted);
}

/// The projects the GitHub App's pushes are matched against: the active ones of every organization, by id.
pub async fn active_projects_are_those_of_every_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, true).await;
    let mut wanted = Vec::new();
    let mut paused = Vec::new();
    for (org_id, name, active) in [
        (acme.id, "web", true),
        (other.id, "api", true),
        (acme.id, "paused", false),
    ] {
        let mut p = new_project(org_id, name, alice.id);
        p.active = active;
        s.create_project(&p).await.expect("create_project");
        if active { wanted.push(p) } else { paused.push(p.id) }
    }
    wanted.sort_by_key(|p| p.id);
    let active = s.active_projects().await.expect("active_projects");
    let mine: Vec<_> = active
        .iter()
        .filter(|p| p.org_id == acme.id || p.org_id == other.id)
        .cloned()
        .collect();
    assert_eq!(
        mine, wanted,
        "the active projects of both organizations, by id, as written"
    );
    assert!(active.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    assert!(
        active.iter().all(|p| !paused.contains(&p.id)),
        "inactive projects are left out"
    );
}
