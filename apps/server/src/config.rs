//! Configuration, only from environment variables. Each option of the NixOS module maps to one variable by a
//! fixed rule: drop a leading `settings.`, split camelCase into words, join with `_`, upper-case, prefix
//! `GRADIENT_` (`listenAddr` → `GRADIENT_LISTEN_ADDR`, `settings.logLevel.web` → `GRADIENT_LOG_LEVEL_WEB`).
//! A bad value stops start-up with one line naming the variable.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A configuration problem, always naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: String,
    pub problem: String,
}

fn err(var: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.to_owned(),
        problem: problem.into(),
    }
}

/// Turns an option path into its environment variable (the naming rule above).
pub fn env_name(option: &str) -> String {
    let path = option.strip_prefix("settings.").unwrap_or(option);
    let mut out = String::from("GRADIENT");
    for part in path.split('.') {
        out.push('_');
        let mut prev_lower = false;
        for c in part.chars() {
            if c.is_ascii_uppercase() && prev_lower {
                out.push('_');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_uppercase());
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLevels {
    pub default: LogLevel,
    pub cache: Option<LogLevel>,
    pub web: Option<LogLevel>,
    pub proto: Option<LogLevel>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OidcConfig {
    pub enable: bool,
    pub required: bool,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub discovery_url: Option<String>,
    pub scopes: Vec<String>,
    pub icon_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EmailConfig {
    pub enable: bool,
    pub require_verification: bool,
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    pub smtp_username: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    pub from_address: Option<String>,
    pub from_name: String,
}

/// The instance's GitHub App (`githubApp.*`): its id, its private key (PEM) and webhook secret files, and the
/// API it talks to (`GRADIENT_GITHUB_APP_API_URL`, GitHub Enterprise Server's `https://host/api/v3`, or a
/// test's fake GitHub).
#[derive(Clone, Debug, PartialEq)]
pub struct GithubAppConfig {
    pub enable: bool,
    pub app_id: Option<u64>,
    pub private_key_file: Option<PathBuf>,
    pub webhook_secret_file: Option<PathBuf>,
    /// Without a trailing slash; default `https://api.github.com`.
    pub api_url: String,
    /// The App's OAuth client id and secret file: the setup URL's codes are checked with them, to link
    /// installations to organizations. Without them, installations cannot be linked.
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// GitHub's web URL, where OAuth codes are exchanged (`GRADIENT_GITHUB_APP_WEB_URL`); by default the API
    /// URL without its `api.` host prefix or `/api/v3` path (`https://github.com`).
    pub web_url: String,
}

/// GitHub's web URL for an API URL: `https://api.github.com` → `https://github.com`, GitHub Enterprise
/// Server's `https://ghe.example.com/api/v3` → `https://ghe.example.com`, anything else unchanged.
fn github_web_url(api_url: &str) -> String {
    if let Some(base) = api_url.strip_suffix("/api/v3") {
        return base.to_owned();
    }
    for scheme in ["https://", "http://"] {
        if let Some(rest) = api_url.strip_prefix(scheme)
            && let Some(host) = rest.strip_prefix("api.")
        {
            return format!("{scheme}{host}");
        }
    }
    api_url.to_owned()
}

/// Every server option, with the seed's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub domain: String,
    /// The base URL workers and Nix clients use to reach this server (`GRADIENT_PUBLIC_URL`); default
    /// `http://<domain>`.
    pub public_url: String,
    pub base_dir: PathBuf,
    pub listen_addr: IpAddr,
    pub port: u16,
    pub jwt_secret_file: Option<PathBuf>,
    pub crypt_secret_file: Option<PathBuf>,
    pub metrics_token_file: Option<PathBuf>,
    pub database_url_file: Option<PathBuf>,
    /// Takes effect when `database_url_file` is not set; `None` for both means SQLite in `base_dir`.
    pub database_url: Option<String>,
    pub database_max_connections: u32,
    pub database_min_connections: u32,
    pub database_web_max_connections: u32,
    pub database_web_min_connections: u32,
    pub report_errors: bool,
    pub sentry_dsn: Option<String>,
    pub discoverable: bool,
    pub max_proto_connections: u32,
    /// Seconds between heartbeats on the worker link.
    pub worker_heartbeat_secs: u32,
    /// A worker silent this long is declared lost and its jobs go back to the queue.
    pub worker_lost_after_secs: u32,
    pub keep_evaluations: u32,
    /// A push supersedes the still-running evaluations of its branch (`GRADIENT_SUPERSEDE_EVALUATIONS`).
    pub supersede_evaluations: bool,
    /// The built web UI to serve at `/` (`GRADIENT_FRONTEND_DIR`); `None`: the repository's `web/dist` if built.
    pub frontend_dir: Option<PathBuf>,
    /// A PEM file of extra CA certificates trusted, besides the webpki roots and the system's bundle, when the
    /// server dials a listening worker's `wss://` URL (`GRADIENT_CA_FILE`, as the worker's): for workers whose
    /// certificates come from a private CA.
    pub ca_file: Option<PathBuf>,
    pub max_request_size: usize,
    pub log_level: LogLevels,
    pub enable_registration: bool,
    pub delete_state: bool,
    pub cache_ttl_hours: u64,
    /// Seconds between garbage collection sweeps of the caches.
    pub cache_gc_interval_secs: u64,
    pub nar_storage_open_timeout_secs: u64,
    pub nar_send_chunk_timeout_secs: u64,
    pub max_concurrent_nar_serves: u32,
    pub max_nar_buffer_bytes: u64,
    pub trusted_proxies: Vec<IpNet>,
    pub local_ips: Vec<IpNet>,
    /// Repositories and forge APIs on this machine (loopback, link-local, `localhost`, `file://`) are
    /// accepted (`GRADIENT_ALLOW_LOCAL_REPOSITORIES`, default false; the quick start sets it).
    pub allow_local_repositories: bool,
    /// Repositories and forge APIs on private networks are refused too (`GRADIENT_DENY_PRIVATE_NETWORKS`,
    /// default false).
    pub deny_private_networks: bool,
    pub oidc: OidcConfig,
    pub email: EmailConfig,
    pub github_app: GithubAppConfig,
    pub nar_store: NarStoreConfig,
    /// The co-located worker's id (`GRADIENT_LOCAL_WORKER_ID`) and token file
    /// (`GRADIENT_LOCAL_WORKER_TOKEN_FILE`): it is registered in every organization created.
    pub local_worker: Option<(uuid::Uuid, PathBuf)>,
    /// The declarative state document (`GRADIENT_STATE_FILE`, `docs/state.md`), applied at start-up and on
    /// `SIGHUP`.
    pub state_file: Option<PathBuf>,
}

/// Where NARs are kept: `GRADIENT_NAR_STORE` is `file:///path` (default `<baseDir>/nars`) or
/// `s3://bucket[/prefix]`, the latter with `GRADIENT_S3_*` settings.
#[derive(Clone, Debug, PartialEq)]
pub enum NarStoreConfig {
    Fs(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        endpoint: String,
        region: String,
        access_key_id: String,
        secret_access_key_file: Option<PathBuf>,
        path_style: bool,
    },
}

/// One variable the server reads, as `gradient-server --print-config-schema` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    /// The NixOS module's option, in the naming rule's spelling (`settings.` is dropped).
    pub option: String,
    /// The variable names a file holding a secret (the NixOS module passes it as a systemd credential).
    pub secret_file: bool,
    /// The value taken when the variable is unset, when it is a constant.
    pub default: Option<String>,
}

impl Variable {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "option": self.option,
            "secret_file": self.secret_file,
            "default": self.default,
        })
    }
}

/// Reads typed values from a variable source and records every variable it is asked for, so the list of
/// variables (`schema`) is the parser's own.
struct Env<'a> {
    vars: &'a HashMap<String, String>,
    read: std::cell::RefCell<Vec<Variable>>,
}

impl<'a> Env<'a> {
    fn new(vars: &'a HashMap<String, String>) -> Self {
        Self {
            vars,
            read: std::cell::RefCell::new(Vec::new()),
        }
    }

    fn record(&self, option: &str, secret_file: bool, default: Option<String>) -> String {
        let var = env_name(option);
        let mut read = self.read.borrow_mut();
        match read.iter_mut().find(|v| v.name == var) {
            Some(v) => {
                v.secret_file |= secret_file;
                v.default = v.default.take().or(default);
            }
            None => read.push(Variable {
                name: var.clone(),
                option: option.strip_prefix("settings.").unwrap_or(option).to_owned(),
                secret_file,
                default,
            }),
        }
        var
    }

    fn lookup(&self, var: &str) -> Option<String> {
        self.vars
            .get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn raw(&self, option: &str) -> (String, Option<String>) {
        let var = self.record(option, false, None);
        let value = self.lookup(&var);
        (var, value)
    }

    /// A variable with a constant default: recorded with it.
    fn raw_or(&self, option: &str, default: impl ToString) -> (String, Option<String>) {
        let var = self.record(option, false, Some(default.to_string()));
        let value = self.lookup(&var);
        (var, value)
    }

    fn string_or(&self, option: &str, default: &str) -> String {
        self.raw_or(option, default).1.unwrap_or_else(|| default.to_owned())
    }

    fn path(&self, option: &str) -> Option<PathBuf> {
        self.string(option).map(PathBuf::from)
    }

    /// The path of a file holding a secret.
    fn secret_file(&self, option: &str) -> Option<PathBuf> {
        let var = self.record(option, true, None);
        self.lookup(&var).map(PathBuf::from)
    }

    fn string(&self, option: &str) -> Option<String> {
        self.raw(option).1
    }

    fn parse<T: std::str::FromStr + ToString>(
        &self,
        option: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.raw_or(option, default.to_string()) {
            (_, None) => Ok(default),
            (var, Some(v)) => v
                .parse()
                .map_err(|_| err(&var, format!("invalid value '{v}': expected {expected}"))),
        }
    }

    fn parse_opt<T: std::str::FromStr>(&self, option: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        match self.raw(option) {
            (_, None) => Ok(None),
            (var, Some(v)) => v
                .parse()
                .map(Some)
                .map_err(|_| err(&var, format!("invalid value '{v}': expected {expected}"))),
        }
    }

    fn bool(&self, option: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw_or(option, default) {
            (_, None) => Ok(default),
            (var, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(err(&var, format!("invalid value '{v}': expected true or false"))),
            },
        }
    }

    fn level(&self, option: &str) -> Result<Option<LogLevel>, ConfigError> {
        match self.raw(option) {
            (_, None) => Ok(None),
            (var, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "trace" => Ok(Some(LogLevel::Trace)),
                "debug" => Ok(Some(LogLevel::Debug)),
                "info" => Ok(Some(LogLevel::Info)),
                "warn" => Ok(Some(LogLevel::Warn)),
                "error" => Ok(Some(LogLevel::Error)),
                "null" => Ok(None),
                _ => Err(err(
                    &var,
                    format!("invalid value '{v}': expected trace, debug, info, warn or error"),
                )),
            },
        }
    }

    fn level_or(&self, option: &str, default: LogLevel) -> Result<LogLevel, ConfigError> {
        self.record(option, false, Some(default.as_str().to_owned()));
        Ok(self.level(option)?.unwrap_or(default))
    }

    fn cidrs(&self, option: &str, default: &str) -> Result<Vec<IpNet>, ConfigError> {
        let (var, value) = self.raw_or(option, default);
        let value = value.unwrap_or_else(|| default.to_owned());
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| err(&var, format!("invalid value '{s}': expected a CIDR such as 10.0.0.0/8")))
            })
            .collect()
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Reads the given variables (tests pass their own).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(vars))
    }

    /// Every variable `from_vars` reads, in its order (`gradient-server --print-config-schema`): the parser
    /// itself run on an environment that takes every branch (an S3 NAR store), recording what it asks for.
    pub fn schema() -> Vec<Variable> {
        let probe = HashMap::from([(env_name("narStore"), "s3://probe".to_owned())]);
        let e = Env::new(&probe);
        Self::read(&e).expect("the schema probe's variables parse");
        e.read.into_inner()
    }

    fn read(e: &Env) -> Result<Self, ConfigError> {
        let port: u16 = e.parse("port", 3000, "a port number (1-65535)")?;
        if port == 0 {
            return Err(err(
                &env_name("port"),
                "invalid value '0': expected a port number (1-65535)",
            ));
        }
        let max = e.parse("databaseMaxConnections", 32u32, "a number of connections")?;
        let min = e.parse("databaseMinConnections", 2u32, "a number of connections")?;
        let web_max = e.parse("databaseWebMaxConnections", 16u32, "a number of connections")?;
        let web_min = e.parse("databaseWebMinConnections", 1u32, "a number of connections")?;
        for (opt, lo, hi) in [
            ("databaseMaxConnections", min, max),
            ("databaseWebMaxConnections", web_min, web_max),
        ] {
            if hi == 0 || lo > hi {
                return Err(err(
                    &env_name(opt),
                    format!("must be at least 1 and at least the minimum ({lo})"),
                ));
            }
        }
        let database_url = e.string("databaseUrl");
        if let Some(url) = &database_url {
            check_database_url(&env_name("databaseUrl"), url)?;
        }
        for (option, value) in [
            (
                "settings.maxConcurrentNarServes",
                u64::from(e.parse("settings.maxConcurrentNarServes", 8u32, "a number of downloads")?),
            ),
            (
                "settings.maxNarBufferBytes",
                e.parse(
                    "settings.maxNarBufferBytes",
                    10u64 * 1024 * 1024 * 1024,
                    "a size in bytes",
                )?,
            ),
            (
                "settings.narSendChunkTimeoutSecs",
                e.parse("settings.narSendChunkTimeoutSecs", 30u64, "a number of seconds")?,
            ),
            (
                "settings.narStorageOpenTimeoutSecs",
                e.parse("settings.narStorageOpenTimeoutSecs", 60u64, "a number of seconds")?,
            ),
        ] {
            if value == 0 {
                return Err(err(&env_name(option), "invalid value '0': must be at least 1"));
            }
        }
        let max_request_size: usize = e.parse("maxRequestSize", 2 * 1024 * 1024, "a size in bytes")?;
        if max_request_size < 1024 {
            return Err(err(&env_name("maxRequestSize"), "must be at least 1024 bytes"));
        }
        let oidc = oidc(e)?;
        let github_app = github_app(e)?;
        let listen_addr: IpAddr = e.parse("listenAddr", IpAddr::from([127, 0, 0, 1]), "an IP address")?;
        let domain = e.string("domain").unwrap_or_else(|| match listen_addr {
            IpAddr::V6(a) => format!("[{a}]:{port}"),
            a => format!("{a}:{port}"),
        });
        let public_url = e.string("publicUrl").unwrap_or_else(|| format!("http://{domain}"));
        let public_url = public_url.trim_end_matches('/').to_owned();
        let config = Self {
            public_url,
            domain,
            base_dir: PathBuf::from(e.string_or("baseDir", "/var/lib/gradient")),
            listen_addr,
            port,
            jwt_secret_file: e.secret_file("jwtSecretFile"),
            crypt_secret_file: e.secret_file("cryptSecretFile"),
            metrics_token_file: e.secret_file("metricsTokenFile"),
            database_url_file: e.secret_file("databaseUrlFile"),
            database_url,
            database_max_connections: max,
            database_min_connections: min,
            database_web_max_connections: web_max,
            database_web_min_connections: web_min,
            report_errors: e.bool("reportErrors", false)?,
            sentry_dsn: e.string("settings.sentryDsn"),
            discoverable: e.bool("discoverable", true)?,
            max_proto_connections: e.parse("settings.maxProtoConnections", 256, "a number of connections")?,
            worker_heartbeat_secs: e.parse("settings.workerHeartbeatSecs", 10, "a number of seconds")?,
            worker_lost_after_secs: e.parse("settings.workerLostAfterSecs", 30, "a number of seconds")?,
            keep_evaluations: e.parse("settings.keepEvaluations", 5, "a number of evaluations")?,
            supersede_evaluations: e.bool("settings.supersedeEvaluations", true)?,
            frontend_dir: e.path("frontendDir"),
            ca_file: e.path("caFile"),
            max_request_size,
            log_level: LogLevels {
                default: e.level_or("settings.logLevel.default", LogLevel::Info)?,
                cache: e.level("settings.logLevel.cache")?,
                web: e.level("settings.logLevel.web")?,
                proto: e.level("settings.logLevel.proto")?,
            },
            enable_registration: e.bool("settings.enableRegistration", true)?,
            delete_state: e.bool("settings.deleteState", true)?,
            cache_ttl_hours: e.parse("settings.cacheTtlHours", 336, "a number of hours (0 disables)")?,
            cache_gc_interval_secs: e.parse("settings.cacheGcIntervalSecs", 3600, "a number of seconds")?,
            nar_storage_open_timeout_secs: e.parse("settings.narStorageOpenTimeoutSecs", 60, "a number of seconds")?,
            nar_send_chunk_timeout_secs: e.parse("settings.narSendChunkTimeoutSecs", 30, "a number of seconds")?,
            max_concurrent_nar_serves: e.parse("settings.maxConcurrentNarServes", 8, "a number of downloads")?,
            max_nar_buffer_bytes: e.parse("settings.maxNarBufferBytes", 10 * 1024 * 1024 * 1024, "a size in bytes")?,
            trusted_proxies: e.cidrs("settings.trustedProxies", "127.0.0.1/32,::1/128")?,
            local_ips: e.cidrs("settings.localIps", "10.0.0.0/8")?,
            allow_local_repositories: e.bool("settings.allowLocalRepositories", false)?,
            deny_private_networks: e.bool("settings.denyPrivateNetworks", false)?,
            oidc,
            email: email(e)?,
            github_app,
            nar_store: nar_store(e)?,
            state_file: e.path("stateFile"),
            local_worker: match (e.raw("localWorkerId"), e.secret_file("localWorkerTokenFile")) {
                ((_, None), None) => None,
                ((var, Some(id)), Some(file)) => match uuid::Uuid::parse_str(&id) {
                    Ok(u) if u.get_version_num() == 4 => Some((u, file)),
                    _ => return Err(err(&var, format!("'{id}' is not a v4 UUID"))),
                },
                ((var, _), _) => {
                    return Err(err(
                        &var,
                        "set both GRADIENT_LOCAL_WORKER_ID and GRADIENT_LOCAL_WORKER_TOKEN_FILE, or neither",
                    ));
                }
            },
        };
        refuse_unsupported(e)?;
        Ok(config)
    }

    /// The database URL: from `databaseUrlFile`, else `databaseUrl`, else SQLite in the base directory.
    pub fn resolve_database_url(&self) -> Result<String, ConfigError> {
        if let Some(file) = &self.database_url_file {
            let var = env_name("databaseUrlFile");
            let url =
                std::fs::read_to_string(file).map_err(|e| err(&var, format!("cannot read {}: {e}", file.display())))?;
            let url = url.trim().to_owned();
            check_database_url(&var, &url)?;
            return Ok(url);
        }
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        Ok(format!("sqlite://{}", self.base_dir.join("gradient.db").display()))
    }
}

/// `email.*`: with `enable`, the SMTP host and the sender's address are required; `requireVerification` needs
/// mail (nobody could verify an address otherwise, and nobody could log in).
fn email(e: &Env) -> Result<EmailConfig, ConfigError> {
    let email = EmailConfig {
        enable: e.bool("email.enable", false)?,
        require_verification: e.bool("email.requireVerification", false)?,
        smtp_host: e.string("email.smtpHost"),
        smtp_port: e.parse("email.smtpPort", 587, "a port number")?,
        smtp_username: e.string("email.smtpUsername"),
        smtp_password_file: e.secret_file("email.smtpPasswordFile"),
        from_address: e.string("email.fromAddress"),
        from_name: e.string_or("email.fromName", "Gradient"),
    };
    if email.smtp_port == 0 {
        return Err(err(
            &env_name("email.smtpPort"),
            "invalid value '0': expected a port number",
        ));
    }
    if email.require_verification && !email.enable {
        return Err(err(
            &env_name("email.requireVerification"),
            "requires mail (GRADIENT_EMAIL_ENABLE=true): without it nobody could verify an address, nor log in",
        ));
    }
    if email.enable {
        for (option, missing) in [
            ("email.smtpHost", email.smtp_host.is_none()),
            ("email.fromAddress", email.from_address.is_none()),
        ] {
            if missing {
                return Err(err(
                    &env_name(option),
                    "email is enabled (GRADIENT_EMAIL_ENABLE) but this is not set",
                ));
            }
        }
        if let Some(from) = &email.from_address
            && gradient_domain::Email::parse(from).is_err()
        {
            return Err(err(
                &env_name("email.fromAddress"),
                format!("invalid value '{from}': expected an email address"),
            ));
        }
        if email.smtp_password_file.is_some() && email.smtp_username.is_none() {
            return Err(err(
                &env_name("email.smtpUsername"),
                "a password file is set (GRADIENT_EMAIL_SMTP_PASSWORD_FILE) but no username to log in with",
            ));
        }
    }
    Ok(email)
}

/// `oidc.*`. Enabled, it needs `clientId` and an http(s) `discoveryUrl`; `required` needs it enabled (it would
/// lock everyone out otherwise); `iconUrl`, shown on the sign-in page, must be an http(s) URL. Whether the
/// provider answers is checked at start-up (`lib.rs`).
fn oidc(e: &Env) -> Result<OidcConfig, ConfigError> {
    let oidc = OidcConfig {
        enable: e.bool("oidc.enable", false)?,
        required: e.bool("oidc.required", false)?,
        client_id: e.string("oidc.clientId"),
        client_secret_file: e.secret_file("oidc.clientSecretFile"),
        discovery_url: e.string("oidc.discoveryUrl"),
        scopes: e
            .raw_or("oidc.scopes", "openid,email,profile")
            .1
            .map(|s| {
                s.split([',', ' '])
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]),
        icon_url: e.string("oidc.iconUrl"),
    };
    let is_http_url = |u: &str| {
        u.strip_prefix("https://")
            .or_else(|| u.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.contains(char::is_whitespace))
    };
    if oidc.required && !oidc.enable {
        return Err(err(
            &env_name("oidc.required"),
            "OIDC is required but not enabled (GRADIENT_OIDC_ENABLE): nobody could sign in",
        ));
    }
    if let Some(scope) = oidc
        .scopes
        .iter()
        .find(|s| s.chars().any(|c| c.is_control() || c == '"'))
    {
        return Err(err(&env_name("oidc.scopes"), format!("invalid scope {scope:?}")));
    }
    if let Some(icon) = &oidc.icon_url
        && !is_http_url(icon)
    {
        return Err(err(
            &env_name("oidc.iconUrl"),
            format!("invalid value '{icon}': expected an http:// or https:// URL"),
        ));
    }
    if oidc.enable {
        for (option, missing) in [
            ("oidc.clientId", oidc.client_id.is_none()),
            ("oidc.discoveryUrl", oidc.discovery_url.is_none()),
        ] {
            if missing {
                return Err(err(
                    &env_name(option),
                    "OIDC is enabled (GRADIENT_OIDC_ENABLE) but this is not set",
                ));
            }
        }
        if let Some(url) = &oidc.discovery_url
            && !is_http_url(url)
        {
            return Err(err(
                &env_name("oidc.discoveryUrl"),
                format!("invalid value '{url}': expected the provider's http:// or https:// issuer URL"),
            ));
        }
    }
    Ok(oidc)
}

fn github_app(e: &Env) -> Result<GithubAppConfig, ConfigError> {
    let (api_var, api_url) = e.raw_or("githubApp.apiUrl", gradient_domain::github_app::DEFAULT_API_URL);
    let api_url = api_url.unwrap_or_else(|| gradient_domain::github_app::DEFAULT_API_URL.to_owned());
    let api_url = api_url.trim_end_matches('/').to_owned();
    let host = api_url
        .strip_prefix("https://")
        .or_else(|| api_url.strip_prefix("http://"));
    if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
        return Err(err(
            &api_var,
            format!("invalid value '{api_url}': expected an http:// or https:// URL"),
        ));
    }
    let app = GithubAppConfig {
        enable: e.bool("githubApp.enable", false)?,
        app_id: e.parse_opt("githubApp.appId", "a numeric GitHub App id")?,
        private_key_file: e.secret_file("githubApp.privateKeyFile"),
        webhook_secret_file: e.secret_file("githubApp.webhookSecretFile"),
        client_id: e.string("githubApp.clientId"),
        client_secret_file: e.secret_file("githubApp.clientSecretFile"),
        web_url: e
            .string("githubApp.webUrl")
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| github_web_url(&api_url)),
        api_url,
    };
    if app.enable {
        for (option, missing) in [
            ("githubApp.appId", app.app_id.is_none()),
            ("githubApp.privateKeyFile", app.private_key_file.is_none()),
            ("githubApp.webhookSecretFile", app.webhook_secret_file.is_none()),
        ] {
            if missing {
                return Err(err(
                    &env_name(option),
                    "the GitHub App is enabled (GRADIENT_GITHUB_APP_ENABLE) but this is not set",
                ));
            }
        }
    }
    Ok(app)
}

fn nar_store(e: &Env) -> Result<NarStoreConfig, ConfigError> {
    let base_dir = e.path("baseDir").unwrap_or_else(|| PathBuf::from("/var/lib/gradient"));
    let (var, value) = e.raw("narStore");
    let Some(url) = value else {
        return Ok(NarStoreConfig::Fs(base_dir.join("nars")));
    };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(err(
                &var,
                format!("'{url}': a file:// store needs an absolute path (file:///srv/nars)"),
            ));
        }
        return Ok(NarStoreConfig::Fs(PathBuf::from(path)));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(err(
            &var,
            format!("'{url}': expected file:///path or s3://bucket/prefix"),
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(err(&var, "the s3:// URL names no bucket"));
    }
    Ok(NarStoreConfig::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
        endpoint: e.string("s3Endpoint").unwrap_or_default(),
        region: e.string_or("s3Region", "us-east-1"),
        access_key_id: e.string("s3AccessKeyId").unwrap_or_default(),
        secret_access_key_file: e.secret_file("s3SecretAccessKeyFile"),
        path_style: e.bool("s3PathStyle", true)?,
    })
}

fn check_database_url(var: &str, url: &str) -> Result<(), ConfigError> {
    if ["sqlite://", "postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        Ok(())
    } else {
        Err(err(var, "expected a sqlite://, postgres:// or postgresql:// URL"))
    }
}

/// Options of the seed this server cannot honour yet, with what they are for. Set to anything but their default,
/// start-up stops with one line saying so (never a setting that silently does nothing). Every server option of
/// the seed works today, so the list is empty; it stays as the one place a future option waits in.
pub const UNSUPPORTED: &[(&str, &str)] = &[];

/// A value as compared with its default: booleans by meaning, lists by their items.
fn normalized(value: &str) -> String {
    let v = value.trim().to_ascii_lowercase();
    match v.as_str() {
        "1" | "true" | "yes" | "on" => "true".into(),
        "0" | "false" | "no" | "off" => "false".into(),
        _ => v
            .split([',', ' '])
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Stops at the first [`UNSUPPORTED`] option set to something other than its default.
fn refuse_unsupported(e: &Env) -> Result<(), ConfigError> {
    for (option, feature) in UNSUPPORTED {
        let var = env_name(option);
        let Some(value) = e.lookup(&var) else { continue };
        let default = e
            .read
            .borrow()
            .iter()
            .find(|v| v.name == var)
            .and_then(|v| v.default.clone());
        if default.is_none_or(|d| normalized(&d) != normalized(&value)) {
            return Err(err(
                &var,
                format!(
                    "{feature} is not supported by this server yet; unset this variable (or set it to its default)"
                ),
            ));
        }
    }
    Ok(())
}

/// Minimum length of a secret file's contents.
pub const MIN_SECRET_LEN: usize = 32;

/// Loads a secret file, or — when the option is unset — generates one in `base_dir` (mode 0600) on first
/// start and reuses it afterwards, warning that production should set it explicitly.
pub fn load_or_generate_secret(
    option: &str,
    configured: Option<&Path>,
    base_dir: &Path,
    default_name: &str,
) -> Result<(Vec<u8>, Option<String>), ConfigError> {
    let var = env_name(option);
    let (path, warning) = match configured {
        Some(p) => (p.to_path_buf(), None),
        None => {
            let p = base_dir.join(default_name);
            let warning = format!(
                "{var} is not set; using the secret in {} (generated on first start)",
                p.display()
            );
            if !p.exists() {
                write_new_secret(&p).map_err(|e| err(&var, format!("cannot create {}: {e}", p.display())))?;
            }
            (p, Some(warning))
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| err(&var, format!("cannot read {}: {e}", path.display())))?;
    if bytes.trim_ascii().len() < MIN_SECRET_LEN {
        return Err(err(
            &var,
            format!("{} holds fewer than {MIN_SECRET_LEN} bytes", path.display()),
        ));
    }
    Ok((bytes, warning))
}

fn write_new_secret(path: &Path) -> std::io::Result<()> {
    use base64::Engine;
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 48];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn naming_rule() {
        let table = [
            ("listenAddr", "GRADIENT_LISTEN_ADDR"),
            ("jwtSecretFile", "GRADIENT_JWT_SECRET_FILE"),
            ("settings.enableRegistration", "GRADIENT_ENABLE_REGISTRATION"),
            ("settings.logLevel.web", "GRADIENT_LOG_LEVEL_WEB"),
            ("databaseMaxConnections", "GRADIENT_DATABASE_MAX_CONNECTIONS"),
            ("databaseWebMinConnections", "GRADIENT_DATABASE_WEB_MIN_CONNECTIONS"),
            ("settings.cacheTtlHours", "GRADIENT_CACHE_TTL_HOURS"),
            ("settings.maxNarBufferBytes", "GRADIENT_MAX_NAR_BUFFER_BYTES"),
            ("oidc.clientSecretFile", "GRADIENT_OIDC_CLIENT_SECRET_FILE"),
            ("githubApp.appId", "GRADIENT_GITHUB_APP_APP_ID"),
            ("githubApp.apiUrl", "GRADIENT_GITHUB_APP_API_URL"),
            ("githubApp.privateKeyFile", "GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE"),
            ("githubApp.clientSecretFile", "GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE"),
            ("settings.sentryDsn", "GRADIENT_SENTRY_DSN"),
        ];
        for (option, var) in table {
            assert_eq!(env_name(option), var, "{option}");
        }
    }

    #[test]
    fn the_schema_lists_what_the_parser_reads_with_secrets_and_defaults() {
        let schema = Config::schema();
        let find = |name: &str| {
            schema
                .iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(find("GRADIENT_PORT").default.as_deref(), Some("3000"));
        assert_eq!(find("GRADIENT_PORT").option, "port");
        assert_eq!(find("GRADIENT_LOG_LEVEL_WEB").option, "logLevel.web");
        assert_eq!(find("GRADIENT_LOG_LEVEL_DEFAULT").default.as_deref(), Some("info"));
        assert_eq!(
            find("GRADIENT_TRUSTED_PROXIES").default.as_deref(),
            Some("127.0.0.1/32,::1/128")
        );
        assert_eq!(find("GRADIENT_BASE_DIR").default.as_deref(), Some("/var/lib/gradient"));
        // The S3 settings are read only for an s3:// store: the probe takes that branch.
        assert_eq!(find("GRADIENT_S3_REGION").default.as_deref(), Some("us-east-1"));
        let secrets: Vec<_> = schema
            .iter()
            .filter(|v| v.secret_file)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            secrets,
            [
                "GRADIENT_OIDC_CLIENT_SECRET_FILE",
                "GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE",
                "GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE",
                "GRADIENT_GITHUB_APP_CLIENT_SECRET_FILE",
                "GRADIENT_JWT_SECRET_FILE",
                "GRADIENT_CRYPT_SECRET_FILE",
                "GRADIENT_METRICS_TOKEN_FILE",
                "GRADIENT_DATABASE_URL_FILE",
                "GRADIENT_EMAIL_SMTP_PASSWORD_FILE",
                "GRADIENT_S3_SECRET_ACCESS_KEY_FILE",
                "GRADIENT_LOCAL_WORKER_TOKEN_FILE",
            ]
        );
        let mut names: Vec<_> = schema.iter().map(|v| &v.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), schema.len(), "each variable once");
        assert!(schema.iter().all(|v| v.name == env_name(&v.option)));
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(c.base_dir, PathBuf::from("/var/lib/gradient"));
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1");
        assert_eq!(c.port, 3000);
        assert_eq!((c.database_max_connections, c.database_min_connections), (32, 2));
        assert_eq!(
            (c.database_web_max_connections, c.database_web_min_connections),
            (16, 1)
        );
        assert!(c.discoverable && c.enable_registration && c.delete_state && !c.report_errors);
        assert_eq!(c.max_proto_connections, 256);
        assert_eq!(c.keep_evaluations, 5);
        assert_eq!(c.max_request_size, 2_097_152);
        assert_eq!(
            c.log_level,
            LogLevels {
                default: LogLevel::Info,
                cache: None,
                web: None,
                proto: None
            }
        );
        assert_eq!(c.cache_ttl_hours, 336);
        assert_eq!(c.nar_storage_open_timeout_secs, 60);
        assert_eq!(c.nar_send_chunk_timeout_secs, 30);
        assert_eq!(c.max_concurrent_nar_serves, 8);
        assert_eq!(c.max_nar_buffer_bytes, 10_737_418_240);
        let show = |v: &Vec<IpNet>| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(show(&c.trusted_proxies), ["127.0.0.1/32", "::1/128"]);
        assert_eq!(show(&c.local_ips), ["10.0.0.0/8"]);
        assert!(!c.allow_local_repositories && !c.deny_private_networks);
        assert_eq!(
            c.resolve_database_url().unwrap(),
            "sqlite:///var/lib/gradient/gradient.db"
        );
        assert_eq!(
            c.github_app,
            GithubAppConfig {
                enable: false,
                app_id: None,
                private_key_file: None,
                webhook_secret_file: None,
                api_url: "https://api.github.com".into(),
                client_id: None,
                client_secret_file: None,
                web_url: "https://github.com".into(),
            }
        );
    }

    #[test]
    fn oidc_settings_are_checked() {
        let full = [
            ("GRADIENT_OIDC_ENABLE", "true"),
            ("GRADIENT_OIDC_CLIENT_ID", "gradient"),
            ("GRADIENT_OIDC_DISCOVERY_URL", "https://auth.example.com"),
            ("GRADIENT_OIDC_SCOPES", "openid email"),
            ("GRADIENT_OIDC_ICON_URL", "https://auth.example.com/logo.svg"),
            ("GRADIENT_OIDC_REQUIRED", "true"),
        ];
        let c = Config::from_vars(&vars(&full)).unwrap();
        assert_eq!(
            c.oidc,
            OidcConfig {
                enable: true,
                required: true,
                client_id: Some("gradient".into()),
                client_secret_file: None,
                discovery_url: Some("https://auth.example.com".into()),
                scopes: vec!["openid".into(), "email".into()],
                icon_url: Some("https://auth.example.com/logo.svg".into()),
            }
        );
        // Enabled, the client id and the discovery URL are needed.
        for missing in 1..3 {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, v)| *v)
                .collect();
            let e = Config::from_vars(&vars(&partial)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", full[missing].0)), "{e}");
        }
        for (var, value) in [
            // Required without OIDC enabled would lock everyone out.
            ("GRADIENT_OIDC_ENABLE", "false"),
            ("GRADIENT_OIDC_DISCOVERY_URL", "auth.example.com"),
            ("GRADIENT_OIDC_ICON_URL", "javascript:alert(1)"),
        ] {
            let mut bad = full.to_vec();
            bad.retain(|(v, _)| *v != var);
            bad.push((var, value));
            let e = Config::from_vars(&vars(&bad)).unwrap_err().to_string();
            let named = if var == "GRADIENT_OIDC_ENABLE" {
                "GRADIENT_OIDC_REQUIRED"
            } else {
                var
            };
            assert!(e.starts_with(&format!("{named}: ")), "{var}={value}: {e}");
        }
        // Disabled, nothing else is needed.
        assert!(Config::from_vars(&vars(&[("GRADIENT_OIDC_CLIENT_ID", "x")])).is_ok());
    }

    #[test]
    fn the_github_app_needs_its_id_and_files_when_enabled() {
        let full = [
            ("GRADIENT_GITHUB_APP_ENABLE", "true"),
            ("GRADIENT_GITHUB_APP_APP_ID", "123456"),
            ("GRADIENT_GITHUB_APP_PRIVATE_KEY_FILE", "/run/secrets/key"),
            ("GRADIENT_GITHUB_APP_WEBHOOK_SECRET_FILE", "/run/secrets/hook"),
            ("GRADIENT_GITHUB_APP_API_URL", "https://ghe.example.com/api/v3/"),
        ];
        let c = Config::from_vars(&vars(&full)).unwrap();
        assert_eq!(
            c.github_app,
            GithubAppConfig {
                enable: true,
                app_id: Some(123_456),
                private_key_file: Some("/run/secrets/key".into()),
                webhook_secret_file: Some("/run/secrets/hook".into()),
                api_url: "https://ghe.example.com/api/v3".into(),
                client_id: None,
                client_secret_file: None,
                web_url: "https://ghe.example.com".into(),
            }
        );
        assert_eq!(github_web_url("https://api.github.com"), "https://github.com");
        assert_eq!(github_web_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        for missing in 1..4 {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != missing)
                .map(|(_, v)| *v)
                .collect();
            let e = Config::from_vars(&vars(&partial)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", full[missing].0)), "{e}");
        }
        // Disabled, nothing is required.
        assert!(Config::from_vars(&vars(&[("GRADIENT_GITHUB_APP_APP_ID", "1")])).is_ok());
    }

    #[test]
    fn values_are_read() {
        let c = Config::from_vars(&vars(&[
            ("GRADIENT_PORT", "8080"),
            ("GRADIENT_LISTEN_ADDR", "::"),
            ("GRADIENT_ENABLE_REGISTRATION", "false"),
            ("GRADIENT_LOG_LEVEL_WEB", "debug"),
            ("GRADIENT_MAX_REQUEST_SIZE", "4096"),
            ("GRADIENT_LOCAL_IPS", "192.168.0.0/16, 10.1.2.3"),
            ("GRADIENT_DATABASE_URL", "postgres://u@h/db"),
            ("GRADIENT_NAR_STORE", "s3://nars/gradient/"),
            ("GRADIENT_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("GRADIENT_ALLOW_LOCAL_REPOSITORIES", "true"),
            ("GRADIENT_DENY_PRIVATE_NETWORKS", "yes"),
        ]))
        .unwrap();
        assert!(c.allow_local_repositories && c.deny_private_networks);
        match &c.nar_store {
            NarStoreConfig::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                path_style,
                ..
            } => {
                assert_eq!((bucket.as_str(), prefix.as_str()), ("nars", "gradient"));
                assert_eq!(
                    (endpoint.as_str(), region.as_str(), *path_style),
                    ("http://127.0.0.1:9000", "us-east-1", true)
                );
            }
            other => panic!("expected S3, got {other:?}"),
        }
        assert_eq!(c.port, 8080);
        assert_eq!(c.listen_addr.to_string(), "::");
        assert!(!c.enable_registration);
        assert_eq!(c.log_level.web, Some(LogLevel::Debug));
        assert_eq!(c.max_request_size, 4096);
        assert_eq!(c.local_ips.len(), 2);
        assert_eq!(c.resolve_database_url().unwrap(), "postgres://u@h/db");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let table = [
            ("GRADIENT_PORT", "abc", "GRADIENT_PORT: invalid value 'abc'"),
            ("GRADIENT_PORT", "0", "GRADIENT_PORT: invalid value '0'"),
            (
                "GRADIENT_LISTEN_ADDR",
                "localhost",
                "GRADIENT_LISTEN_ADDR: invalid value",
            ),
            (
                "GRADIENT_ENABLE_REGISTRATION",
                "maybe",
                "GRADIENT_ENABLE_REGISTRATION: invalid value 'maybe'",
            ),
            (
                "GRADIENT_LOG_LEVEL_DEFAULT",
                "loud",
                "GRADIENT_LOG_LEVEL_DEFAULT: invalid value",
            ),
            (
                "GRADIENT_TRUSTED_PROXIES",
                "10.0.0.0/99",
                "GRADIENT_TRUSTED_PROXIES: invalid value",
            ),
            ("GRADIENT_DATABASE_URL", "mysql://x", "GRADIENT_DATABASE_URL: expected"),
            (
                "GRADIENT_GITHUB_APP_API_URL",
                "api.github.com",
                "GRADIENT_GITHUB_APP_API_URL: invalid value",
            ),
            (
                "GRADIENT_GITHUB_APP_APP_ID",
                "my-app",
                "GRADIENT_GITHUB_APP_APP_ID: invalid value",
            ),
            (
                "GRADIENT_DATABASE_MAX_CONNECTIONS",
                "0",
                "GRADIENT_DATABASE_MAX_CONNECTIONS: must be",
            ),
            (
                "GRADIENT_MAX_REQUEST_SIZE",
                "-1",
                "GRADIENT_MAX_REQUEST_SIZE: invalid value",
            ),
        ];
        for (var, value, want) in table {
            let e = Config::from_vars(&vars(&[(var, value)])).unwrap_err().to_string();
            assert!(e.starts_with(want), "{var}={value}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn email_needs_a_server_and_a_sender_and_verification_needs_email() {
        let full = [
            ("GRADIENT_EMAIL_ENABLE", "true"),
            ("GRADIENT_EMAIL_SMTP_HOST", "smtp.example.com"),
            ("GRADIENT_EMAIL_FROM_ADDRESS", "gradient@example.com"),
            ("GRADIENT_EMAIL_REQUIRE_VERIFICATION", "true"),
            ("GRADIENT_EMAIL_SMTP_USERNAME", "gradient"),
            ("GRADIENT_EMAIL_SMTP_PASSWORD_FILE", "/run/secrets/smtp"),
        ];
        let c = Config::from_vars(&vars(&full)).unwrap();
        assert!(c.email.enable && c.email.require_verification);
        assert_eq!((c.email.smtp_port, c.email.from_name.as_str()), (587, "Gradient"));
        for (i, want) in [
            (1, "GRADIENT_EMAIL_SMTP_HOST: "),
            (2, "GRADIENT_EMAIL_FROM_ADDRESS: "),
            (4, "GRADIENT_EMAIL_SMTP_USERNAME: "),
        ] {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| *v)
                .collect();
            let e = Config::from_vars(&vars(&partial)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let e = Config::from_vars(&vars(&[("GRADIENT_EMAIL_REQUIRE_VERIFICATION", "true")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("GRADIENT_EMAIL_REQUIRE_VERIFICATION: requires mail"),
            "{e}"
        );
        let e = Config::from_vars(&vars(&[
            ("GRADIENT_EMAIL_ENABLE", "true"),
            ("GRADIENT_EMAIL_SMTP_HOST", "smtp.example.com"),
            ("GRADIENT_EMAIL_FROM_ADDRESS", "not an address"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("GRADIENT_EMAIL_FROM_ADDRESS: invalid value"), "{e}");
        // Disabled, the other settings are kept but need nothing.
        assert!(Config::from_vars(&vars(&[("GRADIENT_EMAIL_SMTP_HOST", "smtp.example.com")])).is_ok());
    }

    #[test]
    fn secrets_are_generated_once_with_mode_0600_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, warn) = load_or_generate_secret("jwtSecretFile", None, dir.path(), "jwt-secret").unwrap();
        assert!(warn.unwrap().starts_with("GRADIENT_JWT_SECRET_FILE is not set"));
        let mode = std::fs::metadata(dir.path().join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, _) = load_or_generate_secret("jwtSecretFile", None, dir.path(), "jwt-secret").unwrap();
        assert_eq!(a, b, "the generated secret is reused on the next start");

        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let e = load_or_generate_secret("cryptSecretFile", Some(&short), dir.path(), "x").unwrap_err();
        assert!(e.to_string().starts_with("GRADIENT_CRYPT_SECRET_FILE: "), "{e}");
        assert!(e.to_string().contains("fewer than 32 bytes"));
        let missing = dir.path().join("missing");
        let e = load_or_generate_secret("cryptSecretFile", Some(&missing), dir.path(), "x").unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
