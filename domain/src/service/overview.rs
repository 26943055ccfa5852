//! An organization's fleet and queue at a glance (`GET /orgs/{org}/overview`, what `gradient-tui` shows):
//! each registered worker with what its live link offers and the jobs of this organization it runs, and the
//! organization's queue by system. Another organization's jobs on a shared worker are never counted or shown.

use super::{Caller, Gradient, Result};
use crate::model::{Evaluation, JobKind, JobRecord, JobState, Project, Timestamp, WorkerRegistration};
use crate::permissions::Permission;
use crate::ports::{Clock, Storage};
use std::collections::BTreeMap;

/// How many of the organization's queued jobs the overview reads (oldest first).
pub const OVERVIEW_QUEUE_LIMIT: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOverview {
    pub workers: Vec<FleetWorker>,
    pub queue: QueueOverview,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetWorker {
    pub registration: WorkerRegistration,
    /// What the worker's link offers, while it is connected for this organization.
    pub live: Option<LiveWorker>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveWorker {
    pub systems: Vec<String>,
    pub features: Vec<String>,
    pub build_slots: u32,
    pub evaluation_slots: u32,
    /// This organization's jobs the worker holds, oldest first.
    pub jobs: Vec<RunningJob>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningJob {
    pub job: JobRecord,
    pub since: Timestamp,
}

/// Jobs waiting and running for one system (`evaluation` for evaluations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemQueue {
    pub system: String,
    pub queued: u64,
    pub running: u64,
    pub oldest_queued_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueOverview {
    pub queued: u64,
    pub running: u64,
    pub oldest_queued_at: Option<Timestamp>,
    pub systems: Vec<SystemQueue>,
}

/// The system a job needs: the derivation's, or `evaluation`.
pub fn job_system(job: &JobRecord) -> &str {
    match &job.kind {
        JobKind::Build { system, .. } => system,
        JobKind::Evaluate { .. } => "evaluation",
    }
}

/// Counts queued and running jobs, per system and in all, with the oldest waiting job's time.
pub fn queue_overview(queued: &[JobRecord], running: &[JobRecord]) -> QueueOverview {
    let mut systems: BTreeMap<String, SystemQueue> = BTreeMap::new();
    fn entry<'m>(systems: &'m mut BTreeMap<String, SystemQueue>, system: &str) -> &'m mut SystemQueue {
        systems.entry(system.to_owned()).or_insert_with(|| SystemQueue {
            system: system.to_owned(),
            queued: 0,
            running: 0,
            oldest_queued_at: None,
        })
    }
    for job in queued {
        let s = entry(&mut systems, job_system(job));
        s.queued += 1;
        s.oldest_queued_at = Some(s.oldest_queued_at.map_or(job.created_at, |t| t.min(job.created_at)));
    }
    for job in running {
        entry(&mut systems, job_system(job)).running += 1;
    }
    QueueOverview {
        queued: queued.len() as u64,
        running: running.len() as u64,
        oldest_queued_at: queued.iter().map(|j| j.created_at).min(),
        systems: systems.into_values().collect(),
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The organization's workers (with `connected`, what the server's link registry knows of the workers
    /// connected now) and its queue; for those who may view the organization.
    pub async fn fleet_overview(&self, caller: &Caller, org: &str) -> Result<FleetOverview> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        let connected = self.fleet.connected();
        let registrations = self.storage.worker_registrations(org.id).await?;
        let mut workers = Vec::with_capacity(registrations.len());
        let mut running = Vec::new();
        for registration in registrations {
            let info = connected
                .iter()
                .find(|w| w.id == registration.worker_id && w.orgs.contains(&org.id));
            let live = match info {
                None => None,
                Some(info) => {
                    let mut jobs = Vec::new();
                    for job in self.storage.jobs_assigned_to(info.id).await? {
                        if job.org_id != org.id {
                            continue;
                        }
                        if let JobState::Assigned { since, .. } = job.state {
                            running.push(job.clone());
                            jobs.push(RunningJob { job, since });
                        }
                    }
                    Some(LiveWorker {
                        systems: info.systems.clone(),
                        features: info.features.clone(),
                        build_slots: info.max_concurrent_builds,
                        evaluation_slots: info.max_concurrent_evaluations,
                        jobs,
                    })
                }
            };
            workers.push(FleetWorker { registration, live });
        }
        // One worker may hold two registrations of the organization: count its jobs once.
        running.sort_by_key(|j| j.id.0);
        running.dedup_by_key(|j| j.id);
        let queued: Vec<JobRecord> = self.storage.queued_jobs_of(org.id, OVERVIEW_QUEUE_LIMIT).await?;
        Ok(FleetOverview {
            workers,
            queue: queue_overview(&queued, &running),
        })
    }
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    /// The newest evaluations of each of the organization's projects (at most `per_project` each), with
    /// their project, oldest change first; for those who may view the organization. What the organization's
    /// event stream (`GET /orgs/{org}/events`) reads at every poll.
    pub async fn org_evaluations(
        &self,
        caller: &Caller,
        org: &str,
        per_project: u32,
    ) -> Result<Vec<(Project, Evaluation)>> {
        let org = self.org_requiring(caller, org, Permission::ViewOrg).await?;
        let mut all = Vec::new();
        for project in self.storage.projects(org.id).await? {
            for e in self.storage.evaluations(project.id, per_project).await? {
                all.push((project.clone(), e));
            }
        }
        all.sort_by_key(|(_, e)| (e.updated_at, e.id.0));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;
    use crate::{EvaluationId, OrgId};
    use chrono::TimeZone;

    fn job(n: u128, kind: JobKind, minute: u32) -> JobRecord {
        JobRecord {
            id: JobId(uuid::Uuid::from_u128(n)),
            org_id: OrgId(uuid::Uuid::from_u128(1)),
            kind,
            state: JobState::Queued,
            created_at: chrono::Utc
                .with_ymd_and_hms(2026, 12, 5, 12, minute, 0)
                .single()
                .expect("time"),
            attempts: 0,
        }
    }

    fn build(system: &str) -> JobKind {
        JobKind::Build {
            derivation: "/nix/store/x.drv".into(),
            system: system.into(),
            required_features: vec![],
        }
    }

    #[test]
    fn the_queue_is_counted_per_system_with_its_oldest_job() {
        let eval = JobKind::Evaluate {
            evaluation_id: EvaluationId(uuid::Uuid::from_u128(9)),
        };
        let queued = [
            job(1, build("x86_64-linux"), 5),
            job(2, build("x86_64-linux"), 3),
            job(3, eval, 4),
        ];
        let running = [job(4, build("aarch64-linux"), 1)];
        let q = queue_overview(&queued, &running);
        assert_eq!((q.queued, q.running), (3, 1));
        assert_eq!(q.oldest_queued_at, Some(queued[1].created_at));
        let by: Vec<(&str, u64, u64)> = q
            .systems
            .iter()
            .map(|s| (s.system.as_str(), s.queued, s.running))
            .collect();
        assert_eq!(
            by,
            [("aarch64-linux", 0, 1), ("evaluation", 1, 0), ("x86_64-linux", 2, 0)]
        );
        assert_eq!(q.systems[2].oldest_queued_at, Some(queued[1].created_at));
        assert_eq!(q.systems[0].oldest_queued_at, None);
    }
}
