//! Outgoing mail: the mailer the domain is given when `email.enable` is on. It answers at once (a request
//! never waits for the mail server, and a password reset for an unknown address takes as long as one for a
//! known one) and one task delivers the queue in order through the SMTP adapter, retrying a mail server that is
//! unavailable (1, 2, 4, 8 and 16 s apart) before giving up on that message. Failures are logged with the
//! recipient and subject, never the body (it holds the link's token).

use gradient_domain::ports::mail::{Mail, MailError, Mailer, Sending};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages waiting beyond this are dropped (and logged): mail must not grow the server's memory without bound.
const QUEUE: usize = 10_000;
/// Attempts per message while the mail server is unavailable.
const ATTEMPTS: u32 = 6;

/// The queue in front of a mailer.
pub struct Outgoing {
    queue: mpsc::Sender<Mail>,
}

impl Outgoing {
    /// Starts the delivery task (in the current tokio runtime) over `mailer`.
    pub fn start<M: Mailer + 'static>(mailer: M) -> Self {
        let (queue, mut rx) = mpsc::channel::<Mail>(QUEUE);
        tokio::spawn(async move {
            while let Some(mail) = rx.recv().await {
                deliver(&mailer, mail).await;
            }
        });
        Self { queue }
    }
}

async fn deliver<M: Mailer>(mailer: &M, mail: Mail) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match mailer.send(mail.clone()).await {
            Ok(()) => {
                tracing::info!(target: "gradient::mail", to = %mail.to, subject = %mail.subject, "mail sent");
                return;
            }
            Err(MailError::Unavailable(e)) if attempt < ATTEMPTS => {
                tracing::warn!(target: "gradient::mail", to = %mail.to, "mail server unavailable ({e}); retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(target: "gradient::mail", to = %mail.to, subject = %mail.subject, "mail not sent: {e}");
                return;
            }
        }
    }
}

impl Mailer for Outgoing {
    fn send(&self, mail: Mail) -> Sending<'_> {
        let queued = match self.queue.try_send(mail) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m)) => {
                tracing::error!(target: "gradient::mail", to = %m.to, "the mail queue is full; mail dropped");
                Err(MailError::Unavailable("the mail queue is full".into()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(MailError::Unavailable("mail delivery stopped".into())),
        };
        Box::pin(async move { queued })
    }
}
