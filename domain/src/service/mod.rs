//! Use cases. `Gradient<S, C>` holds the ports and the installation's settings; each method is one thing a
//! user does (register, create an organization, ...), decides whether the caller may, and changes state
//! through the storage port. The HTTP API only translates requests into these calls.

mod accounts;
mod actions;
mod audit;
mod binary_cache;
mod builds;
pub(crate) mod caches;
mod deploy_keys;
mod email;
mod flights;
mod github_app;
mod memo;
mod oidc;
mod operations;
mod orgs;
mod overview;
mod pipeline;
pub(crate) mod projects;
mod recent_hits;
mod sessions;
mod state;
pub(crate) mod statuses;
mod webhooks;
pub(crate) mod workers;

pub use accounts::{Caller, NewKey, Registration};
pub use actions::{ActionChanges, ActionWithSecret, DELIVERY_PAGE, NewAction};
pub use audit::{AUDIT_KEEP, AUDIT_PAGE, AuditPage};
pub use binary_cache::{
    GcReport, IMPORT_BATCH_BYTES, IMPORT_BATCH_PATHS, MAX_MISSING_QUERY, NarUrl, drv_from_basename, listing_key,
    nar_key, nix_cache_info,
};
pub use builds::{EvaluationBuildView, EvaluationDiff, LogText};
pub use caches::{CacheChanges, CacheStats, NewCache};
pub use deploy_keys::SshKeyView;
pub use email::RESET_REQUESTED;
pub use github_app::GithubAppSettings;
pub use oidc::{OIDC_FLOW_LIFETIME, OidcClaims, OidcOutcome, OidcStart, username_from_claims};
pub use operations::Operations;
pub use orgs::{NewOrg, OrgChanges, RoleView};
pub use overview::{
    FleetOverview, FleetWorker, LiveWorker, QueueOverview, RunningJob, SystemQueue, job_system, queue_overview,
};
pub use pipeline::{Dispatched, JobReport, Reconciled};
pub use projects::{NewProject, ProjectChanges};
pub use recent_hits::{CacheHit, RECENT_HITS, TRACKED_CACHES};
pub use sessions::{MAX_USER_AGENT, SessionView, clean_user_agent};
pub use statuses::{FIRST_RETRY, LAST_RETRY, commit_state, retry_delay};
pub use webhooks::EVALUATION_LIST_LIMIT;
pub use workers::{MAX_LISTENING_WORKERS_PER_ORG, NewRegistration, check_token, generate_token, parse_worker_id};

use crate::auth::TokenSigner;
use crate::crypt::Crypt;
use crate::names::{Name, NameError};
use crate::ports::storage::StorageError;
use crate::ports::{Clock, Fleet, Storage};

/// Why a use case did not happen. Each variant maps to one HTTP status; `code()` is the stable,
/// machine-readable identifier clients match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// No valid credentials were presented (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Wrong username/email or password (401).
    #[error("invalid username, email or password")]
    InvalidCredentials,
    /// The caller is known but may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("registration is disabled on this server")]
    RegistrationDisabled,
    /// The password is right but the account's address is not verified yet and the server requires it (403).
    #[error("confirm your email address first: follow the link in the verification mail, or ask for a new one")]
    EmailNotVerified,
    /// Absent, or hidden from this caller (404).
    #[error("{0}")]
    NotFound(String),
    /// Would collide with existing state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request is well-formed but a value is not acceptable (422).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// Something on our side failed (500/503). The text is logged, not shown.
    #[error("internal error")]
    Internal(String),
    /// A backend (the database) cannot be reached now; the same call may work later. The text is logged, not
    /// shown. Loops back off and retry on it; a worker's report is retried, not refused.
    #[error("temporarily unavailable")]
    Unavailable(String),
    /// The NAR store cannot take or give bytes now: unreachable, failing or too slow (503
    /// `storage_unavailable`); nothing was stored, and trying again later may work. The text is logged.
    #[error("the cache's storage is unavailable; nothing was stored, try again later")]
    StorageUnavailable(String),
    /// The NAR store has no room left (507 `insufficient_storage`); nothing was stored. The text is logged.
    #[error("the cache's storage is full; nothing was stored")]
    StorageFull(String),
}

impl ServiceError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Forbidden(_) => "forbidden",
            Self::RegistrationDisabled => "registration_disabled",
            Self::EmailNotVerified => "email_not_verified",
            Self::NotFound(_) => "not_found",
            Self::Conflict { code, .. } | Self::Invalid { code, .. } => code,
            Self::Internal(_) => "internal_error",
            Self::Unavailable(_) => "unavailable",
            Self::StorageUnavailable(_) => "storage_unavailable",
            Self::StorageFull(_) => "insufficient_storage",
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
}

impl From<NameError> for ServiceError {
    fn from(e: NameError) -> Self {
        let code = if matches!(e, NameError::Email(_)) {
            "invalid_email"
        } else {
            "invalid_name"
        };
        Self::invalid(code, e.to_string())
    }
}

impl From<StorageError> for ServiceError {
    /// Storage conflicts that a use case did not anticipate still surface as 409 rather than 500.
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict(what) => Self::conflict("conflict", format!("{what} already exists")),
            StorageError::NotFound => Self::NotFound("not found".into()),
            StorageError::Unavailable(msg) => Self::Unavailable(msg),
            StorageError::Failed(msg) => Self::Internal(msg),
        }
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// Installation-wide settings the use cases depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enable_registration: bool,
    /// When OIDC is required, password login and registration are refused.
    pub oidc_required: bool,
    pub session_lifetime: chrono::TimeDelta,
    /// The public host name; cache signing keys are named `<domain>-<cache>`.
    pub domain: String,
    /// A worker on the server's own machine, registered in every organization created, so a fresh
    /// installation builds without any manual step.
    pub local_worker: Option<LocalWorker>,
    /// Evaluations kept per project unless the project says otherwise; older finished ones are deleted.
    pub keep_evaluations: u32,
    /// A push supersedes the still-running evaluations of the same branch.
    pub supersede_evaluations: bool,
    /// The server's public URL (no trailing slash); commit statuses link to evaluations under it.
    pub public_url: String,
    /// The instance's GitHub App, when one is configured.
    pub github_app: Option<GithubAppSettings>,
    /// What the server may connect to for users: repositories and forge APIs (see [`crate::reach`]).
    pub network: crate::reach::NetworkPolicy,
    /// Email (`email.*`): whether mail is sent, and whether login needs a verified address.
    pub email: EmailSettings,
}

/// What the use cases need to know of `email.*`; the mailer itself is given with [`Gradient::mailing_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmailSettings {
    /// Mail is sent: verification, password reset, evaluation mail.
    pub enabled: bool,
    /// Password login (and single sign-on into an account the provider did not vouch for) is refused (403
    /// `email_not_verified`) until the account's address is verified.
    pub require_verification: bool,
}

/// The co-located worker: its id and its token's proof key ([`crate::proto::proof_key`]), read from the
/// token file at start-up and stored sealed in each organization's registration.
#[derive(Clone, Debug)]
pub struct LocalWorker {
    pub id: crate::WorkerId,
    pub proof_key: [u8; 32],
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enable_registration: true,
            oidc_required: false,
            session_lifetime: chrono::TimeDelta::days(30),
            domain: "localhost".into(),
            local_worker: None,
            keep_evaluations: 5,
            supersede_evaluations: true,
            public_url: "http://localhost".into(),
            github_app: None,
            network: crate::reach::NetworkPolicy::default(),
            email: EmailSettings::default(),
        }
    }
}

/// The application: ports plus settings. Cheap to clone when the ports are. Its fields are private: the
/// apps reach storage, the fleet and the in-memory registries only through use cases.
#[derive(Clone)]
pub struct Gradient<S, C> {
    storage: S,
    clock: C,
    tokens: TokenSigner,
    crypt: Crypt,
    settings: Settings,
    /// The workers connected right now, shared by clones.
    fleet: std::sync::Arc<dyn Fleet>,
    /// Answers the binary cache serves repeatedly; shared by clones.
    memo: std::sync::Arc<memo::ServeMemo>,
    /// Derivation inputs the scheduler asks for at every dispatch; shared by clones.
    derivations: std::sync::Arc<memo::DerivationMemo>,
    /// Builds waiting for the worker that evaluated them to push their `.drv` files; shared by clones.
    pins: std::sync::Arc<crate::scheduler::Pins>,
    /// How far each queued build's inputs were found available, so a dispatch round reads only the rest;
    /// shared by clones.
    input_progress: std::sync::Arc<pipeline::InputProgress>,
    /// Jobs dispatch rounds assigned but could neither send nor take back; shared by clones.
    stranded: std::sync::Arc<pipeline::Stranded>,
    /// Told when evaluations and builds end (the server's metrics); shared by clones.
    observer: std::sync::Arc<dyn crate::ports::Observer>,
    /// Hands mail over for delivery; shared by clones.
    mailer: std::sync::Arc<dyn crate::ports::Mailer>,
    /// The GitHub App's installation tokens, to fetch the repositories it covers; shared by clones.
    app_tokens: std::sync::Arc<dyn crate::ports::forge::InstallationTokens>,
}

impl<S: Storage, C: Clock> Gradient<S, C> {
    pub fn new(
        storage: S,
        clock: C,
        tokens: TokenSigner,
        crypt: Crypt,
        settings: Settings,
        fleet: std::sync::Arc<dyn Fleet>,
    ) -> Self {
        Self {
            memo: Default::default(),
            derivations: Default::default(),
            pins: Default::default(),
            input_progress: Default::default(),
            stranded: Default::default(),
            observer: std::sync::Arc::new(crate::ports::observer::Unobserved),
            mailer: std::sync::Arc::new(crate::ports::mail::NoMail),
            app_tokens: std::sync::Arc::new(crate::ports::forge::NoInstallationTokens),
            fleet,
            storage,
            clock,
            tokens,
            crypt,
            settings,
        }
    }

    /// The same application (settings, secrets, fleet and everything it keeps in memory, shared) over another
    /// handle of storage: the server runs HTTP requests on one database pool and its own work on another.
    pub fn with_storage<S2: Storage>(&self, storage: S2) -> Gradient<S2, C>
    where
        C: Clone,
    {
        Gradient {
            storage,
            clock: self.clock.clone(),
            tokens: self.tokens.clone(),
            crypt: self.crypt.clone(),
            settings: self.settings.clone(),
            fleet: self.fleet.clone(),
            memo: self.memo.clone(),
            derivations: self.derivations.clone(),
            pins: self.pins.clone(),
            input_progress: self.input_progress.clone(),
            stranded: self.stranded.clone(),
            observer: self.observer.clone(),
            mailer: self.mailer.clone(),
            app_tokens: self.app_tokens.clone(),
        }
    }

    /// The same application, telling `observer` when evaluations and builds end.
    pub fn observed_by(mut self, observer: std::sync::Arc<dyn crate::ports::Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The same application, sending its mail through `mailer` (when [`EmailSettings::enabled`]).
    pub fn mailing_with(mut self, mailer: std::sync::Arc<dyn crate::ports::Mailer>) -> Self {
        self.mailer = mailer;
        self
    }

    /// The same application, fetching the repositories the GitHub App's installations cover with tokens from
    /// `tokens` (see [`Self::repository_credential`]).
    pub fn fetching_with(mut self, tokens: std::sync::Arc<dyn crate::ports::forge::InstallationTokens>) -> Self {
        self.app_tokens = tokens;
        self
    }

    /// Whether both share what they keep in memory (memos, pins) and their fleet: true for the handles
    /// [`Self::with_storage`] makes of one application.
    pub fn shares_memory_with<S2>(&self, other: &Gradient<S2, C>) -> bool {
        std::sync::Arc::ptr_eq(&self.memo, &other.memo)
            && std::sync::Arc::ptr_eq(&self.derivations, &other.derivations)
            && std::sync::Arc::ptr_eq(&self.pins, &other.pins)
            && std::sync::Arc::ptr_eq(&self.fleet, &other.fleet)
    }

    /// The installation's settings, as configured.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The secret box sealing stored secrets (the worker link opens proof keys with it).
    pub fn crypt(&self) -> &Crypt {
        &self.crypt
    }

    /// Whether the database answers (the health check).
    pub async fn check_database(&self) -> Result<()> {
        self.storage.meta("crypt_check").await?;
        Ok(())
    }

    /// Checks that the crypt secret is the one this database was first used with: a sealed check value is
    /// stored on first start and must open on every later one. Changing the secret would make every stored
    /// secret unreadable, so it is refused at start-up instead of failing later.
    pub async fn check_crypt_secret(&self) -> Result<()> {
        const KEY: &str = "crypt_check";
        let fresh = self.crypt.seal(b"gradient");
        let stored = self.storage.meta_init(KEY, &fresh.0).await?;
        match self.crypt.open(&crate::crypt::Sealed(stored)) {
            Ok(v) if v == b"gradient" => Ok(()),
            _ => Err(ServiceError::Internal(
                "the crypt secret differs from the one this database was created with".into(),
            )),
        }
    }
}

/// Refuses to change something the server's declarative state manages (409 `managed`): only the state
/// document changes it.
pub(crate) fn refuse_managed(managed: bool, what: impl std::fmt::Display) -> Result<()> {
    if managed {
        Err(ServiceError::conflict(
            "managed",
            format!("{what} is managed by the server's declarative state: change it in the state document"),
        ))
    } else {
        Ok(())
    }
}

/// The display name (the name when empty) and description of something new, checked for size.
pub(crate) fn display_texts(
    name: &Name,
    display_name: Option<String>,
    description: Option<String>,
) -> Result<(String, String)> {
    let display_name = display_name.unwrap_or_default();
    // Checked before trimming: a control character at either end is refused, not silently dropped.
    check_text("display_name", &display_name, 256)?;
    let display_name = display_name.trim().to_owned();
    let description = description.unwrap_or_default();
    check_multiline_text("description", &description, 4096)?;
    Ok((
        if display_name.is_empty() {
            name.to_string()
        } else {
            display_name
        },
        description,
    ))
}

/// Keeps a one-line free text field (a display name, a key's name, a URL) to a sane size and free of control
/// characters (C0 including NUL, tab and newline, DEL, C1): they would corrupt logs, terminals and the forms
/// that show them.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    check_size(field, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(control_characters(field));
    }
    Ok(())
}

/// As [`check_text`] for a text that may span lines (a description): newline, carriage return and tab are
/// allowed, every other control character is not.
pub(crate) fn check_multiline_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    check_size(field, value, max)?;
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(control_characters(field));
    }
    Ok(())
}

fn check_size(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(ServiceError::invalid(
            "invalid_input",
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(())
}

fn control_characters(field: &'static str) -> ServiceError {
    ServiceError::invalid("invalid_input", format!("{field} must not contain control characters"))
}

/// Checks a branch name (as a project names it, or as a push or an evaluation request carries it): 1 to
/// [`crate::names::MAX_REF_LEN`] bytes, no control characters or spaces, not an option (`-…`), no `..`.
pub(crate) fn check_branch(branch: &str) -> Result<()> {
    crate::names::check_branch(branch).map_err(|m| ServiceError::invalid("invalid_branch", m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_texts_refuse_every_control_character() {
        for bad in [
            "a\0b",
            "a\tb",
            "a\nb",
            "a\rb",
            "a\u{7f}b",
            "a\u{85}b",
            "a\u{9b}b",
            "\u{1b}[31m",
        ] {
            let e = check_text("display_name", bad, 256).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{bad:?}");
            assert!(e.to_string().contains("control characters"), "{bad:?}: {e}");
        }
        assert!(check_text("display_name", "Ça va — 日本", 256).is_ok());
        assert!(check_text("display_name", &"x".repeat(257), 256).is_err());
    }

    #[test]
    fn descriptions_may_span_lines_but_refuse_other_controls() {
        assert!(check_multiline_text("description", "line 1\nline 2\r\n\tindented", 4096).is_ok());
        for bad in ["a\0b", "a\u{7f}b", "a\u{85}b", "a\u{1b}b"] {
            assert!(check_multiline_text("description", bad, 4096).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_texts_check_both_fields() {
        let name = Name::parse("web").expect("name");
        assert!(display_texts(&name, Some("Web\0".into()), None).is_err());
        assert!(display_texts(&name, None, Some("bell\u{7}".into())).is_err());
        let (d, _) = display_texts(&name, None, Some("two\nlines".into())).expect("valid");
        assert_eq!(d, "web");
    }
}
