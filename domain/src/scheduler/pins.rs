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
    /// Since when dispatch rounds have been held by queueings, one after another.
    held_since: Mutex<Option<Timestamp>>,
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

    /// Whether a dispatch round at `now` waits for builds being queued: while a queueing younger than `limit` goes
    /// on, but never for longer than `limit` in a row. Queueings that overlap one after another (a busy
    /// installation's evaluations) therefore cannot hold every organization's rounds off for longer than that.
    pub fn holds_dispatch(&self, now: Timestamp, limit: chrono::TimeDelta) -> bool {
        let busy = self.queueing_since().is_some_and(|since| now - since < limit);
        let mut held = self.held_since.lock().unwrap_or_else(PoisonError::into_inner);
        if !busy {
            *held = None;
            return false;
        }
        let start = *held.get_or_insert(now);
        if now - start >= limit {
            *held = None;
            return false;
        }
        true
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

    #[test]
    fn overlapping_queueings_hold_dispatch_for_the_limit_at_most() {
        let pins = Pins::default();
        let at = |ms| chrono::DateTime::UNIX_EPOCH + chrono::TimeDelta::milliseconds(ms);
        let limit = chrono::TimeDelta::seconds(2);
        assert!(!pins.holds_dispatch(at(0), limit), "nothing being queued");
        // Each queueing lasts 1.5 s and the next starts before it ends: one is always younger than the limit.
        let mut guards = std::collections::VecDeque::new();
        let mut ran = Vec::new();
        for step in 0..12 {
            let now = at(step * 500);
            if step % 2 == 0 {
                guards.push_back(pins.queueing(now));
            }
            if guards.len() > 2 {
                guards.pop_front();
            }
            if !pins.holds_dispatch(now, limit) {
                ran.push(step * 500);
            }
        }
        assert!(!ran.is_empty(), "a round ran");
        let gaps: Vec<i64> = ran.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= 2500),
            "rounds at most about 2 s apart: {ran:?}"
        );
    }
}
