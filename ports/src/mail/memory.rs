//! A `Mailer` that keeps every message it is given, for service tests (and the contract's reference).

use gradient_domain::ports::mail::{Mail, Mailer, Sending};
use std::sync::{Arc, Mutex, PoisonError};

/// Keeps what it is sent, in order. Clones share the outbox.
#[derive(Clone, Debug, Default)]
pub struct MemoryMailer {
    sent: Arc<Mutex<Vec<Mail>>>,
}

impl MemoryMailer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message sent so far, oldest first.
    pub fn sent(&self) -> Vec<Mail> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Removes and answers the messages sent so far.
    pub fn take(&self) -> Vec<Mail> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Mailer for MemoryMailer {
    fn send(&self, mail: Mail) -> Sending<'_> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).push(mail);
        Box::pin(async { Ok(()) })
    }
}

impl super::Mailbox for MemoryMailer {
    fn delivered(&self, _at_least: usize) -> impl std::future::Future<Output = Vec<Mail>> + Send {
        let sent = self.sent();
        async move { sent }
    }
}
