//! The nix-cli adapter against the real `nix` on this machine: a git repository holding a flake whose
//! derivations use only `/bin/sh` and `/usr/bin` tools (no nixpkgs, no network). Every run gets a fresh nonce
//! in the derivations, so nothing is already built from an earlier run.

#![allow(clippy::unwrap_used)]

use gradient_domain::model::{FailureKind, InputOverride};
use gradient_domain::nix::{ExportEvent, ExportReader, ExportedPath};
use gradient_domain::ports::nix::{BuildOptions, DerivationInfo, EvalBatch, FetchedFlake, Nix, NixError};
use gradient_nix_cli::NixCli;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\n\
                          narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0";

const FLAKE: &str = r#"{
  outputs = { self }: let
    system = "@SYSTEM@";
    mk = name: script: extra: derivation ({
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" script ];
      nonce = "@NONCE@";
    } // extra);
    a = mk "a" "echo building a; echo a > $out" { };
    b = mk "b" "echo building b; /usr/bin/cat ${a} > $out; echo b >> $out" { };
    c = mk "c" "echo building c; /usr/bin/cat ${b} > $out; echo c >> $out" { };
    two = mk "two" "echo hello from two; echo out > $out; echo dev > $dev" {
      outputs = [ "out" "dev" ];
      requiredSystemFeatures = [ "big-parallel" ];
    };
    fails = mk "fails" "echo this check fails >&2; exit 1" { };
    base = mk "base" "echo base > $out" { };
    batchFails = mk "batch-fails" "echo this batch check fails >&2; exit 1" { };
    batchBase = mk "batch-base" "echo batch base > $out" { };
  in {
    # Built only by the batch test (tests run in parallel on one store).
    batch = {
      two = mk "batch-two" "echo hello from batch two; echo out > $out; echo dev > $dev" { outputs = [ "out" "dev" ]; };
      fails = batchFails;
      dependent = mk "batch-dependent" "/usr/bin/cat ${batchFails} > $out" { };
      top = mk "batch-top" "echo building batch top; /usr/bin/cat ${batchBase} > $out" { };
    };
    packages.${system} = { inherit a b c two; broken = throw "boom"; uncatchable = { }.nothing; };
    checks.${system} = {
      inherit fails;
      dependent = mk "dependent" "/usr/bin/cat ${fails} > $out" { };
      slow = mk "slow" "echo sleeping; /usr/bin/sleep 60; echo done > $out" { };
    };
    hydraJobs = {
      rooted = mk "rooted" "echo rooted > $out" { };
      top = mk "top" "echo building top; /usr/bin/cat ${base} > $out" { };
      notadrv = "just a string";
    };
    devShells = throw "no shells";
  };
}
"#;

const CONSUMER: &str = r#"{
  inputs.dep.url = "git+file://@DEP@?ref=main";
  outputs = { self, dep }: {
    packages."@SYSTEM@".labelled = derivation {
      name = "labelled-${dep.label}";
      system = "@SYSTEM@";
      builder = "/bin/sh";
      args = [ "-c" "echo > $out" ];
      nonce = "@NONCE@";
    };
  };
}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    system: String,
    repo: PathBuf,
    first: String,
    second: String,
    dep: PathBuf,
    consumer: PathBuf,
    consumer_commit: String,
}

fn nix() -> NixCli {
    NixCli::new().env("NIX_CONFIG", NIX_CONFIG)
}

fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("command runs");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn commit(repo: &Path, message: &str) -> String {
    run("git", &["add", "-A"], repo);
    run("git", &["commit", "-q", "-m", message], repo);
    run("git", &["rev-parse", "HEAD"], repo)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let system = run(
            "nix",
            &["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"],
            &root,
        );
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let fill = |text: &str| text.replace("@SYSTEM@", &system).replace("@NONCE@", &nonce);

        let repo = root.join("repo");
        std::fs::create_dir(&repo).unwrap();
        run("git", &["init", "-q", "-b", "main"], &repo);
        std::fs::write(repo.join("flake.nix"), fill(FLAKE)).unwrap();
        std::fs::write(repo.join("version"), "1").unwrap();
        let first = commit(&repo, "one");
        std::fs::write(repo.join("version"), "2").unwrap();
        let second = commit(&repo, "two");

        let dep = root.join("dep");
        std::fs::create_dir(&dep).unwrap();
        run("git", &["init", "-q", "-b", "main"], &dep);
        let label = |l: &str| format!("{{ outputs = {{ self }}: {{ label = \"{l}\"; }}; }}\n");
        std::fs::write(dep.join("flake.nix"), label("dep-one")).unwrap();
        commit(&dep, "one");
        run("git", &["checkout", "-q", "-b", "feature"], &dep);
        std::fs::write(dep.join("flake.nix"), label("dep-feature")).unwrap();
        commit(&dep, "feature");
        run("git", &["checkout", "-q", "main"], &dep);

        let consumer = root.join("consumer");
        std::fs::create_dir(&consumer).unwrap();
        run("git", &["init", "-q", "-b", "main"], &consumer);
        std::fs::write(
            consumer.join("flake.nix"),
            fill(CONSUMER).replace("@DEP@", dep.to_str().unwrap()),
        )
        .unwrap();
        run("git", &["add", "-A"], &consumer);
        run("nix", &["flake", "lock"], &consumer);
        let consumer_commit = commit(&consumer, "locked on dep-one");
        // The dependency moves on after the consumer locked it.
        std::fs::write(dep.join("flake.nix"), label("dep-two")).unwrap();
        commit(&dep, "two");

        Fixture {
            _dir: dir,
            root,
            system,
            repo,
            first,
            second,
            dep,
            consumer,
            consumer_commit,
        }
    })
}

fn url(path: &Path) -> String {
    format!("file://{}", path.display())
}

async fn fetched() -> FetchedFlake {
    let f = fixture();
    nix()
        .fetch(&url(&f.repo), Some("main"), &f.second, &BTreeMap::new(), None)
        .await
        .unwrap()
}

/// Everything an evaluation reported, checked for the batch ordering rules on the way.
#[derive(Default)]
struct Evaluation {
    attributes: BTreeMap<String, String>,
    derivations: BTreeMap<String, DerivationInfo>,
    errors: BTreeMap<String, String>,
}

async fn evaluate(flake: &FetchedFlake, wildcard: &str) -> Evaluation {
    let mut batches: Vec<EvalBatch> = Vec::new();
    let summary = nix().evaluate(flake, wildcard, |b| batches.push(b)).await.unwrap();
    let mut e = Evaluation::default();
    for batch in batches {
        for d in batch.derivations {
            for input in &d.input_drvs {
                assert!(
                    e.derivations.contains_key(input),
                    "{} reported before its input {input}",
                    d.drv_path
                );
            }
            assert!(e.derivations.insert(d.drv_path.clone(), d).is_none(), "reported twice");
        }
        for a in batch.attributes {
            assert!(
                e.derivations.contains_key(&a.drv_path),
                "{} before its derivation",
                a.attribute()
            );
            e.attributes.insert(a.attribute(), a.drv_path);
        }
        for err in batch.errors {
            e.errors.insert(err.attribute(), err.message);
        }
    }
    assert_eq!(summary.attributes, e.attributes.len());
    assert_eq!(summary.derivations, e.derivations.len());
    assert_eq!(summary.errors, e.errors.len());
    e
}

fn names(map: &BTreeMap<String, String>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn host_reports_this_machine() {
    let host = nix().host().await.unwrap();
    assert_eq!(host.systems[0], fixture().system);
    // Debian's nix-bin creates the `nixbld` group with its build users.
    assert!(
        host.parallel_builds.is_some_and(|n| n >= 1),
        "{:?}",
        host.parallel_builds
    );
    assert!(
        host.nix_version.starts_with("2.") && host.nix_version.matches(".").count() >= 2,
        "{}",
        host.nix_version
    );
}

#[tokio::test]
async fn substituters_are_read_from_nix_and_can_be_replaced() {
    let configured = nix()
        .env("NIX_CONFIG", "substituters = http://127.0.0.1:9 file:///nonexistent")
        .configured_substituters()
        .await
        .unwrap();
    assert_eq!(configured, ["http://127.0.0.1:9", "file:///nonexistent"]);
    // A build with none of Nix's substituters (the worker's choice when none answers) still builds.
    let drv = drv_of("packages.*.two").await;
    let out = nix()
        .only_substituters(Vec::new())
        .build(&drv, &BuildOptions::default(), |_| {})
        .await
        .unwrap();
    assert_eq!(names(&out.outputs), ["dev", "out"]);
}

#[tokio::test]
async fn fetch_puts_the_flake_at_the_commit_in_the_store() {
    let f = fixture();
    let none = BTreeMap::new();
    for (commit, version) in [(&f.first, "1"), (&f.second, "2")] {
        let flake = nix()
            .fetch(&url(&f.repo), Some("main"), commit, &none, None)
            .await
            .unwrap();
        assert_eq!(flake.rev.as_deref(), Some(commit.as_str()));
        assert!(flake.flake_ref.starts_with("git+file://") && flake.flake_ref.contains(commit.as_str()));
        assert!(flake.nar_hash.as_deref().is_some_and(|h| h.starts_with("sha256-")));
        let store = Path::new(&flake.store_path);
        assert!(store.starts_with("/nix/store"));
        assert_eq!(std::fs::read_to_string(store.join("version")).unwrap(), version);
    }
    // Without a ref, a local repository still finds the commit.
    let flake = nix().fetch(&url(&f.repo), None, &f.first, &none, None).await.unwrap();
    assert_eq!(flake.rev.as_deref(), Some(f.first.as_str()));

    let unknown = nix()
        .fetch(&url(&f.repo), Some("main"), &"ab".repeat(20), &none, None)
        .await;
    assert!(matches!(unknown, Err(NixError::Fetch(_))), "{unknown:?}");
    let nowhere = nix()
        .fetch(&url(&f.root.join("nope")), None, &"cd".repeat(20), &none, None)
        .await;
    assert!(matches!(nowhere, Err(NixError::Fetch(_))), "{nowhere:?}");
    let branch = nix().fetch(&url(&f.repo), Some("main"), "main", &none, None).await;
    assert!(matches!(branch, Err(NixError::InvalidRequest(_))), "{branch:?}");
}

#[tokio::test]
async fn fetch_applies_input_overrides_and_evaluation_keeps_them() {
    let f = fixture();
    let labelled = |e: &Evaluation| {
        let attr = format!("packages.{}.labelled", f.system);
        let drv = e
            .attributes
            .get(&attr)
            .unwrap_or_else(|| panic!("{:?}", e.errors))
            .clone();
        drv.rsplit_once("-labelled-")
            .unwrap()
            .1
            .trim_end_matches(".drv")
            .to_owned()
    };
    let fetch = |overrides: BTreeMap<String, InputOverride>| async move {
        nix()
            .fetch(&url(&f.consumer), Some("main"), &f.consumer_commit, &overrides, None)
            .await
            .unwrap()
    };

    let locked = fetch(BTreeMap::new()).await;
    assert!(locked.input_pins.is_empty());
    assert_eq!(labelled(&evaluate(&locked, "packages.*.*").await), "dep-one");

    let feature = format!("git+file://{}?ref=feature", f.dep.display());
    let moved = fetch(BTreeMap::from([("dep".to_owned(), InputOverride::Url(feature))])).await;
    let pin = &moved.input_pins["dep"];
    assert!(
        pin.contains("ref=feature") && pin.contains("rev="),
        "pinned to a revision: {pin}"
    );
    assert_eq!(labelled(&evaluate(&moved, "packages.*.*").await), "dep-feature");

    let updated = fetch(BTreeMap::from([("dep".to_owned(), InputOverride::KeepUrl)])).await;
    assert!(updated.input_pins["dep"].contains("rev="));
    assert!(updated.input_updates.is_empty());
    assert_eq!(labelled(&evaluate(&updated, "packages.*.*").await), "dep-two");

    let wrong = BTreeMap::from([("nope".to_owned(), InputOverride::Url(url(&f.dep)))]);
    let result = nix()
        .fetch(&url(&f.consumer), Some("main"), &f.consumer_commit, &wrong, None)
        .await;
    // Nix 2.8 ignores an override of an input the flake does not have; newer Nix refuses it.
    assert!(matches!(result, Ok(_) | Err(NixError::Fetch(_))), "{result:?}");
}

#[tokio::test]
async fn evaluation_reports_packages_their_graph_and_failures() {
    let sys = &fixture().system;
    let e = evaluate(&fetched().await, "packages.*.*").await;
    let attr = |name: &str| format!("packages.{sys}.{name}");
    assert_eq!(names(&e.attributes), [attr("a"), attr("b"), attr("c"), attr("two")]);
    // `throw` is caught inside one `nix eval`; a missing attribute is not, and costs one `nix eval` each.
    assert_eq!(names(&e.errors), [attr("broken"), attr("uncatchable")]);
    assert!(
        e.errors[&attr("broken")].contains("boom"),
        "{}",
        e.errors[&attr("broken")]
    );
    assert!(e.errors[&attr("uncatchable")].contains("'nothing'"), "{:?}", e.errors);

    let drv = |name: &str| &e.derivations[&e.attributes[&attr(name)]];
    let (a, b, c, two) = (drv("a"), drv("b"), drv("c"), drv("two"));
    assert!(a.drv_path.ends_with("-a.drv") && a.input_drvs.is_empty());
    assert_eq!(b.input_drvs, [a.drv_path.as_str()]);
    assert_eq!(c.input_drvs, [b.drv_path.as_str()]);
    assert_eq!(c.system, *sys);
    assert_eq!(names(&c.outputs), ["out"]);
    assert!(c.outputs["out"].ends_with("-c"));
    assert_eq!(names(&two.outputs), ["dev", "out"]);
    assert!(two.outputs["dev"].ends_with("-two-dev"));
    assert_eq!(two.required_system_features, ["big-parallel"]);
    assert!(a.required_system_features.is_empty());
    assert_eq!(e.derivations.len(), 4, "the closure holds exactly the four derivations");
}

#[tokio::test]
async fn wildcards_select_exclude_and_skip() {
    let sys = &fixture().system;
    let flake = fetched().await;

    let checks = evaluate(&flake, "checks.*.*, !checks.*.slow").await;
    assert_eq!(
        names(&checks.attributes),
        [format!("checks.{sys}.dependent"), format!("checks.{sys}.fails")]
    );
    let fails = &checks.attributes[&format!("checks.{sys}.fails")];
    let dependent = &checks.derivations[&checks.attributes[&format!("checks.{sys}.dependent")]];
    assert_eq!(dependent.input_drvs, [fails.as_str()]);
    assert!(checks.errors.is_empty());

    let excluded = evaluate(
        &flake,
        "packages.*.*, !packages.*.b, !packages.*.broken, !packages.*.uncatchable",
    )
    .await;
    let attrs = names(&excluded.attributes);
    assert!(
        attrs.len() == 3 && !attrs.contains(&format!("packages.{sys}.b").as_str()),
        "{attrs:?}"
    );
    assert!(excluded.errors.is_empty(), "an excluded attribute is never evaluated");
    assert_eq!(excluded.derivations.len(), 4, "b is still there, as a dependency of c");

    let jobs = evaluate(&flake, "hydraJobs.*").await;
    assert_eq!(names(&jobs.attributes), ["hydraJobs.rooted", "hydraJobs.top"]);
    assert!(jobs.errors["hydraJobs.notadrv"].contains("not a derivation"));

    // Patterns of different depths: a derivation selected by the shorter one is built, not an error because the
    // longer one goes on (listing and evaluating at once answered it as failed).
    let mixed = evaluate(&flake, "hydraJobs.*, hydraJobs.*.*").await;
    assert_eq!(names(&mixed.attributes), ["hydraJobs.rooted", "hydraJobs.top"]);
    assert!(
        mixed.errors.keys().all(|k| k == "hydraJobs.notadrv"),
        "{:?}",
        mixed.errors
    );

    let one = evaluate(&flake, &format!("packages.{sys}.a")).await;
    assert_eq!(names(&one.attributes), [format!("packages.{sys}.a")]);

    let mut all = evaluate(&flake, "*.*.*").await;
    assert_eq!(all.attributes.len(), 7, "{:?}", all.attributes);
    assert!(all.errors.remove(&format!("packages.{sys}.broken")).is_some());
    assert!(all.errors.remove(&format!("packages.{sys}.uncatchable")).is_some());
    assert!(all.errors.remove("devShells").is_some_and(|m| m.contains("no shells")));
    assert!(all.errors.is_empty(), "{:?}", all.errors);

    let nothing = evaluate(&flake, "nixosModules.*, packages.aarch64-darwin.*").await;
    assert!(nothing.attributes.is_empty() && nothing.errors.is_empty());

    let bad = nix().evaluate(&flake, "packages..x", |_| {}).await;
    assert!(matches!(bad, Err(NixError::InvalidRequest(_))), "{bad:?}");
}

/// The `.drv` of an attribute of the fixture's flake.
async fn drv_of(wildcard: &str) -> String {
    let e = evaluate(&fetched().await, wildcard).await;
    assert_eq!(e.attributes.len(), 1, "{wildcard}: {:?}", e.errors);
    e.attributes.into_values().next().unwrap()
}

#[tokio::test]
async fn a_build_streams_its_log_and_returns_every_output() {
    let drv = drv_of("packages.*.two").await;
    let mut log = Vec::new();
    let out = nix()
        .build(&drv, &BuildOptions::default(), |l| log.push(l.to_owned()))
        .await
        .unwrap();
    assert!(log.iter().any(|l| l == "hello from two"), "{log:?}");
    assert_eq!(names(&out.outputs), ["dev", "out"]);
    assert_eq!(std::fs::read_to_string(&out.outputs["out"]).unwrap(), "out\n");
    assert_eq!(std::fs::read_to_string(&out.outputs["dev"]).unwrap(), "dev\n");

    // Built already: nothing to do, same answer.
    let again = nix().build(&drv, &BuildOptions::default(), |_| {}).await.unwrap();
    assert_eq!(again, out);
}

#[tokio::test]
async fn failures_are_classified() {
    let fails = drv_of("checks.*.fails").await;
    let mut log = Vec::new();
    let err = nix()
        .build(&fails, &BuildOptions::default(), |l| log.push(l.to_owned()))
        .await
        .unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::BuilderFailed, "{err:?}");
    assert!(err.log_tail().unwrap().contains("this check fails"), "{err:?}");
    assert!(log.iter().any(|l| l == "this check fails"), "{log:?}");

    let err = nix()
        .build(&drv_of("checks.*.dependent").await, &BuildOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NixError::DependencyFailed { drv_path: Some(d), .. } if *d == fails),
        "{err:?}"
    );

    let slow = drv_of("checks.*.slow").await;
    let started = Instant::now();
    let opts = BuildOptions {
        timeout: Some(Duration::from_secs(1)),
        ..BuildOptions::default()
    };
    let err = nix().build(&slow, &opts, |_| {}).await.unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::Timeout, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let missing = "/nix/store/00000000000000000000000000000000-missing.drv";
    let err = nix()
        .build(missing, &BuildOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, NixError::Unavailable(_)), "{err:?}");
    let err = nix()
        .build("not/a/path.drv", &BuildOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, NixError::InvalidRequest(_)), "{err:?}");
}

#[tokio::test]
async fn many_builds_run_in_one_nix_and_each_gets_its_own_outcome_and_log() {
    let e = evaluate(&fetched().await, "batch.*").await;
    let drv = |attr: &str| -> (String, BTreeMap<String, String>) {
        let path = e
            .attributes
            .iter()
            .find(|(a, _)| a.ends_with(attr))
            .map(|(_, d)| d.clone())
            .unwrap();
        let outputs = e.derivations[&path].outputs.clone();
        (path, outputs)
    };
    let drvs = vec![drv(".two"), drv(".fails"), drv(".dependent"), drv(".top")];
    let dir = fixture().root.join("roots").join("many");
    let opts = BuildOptions {
        gc_root: Some(dir.clone()),
        ..BuildOptions::default()
    };
    let mut log: Vec<(String, String)> = Vec::new();
    let outcomes = nix()
        .build_many(&drvs, &opts, |d, l| log.push((d.to_owned(), l.to_owned())), |_| {})
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 4);
    let two = outcomes[0].as_ref().unwrap();
    assert_eq!(two.outputs, drvs[0].1, "every output of two");
    assert_eq!(std::fs::read_to_string(&two.outputs["dev"]).unwrap(), "dev\n");
    let err = outcomes[1].as_ref().unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::BuilderFailed, "{err:?}");
    assert!(err.log_tail().unwrap().contains("this batch check fails"), "{err:?}");
    let err = outcomes[2].as_ref().unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::DependencyFailed, "{err:?}");
    let top = outcomes[3].as_ref().unwrap();
    assert!(
        std::fs::read_to_string(&top.outputs["out"])
            .unwrap()
            .starts_with("batch base")
    );
    // Each line went to the build that printed it (the dependency `base` is built too, under its own name).
    assert!(
        log.contains(&(drvs[0].0.clone(), "hello from batch two".to_owned())),
        "{log:?}"
    );
    assert!(
        log.contains(&(drvs[1].0.clone(), "this batch check fails".to_owned())),
        "{log:?}"
    );
    assert!(
        log.contains(&(drvs[3].0.clone(), "building batch top".to_owned())),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|(d, _)| d == &drvs[2].0),
        "dependent never ran: {log:?}"
    );
    // The outputs are rooted until the directory goes.
    assert!(roots_of(&top.outputs["out"]).contains(dir.to_str().unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();

    // Built already: the same answers, without building.
    let again = nix()
        .build_many(&drvs[..1], &BuildOptions::default(), |_, _| {}, |_| {})
        .await
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap(), two);
    assert!(matches!(
        nix()
            .build_many(&[("not/a.drv".into(), BTreeMap::new())], &opts, |_, _| {}, |_| {})
            .await,
        Err(NixError::InvalidRequest(_))
    ));
}

fn roots_of(path: &str) -> String {
    run("nix-store", &["--query", "--roots", path], Path::new("/"))
}

#[tokio::test]
async fn gc_roots_pin_the_derivation_and_outputs_until_their_directory_goes() {
    let drv = drv_of("packages.*.c").await;
    let dir = fixture().root.join("roots").join("c");
    let opts = BuildOptions {
        gc_root: Some(dir.clone()),
        ..BuildOptions::default()
    };
    let out = nix().build(&drv, &opts, |_| {}).await.unwrap();
    let output = &out.outputs["out"];
    assert_eq!(std::fs::read_to_string(output).unwrap(), "a\nb\nc\n");
    assert_eq!(std::fs::read_link(dir.join("drv")).unwrap(), Path::new(&drv));
    assert_eq!(std::fs::read_link(dir.join("out")).unwrap(), Path::new(output));
    assert!(roots_of(output).contains(dir.join("out").to_str().unwrap()));
    assert!(roots_of(&drv).contains(dir.join("drv").to_str().unwrap()));

    // Removing the directory releases them.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!roots_of(output).contains(dir.to_str().unwrap()));
    assert!(!roots_of(&drv).contains(dir.to_str().unwrap()));
}

#[tokio::test]
async fn requisites_list_each_path_of_a_closure_after_its_references() {
    // 24 derivations in a chain plus 24 independent ones: their `.drv` files refer to each other.
    let f = fixture();
    let dir = f.root.join("requisites");
    std::fs::create_dir_all(&dir).unwrap();
    let nonce = uuid_like();
    let expr = format!(
        r#"let mk = name: extra: derivation ({{ inherit name; system = "x86_64-linux"; builder = "/bin/sh";
             args = [ "-c" "echo > $out" ]; nonce = "{nonce}"; }} // extra);
           chain = builtins.foldl' (prev: i: mk "chain-${{toString i}}" {{ inherit prev; }}) (mk "chain-0" {{ }})
             (builtins.genList (i: i + 1) 23);
         in [ chain ] ++ builtins.genList (i: mk "free-${{toString i}}" {{ }}) 24"#
    );
    std::fs::write(dir.join("requisites.nix"), expr).unwrap();
    let drvs: Vec<String> = run("nix-instantiate", &[dir.join("requisites.nix").to_str().unwrap()], &dir)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(drvs.len(), 25);
    let closure = nix().requisites(&drvs).await.unwrap();
    assert_eq!(closure.len(), 48, "{closure:?}");
    let position: std::collections::HashMap<&str, usize> =
        closure.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    for (i, path) in closure.iter().enumerate() {
        for reference in run("nix-store", &["--query", "--references", path], &dir).lines() {
            if reference != path {
                assert!(
                    position[reference] < i,
                    "{reference} is listed after {path}, which refers to it"
                );
            }
        }
    }
    let missing = ["/nix/store/00000000000000000000000000000000-missing".to_owned()];
    assert!(matches!(nix().requisites(&missing).await, Err(NixError::Push(_))));
    assert!(matches!(
        nix().requisites(&["relative/path".to_owned()]).await,
        Err(NixError::InvalidRequest(_))
    ));
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn exported(paths: &[String]) -> Result<Vec<u8>, NixError> {
    use futures_util::StreamExt;
    let mut stream = nix().export(paths).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

#[tokio::test]
async fn an_export_carries_each_path_after_its_references_and_imports_into_another_store() {
    let f = fixture();
    let flake = fetched().await;
    let jobs = evaluate(&flake, "hydraJobs.top").await;
    let top = &jobs.derivations[&jobs.attributes["hydraJobs.top"]];
    let base_drv = top.input_drvs[0].clone();
    let built = nix().build(&base_drv, &BuildOptions::default(), |_| {}).await.unwrap();
    let base_out = built.outputs["out"].clone();

    let mut paths = nix().requisites(std::slice::from_ref(&top.drv_path)).await.unwrap();
    paths.push(base_out.clone());
    let bytes = exported(&paths).await.unwrap();

    // What the stream says of each path is what the store says of it.
    let mut reader = ExportReader::new();
    let mut seen: Vec<ExportedPath> = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let (used, event) = reader.advance(rest).unwrap();
        if let Some(ExportEvent::Path(p)) = event {
            seen.push(p);
        }
        rest = &rest[used..];
    }
    reader.finish().unwrap();
    assert_eq!(seen.len(), paths.len());
    let dir = f.root.join("export");
    std::fs::create_dir_all(&dir).unwrap();
    for p in &seen {
        let path = p.path.to_string();
        assert!(paths.contains(&path), "{path}");
        let hash = run("nix-store", &["--query", "--hash", &path], &dir);
        assert_eq!(p.nar_hash.to_string(), hash.trim(), "{path}");
        let mut refs: Vec<String> = p.references.iter().map(ToString::to_string).collect();
        refs.sort();
        let mut expected: Vec<String> = run("nix-store", &["--query", "--references", &path], &dir)
            .lines()
            .map(str::to_owned)
            .collect();
        expected.sort();
        assert_eq!(refs, expected, "{path}");
        let position = |x: &str| seen.iter().position(|s| s.path.to_string() == x);
        for r in &p.references {
            if r != &p.path {
                assert!(position(&r.to_string()) < position(&path), "{r} after {path}");
            }
        }
    }
    assert_eq!(
        seen.iter()
            .find(|p| p.path.to_string() == base_out)
            .and_then(|p| p.deriver.as_ref())
            .map(ToString::to_string),
        Some(base_drv.clone())
    );

    // Another store takes the stream as it is.
    let fresh = dir.join("fresh-store");
    let mut import = Command::new("nix-store")
        .args(["--store", fresh.to_str().unwrap(), "--import"])
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &bytes).unwrap();
    assert!(import.wait().unwrap().success());
    for path in &paths {
        let verified = Command::new("nix-store")
            .args(["--store", fresh.to_str().unwrap(), "--verify-path", path])
            .env("NIX_CONFIG", NIX_CONFIG)
            .status()
            .unwrap();
        assert!(verified.success(), "{path} in the other store");
    }

    // A path that is not in the store ends the stream with an error; a malformed one is refused at once.
    let missing = "/nix/store/00000000000000000000000000000000-missing".to_owned();
    assert!(matches!(
        exported(&[base_out.clone(), missing]).await,
        Err(NixError::Push(_))
    ));
    assert!(matches!(
        nix().export(&["/nix/store/with space".to_owned()]).await.err(),
        Some(NixError::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn a_flake_that_does_not_evaluate_is_an_eval_error() {
    let f = fixture();
    let flake_at = |name: &str, text: &str| {
        let repo = f.root.join(name);
        std::fs::create_dir_all(&repo).unwrap();
        run("git", &["init", "-q", "-b", "main"], &repo);
        std::fs::write(repo.join("flake.nix"), text).unwrap();
        (url(&repo), commit(&repo, name))
    };
    let none = BTreeMap::new();

    let (repo, rev) = flake_at("syntax-error", "{ outputs = { self }: { packages = ; }; }\n");
    let err = nix().fetch(&repo, Some("main"), &rev, &none, None).await.unwrap_err();
    assert!(
        matches!(&err, NixError::Eval(m) if m.contains("syntax error")),
        "{err:?}"
    );

    let (repo, rev) = flake_at("throws", "{ outputs = { self }: throw \"no outputs today\"; }\n");
    let flake = nix().fetch(&repo, Some("main"), &rev, &none, None).await.unwrap();
    let err = nix()
        .evaluate(&flake, "packages.*.*, checks.*.*", |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NixError::Eval(m) if m.contains("no outputs today")),
        "{err:?}"
    );
}

/// `eval_processes`: the selected attributes are split between that many `nix eval` processes running at once,
/// counted by a `nix` that wraps the real one; the evaluation reports the same as with one process.
#[tokio::test]
async fn an_evaluation_is_split_between_evaluator_processes() {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v nix"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "#!/bin/sh\necho + >> {log}\n{real} \"$@\"\nrc=$?\necho - >> {log}\nexit $rc\n",
        log = log.display()
    );
    let bin = dir.path().join("nix");
    std::fs::write(&bin, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let most_at_once = || {
        let (mut now, mut most) = (0i32, 0i32);
        for line in std::fs::read_to_string(&log).unwrap().lines() {
            now += if line == "+" { 1 } else { -1 };
            most = most.max(now);
        }
        most
    };
    let flake = fetched().await;
    let run = |processes: usize| {
        let cli = nix().with_bin_dir(dir.path()).eval_processes(processes);
        let flake = flake.clone();
        async move {
            let mut batches: Vec<EvalBatch> = Vec::new();
            cli.evaluate(&flake, "packages.*.*", |b| batches.push(b)).await.unwrap();
            let mut attributes: Vec<(String, String)> = batches
                .iter()
                .flat_map(|b| b.attributes.iter().map(|a| (a.attribute(), a.drv_path.clone())))
                .collect();
            let mut errors: Vec<String> = batches
                .iter()
                .flat_map(|b| b.errors.iter().map(|e| e.attribute()))
                .collect();
            attributes.sort();
            errors.sort();
            let derivations: usize = batches.iter().map(|b| b.derivations.len()).sum();
            (attributes, errors, derivations)
        }
    };
    let one = run(1).await;
    assert_eq!(most_at_once(), 1, "one process at a time");
    std::fs::remove_file(&log).unwrap();
    let three = run(3).await;
    assert!(
        most_at_once() >= 2,
        "the six attributes were evaluated by processes at once"
    );
    assert_eq!(three, one, "the same evaluation");
    assert_eq!((one.0.len(), one.1.len(), one.2), (4, 2, 4));
}

/// Derivations of `expr` (an attribute set of derivations; `mk name script extra` makes one with this test's own
/// nonce), instantiated: name → (drv, outputs).
fn instantiate(expr: &str) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let dir = tempfile::tempdir().unwrap();
    let nonce = format!("{:?}-{}", Instant::now(), std::process::id());
    let file = dir.path().join("default.nix");
    std::fs::write(
        &file,
        format!(
            r#"let
  mk = name: script: extra: derivation ({{
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
    nonce = "{nonce}";
  }} // extra);
in {expr}"#
        ),
    )
    .unwrap();
    let names = run(
        "nix-instantiate",
        &[
            "--eval",
            "--json",
            "-E",
            &format!("builtins.attrNames (import {})", file.display()),
        ],
        dir.path(),
    );
    let names: Vec<String> = serde_json::from_str(&names).unwrap();
    names
        .into_iter()
        .map(|name| {
            let drv = run("nix-instantiate", &["-A", &name, file.to_str().unwrap()], dir.path())
                .trim()
                .to_owned();
            let outputs = run("nix-store", &["--query", "--outputs", &drv], dir.path());
            let outputs = [("out".to_owned(), outputs.trim().to_owned())].into();
            (name, (drv, outputs))
        })
        .collect()
}

fn valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .env("NIX_CONFIG", NIX_CONFIG)
        .status()
        .unwrap()
        .success()
}

/// Runs `drvs` in one `build_many` whose build `gate` waits for a file: answers what `on_built` told before the
/// file was written (once `want` were told, or after a minute), with the outcomes.
async fn built_before_the_gate(
    drvs: &[(String, BTreeMap<String, String>)],
    gate: &Path,
    want: usize,
    max_jobs: u32,
) -> (
    Vec<String>,
    Vec<gradient_domain::ports::nix::Result<gradient_domain::ports::nix::BuildOutput>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let opts = BuildOptions {
        max_jobs: Some(max_jobs),
        ..BuildOptions::default()
    };
    let nix = nix();
    let building = nix.build_many(
        drvs,
        &opts,
        |_, _| {},
        |d| {
            let _ = tx.send(d.to_owned());
        },
    );
    let watching = async {
        let mut told = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while told.len() < want {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(d)) => told.push(d),
                _ => break,
            }
        }
        std::fs::write(gate, "go").unwrap();
        told
    };
    let (outcomes, told) = tokio::join!(building, watching);
    (told, outcomes.unwrap())
}

#[tokio::test]
async fn a_batch_tells_each_build_once_built_while_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    let wait = format!(
        "while [ ! -e {} ]; do /usr/bin/sleep 0.05; done; echo slow > $out",
        gate.display()
    );
    // In parallel: which of two running builds ended is looked up.
    let d = instantiate(&format!(
        r#"{{ quick = mk "quick" "echo quick > $out" {{ }}; slow = mk "slow" "{wait}" {{ }}; }}"#
    ));
    let drvs = vec![d["slow"].clone(), d["quick"].clone()];
    let (told, outcomes) = built_before_the_gate(&drvs, &gate, 1, 2).await;
    assert_eq!(told, vec![d["quick"].0.clone()], "quick is told while slow waits");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(valid(&d["slow"].1["out"]));

    // One build at a time (a chain, then a failure, then another build): known built as each ends; the failed
    // build is never told.
    std::fs::remove_file(&gate).unwrap();
    let d = instantiate(&format!(
        r#"rec {{
  a = mk "a" "echo a > $out" {{ }};
  b = mk "b" "echo b > $out" {{ inherit a; }};
  bad = mk "bad" "exit 1" {{ inherit b; }};
  c = mk "c" "echo c > $out" {{ inherit b; after = bad; }};
  d = mk "d" "echo d > $out" {{ inherit b; }};
  z = mk "z" "{wait}" {{ inherit d; }};
}}"#
    ));
    let drvs: Vec<_> = ["a", "b", "bad", "c", "d", "z"].iter().map(|n| d[*n].clone()).collect();
    let (told, outcomes) = built_before_the_gate(&drvs, &gate, 3, 1).await;
    let name = |drv: &String| d.iter().find(|(_, (p, _))| p == drv).unwrap().0.clone();
    let told: Vec<String> = told.iter().map(name).collect();
    assert_eq!(told, ["a", "b", "d"], "in the order built, z still waiting");
    let ok: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false, true, true]);
}

/// A binary cache holding nothing, served over HTTP on loopback: its `nix-cache-info`, and 404 for anything
/// else. Answers its URL and how many narinfos Nix asked it for so far.
fn empty_cache() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            if path.ends_with(".narinfo") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let (status, body) = if path == "/nix-cache-info" {
                ("200 OK", "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, asked)
}

#[tokio::test]
async fn a_run_with_everything_it_needs_in_the_store_asks_no_substituter() {
    let (url, asked) = empty_cache();
    let opts = BuildOptions {
        substituters: vec![url],
        ..BuildOptions::default()
    };
    let d = instantiate(
        r#"rec {
  a = mk "a" "echo a > $out" { };
  b = mk "b" "echo b > $out" { inherit a; };
  c = mk "c" "echo c > $out" { inherit b; };
  x = mk "x" "echo x > $out" { };
  y = mk "y" "echo y > $out" { inherit x; };
}"#,
    );
    let build = |names: &[&str]| {
        let drvs: Vec<_> = names.iter().map(|n| d[*n].clone()).collect();
        let opts = &opts;
        async move { nix().build_many(&drvs, opts, |_, _| {}, |_| {}).await.unwrap() }
    };
    let count = || asked.load(std::sync::atomic::Ordering::SeqCst);

    // a alone, then a chain of two needing a: each run has in the store all it does not build itself.
    assert!(build(&["a"]).await.iter().all(Result::is_ok));
    let outcomes = build(&["b", "c"]).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(valid(&d["c"].1["out"]));
    assert_eq!(count(), 0, "no substituter was asked");

    // y needs x, which is not built: the substituter is asked (it has nothing, so Nix builds x itself).
    let outcomes = build(&["y"]).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(valid(&d["x"].1["out"]));
    assert!(count() > 0, "the substituter was asked for what the run lacks");
}

/// Nix's commands on this machine behind scripts that write each command, on one line, to `log` first.
fn logged_nix(dir: &Path, log: &Path) -> NixCli {
    use std::os::unix::fs::PermissionsExt;
    for program in ["nix", "nix-store", "nix-instantiate"] {
        let real = run("sh", &["-c", &format!("command -v {program}")], Path::new("/"));
        let script = dir.join(program);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{program} $*\" | tr '\\n' ' ' >> '{log}'\necho >> '{log}'\nexec '{real}' \"$@\"\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    nix().with_bin_dir(dir)
}

#[tokio::test]
async fn fetching_and_evaluating_a_flake_without_inputs_takes_two_nix_processes() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let nix = logged_nix(dir.path(), &log);
    let flake = nix
        .fetch(&url(&f.repo), Some("main"), &f.second, &BTreeMap::new(), None)
        .await
        .unwrap();
    let mut derivations = Vec::new();
    nix.evaluate(&flake, "packages.*.c", |b| derivations.extend(b.derivations))
        .await
        .unwrap();
    // c's closure (a, b, c), read from the `.drv` files: no `nix show-derivation`.
    let mut names: Vec<&str> = derivations
        .iter()
        .map(|d| d.drv_path.rsplit_once('-').unwrap().1)
        .collect();
    names.sort();
    assert_eq!(names, ["a.drv", "b.drv", "c.drv"]);
    assert_eq!(
        derivations
            .iter()
            .find(|d| d.drv_path.ends_with("-b.drv"))
            .unwrap()
            .input_drvs,
        [derivations
            .iter()
            .find(|d| d.drv_path.ends_with("-a.drv"))
            .unwrap()
            .drv_path
            .clone()]
    );
    // Locking, then listing and evaluating the selected attributes at once: no `nix flake archive` without
    // inputs.
    let commands = std::fs::read_to_string(&log).unwrap();
    let kinds: Vec<&str> = commands
        .lines()
        .map(|l| {
            ["flake metadata", "flake archive", "show-derivation", " eval "]
                .into_iter()
                .find(|k| l.contains(k))
                .unwrap_or(l)
        })
        .collect();
    assert_eq!(kinds, ["flake metadata", " eval "], "{commands}");

    // A flake with an input still has it fetched before evaluation.
    std::fs::remove_file(&log).unwrap();
    nix.fetch(
        &url(&f.consumer),
        Some("main"),
        &f.consumer_commit,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let commands = std::fs::read_to_string(&log).unwrap();
    assert!(commands.contains("flake archive"), "{commands}");
}

#[tokio::test]
async fn a_run_that_needs_nothing_from_gradients_caches_still_fetches_from_the_machines_own_substituters() {
    // z builds only while a flag file exists; once built, its output goes to a file:// cache that is the
    // machine's own substituter, and leaves the store; then the flag goes. Realising z again must fetch it.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let cache = dir.path().join("cache");
    std::fs::write(&flag, "").unwrap();
    let d = instantiate(&format!(
        r#"{{ z = mk "z" "if [ -e {} ]; then echo z > $out; else exit 1; fi" {{ }}; }}"#,
        flag.display()
    ));
    let (url, asked) = empty_cache();
    let opts = BuildOptions {
        substituters: vec![url],
        ..BuildOptions::default()
    };
    let z = vec![d["z"].clone()];
    let out = d["z"].1["out"].clone();
    let outcomes = nix().build_many(&z, &opts, |_, _| {}, |_| {}).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let cache_url = format!("file://{}", cache.display());
    run("nix", &["copy", "--to", &cache_url, &out], dir.path());
    run("nix-store", &["--delete", &out], dir.path());
    assert!(!valid(&out));
    std::fs::remove_file(&flag).unwrap();

    let own_cache = NixCli::new().env(
        "NIX_CONFIG",
        format!("{NIX_CONFIG}\nsubstituters = {cache_url}\nrequire-sigs = false"),
    );
    let outcomes = own_cache.build_many(&z, &opts, |_, _| {}, |_| {}).await.unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "fetched, not built: {outcomes:?}");
    assert!(valid(&out));
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "Gradient's cache was not asked: the run needed nothing from it"
    );
}

#[tokio::test]
async fn a_chain_in_one_run_names_only_its_end_to_nix_and_roots_every_link() {
    // `two` has two outputs and `half` takes only one of them: `two` is still named (Nix would otherwise be
    // asked only for the output `half` takes); `a` and `b` are links `c` takes whole.
    let d = instantiate(
        r#"rec {
  a = mk "a" "echo a > $out" { };
  b = mk "b" "echo b > $out" { inherit a; };
  c = mk "c" "echo c > $out" { inherit b; };
  two = mk "two" "echo out > $out; echo dev > $dev" { outputs = [ "out" "dev" ]; };
  half = mk "half" "echo half > $out" { two = two.out; };
}"#,
    );
    let with_outputs = |name: &str| {
        let (drv, _) = d[name].clone();
        let outputs = run("nix", &["show-derivation", &drv], Path::new("/"));
        let json: serde_json::Value = serde_json::from_str(&outputs).unwrap();
        let outputs: BTreeMap<String, String> = json[&drv]["outputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["path"].as_str().unwrap().to_owned()))
            .collect();
        (drv, outputs)
    };
    let drvs: Vec<_> = ["a", "b", "c", "two", "half"].iter().map(|n| with_outputs(n)).collect();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let roots = dir.path().join("roots");
    let opts = BuildOptions {
        gc_root: Some(roots.clone()),
        ..BuildOptions::default()
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    let outcomes = logged_nix(dir.path(), &log)
        .build_many(&drvs, &opts, |d, l| lines.push((d.to_owned(), l.to_owned())), |_| {})
        .await
        .unwrap();
    for (outcome, (drv, outputs)) in outcomes.iter().zip(&drvs) {
        let built = outcome.as_ref().unwrap_or_else(|e| panic!("{drv}: {e:?}"));
        assert_eq!(&built.outputs, outputs);
        // Every output of the run is rooted until the directory goes, the links Nix built as inputs too.
        for path in outputs.values() {
            assert!(valid(path), "{path}");
            assert!(roots_of(path).contains(roots.to_str().unwrap()), "{path} is rooted");
        }
    }
    let realise = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .find(|l| l.contains("--keep-going"))
        .unwrap()
        .to_owned();
    let named = |name: &str| realise.contains(&d[name].0);
    assert!(!named("a") && !named("b"), "{realise}");
    assert!(named("c") && named("two") && named("half"), "{realise}");
    drop(dir);
    for (_, outputs) in &drvs {
        for path in outputs.values() {
            assert!(!roots_of(path).contains(roots.to_str().unwrap()), "{path} released");
        }
    }
}

#[tokio::test]
async fn links_left_unbuilt_because_their_end_is_built_already_are_built_too() {
    // `c` needs `b` needs `a`, none of their outputs referring to the others: once built, `a` and `b` can go
    // while `c` stays. A run of all three (say for another organization) then names only `c` to Nix, which
    // finds it valid and builds nothing: `a` and `b` must still be built, not answered built.
    let d = instantiate(
        r#"rec {
  a = mk "a" "echo a > $out" { };
  b = mk "b" "echo b > $out" { inherit a; };
  c = mk "c" "echo c > $out" { inherit b; };
}"#,
    );
    let drvs: Vec<_> = ["a", "b", "c"].iter().map(|n| d[*n].clone()).collect();
    let outcomes = nix()
        .build_many(&drvs, &BuildOptions::default(), |_, _| {}, |_| {})
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let gone = [&d["a"].1["out"], &d["b"].1["out"]];
    let deleted = Command::new("nix-store")
        .arg("--delete")
        .args(gone)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(!valid(gone[0]) && !valid(gone[1]) && valid(&d["c"].1["out"]));

    let roots = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        gc_root: Some(roots.path().join("run")),
        ..BuildOptions::default()
    };
    let mut told = Vec::new();
    let outcomes = nix()
        .build_many(&drvs, &opts, |_, _| {}, |drv| told.push(drv.to_owned()))
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for (drv, outputs) in &drvs {
        let out = &outputs["out"];
        assert!(valid(out), "{drv} built again");
        assert!(roots_of(out).contains(roots.path().to_str().unwrap()), "{out} rooted");
    }
    let mut once = told.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), told.len(), "each told at most once: {told:?}");
}

/// Review (s12-rev): builds `drvs` once, then deletes the outputs of `gone` (which nothing rooted refers to).
async fn built_then_deleted(drvs: &[(String, BTreeMap<String, String>)], gone: &[&String]) {
    let outcomes = nix()
        .build_many(drvs, &BuildOptions::default(), |_, _| {}, |_| {})
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let deleted = Command::new("nix-store")
        .arg("--delete")
        .args(gone)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    assert!(gone.iter().all(|p| !valid(p)));
}

#[tokio::test]
async fn links_left_unbuilt_because_their_end_is_built_are_not_answered_dependency_failed_when_another_build_fails() {
    // Review (s12-rev): as in `links_left_unbuilt_because_their_end_is_built_already_are_built_too`, but another
    // build of the run fails, so Nix exits with a failure and no second run builds `a` and `b`. Before only ends
    // were named, Nix was named `a` and `b` and built them; now they are answered DependencyFailed although
    // neither depends on `bad` and neither was attempted.
    let d = instantiate(
        r#"rec {
  a = mk "a" "echo a > $out" { };
  b = mk "b" "echo b > $out" { inherit a; };
  c = mk "c" "echo c > $out" { inherit b; };
  bad = mk "bad" "exit 1" { };
}"#,
    );
    let chain: Vec<_> = ["a", "b", "c"].iter().map(|n| d[*n].clone()).collect();
    built_then_deleted(&chain, &[&d["a"].1["out"], &d["b"].1["out"]]).await;
    let drvs: Vec<_> = ["a", "b", "c", "bad"].iter().map(|n| d[*n].clone()).collect();
    let outcomes = nix()
        .build_many(&drvs, &BuildOptions::default(), |_, _| {}, |_| {})
        .await
        .unwrap();
    assert!(matches!(outcomes[3], Err(NixError::BuildFailed { .. })), "{outcomes:?}");
    assert!(
        outcomes[..3].iter().all(Result::is_ok),
        "a, b built (as before s12), c valid: {outcomes:?}"
    );
    assert!(valid(&d["a"].1["out"]) && valid(&d["b"].1["out"]));
}

#[tokio::test]
async fn a_derivation_twice_in_a_run_whose_second_build_fails_is_answered_failed_twice() {
    // Review (s12-rev): the worker puts one derivation in a run once per job (say for two organizations). `a` is
    // implied by `b`, `b` is valid, `a` is not: the second run builds `a`, which fails now. Its one outcome is
    // kept in a map by derivation and taken out for the first `a`; the second `a` falls through to "Nix
    // succeeded, so every output is valid" and is answered built, its output not valid.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail");
    let d = instantiate(&format!(
        r#"rec {{
  a = mk "a" "if [ -e {} ]; then exit 1; fi; echo a > $out" {{ }};
  b = mk "b" "echo b > $out" {{ inherit a; }};
}}"#,
        flag.display()
    ));
    let pair: Vec<_> = ["a", "b"].iter().map(|n| d[*n].clone()).collect();
    built_then_deleted(&pair, &[&d["a"].1["out"]]).await;
    std::fs::write(&flag, "").unwrap();
    let drvs = vec![d["a"].clone(), d["a"].clone(), d["b"].clone()];
    let outcomes = nix()
        .build_many(&drvs, &BuildOptions::default(), |_, _| {}, |_| {})
        .await
        .unwrap();
    assert!(!valid(&d["a"].1["out"]));
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        outcomes[0].is_err() && outcomes[1].is_err(),
        "a's output is not valid, yet: {outcomes:?}"
    );
}

#[tokio::test]
async fn the_links_a_run_built_stay_rooted_while_a_second_run_builds_the_others() {
    // Review (s12-rev): `w` is built in the first run as `x`'s input, then stays unrooted until the second run
    // (of `a`, `b`, left unbuilt because `c` was valid) ends: a garbage collection meanwhile takes it, and then
    // rooting it fails the whole batch (or it is answered built without being valid).
    let dir = tempfile::tempdir().unwrap();
    // The builder (a build user) writes `started` here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let gate = dir.path().join("go");
    let started = dir.path().join("started");
    let d = instantiate(&format!(
        r#"rec {{
  a = mk "a" "/usr/bin/touch {started}; while [ ! -e {gate} ]; do /usr/bin/sleep 0.05; done; echo a > $out" {{ }};
  b = mk "b" "echo b > $out" {{ inherit a; }};
  c = mk "c" "echo c > $out" {{ inherit b; }};
  w = mk "w" "echo w > $out" {{ }};
  x = mk "x" "echo x > $out" {{ inherit w; }};
}}"#,
        started = started.display(),
        gate = gate.display()
    ));
    std::fs::write(&gate, "").unwrap();
    let chain: Vec<_> = ["a", "b", "c"].iter().map(|n| d[*n].clone()).collect();
    built_then_deleted(&chain, &[&d["a"].1["out"], &d["b"].1["out"]]).await;
    std::fs::remove_file(&gate).unwrap();
    std::fs::remove_file(&started).unwrap();

    let roots = dir.path().join("roots");
    let opts = BuildOptions {
        gc_root: Some(roots.clone()),
        ..BuildOptions::default()
    };
    let drvs: Vec<_> = ["a", "b", "c", "w", "x"].iter().map(|n| d[*n].clone()).collect();
    let w_out = d["w"].1["out"].clone();
    let collecting = async {
        let until = Instant::now() + Duration::from_secs(60);
        while !started.exists() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The second run is building `a`: a collection now (this fails when `w` is rooted, as it should be).
        let _ = Command::new("nix-store")
            .args(["--delete", &w_out])
            .env("NIX_CONFIG", NIX_CONFIG)
            .output()
            .unwrap();
        std::fs::write(&gate, "").unwrap();
    };
    let nix = nix();
    let (outcomes, ()) = tokio::join!(nix.build_many(&drvs, &opts, |_, _| {}, |_| {}), collecting);
    let outcomes = outcomes.expect("the batch's outcomes");
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for (drv, outputs) in &drvs {
        assert!(valid(&outputs["out"]), "{drv}'s output is valid");
    }
}

#[tokio::test]
async fn a_link_left_unbuilt_that_needs_a_failed_build_is_not_built_again() {
    // Review (s12-rev): `x` fails now; `d` takes it and is taken by `c` (valid, so Nix leaves `d` unbuilt), `y`
    // takes it too (so Nix tries `x` once, for `y`). `d` is answered dependency_failed without a second run that
    // would only try `x` again (its log told twice).
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fail");
    let d = instantiate(&format!(
        r#"rec {{
  x = mk "x" "echo x-ran; if [ -e {} ]; then exit 1; fi; echo x > $out" {{ }};
  d = mk "d" "echo d > $out" {{ inherit x; }};
  c = mk "c" "echo c > $out" {{ inherit d; }};
  y = mk "y" "echo y > $out" {{ inherit x; }};
}}"#,
        flag.display()
    ));
    let first: Vec<_> = ["x", "d", "c"].iter().map(|n| d[*n].clone()).collect();
    built_then_deleted(&first, &[&d["d"].1["out"], &d["x"].1["out"]]).await;
    std::fs::write(&flag, "").unwrap();
    let drvs: Vec<_> = ["x", "d", "c", "y"].iter().map(|n| d[*n].clone()).collect();
    let mut ran = 0;
    let outcomes = nix()
        .build_many(
            &drvs,
            &BuildOptions::default(),
            |drv, line| {
                if drv == d["x"].0 && line.contains("x-ran") {
                    ran += 1;
                }
            },
            |_| {},
        )
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Err(NixError::BuildFailed { .. })), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(NixError::DependencyFailed { .. })),
        "{outcomes:?}"
    );
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[3], Err(NixError::DependencyFailed { .. })),
        "{outcomes:?}"
    );
    assert_eq!(ran, 1, "x was tried once");
}
