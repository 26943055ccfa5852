//! The persistent job queue.

use super::support::{
    conflict, derivation, enqueue, long_ago, new_build_job, new_evaluation_job, now, org, seconds, user,
};
use gradient_domain::model::{JobId, JobKind, JobRecord, JobState};
use gradient_domain::ports::storage::Run;
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, WorkerId};

/// The ids of the jobs in `listed` that are among `ours`, in listed order (other scenarios' rows ignored).
fn ids(listed: &[JobRecord], ours: &[&JobRecord]) -> Vec<JobId> {
    listed
        .iter()
        .filter(|j| ours.iter().any(|o| o.id == j.id))
        .map(|j| j.id)
        .collect()
}

/// The run of `job` assigned to `worker` after `attempts` takings back.
fn run(job: JobId, worker: WorkerId, attempts: u32) -> Run {
    Run { job, worker, attempts }
}

async fn state_of<S: Storage>(s: &S, id: JobId) -> Option<JobState> {
    s.job(id).await.expect("job").map(|j| j.state)
}

/// Jobs read back whole: both kinds, with and without required features, in every state, with attempts.
pub async fn job_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let build = new_build_job(acme.id, "hello");
    let plain_build = JobRecord {
        kind: JobKind::Build {
            derivation: derivation("plain"),
            system: "aarch64-darwin".to_owned(),
            required_features: vec![],
        },
        ..new_build_job(acme.id, "plain")
    };
    let evaluation = new_evaluation_job(acme.id);
    let assigned = JobRecord {
        state: JobState::Assigned {
            worker: WorkerId::new(),
            since: now() - seconds(5),
        },
        attempts: 2,
        ..new_build_job(acme.id, "assigned")
    };
    let done = JobRecord {
        state: JobState::Done,
        attempts: u32::MAX,
        ..new_evaluation_job(acme.id)
    };
    let failed = JobRecord {
        state: JobState::Failed,
        created_at: long_ago(),
        ..new_build_job(acme.id, "failed")
    };
    for job in [&build, &plain_build, &evaluation, &assigned, &done, &failed] {
        assert_eq!(
            s.enqueue_job(job).await.expect("enqueue_job"),
            job.clone(),
            "enqueueing new work answers the job itself"
        );
        assert_eq!(
            s.job(job.id).await.expect("job"),
            Some(job.clone()),
            "job reads back whole"
        );
    }
}

/// Unknown jobs and workers answer None, empty lists, false and zero, and nothing changes.
pub async fn absent_jobs_are_none<S: Storage>(s: &S) {
    let worker = WorkerId::new();
    let unknown = JobId::new();
    assert_eq!(s.job(unknown).await.expect("job"), None, "unknown job");
    assert!(
        !s.assign_job(unknown, worker, now()).await.expect("assign_job"),
        "assigning an unknown job"
    );
    assert!(
        !s.finish_job(run(unknown, worker, 0), true).await.expect("finish_job"),
        "finishing an unknown job"
    );
    assert_eq!(
        s.requeue_jobs(worker, &[unknown]).await.expect("requeue_jobs"),
        0,
        "requeueing an unknown job"
    );
    assert_eq!(
        s.jobs_assigned_to(worker).await.expect("jobs_assigned_to"),
        vec![],
        "a worker with no jobs"
    );
    assert_eq!(s.job(unknown).await.expect("job"), None, "still no such job");
}

/// A job must belong to an existing organization.
pub async fn job_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    for job in [new_build_job(OrgId::new(), "orphan"), new_evaluation_job(OrgId::new())] {
        assert_eq!(
            s.enqueue_job(&job).await,
            Err(StorageError::NotFound),
            "job of an unknown org"
        );
        assert_eq!(s.job(job.id).await.expect("job"), None, "no row for the refused job");
    }
}

/// A job id is never reused: enqueueing other work under a taken id is Conflict("job id") and changes
/// nothing.
pub async fn taken_job_id_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let original = enqueue(s, new_build_job(acme.id, "original")).await;
    for other_work in [new_build_job(acme.id, "other"), new_evaluation_job(acme.id)] {
        let copy = JobRecord {
            id: original.id,
            ..other_work
        };
        assert_eq!(
            s.enqueue_job(&copy).await,
            Err(conflict("job id")),
            "other work under a taken id"
        );
    }
    assert_eq!(
        s.job(original.id).await.expect("job"),
        Some(original),
        "the original job is untouched"
    );
}

/// Build-once: while a build job of a derivation is queued or assigned, enqueueing the same derivation in
/// the same organization answers that job and stores nothing. Another organization, another derivation, or
/// the same derivation once its job has finished gets a job of its own.
pub async fn build_jobs_are_enqueued_once_per_derivation_while_active<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let first = enqueue(s, new_build_job(acme.id, "hello")).await;
    let JobKind::Build { derivation: drv, .. } = first.kind.clone() else {
        unreachable!("a build job")
    };
    let same_drv = |org: OrgId| {
        let mut job = new_build_job(org, "hello");
        job.kind = JobKind::Build {
            derivation: drv.clone(),
            system: "aarch64-linux".to_owned(),
            required_features: vec![],
        };
        job
    };

    let again = same_drv(acme.id);
    assert_eq!(
        s.enqueue_job(&again).await.expect("enqueue_job"),
        first.clone(),
        "the queued job of the derivation, as stored"
    );
    assert_eq!(s.job(again.id).await.expect("job"), None, "no second job is stored");

    let worker = WorkerId::new();
    let at = now();
    assert!(s.assign_job(first.id, worker, at).await.expect("assign_job"), "assign");
    let assigned = JobRecord {
        state: JobState::Assigned { worker, since: at },
        ..first.clone()
    };
    assert_eq!(
        s.enqueue_job(&same_drv(acme.id)).await.expect("enqueue_job"),
        assigned,
        "the assigned job of the derivation"
    );

    enqueue(s, same_drv(other.id)).await;
    enqueue(s, new_build_job(acme.id, "hello")).await;
    enqueue(s, new_evaluation_job(acme.id)).await;

    assert!(
        s.finish_job(run(first.id, worker, 0), true).await.expect("finish_job"),
        "finish"
    );
    let rebuilt = enqueue(s, same_drv(acme.id)).await;
    assert_eq!(
        s.enqueue_job(&same_drv(acme.id)).await.expect("enqueue_job"),
        rebuilt.clone(),
        "the new job now stands for the derivation"
    );
    assert!(
        s.assign_job(rebuilt.id, worker, at).await.expect("assign_job"),
        "assign"
    );
    assert!(
        s.finish_job(run(rebuilt.id, worker, 0), false)
            .await
            .expect("finish_job"),
        "fail"
    );
    enqueue(s, same_drv(acme.id)).await;
    assert_eq!(
        state_of(s, first.id).await,
        Some(JobState::Done),
        "the first job stays done"
    );
    assert_eq!(
        state_of(s, rebuilt.id).await,
        Some(JobState::Failed),
        "the second stays failed"
    );
}

/// Build-once holds under concurrency: simultaneous enqueues of one derivation store one job, and every
/// caller is answered that job.
pub async fn simultaneous_enqueues_of_a_derivation_store_one_job<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let drv = derivation("contended");
    let attempts: Vec<JobRecord> = (0..4)
        .map(|_| {
            let mut job = new_build_job(acme.id, "contended");
            if let JobKind::Build { derivation, .. } = &mut job.kind {
                derivation.clone_from(&drv);
            }
            job
        })
        .collect();
    let answers = futures_util::future::join_all(attempts.iter().map(|job| s.enqueue_job(job))).await;
    let answers: Vec<JobRecord> = answers.into_iter().map(|a| a.expect("enqueue_job")).collect();
    let winner = answers[0].clone();
    assert!(
        answers.iter().all(|a| *a == winner),
        "every caller is answered the same job: {answers:?}"
    );
    assert!(attempts.contains(&winner), "that job is one of the enqueued ones");
    for job in &attempts {
        let stored = s.job(job.id).await.expect("job");
        assert_eq!(stored.is_some(), job.id == winner.id, "only the winning job is stored");
    }
}

/// An evaluation has at most one active job too.
pub async fn evaluation_jobs_are_enqueued_once_while_active<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let first = enqueue(s, new_evaluation_job(acme.id)).await;
    let again = JobRecord {
        id: JobId::new(),
        created_at: now() + seconds(1),
        ..first.clone()
    };
    assert_eq!(
        s.enqueue_job(&again).await.expect("enqueue_job"),
        first.clone(),
        "the active job of the evaluation"
    );
    assert_eq!(s.job(again.id).await.expect("job"), None, "no second job is stored");
    enqueue(s, new_evaluation_job(acme.id)).await;
    let worker = WorkerId::new();
    assert!(
        s.assign_job(first.id, worker, now()).await.expect("assign_job"),
        "assign"
    );
    assert!(
        s.finish_job(run(first.id, worker, 0), false).await.expect("finish_job"),
        "fail"
    );
    enqueue(s, again).await;
}

/// Queued jobs of every organization come oldest first (ties by id), at most `limit`; assigned and finished
/// jobs are not queued.
pub async fn queued_jobs_are_oldest_first_and_limited<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let base = long_ago();
    let mut queued = Vec::new();
    // Out of order, alternating organizations and kinds; two at the same time.
    for (n, org, build) in [
        (4, acme.id, true),
        (1, other.id, false),
        (3, acme.id, false),
        (2, other.id, true),
        (5, acme.id, true),
        (3, other.id, true),
    ] {
        let job = if build {
            new_build_job(org, "queued")
        } else {
            new_evaluation_job(org)
        };
        queued.push(
            enqueue(
                s,
                JobRecord {
                    created_at: base + seconds(n),
                    ..job
                },
            )
            .await,
        );
    }
    let oldest = JobRecord {
        created_at: base,
        ..new_build_job(acme.id, "assigned")
    };
    let assigned = enqueue(s, oldest).await;
    assert!(
        s.assign_job(assigned.id, WorkerId::new(), now())
            .await
            .expect("assign_job"),
        "assign the oldest"
    );
    for state in [JobState::Done, JobState::Failed] {
        enqueue(
            s,
            JobRecord {
                state,
                created_at: base,
                ..new_build_job(other.id, "finished")
            },
        )
        .await;
    }
    queued.sort_by_key(|j| (j.created_at, j.id));

    assert_eq!(
        s.queued_jobs(4).await.expect("queued_jobs"),
        queued[..4].to_vec(),
        "the four oldest queued jobs, whole, oldest first, ties by id"
    );
    let all: Vec<&JobRecord> = queued.iter().collect();
    assert_eq!(
        ids(&s.queued_jobs(u32::MAX).await.expect("queued_jobs"), &all),
        queued.iter().map(|j| j.id).collect::<Vec<_>>(),
        "all six queued jobs"
    );
    assert_eq!(
        ids(&s.queued_jobs(u32::MAX).await.expect("queued_jobs"), &[&assigned]),
        vec![],
        "the assigned job is not queued"
    );
    assert_eq!(s.queued_jobs(0).await.expect("queued_jobs"), vec![], "a limit of zero");

    // One organization's: the others' do not crowd it out of the limit.
    let acme_queued: Vec<JobRecord> = queued.iter().filter(|j| j.org_id == acme.id).cloned().collect();
    assert_eq!(
        s.queued_jobs_of(acme.id, u32::MAX).await.expect("queued_jobs_of"),
        acme_queued,
        "only acme's queued jobs, oldest first, ties by id"
    );
    assert_eq!(
        s.queued_jobs_of(acme.id, 2).await.expect("queued_jobs_of"),
        acme_queued[..2].to_vec(),
        "acme's two oldest, though other's are older"
    );
}

/// Assignment is a compare-and-set from Queued: the first assignment wins, a second one (even at the same
/// time) is refused and changes nothing.
pub async fn assign_job_is_compare_and_set<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let job = enqueue(s, new_build_job(acme.id, "hello")).await;
    let (first, second) = (WorkerId::new(), WorkerId::new());
    let at = now();
    assert!(
        s.assign_job(job.id, first, at).await.expect("assign_job"),
        "first assignment"
    );
    let assigned = JobRecord {
        state: JobState::Assigned {
            worker: first,
            since: at,
        },
        ..job.clone()
    };
    assert_eq!(s.job(job.id).await.expect("job"), Some(assigned.clone()), "assigned");
    assert!(
        !s.assign_job(job.id, second, at + seconds(1)).await.expect("assign_job"),
        "a second assignment is refused"
    );
    assert!(
        !s.assign_job(job.id, first, at + seconds(1)).await.expect("assign_job"),
        "so is assigning it again to the same worker"
    );
    assert_eq!(s.job(job.id).await.expect("job"), Some(assigned.clone()), "unchanged");
    assert_eq!(
        s.jobs_assigned_to(second).await.expect("jobs_assigned_to"),
        vec![],
        "the loser has no job"
    );

    let raced = enqueue(s, new_build_job(acme.id, "raced")).await;
    let (a, b) =
        futures_util::future::join(s.assign_job(raced.id, first, at), s.assign_job(raced.id, second, at)).await;
    let (a, b) = (a.expect("assign_job"), b.expect("assign_job"));
    assert!(a != b, "exactly one of two simultaneous assignments wins ({a}, {b})");
    let winner = if a { first } else { second };
    assert_eq!(
        state_of(s, raced.id).await,
        Some(JobState::Assigned {
            worker: winner,
            since: at
        }),
        "assigned to the winner"
    );

    for finished in [JobState::Done, JobState::Failed] {
        let job = enqueue(
            s,
            JobRecord {
                state: finished.clone(),
                ..new_build_job(acme.id, "finished")
            },
        )
        .await;
        assert!(
            !s.assign_job(job.id, first, at).await.expect("assign_job"),
            "a finished job cannot be assigned"
        );
        assert_eq!(state_of(s, job.id).await, Some(finished), "unchanged");
    }
}

/// Requeueing a lost worker's jobs puts each back in the queue, in its old place, with one more attempt;
/// other workers' jobs, queued and finished jobs are untouched.
pub async fn requeue_jobs_of_a_lost_worker_counts_attempts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let base = long_ago();
    let (lost, alive) = (WorkerId::new(), WorkerId::new());
    let at = now();
    let mut jobs = Vec::new();
    for (n, org) in [(1, acme.id), (2, other.id), (3, acme.id), (4, acme.id), (5, acme.id)] {
        jobs.push(
            enqueue(
                s,
                JobRecord {
                    created_at: base + seconds(n),
                    ..new_build_job(org, "job")
                },
            )
            .await,
        );
    }
    let [oldest, second, alive_job, waiting, finished] = [0, 1, 2, 3, 4].map(|i| jobs[i].clone());
    for (job, worker) in [(&oldest, lost), (&second, lost), (&alive_job, alive), (&finished, lost)] {
        assert!(s.assign_job(job.id, worker, at).await.expect("assign_job"), "assign");
    }
    assert!(
        s.finish_job(run(finished.id, lost, 0), true).await.expect("finish_job"),
        "finish"
    );

    let all: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(
        s.requeue_jobs(lost, &[second.id]).await.expect("requeue_jobs"),
        1,
        "only a listed job is requeued"
    );
    assert!(
        matches!(state_of(s, oldest.id).await, Some(JobState::Assigned { .. })),
        "a job not listed stays assigned"
    );
    assert_eq!(
        s.requeue_jobs(lost, &all).await.expect("requeue_jobs"),
        1,
        "the lost worker's other assigned job; the rest are not assigned to it"
    );
    for job in [&oldest, &second] {
        assert_eq!(
            s.job(job.id).await.expect("job"),
            Some(JobRecord {
                attempts: 1,
                ..job.clone()
            }),
            "queued again with one attempt, otherwise as enqueued"
        );
    }
    assert_eq!(
        state_of(s, alive_job.id).await,
        Some(JobState::Assigned {
            worker: alive,
            since: at
        }),
        "another worker's job is untouched"
    );
    assert_eq!(
        s.job(waiting.id).await.expect("job"),
        Some(waiting.clone()),
        "a queued job"
    );
    assert_eq!(state_of(s, finished.id).await, Some(JobState::Done), "a finished job");
    assert_eq!(
        s.jobs_assigned_to(lost).await.expect("jobs_assigned_to"),
        vec![],
        "the lost worker has no jobs left"
    );
    assert_eq!(
        ids(
            &s.queued_jobs(u32::MAX).await.expect("queued_jobs"),
            &[&waiting, &second, &oldest]
        ),
        vec![oldest.id, second.id, waiting.id],
        "requeued jobs keep their place in the queue"
    );
    assert_eq!(
        s.requeue_jobs(lost, &all).await.expect("requeue_jobs"),
        0,
        "nothing left to requeue"
    );

    assert!(
        s.assign_job(oldest.id, alive, at).await.expect("assign_job"),
        "reassign"
    );
    assert_eq!(
        s.requeue_jobs(alive, &all).await.expect("requeue_jobs"),
        2,
        "the other worker is lost too"
    );
    assert_eq!(
        s.job(oldest.id).await.expect("job").map(|j| j.attempts),
        Some(2),
        "attempts add up"
    );
    assert_eq!(
        s.job(alive_job.id).await.expect("job").map(|j| j.attempts),
        Some(1),
        "one attempt for the other job"
    );
}

/// A job is finished only from Assigned, by the worker it is assigned to: Done or Failed, once.
/// Several jobs of a worker end at once, each as `finish_job` would end it.
pub async fn finish_jobs_ends_each_assigned_job_of_the_worker<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let (worker, stranger) = (WorkerId::new(), WorkerId::new());
    let at = now();
    let mine = enqueue(s, new_build_job(acme.id, "mine")).await;
    let failed = enqueue(s, new_build_job(acme.id, "failed")).await;
    let theirs = enqueue(s, new_build_job(acme.id, "theirs")).await;
    let queued = enqueue(s, new_evaluation_job(acme.id)).await;
    assert!(s.assign_job(mine.id, worker, at).await.expect("assign_job"));
    assert!(s.assign_job(failed.id, worker, at).await.expect("assign_job"));
    assert!(s.assign_job(theirs.id, stranger, at).await.expect("assign_job"));
    assert_eq!(s.finish_jobs(&[]).await.expect("finish_jobs"), Vec::<bool>::new());
    let ended = s
        .finish_jobs(&[
            (run(mine.id, worker, 0), true),
            (run(theirs.id, worker, 0), true),
            (run(failed.id, worker, 0), false),
            (run(queued.id, worker, 0), true),
            (run(mine.id, worker, 0), true),
            (run(JobId::new(), worker, 0), true),
        ])
        .await
        .expect("finish_jobs");
    assert_eq!(ended, [true, false, true, false, false, false]);
    assert_eq!(state_of(s, mine.id).await, Some(JobState::Done));
    assert_eq!(state_of(s, failed.id).await, Some(JobState::Failed));
    assert_eq!(
        state_of(s, theirs.id).await,
        Some(JobState::Assigned {
            worker: stranger,
            since: at
        }),
        "another worker's job is untouched"
    );
    assert_eq!(
        state_of(s, queued.id).await,
        Some(JobState::Queued),
        "a queued job is untouched"
    );
}

pub async fn finish_job_only_from_assigned<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let (worker, stranger) = (WorkerId::new(), WorkerId::new());
    let at = now();
    let good = enqueue(s, new_build_job(acme.id, "good")).await;
    let bad = enqueue(s, new_evaluation_job(acme.id)).await;
    assert!(
        !s.finish_job(run(good.id, worker, 0), true).await.expect("finish_job"),
        "a queued job cannot be finished"
    );
    assert_eq!(state_of(s, good.id).await, Some(JobState::Queued), "still queued");

    for job in [&good, &bad] {
        assert!(s.assign_job(job.id, worker, at).await.expect("assign_job"), "assign");
    }
    assert!(
        !s.finish_job(run(good.id, stranger, 0), true).await.expect("finish_job"),
        "another worker cannot finish it"
    );
    assert_eq!(
        state_of(s, good.id).await,
        Some(JobState::Assigned { worker, since: at }),
        "still assigned"
    );
    assert!(
        s.finish_job(run(good.id, worker, 0), true).await.expect("finish_job"),
        "done"
    );
    assert!(
        s.finish_job(run(bad.id, worker, 0), false).await.expect("finish_job"),
        "failed"
    );
    assert_eq!(
        s.job(good.id).await.expect("job"),
        Some(JobRecord {
            state: JobState::Done,
            ..good.clone()
        }),
        "done, otherwise as enqueued"
    );
    assert_eq!(
        s.job(bad.id).await.expect("job"),
        Some(JobRecord {
            state: JobState::Failed,
            ..bad.clone()
        }),
        "failed, otherwise as enqueued"
    );
    for (job, state) in [(&good, JobState::Done), (&bad, JobState::Failed)] {
        for done in [true, false] {
            assert!(
                !s.finish_job(run(job.id, worker, 0), done).await.expect("finish_job"),
                "a finished job cannot be finished again"
            );
        }
        assert_eq!(state_of(s, job.id).await, Some(state), "its outcome stands");
    }
    assert_eq!(
        s.jobs_assigned_to(worker).await.expect("jobs_assigned_to"),
        vec![],
        "finished jobs are no longer assigned"
    );
    assert_eq!(
        s.requeue_jobs(worker, &[good.id, bad.id]).await.expect("requeue_jobs"),
        0,
        "finished jobs are not requeued"
    );
}

/// Only a queued job can be cancelled (`Queued → Failed`), once; an assigned or finished one is left as it is.
pub async fn cancel_queued_job_only_from_queued<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let worker = WorkerId::new();
    let queued = enqueue(s, new_build_job(acme.id, "queued")).await;
    let running = enqueue(s, new_build_job(acme.id, "running")).await;
    let at = now();
    assert!(s.assign_job(running.id, worker, at).await.expect("assign_job"));
    assert!(s.cancel_queued_job(queued.id).await.expect("cancel_queued_job"));
    assert_eq!(
        s.job(queued.id).await.expect("job"),
        Some(JobRecord {
            state: JobState::Failed,
            ..queued.clone()
        }),
        "failed, otherwise as enqueued"
    );
    assert!(
        !s.cancel_queued_job(queued.id).await.expect("cancel_queued_job"),
        "not twice"
    );
    assert!(
        !s.cancel_queued_job(running.id).await.expect("cancel_queued_job"),
        "a running job is its worker's to end"
    );
    assert_eq!(
        state_of(s, running.id).await,
        Some(JobState::Assigned { worker, since: at })
    );
    assert!(
        !s.cancel_queued_job(gradient_domain::model::JobId::new())
            .await
            .expect("cancel_queued_job"),
        "an unknown job"
    );
    assert_eq!(
        s.queued_jobs(100)
            .await
            .expect("queued_jobs")
            .iter()
            .filter(|j| j.org_id == acme.id)
            .count(),
        0,
        "a cancelled job is not handed out"
    );
}

/// A worker's assigned jobs, across organizations, oldest first (ties by id), and only its own.
pub async fn jobs_assigned_to_lists_a_workers_jobs_oldest_first<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let (worker, someone) = (WorkerId::new(), WorkerId::new());
    let base = now();
    let mut mine = Vec::new();
    for (n, org) in [(2, acme.id), (4, other.id), (1, acme.id), (2, other.id)] {
        let job = enqueue(
            s,
            JobRecord {
                created_at: base - seconds(n),
                ..new_build_job(org, "mine")
            },
        )
        .await;
        let at = base + seconds(n);
        assert!(s.assign_job(job.id, worker, at).await.expect("assign_job"), "assign");
        mine.push(JobRecord {
            state: JobState::Assigned { worker, since: at },
            ..job
        });
    }
    let theirs = enqueue(s, new_evaluation_job(acme.id)).await;
    assert!(
        s.assign_job(theirs.id, someone, base).await.expect("assign_job"),
        "assign"
    );
    enqueue(s, new_build_job(acme.id, "queued")).await;
    mine.sort_by_key(|j| (j.created_at, j.id));
    assert_eq!(
        s.jobs_assigned_to(worker).await.expect("jobs_assigned_to"),
        mine,
        "the worker's jobs, whole, oldest first"
    );
    assert_eq!(
        ids(
            &s.jobs_assigned_to(someone).await.expect("jobs_assigned_to"),
            &[&theirs]
        ),
        vec![theirs.id],
        "the other worker's job"
    );
}

/// Deleting an organization deletes its jobs, in any state, and only its own.
pub async fn delete_org_removes_its_jobs<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    let worker = WorkerId::new();
    let at = now();
    let queued = enqueue(s, new_build_job(doomed.id, "queued")).await;
    let assigned = enqueue(s, new_evaluation_job(doomed.id)).await;
    assert!(
        s.assign_job(assigned.id, worker, at).await.expect("assign_job"),
        "assign"
    );
    let finished = enqueue(
        s,
        JobRecord {
            state: JobState::Done,
            ..new_build_job(doomed.id, "done")
        },
    )
    .await;
    let survivor = enqueue(s, new_build_job(kept.id, "kept")).await;
    assert!(
        s.assign_job(survivor.id, worker, at).await.expect("assign_job"),
        "assign"
    );

    assert!(s.delete_org(doomed.id).await.expect("delete_org"), "deleting the org");
    for job in [&queued, &assigned, &finished] {
        assert_eq!(s.job(job.id).await.expect("job"), None, "its jobs are gone");
    }
    assert_eq!(
        ids(&s.queued_jobs(u32::MAX).await.expect("queued_jobs"), &[&queued]),
        vec![],
        "its queued job is no longer queued"
    );
    assert_eq!(
        ids(
            &s.jobs_assigned_to(worker).await.expect("jobs_assigned_to"),
            &[&assigned, &survivor]
        ),
        vec![survivor.id],
        "the worker keeps only the other org's job"
    );
    assert_eq!(
        s.requeue_jobs(worker, &[queued.id, assigned.id, finished.id, survivor.id])
            .await
            .expect("requeue_jobs"),
        1,
        "only the other org's job is requeued"
    );
}

/// enqueue_jobs stores a list as enqueue_job would one by one, in a few statements: each new job is stored,
/// one for the subject of an active job (stored before or earlier in the list) answers that job and stores
/// nothing, and any number of jobs may be given. A taken id, or an unknown organization, fails the whole list.
pub async fn enqueue_jobs_stores_a_list_as_enqueue_job_does<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    assert_eq!(s.enqueue_jobs(&[]).await.expect("enqueue_jobs of nothing"), vec![]);
    let active = enqueue(s, new_build_job(acme.id, "active")).await;
    let fresh = new_build_job(acme.id, "fresh");
    let again = |j: &JobRecord| JobRecord {
        id: JobId::new(),
        ..j.clone()
    };
    let (for_active, for_fresh) = (again(&active), again(&fresh));
    let evaluation = new_evaluation_job(acme.id);
    let done = JobRecord {
        state: JobState::Done,
        ..new_build_job(acme.id, "done")
    };
    let done_again = JobRecord {
        id: JobId::new(),
        ..done.clone()
    };
    let standing = s
        .enqueue_jobs(&[
            fresh.clone(),
            for_active.clone(),
            for_fresh.clone(),
            evaluation.clone(),
            done.clone(),
            done_again.clone(),
        ])
        .await
        .expect("enqueue_jobs");
    assert_eq!(
        standing,
        vec![
            fresh.clone(),
            active.clone(),
            fresh.clone(),
            evaluation.clone(),
            done.clone(),
            done_again.clone()
        ],
        "each answered by the job standing for its work, in the order given"
    );
    for (job, stored) in [
        (&fresh, true),
        (&for_active, false),
        (&for_fresh, false),
        (&evaluation, true),
        (&done, true),
        (&done_again, true),
    ] {
        assert_eq!(
            s.job(job.id).await.expect("job"),
            stored.then(|| job.clone()),
            "stored only when it was new work (ended jobs are not build-once)"
        );
    }

    let many: Vec<JobRecord> = (0..1_200)
        .map(|i| new_build_job(acme.id, &format!("many-{i}")))
        .collect();
    assert_eq!(
        s.enqueue_jobs(&many).await.expect("enqueue_jobs of many"),
        many,
        "more jobs than one statement takes"
    );
    let queued = s.queued_jobs_of(acme.id, 5_000).await.expect("queued_jobs_of");
    let many_refs: Vec<&JobRecord> = many.iter().collect();
    assert_eq!(ids(&queued, &many_refs).len(), many.len(), "all of them are queued");

    let first = new_build_job(acme.id, "first");
    let taken = JobRecord {
        id: fresh.id,
        ..new_build_job(acme.id, "taken")
    };
    assert_eq!(
        s.enqueue_jobs(&[first.clone(), taken]).await,
        Err(conflict("job id")),
        "a taken id"
    );
    assert_eq!(
        s.job(first.id).await.expect("job"),
        None,
        "nothing of the list is stored"
    );
    let orphan = new_build_job(OrgId::new(), "orphan");
    let second = new_build_job(acme.id, "second");
    assert_eq!(
        s.enqueue_jobs(&[second.clone(), orphan.clone()]).await,
        Err(StorageError::NotFound),
        "an unknown organization"
    );
    assert_eq!(
        s.job(second.id).await.expect("job"),
        None,
        "nothing of the list is stored"
    );
}

/// assign_jobs hands each listed queued job to its worker, a compare-and-set per job: one assigned already,
/// ended or unknown is left out and left as it is, a job listed twice goes to its first worker, and any number
/// of jobs may be given.
pub async fn assign_jobs_assigns_only_queued_jobs<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let (w0, w1, w2) = (WorkerId::new(), WorkerId::new(), WorkerId::new());
    let at = now();
    assert_eq!(s.assign_jobs(&[], at).await.expect("assign_jobs of nothing"), vec![]);
    let first = enqueue(s, new_build_job(acme.id, "first")).await;
    let second = enqueue(s, new_evaluation_job(acme.id)).await;
    let taken = enqueue(s, new_build_job(acme.id, "taken")).await;
    let ended = enqueue(s, new_build_job(acme.id, "ended")).await;
    assert!(s.assign_job(taken.id, w0, at - seconds(5)).await.expect("assign_job"));
    assert!(s.cancel_queued_job(ended.id).await.expect("cancel_queued_job"));
    let unknown = JobId::new();
    let assigned = s
        .assign_jobs(
            &[
                (first.id, w1),
                (taken.id, w1),
                (unknown, w1),
                (ended.id, w2),
                (second.id, w2),
                (first.id, w2),
            ],
            at,
        )
        .await
        .expect("assign_jobs");
    assert_eq!(
        assigned,
        vec![first.id, second.id],
        "only the queued ones, in the order given"
    );
    assert_eq!(
        state_of(s, first.id).await,
        Some(JobState::Assigned { worker: w1, since: at }),
        "to its first worker"
    );
    assert_eq!(
        state_of(s, second.id).await,
        Some(JobState::Assigned { worker: w2, since: at })
    );
    assert_eq!(
        state_of(s, taken.id).await,
        Some(JobState::Assigned {
            worker: w0,
            since: at - seconds(5)
        }),
        "one assigned already stays its worker's"
    );
    assert_eq!(
        state_of(s, ended.id).await,
        Some(JobState::Failed),
        "an ended one stays ended"
    );
    assert_eq!(s.job(unknown).await.expect("job"), None, "nothing is created");

    let many: Vec<JobRecord> = (0..1_100)
        .map(|i| new_build_job(acme.id, &format!("many-{i}")))
        .collect();
    s.enqueue_jobs(&many).await.expect("enqueue_jobs");
    let pairs: Vec<(JobId, WorkerId)> = many
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id, if i % 2 == 0 { w1 } else { w2 }))
        .collect();
    let assigned = s.assign_jobs(&pairs, at).await.expect("assign_jobs of many");
    assert_eq!(
        assigned,
        many.iter().map(|j| j.id).collect::<Vec<_>>(),
        "more jobs than one statement takes"
    );
    assert_eq!(
        state_of(s, many[1].id).await,
        Some(JobState::Assigned { worker: w2, since: at })
    );
    let of_w1 = s.jobs_assigned_to(w1).await.expect("jobs_assigned_to");
    assert_eq!(of_w1.len(), 1 + many.len().div_ceil(2), "each to its own worker");
}

/// A job is finished only in the run it is in: once taken back from its worker and handed out again, even to
/// the same worker, the earlier run's finish (its late report) changes nothing and answers false, alone or in a
/// batch; the run it is in now ends it.
pub async fn finish_job_is_compare_and_set_on_the_run<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let worker = WorkerId::new();
    let at = now();
    let job = enqueue(s, new_build_job(acme.id, "again")).await;
    let other = enqueue(s, new_build_job(acme.id, "other")).await;
    for j in [&job, &other] {
        assert!(s.assign_job(j.id, worker, at).await.expect("assign_job"), "assign");
    }
    assert_eq!(s.requeue_jobs(worker, &[job.id]).await.expect("requeue_jobs"), 1);
    let again = at + seconds(1);
    assert!(
        s.assign_job(job.id, worker, again).await.expect("assign_job"),
        "reassign"
    );
    let reassigned = Some(JobState::Assigned { worker, since: again });
    let first = run(job.id, worker, 0);
    assert!(
        !s.finish_job(first, true).await.expect("finish_job"),
        "the first run is over: its late report does not end the second"
    );
    assert_eq!(state_of(s, job.id).await, reassigned, "still in its second run");
    assert_eq!(
        s.finish_jobs(&[(first, false), (run(other.id, worker, 0), true)])
            .await
            .expect("finish_jobs"),
        [false, true],
        "in a batch too, without holding the others"
    );
    assert_eq!(state_of(s, job.id).await, reassigned, "still in its second run");
    assert_eq!(state_of(s, other.id).await, Some(JobState::Done));
    assert!(
        !s.finish_job(run(job.id, worker, 2), true).await.expect("finish_job"),
        "nor a run to come"
    );
    assert!(
        s.finish_job(run(job.id, worker, 1), true).await.expect("finish_job"),
        "the run it is in ends it"
    );
    assert_eq!(
        s.job(job.id).await.expect("job"),
        Some(JobRecord {
            state: JobState::Done,
            attempts: 1,
            ..job.clone()
        })
    );
}
