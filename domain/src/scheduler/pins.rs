//! Builds held for the worker that evaluated them while it pushes their `.drv` files (in memory: see
//! ARCHITECTURE.md, "one server process per database").

use crate::model::{JobId, Timestamp};
use crate::{EvaluationId, OrgId, WorkerId};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Builds held for the worker that evaluated them while it still pushes their `.drv` files: until then no
/// other machine could get those. By evaluation job; released when that job ends, however it ends (reported,
/// or stopped by the server: see `dispatch`). Held in memory only: after a restart they are gone, and a build
/// may go to another worker before its `.drv` file is in the cache.
///
/// They also know which evaluations are queueing their builds right now ([`Pins::queueing`]): a dispatch round
/// waits for that (briefly), so that it sees an evaluation's builds whole and hands each chain out in one piece.
#[derive(Default)]
pub struct Pins {
    by_job: Mutex<HashMap<JobId, Pin>>,
    queueing: Mutex<HashMap<u64, Timestamp>>,
    next: std::sync::atomic::AtomicU64,
}

/// An evaluation's builds being queued, from [`Pins::queueing`] until dropped.
pub struct Queueing<'a> {
    pins: &'a Pins,
    id: u64,
}

impl Drop for Queueing<'_> {
    fn drop(&mut self) {
        self.pins
            .queueing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

struct Pin {
    worker: WorkerId,
    org: OrgId,
    evaluation: EvaluationId,
    drvs: Vec<String>,
}

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Pin>> {
        self.by_job.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds the organization's builds of `drvs` for `worker` while the evaluation job runs.
    pub fn pin(&self, job: JobId, worker: WorkerId, org: OrgId, evaluation: EvaluationId, drvs: Vec<String>) {
        self.lock().insert(
            job,
            Pin {
                worker,
                org,
                evaluation,
                drvs,
            },
        );
    }

    /// The evaluation jobs holding pins.
    pub fn jobs(&self) -> Vec<JobId> {
        self.lock().keys().copied().collect()
    }

    /// Ends the evaluation job's pin; false if it had none.
    pub fn release(&self, job: JobId) -> bool {
        self.lock().remove(&job).is_some()
    }

    /// Whether the evaluation's job still pushes its `.drv` files.
    pub fn holds(&self, evaluation: EvaluationId) -> bool {
        self.lock().values().any(|p| p.evaluation == evaluation)
    }

    /// Marks builds being queued (since `now`) until the answer is dropped.
    pub fn queueing(&self, now: Timestamp) -> Queueing<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queueing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, now);
        Queueing { pins: self, id }
    }

    /// Since when the oldest queueing still going on started, if one is.
    pub fn queueing_since(&self) -> Option<Timestamp> {
        self.queueing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .min()
            .copied()
    }

    /// Every pinned build (organization and derivation) and the worker it waits for.
    pub fn pinned(&self) -> HashMap<(OrgId, String), WorkerId> {
        self.lock()
            .values()
            .flat_map(|p| p.drvs.iter().map(|d| ((p.org, d.clone()), p.worker)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queueing_lasts_until_its_guard_is_dropped_and_the_oldest_counts() {
        let pins = Pins::default();
        let at = |s| chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::seconds(s);
        assert_eq!(pins.queueing_since(), None);
        let first = pins.queueing(at(5));
        let second = pins.queueing(at(7));
        assert_eq!(pins.queueing_since(), Some(at(5)));
        drop(first);
        assert_eq!(pins.queueing_since(), Some(at(7)));
        drop(second);
        assert_eq!(pins.queueing_since(), None);
    }
}
