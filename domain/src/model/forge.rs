use super::Timestamp;
use crate::OrgId;

/// The forges Gradient receives pushes from and reports commit statuses to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForgeKind {
    GitHub,
    Gitea,
    Forgejo,
    GitLab,
}

/// A forge connection of an organization: its webhook secret (encrypted with the crypt secret) and, for
/// status reporting, an optional access token (encrypted too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeIntegration {
    pub id: crate::IntegrationId,
    pub org_id: OrgId,
    pub forge: ForgeKind,
    pub webhook_secret: crate::crypt::Sealed,
    pub access_token: Option<crate::crypt::Sealed>,
    pub created_at: Timestamp,
}
