//! Declarative state (`docs/state.md`): the document named by `GRADIENT_STATE_FILE`, applied at start-up and
//! on `SIGHUP`, and `gradient-server state check [--offline] FILE`. The files are read here; what they mean
//! and what changes is the domain's (`gradient_domain::state`).

use crate::state::App;
use gradient_domain::reach::NetworkPolicy;
use gradient_domain::state::{Document, Plan, Secrets, StateError};
use std::path::Path;

/// Reads and checks the document. `delete_state` missing from it takes `default_delete` (the server's
/// `GRADIENT_DELETE_STATE`).
pub fn read_document(path: &Path, network: &NetworkPolicy, default_delete: bool) -> Result<Document, StateError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StateError::new("document", format!("cannot read {}: {e}", path.display())))?;
    let mut doc = Document::parse(&text, network)?;
    doc.delete_state = Some(doc.delete_state.unwrap_or(default_delete));
    Ok(doc)
}

/// Reads every secret file the document names; a file that cannot be read is reported at its field.
pub fn read_secrets(doc: &Document) -> Result<Secrets, StateError> {
    let mut secrets = Secrets::new();
    for f in doc.secret_files() {
        let raw = std::fs::read_to_string(&f.path)
            .map_err(|e| StateError::new(f.at.clone(), format!("cannot read {}: {e}", f.path)))?;
        secrets.insert(f.path, &raw);
    }
    Ok(secrets)
}

/// Reads the document and its files and applies it in one transaction. Answers the plan applied.
pub async fn apply_file(app: &App, path: &Path, default_delete: bool) -> Result<Plan, StateError> {
    let doc = read_document(path, &app.settings().network, default_delete)?;
    let secrets = read_secrets(&doc)?;
    app.apply_state(&doc, &secrets).await
}

/// Logs a plan that was applied: one line per change, then the summary.
pub fn log_applied(path: &Path, plan: &Plan) {
    for change in &plan.changes {
        tracing::info!(target: "gradient::state", "{change}");
    }
    tracing::info!(target: "gradient::state", "{} applied ({})", path.display(), plan.summary());
}

/// Re-applies the state file on every `SIGHUP` (`systemctl reload`), logging the outcome; a refused document
/// changes nothing and the server keeps running.
pub fn spawn_reload(app: App, path: std::path::PathBuf, default_delete: bool) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "gradient::state", "cannot handle SIGHUP, state reload is off: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!(target: "gradient::state", "SIGHUP: applying {}", path.display());
            match apply_file(&app, &path, default_delete).await {
                Ok(plan) => log_applied(&path, &plan),
                Err(e) => tracing::error!(target: "gradient::state", "state: {e} (nothing was changed)"),
            }
        }
    });
}

/// `gradient-server state check [--offline] FILE`: the plan of the document, without applying it. Online it
/// reads the secret files and compares with the database the server's `GRADIENT_*` variables name; offline
/// (a build sandbox) it reads neither and plans against an empty installation.
pub async fn check(file: &Path, offline: bool) -> Result<Plan, CheckError> {
    let config = crate::config::Config::from_env();
    if offline {
        let (network, default_delete, domain) = match &config {
            Ok(c) => (crate::network_policy(c), c.delete_state, c.domain.clone()),
            Err(_) => (NetworkPolicy::default(), true, "localhost".to_owned()),
        };
        let doc = read_document(file, &network, default_delete)?;
        let crypt = gradient_domain::crypt::Crypt::from_secret(b"state check --offline: nothing is sealed for real");
        let cx = gradient_domain::state::Context {
            crypt: &crypt,
            now: chrono::Utc::now(),
            domain: &domain,
            local_worker: None,
        };
        let current = gradient_domain::state::Current::default();
        return Ok(gradient_domain::state::plan::plan(&doc, &current, None, &cx)?);
    }
    let config = config.map_err(|e| CheckError::Server(e.to_string()))?;
    let state = crate::build_state(&config)
        .await
        .map_err(|e| CheckError::Server(e.to_string()))?;
    let doc = read_document(file, &state.core.settings().network, config.delete_state)?;
    let secrets = read_secrets(&doc)?;
    Ok(state.core.plan_state(&doc, Some(&secrets)).await?)
}

/// Why `state check` failed: the document (one line naming the entry and the field), or the server's set-up.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Server(String),
}
