//! Typed identifiers: a `UserId` can never be passed where an `OrgId` is expected.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) identifier.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    UserId,
    SessionId,
    ApiKeyId,
    OrgId,
    RoleId,
    ProjectId,
    CacheId,
    EvaluationId,
    /// An organization's build of one derivation.
    BuildId,
    /// The id a worker announces for itself (a v4 UUID it persists in its state directory).
    WorkerId,
    /// One registration of a worker under an organization; the worker answers challenges for it.
    PeerId,
    /// A commit status in the outbox.
    StatusReportId,
    /// A project's action (an outgoing webhook or mail on evaluation events).
    ActionId,
    /// One delivery of an action.
    DeliveryId,
);
