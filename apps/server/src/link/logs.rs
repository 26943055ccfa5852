//! Build logs as they stream in, held per job until the job finishes, bounded per job.

use gradient_domain::model::JobId;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Beyond this the oldest part of a running job's log is dropped (the stored log is capped too).
const MAX_BUFFER: usize = 512 * 1024;

#[derive(Default)]
pub struct LiveLogs {
    logs: Mutex<HashMap<JobId, String>>,
}

impl LiveLogs {
    pub fn append(&self, job: JobId, text: &str) {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        let log = logs.entry(job).or_default();
        log.push_str(text);
        if log.len() > MAX_BUFFER {
            let cut = log.len() - MAX_BUFFER / 2;
            let cut = (cut..log.len()).find(|i| log.is_char_boundary(*i)).unwrap_or(log.len());
            log.drain(..cut);
        }
    }

    pub fn take(&self, job: JobId) -> Option<String> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner).remove(&job)
    }
}
