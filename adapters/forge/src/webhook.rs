//! The outgoing webhook port over the forge adapter's HTTP stack: `POST` through a client whose resolver keeps
//! only addresses the network policy permits (so the address checked is the address connected to), a literal
//! address in the URL checked before connecting, no redirect followed, [`TIMEOUT`] per attempt.

use crate::{HttpForge, check_literal, with_causes};
use gradient_domain::ports::webhook::{Outgoing, OutgoingError, WebhookSender};
use std::time::Duration;

/// How long one delivery attempt may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

impl WebhookSender for HttpForge {
    async fn post(&self, request: &Outgoing) -> Result<u16, OutgoingError> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| OutgoingError::Refused(format!("'{}' is not a URL: {e}", request.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutgoingError::Refused(format!(
                "'{}' is not an http(s) URL",
                request.url
            )));
        }
        check_literal(&url, &self.policy).map_err(OutgoingError::Refused)?;
        let mut builder = self.outgoing.post(url);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let response = builder
            .body(request.body.clone())
            .send()
            .await
            .map_err(|e| OutgoingError::Unavailable(with_causes(&e)))?;
        Ok(response.status().as_u16())
    }
}
