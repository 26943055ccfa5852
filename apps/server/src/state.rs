//! What every request handler shares: the domain application wired to its adapters, and the few settings
//! the HTTP layer itself needs.

use crate::cache::FetchLog;
use crate::nars::NarStorage;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::service::{Caller, Gradient};
use gradient_storage_sql::SqlStorage;
use std::sync::Arc;

pub type App = Gradient<SqlStorage, SystemClock>;

/// Settings the HTTP layer reads (the rest of the configuration is consumed at start-up).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_request_size: usize,
    /// Peers allowed to set `X-Forwarded-For`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Clients that get a cache's local priority.
    pub local_ips: Vec<ipnet::IpNet>,
    pub nar_open_timeout_secs: u64,
    pub oidc_enabled: bool,
    pub email_verification: bool,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub app: App,
    pub http: HttpSettings,
    pub nars: NarStorage,
    pub fetches: FetchLog,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(app: App, http: HttpSettings, nars: NarStorage) -> Self {
        Self(Arc::new(Inner {
            app,
            http,
            nars,
            fetches: FetchLog::default(),
        }))
    }

    /// Resolves the caller of a request from its bearer token.
    pub async fn caller(&self, bearer: Option<&str>) -> Result<Caller, crate::api::ApiError> {
        Ok(self.app.authenticate(bearer).await?)
    }
}
