//! Evaluations, derivations, entry points and builds.

use super::support::{conflict, derivation as drv_path, now, org, project, seconds, user};
use gradient_domain::model::{
    AttributeError, Build, BuildLog, Derivation, EntryPoint, Evaluation, EvaluationTrigger, Timestamp, Transition,
};
use gradient_domain::ports::storage::{BuildSwap, Run};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::status::{BuildStatus, EvaluationStatus};
use gradient_domain::{BuildId, EvaluationId, OrgId, ProjectId, WorkerId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A queued evaluation of `project`, created now, with a branch and no errors.
fn new_evaluation(project: ProjectId) -> Evaluation {
    let created_at = now();
    Evaluation {
        id: EvaluationId::new(),
        project_id: project,
        commit: format!(
            "{}{}",
            Uuid::new_v4().simple(),
            &Uuid::new_v4().simple().to_string()[..8]
        ),
        branch: Some("main".to_owned()),
        trigger: EvaluationTrigger::Poll,
        pull_request: None,
        status: EvaluationStatus::Queued,
        errors: Vec::new(),
        transitions: vec![Transition {
            status: EvaluationStatus::Queued,
            at: created_at,
        }],
        created_at,
        updated_at: created_at,
    }
}

async fn evaluation<S: Storage>(s: &S, project: ProjectId) -> Evaluation {
    let evaluation = new_evaluation(project);
    s.create_evaluation(&evaluation)
        .await
        .expect("create_evaluation of a new evaluation succeeds");
    evaluation
}

/// A fresh derivation named `name` with two outputs, one input and a required feature.
fn new_derivation(name: &str) -> Derivation {
    let path = drv_path(name);
    let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
    Derivation {
        outputs: BTreeMap::from([
            ("out".to_owned(), format!("/nix/store/{hash}-{name}")),
            ("dev".to_owned(), format!("/nix/store/{hash}-{name}-dev")),
        ]),
        drv_path: path,
        system: "x86_64-linux".to_owned(),
        required_features: vec!["kvm".to_owned(), "big-parallel".to_owned()],
        inputs: vec![drv_path("glibc"), drv_path("bash")],
    }
}

/// Stores fresh derivations named `names` (as reported by another organization's worker: the paths become
/// known to every organization) and answers their paths, in the same order.
async fn derivations<S: Storage>(s: &S, names: &[&str]) -> Vec<String> {
    let reporter = user(s, "reporter").await;
    let elsewhere = org(s, "elsewhere", reporter.id, false).await;
    derivations_of(s, elsewhere.id, names).await
}

/// Stores fresh derivations named `names` for `org` and answers their paths, in the same order.
async fn derivations_of<S: Storage>(s: &S, org: OrgId, names: &[&str]) -> Vec<String> {
    let derivations: Vec<Derivation> = names.iter().map(|n| new_derivation(n)).collect();
    s.put_derivations(org, &derivations).await.expect("put_derivations");
    derivations.into_iter().map(|d| d.drv_path).collect()
}

fn entry_point(evaluation: EvaluationId, attribute: &str, drv_path: &str) -> EntryPoint {
    EntryPoint {
        evaluation_id: evaluation,
        attribute: attribute.to_owned(),
        drv_path: drv_path.to_owned(),
    }
}

/// A queued build as `link_builds` creates it, with the nil id ([`anon`] clears the ids storage gives).
fn queued(org: OrgId, drv_path: &str, at: Timestamp) -> Build {
    anon(Build::queued(org, drv_path, at))
}

/// The build with the nil id, to compare builds whose ids the storage chose.
fn anon(build: Build) -> Build {
    Build {
        id: BuildId(Uuid::nil()),
        ..build
    }
}

fn anon_all(builds: Vec<Build>) -> Vec<Build> {
    builds.into_iter().map(anon).collect()
}

/// A status change at `at`, as `Build::move_to` records it.
fn moved(mut build: Build, to: BuildStatus, at: Timestamp) -> Build {
    build.status = to;
    build.updated_at = at;
    build.transitions.push(Transition { status: to, at });
    build
}

/// `paths` sorted bytewise, as lists of builds are.
fn sorted(paths: &[&String]) -> Vec<String> {
    let mut paths: Vec<String> = paths.iter().map(|p| (*p).clone()).collect();
    paths.sort();
    paths
}

/// An evaluation reads back whole, with or without a branch and errors, for every trigger and status.
pub async fn evaluation_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let mut full = new_evaluation(app.id);
    full.trigger = EvaluationTrigger::Webhook;
    full.status = EvaluationStatus::Building;
    full.branch = Some("feature/ünïcode".to_owned());
    // A pull request from a fork, evaluated at GitHub's test merge commit.
    full.pull_request = Some(gradient_domain::model::PullRequestSource {
        number: 4_294_967_296,
        fork: true,
        head_repository: Some("https://github.com/mallory/app.git".to_owned()),
        head_branch: "fix/ünïcode".to_owned(),
        head_commit: "e".repeat(40),
        fetch_ref: "refs/pull/4294967296/merge".to_owned(),
    });
    full.errors = vec![
        AttributeError {
            attribute: "packages.x86_64-linux.broken".to_owned(),
            message: "error: attribute 'foo' missing\n  at «string»:1:1".to_owned(),
        },
        AttributeError {
            attribute: "checks.x86_64-linux.\"quoted\"".to_owned(),
            message: String::new(),
        },
    ];
    full.updated_at = full.created_at + seconds(5);
    let mut bare = new_evaluation(app.id);
    bare.branch = None;
    bare.trigger = EvaluationTrigger::Manual;
    for status in EvaluationStatus::ALL {
        let mut evaluation = new_evaluation(app.id);
        evaluation.status = status;
        s.create_evaluation(&evaluation).await.expect("create_evaluation");
        assert_eq!(
            s.evaluation(evaluation.id).await.expect("evaluation"),
            Some(evaluation),
            "evaluation with status {status:?}"
        );
    }
    for evaluation in [&full, &bare] {
        s.create_evaluation(evaluation).await.expect("create_evaluation");
        assert_eq!(
            s.evaluation(evaluation.id).await.expect("evaluation"),
            Some(evaluation.clone()),
            "evaluation by id"
        );
    }
}

/// Absent evaluations, derivations and builds are None; lists about unknown rows are empty.
pub async fn absent_evaluation_rows_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let unknown = EvaluationId::new();
    assert_eq!(s.evaluation(unknown).await.expect("evaluation"), None, "evaluation");
    assert_eq!(
        s.evaluations(ProjectId::new(), 10).await.expect("evaluations"),
        vec![],
        "evaluations of an unknown project"
    );
    let path = drv_path("nothing");
    assert_eq!(
        s.derivation(acme.id, &path).await.expect("derivation"),
        None,
        "derivation"
    );
    assert_eq!(s.build(acme.id, &path).await.expect("build"), None, "build");
    assert_eq!(
        s.entry_points(unknown).await.expect("entry_points"),
        vec![],
        "entry points"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(unknown).await.expect("builds_of_evaluation")),
        vec![],
        "builds of an unknown evaluation"
    );
    assert_eq!(
        s.evaluations_needing(acme.id, &path)
            .await
            .expect("evaluations_needing"),
        vec![],
        "evaluations needing an unknown build"
    );
    assert!(
        !s.delete_evaluation(unknown).await.expect("delete_evaluation"),
        "delete absent"
    );
}

/// An evaluation of an unknown project is NotFound; a taken id is Conflict("evaluation id") and changes nothing.
pub async fn evaluation_of_unknown_project_is_not_found_and_taken_id_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let orphan = new_evaluation(ProjectId::new());
    assert_eq!(
        s.create_evaluation(&orphan).await,
        Err(StorageError::NotFound),
        "create_evaluation, unknown project"
    );
    assert_eq!(
        s.evaluation(orphan.id).await.expect("evaluation"),
        None,
        "no row for it"
    );
    let original = evaluation(s, app.id).await;
    let mut copy = new_evaluation(app.id);
    copy.id = original.id;
    copy.commit = "0".repeat(40);
    assert_eq!(
        s.create_evaluation(&copy).await,
        Err(conflict("evaluation id")),
        "create_evaluation, taken id"
    );
    assert_eq!(
        s.evaluation(original.id).await.expect("evaluation"),
        Some(original),
        "the original is unchanged"
    );
}

/// A project's evaluations are listed newest first (ties by id, descending), at most `limit`, and only its own.
pub async fn evaluations_are_listed_newest_first_and_limited<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let other = project(s, acme.id, "other", alice.id).await;
    let base = now();
    let mut made = Vec::new();
    for offset in [3, 1, 5, 5, 2] {
        let mut evaluation = new_evaluation(app.id);
        evaluation.created_at = base + seconds(offset);
        evaluation.updated_at = evaluation.created_at;
        s.create_evaluation(&evaluation).await.expect("create_evaluation");
        made.push(evaluation);
    }
    evaluation(s, other.id).await;
    let mut expected = made.clone();
    expected.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
    assert_eq!(
        s.evaluations(app.id, 10).await.expect("evaluations"),
        expected,
        "newest first, ties by id descending"
    );
    assert_eq!(
        s.evaluations(app.id, 2).await.expect("evaluations"),
        expected[..2].to_vec(),
        "limited"
    );
    assert_eq!(s.evaluations(app.id, 0).await.expect("evaluations"), vec![], "limit 0");
}

/// update_evaluation changes status, errors, transitions and updated_at only; an absent evaluation is NotFound.
pub async fn update_evaluation_changes_only_status_errors_and_update_time<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let other = project(s, acme.id, "other", alice.id).await;
    let original = evaluation(s, app.id).await;
    let changed = Evaluation {
        id: original.id,
        project_id: other.id,
        commit: "f".repeat(40),
        branch: None,
        trigger: EvaluationTrigger::Manual,
        pull_request: None,
        status: EvaluationStatus::Evaluating,
        errors: vec![AttributeError {
            attribute: "packages.x86_64-linux.bad".to_owned(),
            message: "infinite recursion".to_owned(),
        }],
        transitions: [
            EvaluationStatus::Queued,
            EvaluationStatus::Fetching,
            EvaluationStatus::Evaluating,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, status)| Transition {
            status,
            at: original.created_at + seconds(i as i64),
        })
        .collect(),
        created_at: original.created_at - seconds(100),
        updated_at: original.updated_at + seconds(7),
    };
    s.update_evaluation(&changed).await.expect("update_evaluation");
    let expected = Evaluation {
        status: changed.status,
        errors: changed.errors.clone(),
        transitions: changed.transitions.clone(),
        updated_at: changed.updated_at,
        ..original.clone()
    };
    assert_eq!(
        s.evaluation(original.id).await.expect("evaluation"),
        Some(expected.clone()),
        "only status, errors, transitions and updated_at change"
    );
    let cleared = Evaluation {
        errors: Vec::new(),
        ..expected.clone()
    };
    s.update_evaluation(&cleared).await.expect("update_evaluation");
    assert_eq!(
        s.evaluation(original.id).await.expect("evaluation"),
        Some(cleared),
        "errors cleared"
    );
    let absent = new_evaluation(app.id);
    assert_eq!(
        s.update_evaluation(&absent).await,
        Err(StorageError::NotFound),
        "update_evaluation, absent"
    );
    assert_eq!(
        s.evaluation(absent.id).await.expect("evaluation"),
        None,
        "no row created"
    );
}

/// A derivation reads back whole, with or without features, outputs and inputs, for the organization that
/// stored it.
pub async fn derivation_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let full = new_derivation("hello");
    let bare = Derivation {
        drv_path: drv_path("bare"),
        system: "builtin".to_owned(),
        required_features: Vec::new(),
        outputs: BTreeMap::new(),
        inputs: Vec::new(),
    };
    s.put_derivations(acme.id, &[full.clone(), bare.clone()])
        .await
        .expect("put_derivations");
    for derivation in [full, bare] {
        assert_eq!(
            s.derivation(acme.id, &derivation.drv_path).await.expect("derivation"),
            Some(derivation.clone()),
            "derivation by path"
        );
    }
    s.put_derivations(acme.id, &[])
        .await
        .expect("put_derivations of nothing");
    assert_eq!(
        s.put_derivations(OrgId::new(), &[new_derivation("orphan")]).await,
        Err(StorageError::NotFound),
        "an unknown organization"
    );
}

/// put_derivations skips paths the organization already stored (its stored derivation is kept; within one
/// call the first of a path wins) and stores the rest; putting the same derivations again changes nothing.
pub async fn put_derivations_ignores_stored_paths<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let stored = new_derivation("stored");
    s.put_derivations(acme.id, std::slice::from_ref(&stored))
        .await
        .expect("put_derivations");
    let mut rewritten = stored.clone();
    rewritten.system = "aarch64-linux".to_owned();
    rewritten.inputs = Vec::new();
    let fresh = new_derivation("fresh");
    let mut fresh_again = fresh.clone();
    fresh_again.system = "i686-linux".to_owned();
    s.put_derivations(acme.id, &[rewritten, fresh.clone(), fresh_again])
        .await
        .expect("put_derivations with stored paths");
    assert_eq!(
        s.derivation(acme.id, &stored.drv_path).await.expect("derivation"),
        Some(stored.clone()),
        "a stored derivation is kept"
    );
    assert_eq!(
        s.derivation(acme.id, &fresh.drv_path).await.expect("derivation"),
        Some(fresh.clone()),
        "a new one is stored, the first of its path"
    );
    s.put_derivations(acme.id, &[stored.clone(), fresh.clone()])
        .await
        .expect("put_derivations again");
    assert_eq!(
        s.derivation(acme.id, &stored.drv_path).await.expect("derivation"),
        Some(stored),
        "unchanged"
    );
    assert_eq!(
        s.derivation(acme.id, &fresh.drv_path).await.expect("derivation"),
        Some(fresh),
        "unchanged"
    );
}

/// What one organization stores about a derivation is never what another reads: another organization that
/// stored the same path first (with other outputs) changes nothing for this one, which reads its own; an
/// organization that stored nothing reads nothing. Deleting an organization deletes what it stored.
pub async fn derivations_are_kept_per_organization<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let mallory = user(s, "mallory").await;
    let victim = org(s, "victim", alice.id, false).await;
    let attacker = org(s, "attacker", mallory.id, false).await;
    let bystander = org(s, "bystander", alice.id, false).await;
    let real = new_derivation("shared");
    let mut forged = real.clone();
    forged.outputs = BTreeMap::from([(
        "out".to_owned(),
        "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-evil".to_owned(),
    )]);
    forged.inputs = Vec::new();
    s.put_derivations(attacker.id, std::slice::from_ref(&forged))
        .await
        .expect("put_derivations of the attacker");
    s.put_derivations(victim.id, std::slice::from_ref(&real))
        .await
        .expect("put_derivations of the victim");
    assert_eq!(
        s.derivation(victim.id, &real.drv_path).await.expect("derivation"),
        Some(real.clone()),
        "the victim reads what its own worker reported"
    );
    assert_eq!(
        s.derivation(attacker.id, &real.drv_path).await.expect("derivation"),
        Some(forged),
        "the attacker reads only its own"
    );
    assert_eq!(
        s.derivation(bystander.id, &real.drv_path).await.expect("derivation"),
        None,
        "nothing for an organization that stored nothing"
    );
    assert!(s.delete_org(attacker.id).await.expect("delete_org"));
    assert_eq!(
        s.derivation(attacker.id, &real.drv_path).await.expect("derivation"),
        None,
        "gone with its organization"
    );
    assert_eq!(
        s.derivation(victim.id, &real.drv_path).await.expect("derivation"),
        Some(real),
        "the victim's is kept"
    );
}

/// dependents answers the organization's derivations taking a path as an input, by path: not another
/// organization's (which may report other inputs for the same path), not a second report's (the first stays),
/// and none after the organization is deleted.
pub async fn dependents_are_the_organizations_derivations_taking_an_input<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let lib = new_derivation("lib");
    let with_inputs = |name: &str, inputs: Vec<String>| Derivation {
        inputs,
        ..new_derivation(name)
    };
    let (app, tool) = (
        with_inputs("app", vec![lib.drv_path.clone(), drv_path("bash")]),
        with_inputs("tool", vec![lib.drv_path.clone(), lib.drv_path.clone()]),
    );
    let unrelated = new_derivation("unrelated");
    s.put_derivations(acme.id, &[lib.clone(), tool.clone(), app.clone(), unrelated])
        .await
        .expect("put_derivations");
    // Another organization's derivation taking the same input is its own.
    let forged = with_inputs("forged", vec![lib.drv_path.clone()]);
    s.put_derivations(other.id, std::slice::from_ref(&forged))
        .await
        .expect("put_derivations of another organization");
    // A second report of `tool` with other inputs changes nothing (the first is kept).
    let again = Derivation {
        inputs: vec![app.drv_path.clone()],
        ..tool.clone()
    };
    s.put_derivations(acme.id, &[again])
        .await
        .expect("put_derivations again");
    let mut expected = vec![app.drv_path.clone(), tool.drv_path.clone()];
    expected.sort();
    assert_eq!(
        s.dependents(acme.id, &lib.drv_path).await.expect("dependents"),
        expected
    );
    assert_eq!(
        s.dependents(acme.id, &app.drv_path).await.expect("dependents"),
        Vec::<String>::new(),
        "a second report adds no input"
    );
    assert_eq!(
        s.dependents(other.id, &lib.drv_path).await.expect("dependents"),
        vec![forged.drv_path.clone()]
    );
    assert_eq!(
        s.dependents(acme.id, &drv_path("nothing")).await.expect("dependents"),
        Vec::<String>::new()
    );
    assert!(s.delete_org(acme.id).await.expect("delete_org"));
    assert_eq!(
        s.dependents(acme.id, &lib.drv_path).await.expect("dependents"),
        Vec::<String>::new(),
        "gone with its organization"
    );
}

/// Entry points read back by attribute, per evaluation; recording an attribute again replaces its derivation.
pub async fn entry_points_round_trip_by_attribute<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let first = evaluation(s, app.id).await;
    let second = evaluation(s, app.id).await;
    let paths = derivations(s, &["hello", "world", "check"]).await;
    let hello = entry_point(first.id, "packages.x86_64-linux.hello", &paths[0]);
    let world = entry_point(first.id, "packages.x86_64-linux.world", &paths[1]);
    let check = entry_point(first.id, "checks.x86_64-linux.test", &paths[2]);
    s.add_entry_points(first.id, &[world.clone(), hello.clone()])
        .await
        .expect("add_entry_points");
    s.add_entry_points(first.id, std::slice::from_ref(&check))
        .await
        .expect("add_entry_points");
    s.add_entry_points(first.id, &[])
        .await
        .expect("add_entry_points of nothing");
    let theirs = entry_point(second.id, "packages.x86_64-linux.hello", &paths[0]);
    s.add_entry_points(second.id, std::slice::from_ref(&theirs))
        .await
        .expect("add_entry_points");
    assert_eq!(
        s.entry_points(first.id).await.expect("entry_points"),
        vec![check.clone(), hello.clone(), world.clone()],
        "the evaluation's entry points, by attribute"
    );
    assert_eq!(
        s.entry_points(second.id).await.expect("entry_points"),
        vec![theirs],
        "the other evaluation's"
    );
    let moved = entry_point(first.id, &hello.attribute, &paths[1]);
    s.add_entry_points(first.id, std::slice::from_ref(&moved))
        .await
        .expect("add_entry_points, attribute again");
    assert_eq!(
        s.entry_points(first.id).await.expect("entry_points"),
        vec![check, moved, world],
        "an attribute recorded again has its new derivation"
    );
}

/// Entry points of an unknown evaluation or derivation are NotFound, and one naming another evaluation is
/// Conflict("entry point evaluation"); either way nothing of the batch is recorded.
pub async fn entry_points_with_unknown_references_are_refused<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["hello"]).await;
    let unknown = EvaluationId::new();
    assert_eq!(
        s.add_entry_points(unknown, &[entry_point(unknown, "a", &paths[0])])
            .await,
        Err(StorageError::NotFound),
        "unknown evaluation"
    );
    assert_eq!(
        s.add_entry_points(unknown, &[]).await,
        Err(StorageError::NotFound),
        "unknown evaluation, no entry points"
    );
    let good = entry_point(eval.id, "a", &paths[0]);
    let missing = entry_point(eval.id, "b", &drv_path("missing"));
    assert_eq!(
        s.add_entry_points(eval.id, &[good.clone(), missing]).await,
        Err(StorageError::NotFound),
        "unknown derivation"
    );
    assert_eq!(
        s.add_entry_points(eval.id, &[good, entry_point(unknown, "c", &paths[0])])
            .await,
        Err(conflict("entry point evaluation")),
        "an entry point of another evaluation"
    );
    assert_eq!(
        s.entry_points(eval.id).await.expect("entry_points"),
        vec![],
        "nothing recorded"
    );
}

/// link_builds creates the organization's build once, however many of its evaluations link it, and
/// another organization gets its own; builds are answered and listed by path, each once.
pub async fn link_builds_builds_once_per_org<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let theirs = project(s, other.id, "theirs", alice.id).await;
    let first = evaluation(s, app.id).await;
    let mut second = new_evaluation(app.id);
    second.created_at = first.created_at + seconds(1);
    s.create_evaluation(&second).await.expect("create_evaluation");
    let foreign = evaluation(s, theirs.id).await;
    let paths = derivations(s, &["zlib", "hello", "shared"]).await;
    let (zlib, hello, shared) = (&paths[0], &paths[1], &paths[2]);
    let t1 = now();
    let t2 = t1 + seconds(60);

    let linked = s
        .link_builds(first.id, acme.id, &[zlib.clone(), shared.clone(), zlib.clone()], t1)
        .await
        .expect("link_builds");
    let linked = anon_all(linked);
    let expected_first: Vec<Build> = sorted(&[zlib, shared]).iter().map(|p| queued(acme.id, p, t1)).collect();
    assert_eq!(linked, expected_first, "new builds are queued, by path, each once");

    let linked = s
        .link_builds(second.id, acme.id, &[shared.clone(), hello.clone()], t2)
        .await
        .expect("link_builds");
    let linked = anon_all(linked);
    let expected_second: Vec<Build> = sorted(&[hello, shared])
        .iter()
        .map(|p| {
            if p == shared {
                queued(acme.id, p, t1)
            } else {
                queued(acme.id, p, t2)
            }
        })
        .collect();
    assert_eq!(linked, expected_second, "the shared build is the one already created");

    let linked = s
        .link_builds(foreign.id, other.id, std::slice::from_ref(shared), t2)
        .await
        .expect("link_builds");
    assert_eq!(
        anon_all(linked),
        vec![queued(other.id, shared, t2)],
        "another org has its own build"
    );

    assert_eq!(
        s.build(acme.id, shared).await.expect("build").map(anon),
        Some(queued(acme.id, shared, t1)),
        "acme's build"
    );
    assert_eq!(
        s.build(other.id, shared).await.expect("build").map(anon),
        Some(queued(other.id, shared, t2)),
        "the other org's build"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(first.id).await.expect("builds_of_evaluation")),
        expected_first,
        "the first evaluation's builds"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(second.id).await.expect("builds_of_evaluation")),
        expected_second,
        "the second evaluation's builds"
    );
    assert_eq!(
        s.evaluations_needing(acme.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![first.id, second.id],
        "both acme evaluations need the shared build, oldest first"
    );
    assert_eq!(
        s.evaluations_needing(acme.id, hello)
            .await
            .expect("evaluations_needing"),
        vec![second.id],
        "only the second needs hello"
    );
    assert_eq!(
        s.evaluations_needing(other.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![foreign.id],
        "the other org's evaluation needs its own build"
    );

    let again = s
        .link_builds(first.id, acme.id, &[zlib.clone(), shared.clone()], t2)
        .await
        .expect("link_builds again");
    assert_eq!(anon_all(again), expected_first, "linking again changes nothing");
    assert_eq!(
        anon_all(s.builds_of_evaluation(first.id).await.expect("builds_of_evaluation")),
        expected_first,
        "still linked once"
    );
    assert_eq!(
        s.link_builds(first.id, acme.id, &[], t2)
            .await
            .expect("link_builds of nothing"),
        vec![],
        "linking nothing"
    );
}

/// link_builds answers an existing build as stored: its status and transitions are kept.
pub async fn link_builds_returns_existing_status<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let first = evaluation(s, app.id).await;
    let second = evaluation(s, app.id).await;
    let paths = derivations(s, &["done", "new"]).await;
    let t1 = now();
    s.link_builds(first.id, acme.id, std::slice::from_ref(&paths[0]), t1)
        .await
        .expect("link_builds");
    let building = moved(queued(acme.id, &paths[0], t1), BuildStatus::Building, t1 + seconds(1));
    let done = moved(building, BuildStatus::Completed, t1 + seconds(3));
    s.update_build(&done).await.expect("update_build");
    let t2 = t1 + seconds(60);
    let linked = s
        .link_builds(second.id, acme.id, &paths, t2)
        .await
        .expect("link_builds");
    let linked = anon_all(linked);
    let mut expected = vec![done, queued(acme.id, &paths[1], t2)];
    expected.sort_by(|a, b| a.drv_path.cmp(&b.drv_path));
    assert_eq!(
        linked, expected,
        "the completed build stays completed; the new one is queued"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(second.id).await.expect("builds_of_evaluation")),
        expected,
        "the second evaluation's builds"
    );
}

/// link_builds with an unknown evaluation, organization or derivation is NotFound and creates and links nothing.
pub async fn link_builds_with_unknown_references_is_not_found<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["good"]).await;
    let good = &paths[0];
    let at = now();
    assert_eq!(
        s.link_builds(EvaluationId::new(), acme.id, std::slice::from_ref(good), at)
            .await,
        Err(StorageError::NotFound),
        "unknown evaluation"
    );
    assert_eq!(
        s.link_builds(EvaluationId::new(), acme.id, &[], at).await,
        Err(StorageError::NotFound),
        "unknown evaluation, no paths"
    );
    assert_eq!(
        s.link_builds(eval.id, OrgId::new(), std::slice::from_ref(good), at)
            .await,
        Err(StorageError::NotFound),
        "unknown organization"
    );
    assert_eq!(
        s.link_builds(eval.id, OrgId::new(), &[], at).await,
        Err(StorageError::NotFound),
        "unknown organization, no paths"
    );
    assert_eq!(
        s.link_builds(eval.id, acme.id, &[good.clone(), drv_path("missing")], at)
            .await,
        Err(StorageError::NotFound),
        "unknown derivation"
    );
    assert_eq!(s.build(acme.id, good).await.expect("build"), None, "no build created");
    assert_eq!(
        anon_all(s.builds_of_evaluation(eval.id).await.expect("builds_of_evaluation")),
        vec![],
        "nothing linked"
    );
}

/// update_build changes status, transitions and updated_at only; a build the organization does not have is
/// NotFound.
pub async fn update_build_changes_only_status_transitions_and_update_time<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["many-moves"]).await;
    let at = now();
    let original = queued(acme.id, &paths[0], at);
    let id = s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds")[0].id;
    // Many moves (a build restarted over and over) survive, in order.
    let mut changed = original.clone();
    for i in 0..50 {
        changed = moved(changed, BuildStatus::Building, at + seconds(2 * i + 1));
        changed = moved(changed, BuildStatus::Failed, at + seconds(2 * i + 2));
    }
    let changed = Build {
        id: BuildId::new(),
        created_at: at - seconds(100),
        ..changed
    };
    s.update_build(&changed).await.expect("update_build");
    let expected = Build {
        id,
        created_at: original.created_at,
        ..changed.clone()
    };
    assert_eq!(
        s.build(acme.id, &paths[0]).await.expect("build"),
        Some(expected.clone()),
        "only status, transitions and updated_at change (not the id nor the creation time)"
    );
    assert_eq!(
        s.build_by_id(id).await.expect("build_by_id"),
        Some(expected.clone()),
        "by id"
    );
    assert_eq!(
        s.builds_of_evaluation(eval.id).await.expect("builds_of_evaluation"),
        vec![expected],
        "the evaluation sees the updated build"
    );
    let elsewhere = Build {
        org_id: other.id,
        ..changed
    };
    assert_eq!(
        s.update_build(&elsewhere).await,
        Err(StorageError::NotFound),
        "update_build, another org's (absent) build"
    );
    assert_eq!(
        s.build(other.id, &paths[0]).await.expect("build"),
        None,
        "no row created"
    );
}

/// Builds get distinct ids, one per organization and derivation, stable across reads; an unknown id is None.
pub async fn builds_are_found_by_id<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let theirs = project(s, other.id, "theirs", alice.id).await;
    let (mine, foreign) = (evaluation(s, app.id).await, evaluation(s, theirs.id).await);
    let paths = derivations(s, &["a", "b"]).await;
    let at = now();
    let ours = s.link_builds(mine.id, acme.id, &paths, at).await.expect("link_builds");
    let again = s
        .link_builds(evaluation(s, app.id).await.id, acme.id, &paths, at)
        .await
        .expect("link_builds");
    let theirs = s
        .link_builds(foreign.id, other.id, &paths, at)
        .await
        .expect("link_builds");
    assert_eq!(ours, again, "the same builds, ids included");
    let mut ids: Vec<BuildId> = ours.iter().chain(&theirs).map(|b| b.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one id per organization and derivation");
    for b in ours.iter().chain(&theirs) {
        assert_eq!(s.build_by_id(b.id).await.expect("build_by_id").as_ref(), Some(b));
    }
    assert_eq!(s.build_by_id(BuildId::new()).await.expect("build_by_id"), None);
}

/// build_statuses answers the organization's builds among any number of paths (more than one SQL statement
/// holds), each once, and nothing for paths without a build or another organization's builds.
pub async fn build_statuses_answer_many_paths_at_once<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let names: Vec<String> = (0..1200).map(|i| format!("many-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let paths = derivations(s, &names).await;
    let at = now();
    s.link_builds(eval.id, acme.id, &paths[..1100], at)
        .await
        .expect("link_builds");
    let mut done = queued(acme.id, &paths[7], at);
    done = moved(done, BuildStatus::Building, at + seconds(1));
    done = moved(done, BuildStatus::Completed, at + seconds(2));
    s.update_build(&done).await.expect("update_build");
    let mut asked = paths.clone();
    asked.push(paths[7].clone());
    let answered = s.build_statuses(acme.id, &asked).await.expect("build_statuses");
    assert_eq!(answered.len(), 1100, "one answer per existing build");
    let statuses: BTreeMap<String, BuildStatus> = answered.into_iter().collect();
    assert_eq!(statuses.len(), 1100, "each once");
    assert_eq!(statuses[&paths[7]], BuildStatus::Completed);
    assert_eq!(statuses[&paths[1099]], BuildStatus::Queued);
    assert!(!statuses.contains_key(&paths[1100]), "no build of it");
    assert_eq!(
        s.build_statuses(other.id, &paths).await.expect("build_statuses"),
        vec![],
        "another organization's builds are not answered"
    );
    assert_eq!(s.build_statuses(acme.id, &[]).await.expect("build_statuses"), vec![]);
}

/// count_builds counts an evaluation's builds by status, and nothing of other evaluations; has_builds says
/// whether there is any.
pub async fn count_builds_counts_by_status<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let (first, second) = (evaluation(s, app.id).await, evaluation(s, app.id).await);
    let paths = derivations(s, &["c1", "c2", "c3", "c4"]).await;
    let at = now();
    s.link_builds(first.id, acme.id, &paths[..3], at)
        .await
        .expect("link_builds");
    s.link_builds(second.id, acme.id, &paths[2..], at)
        .await
        .expect("link_builds");
    let building = moved(queued(acme.id, &paths[0], at), BuildStatus::Building, at + seconds(1));
    s.update_build(&building).await.expect("update_build");
    let failed = moved(building, BuildStatus::Failed, at + seconds(2));
    let other = moved(queued(acme.id, &paths[1], at), BuildStatus::Building, at + seconds(1));
    s.update_build(&failed).await.expect("update_build");
    s.update_build(&other).await.expect("update_build");
    let count =
        |e: EvaluationId, st: &'static [BuildStatus]| async move { s.count_builds(e, st).await.expect("count") };
    assert_eq!(count(first.id, &[BuildStatus::Queued, BuildStatus::Building]).await, 2);
    assert_eq!(count(first.id, &[BuildStatus::Failed]).await, 1);
    assert_eq!(count(first.id, &[BuildStatus::Completed]).await, 0);
    assert_eq!(count(first.id, &[]).await, 0);
    assert_eq!(count(second.id, &[BuildStatus::Queued, BuildStatus::Building]).await, 2);
    assert_eq!(count(EvaluationId::new(), &[BuildStatus::Queued]).await, 0);
    let has = |e: EvaluationId, st: &'static [BuildStatus]| async move { s.has_builds(e, st).await.expect("has") };
    assert!(has(first.id, &[BuildStatus::Queued, BuildStatus::Building]).await);
    assert!(has(first.id, &[BuildStatus::Failed]).await);
    assert!(!has(first.id, &[BuildStatus::Completed]).await);
    assert!(!has(first.id, &[]).await);
    assert!(
        !has(second.id, &[BuildStatus::Failed]).await,
        "another evaluation's failure"
    );
    assert!(!has(EvaluationId::new(), &[BuildStatus::Queued]).await);
}

/// A build's log is stored (binary, several hundred KiB), replaced when stored again, absent before, refused
/// for an unknown build, and deleted with its organization.
pub async fn build_logs_round_trip_and_are_replaced<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["logged"]).await;
    let at = now();
    let build = s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds")[0].clone();
    assert_eq!(s.build_log(build.id).await.expect("build_log"), None, "no log yet");
    let first = BuildLog {
        build_id: build.id,
        compressed: (0..600_000u32).map(|i| (i % 251) as u8).collect(),
        size: 1_234_567,
        omitted: 42,
        created_at: at,
    };
    s.put_build_log(&first).await.expect("put_build_log");
    assert_eq!(s.build_log(build.id).await.expect("build_log"), Some(first.clone()));
    let second = BuildLog {
        compressed: vec![0, 1, 2, 255],
        size: 4,
        omitted: 0,
        created_at: at + seconds(10),
        ..first
    };
    s.put_build_log(&second).await.expect("put_build_log again");
    assert_eq!(
        s.build_log(build.id).await.expect("build_log"),
        Some(second.clone()),
        "replaced"
    );
    let stray = BuildLog {
        build_id: BuildId::new(),
        ..second
    };
    assert_eq!(
        s.put_build_log(&stray).await,
        Err(StorageError::NotFound),
        "unknown build"
    );
    assert_eq!(s.build_log(stray.build_id).await.expect("build_log"), None);
    assert!(s.delete_org(acme.id).await.expect("delete_org"));
    assert_eq!(
        s.build_log(build.id).await.expect("build_log"),
        None,
        "deleted with the organization"
    );
}

/// Many builds' ends and logs in one write: all or nothing.
pub async fn end_builds_writes_every_build_and_log_or_nothing<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["one", "two", "three"]).await;
    let at = now();
    let builds = s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds");
    let ended = |b: &Build, status: BuildStatus| {
        let mut b = b.clone();
        assert!(b.move_to(status, at + seconds(5)));
        b
    };
    let log = |b: &Build, text: &[u8]| BuildLog {
        build_id: b.id,
        compressed: text.to_vec(),
        size: text.len() as u64,
        omitted: 0,
        created_at: at + seconds(5),
    };
    let from_queued = |b: Build| (BuildStatus::Queued, b, None);
    assert_eq!(s.end_builds(&[], &[]).await, Ok(vec![]), "nothing to write");

    // One build unknown (its row is absent): nothing of the batch is written.
    let absent = Build {
        drv_path: drv_path("absent"),
        ..ended(&builds[2], BuildStatus::Building)
    };
    let stray_log = BuildLog {
        build_id: BuildId::new(),
        ..log(&builds[0], b"x")
    };
    for (batch, logs) in [
        (
            vec![
                from_queued(ended(&builds[0], BuildStatus::Building)),
                from_queued(absent),
            ],
            vec![log(&builds[0], b"a")],
        ),
        (
            vec![from_queued(ended(&builds[0], BuildStatus::Building))],
            vec![stray_log],
        ),
    ] {
        assert_eq!(s.end_builds(&batch, &logs).await, Err(StorageError::NotFound));
        assert_eq!(
            s.build(acme.id, &builds[0].drv_path).await.expect("build"),
            Some(builds[0].clone())
        );
        assert_eq!(s.build_log(builds[0].id).await.expect("build_log"), None);
    }

    let done = [
        ended(&builds[0], BuildStatus::DependencyFailed),
        ended(&builds[1], BuildStatus::Aborted),
    ];
    let logs = [log(&builds[0], b"first"), log(&builds[1], b"second")];
    let batch: Vec<_> = done.iter().cloned().map(from_queued).collect();
    assert_eq!(s.end_builds(&batch, &logs).await, Ok(vec![true, true]));
    for (b, l) in done.iter().zip(&logs) {
        assert_eq!(s.build(acme.id, &b.drv_path).await.expect("build").as_ref(), Some(b));
        assert_eq!(s.build_log(b.id).await.expect("build_log").as_ref(), Some(l));
    }
    assert_eq!(
        s.build(acme.id, &builds[2].drv_path).await.expect("build"),
        Some(builds[2].clone()),
        "the others untouched"
    );
}

/// update_build_if and end_builds write a build only if its stored status is still the one it was moved from
/// (compare-and-set): a move committed in between (an abort while a worker's success was on its way) stands,
/// the late write changes nothing of the build and says so; end_builds still writes the batch's other builds
/// and every log. An absent build is NotFound.
pub async fn build_writes_keep_a_move_committed_meanwhile<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["raced", "alone", "other"]).await;
    let at = now();
    let builds = s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds");
    let mut building = Vec::new();
    for b in &builds {
        let b = moved(b.clone(), BuildStatus::Building, at + seconds(1));
        assert_eq!(
            s.update_build_if(BuildStatus::Queued, &b).await,
            Ok(true),
            "queued → building"
        );
        building.push(b);
    }
    assert_eq!(
        s.update_build_if(BuildStatus::Queued, &building[0]).await,
        Ok(false),
        "a second write from the same status finds it moved"
    );
    // Two writers read the builds Building; the aborts of "raced" and "alone" commit first.
    let aborted: Vec<Build> = building[..2]
        .iter()
        .map(|b| moved(b.clone(), BuildStatus::Aborted, at + seconds(2)))
        .collect();
    for b in &aborted {
        assert_eq!(s.update_build_if(BuildStatus::Building, b).await, Ok(true), "the abort");
    }
    let completed: Vec<Build> = building
        .iter()
        .map(|b| moved(b.clone(), BuildStatus::Completed, at + seconds(3)))
        .collect();
    assert_eq!(
        s.update_build_if(BuildStatus::Building, &completed[1]).await,
        Ok(false),
        "the late success of an aborted build"
    );
    let logs: Vec<BuildLog> = completed
        .iter()
        .map(|b| BuildLog {
            build_id: b.id,
            compressed: b.drv_path.as_bytes().to_vec(),
            size: b.drv_path.len() as u64,
            omitted: 0,
            created_at: at + seconds(3),
        })
        .collect();
    let batch = vec![
        (BuildStatus::Building, completed[0].clone(), None),
        (BuildStatus::Building, completed[2].clone(), None),
    ];
    assert_eq!(
        s.end_builds(&batch, &logs).await,
        Ok(vec![false, true]),
        "written where still Building only"
    );
    for (b, want) in builds.iter().zip([&aborted[0], &aborted[1], &completed[2]]) {
        assert_eq!(s.build(acme.id, &b.drv_path).await.expect("build").as_ref(), Some(want));
    }
    for l in &logs {
        assert_eq!(
            s.build_log(l.build_id).await.expect("build_log").as_ref(),
            Some(l),
            "every log is kept"
        );
    }
    let absent = Build {
        drv_path: drv_path("absent"),
        ..completed[2].clone()
    };
    assert_eq!(
        s.update_build_if(BuildStatus::Building, &absent).await,
        Err(StorageError::NotFound)
    );
    assert_eq!(
        s.end_builds(&[(BuildStatus::Building, absent, None)], &[]).await,
        Err(StorageError::NotFound)
    );
}

/// Every build status reads back.
pub async fn build_statuses_round_trip<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["status"]).await;
    let at = now();
    s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds");
    for status in BuildStatus::ALL {
        let build = Build {
            status,
            ..queued(acme.id, &paths[0], at)
        };
        s.update_build(&build).await.expect("update_build");
        assert_eq!(
            s.build(acme.id, &paths[0]).await.expect("build").map(anon),
            Some(build),
            "build with status {status:?}"
        );
    }
}

/// Deleting an evaluation deletes its entry points and links, but not the derivations or the builds, which
/// other evaluations still need.
pub async fn delete_evaluation_removes_its_entry_points_and_links<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let doomed = evaluation(s, app.id).await;
    let kept = evaluation(s, app.id).await;
    let paths = derivations_of(s, acme.id, &["shared"]).await;
    let shared = &paths[0];
    let at = now();
    for eval in [&doomed, &kept] {
        s.add_entry_points(
            eval.id,
            &[entry_point(eval.id, "packages.x86_64-linux.default", shared)],
        )
        .await
        .expect("add_entry_points");
        s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds");
    }
    assert!(
        s.delete_evaluation(doomed.id).await.expect("delete_evaluation"),
        "deleted"
    );
    assert_eq!(
        s.evaluation(doomed.id).await.expect("evaluation"),
        None,
        "evaluation gone"
    );
    assert_eq!(
        s.entry_points(doomed.id).await.expect("entry_points"),
        vec![],
        "its entry points"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(doomed.id).await.expect("builds_of_evaluation")),
        vec![],
        "its links"
    );
    assert_eq!(
        s.evaluations_needing(acme.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![kept.id],
        "only the kept evaluation needs the build"
    );
    assert!(
        s.derivation(acme.id, shared).await.expect("derivation").is_some(),
        "derivation kept"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(kept.id).await.expect("builds_of_evaluation")),
        vec![queued(acme.id, shared, at)],
        "the build is kept"
    );
    assert_eq!(
        s.entry_points(kept.id).await.expect("entry_points").len(),
        1,
        "the other evaluation's entry points are kept"
    );
    assert!(
        !s.delete_evaluation(doomed.id).await.expect("delete_evaluation"),
        "already gone"
    );
}

/// Deleting a project deletes its evaluations with their entry points and links; the organization's builds and
/// other projects' evaluations stay.
pub async fn delete_project_removes_its_evaluations<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let doomed = project(s, acme.id, "doomed", alice.id).await;
    let kept = project(s, acme.id, "kept", alice.id).await;
    let gone = evaluation(s, doomed.id).await;
    let stays = evaluation(s, kept.id).await;
    let paths = derivations(s, &["shared"]).await;
    let shared = &paths[0];
    let at = now();
    for eval in [&gone, &stays] {
        s.add_entry_points(
            eval.id,
            &[entry_point(eval.id, "packages.x86_64-linux.default", shared)],
        )
        .await
        .expect("add_entry_points");
        s.link_builds(eval.id, acme.id, &paths, at).await.expect("link_builds");
    }
    assert!(s.delete_project(doomed.id).await.expect("delete_project"), "deleted");
    assert_eq!(s.evaluation(gone.id).await.expect("evaluation"), None, "its evaluation");
    assert_eq!(
        s.evaluations(doomed.id, 10).await.expect("evaluations"),
        vec![],
        "its evaluations"
    );
    assert_eq!(
        s.entry_points(gone.id).await.expect("entry_points"),
        vec![],
        "its entry points"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(gone.id).await.expect("builds_of_evaluation")),
        vec![],
        "its links"
    );
    assert_eq!(
        s.evaluations_needing(acme.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![stays.id],
        "the other project's evaluation still needs the build"
    );
    assert_eq!(
        s.evaluation(stays.id).await.expect("evaluation"),
        Some(stays),
        "the other project's evaluation is kept"
    );
    assert_eq!(
        s.build(acme.id, shared).await.expect("build").map(anon),
        Some(queued(acme.id, shared, at)),
        "the org's build is kept"
    );
}

/// Deleting an organization deletes its projects' evaluations and its builds, but not the derivations or
/// another organization's build of the same derivation.
pub async fn delete_org_removes_its_evaluations_and_builds<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    let gone_project = project(s, doomed.id, "app", alice.id).await;
    let kept_project = project(s, kept.id, "app", alice.id).await;
    let gone = evaluation(s, gone_project.id).await;
    let stays = evaluation(s, kept_project.id).await;
    let paths = derivations_of(s, kept.id, &["shared"]).await;
    let shared = &paths[0];
    let at = now();
    s.add_entry_points(
        gone.id,
        &[entry_point(gone.id, "packages.x86_64-linux.default", shared)],
    )
    .await
    .expect("add_entry_points");
    s.link_builds(gone.id, doomed.id, &paths, at)
        .await
        .expect("link_builds");
    s.link_builds(stays.id, kept.id, &paths, at).await.expect("link_builds");
    assert!(s.delete_org(doomed.id).await.expect("delete_org"), "deleted");
    assert_eq!(s.evaluation(gone.id).await.expect("evaluation"), None, "its evaluation");
    assert_eq!(
        s.entry_points(gone.id).await.expect("entry_points"),
        vec![],
        "its entry points"
    );
    assert_eq!(s.build(doomed.id, shared).await.expect("build"), None, "its build");
    assert_eq!(
        s.evaluations_needing(doomed.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![],
        "its links"
    );
    assert!(
        s.derivation(kept.id, shared).await.expect("derivation").is_some(),
        "derivation kept"
    );
    assert_eq!(
        anon_all(s.builds_of_evaluation(stays.id).await.expect("builds_of_evaluation")),
        vec![queued(kept.id, shared, at)],
        "the other org's build and link are kept"
    );
    assert_eq!(
        s.evaluations_needing(kept.id, shared)
            .await
            .expect("evaluations_needing"),
        vec![stays.id],
        "the other org's evaluation still needs its build"
    );
}

/// `totals` counts evaluations and builds by status (statuses without any left out), the queued and assigned
/// jobs with the oldest queued one's time, and the NAR files with their bytes (beyond 2^32).
pub async fn totals_count_by_status_the_queue_and_nar_files<S: Storage>(s: &S) {
    use super::support::{cache, enqueue, nar_file, new_build_job, new_evaluation_job};
    let empty = s.totals().await.expect("totals");
    assert_eq!(empty, Default::default(), "a fresh store counts nothing");
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let first = evaluation(s, app.id).await;
    let _second = evaluation(s, app.id).await;
    let mut failed = new_evaluation(app.id);
    failed.status = EvaluationStatus::Failed;
    s.create_evaluation(&failed).await.expect("create_evaluation");
    let paths = derivations(s, &["t1", "t2", "t3"]).await;
    let at = now();
    s.link_builds(first.id, acme.id, &paths, at).await.expect("link_builds");
    let building = moved(queued(acme.id, &paths[0], at), BuildStatus::Building, at + seconds(1));
    s.update_build(&building).await.expect("update_build");
    let mut older = new_build_job(acme.id, "old");
    older.created_at = at - seconds(60);
    let older = enqueue(s, older).await;
    enqueue(s, new_evaluation_job(acme.id)).await;
    let assigned = enqueue(s, new_build_job(acme.id, "assigned")).await;
    assert!(
        s.assign_job(assigned.id, gradient_domain::WorkerId::new(), at)
            .await
            .expect("assign_job")
    );
    let store = cache(s, "store", alice.id, false).await;
    nar_file(s, store.id).await;
    nar_file(s, store.id).await;

    let mut totals = s.totals().await.expect("totals");
    totals.evaluations.sort_by_key(|(st, _)| st.as_str());
    totals.builds.sort_by_key(|(st, _)| st.as_str());
    assert_eq!(
        totals.evaluations,
        [(EvaluationStatus::Failed, 1), (EvaluationStatus::Queued, 2)]
    );
    assert_eq!(totals.builds, [(BuildStatus::Building, 1), (BuildStatus::Queued, 2)]);
    assert_eq!((totals.queued_jobs, totals.assigned_jobs), (2, 1));
    assert_eq!(totals.oldest_queued_job, Some(older.created_at));
    assert_eq!((totals.nar_files, totals.nar_bytes), (2, 10_000_000_000));
}

/// derivations and builds read any number of paths at once: the organization's own, by path, each once (paths
/// it did not store, or another organization's, are left out). put_derivations and link_builds take any number
/// of paths too, and a derivation's edges however many inputs it has.
pub async fn derivations_and_builds_are_read_many_at_once<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let mut stored: Vec<Derivation> = (0..1_100).map(|i| new_derivation(&format!("d{i}"))).collect();
    let wide_inputs: Vec<String> = (0..1_200).map(|i| drv_path(&format!("input-{i}"))).collect();
    stored[0].inputs = wide_inputs.clone();
    s.put_derivations(acme.id, &stored)
        .await
        .expect("put_derivations of many");
    let theirs = derivations_of(s, other.id, &["theirs"]).await;
    let mut paths: Vec<String> = stored.iter().map(|d| d.drv_path.clone()).collect();
    let mut asked = paths.clone();
    asked.push(paths[3].clone());
    asked.push(theirs[0].clone());
    asked.push(drv_path("unknown"));
    stored.sort_by(|a, b| a.drv_path.cmp(&b.drv_path));
    assert_eq!(
        s.derivations(acme.id, &asked).await.expect("derivations"),
        stored,
        "the organization's own, by path, each once"
    );
    assert_eq!(s.derivations(acme.id, &[]).await.expect("derivations"), vec![]);
    assert_eq!(
        s.dependents(acme.id, &wide_inputs[1_150]).await.expect("dependents"),
        vec![paths[0].clone()],
        "every input of a derivation with many is an edge"
    );

    let at = now();
    let linked = s
        .link_builds(eval.id, acme.id, &paths, at)
        .await
        .expect("link_builds of many");
    paths.sort();
    let expected: Vec<Build> = paths.iter().map(|p| queued(acme.id, p, at)).collect();
    assert_eq!(anon_all(linked.clone()), expected, "every build, by path");
    assert_eq!(
        s.builds(acme.id, &asked).await.expect("builds"),
        linked,
        "read back as linked, by path, each once"
    );
    assert_eq!(
        s.builds(other.id, &asked).await.expect("builds"),
        vec![],
        "another organization has none of them"
    );
    assert_eq!(
        s.builds_of_evaluation(eval.id)
            .await
            .expect("builds_of_evaluation")
            .len(),
        paths.len(),
        "all linked"
    );
}

/// update_builds_if writes each listed build whose status is still the one given (a compare-and-set per build,
/// however many, in one transaction), and answers what each found: a build moved meanwhile (an abort between a
/// dispatch round's read and its write) keeps that move and answers its status, an absent one answers so,
/// neither stops the others; a build listed twice fails the whole list with Conflict and changes nothing.
pub async fn update_builds_if_compares_each_build<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    // More than one statement's worth of values on either engine.
    let names: Vec<String> = (0..700).map(|i| format!("b{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let paths = derivations(s, &names).await;
    let t1 = now();
    let linked = s.link_builds(eval.id, acme.id, &paths, t1).await.expect("link_builds");
    assert_eq!(s.update_builds_if(&[]).await, Ok(vec![]), "nothing to write");
    let t2 = t1 + seconds(1);
    // The abort that commits between the read and the write.
    let aborted = moved(linked[1].clone(), BuildStatus::Aborted, t2);
    assert_eq!(s.update_build_if(BuildStatus::Queued, &aborted).await, Ok(true));
    let building: Vec<Build> = linked
        .iter()
        .map(|b| moved(b.clone(), BuildStatus::Building, t2 + seconds(1)))
        .collect();
    let mut listed: Vec<(BuildStatus, Build)> = building.iter().map(|b| (BuildStatus::Queued, b.clone())).collect();
    // The same path of another organization, which has no build of it.
    let elsewhere = Build::queued(other.id, &paths[0], t2);
    listed.push((BuildStatus::Queued, moved(elsewhere, BuildStatus::Building, t2)));
    let mut twice = listed.clone();
    twice.push(listed[5].clone());
    assert_eq!(
        s.update_builds_if(&twice).await,
        Err(StorageError::Conflict("build listed twice".into())),
        "a build listed twice"
    );
    let mut expected = linked.clone();
    expected[1] = aborted.clone();
    assert_eq!(
        s.builds(acme.id, &paths).await.expect("builds"),
        expected,
        "nothing written"
    );

    let found = s.update_builds_if(&listed).await.expect("update_builds_if");
    let mut want = vec![BuildSwap::Written; linked.len()];
    want[1] = BuildSwap::Moved(BuildStatus::Aborted);
    want.push(BuildSwap::Absent);
    assert_eq!(found, want, "each build's compare-and-set");
    let mut expected = building.clone();
    expected[1] = aborted;
    assert_eq!(
        s.builds(acme.id, &paths).await.expect("builds"),
        expected,
        "written but the one aborted meanwhile, which stays aborted"
    );
    assert_eq!(
        s.build(other.id, &paths[0]).await.expect("build"),
        None,
        "nothing created"
    );
}

/// end_builds with a run writes a build only while that run's job is still in the assignment the report was
/// checked against: once the job was taken back (requeued: one more attempt) and handed out again, even to the
/// same worker, a late report of the old run changes nothing of the build, which the new run is building.
pub async fn end_builds_with_a_run_write_only_while_its_job_is_in_that_assignment<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let app = project(s, acme.id, "app", alice.id).await;
    let eval = evaluation(s, app.id).await;
    let paths = derivations(s, &["x"]).await;
    let at = now();
    let queued = s
        .link_builds(eval.id, acme.id, &paths, at)
        .await
        .expect("link_builds")
        .remove(0);
    let building = moved(queued, BuildStatus::Building, at + seconds(1));
    assert_eq!(s.update_build_if(BuildStatus::Queued, &building).await, Ok(true));
    let job = super::support::enqueue(s, super::support::new_build_job(acme.id, "x")).await;
    let (w1, w2) = (WorkerId::new(), WorkerId::new());
    assert_eq!(s.assign_job(job.id, w1, at).await, Ok(true));
    let first = Run {
        job: job.id,
        worker: w1,
        attempts: 0,
    };
    let completed = moved(building.clone(), BuildStatus::Completed, at + seconds(2));
    // w1 is lost: the job goes back (one more attempt) and out again, to w2 and then to w1.
    assert_eq!(s.requeue_jobs(w1, &[job.id]).await, Ok(1));
    assert_eq!(s.assign_job(job.id, w2, at + seconds(2)).await, Ok(true));
    let late = [(BuildStatus::Building, completed.clone(), Some(first))];
    assert_eq!(s.end_builds(&late, &[]).await, Ok(vec![false]), "the job is w2's now");
    assert_eq!(s.requeue_jobs(w2, &[job.id]).await, Ok(1));
    assert_eq!(s.assign_job(job.id, w1, at + seconds(3)).await, Ok(true));
    assert_eq!(
        s.end_builds(&late, &[]).await,
        Ok(vec![false]),
        "w1's again, but in another run"
    );
    assert_eq!(
        s.build(acme.id, &paths[0]).await.expect("build"),
        Some(building),
        "nothing written"
    );
    let current = Run {
        job: job.id,
        worker: w1,
        attempts: 2,
    };
    assert_eq!(
        s.end_builds(&[(BuildStatus::Building, completed.clone(), Some(current))], &[])
            .await,
        Ok(vec![true]),
        "the run the job is in"
    );
    assert_eq!(
        s.build(acme.id, &paths[0]).await.expect("build"),
        Some(completed.clone())
    );
    // Ended: no run of it writes any more.
    let again = moved(completed, BuildStatus::Queued, at + seconds(4));
    assert_eq!(s.finish_job(current, true).await, Ok(true));
    assert_eq!(
        s.end_builds(&[(BuildStatus::Completed, again, Some(current))], &[])
            .await,
        Ok(vec![false]),
        "its job ended"
    );
}
