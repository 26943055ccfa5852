//! Which inputs of the builds a dispatch round looks at are available (or failed), asked of storage without
//! reading every input of every build at every round.
//!
//! A build waiting for many inputs (an aggregate over 10,000 derivations) stays queued for most of a run, and
//! the dispatcher runs a round after every batch of results. Asking for all of its inputs' statuses at each
//! round made the rounds, and so the whole run, grow with the square of the evaluation's size. Instead each
//! queued build's inputs are read in order, a bounded group at a time, only until one is found that is neither
//! available nor being pushed by a worker that has it (the build cannot run yet, whatever the rest are) or one
//! that failed. An input that provides outputs (Completed, Substituted) never stops doing so (see
//! [`BuildStatus::can_become`]), so where the leading available inputs end is remembered per job and the next
//! round starts there: over a whole run each input is read about once, plus one group per job and round.
//!
//! The scheduler sees the same answer as if every input had been read, except that a failed input found past
//! the first one still pending is noticed once that one is done (a failure's dependents are already moved to
//! DependencyFailed when it happens, by `fail_dependents`; only their queued jobs wait to be cancelled).
//!
//! The progress kept is bounded by the jobs of the last round (at most the dispatch window plus the jobs
//! assigned to connected workers): a job no longer in a round is forgotten at the next one.

use super::{Gradient, Result};
use crate::model::JobId;
use crate::ports::{Clock, Storage};
use crate::scheduler::{Needs, QueueEntry};
use crate::status::BuildStatus;
use crate::{OrgId, WorkerId};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

/// How many inputs of one build are read per question (the group after the last one known available).
const INPUTS_PER_LOOK: usize = 256;

/// Per job of the last dispatch round: how many of its leading inputs are known to provide outputs.
#[derive(Default)]
pub struct InputProgress {
    available_prefix: Mutex<HashMap<JobId, usize>>,
}

/// Per organization, the inputs found available and the ones found failed.
pub(super) type Statuses = (HashMap<OrgId, HashSet<String>>, HashMap<OrgId, HashSet<String>>);

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The statuses the scheduler needs for `jobs`' inputs: available and failed ones, per organization; the
    /// leading inputs known available are taken out of the jobs' inputs. An input built by a worker that is
    /// still pushing it (`built_on`) does not stop the reading: the build may run on that worker if every
    /// other input is available or there too.
    pub(super) async fn input_statuses(
        &self,
        jobs: &mut [QueueEntry],
        built_on: &HashMap<OrgId, HashMap<String, WorkerId>>,
    ) -> Result<Statuses> {
        let mut available: HashMap<OrgId, HashSet<String>> = HashMap::new();
        let mut failed: HashMap<OrgId, HashSet<String>> = HashMap::new();
        let mut progress = {
            let kept = self
                .input_progress
                .available_prefix
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            jobs.iter()
                .map(|j| (j.id, kept.get(&j.id).copied().unwrap_or(0)))
                .collect::<HashMap<JobId, usize>>()
        };
        // Per job still being read: where the reading is (at or after its available prefix).
        let mut reading: Vec<(&QueueEntry, &[String], usize)> = jobs
            .iter()
            .filter_map(|j| match &j.needs {
                Needs::Build(b) => Some((j, b.inputs.as_slice(), progress[&j.id].min(b.inputs.len()))),
                Needs::Evaluation => None,
            })
            .filter(|(_, inputs, at)| *at < inputs.len())
            .collect();
        while !reading.is_empty() {
            let mut ask: HashMap<OrgId, Vec<String>> = HashMap::new();
            for (j, inputs, at) in &reading {
                let end = (*at + INPUTS_PER_LOOK).min(inputs.len());
                ask.entry(j.org).or_default().extend(inputs[*at..end].iter().cloned());
            }
            let mut found: HashMap<OrgId, HashMap<String, BuildStatus>> = HashMap::new();
            for (org, paths) in ask {
                found
                    .entry(org)
                    .or_default()
                    .extend(self.storage.build_statuses(org, &paths).await?);
            }
            let mut next = Vec::new();
            for (j, inputs, mut at) in reading {
                let end = (at + INPUTS_PER_LOOK).min(inputs.len());
                let statuses = found.get(&j.org);
                let prefix = progress.entry(j.id).or_default();
                let mut stopped = false;
                while at < end {
                    let input = &inputs[at];
                    match statuses.and_then(|s| s.get(input)) {
                        Some(s) if s.provides_outputs() => {
                            available.entry(j.org).or_default().insert(input.clone());
                            if *prefix == at {
                                *prefix = at + 1;
                            }
                        }
                        Some(s) if s.is_terminal() => {
                            failed.entry(j.org).or_default().insert(input.clone());
                            stopped = true;
                        }
                        _ if built_on.get(&j.org).is_some_and(|m| m.contains_key(input)) => {}
                        _ => stopped = true,
                    }
                    at += 1;
                    if stopped {
                        break;
                    }
                }
                if !stopped && at < inputs.len() {
                    next.push((j, inputs, at));
                }
            }
            reading = next;
        }
        // The scheduler need not see the inputs known available: they are taken out of what it reads.
        for j in jobs.iter_mut() {
            if let Needs::Build(b) = &mut j.needs {
                let prefix = progress.get(&j.id).copied().unwrap_or(0).min(b.inputs.len());
                b.inputs.drain(..prefix);
            }
        }
        progress.retain(|_, prefix| *prefix > 0);
        *self
            .input_progress
            .available_prefix
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = progress;
        Ok((available, failed))
    }
}
