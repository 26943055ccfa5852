//! Validated names. A `Name` can only be built from a string that follows the rules, so every org, project,
//! cache and user name in the system is valid by construction.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a name or email was refused; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} must be at most {max} characters long")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} may only contain lowercase letters, digits, '-' and '_' (found {found:?})")]
    BadCharacter { what: &'static str, found: char },
    #[error("{what} must start with a lowercase letter or a digit")]
    BadStart { what: &'static str },
    #[error("'{0}' is not a valid email address")]
    Email(String),
}

/// The name of an organization, project, cache or user: lowercase letters, digits, `-` and `_`,
/// 1 to 64 characters, starting with a letter or digit (so it can never look like an option or a path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 64;

    /// Parses `s` as a name; `what` ("organization name", ...) is used in the error message.
    pub fn parse_as(s: &str, what: &'static str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty { what });
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what,
                max: Self::MAX_LEN,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(NameError::BadCharacter { what, found });
        }
        if s.starts_with(['-', '_']) {
            return Err(NameError::BadStart { what });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn parse(s: &str) -> Result<Self, NameError> {
        Self::parse_as(s, "name")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An email address: one `@` with a non-empty local part and a dotted domain, no spaces, at most 254 bytes.
/// Stored lowercase so that lookups are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let s = s.trim();
        let bad = || NameError::Email(s.to_owned());
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(bad());
        }
        Ok(Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest branch or ref accepted (Git's own limit on a ref name's path component length is the file
/// system's, 255 bytes).
pub const MAX_REF_LEN: usize = 255;

/// Checks a branch name: 1 to [`MAX_REF_LEN`] bytes, no control characters, spaces or other whitespace, not
/// starting with `-` (it would read as an option to `git`), no `..`. The message is shown to the user.
pub fn check_branch(branch: &str) -> Result<(), String> {
    let shown: String = branch.chars().take(64).flat_map(char::escape_default).collect();
    if branch.is_empty() {
        return Err("a branch name must not be empty".into());
    }
    if branch.len() > MAX_REF_LEN {
        return Err(format!(
            "a branch name must be at most {MAX_REF_LEN} bytes long ('{shown}…' has {})",
            branch.len()
        ));
    }
    if branch.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "'{shown}' is not a valid branch name (no spaces or control characters)"
        ));
    }
    if branch.starts_with('-') || branch.contains("..") {
        return Err(format!("'{shown}' is not a valid branch name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_short_printable_and_not_options() {
        let longest = "b".repeat(MAX_REF_LEN);
        let too_long = "b".repeat(3000);
        for ok in ["main", "release/1.2", "feature/ünïcode", longest.as_str()] {
            assert!(check_branch(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            too_long.as_str(),
            "a\0b",
            "a\tb",
            "a\nb",
            "a\u{7f}b",
            "a\u{85}b",
            "a b",
            "-x",
            "a..b",
        ] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
        // The message never carries the control characters themselves.
        let message = check_branch("a\u{1b}[2Jb").unwrap_err();
        assert!(!message.chars().any(char::is_control), "{message:?}");
    }

    #[test]
    fn names_follow_the_rules() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        let table: &[(&str, bool)] = &[
            ("nixos", true),
            ("my-org_2", true),
            ("0day", true),
            (&long, true),
            ("", false),
            (&too_long, false),
            ("MyOrg", false),
            ("my org", false),
            ("my.org", false),
            ("-org", false),
            ("_org", false),
            ("ørg", false),
            ("../etc", false),
        ];
        for (input, ok) in table {
            assert_eq!(Name::parse(input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn name_errors_say_what_is_wrong() {
        let err = Name::parse_as("Bad", "organization name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "organization name may only contain lowercase letters, digits, '-' and '_' (found 'B')"
        );
    }

    #[test]
    fn names_deserialize_only_when_valid() {
        assert!(serde_json::from_str::<Name>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<Name>("\"Not OK\"").is_err());
    }

    #[test]
    fn emails() {
        let table = [
            ("a@b.io", true),
            ("First.Last@Example.COM", true),
            ("", false),
            ("plain", false),
            ("a@b", false),
            ("@b.io", false),
            ("a@@b.io", false),
            ("a b@c.io", false),
            ("a@.io", false),
        ];
        for (input, ok) in table {
            assert_eq!(Email::parse(input).is_ok(), ok, "{input:?}");
        }
        assert_eq!(Email::parse("First@Example.COM").unwrap().as_str(), "first@example.com");
    }
}
