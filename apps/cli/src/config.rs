//! `~/.config/gradient/config.toml`: the servers the user logged in to, by name, with their API keys, and
//! which one commands use by default. Written with mode 0600: it holds credentials.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The server commands use when `--server` does not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, Server>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// The server's address, e.g. `https://gradient.example.com`.
    pub url: String,
    /// The API key (`GRAD…`).
    pub key: String,
}

/// Where the file is: `$GRADIENT_CONFIG`, else `$XDG_CONFIG_HOME/gradient/config.toml`, else
/// `~/.config/gradient/config.toml`.
pub fn path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("GRADIENT_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(
            std::env::var_os("HOME").ok_or("HOME is not set, so there is no ~/.config; set GRADIENT_CONFIG")?,
        )
        .join(".config"),
    };
    Ok(base.join("gradient").join("config.toml"))
}

impl Config {
    /// The file's contents, or an empty configuration when there is no file yet.
    pub fn load(path: &Path) -> Result<Config, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| format!("{} is not a valid configuration: {}", path.display(), e.message())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the file (and its directory), readable by the user only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = toml::to_string(self).map_err(|e| format!("cannot write the configuration: {e}"))?;
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        // A file that existed with wider permissions keeps them through `open`: narrow them.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The server named `name`, or the default one.
    pub fn server(&self, name: Option<&str>) -> Result<(String, &Server), String> {
        let name = match name.or(self.default.as_deref()) {
            Some(n) => n,
            None if self.servers.len() == 1 => self.servers.keys().next().map(String::as_str).unwrap_or_default(),
            None => return Err("not logged in to any server: run `gradient login SERVER` first".into()),
        };
        self.servers
            .get(name)
            .map(|s| (name.to_owned(), s))
            .ok_or_else(|| format!("no server named \"{name}\": run `gradient login URL --name {name}` first"))
    }
}

/// The name a server gets when `login` is not given one: its host (and port).
pub fn default_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_configuration_is_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("gradient/config.toml");
        let mut config = Config::default();
        config.servers.insert(
            "ci".into(),
            Server {
                url: "https://ci.example.com".into(),
                key: "GRADsecret".into(),
            },
        );
        config.default = Some("ci".into());
        config.save(&path).expect("saved");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Config::load(&path).expect("read"), config);
        assert_eq!(config.server(None).expect("default").0, "ci");
        assert!(config.server(Some("other")).is_err());
    }

    #[test]
    fn a_server_is_named_after_its_host() {
        assert_eq!(default_name("https://ci.example.com/"), "ci.example.com");
        assert_eq!(default_name("http://127.0.0.1:3000"), "127.0.0.1:3000");
    }
}
