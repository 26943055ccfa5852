//! The REST API under `/api/v1`: one `#[OpenApi]` struct per tag, combined into one service whose OpenAPI
//! document is committed as `openapi/gradient.json`. Handlers only translate between JSON and the domain's
//! use cases; every answer uses the envelope `{"error": false, "message": …}` and every failure
//! `{"error": true, "message": …, "code": …}`.

mod accounts;
mod actions;
mod allow;
mod audit;
mod caches;
mod dto;
mod email;
mod errors;
mod evaluations;
mod hooks;
mod meta;
mod nullable;
mod oidc;
mod orgs;
mod projects;
mod sessions;
mod streams;
pub mod strict;
mod workers;

pub use allow::{AllowedMethods, WithAllow};
pub use errors::{ApiError, error_response};

use crate::state::AppState;
use poem_openapi::auth::Bearer;
use poem_openapi::{OpenApiService, SecurityScheme, Tags};

#[derive(Tags)]
pub enum Tag {
    /// Server health and public configuration.
    Meta,
    /// Registration, login, sessions and API keys.
    Accounts,
    /// Organizations, members, roles and cache subscriptions.
    Orgs,
    /// Projects: repositories holding a flake.
    Projects,
    /// Binary caches.
    Caches,
    /// Forge webhooks: the organization's webhook secret and the deliveries that queue evaluations.
    Hooks,
}

/// A session token (from `POST /auth/basic/login`) or an API key (`GRAD…`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
pub struct Token(Bearer);

/// Authentication for operations that anonymous callers may use too (public organizations and caches).
#[derive(SecurityScheme)]
pub enum MaybeToken {
    Token(Token),
    #[oai(fallback)]
    Anonymous,
}

impl MaybeToken {
    fn bearer(&self) -> Option<&str> {
        match self {
            Self::Token(t) => Some(&t.0.token),
            Self::Anonymous => None,
        }
    }
}

pub type Api = (
    meta::MetaApi,
    accounts::AccountsApi,
    email::EmailApi,
    oidc::OidcApi,
    orgs::OrgsApi,
    projects::ProjectsApi,
    actions::ActionsApi,
    caches::CachesApi,
    workers::WorkersApi,
    evaluations::EvaluationsApi,
    hooks::HooksApi,
    streams::StreamsApi,
    sessions::SessionsApi,
    audit::AuditApi,
);

/// The API service, with the document's fixed metadata (the spec must not depend on the configuration).
pub fn service(state: AppState) -> OpenApiService<Api, ()> {
    OpenApiService::new(
        (
            meta::MetaApi(state.clone()),
            accounts::AccountsApi(state.clone()),
            email::EmailApi(state.clone()),
            oidc::OidcApi(state.clone()),
            orgs::OrgsApi(state.clone()),
            projects::ProjectsApi(state.clone()),
            actions::ActionsApi(state.clone()),
            caches::CachesApi(state.clone()),
            workers::WorkersApi(state.clone()),
            evaluations::EvaluationsApi(state.clone()),
            hooks::HooksApi(state.clone()),
            streams::StreamsApi(state.clone()),
            sessions::SessionsApi(state.clone()),
            audit::AuditApi(state),
        ),
        "Gradient",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Gradient, a Nix CI: organizations, projects, evaluations, builds and binary caches.")
    .server("/api/v1")
}
