use super::*;
use uuid::Uuid;

fn uid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}
fn org(n: u128) -> OrgId {
    OrgId(uid(1000 + n))
}
fn wid(n: u128) -> WorkerId {
    WorkerId(uid(2000 + n))
}
fn jid(n: u128) -> JobId {
    JobId(uid(3000 + n))
}
fn drv(n: u128) -> String {
    format!("/nix/store/{n:032}-d{n}.drv")
}
fn drvs(ns: &[u128]) -> HashSet<String> {
    ns.iter().map(|&n| drv(n)).collect()
}
fn at(secs: i64) -> Timestamp {
    chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::seconds(secs)
}

const ALL: Capabilities = Capabilities {
    fetch: true,
    eval: true,
    build: true,
    sign: true,
};

fn worker(n: u128) -> WorkerInfo {
    WorkerInfo {
        id: wid(n),
        capabilities: ALL,
        systems: vec!["x86_64-linux".into()],
        features: vec![],
        max_concurrent_builds: 2,
        max_concurrent_evaluations: 1,
        queued_builds: 0,
        orgs: BTreeSet::from([org(1)]),
        pushing: HashSet::new(),
    }
}

fn eval(n: u128, queued: i64) -> QueueEntry {
    QueueEntry {
        id: jid(n),
        org: org(1),
        queued_at: at(queued),
        needs: Needs::Evaluation,
        state: JobState::Queued,
        pinned_to: None,
    }
}

/// Job `n` builds `drv(n)` from the given inputs.
fn build(n: u128, queued: i64, inputs: &[u128]) -> QueueEntry {
    QueueEntry {
        id: jid(n),
        org: org(1),
        queued_at: at(queued),
        needs: Needs::Build(BuildNeeds {
            drv_path: drv(n),
            system: "x86_64-linux".into(),
            required_features: vec![],
            inputs: inputs.iter().map(|&i| drv(i)).collect(),
        }),
        state: JobState::Queued,
        pinned_to: None,
    }
}

fn with_build(mut job: QueueEntry, f: impl FnOnce(&mut BuildNeeds)) -> QueueEntry {
    if let Needs::Build(b) = &mut job.needs {
        f(b);
    }
    job
}

fn of_org(n: u128, mut job: QueueEntry) -> QueueEntry {
    job.org = org(n);
    job
}

fn running(mut job: QueueEntry, on: u128) -> QueueEntry {
    job.state = JobState::Assigned {
        worker: wid(on),
        since: at(0),
    };
    job
}

fn snapshot(jobs: Vec<QueueEntry>, workers: Vec<WorkerInfo>) -> Snapshot {
    Snapshot {
        jobs,
        workers,
        ..Snapshot::default()
    }
}

#[test]
fn capability_decides_the_kind_of_job() {
    let caps = |fetch, eval, build| Capabilities {
        fetch,
        eval,
        build,
        sign: false,
    };
    // (worker capabilities, job, assigned)
    let table = [
        (caps(true, true, false), eval(1, 0), true),
        (caps(true, false, true), eval(1, 0), false),
        (caps(false, true, true), eval(1, 0), false),
        (caps(false, false, true), build(1, 0, &[]), true),
        (caps(true, true, false), build(1, 0, &[]), false),
    ];
    for (i, (c, job, want)) in table.into_iter().enumerate() {
        let w = WorkerInfo {
            capabilities: c,
            ..worker(1)
        };
        let got = schedule(&snapshot(vec![job], vec![w]));
        assert_eq!(!got.is_empty(), want, "case {i}");
    }
}

#[test]
fn system_and_features_must_be_supported() {
    let sys = |s: &str| s.to_owned();
    // (worker systems, worker features, job system, job features, assigned)
    type Case = (
        &'static [&'static str],
        &'static [&'static str],
        &'static str,
        &'static [&'static str],
        bool,
    );
    let table: [Case; 9] = [
        (&["x86_64-linux"], &[], "x86_64-linux", &[], true),
        (&["x86_64-linux"], &[], "aarch64-linux", &[], false),
        (&["x86_64-linux", "aarch64-linux"], &[], "aarch64-linux", &[], true),
        (&["x86_64-linux"], &[], "builtin", &[], true),
        (&[], &[], "builtin", &[], true),
        (
            &["x86_64-linux"],
            &["kvm", "big-parallel"],
            "x86_64-linux",
            &["kvm"],
            true,
        ),
        (
            &["x86_64-linux"],
            &["kvm", "big-parallel"],
            "x86_64-linux",
            &["kvm", "big-parallel"],
            true,
        ),
        (&["x86_64-linux"], &["big-parallel"], "x86_64-linux", &["kvm"], false),
        (&["x86_64-linux"], &[], "x86_64-linux", &["nixos-test"], false),
    ];
    for (i, (systems, features, system, required, want)) in table.into_iter().enumerate() {
        let w = WorkerInfo {
            systems: systems.iter().map(|s| sys(s)).collect(),
            features: features.iter().map(|s| sys(s)).collect(),
            ..worker(1)
        };
        let job = with_build(build(1, 0, &[]), |b| {
            b.system = system.into();
            b.required_features = required.iter().map(|s| sys(s)).collect();
        });
        assert_eq!(!schedule(&snapshot(vec![job], vec![w])).is_empty(), want, "case {i}");
    }
}

#[test]
fn a_pinned_job_waits_for_its_worker() {
    let pinned = |n, to| QueueEntry {
        pinned_to: Some(wid(to)),
        ..build(n, 0, &[])
    };
    // Its worker's slot is taken: the job does not wait in that worker's queue when another worker could take it
    // once released; with no such worker the queue is as good. An unpinned one waits in the queue.
    let one_slot_long_queue = WorkerInfo {
        max_concurrent_builds: 1,
        queued_builds: 50,
        ..worker(2)
    };
    let busy = running(build(9, 0, &[]), 2);
    assert!(
        schedule(&snapshot(
            vec![busy.clone(), pinned(1, 2)],
            vec![one_slot_long_queue.clone(), worker(1)]
        ))
        .is_empty(),
        "another worker could take it once released"
    );
    assert_eq!(
        schedule(&snapshot(
            vec![busy.clone(), pinned(1, 2)],
            vec![one_slot_long_queue.clone()]
        )),
        vec![(jid(1), wid(2))],
        "no other worker could: the queue is as good"
    );
    assert_eq!(
        schedule(&snapshot(vec![busy, build(1, 0, &[])], vec![one_slot_long_queue])),
        vec![(jid(1), wid(2))]
    );
    // (connected workers, job, assigned to)
    let table = [
        (vec![worker(1), worker(2)], pinned(1, 2), Some(2)),
        (vec![worker(1), worker(2)], pinned(1, 1), Some(1)),
        // Its worker is gone or has no slot: the job waits rather than go elsewhere.
        (vec![worker(1)], pinned(1, 2), None),
        (
            vec![
                worker(1),
                WorkerInfo {
                    max_concurrent_builds: 0,
                    ..worker(2)
                },
            ],
            pinned(1, 2),
            None,
        ),
        (vec![worker(1), worker(2)], build(1, 0, &[]), Some(1)),
    ];
    for (i, (workers, job, want)) in table.into_iter().enumerate() {
        let got = schedule(&snapshot(vec![job], workers));
        assert_eq!(
            got,
            want.map(|w| (jid(1), wid(w))).into_iter().collect::<Vec<_>>(),
            "case {i}"
        );
    }
}

#[test]
fn a_worker_takes_only_jobs_of_its_organizations() {
    let member_of = |orgs: &[u128]| WorkerInfo {
        orgs: orgs.iter().map(|&n| org(n)).collect(),
        ..worker(1)
    };
    // (worker's organizations, job, assigned)
    let table = [
        (member_of(&[1]), eval(1, 0), true),
        (member_of(&[1]), of_org(2, eval(1, 0)), false),
        (member_of(&[1]), of_org(2, build(1, 0, &[])), false),
        (member_of(&[1, 2]), of_org(2, build(1, 0, &[])), true),
        (member_of(&[]), eval(1, 0), false),
    ];
    for (i, (w, job, want)) in table.into_iter().enumerate() {
        assert_eq!(!schedule(&snapshot(vec![job], vec![w])).is_empty(), want, "case {i}");
    }
}

#[test]
fn slots_bound_what_a_worker_runs() {
    let w = |builds, evals| WorkerInfo {
        max_concurrent_builds: builds,
        max_concurrent_evaluations: evals,
        queued_builds: 0,
        ..worker(1)
    };
    let queued = || {
        vec![
            build(1, 0, &[]),
            build(2, 1, &[]),
            build(3, 2, &[]),
            eval(4, 3),
            eval(5, 4),
        ]
    };
    // (worker, jobs, assigned job numbers)
    let pushing = |jobs: &[u128]| WorkerInfo {
        pushing: jobs.iter().map(|&n| jid(n)).collect(),
        ..w(2, 1)
    };
    let table: [(WorkerInfo, Vec<QueueEntry>, Vec<u128>); 7] = [
        (w(2, 1), queued(), vec![1, 2, 4]),
        (w(0, 0), queued(), vec![]),
        (w(5, 2), queued(), vec![1, 2, 3, 4, 5]),
        // Running jobs hold slots: one build and the only evaluation slot are taken.
        (
            w(2, 1),
            [vec![running(build(9, -5, &[]), 1), running(eval(8, -5), 1)], queued()].concat(),
            vec![1],
        ),
        // A build that is only pushing its outputs holds no build slot; one still building does.
        (
            pushing(&[9]),
            [
                vec![running(build(9, -5, &[]), 1), running(build(7, -5, &[]), 1)],
                queued(),
            ]
            .concat(),
            vec![1, 4],
        ),
        (
            pushing(&[9, 7]),
            [
                vec![running(build(9, -5, &[]), 1), running(build(7, -5, &[]), 1)],
                queued(),
            ]
            .concat(),
            vec![1, 2, 4],
        ),
        // A job running on a worker that is gone holds nothing.
        (
            w(1, 1),
            [vec![running(build(9, -5, &[]), 7)], queued()].concat(),
            vec![1, 4],
        ),
    ];
    for (i, (worker, jobs, want)) in table.into_iter().enumerate() {
        let got = schedule(&snapshot(jobs, vec![worker]));
        let want: Vec<(JobId, WorkerId)> = want.into_iter().map(|n| (jid(n), wid(1))).collect();
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn a_build_waits_for_its_inputs() {
    // Job 3 of org 1 builds drv(3) from drv(1) and drv(2).
    let with =
        |available_org1: &[u128], available_org2: &[u128], failed_org1: &[u128], failed_org2: &[u128]| Snapshot {
            jobs: vec![build(3, 0, &[1, 2])],
            workers: vec![worker(1)],
            available: HashMap::from([(org(1), drvs(available_org1)), (org(2), drvs(available_org2))]),
            failed: HashMap::from([(org(1), drvs(failed_org1)), (org(2), drvs(failed_org2))]),
            ..Snapshot::default()
        };
    let assigned = Plan {
        assignments: vec![(jid(3), wid(1))],
        ..Plan::default()
    };
    let waiting = Plan::default();
    let dependency_failed = Plan {
        dependency_failed: vec![jid(3)],
        ..Plan::default()
    };
    let substituted = Plan {
        substituted: vec![jid(3)],
        ..Plan::default()
    };
    let table = [
        (with(&[], &[], &[], &[]), waiting.clone()),
        (with(&[1], &[], &[], &[]), waiting.clone()),
        (with(&[1, 2], &[], &[], &[]), assigned),
        // What another organization built or caches is not available to this one's builders.
        (with(&[1], &[2], &[], &[]), waiting.clone()),
        (with(&[1], &[], &[2], &[]), dependency_failed),
        (with(&[1], &[], &[], &[2]), waiting),
        // The derivation's own outputs are already available: nothing to build.
        (with(&[3], &[], &[], &[]), substituted.clone()),
        (with(&[1, 2, 3], &[], &[], &[]), substituted),
    ];
    for (i, (snap, want)) in table.into_iter().enumerate() {
        assert_eq!(plan(&snap), want, "case {i}");
    }
}

#[test]
fn a_build_whose_inputs_one_worker_just_built_runs_there_without_waiting_for_the_push() {
    // drv(2) is built from drv(1); worker 1 built drv(1) (job 1) and is pushing it; worker 2 has more free slots.
    let roomy = WorkerInfo {
        max_concurrent_builds: 8,
        ..worker(2)
    };
    let pushing = WorkerInfo {
        pushing: HashSet::from([jid(1)]),
        ..worker(1)
    };
    let with = |built_on: &[(u128, u128)], workers: Vec<WorkerInfo>| Snapshot {
        jobs: vec![running(build(1, 0, &[]), 1), build(2, 1, &[1])],
        workers,
        built_on: HashMap::from([(org(1), built_on.iter().map(|&(d, w)| (drv(d), wid(w))).collect())]),
        ..Snapshot::default()
    };
    assert_eq!(
        plan(&with(&[(1, 1)], vec![pushing.clone(), roomy.clone()])).assignments,
        vec![(jid(2), wid(1))],
        "on the worker that has its input, not the roomier one"
    );
    assert_eq!(
        plan(&with(&[], vec![pushing.clone(), roomy.clone()])).assignments,
        vec![],
        "an input still being built is not there yet"
    );
    // Inputs built on two different workers: none has them all, so the build waits for the pushes.
    let two = Snapshot {
        jobs: vec![build(3, 2, &[1, 2])],
        ..with(&[(1, 1), (2, 2)], vec![pushing.clone(), roomy.clone()])
    };
    assert_eq!(plan(&two).assignments, vec![]);
    // Once an input is available to everyone, only the rest decides.
    let mixed = Snapshot {
        jobs: vec![build(3, 2, &[1, 2])],
        available: HashMap::from([(org(1), drvs(&[2]))]),
        ..with(&[(1, 1)], vec![pushing, roomy])
    };
    assert_eq!(plan(&mixed).assignments, vec![(jid(3), wid(1))]);
}

#[test]
fn a_derivation_is_built_once_per_organization() {
    // Two of org 1's evaluations needing drv(1) share one job; should a second active job for it exist (the
    // queue forbids it, the scheduler does not rely on that), it waits while the first runs, and is settled
    // as substituted once the first built it. Org 2's job for the same derivation is its own.
    let twin = |n: u128, queued: i64| with_build(build(n, queued, &[]), |b| b.drv_path = drv(1));
    let two_workers = || vec![worker(1), worker(2)];
    let table = [
        (vec![twin(1, 0), twin(2, 1)], vec![(1, 1)]),
        (vec![running(twin(1, 0), 1), twin(2, 1)], vec![]),
        (vec![twin(1, 0), of_org(2, twin(2, 1))], vec![(1, 1), (2, 2)]),
        (vec![running(twin(1, 0), 1), of_org(2, twin(2, 1))], vec![(2, 2)]),
    ];
    for (i, (jobs, want)) in table.into_iter().enumerate() {
        let mut workers = two_workers();
        workers[1].orgs.insert(org(2));
        let want: Vec<(JobId, WorkerId)> = want.into_iter().map(|(j, w)| (jid(j), wid(w))).collect();
        assert_eq!(schedule(&snapshot(jobs, workers)), want, "case {i}");
    }

    let mut snap = snapshot(vec![twin(2, 1)], two_workers());
    snap.available.insert(org(1), drvs(&[1]));
    assert_eq!(plan(&snap).substituted, vec![jid(2)]);
}

#[test]
fn oldest_first_and_spread_to_the_worker_with_most_free_slots() {
    let w = |n, builds| WorkerInfo {
        max_concurrent_builds: builds,
        ..worker(n)
    };
    // (workers, jobs in any order, assignments in decision order)
    let table = [
        // One slot: the oldest job wins, whatever the order in the snapshot.
        (vec![w(1, 1)], vec![build(2, 50, &[]), build(1, 10, &[])], vec![(1, 1)]),
        // The worker with more free slots first; as slots fill, jobs alternate.
        (
            vec![w(1, 1), w(2, 3)],
            vec![build(1, 1, &[]), build(2, 2, &[]), build(3, 3, &[]), build(4, 4, &[])],
            vec![(1, 2), (2, 2), (3, 1), (4, 2)],
        ),
        // Equal free slots: the lower worker id, for determinism.
        (
            vec![w(2, 2), w(1, 2)],
            vec![build(1, 1, &[]), build(2, 2, &[])],
            vec![(1, 1), (2, 2)],
        ),
        // Running jobs count against free slots.
        (
            vec![w(1, 3), w(2, 2)],
            vec![
                running(build(8, 0, &[]), 1),
                running(build(9, 0, &[]), 1),
                build(1, 1, &[]),
            ],
            vec![(1, 2)],
        ),
    ];
    for (i, (workers, jobs, want)) in table.into_iter().enumerate() {
        let want: Vec<(JobId, WorkerId)> = want.into_iter().map(|(j, w)| (jid(j), wid(w))).collect();
        assert_eq!(schedule(&snapshot(jobs, workers)), want, "case {i}");
    }

    // A blocked old job does not hold back younger ready ones.
    let got = schedule(&snapshot(vec![build(1, 0, &[99]), build(2, 5, &[])], vec![worker(1)]));
    assert_eq!(got, vec![(jid(2), wid(1))]);
}

#[test]
fn a_lost_workers_jobs_are_requeued_oldest_first() {
    let jobs = vec![
        running(build(1, 5, &[]), 1),
        running(eval(2, 1), 1),
        running(build(3, 0, &[]), 2),
        build(4, 0, &[]),
    ];
    assert_eq!(jobs_to_requeue(&jobs, &[wid(1)]), vec![jid(2), jid(1)]);
    assert_eq!(jobs_to_requeue(&jobs, &[wid(1), wid(2)]), vec![jid(3), jid(2), jid(1)]);
    assert_eq!(jobs_to_requeue(&jobs, &[wid(9)]), vec![]);

    // On reconnect, the worker lists what it still holds; the rest of its jobs are orphans.
    let table: [(&[JobId], Vec<JobId>); 3] = [
        (&[jid(1), jid(2)], vec![]),
        (&[jid(1)], vec![jid(2)]),
        (&[], vec![jid(2), jid(1)]),
    ];
    for (held, want) in table {
        assert_eq!(orphaned_jobs(&jobs, wid(1), held), want, "held {held:?}");
    }
}

#[test]
fn queue_records_become_entries() {
    use crate::EvaluationId;
    let record = |kind| JobRecord {
        id: jid(1),
        org_id: org(2),
        kind,
        state: JobState::Queued,
        created_at: at(7),
        attempts: 0,
    };
    let evaluation = record(JobKind::Evaluate {
        evaluation_id: EvaluationId(uid(5)),
    });
    assert_eq!(
        QueueEntry::from_record(&evaluation, vec![drv(9)]),
        of_org(2, eval(1, 7))
    );
    let build_record = record(JobKind::Build {
        derivation: drv(1),
        system: "x86_64-linux".into(),
        required_features: vec![],
    });
    assert_eq!(
        QueueEntry::from_record(&build_record, vec![drv(9)]),
        of_org(2, build(1, 7, &[9]))
    );
}

/// Applies a plan the way the server does: assigned jobs run, settled ones leave the queue.
fn apply(snap: &mut Snapshot, plan: &Plan) {
    for (job, worker) in &plan.assignments {
        if let Some(j) = snap.jobs.iter_mut().find(|j| j.id == *job) {
            j.state = JobState::Assigned {
                worker: *worker,
                since: at(0),
            };
        }
    }
    let settled: Vec<JobId> = [plan.substituted.clone(), plan.dependency_failed.clone()].concat();
    snap.jobs.retain(|j| !settled.contains(&j.id));
}

/// The job finished successfully: a build's outputs become available to its organization.
fn finish(snap: &mut Snapshot, job: JobId) {
    if let Some(pos) = snap.jobs.iter().position(|j| j.id == job) {
        let j = snap.jobs.remove(pos);
        if let Needs::Build(b) = j.needs {
            snap.available.entry(j.org).or_default().insert(b.drv_path);
        }
    }
}

#[test]
fn combined_two_orgs_three_workers_a_lost_worker_and_a_shared_derivation() {
    // Org 1: lib 10, app 11 ← 10, test 12 (kvm) ← 11. Org 2 needs the same lib (its own job 40 for drv(10)),
    // then tool 20 ← 10 and drv(5), which is already in org 2's cache; job 30 is org 2's next evaluation.
    let lib_for_org2 = of_org(2, with_build(build(40, 5, &[]), |b| b.drv_path = drv(10)));
    let mut snap = Snapshot {
        jobs: vec![
            build(10, 0, &[]),
            build(11, 1, &[10]),
            with_build(build(12, 2, &[11]), |b| b.required_features = vec!["kvm".into()]),
            of_org(2, build(20, 3, &[10, 5])),
            of_org(2, eval(30, 4)),
            lib_for_org2,
        ],
        workers: vec![
            // Org 1's builder, one slot, no kvm.
            WorkerInfo {
                max_concurrent_builds: 1,
                ..worker(1)
            },
            // Org 2's builder and evaluator, one build slot (with two, the tool would join its lib there).
            WorkerInfo {
                orgs: BTreeSet::from([org(2)]),
                max_concurrent_builds: 1,
                ..worker(2)
            },
            // Org 1's kvm machine, evaluations off.
            WorkerInfo {
                capabilities: Capabilities { eval: false, ..ALL },
                features: vec!["kvm".into()],
                max_concurrent_builds: 1,
                ..worker(3)
            },
        ],
        available: HashMap::from([(org(2), drvs(&[5]))]),
        ..Snapshot::default()
    };

    // Round 1: oldest first. The lib goes to org 1's workers (1 and 3 tie on one free slot: the lower id);
    // org 2's evaluation and its own lib job go to worker 2; everything else waits for inputs (the app could
    // join the lib on worker 1, but its one slot is taken).
    let p = plan(&snap);
    assert_eq!(
        p.assignments,
        vec![(jid(10), wid(1)), (jid(30), wid(2)), (jid(40), wid(2))]
    );
    apply(&mut snap, &p);
    assert_eq!(plan(&snap), Plan::default(), "nothing else is ready");

    // Worker 2 goes silent: lost, and its jobs go back to the queue. Worker 1 finishes the lib.
    let lost = vec![wid(2)];
    let requeued = jobs_to_requeue(&snap.jobs, &lost);
    assert_eq!(requeued, vec![jid(30), jid(40)]);
    for j in snap.jobs.iter_mut().filter(|j| requeued.contains(&j.id)) {
        j.state = JobState::Queued;
    }
    snap.workers.retain(|w| !lost.contains(&w.id));
    finish(&mut snap, jid(10));

    // Round 2: the app is ready for org 1; org 2's tool is not (org 1's lib is not available to org 2), and
    // org 2's jobs have no worker.
    let p = plan(&snap);
    assert_eq!(p.assignments, vec![(jid(11), wid(1))]);
    apply(&mut snap, &p);
    finish(&mut snap, jid(11));

    // Round 3: the kvm test goes to the only kvm worker.
    let p = plan(&snap);
    assert_eq!(p.assignments, vec![(jid(12), wid(3))]);
    apply(&mut snap, &p);

    // Worker 2 reconnects holding nothing (its jobs were already requeued): it gets org 2's queued work.
    assert_eq!(orphaned_jobs(&snap.jobs, wid(2), &[]), vec![]);
    snap.workers.push(WorkerInfo {
        orgs: BTreeSet::from([org(2)]),
        max_concurrent_builds: 1,
        ..worker(2)
    });
    let p = plan(&snap);
    assert_eq!(p.assignments, vec![(jid(30), wid(2)), (jid(40), wid(2))]);
    apply(&mut snap, &p);
    finish(&mut snap, jid(40));

    // Round 4: org 2 now has the lib; with drv(5) from its cache, the tool is ready.
    let p = plan(&snap);
    assert_eq!(p.assignments, vec![(jid(20), wid(2))]);
}

#[test]
fn builds_fill_free_slots_everywhere_before_any_queue() {
    // Two workers with 2 slots and room for 3 more builds each (their queues).
    let w = |n| WorkerInfo {
        max_concurrent_builds: 2,
        queued_builds: 3,
        ..worker(n)
    };
    let jobs: Vec<QueueEntry> = (1..=12).map(|n| build(n, n as i64, &[])).collect();
    let plan = schedule(&snapshot(jobs.clone(), vec![w(1), w(2)]));
    let on = |worker: u128, jobs: &[(JobId, WorkerId)]| jobs.iter().filter(|(_, x)| *x == wid(worker)).count();
    assert_eq!(plan.len(), 10, "2 slots and 3 queued builds on each worker: {plan:?}");
    // The four oldest builds go to free slots, two on each worker, before any waits in a queue.
    let first_four = &plan[..4];
    assert_eq!((on(1, first_four), on(2, first_four)), (2, 2), "{plan:?}");
    assert_eq!((on(1, &plan), on(2, &plan)), (5, 5));
    // A worker whose slots are free gets a build before one whose queue has room.
    let busy = WorkerInfo {
        max_concurrent_builds: 1,
        queued_builds: 50,
        ..worker(1)
    };
    let running_one = running(build(20, 0, &[]), 1);
    let plan = schedule(&snapshot(vec![running_one, build(21, 1, &[])], vec![busy, w(2)]));
    assert_eq!(plan, vec![(jid(21), wid(2))], "a free slot beats a long queue");
    // A worker without build slots takes no builds, queue or not.
    let none = WorkerInfo {
        max_concurrent_builds: 0,
        queued_builds: 50,
        ..worker(3)
    };
    assert!(schedule(&snapshot(jobs, vec![none])).is_empty());
}

#[test]
fn a_chain_goes_to_one_worker_in_one_round_whatever_its_queue_order() {
    // drv(1) ← drv(2) ← … ← drv(6), queued newest link first; two workers, the second roomier.
    let roomy = WorkerInfo {
        max_concurrent_builds: 4,
        queued_builds: 4,
        ..worker(2)
    };
    let jobs: Vec<QueueEntry> = (1..=6u128)
        .map(|n| {
            let input = [n - 1];
            build(n, 10 - n as i64, if n == 1 { &[] } else { &input })
        })
        .collect();
    let p = plan(&snapshot(jobs.clone(), vec![worker(1), roomy.clone()]));
    assert_eq!(p.assignments.len(), 6, "{p:?}");
    assert!(
        p.assignments.iter().all(|(_, w)| *w == wid(2)),
        "one worker has them all: {p:?}"
    );
    let order: Vec<JobId> = p.assignments.iter().map(|(j, _)| *j).collect();
    assert_eq!(order, (1..=6).map(jid).collect::<Vec<_>>(), "each link after its input");
    assert_eq!(
        p.batch_inputs.get(&jid(1)),
        None,
        "the first link needs nothing of its worker"
    );
    assert_eq!(p.batch_inputs[&jid(4)], vec![drv(3)]);

    // Room for 3: the rest of the chain waits, and does not go to the other worker.
    let small = WorkerInfo {
        max_concurrent_builds: 3,
        queued_builds: 0,
        ..worker(2)
    };
    let p = plan(&snapshot(jobs.clone(), vec![worker(1), small]));
    let on_2: Vec<JobId> = p
        .assignments
        .iter()
        .filter(|(_, w)| *w == wid(2))
        .map(|(j, _)| *j)
        .collect();
    assert_eq!(on_2, vec![jid(1), jid(2), jid(3)], "{p:?}");
    assert!(
        p.assignments.iter().all(|(_, w)| *w == wid(2)),
        "none on worker 1: {p:?}"
    );

    // A link whose input an earlier round gave a worker joins it there.
    let queue_of_1 = WorkerInfo {
        queued_builds: 8,
        ..worker(1)
    };
    let mut snap = snapshot(jobs, vec![queue_of_1, roomy]);
    snap.jobs[0] = running(build(1, 9, &[]), 1);
    let p = plan(&snap);
    assert_eq!(p.assignments.len(), 5);
    assert!(p.assignments.iter().all(|(_, w)| *w == wid(1)), "{p:?}");
    assert_eq!(p.batch_inputs[&jid(2)], vec![drv(1)]);
}

#[test]
fn a_build_needing_inputs_handed_to_two_workers_waits_and_pins_and_organizations_still_hold() {
    // drv(3) ← drv(1), drv(2): with one slot each, the inputs go to two workers and the build waits.
    let one = |n| WorkerInfo {
        max_concurrent_builds: 1,
        ..worker(n)
    };
    let p = plan(&snapshot(
        vec![build(1, 0, &[]), build(2, 1, &[]), build(3, 2, &[1, 2])],
        vec![one(1), one(2)],
    ));
    assert_eq!(p.assignments, vec![(jid(1), wid(1)), (jid(2), wid(2))]);
    // A link pinned to another worker than its input's does not join it.
    let mut pinned = build(2, 1, &[1]);
    pinned.pinned_to = Some(wid(1));
    let p = plan(&snapshot(
        vec![build(1, 0, &[]), pinned],
        vec![
            worker(1),
            WorkerInfo {
                max_concurrent_builds: 8,
                ..worker(2)
            },
        ],
    ));
    assert_eq!(p.assignments, vec![(jid(1), wid(2))], "{p:?}");
    // Another organization's build of the input is not this one's.
    let p = plan(&snapshot(
        vec![of_org(2, build(1, 0, &[])), build(2, 1, &[1])],
        vec![WorkerInfo {
            orgs: BTreeSet::from([org(1), org(2)]),
            ..worker(1)
        }],
    ));
    assert_eq!(p.assignments, vec![(jid(1), wid(1))], "{p:?}");
}
