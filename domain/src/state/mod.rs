//! Declarative state (`docs/state.md`): the document the NixOS module renders, checked ([`document`]), and
//! the plan that brings the database to it ([`plan`]: create / update / delete / unmanage per entity, and the
//! storage writes that do it in one transaction). Pure: the server reads the files and the database, and
//! [`crate::service`]'s `plan_state` / `apply_state` put the pieces together.

pub mod document;
pub mod plan;

pub use document::{Document, SecretFile};
pub use plan::{Action, Change, Context, Current, Plan, Secrets};

/// What is wrong with a state document, and where: `at` names the entry and the field
/// (`projects.web-app.repository`), or `document` for the document as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct StateError {
    pub at: String,
    pub message: String,
}

impl StateError {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }
}

/// A secret file's contents as the document means them: without the trailing line ends an editor or `echo`
/// adds.
pub fn secret_contents(raw: &str) -> &str {
    raw.trim_end_matches(['\n', '\r'])
}

#[cfg(test)]
mod tests;
