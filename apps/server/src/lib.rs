//! The Gradient server process: configuration, wiring of adapters into the domain, and the HTTP surface
//! (`/api/v1` today; `/cache`, `/proto`, webhooks and `/metrics` as they arrive). `app` builds the whole
//! HTTP endpoint from a state so tests drive it in-process; `run` is what `main` calls.

pub mod api;
pub mod cache;
pub mod config;
pub mod declared;
pub mod frontend;
pub mod github_setup;
pub mod limits;
pub mod link;
pub mod live;
pub mod mail;
pub mod metrics;
pub mod nars;
pub mod oidc;
pub mod org_events;
pub mod outage;
pub mod reporting;
pub mod serve;
pub mod state;

use config::{Config, ConfigError, LogLevels};
use gradient_domain::auth::TokenSigner;
use gradient_domain::crypt::Crypt;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::service::{Gradient, Settings};
use gradient_storage_sql::PoolSizes;
use poem::http::StatusCode;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use state::{AppState, HttpSettings};
use std::os::unix::fs::DirBuilderExt;

/// The token of a `Bearer` `Authorization` value: the scheme's name in any case (RFC 7235), the token trimmed;
/// `None` for another scheme or an empty token (the request is then anonymous). Every route reads it so.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> impl Endpoint<Output = Response> {
    let max = state.http.max_request_size;
    let frontend = state.http.frontend.clone();
    let state_for_cache = state.clone();
    // The document and the Swagger UI are made when asked for (see `OnDemand`), from a service kept for that.
    let docs_api = std::sync::Arc::new(api::service(state.clone()));
    let api = api::service(state);
    let spec = api.spec();
    let schemas = std::sync::Arc::new(api::strict::BodySchemas::from_spec(&spec));
    let allowed = api::AllowedMethods::from_openapi(&spec);
    let metrics = state_for_cache.metrics.clone();
    let mut templates = api::AllowedMethods::from_openapi(&spec).under("/api/v1");
    drop(spec);
    templates.extend(cache::templates().under("/cache"));
    templates.extend(api::AllowedMethods::from_routes(&[
        ("/proto", &["GET"]),
        ("/metrics", &["GET"]),
        ("/github/setup", &["GET"]),
        ("/api/v1/openapi.json", &["GET"]),
        ("/api/v1/docs", &["GET"]),
        ("/api/v1/evals/{id}/log", &["GET"]),
        ("/api/v1/builds/{id}/log/live", &["GET"]),
        ("/api/v1/evals/{id}/events", &["GET"]),
    ]));
    let api = api::WithAllow {
        inner: api
            .around(move |ep, req| {
                let schemas = schemas.clone();
                async move { limit_body(ep, req, max, &schemas).await }
            })
            .catch_all_error(|e| async move { api::error_response(e) }),
        allowed,
    };
    let routes = Route::new()
        .at("/proto", link::endpoint.data(state_for_cache.clone()))
        .at("/github/setup", github_setup::setup.data(state_for_cache.clone()))
        .at("/metrics", metrics::endpoint.data(state_for_cache.clone()))
        .nest("/cache", cache::routes(state_for_cache))
        .at(
            "/api/v1/openapi.json",
            OnDemand {
                api: docs_api.clone(),
                doc: Doc::Spec,
            },
        )
        .nest(
            "/api/v1/docs",
            OnDemand {
                api: docs_api,
                doc: Doc::SwaggerUi,
            },
        )
        .nest("/api/v1", api);
    let routes = match frontend {
        Some(dir) => routes
            .at("/", frontend::Frontend { dir: dir.clone() })
            .at("/*path", frontend::Frontend { dir }),
        None => routes,
    };
    metrics::Measured {
        inner: routes.map_to_response(),
        routes: templates,
        metrics,
    }
}

/// `/api/v1/openapi.json` (the document, ~0.5 MB of JSON) and the Swagger UI at `/api/v1/docs` (~3 MB:
/// Swagger's bundle with the document inlined), each made for the request that asks and dropped after it. Both
/// are asked for rarely; made once at start-up they stayed resident in every server (4 MB, `bench/cache.sh`).
struct OnDemand {
    api: std::sync::Arc<poem_openapi::OpenApiService<api::Api, ()>>,
    doc: Doc,
}

enum Doc {
    Spec,
    SwaggerUi,
}

impl Endpoint for OnDemand {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(match self.doc {
            Doc::Spec => self.api.spec_endpoint().call(req).await?.into_response(),
            Doc::SwaggerUi => self.api.swagger_ui().call(req).await?.into_response(),
        })
    }
}

/// Reads the body up to `max` bytes before the handler sees it, so an oversized request is refused with 413
/// whether or not it announced its length.
/// A JSON body whose values do not have the documented types is refused here (400 `invalid_json`), see
/// `api::strict`.
async fn limit_body<E: Endpoint>(
    ep: std::sync::Arc<E>,
    mut req: Request,
    max: usize,
    schemas: &api::strict::BodySchemas,
) -> poem::Result<Response> {
    let too_large = || {
        poem::Error::from_string(
            format!("the request body is larger than the limit of {max} bytes"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let announced = req.header("content-length").and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let body = req.take_body().into_bytes_limit(max).await.map_err(|e| match e {
        poem::error::ReadBodyError::PayloadTooLarge => too_large(),
        other => poem::Error::from_string(
            format!("cannot read the request body: {other}"),
            StatusCode::BAD_REQUEST,
        ),
    })?;
    if let Err(problem) = schemas.check(req.method(), req.uri().path(), &body) {
        return Ok(api::ApiError::bad_request("invalid_json", problem).into_response());
    }
    // An operation whose body is optional, called with none at all: read as JSON without a value.
    if body.is_empty() && req.content_type().is_none() && schemas.body_may_be_absent(req.method(), req.uri().path()) {
        req.headers_mut().insert(
            poem::http::header::CONTENT_TYPE,
            poem::http::HeaderValue::from_static("application/json"),
        );
    }
    req.set_body(body);
    Ok(ep.call(req).await?.into_response())
}

/// Sets up logging: the default level, with per-area overrides. The seed's areas are tracing targets:
/// `web` → `gradient::web` (HTTP API, web UI, live streams), `cache` → `gradient::cache` (binary cache, NAR
/// store, garbage collection), `proto` → `gradient::proto` (the worker link and the dispatcher); everything
/// else (start-up, forges, polling) follows the default. `sqlx` logs only warnings.
pub fn init_logging(levels: &LogLevels) {
    let mut filter = format!("{},sqlx=warn", levels.default.as_str());
    for (target, level) in [
        ("gradient::web", levels.web),
        ("gradient::cache", levels.cache),
        ("gradient::proto", levels.proto),
    ] {
        if let Some(l) = level {
            filter.push_str(&format!(",{target}={}", l.as_str()));
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// Everything that can stop the server from starting; each is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Database(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot set up the HTTP client for forges: {0}")]
    Forge(String),
    #[error("cannot set up TLS for dialing listening workers: {0}")]
    Tls(String),
    /// OIDC is required (`GRADIENT_OIDC_REQUIRED`) and its provider cannot be discovered.
    #[error("{0} (GRADIENT_OIDC_REQUIRED is true: nobody could sign in)")]
    Oidc(oidc::OidcError),
    /// The state document (`GRADIENT_STATE_FILE`) is invalid or could not be applied: nothing was changed.
    #[error("state: {0}")]
    State(#[from] gradient_domain::state::StateError),
}

/// The GitHub App, when enabled: the domain's half (API URL, webhook secret) and the adapter's (the private
/// key that makes installation tokens). A missing file or a key that is not an RSA private key in PEM format
/// stops start-up with one line naming the variable.
fn github_app(
    config: &config::GithubAppConfig,
) -> Result<Option<(gradient_domain::service::GithubAppSettings, gradient_forge::GithubApp)>, ConfigError> {
    if !config.enable {
        return Ok(None);
    }
    let read = |option: &str, file: &Option<std::path::PathBuf>| {
        let var = config::env_name(option);
        let file = file.as_ref().ok_or_else(|| ConfigError {
            var: var.clone(),
            problem: "not set".into(),
        })?;
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            var: var.clone(),
            problem: format!("cannot read {}: {e}", file.display()),
        })?;
        if text.trim().is_empty() {
            return Err(ConfigError {
                var,
                problem: format!("{} is empty", file.display()),
            });
        }
        Ok((var, file.display().to_string(), text.trim().to_owned()))
    };
    let app_id = config.app_id.ok_or_else(|| ConfigError {
        var: config::env_name("githubApp.appId"),
        problem: "not set".into(),
    })?;
    let (_, _, secret) = read("githubApp.webhookSecretFile", &config.webhook_secret_file)?;
    let (var, file, pem) = read("githubApp.privateKeyFile", &config.private_key_file)?;
    let mut app = gradient_forge::GithubApp::new(app_id, &pem, &config.api_url).map_err(|e| ConfigError {
        var,
        problem: format!("{file}: {}", e.replace('\n', " ")),
    })?;
    // Linking installations to organizations needs the App's OAuth client; without it nothing can be linked.
    match (&config.client_id, &config.client_secret_file) {
        (Some(client_id), Some(_)) => {
            let (_, _, client_secret) = read("githubApp.clientSecretFile", &config.client_secret_file)?;
            app = app.with_oauth(gradient_forge::OAuthClient {
                client_id: client_id.trim().to_owned(),
                client_secret,
                web_url: config.web_url.clone(),
            });
        }
        _ => tracing::warn!(
            target: "gradient::forge",
            "the GitHub App has no client id and secret (GRADIENT_GITHUB_APP_CLIENT_ID, \
             GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE): its installations cannot be linked to organizations, so it \
             acts for none"
        ),
    }
    let settings = gradient_domain::service::GithubAppSettings {
        app_id,
        api_url: config.api_url.clone(),
        webhook_secret: secret.into_bytes(),
    };
    Ok(Some((settings, app)))
}

/// The mailer for `email.*` when mail is on: the SMTP adapter behind the outgoing queue ([`mail::Outgoing`]),
/// with the password read from its file.
fn mailer(config: &Config) -> Result<Option<mail::Outgoing>, ConfigError> {
    let email = &config.email;
    if !email.enable {
        return Ok(None);
    }
    let password = match &email.smtp_password_file {
        Some(file) => {
            let var = config::env_name("email.smtpPasswordFile");
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
                var: var.clone(),
                problem: format!("cannot read {}: {e}", file.display()),
            })?;
            Some(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        None => None,
    };
    let settings = gradient_mail_smtp::SmtpSettings {
        host: email.smtp_host.clone().unwrap_or_default(),
        port: email.smtp_port,
        username: email.smtp_username.clone(),
        password,
        from_address: email.from_address.clone().unwrap_or_default(),
        from_name: email.from_name.clone(),
        // The domain without its port (`[::1]:3000` → `::1`).
        hello_name: match config.domain.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => config.domain.as_str(),
        }
        .trim_matches(['[', ']'])
        .to_owned(),
    };
    let smtp = gradient_mail_smtp::SmtpMailer::new(&settings).map_err(|e| ConfigError {
        var: config::env_name("email.fromAddress"),
        problem: e.to_string(),
    })?;
    tracing::info!(
        target: "gradient::mail",
        "mail through {}:{} from {}{}",
        settings.host,
        settings.port,
        settings.from_address,
        if email.require_verification { "; logins need a verified address" } else { "" }
    );
    Ok(Some(mail::Outgoing::start(smtp)))
}

/// What the server may connect to for users (repositories, forge APIs), from the configuration.
pub fn network_policy(config: &Config) -> gradient_domain::reach::NetworkPolicy {
    gradient_domain::reach::NetworkPolicy {
        allow_local: config.allow_local_repositories,
        deny_private: config.deny_private_networks,
    }
}

/// Builds the application state from the configuration: secrets, database (migrated), domain.
pub async fn build_state(config: &Config) -> Result<AppState, StartError> {
    private_dir(&config.base_dir).map_err(|e| ConfigError {
        var: config::env_name("baseDir"),
        problem: format!("cannot create {}: {e}", config.base_dir.display()),
    })?;
    let (jwt, jwt_warning) = config::load_or_generate_secret(
        "jwtSecretFile",
        config.jwt_secret_file.as_deref(),
        &config.base_dir,
        "jwt-secret",
    )?;
    let (crypt, crypt_warning) = config::load_or_generate_secret(
        "cryptSecretFile",
        config.crypt_secret_file.as_deref(),
        &config.base_dir,
        "crypt-secret",
    )?;
    for w in [jwt_warning, crypt_warning].into_iter().flatten() {
        tracing::warn!("{w}; set it explicitly in production");
    }
    let github_app = github_app(&config.github_app)?;
    let network = network_policy(config);
    let mut forge = gradient_forge::HttpForge::new(network).map_err(|e| StartError::Forge(e.to_string()))?;
    let github_app_settings = match github_app {
        Some((settings, app)) => {
            tracing::info!(target: "gradient::forge", "GitHub App {} (API {})", settings.app_id, settings.api_url);
            forge = forge.with_github_app(std::sync::Arc::new(app));
            Some(settings)
        }
        None => None,
    };
    let url = config.resolve_database_url()?;
    let pools = PoolSizes {
        max: config.database_max_connections,
        min: config.database_min_connections,
        web_max: config.database_web_max_connections,
        web_min: config.database_web_min_connections,
    };
    let storage = gradient_storage_sql::connect(&url, pools)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    tracing::info!("database: {} ({})", storage.backend(), redact(&url));
    let settings = Settings {
        enable_registration: config.enable_registration,
        oidc_required: config.oidc.enable && config.oidc.required,
        domain: config.domain.clone(),
        keep_evaluations: config.keep_evaluations,
        supersede_evaluations: config.supersede_evaluations,
        public_url: config.public_url.clone(),
        github_app: github_app_settings,
        network,
        email: gradient_domain::service::EmailSettings {
            enabled: config.email.enable,
            require_verification: config.email.enable && config.email.require_verification,
        },
        local_worker: match &config.local_worker {
            None => None,
            Some((id, file)) => {
                let token = std::fs::read_to_string(file).map_err(|e| ConfigError {
                    var: config::env_name("localWorkerTokenFile"),
                    problem: format!("cannot read {}: {e}", file.display()),
                })?;
                gradient_domain::service::check_token(token.trim()).map_err(|e| ConfigError {
                    var: config::env_name("localWorkerTokenFile"),
                    problem: e.to_string(),
                })?;
                Some(gradient_domain::service::LocalWorker {
                    id: gradient_domain::WorkerId(*id),
                    proof_key: gradient_domain::proto::proof_key(token.trim()),
                })
            }
        },
        ..Settings::default()
    };
    let fleet = std::sync::Arc::new(link::LinkFleet::default());
    let metrics_token = match &config.metrics_token_file {
        Some(file) => Some(metrics::read_token(file)?),
        None => None,
    };
    let metrics = std::sync::Arc::new(metrics::Metrics::new(metrics_token));
    let outgoing = mailer(config)?;
    let mut app = Gradient::new(
        storage.clone(),
        SystemClock,
        TokenSigner::new(&jwt),
        Crypt::from_secret(&crypt),
        settings,
        fleet.clone(),
    )
    .observed_by(metrics.clone())
    .fetching_with(std::sync::Arc::new(AppTokens(forge.clone())));
    if let Some(outgoing) = outgoing {
        app = app.mailing_with(std::sync::Arc::new(outgoing));
    }
    app.check_crypt_secret().await.map_err(|e| match e {
        gradient_domain::service::ServiceError::Internal(m) => StartError::Config(ConfigError {
            var: config::env_name("cryptSecretFile"),
            problem: m,
        }),
        other => StartError::Database(other.to_string()),
    })?;
    // Registrations stored before proof keys were sealed hold a usable key: seal them before /proto listens.
    match app.seal_worker_proof_keys().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "gradient::proto", "sealed the proof keys of {n} worker registration(s)"),
        Err(e) => return Err(StartError::Database(e.to_string())),
    }
    let oidc = oidc_provider(config).await?;
    let nars = open_nar_store(&config.nar_store).await?;
    tracing::info!(target: "gradient::cache", "NAR store: {}", nars.kind());
    // Uploads a previous run left when it was killed mid-push: invisible, but taking space until swept.
    match app.sweep_uploads_at_start(&nars).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(target: "gradient::cache", "removed {n} unfinished upload(s) left in the NAR store"),
        Err(e) => {
            tracing::warn!(target: "gradient::cache", "could not sweep the NAR store's unfinished uploads: {e:?}")
        }
    }
    let http = HttpSettings {
        max_request_size: config.max_request_size,
        trusted_proxies: config.trusted_proxies.clone(),
        local_ips: config.local_ips.clone(),
        nar_open_timeout_secs: config.nar_storage_open_timeout_secs,
        nar_send_chunk_timeout_secs: config.nar_send_chunk_timeout_secs,
        max_concurrent_nar_serves: config.max_concurrent_nar_serves,
        max_nar_buffer_bytes: config.max_nar_buffer_bytes,
        oidc_enabled: config.oidc.enable,
        email_verification: config.email.enable && config.email.require_verification,
        email_enabled: config.email.enable,
        frontend: match frontend::locate(config.frontend_dir.as_deref(), &frontend::built_in_dir()) {
            Ok(frontend::Located::Serve(dir)) => {
                tracing::info!(target: "gradient::web", "web UI: serving {}", dir.display());
                Some(dir)
            }
            Ok(frontend::Located::Off(line)) => {
                tracing::info!(target: "gradient::web", "{line}");
                None
            }
            Err(problem) => {
                return Err(ConfigError {
                    var: config::env_name("frontendDir"),
                    problem,
                }
                .into());
            }
        },
    };
    let link = link::LinkSettings {
        discoverable: config.discoverable,
        max_connections: config.max_proto_connections as usize,
        max_anonymous: link::anonymous_pool(config.max_proto_connections as usize),
        handshake_timeout: std::time::Duration::from_secs(u64::from(gradient_domain::proto::HANDSHAKE_TIMEOUT_SECS)),
        policy: gradient_domain::proto::HandshakePolicy {
            heartbeat_interval_secs: config.worker_heartbeat_secs,
            lost_after_secs: config.worker_lost_after_secs,
            ..Default::default()
        },
    };
    if link.discoverable {
        tracing::info!(target: "gradient::proto", "worker link at /proto: up to {} connections", link.max_connections);
    } else {
        tracing::info!(target: "gradient::proto", "worker link at /proto: closed (GRADIENT_DISCOVERABLE=false)");
    }
    Ok(AppState::new(
        fleet,
        app,
        storage.for_web(),
        http,
        nars,
        link,
        forge,
        metrics,
        oidc,
    ))
}

/// The OpenID Provider, when OIDC is enabled: its client secret read, and discovered now. A provider that
/// cannot be discovered stops start-up when OIDC is required (nobody could sign in otherwise); else it is
/// discovered again at the first sign-in.
async fn oidc_provider(config: &Config) -> Result<Option<std::sync::Arc<oidc::Oidc>>, StartError> {
    let c = &config.oidc;
    if !c.enable {
        return Ok(None);
    }
    let missing = |option: &str| ConfigError {
        var: config::env_name(option),
        problem: "OIDC is enabled (GRADIENT_OIDC_ENABLE) but this is not set".into(),
    };
    let client_id = c.client_id.clone().ok_or_else(|| missing("oidc.clientId"))?;
    let discovery_url = c.discovery_url.as_deref().ok_or_else(|| missing("oidc.discoveryUrl"))?;
    let client_secret = match &c.client_secret_file {
        None => None,
        Some(file) => {
            let var = config::env_name("oidc.clientSecretFile");
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
                var: var.clone(),
                problem: format!("cannot read {}: {e}", file.display()),
            })?;
            let text = text.trim().to_owned();
            if text.is_empty() {
                return Err(ConfigError {
                    var,
                    problem: format!("{} is empty", file.display()),
                }
                .into());
            }
            Some(text)
        }
    };
    let settings = oidc::OidcSettings {
        issuer: oidc::issuer_of(discovery_url),
        client_id,
        client_secret,
        scopes: c.scopes.clone(),
        redirect_url: format!("{}{}", config.public_url, oidc::CALLBACK_PATH),
        icon_url: c.icon_url.clone(),
    };
    let provider = oidc::Oidc::new(settings).map_err(|problem| ConfigError {
        var: config::env_name("oidc.discoveryUrl"),
        problem,
    })?;
    match provider.check().await {
        Ok(()) => tracing::info!(
            target: "gradient::web",
            "OIDC sign-in with {} (callback {})",
            provider.settings.issuer,
            provider.settings.redirect_url
        ),
        Err(e) if c.required => return Err(StartError::Oidc(e)),
        Err(e) => tracing::warn!(target: "gradient::web", "{e}; trying again at the first sign-in"),
    }
    Ok(Some(std::sync::Arc::new(provider)))
}

async fn open_nar_store(config: &config::NarStoreConfig) -> Result<nars::NarStorage, StartError> {
    let failed = |e: gradient_domain::ports::nar_store::NarStoreError| ConfigError {
        var: config::env_name("narStore"),
        problem: format!("cannot open the NAR store: {e}"),
    };
    match config {
        config::NarStoreConfig::Fs(root) => Ok(nars::NarStorage::fs(root.clone()).await.map_err(failed)?),
        config::NarStoreConfig::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            access_key_id,
            secret_access_key_file,
            path_style,
        } => {
            let secret_key = match secret_access_key_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| ConfigError {
                        var: config::env_name("s3SecretAccessKeyFile"),
                        problem: format!("cannot read {}: {e}", f.display()),
                    })?
                    .trim()
                    .to_owned(),
                None => String::new(),
            };
            let s3 = gradient_nar_store_s3::S3Config {
                endpoint: endpoint.clone(),
                region: region.clone(),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                access_key: access_key_id.clone(),
                secret_key,
                path_style: *path_style,
            };
            Ok(nars::NarStorage::s3(s3).await.map_err(failed)?)
        }
    }
}

/// Background upkeep: fetch times are written in batches every minute, and the cache is swept of expired
/// paths and unreferenced NARs every `sweep` interval.
pub fn spawn_upkeep(state: AppState, cache_ttl_hours: u64, sweep: std::time::Duration) {
    let flush = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            flush_fetches(&flush).await;
            drop_ended_logs(&flush).await;
            flush.limits.forget_idle();
        }
    });
    tokio::spawn(async move {
        let ttl = (cache_ttl_hours > 0).then(|| chrono::TimeDelta::hours(cache_ttl_hours as i64));
        let mut tick = tokio::time::interval(sweep);
        let mut outage = outage::Outage::new("garbage collection");
        loop {
            tick.tick().await;
            // Fetches not yet written must count, or a busy path could be collected.
            flush_fetches(&state).await;
            let collected = state.core.collect_garbage(&state.nars, ttl).await;
            if let Ok(r) = &collected
                && r.paths + r.nar_files + r.uploads > 0
            {
                tracing::info!(
                    target: "gradient::cache",
                    "collected {} paths, {} NAR files and {} unfinished uploads",
                    r.paths,
                    r.nar_files,
                    r.uploads
                )
            }
            outage.settle(&collected).await;
        }
    });
}

/// Drops the live logs of jobs that ended without their worker reporting (aborted while queued again after
/// their worker was lost, or gone with their evaluation): a worker's report takes its job's log before the job
/// ends, so only such leftovers are dropped.
async fn drop_ended_logs(state: &AppState) {
    for job in state.fleet.logs.jobs() {
        if let Ok(false) = state.core.job_is_active(job).await {
            state.fleet.logs.take(job);
        }
    }
}

/// Hands queued jobs to connected workers whenever something changes, and at least every second.
/// A burst of changes is over when none came for this long...
const DISPATCH_COALESCE: std::time::Duration = std::time::Duration::from_millis(15);
/// ... or after this long.
const DISPATCH_COALESCE_AT_MOST: std::time::Duration = std::time::Duration::from_millis(250);

pub fn spawn_dispatcher(state: AppState) {
    tokio::spawn(async move {
        let mut outage = outage::Outage::new("dispatching");
        loop {
            let woken = tokio::time::timeout(std::time::Duration::from_secs(1), state.fleet.dispatch.notified()).await;
            if woken.is_ok() {
                // Changes come in bursts (a worker reports a whole batch of builds): take them in one round,
                // once they stop coming for a moment (or after a short while at most).
                let until = tokio::time::Instant::now() + DISPATCH_COALESCE_AT_MOST;
                while tokio::time::timeout_at(
                    (tokio::time::Instant::now() + DISPATCH_COALESCE).min(until),
                    state.fleet.dispatch.notified(),
                )
                .await
                .is_ok()
                {}
            }
            let started = std::time::Instant::now();
            let round = state.core.dispatch().await;
            if let Ok(out) = &round
                && !out.is_empty()
            {
                tracing::debug!(
                    target: "gradient::proto",
                    "dispatch round handed out {} job(s) in {:.1} ms",
                    out.len(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
            }
            outage.settle(&round).await;
        }
    });
}

/// Runs the reconciliation ([`gradient_domain::service::Gradient::reconcile`]) every `lost_after` (at least
/// 10 s), the first time once workers had `lost_after` to reconnect after a start: it finds what nothing would
/// move again (after a database outage, a lost report, a crash) and puts it back on the way.
pub fn spawn_reconciler(state: AppState, lost_after: std::time::Duration) {
    tokio::spawn(async move {
        let period = lost_after.max(std::time::Duration::from_secs(10));
        let grace = chrono::TimeDelta::from_std(lost_after).unwrap_or(chrono::TimeDelta::seconds(30));
        let mut outage = outage::Outage::new("reconciliation");
        tokio::time::sleep(lost_after).await;
        loop {
            let pass = state.core.reconcile(grace).await;
            if let Ok(r) = &pass
                && !r.is_empty()
            {
                tracing::info!(
                    target: "gradient::proto",
                    "reconciliation: {} job(s) queued anew, {} status(es) corrected, {} job(s) of absent workers requeued",
                    r.jobs_queued,
                    r.statuses_corrected,
                    r.jobs_requeued
                );
            }
            outage.settle(&pass).await;
            tokio::time::sleep(period).await;
        }
    });
}

/// Delivers the due commit statuses to the forges (and through the GitHub App), every second. A forge that
/// fails is retried later (the domain backs off); nothing here waits on the build.
pub fn spawn_status_delivery(state: AppState) {
    tokio::spawn(async move {
        let forge = state.forge.clone();
        let mut outage = outage::Outage::new("delivering commit statuses");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let delivered = state.core.deliver_due_statuses(&forge, 100).await;
            outage.settle(&delivered).await;
        }
    });
}

/// Delivers the due webhook deliveries of projects' actions, every second. A target that fails is retried later
/// (the domain backs off and gives up after a few attempts).
pub fn spawn_action_delivery(state: AppState) {
    tokio::spawn(async move {
        let sender = state.forge.clone();
        let mut outage = outage::Outage::new("delivering webhooks");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let delivered = state.core.deliver_due_webhooks(&sender, 50).await;
            outage.settle(&delivered).await;
        }
    });
}

/// Polls the branch heads of projects with a poll interval and queues evaluations of new commits; runs the
/// projects' schedules that are due (checked every second, so a schedule's time is met within about a second).
pub fn spawn_poller(state: AppState) {
    tokio::spawn(async move {
        let git = gradient_git_cli::GitCli::new(state.core.settings().network);
        let mut last: std::collections::HashMap<gradient_domain::ProjectId, std::time::Instant> = Default::default();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut outage = outage::Outage::new("polling");
        loop {
            tick.tick().await;
            let scheduled = state.core.run_schedules(&git).await;
            if let Ok((queued, failed)) = &scheduled {
                for e in queued {
                    tracing::info!("schedule: evaluating commit {} (evaluation {})", e.commit, e.id.0);
                }
                for (p, why) in failed {
                    tracing::warn!("schedule of {}: the branch head cannot be read: {why}", p.name);
                }
            }
            outage.settle(&scheduled).await;
            if scheduled.is_err() {
                continue;
            }
            let listed = state.core.polled_projects().await;
            outage.settle(&listed).await;
            let Ok(projects) = listed else {
                continue;
            };
            for p in projects {
                let interval = std::time::Duration::from_secs(u64::from(p.poll_interval_secs.unwrap_or(60).max(1)));
                if last.get(&p.id).is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
                last.insert(p.id, std::time::Instant::now());
                match state.core.poll_project(&git, &p).await {
                    Ok(Some(e)) => tracing::info!("polling {}: new commit {}", p.name, e.commit),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("polling {} failed: {e:?}", p.name),
                }
            }
        }
    });
}

/// Writes the recorded fetch times.
pub async fn flush_fetches(state: &AppState) {
    for (cache, paths) in state.fetches.drain() {
        let paths: Vec<String> = paths.into_iter().collect();
        if let Err(e) = state.core.record_fetches(cache, &paths).await {
            tracing::warn!(target: "gradient::cache", "recording fetch times failed: {e}");
        }
    }
}

/// Creates the base directory and its missing parents owner-only (0700): it holds the database, the generated
/// secrets and, by default, the NARs. A directory that exists is left as the operator set it.
fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Hides a password in a database URL for logging.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Starts the server and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), StartError> {
    let _reporting = reporting::start(&config)?;
    // Listening workers are dialed, trusting the webpki roots, the system's bundle and `GRADIENT_CA_FILE` for
    // wss:// URLs.
    let system_bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").ok();
    let extra_ca = match &config.ca_file {
        Some(file) => Some(std::fs::read(file).map_err(|e| {
            StartError::Tls(format!(
                "{}: cannot read {}: {e}",
                config::env_name("caFile"),
                file.display()
            ))
        })?),
        None => None,
    };
    let tls = gradient_link_ws::TlsRoots::new(extra_ca.as_deref(), system_bundle.as_deref())
        .map_err(|e| StartError::Tls(format!("{}: {e}", config::env_name("caFile"))))?;
    let state = build_state(&config).await?;
    if let Some(path) = &config.state_file {
        let plan = declared::apply_file(&state.core, path, config.delete_state).await?;
        declared::log_applied(path, &plan);
        declared::spawn_reload(state.core.clone(), path.clone(), config.delete_state);
    }
    spawn_dispatcher(state.clone());
    link::spawn_dialer(state.clone(), tls);
    spawn_poller(state.clone());
    spawn_status_delivery(state.clone());
    spawn_reconciler(
        state.clone(),
        std::time::Duration::from_secs(u64::from(config.worker_lost_after_secs)),
    );
    spawn_action_delivery(state.clone());
    spawn_upkeep(
        state.clone(),
        config.cache_ttl_hours,
        std::time::Duration::from_secs(config.cache_gc_interval_secs),
    );
    let addr = std::net::SocketAddr::new(config.listen_addr, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!("Gradient {} listening on http://{addr}", env!("CARGO_PKG_VERSION"));
    serve::serve(
        listener,
        app(state.clone()),
        cache::NarinfoShortcut::new(state),
        shutdown_signal(),
        std::time::Duration::from_secs(10),
        serve::HEADER_READ_TIMEOUT,
    )
    .await
    .map_err(|source| StartError::Listen {
        addr: addr.to_string(),
        source,
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The GitHub App's installation tokens from the forge adapter, for the use cases that fetch the repositories an
/// installation covers (without an App, the adapter refuses every token).
struct AppTokens(gradient_forge::HttpForge);

impl gradient_domain::ports::forge::InstallationTokens for AppTokens {
    fn repository_token(&self, installation: u64) -> gradient_domain::ports::forge::TokenAnswer<'_> {
        use gradient_domain::ports::forge::ForgeApi;
        Box::pin(self.0.installation_token(installation))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_base_directory_created_here_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("var/lib/gradient");
        super::private_dir(&base).unwrap();
        for d in [base.as_path(), base.parent().unwrap()] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            super::redact("sqlite:///var/lib/gradient/gradient.db"),
            "sqlite:///var/lib/gradient/gradient.db"
        );
    }
}
