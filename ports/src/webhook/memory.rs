//! Webhooks delivered in memory: receivers are URLs registered with the status they answer.

use super::contract::{Received, Receiving};
use gradient_domain::ports::webhook::{Outgoing, OutgoingError, WebhookSender};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// An in-memory sender: a POST to a registered URL is recorded and answered with its status; a URL whose host is
/// a literal address the policy forbids is refused; any other URL is unreachable. Clones share their state.
#[derive(Clone, Default)]
pub struct MemoryWebhooks {
    policy: gradient_domain::reach::NetworkPolicy,
    targets: Arc<Mutex<HashMap<String, u16>>>,
    received: Arc<Mutex<Vec<Outgoing>>>,
}

impl MemoryWebhooks {
    /// A sender under `policy`.
    pub fn new(policy: gradient_domain::reach::NetworkPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Makes `url` answer `status` from now on.
    pub fn answer(&self, url: &str, status: u16) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(url.to_owned(), status);
    }

    /// The requests received, oldest first.
    pub fn requests(&self) -> Vec<Outgoing> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl WebhookSender for MemoryWebhooks {
    async fn post(&self, request: &Outgoing) -> Result<u16, OutgoingError> {
        let Some(remote) = gradient_domain::reach::parse_http_url(&request.url) else {
            return Err(OutgoingError::Refused(format!(
                "'{}' is not an http(s) URL",
                request.url
            )));
        };
        gradient_domain::reach::check_remote(&remote, &self.policy).map_err(OutgoingError::Refused)?;
        let status = self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&request.url)
            .copied();
        let Some(status) = status else {
            return Err(OutgoingError::Unavailable(format!(
                "nothing answers at {}",
                request.url
            )));
        };
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.clone());
        Ok(status)
    }
}

impl Receiving for MemoryWebhooks {
    async fn target(&self, status: u16) -> String {
        let url = format!("https://hooks.example.com/{}", uuid::Uuid::new_v4());
        self.answer(&url, status);
        url
    }

    async fn received(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .map(|r| {
                let headers = r
                    .headers
                    .into_iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v))
                    .collect();
                (headers, r.body)
            })
            .collect()
    }

    fn forbidden(&self) -> String {
        "http://127.0.0.1:9/hook".to_owned()
    }

    fn nowhere(&self) -> String {
        "https://nothing.example.com/hook".to_owned()
    }
}

#[cfg(test)]
mod tests {
    async fn fresh() -> super::MemoryWebhooks {
        super::MemoryWebhooks::new(gradient_domain::reach::NetworkPolicy::default())
    }

    crate::webhook_contract!(fresh);
}
