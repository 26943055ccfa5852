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
    /// A PEM file of extra CA certificates trusted besides the webpki roots and the system's bundle
    /// (`GRADIENT_CA_FILE`): for a `wss://` server and https caches whose certificates come from a private CA.
    pub ca_file: Option<PathBuf>,
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
    /// Log levels: the default (`GRADIENT_LOG_LEVEL_DEFAULT`, default `info`) and per area (`…_EVAL`,
    /// `…_BUILD`, `…_PROTO`; unset or `null`: the default). See [`WorkerConfig::log_filter`].
    pub log_level: LogLevels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevels {
    pub default: &'static str,
    pub eval: Option<&'static str>,
    pub build: Option<&'static str>,
    pub proto: Option<&'static str>,
}

const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// One variable the worker reads, as `gradient-worker --print-config-schema` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    /// The variable names a file holding a secret (the NixOS module passes it as a systemd credential).
    pub secret_file: bool,
    /// The value taken when the variable is unset, when it is a constant.
    pub default: Option<String>,
}

/// The variables, recording every one the parser asks for (with its default), so the schema is the parser's own.
struct Vars<'a> {
    vars: &'a HashMap<String, String>,
    read: std::cell::RefCell<Vec<Variable>>,
}

impl Vars<'_> {
    fn record(&self, name: &'static str, secret_file: bool, default: Option<String>) {
        let mut read = self.read.borrow_mut();
        match read.iter_mut().find(|v| v.name == name) {
            Some(v) => v.default = v.default.take().or(default),
            None => read.push(Variable {
                name,
                secret_file,
                default,
            }),
        }
    }

    /// The value, untrimmed, even when empty.
    fn exact(&self, var: &'static str, default: Option<&str>) -> Option<&str> {
        self.record(var, false, default.map(str::to_owned));
        self.vars.get(var).map(String::as_str)
    }

    fn get(&self, var: &'static str) -> Option<String> {
        self.get_or(var, None)
    }

    fn get_or(&self, var: &'static str, default: Option<&str>) -> Option<String> {
        self.exact(var, default)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// A log level (`trace` … `error`); `null` or unset: `None`.
    fn level(&self, var: &'static str, default: Option<&str>) -> Result<Option<&'static str>, ConfigError> {
        match self.get_or(var, default) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("null") => Ok(None),
            Some(v) => LEVELS
                .into_iter()
                .find(|l| l.eq_ignore_ascii_case(&v))
                .map(Some)
                .ok_or_else(|| ConfigError {
                    var,
                    problem: format!("invalid value '{v}': expected trace, debug, info, warn or error"),
                }),
        }
    }

    fn secret_file(&self, var: &'static str) -> Option<PathBuf> {
        self.record(var, true, None);
        self.get(var).map(PathBuf::from)
    }

    fn num(&self, var: &'static str, default: u32) -> Result<u32, ConfigError> {
        self.get_or(var, Some(&default.to_string())).map_or(Ok(default), |v| {
            v.parse().map_err(|_| ConfigError {
                var,
                problem: format!("invalid value '{v}': expected a number"),
            })
        })
    }

    /// A number this worker cannot honour yet: it evaluates with one `nix` process per job (no pool of
    /// evaluator subprocesses to size or recycle). Anything but the default stops start-up with one line.
    fn unsupported(&self, var: &'static str, default: u32) -> Result<u32, ConfigError> {
        let value = self.num(var, default)?;
        if value != default {
            return Err(ConfigError {
                var,
                problem: format!(
                    "not supported by this worker yet (it runs one nix process per evaluation); unset it or set {default}"
                ),
            });
        }
        Ok(value)
    }

    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self
            .get_or(var, Some(if default { "true" } else { "false" }))
            .as_deref()
        {
            None => Ok(default),
            Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some(v) => Err(ConfigError {
                var,
                problem: format!("invalid value '{v}': expected true or false"),
            }),
        }
    }
}

impl WorkerConfig {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::read(&Vars {
            vars,
            read: Default::default(),
        })
    }

    /// Every variable `from_vars` reads, in its order (`gradient-worker --print-config-schema`): the parser itself
    /// run on the least environment it accepts, recording what it asks for.
    pub fn schema() -> Vec<Variable> {
        let probe = HashMap::from([("GRADIENT_SERVER_URL".to_owned(), "ws://probe/proto".to_owned())]);
        let v = Vars {
            vars: &probe,
            read: Default::default(),
        };
        Self::read(&v).expect("the schema probe's variables parse");
        v.read.into_inner()
    }

    fn read(v: &Vars) -> Result<Self, ConfigError> {
        let server_url = v.get("GRADIENT_SERVER_URL").ok_or(ConfigError {
            var: "GRADIENT_SERVER_URL",
            problem: "required (e.g. ws://127.0.0.1:3000/proto)".into(),
        })?;
        if !(server_url.starts_with("ws://") || server_url.starts_with("wss://")) {
            return Err(ConfigError {
                var: "GRADIENT_SERVER_URL",
                problem: format!("'{server_url}' is not a ws:// or wss:// URL"),
            });
        }
        let worker_id = match v.get("GRADIENT_WORKER_ID") {
            None => None,
            Some(id) => match uuid::Uuid::parse_str(&id) {
                Ok(id) if id.get_version_num() == 4 => Some(id),
                _ => {
                    return Err(ConfigError {
                        var: "GRADIENT_WORKER_ID",
                        problem: format!("'{id}' is not a v4 UUID"),
                    });
                }
            },
        };
        Ok(Self {
            server_url,
            worker_id,
            peers_file: v.secret_file("GRADIENT_PEERS_FILE"),
            ca_file: v.get("GRADIENT_CA_FILE").map(PathBuf::from),
            state_dir: PathBuf::from(
                v.get_or("GRADIENT_STATE_DIR", Some(DEFAULT_STATE_DIR))
                    .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned()),
            ),
            capabilities: gradient_domain::model::Capabilities {
                fetch: v.flag("GRADIENT_CAPABILITIES_FETCH", false)?,
                eval: v.flag("GRADIENT_CAPABILITIES_EVAL", false)?,
                build: v.flag("GRADIENT_CAPABILITIES_BUILD", false)?,
                sign: v.flag("GRADIENT_CAPABILITIES_SIGN", false)?,
            },
            max_concurrent_builds: v.num("GRADIENT_MAX_CONCURRENT_BUILDS", 100)?,
            eval_workers: v.unsupported("GRADIENT_EVAL_WORKERS", 1)?,
            max_concurrent_evaluations: v.num("GRADIENT_MAX_CONCURRENT_EVALUATIONS", 1)?,
            max_evaluations_per_worker: v.unsupported("GRADIENT_MAX_EVALUATIONS_PER_WORKER", 20)?,
            probe_substituters: v.flag("GRADIENT_PROBE_SUBSTITUTERS", true)?,
            // Unset: the default directory; set but empty: no GC roots.
            gcroots_dir: match v
                .exact("GRADIENT_GCROOTS_DIR", Some(DEFAULT_GCROOTS_DIR))
                .map(str::trim)
            {
                None => Some(PathBuf::from(DEFAULT_GCROOTS_DIR)),
                Some("") => None,
                Some(dir) => Some(PathBuf::from(dir)),
            },
            log_level: LogLevels {
                default: v.level("GRADIENT_LOG_LEVEL_DEFAULT", Some("info"))?.unwrap_or("info"),
                eval: v.level("GRADIENT_LOG_LEVEL_EVAL", None)?,
                build: v.level("GRADIENT_LOG_LEVEL_BUILD", None)?,
                proto: v.level("GRADIENT_LOG_LEVEL_PROTO", None)?,
            },
        })
    }

    /// The tracing filter: the default level, and each area's own where set. The areas are targets:
    /// `gradient::eval` (evaluating and pushing `.drv` files), `gradient::build` (building and pushing outputs),
    /// `gradient::proto` (the link to the server: dialing, handshake, jobs handed out, losses).
    pub fn log_filter(&self) -> String {
        let l = &self.log_level;
        let mut filter = l.default.to_owned();
        for (target, level) in [
            ("gradient::eval", l.eval),
            ("gradient::build", l.build),
            ("gradient::proto", l.proto),
        ] {
            if let Some(level) = level {
                filter.push_str(&format!(",{target}={level}"));
            }
        }
        filter
    }
}

const DEFAULT_STATE_DIR: &str = "/var/lib/gradient-worker";
const DEFAULT_GCROOTS_DIR: &str = "/nix/var/nix/gcroots/gradient";

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
        assert_eq!(off.ca_file, None);
        let ca = WorkerConfig::from_vars(&vars(&[
            ("GRADIENT_SERVER_URL", "wss://gradient.example.com/proto"),
            ("GRADIENT_CA_FILE", "/etc/gradient/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(ca.ca_file, Some(PathBuf::from("/etc/gradient/ca.pem")));
    }

    #[test]
    fn options_without_an_effect_refuse_anything_but_their_default() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        for (var, default) in [
            ("GRADIENT_EVAL_WORKERS", "1"),
            ("GRADIENT_MAX_EVALUATIONS_PER_WORKER", "20"),
        ] {
            assert!(WorkerConfig::from_vars(&vars(&[url, (var, default)])).is_ok());
            let e = WorkerConfig::from_vars(&vars(&[url, (var, "4")]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{var}: not supported")), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn log_levels_per_area_make_the_filter() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        let c = WorkerConfig::from_vars(&vars(&[url])).unwrap();
        assert_eq!(c.log_filter(), "info");
        let c = WorkerConfig::from_vars(&vars(&[
            url,
            ("GRADIENT_LOG_LEVEL_DEFAULT", "warn"),
            ("GRADIENT_LOG_LEVEL_BUILD", "DEBUG"),
            ("GRADIENT_LOG_LEVEL_PROTO", "null"),
        ]))
        .unwrap();
        assert_eq!(c.log_filter(), "warn,gradient::build=debug");
        let e = WorkerConfig::from_vars(&vars(&[url, ("GRADIENT_LOG_LEVEL_EVAL", "loud")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("GRADIENT_LOG_LEVEL_EVAL: invalid value 'loud'"),
            "{e}"
        );
    }

    #[test]
    fn the_schema_lists_what_the_parser_reads() {
        let schema = WorkerConfig::schema();
        let names: Vec<_> = schema.iter().map(|v| v.name).collect();
        assert_eq!(
            names,
            [
                "GRADIENT_SERVER_URL",
                "GRADIENT_WORKER_ID",
                "GRADIENT_PEERS_FILE",
                "GRADIENT_CA_FILE",
                "GRADIENT_STATE_DIR",
                "GRADIENT_CAPABILITIES_FETCH",
                "GRADIENT_CAPABILITIES_EVAL",
                "GRADIENT_CAPABILITIES_BUILD",
                "GRADIENT_CAPABILITIES_SIGN",
                "GRADIENT_MAX_CONCURRENT_BUILDS",
                "GRADIENT_EVAL_WORKERS",
                "GRADIENT_MAX_CONCURRENT_EVALUATIONS",
                "GRADIENT_MAX_EVALUATIONS_PER_WORKER",
                "GRADIENT_PROBE_SUBSTITUTERS",
                "GRADIENT_GCROOTS_DIR",
                "GRADIENT_LOG_LEVEL_DEFAULT",
                "GRADIENT_LOG_LEVEL_EVAL",
                "GRADIENT_LOG_LEVEL_BUILD",
                "GRADIENT_LOG_LEVEL_PROTO",
            ]
        );
        let peers = &schema[2];
        assert!(peers.secret_file && schema.iter().filter(|v| v.secret_file).count() == 1);
        assert_eq!(schema[9].default.as_deref(), Some("100"));
        assert_eq!(schema[14].default.as_deref(), Some("/nix/var/nix/gcroots/gradient"));
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
