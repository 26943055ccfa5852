//! Build logs as they stream in from workers, held per job until the job finishes (bounded per job), and
//! readable by derivation while the build runs, from any byte offset, for live viewers.

use gradient_domain::logs::LogBuffer;
use gradient_domain::model::JobId;
use gradient_domain::{OrgId, WorkerId};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
struct Inner {
    /// Each running build's log, with the worker it was handed to and the job's organization: only a link of
    /// that worker proved for that organization may write it.
    logs: HashMap<JobId, (WorkerId, OrgId, LogBuffer)>,
    /// The job building each organization's derivation now (organizations build a derivation apart).
    by_drv: HashMap<(OrgId, String), JobId>,
}

/// The logs of the running jobs, each bounded by the domain's [`LogBuffer`] (its start and its end are kept).
#[derive(Default)]
pub struct LiveLogs {
    inner: Mutex<Inner>,
}

impl LiveLogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A build job was handed to `worker`: its log starts empty (also when the job runs again).
    pub fn started(&self, job: JobId, worker: WorkerId, org: OrgId, drv_path: &str) {
        let mut inner = self.lock();
        inner.by_drv.insert((org, drv_path.to_owned()), job);
        inner.logs.insert(job, (worker, org, LogBuffer::default()));
    }

    /// A build job went back to `worker` (it held it while away): the log it had goes on, or starts empty.
    pub fn resumed(&self, job: JobId, worker: WorkerId, org: OrgId, drv_path: &str) {
        let mut inner = self.lock();
        inner.by_drv.insert((org, drv_path.to_owned()), job);
        let entry = inner
            .logs
            .entry(job)
            .or_insert_with(|| (worker, org, LogBuffer::default()));
        entry.0 = worker;
        entry.1 = org;
    }

    /// Whether the job is a build this process handed out and still runs.
    pub fn is_build(&self, job: JobId) -> bool {
        self.lock().logs.contains_key(&job)
    }

    /// More of a running build's log, from `worker` on a link proved for `orgs`. Text for a job that is not
    /// running a build here (an evaluation, or a job already finished or aborted) is dropped, so nothing
    /// accumulates for it. Answers false when the build runs on another worker or belongs to an organization the
    /// link did not prove: that text is refused, never written.
    pub fn append(&self, job: JobId, worker: WorkerId, orgs: &BTreeSet<OrgId>, text: &str) -> bool {
        match self.lock().logs.get_mut(&job) {
            Some((owner, org, log)) if *owner == worker && orgs.contains(org) => {
                log.append(text);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The jobs whose logs are held.
    pub fn jobs(&self) -> Vec<JobId> {
        self.lock().logs.keys().copied().collect()
    }

    /// The job ended: its log leaves the live set (it is stored with the build).
    pub fn take(&self, job: JobId) -> Option<LogBuffer> {
        let mut inner = self.lock();
        inner.by_drv.retain(|_, j| *j != job);
        inner.logs.remove(&job).map(|(_, _, log)| log)
    }

    /// `worker`, on a link proved for `orgs`, reports the job ended: its log is taken only if the job runs on
    /// that worker for one of those organizations.
    pub fn take_own(&self, job: JobId, worker: WorkerId, orgs: &BTreeSet<OrgId>) -> Option<LogBuffer> {
        let mut inner = self.lock();
        if inner
            .logs
            .get(&job)
            .is_some_and(|(owner, org, _)| *owner != worker || !orgs.contains(org))
        {
            return None;
        }
        inner.by_drv.retain(|_, j| *j != job);
        inner.logs.remove(&job).map(|(_, _, log)| log)
    }

    /// What the organization's running build of `drv_path` logged from byte `offset` on, and the offset after
    /// it; `None` when no build of it is running. Bytes already dropped are skipped.
    pub fn read(&self, org: OrgId, drv_path: &str, offset: usize) -> Option<(String, usize)> {
        let inner = self.lock();
        let job = inner.by_drv.get(&(org, drv_path.to_owned()))?;
        let (text, end) = inner.logs.get(job)?.2.read_from(offset as u64);
        Some((text, end as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: OrgId = OrgId(uuid::Uuid::from_u128(1));
    const WORKER: WorkerId = WorkerId(uuid::Uuid::from_u128(7));

    /// What a link of `WORKER` proved: `ORG`.
    fn proved() -> BTreeSet<OrgId> {
        BTreeSet::from([ORG])
    }

    #[test]
    fn only_the_worker_running_a_build_writes_or_ends_its_log() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        let intruder = WorkerId(uuid::Uuid::from_u128(8));
        logs.started(job, WORKER, ORG, "/nix/store/x.drv");
        assert!(logs.append(job, WORKER, &proved(), "real\n"));
        assert!(!logs.append(job, intruder, &proved(), "forged\n"), "refused");
        assert!(
            logs.take_own(job, intruder, &proved()).is_none(),
            "another worker's report takes nothing"
        );
        // A link under the same worker id proved only for another organization (another tenant registered the
        // same id) neither writes nor ends the log.
        let elsewhere = BTreeSet::from([OrgId(uuid::Uuid::from_u128(3))]);
        assert!(!logs.append(job, WORKER, &elsewhere, "forged\n"), "refused");
        assert!(logs.take_own(job, WORKER, &elsewhere).is_none());
        assert_eq!(logs.read(ORG, "/nix/store/x.drv", 0), Some(("real\n".into(), 5)));
        assert!(
            logs.append(JobId::new(), intruder, &proved(), "an evaluation's log\n"),
            "not held: dropped, not refused"
        );
        assert_eq!(
            logs.take_own(job, WORKER, &proved()).map(|l| l.finish().0).as_deref(),
            Some("real\n")
        );
    }

    #[test]
    fn readers_follow_a_running_build_from_any_offset() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        assert!(logs.read(ORG, "/nix/store/x.drv", 0).is_none());
        logs.started(job, WORKER, ORG, "/nix/store/x.drv");
        assert_eq!(logs.jobs(), [job]);
        logs.append(job, WORKER, &proved(), "one\n");
        assert_eq!(logs.read(ORG, "/nix/store/x.drv", 0), Some(("one\n".into(), 4)));
        let other_org = OrgId(uuid::Uuid::from_u128(2));
        assert!(
            logs.read(other_org, "/nix/store/x.drv", 0).is_none(),
            "another organization's build"
        );
        logs.append(job, WORKER, &proved(), "two\n");
        assert_eq!(logs.read(ORG, "/nix/store/x.drv", 4), Some(("two\n".into(), 8)));
        assert_eq!(logs.take(job).map(|l| l.finish().0).as_deref(), Some("one\ntwo\n"));
        assert!(logs.read(ORG, "/nix/store/x.drv", 8).is_none(), "finished");
        assert!(logs.jobs().is_empty());
        logs.append(job, WORKER, &proved(), "late\n");
        assert!(
            logs.take(job).is_none(),
            "nothing is kept for a job that is not running"
        );
    }

    #[test]
    fn offsets_survive_dropping_the_front_of_a_huge_log() {
        let logs = LiveLogs::default();
        let job = JobId::new();
        logs.started(job, WORKER, ORG, "d");
        let line = "x".repeat(1000) + "\n";
        for _ in 0..3000 {
            logs.append(job, WORKER, &proved(), &line);
        }
        let (text, end) = logs.read(ORG, "d", 0).unwrap();
        assert_eq!(end, 1001 * 3000, "offsets count everything the build printed");
        assert!(text.len() < 1001 * 3000 && text.contains("bytes of this log were left out"));
        assert_eq!(logs.read(ORG, "d", end).unwrap().0, "");
        let (tail, _) = logs.read(ORG, "d", end - 1001).unwrap();
        assert_eq!(tail, line, "a reader near the end gets just the end");
    }
}
