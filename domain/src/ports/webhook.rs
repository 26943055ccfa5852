//! Outgoing webhooks: one HTTP POST to a URL a user gave, answered by its status code. The adapter connects only
//! where the network policy ([`crate::reach::NetworkPolicy`]) permits, to the address it checked, and follows no
//! redirect.

use std::future::Future;

/// One request: `POST url` with these headers and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutgoingError {
    /// The target may not be reached (the network policy forbids its address) or the URL is not one.
    #[error("not sent: {0}")]
    Refused(String),
    /// The target could not be reached or did not answer in time.
    #[error("unreachable: {0}")]
    Unavailable(String),
}

pub trait WebhookSender: Send + Sync + 'static {
    /// Sends the request and answers the HTTP status code of the answer, whatever it is (a 500 is `Ok(500)`).
    fn post(&self, request: &Outgoing) -> impl Future<Output = Result<u16, OutgoingError>> + Send;
}
