//! What the server's metrics read at each scrape: installation-wide counts (one storage query per family)
//! and the capacity of the workers connected now. Numbers by kind only: nothing here names an organization,
//! a project or a cache.

use super::{Gradient, Result};
use crate::ports::storage::Totals;
use crate::ports::{Clock, Storage};
use crate::status::{BuildStatus, EvaluationStatus};
use std::time::Duration;

/// The installation at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operations {
    /// Every evaluation status, with how many evaluations have it (zero included).
    pub evaluations: Vec<(EvaluationStatus, u64)>,
    /// Every build status, with how many builds have it (zero included).
    pub builds: Vec<(BuildStatus, u64)>,
    pub queued_jobs: u64,
    /// How long the oldest queued job has waited (zero when none waits).
    pub oldest_queued_wait: Duration,
    pub assigned_jobs: u64,
    pub nar_files: u64,
    pub nar_bytes: u64,
    /// Workers connected and done with their handshake.
    pub workers: u64,
    /// Their job slots: builds plus evaluations each takes at once.
    pub slots: u64,
}

/// How many of `list` have `status`.
fn count_of<T: PartialEq>(list: &[(T, u64)], status: T) -> u64 {
    list.iter().filter(|(s, _)| *s == status).map(|(_, n)| *n).sum()
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The installation's numbers now (see [`Operations`]).
    pub async fn operations(&self) -> Result<Operations> {
        let Totals {
            evaluations,
            builds,
            queued_jobs,
            oldest_queued_job,
            assigned_jobs,
            nar_files,
            nar_bytes,
        } = self.storage.totals().await?;
        let workers = self.fleet.connected();
        Ok(Operations {
            evaluations: EvaluationStatus::ALL
                .into_iter()
                .map(|s| (s, count_of(&evaluations, s)))
                .collect(),
            builds: BuildStatus::ALL
                .into_iter()
                .map(|s| (s, count_of(&builds, s)))
                .collect(),
            queued_jobs,
            oldest_queued_wait: oldest_queued_job
                .and_then(|t| (self.clock.now() - t).to_std().ok())
                .unwrap_or_default(),
            assigned_jobs,
            nar_files,
            nar_bytes,
            workers: workers.len() as u64,
            slots: workers
                .iter()
                .map(|w| u64::from(w.max_concurrent_builds) + u64::from(w.max_concurrent_evaluations))
                .sum(),
        })
    }
}
