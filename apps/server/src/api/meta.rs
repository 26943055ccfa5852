use super::Tag;
use super::dto::{Nullable, Reply, ok};
use crate::state::AppState;
use poem_openapi::{Object, OpenApi};

pub struct MetaApi(pub AppState);

#[derive(Object)]
pub struct Health {
    /// `ok` when the server can reach its database.
    pub status: String,
    pub version: String,
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
    async fn health(&self) -> Reply<Health> {
        self.0.app.check_database().await?;
        ok(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
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
