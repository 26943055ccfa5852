//! The worker's configuration, by the same naming rule as the server's (`serverUrl` ↔
//! `GRADIENT_SERVER_URL`, `capabilities.build` ↔ `GRADIENT_CAPABILITIES_BUILD`,
//! `settings.maxConcurrentBuilds` ↔ `GRADIENT_MAX_CONCURRENT_BUILDS`).

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub server_url: String,
    pub worker_id: Option<uuid::Uuid>,
    pub peers_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub capabilities: gradient_domain::model::Capabilities,
    pub max_concurrent_builds: u32,
    pub eval_workers: u32,
    pub max_concurrent_evaluations: u32,
    pub max_evaluations_per_worker: u32,
    pub gcroots_dir: Option<PathBuf>,
    /// Ask Nix's substituters at start and leave out those that do not answer (`GRADIENT_PROBE_SUBSTITUTERS`,
    /// default true).
    pub probe_substituters: bool,
}

impl WorkerConfig {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |var: &str| vars.get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let num = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            get(var).map_or(Ok(default), |v| {
                v.parse().map_err(|_| ConfigError {
                    var,
                    problem: format!("invalid value '{v}': expected a number"),
                })
            })
        };
        let flag = |var: &'static str| -> Result<bool, ConfigError> {
            match get(var).as_deref() {
                None | Some("false" | "0" | "no") => Ok(false),
                Some("true" | "1" | "yes") => Ok(true),
                Some(v) => Err(ConfigError {
                    var,
                    problem: format!("invalid value '{v}': expected true or false"),
                }),
            }
        };
        let server_url = get("GRADIENT_SERVER_URL").ok_or(ConfigError {
            var: "GRADIENT_SERVER_URL",
            problem: "required (e.g. ws://127.0.0.1:3000/proto)".into(),
        })?;
        if !(server_url.starts_with("ws://") || server_url.starts_with("wss://")) {
            return Err(ConfigError {
                var: "GRADIENT_SERVER_URL",
                problem: format!("'{server_url}' is not a ws:// or wss:// URL"),
            });
        }
        let worker_id = match get("GRADIENT_WORKER_ID") {
            None => None,
            Some(v) => match uuid::Uuid::parse_str(&v) {
                Ok(id) if id.get_version_num() == 4 => Some(id),
                _ => {
                    return Err(ConfigError {
                        var: "GRADIENT_WORKER_ID",
                        problem: format!("'{v}' is not a v4 UUID"),
                    });
                }
            },
        };
        Ok(Self {
            server_url,
            worker_id,
            peers_file: get("GRADIENT_PEERS_FILE").map(PathBuf::from),
            state_dir: get("GRADIENT_STATE_DIR")
                .map_or_else(|| PathBuf::from("/var/lib/gradient-worker"), PathBuf::from),
            capabilities: gradient_domain::model::Capabilities {
                fetch: flag("GRADIENT_CAPABILITIES_FETCH")?,
                eval: flag("GRADIENT_CAPABILITIES_EVAL")?,
                build: flag("GRADIENT_CAPABILITIES_BUILD")?,
                sign: flag("GRADIENT_CAPABILITIES_SIGN")?,
            },
            max_concurrent_builds: num("GRADIENT_MAX_CONCURRENT_BUILDS", 100)?,
            eval_workers: num("GRADIENT_EVAL_WORKERS", 1)?,
            max_concurrent_evaluations: num("GRADIENT_MAX_CONCURRENT_EVALUATIONS", 1)?,
            max_evaluations_per_worker: num("GRADIENT_MAX_EVALUATIONS_PER_WORKER", 20)?,
            probe_substituters: get("GRADIENT_PROBE_SUBSTITUTERS").is_none() || flag("GRADIENT_PROBE_SUBSTITUTERS")?,
            // Unset: the default directory; set but empty: no GC roots.
            gcroots_dir: match vars.get("GRADIENT_GCROOTS_DIR").map(|v| v.trim()) {
                None => Some(PathBuf::from("/nix/var/nix/gcroots/gradient")),
                Some("") => None,
                Some(v) => Some(PathBuf::from(v)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_values() {
        let c = WorkerConfig::from_vars(&vars(&[
            ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto"),
            ("GRADIENT_CAPABILITIES_BUILD", "true"),
            ("GRADIENT_MAX_CONCURRENT_BUILDS", "8"),
        ]))
        .unwrap();
        assert!(c.capabilities.build && !c.capabilities.eval);
        assert_eq!(c.max_concurrent_builds, 8);
        assert_eq!(
            (
                c.eval_workers,
                c.max_concurrent_evaluations,
                c.max_evaluations_per_worker
            ),
            (1, 1, 20)
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/gradient-worker"));
        assert!(c.probe_substituters);
        let off = WorkerConfig::from_vars(&vars(&[
            ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto"),
            ("GRADIENT_PROBE_SUBSTITUTERS", "false"),
        ]))
        .unwrap();
        assert!(!off.probe_substituters);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let table = [
            (vec![], "GRADIENT_SERVER_URL: required"),
            (
                vec![("GRADIENT_SERVER_URL", "http://x")],
                "GRADIENT_SERVER_URL: 'http://x' is not",
            ),
            (
                vec![
                    ("GRADIENT_SERVER_URL", "ws://x"),
                    ("GRADIENT_WORKER_ID", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
                ],
                "GRADIENT_WORKER_ID:",
            ),
            (
                vec![
                    ("GRADIENT_SERVER_URL", "ws://x"),
                    ("GRADIENT_CAPABILITIES_EVAL", "maybe"),
                ],
                "GRADIENT_CAPABILITIES_EVAL:",
            ),
        ];
        for (pairs, want) in table {
            let e = WorkerConfig::from_vars(&vars(&pairs)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
