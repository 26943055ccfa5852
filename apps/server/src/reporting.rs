//! Error reports to Sentry (`reportErrors` with `settings.sentryDsn`): panics and internal errors, as their
//! message only. Off by default, and never on without both settings: no report goes to an address the operator did
//! not give. Reports carry no request (no body, headers or URL), no user and no breadcrumbs; internal error
//! messages name what failed, never a credential. Envelopes go out through this server's own HTTP client
//! (reqwest, rustls), from the tokio runtime.

use crate::config::{Config, ConfigError, env_name};
use std::sync::Arc;

/// Keeps reporting on while it lives (reports still queued are sent when it is dropped, for at most 2 s).
pub struct Reporting {
    _guard: sentry::ClientInitGuard,
}

/// Checks the two settings together: both or neither.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    match (config.report_errors, &config.sentry_dsn) {
        (true, None) => Err(ConfigError {
            var: env_name("reportErrors"),
            problem: "reports need GRADIENT_SENTRY_DSN: they are never sent to an address you did not give".into(),
        }),
        (false, Some(_)) => Err(ConfigError {
            var: env_name("settings.sentryDsn"),
            problem: "set GRADIENT_REPORT_ERRORS=true to send reports there, or unset it".into(),
        }),
        (true, Some(dsn)) => dsn.parse::<sentry::types::Dsn>().map(|_| ()).map_err(|e| ConfigError {
            var: env_name("settings.sentryDsn"),
            problem: format!("not a Sentry DSN: {e}"),
        }),
        (false, None) => Ok(()),
    }
}

/// Starts reporting when configured; must run inside the tokio runtime.
pub fn start(config: &Config) -> Result<Option<Reporting>, ConfigError> {
    check(config)?;
    let (true, Some(dsn)) = (config.report_errors, &config.sentry_dsn) else {
        return Ok(None);
    };
    let dsn: sentry::types::Dsn = dsn.parse().map_err(|e| ConfigError {
        var: env_name("settings.sentryDsn"),
        problem: format!("not a Sentry DSN: {e}"),
    })?;
    let transport = Arc::new(HttpTransport {
        client: reqwest::Client::new(),
        url: dsn.envelope_api_url().to_string(),
        auth: dsn
            .to_auth(Some(concat!("gradient/", env!("CARGO_PKG_VERSION"))))
            .to_string(),
        runtime: tokio::runtime::Handle::current(),
    });
    let factory = move |_: &sentry::ClientOptions| -> Arc<dyn sentry::Transport> { transport.clone() };
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(concat!("gradient@", env!("CARGO_PKG_VERSION")).into());
    options.send_default_pii = false;
    options.max_breadcrumbs = 0;
    options.transport = Some(Arc::new(factory));
    options.before_send = Some(Arc::new(|mut event| {
        event.request = None;
        event.user = None;
        event.breadcrumbs = Default::default();
        event.extra.clear();
        // The machine's host name is the operator's, not the report's.
        event.server_name = None;
        Some(event)
    }));
    let guard = sentry::init(options);
    tracing::info!("error reports go to Sentry");
    Ok(Some(Reporting { _guard: guard }))
}

/// Reports an internal error (a no-op when reporting is off).
pub fn internal_error(area: &str, detail: &str) {
    sentry::capture_message(&format!("{area}: {detail}"), sentry::Level::Error);
}

struct HttpTransport {
    client: reqwest::Client,
    url: String,
    auth: String,
    runtime: tokio::runtime::Handle,
}

impl sentry::Transport for HttpTransport {
    fn send_envelope(&self, envelope: sentry::Envelope) {
        let mut body = Vec::new();
        if envelope.to_writer(&mut body).is_err() {
            return;
        }
        let request = self
            .client
            .post(&self.url)
            .header("X-Sentry-Auth", &self.auth)
            .header("Content-Type", "application/x-sentry-envelope")
            .body(body);
        self.runtime.spawn(async move {
            if let Err(e) = request.send().await {
                tracing::warn!("sending an error report failed: {e}");
            }
        });
    }
}
