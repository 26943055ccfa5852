//! `gradient cache`: the caches' list / show / create / edit / delete, `use` (Nix's settings for
//! substituting from one) and `push` (the workers' push: `gradient_domain::push` over `cache-http`).

use crate::cli::CacheCommand;
use crate::output::Out;
use crate::{Fail, Result, session};
use gradient_client::types;
use std::path::{Path, PathBuf};

pub async fn run(server: Option<&str>, c: CacheCommand, out: Out) -> Result<u8> {
    let s = session(server)?;
    let show = |c: &types::CacheView| {
        out.show(c, || {
            format!(
                "{} ({})\npublic: {}\npriority: {}\ncompression: {}\n{}",
                c.name,
                c.display_name,
                if c.public { "yes" } else { "no" },
                c.priority,
                c.compression,
                c.description
            )
            .trim_end()
            .to_owned()
        })
    };
    match c {
        CacheCommand::List => {
            let list = s.client.list_caches().await?.into_inner().message;
            out.table(&list, &["NAME", "PUBLIC", "PRIORITY", "DISPLAY NAME"], |c| {
                vec![
                    c.name.clone(),
                    if c.public { "yes" } else { "no" }.into(),
                    c.priority.to_string(),
                    c.display_name.clone(),
                ]
            });
        }
        CacheCommand::Show { name } => show(&s.client.get_cache(&name).await?.into_inner().message),
        CacheCommand::Create { name, fields } => {
            let body = types::NewCacheRequest {
                name,
                display_name: fields.display_name,
                description: fields.description,
                public: fields.public.unwrap_or_default(),
                priority: fields.priority,
                local_priority: None,
                compression: None,
            };
            show(&s.client.create_cache(&body).await?.into_inner().message);
        }
        CacheCommand::Edit { name, fields } => {
            let body = types::CachePatch {
                display_name: fields.display_name,
                description: fields.description,
                public: fields.public,
                priority: fields.priority,
                local_priority: None,
                compression: None,
            };
            show(&s.client.edit_cache(&name, &body).await?.into_inner().message);
        }
        CacheCommand::Delete { name } => {
            let m = s.client.delete_cache(&name).await?.into_inner().message;
            out.show(&m, || format!("Deleted cache {name}."));
        }
        CacheCommand::Use {
            name,
            print,
            nix_conf,
            netrc,
        } => {
            let cache = s.client.get_cache(&name).await?.into_inner().message;
            let key = s.client.get_cache_public_key(&name).await?.into_inner().message;
            let url = gradient_client::cache_url(&s.url, &name);
            let netrc_line = (!cache.public).then(|| netrc_entry(&s.url, &s.key));
            let nix_dir = || -> Result<PathBuf> { Ok(user_config_dir()?.join("nix")) };
            let netrc_path = match netrc {
                Some(p) => p,
                None => nix_dir()?.join("netrc"),
            };
            let settings = Settings {
                substituter: url.clone(),
                public_key: key.clone(),
                netrc_file: netrc_line.as_ref().map(|_| netrc_path.clone()),
            };
            if print {
                let mut text = settings.lines().join("\n");
                if let Some(line) = &netrc_line {
                    text.push_str(&format!("\n# in {}:\n{line}", netrc_path.display()));
                }
                out.show(
                    &serde_json::json!({"substituter": url, "trusted_public_key": key, "netrc": netrc_line}),
                    || text,
                );
                return Ok(0);
            }
            let conf = match nix_conf {
                Some(p) => p,
                None => nix_dir()?.join("nix.conf"),
            };
            let before = read_or_empty(&conf)?;
            write_private(&conf, &settings.merge_into(&before), false)?;
            if let Some(line) = &netrc_line {
                let before = read_or_empty(&netrc_path)?;
                write_private(&netrc_path, &merge_netrc(&before, line), true)?;
            }
            out.show(
                &serde_json::json!({"substituter": url, "trusted_public_key": key, "nix_conf": conf, "netrc": netrc_line.as_ref().map(|_| &netrc_path)}),
                || {
                    format!(
                        "Configured Nix to substitute from {url} (in {}). Nix obeys a user's substituters only for trusted users; otherwise add these settings to /etc/nix/nix.conf.",
                        conf.display()
                    )
                },
            );
        }
        CacheCommand::Push { name, paths } => {
            use gradient_domain::proto::PushTarget;
            let cache_client = gradient_cache_http::HttpCacheClient::new().map_err(Fail::failed)?;
            let nix = gradient_nix_cli::NixCli::new();
            let target = PushTarget {
                cache_url: gradient_client::cache_url(&s.url, &name),
                token: s.key.clone(),
            };
            // A spinner while Nix lists the closure and the cache says what it lacks, then a bar counting the
            // paths sent.
            let bar = (!out.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_message(format!("asking {name} which of the closure's paths it lacks"));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            let progress = |p: gradient_domain::push::Progress| {
                let Some(bar) = &bar else { return };
                match p {
                    gradient_domain::push::Progress::Missing { closure, missing } => {
                        bar.set_style(
                            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} paths")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                        bar.set_length(missing as u64);
                        bar.set_message(format!(
                            "pushing to {name} ({} of {closure} already there)",
                            closure - missing
                        ));
                    }
                    gradient_domain::push::Progress::Sent(n) => bar.inc(n as u64),
                }
            };
            let result = gradient_domain::push::push_reporting(&nix, &cache_client, &target, &paths, progress).await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let imported = result.map_err(|e| Fail::failed(format!("The push to {name} failed: {e}.")))?;
            out.show(&serde_json::json!({"cache": name, "imported": imported}), || {
                format!("Pushed to {name}: {imported} path(s) were new to the cache.")
            });
        }
    }
    Ok(0)
}

fn user_config_dir() -> Result<PathBuf> {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => Ok(PathBuf::from(x)),
        _ => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".config"))
            .ok_or_else(|| Fail::usage("HOME is not set: name the files with --nix-conf and --netrc.")),
    }
}

fn read_or_empty(p: &Path) -> Result<String> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Fail::failed(format!("Cannot read {}: {e}.", p.display()))),
    }
}

fn write_private(p: &Path, text: &str, private: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| Fail::failed(format!("Cannot write {}: {e}.", p.display()));
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(p, text).map_err(fail)?;
    if private {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    Ok(())
}

/// The netrc line that lets Nix read a private cache: the server's host, the API key as the password.
pub fn netrc_entry(server: &str, key: &str) -> String {
    format!(
        "machine {} login gradient password {key}",
        crate::config::default_name(server)
            .split(':')
            .next()
            .unwrap_or_default()
    )
}

/// `netrc` with `line` in place of any line for the same machine.
pub fn merge_netrc(netrc: &str, line: &str) -> String {
    let machine = line.split_whitespace().nth(1).unwrap_or_default();
    let mut out: Vec<&str> = netrc
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some(machine) || !l.trim_start().starts_with("machine"))
        .collect();
    out.push(line);
    out.join("\n") + "\n"
}

/// What Nix needs to substitute from a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub substituter: String,
    pub public_key: String,
    pub netrc_file: Option<PathBuf>,
}

impl Settings {
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("extra-substituters = {}", self.substituter),
            format!("extra-trusted-public-keys = {}", self.public_key),
        ];
        if let Some(p) = &self.netrc_file {
            lines.push(format!("netrc-file = {}", p.display()));
        }
        lines
    }

    /// `conf` with these settings added: each value joins the setting's existing line (once), or a new line.
    pub fn merge_into(&self, conf: &str) -> String {
        let mut lines: Vec<String> = conf.lines().map(str::to_owned).collect();
        let mut add = |setting: &str, value: &str, list: bool| {
            let found = lines
                .iter_mut()
                .find(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == setting));
            match found {
                Some(line) if list => {
                    let values: Vec<&str> = line.split_once('=').map_or("", |(_, v)| v).split_whitespace().collect();
                    if !values.contains(&value) {
                        *line = format!("{} {value}", line.trim_end());
                    }
                }
                Some(line) => *line = format!("{setting} = {value}"),
                None => lines.push(format!("{setting} = {value}")),
            }
        };
        add("extra-substituters", &self.substituter, true);
        add("extra-trusted-public-keys", &self.public_key, true);
        if let Some(p) = &self.netrc_file {
            add("netrc-file", &p.display().to_string(), false);
        }
        lines.join("\n") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_join_existing_lines_once() {
        let s = Settings {
            substituter: "https://ci.example.com/cache/main".into(),
            public_key: "main:AAAA".into(),
            netrc_file: Some("/home/u/.config/nix/netrc".into()),
        };
        let before = "experimental-features = nix-command flakes\nextra-substituters = https://other.example\n";
        let once = s.merge_into(before);
        assert_eq!(
            once,
            "experimental-features = nix-command flakes\n\
             extra-substituters = https://other.example https://ci.example.com/cache/main\n\
             extra-trusted-public-keys = main:AAAA\n\
             netrc-file = /home/u/.config/nix/netrc\n"
        );
        assert_eq!(s.merge_into(&once), once, "using the cache twice changes nothing");
    }

    #[test]
    fn the_netrc_line_replaces_the_hosts_old_one() {
        let line = netrc_entry("https://ci.example.com:8443", "GRADnew");
        assert_eq!(line, "machine ci.example.com login gradient password GRADnew");
        let before = "machine ci.example.com login gradient password GRADold\nmachine other login a password b\n";
        assert_eq!(
            merge_netrc(before, &line),
            "machine other login a password b\nmachine ci.example.com login gradient password GRADnew\n"
        );
    }
}
