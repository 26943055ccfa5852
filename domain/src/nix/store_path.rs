//! Store paths: `/nix/store/<hash>-<name>`, where the hash is 32 nix32 characters (160 bits) and the name
//! follows Nix's rules. Gradient only serves the default store directory.

use std::fmt;
use std::str::FromStr;

use super::nix32;

pub const STORE_DIR: &str = "/nix/store";
/// Characters in the hash part of a store path.
pub const HASH_PART_LEN: usize = 32;
/// Longest name Nix accepts (255, the file name limit, minus the hash and the dash, minus 11 for `.drv`
/// suffixes and the like).
pub const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("'{0}' is not in the store directory {STORE_DIR}")]
    NotInStore(String),
    #[error("'{0}' is not a store path (it has a subpath)")]
    Subpath(String),
    #[error("store path basename '{0}' is not '<32-character hash>-<name>'")]
    Shape(String),
    #[error("store path hash '{0}' is not 32 nix32 characters")]
    Hash(String),
    #[error("store path name is empty")]
    EmptyName,
    #[error("store path name '{0}' is longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("store path name '{0}' starts with '.'")]
    NameStartsWithDot(String),
    #[error("store path name '{name}' contains the forbidden character {ch:?}")]
    NameChar { name: String, ch: char },
}

/// A valid store path. Holds the basename; the store directory is always [`STORE_DIR`]. Ordered like Nix
/// orders store path sets (by hash part, then name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    basename: String,
}

impl StorePath {
    /// Parses an absolute path, `/nix/store/<hash>-<name>`.
    pub fn parse(path: &str) -> Result<Self, StorePathError> {
        let rest = path
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_owned()))?;
        if rest.contains('/') {
            return Err(StorePathError::Subpath(path.to_owned()));
        }
        Self::from_basename(rest)
    }

    /// Parses `<hash>-<name>`, as narinfo References and Deriver write store paths.
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        let shape = || StorePathError::Shape(basename.to_owned());
        let hash = basename.get(..HASH_PART_LEN).ok_or_else(shape)?;
        let name = basename[HASH_PART_LEN..].strip_prefix('-').ok_or_else(shape)?;
        if !hash.bytes().all(|b| nix32::digit(b).is_some()) {
            return Err(StorePathError::Hash(hash.to_owned()));
        }
        check_name(name)?;
        Ok(Self {
            basename: basename.to_owned(),
        })
    }

    /// The 32 nix32 characters naming the path in the cache (`<hash>.narinfo`).
    pub fn hash_part(&self) -> &str {
        &self.basename[..HASH_PART_LEN]
    }

    /// The 20 bytes the hash part encodes.
    pub fn digest(&self) -> [u8; 20] {
        // The hash part was checked to be 32 nix32 characters, which always decode to exactly 20 bytes.
        nix32::decode_array(self.hash_part()).unwrap_or([0; 20])
    }

    pub fn name(&self) -> &str {
        &self.basename[HASH_PART_LEN + 1..]
    }

    /// `<hash>-<name>`.
    pub fn basename(&self) -> &str {
        &self.basename
    }

    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

/// Whether `hash` could be the hash part of a store path (32 nix32 characters).
pub fn is_hash_part(hash: &str) -> bool {
    hash.len() == HASH_PART_LEN && hash.bytes().all(|b| nix32::digit(b).is_some())
}

fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(name.to_owned()));
    }
    if name.starts_with('.') {
        return Err(StorePathError::NameStartsWithDot(name.to_owned()));
    }
    if let Some(ch) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(StorePathError::NameChar {
            name: name.to_owned(),
            ch,
        });
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}", self.basename)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serialized as the full path.
impl serde::Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "yaaiprwiih6qszla0lwxjhq0bw9484n8";

    #[test]
    fn parses_valid_paths() {
        let cases = [
            ("dep", false),
            ("tree-1.0", false),
            ("lxidm0ylgmdpgwf1g6njblbfz5f1j3pa-dep.drv", true),
            ("a", false),
            ("A-Z_0.9+x?y=z", false),
            ("-leading-dash", false),
            ("x..", false),
        ];
        for (name, drv) in cases {
            let text = format!("/nix/store/{H}-{name}");
            let p = StorePath::parse(&text).unwrap();
            assert_eq!(p.hash_part(), H);
            assert_eq!(p.name(), name);
            assert_eq!(p.basename(), format!("{H}-{name}"));
            assert_eq!(p.to_string(), text);
            assert_eq!(p.is_derivation(), drv, "{name}");
            assert_eq!(StorePath::from_basename(p.basename()).unwrap(), p);
            assert_eq!(text.parse::<StorePath>().unwrap(), p);
        }
        let longest = "x".repeat(MAX_NAME_LEN);
        assert_eq!(
            StorePath::from_basename(&format!("{H}-{longest}")).unwrap().name(),
            longest
        );
    }

    #[test]
    fn refuses_invalid_paths() {
        let long = format!("/nix/store/{H}-{}", "x".repeat(MAX_NAME_LEN + 1));
        type Check = fn(&StorePathError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (format!("/gnu/store/{H}-x"), |e| {
                matches!(e, StorePathError::NotInStore(_))
            }),
            (format!("/nix/store{H}-x"), |e| {
                matches!(e, StorePathError::NotInStore(_))
            }),
            (format!("nix/store/{H}-x"), |e| {
                matches!(e, StorePathError::NotInStore(_))
            }),
            (format!("/nix/store/{H}-x/bin"), |e| {
                matches!(e, StorePathError::Subpath(_))
            }),
            (format!("/nix/store/{H}-x/"), |e| {
                matches!(e, StorePathError::Subpath(_))
            }),
            ("/nix/store/".to_owned(), |e| matches!(e, StorePathError::Shape(_))),
            (format!("/nix/store/{H}"), |e| matches!(e, StorePathError::Shape(_))),
            (format!("/nix/store/{H}_x"), |e| matches!(e, StorePathError::Shape(_))),
            (format!("/nix/store/{}-x", &H[1..]), |e| {
                matches!(e, StorePathError::Shape(_))
            }),
            (format!("/nix/store/{}-x", H.replace('y', "e")), |e| {
                matches!(e, StorePathError::Hash(_))
            }),
            (format!("/nix/store/{}-x", H.to_uppercase()), |e| {
                matches!(e, StorePathError::Hash(_))
            }),
            (format!("/nix/store/{H}-"), |e| *e == StorePathError::EmptyName),
            (long, |e| matches!(e, StorePathError::NameTooLong(_))),
            (format!("/nix/store/{H}-.hidden"), |e| {
                matches!(e, StorePathError::NameStartsWithDot(_))
            }),
            (format!("/nix/store/{H}-a b"), |e| {
                matches!(e, StorePathError::NameChar { ch: ' ', .. })
            }),
            (format!("/nix/store/{H}-a:b"), |e| {
                matches!(e, StorePathError::NameChar { ch: ':', .. })
            }),
            (format!("/nix/store/{H}-é"), |e| {
                matches!(e, StorePathError::NameChar { ch: 'é', .. })
            }),
            (format!("/nix/store/{H}-a\nb"), |e| {
                matches!(e, StorePathError::NameChar { ch: '\n', .. })
            }),
            // A multi-byte character straddling the end of the hash part.
            (format!("/nix/store/{}é-x", &H[..31]), |e| {
                matches!(e, StorePathError::Shape(_))
            }),
        ];
        for (text, check) in cases {
            let err = StorePath::parse(&text).unwrap_err();
            assert!(check(&err), "{text:?}: {err:?}");
        }
    }

    #[test]
    fn digest_and_order() {
        let a = StorePath::from_basename(&format!("{H}-b")).unwrap();
        let b = StorePath::from_basename("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a").unwrap();
        assert!(a < b, "ordered by hash part first");
        assert_eq!(b.digest(), [0xff; 20]);
        assert_eq!(nix32::encode(&a.digest()), H);
        assert!(is_hash_part(H));
        assert!(!is_hash_part(&H[1..]));
    }

    #[test]
    fn serde_uses_the_full_path() {
        let p = StorePath::from_basename(&format!("{H}-dep")).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"/nix/store/{H}-dep\""));
        assert_eq!(serde_json::from_str::<StorePath>(&json).unwrap(), p);
        assert!(serde_json::from_str::<StorePath>("\"/tmp/x\"").is_err());
    }
}
