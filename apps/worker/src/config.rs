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
    /// Who dials: the worker (`GRADIENT_SERVER_URL`) or the server (`GRADIENT_DISCOVERABLE`).
    pub link: LinkMode,
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
    /// Nix processes at once, over builds, pushes, evaluations and queries (`GRADIENT_MAX_NIXDAEMON_CONNECTIONS`,
    /// default 32): each talks to the store (the daemon) for as long as it runs.
    pub max_nixdaemon_connections: u32,
    pub gcroots_dir: Option<PathBuf>,
    /// Ask Nix's substituters at start and leave out those that do not answer (`GRADIENT_PROBE_SUBSTITUTERS`,
    /// default true).
    pub probe_substituters: bool,
    /// Log levels: the default (`GRADIENT_LOG_LEVEL_DEFAULT`, default `info`) and per area (`…_EVAL`,
    /// `…_BUILD`, `…_PROTO`; unset or `null`: the default). See [`WorkerConfig::log_filter`].
    pub log_level: LogLevels,
}

/// How the worker and the server meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMode {
    /// The worker dials the server's `/proto` at this URL (a worker behind NAT).
    Dial(String),
    /// The worker listens (`GRADIENT_DISCOVERABLE`) at `GRADIENT_LISTEN_ADDR`:`GRADIENT_PORT`, path `/proto`,
    /// and the server dials it (a server behind a firewall); at most `max_connections`
    /// (`GRADIENT_MAX_PROTO_CONNECTIONS`) connections at once, beyond which it answers 503 with `Retry-After`.
    Listen {
        addr: std::net::SocketAddr,
        max_connections: u32,
    },
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

    /// A capability this worker does not have: `true` stops start-up with `why`.
    fn refused_flag(&self, var: &'static str, why: &str) -> Result<bool, ConfigError> {
        if self.flag(var, false)? {
            return Err(ConfigError {
                var,
                problem: format!("not supported: {why}; unset it or set false"),
            });
        }
        Ok(false)
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
        let server_url = v.get("GRADIENT_SERVER_URL");
        let discoverable = v.flag("GRADIENT_DISCOVERABLE", false)?;
        let listen_ip = v
            .get_or("GRADIENT_LISTEN_ADDR", Some(DEFAULT_LISTEN_ADDR))
            .unwrap_or_else(|| DEFAULT_LISTEN_ADDR.to_owned());
        let listen_ip: std::net::IpAddr = listen_ip.trim_matches(['[', ']']).parse().map_err(|_| ConfigError {
            var: "GRADIENT_LISTEN_ADDR",
            problem: format!("'{listen_ip}' is not an IP address"),
        })?;
        let port = v.num("GRADIENT_PORT", 3100)?;
        let port = u16::try_from(port).map_err(|_| ConfigError {
            var: "GRADIENT_PORT",
            problem: format!("{port} is not a port"),
        })?;
        let link = match (server_url, discoverable) {
            (Some(url), false) => {
                if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                    return Err(ConfigError {
                        var: "GRADIENT_SERVER_URL",
                        problem: format!("'{url}' is not a ws:// or wss:// URL"),
                    });
                }
                LinkMode::Dial(url)
            }
            (None, false) => {
                return Err(ConfigError {
                    var: "GRADIENT_SERVER_URL",
                    problem: "required (e.g. ws://127.0.0.1:3000/proto), unless GRADIENT_DISCOVERABLE=true".into(),
                });
            }
            (Some(_), true) => {
                return Err(ConfigError {
                    var: "GRADIENT_SERVER_URL",
                    problem: "a discoverable worker is dialed by the server and dials nothing; unset one of the two"
                        .into(),
                });
            }
            (None, true) => LinkMode::Listen {
                addr: std::net::SocketAddr::new(listen_ip, port),
                max_connections: 0,
            },
        };
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
        let peers_file = v.secret_file("GRADIENT_PEERS_FILE");
        let ca_file = v.get("GRADIENT_CA_FILE").map(PathBuf::from);
        let state_dir = PathBuf::from(
            v.get_or("GRADIENT_STATE_DIR", Some(DEFAULT_STATE_DIR))
                .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned()),
        );
        let capabilities = gradient_domain::model::Capabilities {
            fetch: v.flag("GRADIENT_CAPABILITIES_FETCH", false)?,
            eval: v.flag("GRADIENT_CAPABILITIES_EVAL", false)?,
            build: v.flag("GRADIENT_CAPABILITIES_BUILD", false)?,
            sign: v.refused_flag("GRADIENT_CAPABILITIES_SIGN", SIGN_REFUSED)?,
        };
        v.refused_flag("GRADIENT_CAPABILITIES_FEDERATE", FEDERATE_REFUSED)?;
        let max_proto_connections = match v.num("GRADIENT_MAX_PROTO_CONNECTIONS", 16)? {
            0 => {
                return Err(ConfigError {
                    var: "GRADIENT_MAX_PROTO_CONNECTIONS",
                    problem: "must be at least 1".into(),
                });
            }
            n => n,
        };
        let link = match link {
            LinkMode::Listen { addr, .. } => LinkMode::Listen {
                addr,
                max_connections: max_proto_connections,
            },
            dial => {
                // A dialing worker listens on nothing: a listener option set for it is a mistake (or a variable
                // meant for the server), not something to ignore silently.
                for var in LISTENER_ONLY {
                    if v.vars.get(var).is_some_and(|value| !value.trim().is_empty()) {
                        return Err(ConfigError {
                            var,
                            problem: "only a listening worker uses it (GRADIENT_DISCOVERABLE=true); this worker dials GRADIENT_SERVER_URL, so unset it".into(),
                        });
                    }
                }
                dial
            }
        };
        Ok(Self {
            link,
            worker_id,
            peers_file,
            ca_file,
            state_dir,
            capabilities,
            max_concurrent_builds: v.num("GRADIENT_MAX_CONCURRENT_BUILDS", 100)?,
            eval_workers: match v.num("GRADIENT_EVAL_WORKERS", 1)? {
                0 => {
                    return Err(ConfigError {
                        var: "GRADIENT_EVAL_WORKERS",
                        problem: "must be at least 1".into(),
                    });
                }
                n => n,
            },
            max_concurrent_evaluations: v.num("GRADIENT_MAX_CONCURRENT_EVALUATIONS", 1)?,
            max_evaluations_per_worker: v.num("GRADIENT_MAX_EVALUATIONS_PER_WORKER", 20)?,
            max_nixdaemon_connections: match v.num("GRADIENT_MAX_NIXDAEMON_CONNECTIONS", 32)? {
                0 => {
                    return Err(ConfigError {
                        var: "GRADIENT_MAX_NIXDAEMON_CONNECTIONS",
                        problem: "must be at least 1".into(),
                    });
                }
                n => n,
            },
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

/// Why `capabilities.sign` is refused.
pub const SIGN_REFUSED: &str = "the server signs every path with its cache's own key as the path is pushed, so \
Nix clients trust one key per cache; a worker holds no signing key";
/// Why `capabilities.federate` is refused.
pub const FEDERATE_REFUSED: &str = "Gradient has no federation of servers for a worker to relay between";

/// The listener's options, refused on a dialing worker.
const LISTENER_ONLY: [&str; 3] = [
    "GRADIENT_LISTEN_ADDR",
    "GRADIENT_PORT",
    "GRADIENT_MAX_PROTO_CONNECTIONS",
];

const DEFAULT_STATE_DIR: &str = "/var/lib/gradient-worker";
const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1";
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
    fn evaluations_per_evaluator_process_are_read_zero_meaning_never() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        let var = "GRADIENT_MAX_EVALUATIONS_PER_WORKER";
        for (value, want) in [("4", 4), ("0", 0)] {
            let c = WorkerConfig::from_vars(&vars(&[url, (var, value)])).unwrap();
            assert_eq!(c.max_evaluations_per_worker, want);
        }
        let e = WorkerConfig::from_vars(&vars(&[url, (var, "-1")])).unwrap_err();
        assert_eq!(e.to_string(), format!("{var}: invalid value '-1': expected a number"));
    }

    #[test]
    fn a_discoverable_worker_listens_instead_of_dialing() {
        let c = WorkerConfig::from_vars(&vars(&[("GRADIENT_DISCOVERABLE", "true")])).unwrap();
        assert_eq!(
            c.link,
            LinkMode::Listen {
                addr: "127.0.0.1:3100".parse().unwrap(),
                max_connections: 16
            }
        );
        let c = WorkerConfig::from_vars(&vars(&[
            ("GRADIENT_DISCOVERABLE", "true"),
            ("GRADIENT_LISTEN_ADDR", "::"),
            ("GRADIENT_PORT", "4100"),
            ("GRADIENT_MAX_PROTO_CONNECTIONS", "2"),
        ]))
        .unwrap();
        assert_eq!(
            c.link,
            LinkMode::Listen {
                addr: "[::]:4100".parse().unwrap(),
                max_connections: 2
            }
        );
        let dial = WorkerConfig::from_vars(&vars(&[("GRADIENT_SERVER_URL", "ws://x/proto")])).unwrap();
        assert_eq!(dial.link, LinkMode::Dial("ws://x/proto".into()));
        // Empty counts as unset.
        let dial = WorkerConfig::from_vars(&vars(&[("GRADIENT_SERVER_URL", "ws://x/proto"), ("GRADIENT_PORT", "")]));
        assert!(dial.is_ok());
        for (pairs, want) in [
            (
                vec![
                    ("GRADIENT_DISCOVERABLE", "true"),
                    ("GRADIENT_SERVER_URL", "ws://x/proto"),
                ],
                "GRADIENT_SERVER_URL: a discoverable worker",
            ),
            (
                vec![
                    ("GRADIENT_DISCOVERABLE", "true"),
                    ("GRADIENT_LISTEN_ADDR", "example.com"),
                ],
                "GRADIENT_LISTEN_ADDR: 'example.com' is not an IP address",
            ),
            (
                vec![("GRADIENT_DISCOVERABLE", "true"), ("GRADIENT_PORT", "70000")],
                "GRADIENT_PORT: 70000 is not a port",
            ),
            (
                vec![
                    ("GRADIENT_DISCOVERABLE", "true"),
                    ("GRADIENT_MAX_PROTO_CONNECTIONS", "0"),
                ],
                "GRADIENT_MAX_PROTO_CONNECTIONS: must be at least 1",
            ),
        ] {
            let e = WorkerConfig::from_vars(&vars(&pairs)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn a_dialing_worker_refuses_the_listeners_options() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        for (var, value) in [
            ("GRADIENT_LISTEN_ADDR", "127.0.0.1"),
            ("GRADIENT_PORT", "3000"),
            ("GRADIENT_MAX_PROTO_CONNECTIONS", "16"),
        ] {
            let e = WorkerConfig::from_vars(&vars(&[url, (var, value)]))
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "{var}: only a listening worker uses it (GRADIENT_DISCOVERABLE=true); this worker dials GRADIENT_SERVER_URL, so unset it"
                )
            );
        }
    }

    #[test]
    fn signing_and_federating_refuse_to_start_saying_why() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        for (var, why) in [
            ("GRADIENT_CAPABILITIES_SIGN", "the server signs every path"),
            ("GRADIENT_CAPABILITIES_FEDERATE", "no federation"),
        ] {
            assert!(WorkerConfig::from_vars(&vars(&[url, (var, "false")])).is_ok());
            let e = WorkerConfig::from_vars(&vars(&[url, (var, "true")]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{var}: not supported: ")), "{e}");
            assert!(e.contains(why) && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn evaluator_processes_are_at_least_one() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        let c = WorkerConfig::from_vars(&vars(&[url, ("GRADIENT_EVAL_WORKERS", "4")])).unwrap();
        assert_eq!(c.eval_workers, 4);
        let e = WorkerConfig::from_vars(&vars(&[url, ("GRADIENT_EVAL_WORKERS", "0")])).unwrap_err();
        assert_eq!(e.to_string(), "GRADIENT_EVAL_WORKERS: must be at least 1");
    }

    #[test]
    fn the_nix_daemon_connections_bound_is_at_least_one() {
        let url = ("GRADIENT_SERVER_URL", "ws://127.0.0.1:3000/proto");
        let c = WorkerConfig::from_vars(&vars(&[url])).unwrap();
        assert_eq!(c.max_nixdaemon_connections, 32);
        let c = WorkerConfig::from_vars(&vars(&[url, ("GRADIENT_MAX_NIXDAEMON_CONNECTIONS", "3")])).unwrap();
        assert_eq!(c.max_nixdaemon_connections, 3);
        let e = WorkerConfig::from_vars(&vars(&[url, ("GRADIENT_MAX_NIXDAEMON_CONNECTIONS", "0")])).unwrap_err();
        assert_eq!(e.to_string(), "GRADIENT_MAX_NIXDAEMON_CONNECTIONS: must be at least 1");
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
                "GRADIENT_DISCOVERABLE",
                "GRADIENT_LISTEN_ADDR",
                "GRADIENT_PORT",
                "GRADIENT_WORKER_ID",
                "GRADIENT_PEERS_FILE",
                "GRADIENT_CA_FILE",
                "GRADIENT_STATE_DIR",
                "GRADIENT_CAPABILITIES_FETCH",
                "GRADIENT_CAPABILITIES_EVAL",
                "GRADIENT_CAPABILITIES_BUILD",
                "GRADIENT_CAPABILITIES_SIGN",
                "GRADIENT_CAPABILITIES_FEDERATE",
                "GRADIENT_MAX_PROTO_CONNECTIONS",
                "GRADIENT_MAX_CONCURRENT_BUILDS",
                "GRADIENT_EVAL_WORKERS",
                "GRADIENT_MAX_CONCURRENT_EVALUATIONS",
                "GRADIENT_MAX_EVALUATIONS_PER_WORKER",
                "GRADIENT_MAX_NIXDAEMON_CONNECTIONS",
                "GRADIENT_PROBE_SUBSTITUTERS",
                "GRADIENT_GCROOTS_DIR",
                "GRADIENT_LOG_LEVEL_DEFAULT",
                "GRADIENT_LOG_LEVEL_EVAL",
                "GRADIENT_LOG_LEVEL_BUILD",
                "GRADIENT_LOG_LEVEL_PROTO",
            ]
        );
        let peers = &schema[5];
        assert!(peers.secret_file && schema.iter().filter(|v| v.secret_file).count() == 1);
        let default = |name: &str| schema.iter().find(|v| v.name == name).unwrap().default.clone();
        assert_eq!(default("GRADIENT_MAX_CONCURRENT_BUILDS").as_deref(), Some("100"));
        assert_eq!(default("GRADIENT_MAX_NIXDAEMON_CONNECTIONS").as_deref(), Some("32"));
        assert_eq!(default("GRADIENT_CAPABILITIES_FEDERATE").as_deref(), Some("false"));
        assert_eq!(
            default("GRADIENT_GCROOTS_DIR").as_deref(),
            Some("/nix/var/nix/gcroots/gradient")
        );
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
