//! How the server's background loops live through a database outage: they back off while the database is
//! unavailable (a pause doubling from 1 s to 30 s between attempts, instead of an error every tick), say so once
//! when it goes and once when it is back, and resume by themselves.

use gradient_domain::service::ServiceError;
use std::time::{Duration, Instant};

/// The longest pause between two attempts of a loop while the database is unavailable.
pub const MOST_PAUSE: Duration = Duration::from_secs(30);

/// One loop's view of the database.
pub struct Outage {
    /// What the loop does, for its log lines ("dispatching", "delivering commit statuses", …).
    what: &'static str,
    down_since: Option<Instant>,
    pause: Duration,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            down_since: None,
            pause: Duration::ZERO,
        }
    }

    /// Whether the loop is waiting for the database now.
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Takes a round's result: the end of an outage is logged once, the start of one once, any other error each
    /// time (as a failure of this round only). Answers how long the loop pauses before its next round, beyond
    /// its own period: nothing unless the database is unavailable.
    pub fn after<T>(&mut self, result: &Result<T, ServiceError>) -> Duration {
        match result {
            Err(ServiceError::Unavailable(e)) => {
                if self.down_since.is_none() {
                    tracing::warn!(
                        "{} paused: the database is unavailable ({e}); retrying with backoff",
                        self.what
                    );
                    self.down_since = Some(Instant::now());
                    self.pause = Duration::from_secs(1);
                } else {
                    self.pause = (self.pause * 2).min(MOST_PAUSE);
                }
                self.pause
            }
            other => {
                if let Some(since) = self.down_since.take() {
                    tracing::info!(
                        "{} resumed: the database answers again after {:.0} s",
                        self.what,
                        since.elapsed().as_secs_f64()
                    );
                }
                self.pause = Duration::ZERO;
                if let Err(e) = other {
                    tracing::error!("{} failed: {e:?}", self.what);
                }
                Duration::ZERO
            }
        }
    }

    /// [`Self::after`], then the pause.
    pub async fn settle<T>(&mut self, result: &Result<T, ServiceError>) {
        let pause = self.after(result);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_pauses_longer_each_time_and_ends_at_the_first_answer() {
        let mut o = Outage::new("testing");
        let down: Result<(), ServiceError> = Err(ServiceError::Unavailable("gone".into()));
        let pauses: Vec<u64> = (0..8).map(|_| o.after(&down).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(o.is_down());
        assert_eq!(o.after(&Ok(())), Duration::ZERO);
        assert!(!o.is_down());
        assert_eq!(o.after(&down).as_secs(), 1, "a new outage starts from 1 s again");
        let other: Result<(), ServiceError> = Err(ServiceError::Internal("bug".into()));
        assert_eq!(o.after(&other), Duration::ZERO, "another error is not an outage");
        assert!(!o.is_down());
    }
}
