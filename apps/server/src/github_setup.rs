//! The GitHub App's setup URL, `GET /github/setup`: where GitHub sends the browser of whoever installed the App
//! (`?installation_id=N&setup_action=install&code=C`, the code when the App requests user authorization during
//! installation). The page tells the user how to link the installation to their organization with the API
//! (`POST /api/v1/orgs/{org}/github-installations`), quickly: the code is good once, for 10 minutes. The page
//! decides nothing; the link is checked by the API. Values are shown only when they have the expected shape,
//! so nothing from the query reaches the page unchecked.

use crate::state::AppState;
use gradient_domain::github_app::{valid_installation_id, valid_oauth_code};
use poem::http::StatusCode;
use poem::web::Query;
use poem::{Request, Response, handler};

#[derive(serde::Deserialize)]
pub struct SetupQuery {
    installation_id: Option<String>,
    setup_action: Option<String>,
    code: Option<String>,
}

fn page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Gradient: link the GitHub App</title></head>\
         <body style=\"font-family: sans-serif; max-width: 48em; margin: 2em auto\">{body}</body></html>\n"
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        )
        .body(html)
}

#[handler]
pub async fn setup(req: &Request, Query(q): Query<SetupQuery>) -> Response {
    let state: &AppState = req.data().expect("state is attached to the setup route");
    let installation = q
        .installation_id
        .as_deref()
        .and_then(|i| i.trim().parse::<u64>().ok())
        .filter(|&i| valid_installation_id(i));
    let code = q.code.as_deref().map(str::trim).filter(|c| valid_oauth_code(c));
    let Some(code) = code else {
        return page(
            StatusCode::BAD_REQUEST,
            "<h1>No authorization code</h1><p>GitHub gave no authorization code, so Gradient cannot check that \
             you administer the installation. The App's operator must set its callback URL to this page and turn \
             on <em>Request user authorization (OAuth) during installation</em>; a new code comes from \
             authorizing the App again (<code>https://github.com/login/oauth/authorize?client_id=…</code>).</p>",
        );
    };
    // Authorizing the App again gives a code without an installation id: the user fills it in.
    let (shown, installation) = match installation {
        Some(i) => (format!("installation <strong>{i}</strong>"), i.to_string()),
        None => (
            "your installation (its id N ends the URL of its settings on GitHub, <code>…/settings/installations/N</code>)"
                .to_owned(),
            "N".to_owned(),
        ),
    };
    let action = match q.setup_action.as_deref() {
        Some("update") => "updated",
        _ => "installed",
    };
    let url = format!("{}/api/v1/orgs/ORG/github-installations", state.public_url());
    page(
        StatusCode::OK,
        &format!(
            "<h1>GitHub App {action}</h1>\
             <p>Link {shown} to your Gradient organization within 10 minutes \
             (you need the <code>manage_integrations</code> permission in it; replace ORG and API_KEY):</p>\
             <pre>curl -X POST {url} \\\n  -H 'Authorization: Bearer API_KEY' -H 'Content-Type: application/json' \\\n  \
             -d '{{\"installation_id\": {installation}, \"code\": \"{code}\"}}'</pre>\
             <p>Only linked organizations get evaluations from the App's pushes and commit statuses through it.</p>"
        ),
    )
}
