use super::Tag;
use super::dto::{Envelope, Nullable, Reply, ok};
use super::errors::{ErrorBody, body};
use crate::state::AppState;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

/// How long the health check waits for the database before answering that it does not answer.
const HEALTH_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct MetaApi(pub AppState);

#[derive(Object)]
pub struct Health {
    /// `ok` when the server can reach its database.
    pub status: String,
    pub version: String,
}

/// The health check's answers.
#[derive(ApiResponse)]
pub enum HealthReply {
    /// The server is up and its database answers.
    #[oai(status = 200)]
    Ok(Json<Envelope<Health>>),
    /// The database does not answer (`code` `database_unavailable`; `message` says what failed): the server
    /// waits for it and resumes by itself, but cannot record anything meanwhile.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// What a client needs to know before logging in.
#[derive(Object)]
pub struct PublicConfig {
    pub version: String,
    pub registration_enabled: bool,
    pub oidc_enabled: bool,
    /// When true, password login and registration are disabled and users sign in through OIDC.
    pub oidc_required: bool,
    /// The OIDC provider's logo for the sign-in button (`oidc.iconUrl`), when configured.
    pub oidc_icon_url: Nullable<String>,
    pub email_verification_required: bool,
    /// Mail is sent: password reset by mail and mail about evaluations are available.
    pub email_enabled: bool,
}

#[OpenApi(tag = "Tag::Meta")]
impl MetaApi {
    /// Whether the server is up and its database reachable.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> Result<HealthReply, super::errors::ApiError> {
        // What failed is the loops' to log (once per outage); an anonymous caller learns only that it failed.
        let answered = match tokio::time::timeout(HEALTH_DATABASE_TIMEOUT, self.0.app.check_database()).await {
            Ok(Ok(())) => "",
            Ok(Err(_)) => "the database refused or failed the check",
            Err(_) => "the database did not answer in time",
        };
        if answered.is_empty() {
            return Ok(HealthReply::Ok(Json(Envelope {
                error: false,
                message: Health {
                    status: "ok".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            })));
        }
        Ok(HealthReply::Unavailable(body(
            "database_unavailable",
            format!("{answered}; the server resumes by itself once it answers"),
        )))
    }

    /// The server's public settings.
    #[oai(path = "/config", method = "get", operation_id = "get_config")]
    async fn config(&self) -> Reply<PublicConfig> {
        let s = self.0.app.settings();
        ok(PublicConfig {
            version: env!("CARGO_PKG_VERSION").into(),
            registration_enabled: s.enable_registration && !s.oidc_required,
            oidc_enabled: self.0.http.oidc_enabled,
            oidc_required: s.oidc_required,
            oidc_icon_url: self.0.oidc.as_ref().and_then(|o| o.settings.icon_url.clone()).into(),
            email_verification_required: self.0.http.email_verification,
            email_enabled: self.0.http.email_enabled,
        })
    }
}
