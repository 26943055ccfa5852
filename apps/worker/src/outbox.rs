//! Reports waiting for the server's `ack` (`docs/protocol.md`, `reports`): kept on disk in `<stateDir>/outbox/`,
//! one file per batch of reports made together (written to a temporary name, fsynced, renamed, the directory
//! fsynced: one fsync pair per batch, not per report), so a report survives a lost link, a server restart and a
//! restart of the worker, and is sent again, in its first order, after each `welcome` until the server
//! acknowledges it. A file leaves the disk once every report in it is acknowledged.

use gradient_domain::model::JobId;
use gradient_domain::proto::{Report, ReportId, WorkerMessage};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The reports not acknowledged yet, oldest first.
pub struct Outbox {
    dir: PathBuf,
    /// (sequence number of its file, report): the sequence orders the files, so a restart sends them in their
    /// first order.
    pending: Vec<(u64, Report)>,
    /// Each file's name by its sequence number.
    files: BTreeMap<u64, PathBuf>,
    next: u64,
}

impl Outbox {
    /// Opens (creating it owner-only) `<state_dir>/outbox` and reads the reports left there: files of one
    /// `reports` batch, or of one `report` (as protocol version 2 kept them). Temporary files of a write that
    /// never finished are deleted; a file that does not read back as reports is set aside as
    /// `<name>.unreadable` with a warning, never sent.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("outbox");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut pending = Vec::new();
        let mut files = BTreeMap::new();
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
            // Read without the frame limit: a batch on disk may take several frames to send.
            let read = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str::<WorkerMessage>(&text).ok());
            let reports = match read {
                Some(WorkerMessage::Report(r)) => vec![r],
                Some(WorkerMessage::Reports { reports }) => reports,
                _ => Vec::new(),
            };
            if reports.is_empty() || !reports.iter().all(|r| Report::is_reportable(&r.report)) {
                tracing::warn!(target: "gradient::proto", "{}: not reports; set aside, not sent", path.display());
                let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                continue;
            }
            pending.extend(reports.into_iter().map(|r| (seq, r)));
            files.insert(seq, path);
        }
        // Stable: a file's reports keep their order.
        pending.sort_by_key(|(seq, _)| *seq);
        let next = files.keys().next_back().map_or(0, |seq| seq + 1);
        Ok(Self {
            dir,
            pending,
            files,
            next,
        })
    }

    /// Keeps `message` under a fresh report id until it is acknowledged (see [`Self::push_all`]).
    #[cfg(test)]
    pub fn push(&mut self, message: WorkerMessage) -> Report {
        self.push_all(vec![message]).pop().expect("one report")
    }

    /// Keeps `messages`, each under a fresh report id, in one file until they are acknowledged, and answers the
    /// reports to send, in their order. When the disk refuses them, they are kept in memory only (they still go
    /// out, and again after a reconnection; only a restart of the worker loses them) and the failure is logged.
    pub fn push_all(&mut self, messages: Vec<WorkerMessage>) -> Vec<Report> {
        let reports: Vec<Report> = messages.into_iter().map(Report::new).collect();
        let Some(first) = reports.first() else {
            return reports;
        };
        let seq = self.next;
        self.next += 1;
        let path = self.dir.join(format!("{seq:020}-{}.json", first.report_id));
        if let Err(e) = self.write(&path, &reports) {
            tracing::error!(
                target: "gradient::proto",
                "cannot keep {} report(s) in {}: {e}; they are kept in memory only",
                reports.len(),
                self.dir.display()
            );
        }
        self.files.insert(seq, path);
        self.pending.extend(reports.iter().map(|r| (seq, r.clone())));
        reports
    }

    fn write(&self, path: &Path, reports: &[Report]) -> std::io::Result<()> {
        let text = serde_json::to_string(&WorkerMessage::Reports {
            reports: reports.to_vec(),
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The server acknowledged the report: it is forgotten, and its file deleted once none of its reports is
    /// pending. False when it was not pending (acknowledged twice).
    pub fn ack(&mut self, id: ReportId) -> bool {
        let Some(i) = self.pending.iter().position(|(_, r)| r.report_id == id) else {
            return false;
        };
        let (seq, _) = self.pending.remove(i);
        if self.pending.iter().any(|(s, _)| *s == seq) {
            return true;
        }
        if let Some(path) = self.files.remove(&seq) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(target: "gradient::proto", "cannot delete acknowledged reports {}: {e}", path.display())
                }
            }
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
    fn a_batch_is_one_file_that_leaves_the_disk_once_every_report_in_it_is_acknowledged() {
        let state = tempfile::tempdir().unwrap();
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        let mut outbox = Outbox::open(state.path()).unwrap();
        let single = outbox.push(finished(c));
        let batch = outbox.push_all(vec![
            WorkerMessage::JobProgress {
                job_id: a,
                stage: Stage::Pushing,
            },
            finished(a),
            finished(b),
        ]);
        assert_eq!(batch.len(), 3);
        assert_eq!(files(state.path()).len(), 2, "one file per batch");
        assert!(outbox.push_all(vec![]).is_empty());
        assert_eq!(files(state.path()).len(), 2, "an empty batch writes nothing");
        assert!(outbox.ack(batch[1].report_id));
        drop(outbox);

        // A restart with the batch file on disk: its reports not acknowledged come again, in their order, after
        // the older file's; the acknowledged one is sent again too (its file holds it; the server answers a
        // repeated report without changing anything), and every job whose end waits there is held.
        let mut outbox = Outbox::open(state.path()).unwrap();
        let ids: Vec<ReportId> = outbox.pending().map(|r| r.report_id).collect();
        assert_eq!(
            ids,
            [
                single.report_id,
                batch[0].report_id,
                batch[1].report_id,
                batch[2].report_id
            ]
        );
        assert_eq!(outbox.finished_jobs(), [c, a, b]);
        for r in &batch {
            assert!(outbox.ack(r.report_id));
        }
        assert_eq!(
            files(state.path()).len(),
            1,
            "the batch's file is gone, the single one stays"
        );
        let later = outbox.push(finished(JobId::new()));
        drop(outbox);
        let outbox = Outbox::open(state.path()).unwrap();
        let ids: Vec<ReportId> = outbox.pending().map(|r| r.report_id).collect();
        assert_eq!(ids, [single.report_id, later.report_id], "new files after the old ones");
    }

    #[test]
    fn a_file_of_protocol_version_2_is_read_and_a_partly_written_batch_is_dropped() {
        let state = tempfile::tempdir().unwrap();
        drop(Outbox::open(state.path()).unwrap());
        let dir = state.path().join("outbox");
        // What a worker speaking protocol version 2 left: one `report` per file.
        let old = Report::new(finished(JobId::new()));
        std::fs::write(
            dir.join(format!("{:020}-{}.json", 4, old.report_id)),
            gradient_domain::proto::encode(&WorkerMessage::Report(old.clone())).unwrap(),
        )
        .unwrap();
        // A batch whose write was cut off before its rename (the worker stopped): its temporary file is removed.
        // Nothing of it was sent (a batch goes out once on disk), and its jobs are not held: the server requeues
        // them.
        std::fs::write(
            dir.join("00000000000000000005-z.tmp"),
            r#"{"type":"reports","reports":[{"#,
        )
        .unwrap();
        // A truncated batch under its final name (a disk that lied about fsync): set aside, never sent.
        std::fs::write(
            dir.join("00000000000000000006-y.json"),
            r#"{"type":"reports","reports":[{"#,
        )
        .unwrap();
        let mut outbox = Outbox::open(state.path()).unwrap();
        assert_eq!(outbox.pending().collect::<Vec<_>>(), [&old]);
        let names = files(state.path());
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert!(names.iter().any(|n| n.ends_with(".unreadable")), "{names:?}");
        let next = outbox.push(finished(JobId::new()));
        assert!(
            files(state.path())
                .iter()
                .any(|n| n.starts_with("00000000000000000005-")),
            "numbered after the files read"
        );
        assert!(outbox.ack(old.report_id));
        assert_eq!(outbox.pending().collect::<Vec<_>>(), [&next]);
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
