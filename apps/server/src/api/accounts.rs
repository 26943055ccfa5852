use super::dto::{ApiKeyView, Reply, UserView, ok, parse_permissions};
use super::errors::LimitedError;
use super::{Tag, Token};
use crate::state::AppState;
use gradient_domain::ApiKeyId;
use gradient_domain::service::{NewKey, Registration};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use uuid::Uuid;

pub struct AccountsApi(pub AppState);

/// The answer of a rate-limited operation: its errors include 429 with `Retry-After`.
type Limited<T> = Result<Json<super::dto::Envelope<T>>, LimitedError>;

#[derive(Object)]
pub struct RegisterRequest {
    /// Lowercase letters, digits, `-` and `_`; 1 to 64 characters.
    pub username: String,
    /// Display name.
    pub name: String,
    pub email: String,
    /// At least 8 characters.
    pub password: String,
}

#[derive(Object)]
pub struct LoginRequest {
    /// Username or email address.
    pub loginname: String,
    pub password: String,
}

#[derive(Object)]
pub struct NewKeyRequest {
    pub name: String,
    /// Limit the key to one organization (by name).
    pub organization: Option<String>,
    /// Limit the key to these permissions.
    pub permissions: Option<Vec<String>>,
}

/// A new API key. `key` is shown only in this answer; store it now.
#[derive(Object)]
pub struct CreatedKey {
    pub id: Uuid,
    pub name: String,
    /// The token: `GRAD` followed by the secret. Send it as `Authorization: Bearer <key>`.
    pub key: String,
}

#[OpenApi(tag = "Tag::Accounts")]
impl AccountsApi {
    /// Creates an account with a password. Rate limited per client address (429 with `Retry-After`).
    #[oai(path = "/auth/basic/register", method = "post", operation_id = "register")]
    async fn register(&self, req: &poem::Request, body: Json<RegisterRequest>) -> Limited<UserView> {
        let client = crate::limits::client_ip(req, &self.0.http.trusted_proxies);
        self.0.limits.register(client).map_err(LimitedError::rate_limited)?;
        let r = body.0;
        let user = self
            .0
            .app
            .register(Registration {
                username: r.username,
                name: r.name,
                email: r.email,
                password: r.password,
            })
            .await?;
        Ok(ok(UserView::from(&user))?)
    }

    /// Logs in with a username or email and a password; answers a session token (a JWT) as `message`.
    /// Rate limited per account and per client address (429 with `Retry-After`).
    #[oai(path = "/auth/basic/login", method = "post", operation_id = "login")]
    async fn login(&self, req: &poem::Request, body: Json<LoginRequest>) -> Limited<String> {
        let client = crate::limits::client_ip(req, &self.0.http.trusted_proxies);
        self.0
            .limits
            .login(&body.loginname, client)
            .map_err(LimitedError::rate_limited)?;
        let token = self.0.app.login(&body.loginname, &body.password).await?;
        // The sessions list shows which browser or client opened each session.
        self.0
            .app
            .note_session_client(&token, req.header(poem::http::header::USER_AGENT))
            .await?;
        Ok(ok(token)?)
    }

    /// Ends the session whose token authenticates this request; the token stops working at once.
    #[oai(path = "/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(&self, auth: Token) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.logout(&caller).await?;
        ok("logged out".to_owned())
    }

    /// The logged-in user.
    #[oai(path = "/user", method = "get", operation_id = "get_user")]
    async fn user(&self, auth: Token) -> Reply<UserView> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(UserView::from(caller.require_user()?))
    }

    /// The user's API keys (without their secrets).
    #[oai(path = "/user/keys", method = "get", operation_id = "list_keys")]
    async fn keys(&self, auth: Token) -> Reply<Vec<ApiKeyView>> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        ok(self
            .0
            .app
            .api_keys(&caller)
            .await?
            .iter()
            .map(ApiKeyView::from)
            .collect())
    }

    /// Creates an API key. The secret is in the answer's `key` and is never shown again.
    #[oai(path = "/user/keys", method = "post", operation_id = "create_key")]
    async fn create_key(&self, auth: Token, body: Json<NewKeyRequest>) -> Reply<CreatedKey> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        let permissions = body.0.permissions.as_deref().map(parse_permissions).transpose()?;
        let new = NewKey {
            name: body.0.name,
            organization: body.0.organization,
            permissions,
        };
        let (key, token) = self.0.app.create_api_key(&caller, new).await?;
        ok(CreatedKey {
            id: key.id.0,
            name: key.name,
            key: token,
        })
    }

    /// Deletes an API key; it stops working at once.
    #[oai(path = "/user/keys/:id", method = "delete", operation_id = "delete_key")]
    async fn delete_key(&self, auth: Token, id: Path<Uuid>) -> Reply<String> {
        let caller = self.0.caller(Some(&auth.0.token)).await?;
        self.0.app.delete_api_key(&caller, ApiKeyId(id.0)).await?;
        ok("deleted".to_owned())
    }
}
