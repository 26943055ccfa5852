//! What every request handler shares: the domain application wired to its adapters, and the few settings
//! the HTTP layer itself needs.

use gradient_domain::ports::clock::SystemClock;
use gradient_domain::service::{Caller, Gradient};
use gradient_storage_sql::SqlStorage;
use std::sync::Arc;

pub type App = Gradient<SqlStorage, SystemClock>;

/// Settings the HTTP layer reads (the rest of the configuration is consumed at start-up).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_request_size: usize,
    pub oidc_enabled: bool,
    pub email_verification: bool,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub app: App,
    pub http: HttpSettings,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(app: App, http: HttpSettings) -> Self {
        Self(Arc::new(Inner { app, http }))
    }

    /// Resolves the caller of a request from its bearer token.
    pub async fn caller(&self, bearer: Option<&str>) -> Result<Caller, crate::api::ApiError> {
        Ok(self.app.authenticate(bearer).await?)
    }
}
