//! Builds held for the worker that evaluated them while it pushes their `.drv` files (in memory: see
//! ARCHITECTURE.md, "one server process per database").

use crate::model::JobId;
use crate::{EvaluationId, OrgId, WorkerId};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Builds held for the worker that evaluated them while it still pushes their `.drv` files: until then no
/// other machine could get those. By evaluation job; released when that job ends, however it ends (reported,
/// or stopped by the server: see `dispatch`). Held in memory only: after a restart they are gone, and a build
/// may go to another worker before its `.drv` file is in the cache.
#[derive(Default)]
pub struct Pins {
    by_job: Mutex<HashMap<JobId, Pin>>,
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

    /// Every pinned build (organization and derivation) and the worker it waits for.
    pub fn pinned(&self) -> HashMap<(OrgId, String), WorkerId> {
        self.lock()
            .values()
            .flat_map(|p| p.drvs.iter().map(|d| ((p.org, d.clone()), p.worker)))
            .collect()
    }
}
