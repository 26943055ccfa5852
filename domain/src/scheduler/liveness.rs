//! Keeping the queue honest when workers come and go. Whether a worker is lost is its link's to say (closed,
//! or silent past `workerLostAfterSecs`); these rules decide what happens to its jobs.

use super::QueueEntry;
use crate::WorkerId;
use crate::model::{JobId, JobState};

/// The jobs assigned to lost workers, oldest first: they go back to the queue with the same id and place (the
/// queue's `requeue_jobs`; a build's status `Building → Queued`, an evaluation's `Fetching`/`Evaluating →
/// Queued`), for any worker to take.
pub fn jobs_to_requeue(jobs: &[QueueEntry], lost: &[WorkerId]) -> Vec<JobId> {
    assigned_oldest_first(jobs, |worker| lost.contains(&worker), |_| true)
}

/// On a worker's `Hello`: the jobs the server had assigned to it that the worker no longer holds (it restarted,
/// or lost them); they go back to the queue. Jobs it still holds stay assigned.
pub fn orphaned_jobs(jobs: &[QueueEntry], worker: WorkerId, held: &[JobId]) -> Vec<JobId> {
    assigned_oldest_first(jobs, |w| w == worker, |id| !held.contains(&id))
}

/// On a worker's `Hello`: the jobs it still holds (`held`, with their records) that went back to the queue while
/// it was away and that no other worker took since: queued again (`attempts > 0`: handed out before, so this is
/// not a job it could only have guessed) and still active. They are given back to it, so what it built offline
/// is recorded once instead of built again elsewhere. A held job now assigned to another worker, or ended, is not.
pub fn reclaimable(held: &[crate::model::JobRecord]) -> Vec<JobId> {
    held.iter()
        .filter(|r| r.state == JobState::Queued && r.attempts > 0)
        .map(|r| r.id)
        .collect()
}

/// The reconciliation's rule for a job found assigned to a worker (`since` its assignment): the worker is not
/// connected to this server, and has not been for longer than a link takes to be declared lost (a worker
/// reconnecting within it keeps its jobs); its jobs go back to the queue as if its link had been lost.
pub fn assignment_is_stale(
    assigned_to: WorkerId,
    since: crate::model::Timestamp,
    connected: &[WorkerId],
    now: crate::model::Timestamp,
    lost_after: chrono::TimeDelta,
) -> bool {
    !connected.contains(&assigned_to) && now - since > lost_after
}

fn assigned_oldest_first(
    jobs: &[QueueEntry],
    on: impl Fn(WorkerId) -> bool,
    keep: impl Fn(JobId) -> bool,
) -> Vec<JobId> {
    let mut picked: Vec<&QueueEntry> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Assigned { worker, .. } if on(worker)) && keep(j.id))
        .collect();
    picked.sort_by_key(|j| (j.queued_at, j.id));
    picked.into_iter().map(|j| j.id).collect()
}
