use super::Timestamp;
use crate::UserId;

/// What a one-time token sent by mail lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenPurpose {
    /// Confirm that the account's address reaches its owner.
    VerifyEmail,
    /// Set a new password without the old one.
    ResetPassword,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verify_email" => Some(Self::VerifyEmail),
            "reset_password" => Some(Self::ResetPassword),
            _ => None,
        }
    }
}

/// A single-use token mailed to a user, as stored: only its SHA-256 (the link in the mail holds the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailToken {
    /// Lowercase hex SHA-256 of the token.
    pub hash: String,
    pub user_id: UserId,
    pub purpose: TokenPurpose,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}
