//! Reports waiting for the server's `ack` (`docs/protocol.md`, `report`): kept on disk in `<stateDir>/outbox/`,
//! one file per report (written to a temporary name, fsynced, renamed), so a report survives a lost link, a
//! server restart and a restart of the worker, and is sent again, in its first order, after each `welcome` until
//! the server acknowledges it.

use gradient_domain::model::JobId;
use gradient_domain::proto::{Report, ReportId, WorkerMessage};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The reports not acknowledged yet, oldest first.
pub struct Outbox {
    dir: PathBuf,
    /// (sequence number, report): the sequence orders the files, so a restart sends them in their first order.
    pending: Vec<(u64, Report)>,
    next: u64,
}

impl Outbox {
    /// Opens (creating it owner-only) `<state_dir>/outbox` and reads the reports left there. Temporary files of
    /// a write that never finished are deleted; a file that does not read back as a report is set aside as
    /// `<name>.unreadable` with a warning, never sent.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("outbox");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut pending = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|n| n.split_once('-'))
                .and_then(|(seq, _)| seq.parse::<u64>().ok())
            else {
                continue;
            };
            let read = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| gradient_domain::proto::decode_worker(&text).ok());
            match read {
                Some(WorkerMessage::Report(r)) if Report::is_reportable(&r.report) => pending.push((seq, r)),
                _ => {
                    tracing::warn!(target: "gradient::proto", "{}: not a report; set aside, not sent", path.display());
                    let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                }
            }
        }
        pending.sort_by_key(|(seq, _)| *seq);
        let next = pending.last().map_or(0, |(seq, _)| seq + 1);
        Ok(Self { dir, pending, next })
    }

    /// Keeps `message` under a fresh report id until it is acknowledged, and answers the report to send. When
    /// the disk refuses it, the report is kept in memory only (it still goes out, and again after a
    /// reconnection; only a restart of the worker loses it) and the failure is logged.
    pub fn push(&mut self, message: WorkerMessage) -> Report {
        let report = Report::new(message);
        let seq = self.next;
        self.next += 1;
        if let Err(e) = self.write(seq, &report) {
            tracing::error!(
                target: "gradient::proto",
                "cannot keep report {} in {}: {e}; it is kept in memory only",
                report.report_id,
                self.dir.display()
            );
        }
        self.pending.push((seq, report.clone()));
        report
    }

    fn file(&self, seq: u64, id: ReportId) -> PathBuf {
        self.dir.join(format!("{seq:020}-{id}.json"))
    }

    fn write(&self, seq: u64, report: &Report) -> std::io::Result<()> {
        let text = gradient_domain::proto::encode(&WorkerMessage::Report(report.clone()))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = self.file(seq, report.report_id);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The server acknowledged the report: it is forgotten. False when it was not pending (acknowledged twice).
    pub fn ack(&mut self, id: ReportId) -> bool {
        let Some(i) = self.pending.iter().position(|(_, r)| r.report_id == id) else {
            return false;
        };
        let (seq, _) = self.pending.remove(i);
        match std::fs::remove_file(self.file(seq, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(target: "gradient::proto", "cannot delete acknowledged report {id}: {e}"),
        }
        true
    }

    /// The reports not acknowledged yet, in the order they were first sent.
    pub fn pending(&self) -> impl Iterator<Item = &Report> {
        self.pending.iter().map(|(_, r)| r)
    }

    /// Jobs whose `job_finished` waits here: the worker still holds them (`hello.held_jobs`).
    pub fn finished_jobs(&self) -> Vec<JobId> {
        self.pending
            .iter()
            .filter_map(|(_, r)| match &*r.report {
                WorkerMessage::JobFinished { job_id, .. } => Some(*job_id),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradient_domain::proto::{JobOutcome, Stage};

    fn finished(job: JobId) -> WorkerMessage {
        WorkerMessage::JobFinished {
            job_id: job,
            outcome: JobOutcome::Success,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reports_survive_a_restart_in_their_order_until_acknowledged() {
        let state = tempfile::tempdir().unwrap();
        let (a, b) = (JobId::new(), JobId::new());
        let mut outbox = Outbox::open(state.path()).unwrap();
        let first = outbox.push(WorkerMessage::JobProgress {
            job_id: a,
            stage: Stage::Pushing,
        });
        let second = outbox.push(finished(a));
        let third = outbox.push(finished(b));
        assert_eq!(files(state.path()).len(), 3, "each report is on disk before it is sent");
        drop(outbox);

        // The worker restarts: the same reports, the same ids, the same order; their jobs are still held.
        let mut outbox = Outbox::open(state.path()).unwrap();
        let ids: Vec<ReportId> = outbox.pending().map(|r| r.report_id).collect();
        assert_eq!(ids, [first.report_id, second.report_id, third.report_id]);
        assert_eq!(outbox.pending().nth(1).unwrap(), &second);
        assert_eq!(outbox.finished_jobs(), [a, b]);

        assert!(outbox.ack(second.report_id));
        assert!(!outbox.ack(second.report_id), "acknowledged once");
        assert_eq!(files(state.path()).len(), 2, "an acknowledged report leaves the disk");
        assert_eq!(outbox.finished_jobs(), [b]);
        // New reports come after the ones left, also after another restart.
        let fourth = outbox.push(finished(a));
        drop(outbox);
        let outbox = Outbox::open(state.path()).unwrap();
        let ids: Vec<ReportId> = outbox.pending().map(|r| r.report_id).collect();
        assert_eq!(ids, [first.report_id, third.report_id, fourth.report_id]);
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_removed_and_garbage_is_set_aside() {
        let state = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(state.path()).unwrap();
        let kept = outbox.push(finished(JobId::new()));
        drop(outbox);
        let dir = state.path().join("outbox");
        std::fs::write(dir.join("00000000000000000007-x.tmp"), "{\"type\":").unwrap();
        std::fs::write(dir.join("00000000000000000008-y.json"), "not json").unwrap();
        let outbox = Outbox::open(state.path()).unwrap();
        assert_eq!(outbox.pending().collect::<Vec<_>>(), [&kept]);
        let names = files(state.path());
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with(".unreadable")), "{names:?}");
    }

    #[test]
    fn a_disk_that_refuses_keeps_the_report_in_memory() {
        let state = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(state.path()).unwrap();
        std::fs::remove_dir(state.path().join("outbox")).unwrap();
        let r = outbox.push(finished(JobId::new()));
        assert_eq!(outbox.pending().collect::<Vec<_>>(), [&r], "still sent");
        assert!(outbox.ack(r.report_id));
    }
}
