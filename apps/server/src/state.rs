//! What every request handler shares: the domain application wired to its adapters, and the few settings
//! the HTTP layer itself needs.

use crate::cache::FetchLog;
use crate::link::{LinkFleet, LinkSettings};
use crate::nars::NarStorage;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::service::{Caller, Gradient};
use gradient_forge::HttpForge;
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
    /// Seconds opening a NAR in the store may take (`narStorageOpenTimeoutSecs`).
    pub nar_open_timeout_secs: u64,
    /// Seconds a download may wait for its reader to take the next piece (`narSendChunkTimeoutSecs`).
    pub nar_send_chunk_timeout_secs: u64,
    /// NAR downloads served at once (`maxConcurrentNarServes`).
    pub max_concurrent_nar_serves: u32,
    /// Bytes one download may hold read from the store and not yet taken by its reader (`maxNarBufferBytes`).
    pub max_nar_buffer_bytes: u64,
    pub oidc_enabled: bool,
    pub email_verification: bool,
    /// Mail is sent (`email.enable`): the web UI offers password reset and the evaluation mail setting.
    pub email_enabled: bool,
    /// The web UI's files, served at `/` (none: no UI).
    pub frontend: Option<std::path::PathBuf>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    /// The application as HTTP API requests use it: its queries run on the web pool.
    pub app: App,
    /// The same application on the main pool, for the server's own work: the scheduler, the worker link, the
    /// binary cache and the background loops, so a burst of API traffic cannot starve them (and the reverse).
    pub core: App,
    pub http: HttpSettings,
    pub nars: NarStorage,
    pub fetches: FetchLog,
    /// The connected workers, their running builds' logs and the dispatcher's wake-up; the use cases reach
    /// it as their fleet port.
    pub fleet: Arc<LinkFleet>,
    pub link: LinkSettings,
    /// Where commit statuses are sent (with the GitHub App's tokens when one is configured).
    pub forge: HttpForge,
    /// Login and registration rate limits (`limits.rs`).
    pub limits: crate::limits::Limits,
    /// `/metrics` and the counters kept as things happen (`metrics.rs`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// One permit per NAR download being served (`maxConcurrentNarServes`).
    pub nar_serves: Arc<tokio::sync::Semaphore>,
    /// The OpenID Provider, when OIDC sign-in is enabled (`oidc.*`).
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// The database handle, for its pools' numbers.
    db: gradient_storage_sql::SqlStorage,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    // One caller (`build_state`), naming each part.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet: Arc<LinkFleet>,
        core: App,
        web: gradient_storage_sql::SqlStorage,
        http: HttpSettings,
        nars: NarStorage,
        link: LinkSettings,
        forge: HttpForge,
        metrics: Arc<crate::metrics::Metrics>,
        oidc: Option<Arc<crate::oidc::Oidc>>,
    ) -> Self {
        Self(Arc::new(Inner {
            oidc,
            db: web.clone(),
            nar_serves: Arc::new(tokio::sync::Semaphore::new(http.max_concurrent_nar_serves as usize)),
            metrics,
            app: core.with_storage(web),
            core,
            http,
            nars,
            fetches: FetchLog::default(),
            fleet,
            link,
            forge,
            limits: crate::limits::Limits::default(),
        }))
    }

    /// Each database pool's connections.
    pub fn storage_pools(&self) -> [gradient_storage_sql::PoolUse; 2] {
        self.db.pool_use()
    }

    /// The server's public base URL, as workers and Nix clients reach it.
    pub fn public_url(&self) -> &str {
        &self.core.settings().public_url
    }

    /// Resolves the caller of a request from its bearer token.
    pub async fn caller(&self, bearer: Option<&str>) -> Result<Caller, crate::api::ApiError> {
        Ok(self.app.authenticate(bearer).await?)
    }
}
