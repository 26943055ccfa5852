//! The mail port: handing a message to whatever delivers it (the server's SMTP adapter, or the in-memory
//! outbox of `gradient-ports` in tests). One message has one recipient, so no recipient learns another's
//! address. The sender (address and name) is the adapter's configuration, not the domain's.

use crate::Email;
use std::future::Future;
use std::pin::Pin;

/// One plain-text message to one person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    pub to: Email,
    /// The recipient's display name (may be empty).
    pub to_name: String,
    /// One line.
    pub subject: String,
    /// Plain text, lines separated by `\n`.
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The mail server could not be reached or failed for now (connection refused, timeout, 4xx): worth
    /// retrying.
    #[error("mail server unavailable: {0}")]
    Unavailable(String),
    /// The mail server refused the message for good (5xx: unknown recipient, authentication failed).
    #[error("mail refused: {0}")]
    Rejected(String),
}

/// The future [`Mailer::send`] answers (boxed, so the application can hold any mailer as `dyn Mailer`).
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), MailError>> + Send + 'a>>;

pub trait Mailer: Send + Sync {
    /// Delivers the message, or hands it to something that will (the server's outgoing queue answers at once
    /// and retries by itself). `Ok` means accepted for delivery, once.
    fn send(&self, mail: Mail) -> Sending<'_>;
}

/// No mail is sent (`email.enable` is off): every message is dropped.
pub struct NoMail;

impl Mailer for NoMail {
    fn send(&self, _: Mail) -> Sending<'_> {
        Box::pin(async { Ok(()) })
    }
}
