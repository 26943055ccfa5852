//! The NixOS module (`nixos/`), evaluated by `nix-instantiate` with nixpkgs' real `lib.evalModules`
//! (`../shared/nixpkgs-lib`, or `GRADIENT_NIXPKGS_LIB`) and a stub of the NixOS options it writes
//! (`nixos/tests/stubs.nix`); the configurations are `nixos/tests/cases.nix`. Checked against the seed's
//! option tables (`../shared/seed/configuration.md`, or `GRADIENT_SEED_CONFIGURATION`) and against the
//! variables the binaries read (`--print-config-schema`).

use crate::harness::server_binary;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A shared input next to the repository (`../shared/...`, as on CI's clone), or where `var` says.
fn shared(var: &str, relative: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| repo_root().join("..").join(relative), PathBuf::from);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (set {var} to its path); the NixOS module is not checked",
            path.display()
        );
        None
    }
}

fn nixpkgs_lib() -> Option<PathBuf> {
    shared("GRADIENT_NIXPKGS_LIB", "shared/nixpkgs-lib/lib")
}

/// Evaluates `nixos/tests/eval.nix` for one case: its JSON, or nix-instantiate's error.
fn eval(case: &str) -> Option<Result<Value, String>> {
    let lib = nixpkgs_lib()?;
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
        .arg(repo_root().join("nixos/tests/eval.nix"))
        .args(["--arg", "lib"])
        .arg(format!("import {}", lib.display()))
        .args(["--argstr", "case", case])
        .output()
        .expect("nix-instantiate runs (scripts/test installs nix-bin)");
    Some(if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn eval_ok(case: &str) -> Option<Value> {
    eval(case).map(|r| r.unwrap_or_else(|e| panic!("case {case} does not evaluate:\n{e}")))
}

fn schema(binary: &Path) -> Vec<Value> {
    let out = Command::new(binary)
        .arg("--print-config-schema")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo build -p gradient-server -p gradient-worker)",
                binary.display()
            )
        });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("schema JSON")
        .as_array()
        .expect("an array")
        .clone()
}

fn unit<'a>(v: &'a Value, name: &str) -> &'a Value {
    &v["systemd"]["services"][name]
}

fn gradient_vars(unit: &Value) -> BTreeSet<String> {
    unit["environment"]
        .as_object()
        .expect("environment")
        .keys()
        .filter(|k| k.starts_with("GRADIENT_"))
        .cloned()
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// The seed's option tables (`| Option | Default | Description |`): full option path and default text.
/// Cells are split over lines (`domain |` / `- | Public hostname |`); the worker's table is under
/// `services.gradient.worker`.
fn seed_options(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut section = "";
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.ends_with('¶') {
            section = line;
        }
        if line == "| Option | Default | Description |" {
            i += 2; // the |---| line
            let mut cells = Vec::new();
            while i < lines.len() && lines[i].trim_end().ends_with('|') {
                let row = lines[i].trim_end().trim_end_matches('|');
                cells.extend(row.split('|').map(|c| c.trim().to_owned()));
                i += 1;
            }
            assert_eq!(cells.len() % 3, 0, "a table of the seed did not parse: {cells:?}");
            let prefix = if section.starts_with("Worker Options") {
                "services.gradient.worker."
            } else {
                "services.gradient."
            };
            for row in cells.chunks(3) {
                // The seed's caddy table spells one row `reversePorxy.caddy.extraConfig`: a typo.
                let option = row[0].replace("reversePorxy.", "reverseProxy.");
                out.push((format!("{prefix}{option}"), row[1].clone()));
            }
            continue;
        }
        i += 1;
    }
    out
}

/// The options the seed's Nix examples set (`services.gradient.oidc = { clientId = …; };`, the worker's,
/// `state.projects.<name>.flake_input_overrides`, …) and the state fields its lists name (`key_file(required,
/// path): …` under "API keys" and "Roles"), as option paths.
fn seed_example_options(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.ends_with('¶') {
            section = line;
        }
        // `required = false; # set true to …`
        let line = line.split(" # ").next().unwrap_or(line).trim_end();
        let state_list = match section {
            "API keys¶" => Some("services.gradient.state.api_keys.<name>."),
            "Roles¶" => Some("services.gradient.state.roles.<name>."),
            _ => None,
        };
        if let Some(prefix) = state_list {
            // The list's items run together on one line: `key_file(required, path): ….owned_by(required, …`.
            for (at, _) in line.match_indices('(') {
                let after = &line[at + 1..];
                if !["required", "optional", "defaults"]
                    .iter()
                    .any(|w| after.starts_with(w))
                {
                    continue;
                }
                let before = &line[..at];
                let start = before
                    .rfind(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .map_or(0, |i| i + 1);
                out.push(format!("{prefix}{}", &before[start..]));
            }
            continue;
        }
        let top = line.starts_with("services.gradient");
        if let Some(path) = line.strip_suffix(" = {") {
            if top {
                stack = vec![path.to_owned()];
            } else if let Some(parent) = stack.last() {
                stack.push(format!("{parent}.{path}"));
            }
        } else if line == "};" {
            stack.pop();
        } else if let Some((name, _)) = line.split_once(" = ").filter(|_| line.ends_with(';')) {
            if top {
                out.push(name.to_owned());
            } else if let Some(parent) = stack.last() {
                out.push(format!("{parent}.{name}"));
            }
        }
    }
    out
}

/// An option path matches a declared option, whose attribute-set entries are `<name>`.
fn declared(options: &Value, path: &str) -> bool {
    let want: Vec<&str> = path.split('.').collect();
    options.as_array().expect("a list").iter().any(|o| {
        let name: Vec<&str> = o["name"].as_str().expect("a string").split('.').collect();
        name.len() == want.len() && name.iter().zip(&want).all(|(n, w)| n == w || *n == "<name>")
    })
}

#[test]
fn nixos_module_declares_every_option_the_seeds_examples_set() {
    let Some(seed) = shared("GRADIENT_SEED_CONFIGURATION", "shared/seed/configuration.md") else {
        return;
    };
    let Some(options) = eval_ok("options") else { return };
    let used = seed_example_options(&std::fs::read_to_string(seed).expect("seed"));
    for expected in [
        "services.gradient.oidc.clientSecretFile",
        "services.gradient.oidc.required",
        "services.gradient.oidc.iconUrl",
        "services.gradient.email.smtpPasswordFile",
        "services.gradient.githubApp.webhookSecretFile",
        "services.gradient.worker.capabilities.sign",
        "services.gradient.state.projects.my-project.flake_input_overrides.flake-utils.keep_url",
        "services.gradient.state.api_keys.<name>.owned_by",
    ] {
        assert!(
            used.iter().any(|u| u == expected),
            "{expected} not found in the seed's examples: {used:?}"
        );
    }
    let missing: Vec<_> = used.iter().filter(|u| !declared(&options, u)).collect();
    assert!(
        missing.is_empty(),
        "set in the seed's examples, not declared: {missing:?}"
    );
}

#[test]
fn nixos_module_declares_every_seed_option_with_its_default() {
    let Some(seed) = shared("GRADIENT_SEED_CONFIGURATION", "shared/seed/configuration.md") else {
        return;
    };
    let Some(options) = eval_ok("options") else { return };
    let seed = seed_options(&std::fs::read_to_string(seed).expect("seed"));
    assert!(seed.len() >= 58, "the seed's tables: {} options", seed.len());
    let mut problems = Vec::new();
    for (name, seed_default) in &seed {
        let Some(option) = options
            .as_array()
            .expect("a list")
            .iter()
            .find(|o| o["name"] == name.as_str())
        else {
            problems.push(format!("{name}: missing from the module"));
            continue;
        };
        // "2097152 (2 MiB)" is 2097152.
        let want = seed_default.split(" (").next().unwrap().trim();
        let default = &option["default"];
        let text = default["text"].as_str().unwrap_or("");
        let ok = match want {
            "-" => option["hasDefault"] == false,
            "auto" => default["_type"] == "literalMD" && text.starts_with("auto"),
            _ => {
                let shown = if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') && want != "\"\"" {
                    &text[1..text.len() - 1]
                } else {
                    text
                };
                default["_type"] == "literalExpression" && shown == want
            }
        };
        if !ok {
            problems.push(format!(
                "{name}: the seed's default is {seed_default}, the module's {default}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every variable the binary reads is set by the module's `full` case (every option set), under the same
/// name, and nothing else; secret files go through credentials, everything else never does.
/// The worker's variables a dialing worker's unit leaves unset: a dialing worker refuses them.
const LISTENER_ONLY: [&str; 3] = [
    "GRADIENT_LISTEN_ADDR",
    "GRADIENT_PORT",
    "GRADIENT_MAX_PROTO_CONNECTIONS",
];

/// The unit sets exactly the variables the binary reads, but for those in `unset`, which it must leave out.
fn check_environment(binary: &Path, unit: &Value, unset_here: &[&str]) {
    let schema = schema(binary);
    let read: BTreeSet<String> = schema
        .iter()
        .map(|v| v["name"].as_str().expect("a string").to_owned())
        .collect();
    let set = gradient_vars(unit);
    for var in unset_here {
        assert!(!set.contains(*var), "{var} is set: {set:?}");
    }
    let unset: Vec<_> = read
        .difference(&set)
        .filter(|v| !unset_here.contains(&v.as_str()))
        .collect();
    assert!(
        unset.is_empty(),
        "read by {} but never set by the module: {unset:?}",
        binary.display()
    );
    let unknown: Vec<_> = set.difference(&read).collect();
    assert!(
        unknown.is_empty(),
        "set by the module but not read by {}: {unknown:?}",
        binary.display()
    );
    let credentials = strings(&unit["serviceConfig"]["LoadCredential"]);
    for var in &schema {
        let name = var["name"].as_str().expect("a string");
        if unset_here.contains(&name) {
            continue;
        }
        let value = unit["environment"][name].as_str().expect("a string");
        if var["secret_file"] == true {
            let credential = value
                .strip_prefix("%d/")
                .unwrap_or_else(|| panic!("{name}={value}: a secret file must be a credential (%d/...)"));
            assert!(
                credentials
                    .iter()
                    .any(|c| c.starts_with(&format!("{credential}:/run/secrets/"))),
                "{name}: no LoadCredential for {credential} in {credentials:?}"
            );
        } else {
            assert!(!value.starts_with("%d/"), "{name}={value} is not a secret");
        }
    }
    for value in unit["environment"].as_object().expect("an object").values() {
        assert!(
            !value.as_str().expect("a string").contains("/run/secrets"),
            "a secret's path in the environment: {value}"
        );
    }
}

/// Where the binary has a constant default and the module sets the variable without being asked to, the
/// two agree.
fn check_defaults(binary: &Path, unit: &Value) {
    let mut compared = 0;
    for var in schema(binary) {
        let (Some(name), Some(default)) = (var["name"].as_str(), var["default"].as_str()) else {
            continue;
        };
        if let Some(value) = unit["environment"][name].as_str() {
            assert_eq!(value, default, "{name}: the module's default differs from the binary's");
            compared += 1;
        }
    }
    assert!(compared >= 10, "only {compared} defaults compared");
}

#[test]
fn nixos_module_environment_is_exactly_what_the_binaries_read() {
    let Some(full) = eval_ok("full") else { return };
    let server = server_binary();
    let worker = server.with_file_name("gradient-worker");
    check_environment(&server, unit(&full, "gradient-server"), &[]);
    // The worker of this host dials the server: the listener's options are left out.
    check_environment(&worker, unit(&full, "gradient-worker"), &LISTENER_ONLY);
    let env = &unit(&full, "gradient-worker")["environment"];
    assert_eq!(env["GRADIENT_EVAL_WORKERS"], "2");
    assert_eq!(env["GRADIENT_MAX_EVALUATIONS_PER_WORKER"], "0");
    assert_eq!(env["GRADIENT_DISCOVERABLE"], "false");
    let env = &unit(&full, "gradient-server")["environment"];
    assert_eq!(env["GRADIENT_LISTEN_ADDR"], "::1");
    assert_eq!(env["GRADIENT_LOG_LEVEL_PROTO"], "trace");
    assert_eq!(env["GRADIENT_OIDC_SCOPES"], "openid,email");
    assert_eq!(env["GRADIENT_S3_PATH_STYLE"], "false");
    assert_eq!(env["GRADIENT_GITHUB_APP_APP_ID"], "123456");
    assert_eq!(env["GRADIENT_CA_FILE"], "/etc/gradient/workers-ca.pem");

    let Some(minimal) = eval_ok("minimal") else { return };
    check_defaults(&server, unit(&minimal, "gradient-server"));
    let Some(worker_defaults) = eval_ok("workerDefaults") else {
        return;
    };
    check_defaults(&worker, unit(&worker_defaults, "gradient-worker"));
}

#[test]
fn nixos_server_unit_postgres_and_nginx_of_the_seeds_minimal_setup() {
    let Some(v) = eval_ok("minimal") else { return };
    assert_eq!(v["assertions"], serde_json::json!([]));
    let server = unit(&v, "gradient-server");
    let sc = &server["serviceConfig"];
    assert_eq!(
        sc["ExecStart"],
        "/nix/store/11111111111111111111111111111111-gradient-server/bin/gradient-server"
    );
    assert_eq!(sc["User"], "gradient");
    assert_eq!(v["users"]["users"]["gradient"]["isSystemUser"], true);
    assert_eq!(sc["StateDirectory"], "gradient");
    assert_eq!(sc["ProtectSystem"], "strict");
    assert_eq!(sc["NoNewPrivileges"], true);
    assert_eq!(sc["PrivateTmp"], true);
    assert_eq!(sc["CapabilityBoundingSet"], "");
    assert!(
        sc["ExecReload"]
            .as_str()
            .expect("a string")
            .ends_with("kill -HUP $MAINPID")
    );
    assert_eq!(server["wantedBy"], serde_json::json!(["multi-user.target"]));
    assert!(
        strings(&server["path"]).contains(&"git".to_owned()),
        "git polls repositories"
    );
    // Credentials: read by systemd from the given paths, named in the environment by %d.
    let credentials = strings(&sc["LoadCredential"]);
    assert!(credentials.contains(&"jwtSecretFile:/run/secrets/gradient-jwt".to_owned()));
    assert!(credentials.contains(&"cryptSecretFile:/run/secrets/gradient-crypt".to_owned()));
    assert_eq!(credentials.len(), 2, "{credentials:?}");
    let env = &server["environment"];
    assert_eq!(env["GRADIENT_JWT_SECRET_FILE"], "%d/jwtSecretFile");
    assert_eq!(env["GRADIENT_CRYPT_SECRET_FILE"], "%d/cryptSecretFile");
    assert_eq!(env["GRADIENT_DOMAIN"], "gradient.example.com");
    assert_eq!(env["GRADIENT_PUBLIC_URL"], "https://gradient.example.com");

    // configurePostgres: a database and a role owning it, reached over the Unix socket as that role.
    let pg = &v["services"]["postgresql"];
    assert_eq!(pg["enable"], true);
    assert_eq!(pg["ensureDatabases"], serde_json::json!(["gradient"]));
    assert_eq!(
        pg["ensureUsers"],
        serde_json::json!([{"name": "gradient", "ensureDBOwnership": true}])
    );
    assert_eq!(
        env["GRADIENT_DATABASE_URL"],
        "postgresql:///gradient?host=/run/postgresql&user=gradient"
    );
    assert!(env.get("GRADIENT_DATABASE_URL_FILE").is_none());
    assert!(strings(&server["requires"]).contains(&"postgresql.service".to_owned()));
    assert!(strings(&server["after"]).contains(&"postgresql.service".to_owned()));
    assert!(strings(&server["after"]).contains(&"postgresql.target".to_owned()));
    assert_eq!(
        v["systemd"]["tmpfiles"],
        serde_json::json!([]),
        "baseDir is the StateDirectory"
    );

    // nginx: one virtual host; /api and /cache unbuffered with no body limit, /proto a long WebSocket, / the UI.
    let nginx = &v["services"]["nginx"];
    assert_eq!(nginx["enable"], true);
    let host = &nginx["virtualHosts"]["gradient.example.com"];
    assert_eq!(host["enableACME"], true);
    assert_eq!(host["forceSSL"], true);
    let locations = &host["locations"];
    for path in ["/api/", "/cache/"] {
        let l = &locations[path];
        assert_eq!(l["proxyPass"], "http://127.0.0.1:3000", "{path}");
        let conf = l["extraConfig"].as_str().expect("a string");
        for directive in [
            "client_max_body_size 0;",
            "proxy_request_buffering off;",
            "proxy_buffering off;",
        ] {
            assert!(conf.contains(directive), "{path} lacks {directive}");
        }
    }
    let proto = &locations["= /proto"];
    assert_eq!(proto["proxyWebsockets"], true);
    assert_eq!(proto["proxyPass"], "http://127.0.0.1:3000");
    assert!(
        proto["extraConfig"]
            .as_str()
            .unwrap()
            .contains("proxy_read_timeout 7d;")
    );
    // The rest, the web UI among it, is the server's: it serves the UI from the frontend package.
    assert_eq!(locations["/"]["proxyPass"], "http://127.0.0.1:3000");
    assert_eq!(
        env["GRADIENT_FRONTEND_DIR"],
        "/nix/store/11111111111111111111111111111111-gradient-frontend/share/gradient-frontend"
    );
    assert_eq!(
        v["networking"]["firewall"]["allowedTCPPorts"],
        serde_json::json!([80, 443])
    );
    assert_eq!(v["services"]["caddy"], serde_json::json!({}));

    // The flake's nixosModules.default renders the same, without nixpkgs.
    let Some(flake) = eval_ok("flake") else { return };
    assert_eq!(flake, v);
}

#[test]
fn nixos_caddy_proxies_everything_to_the_server_streaming_and_appends_extra_config() {
    let Some(v) = eval_ok("caddy") else { return };
    let host = &v["services"]["caddy"]["virtualHosts"]["gradient.example.com"];
    assert_eq!(host["useACMEHost"], "example.com");
    let conf = host["extraConfig"].as_str().expect("a string");
    // Everything to the server (WebSocket upgrades pass through reverse_proxy), flushed as it comes, no
    // request buffering.
    assert!(conf.contains("reverse_proxy http://127.0.0.1:3000 {"), "{conf}");
    assert!(conf.contains("flush_interval -1"), "responses stream: {conf}");
    assert!(!conf.contains("request_buffers"), "pushes are not buffered: {conf}");
    assert!(!conf.contains("handle"), "no path is kept from the server: {conf}");
    assert_eq!(
        unit(&v, "gradient-server")["environment"]["GRADIENT_FRONTEND_DIR"],
        "/nix/store/11111111111111111111111111111111-gradient-frontend/share/gradient-frontend"
    );
    assert!(
        conf.trim_end().ends_with("encode zstd"),
        "extraConfig comes after the proxy set-up"
    );
    assert_eq!(v["services"]["nginx"], serde_json::json!({}));
}

#[test]
fn nixos_worker_units_trust_the_nix_daemon_and_take_the_peers_file_as_a_credential() {
    let Some(full) = eval_ok("full") else { return };
    let worker = unit(&full, "gradient-worker");
    let sc = &worker["serviceConfig"];
    assert_eq!(sc["User"], "gradient-worker");
    assert_eq!(full["users"]["users"]["gradient-worker"]["isSystemUser"], true);
    assert_eq!(
        full["nix"]["settings"]["trusted-users"],
        serde_json::json!(["root", "gradient-worker"])
    );
    assert_eq!(sc["StateDirectory"], "gradient-worker");
    assert_eq!(sc["ProtectSystem"], "strict");
    assert_eq!(sc["NoNewPrivileges"], true);
    assert_eq!(
        sc["ReadWritePaths"],
        serde_json::json!(["/nix/var/nix/daemon-socket", "/nix/var/nix/gcroots/ci"])
    );
    assert_eq!(
        full["systemd"]["tmpfiles"],
        serde_json::json!([
            "d /nix/var/nix/gcroots/ci 0755 gradient-worker gradient-worker - -",
            "d /srv/gradient 0700 gradient gradient - -"
        ])
    );
    assert!(strings(&worker["requires"]).contains(&"nix-daemon.socket".to_owned()));
    assert_eq!(strings(&worker["path"]), ["nix", "git", "openssh"]);
    assert_eq!(strings(&sc["LoadCredential"]), ["peersFile:/run/secrets/peers"]);
    let env = &worker["environment"];
    assert_eq!(env["GRADIENT_PEERS_FILE"], "%d/peersFile");
    assert_eq!(env["GRADIENT_SERVER_URL"], "ws://[::1]:8080/proto");
    // The CA file is not a secret: a plain path, readable by the worker, no credential.
    assert_eq!(env["GRADIENT_CA_FILE"], "/etc/gradient/ca.pem");
    assert_eq!(env["GRADIENT_CAPABILITIES_SIGN"], "true");
    assert_eq!(env["GRADIENT_GCROOTS_DIR"], "/nix/var/nix/gcroots/ci");
    assert_eq!(env["HOME"], "/var/lib/gradient-worker");
    // The server of the same host: its co-located worker's token is a credential too.
    let server = unit(&full, "gradient-server");
    let credentials = strings(&server["serviceConfig"]["LoadCredential"]);
    assert!(credentials.contains(&"localWorker-tokenFile:/run/secrets/local-worker-token".to_owned()));
    assert_eq!(
        server["environment"]["GRADIENT_LOCAL_WORKER_TOKEN_FILE"],
        "%d/localWorker-tokenFile"
    );
    assert_eq!(
        server["serviceConfig"]["ReadWritePaths"],
        serde_json::json!(["/srv/gradient"])
    );
    assert!(server["serviceConfig"]["StateDirectory"].is_null());
    assert_eq!(server["environment"]["GRADIENT_BASE_DIR"], "/srv/gradient");

    // A remote build machine imports the worker alone: a discoverable one listens behind nginx (TLS with ACME).
    let Some(remote) = eval_ok("remoteWorker") else { return };
    assert!(unit(&remote, "gradient-server").is_null());
    assert_eq!(remote["assertions"], serde_json::json!([]));
    assert_eq!(remote["warnings"], serde_json::json!([]));
    let env = &unit(&remote, "gradient-worker")["environment"];
    assert!(
        env["GRADIENT_SERVER_URL"].is_null(),
        "a discoverable worker dials nothing"
    );
    assert_eq!(env["GRADIENT_DISCOVERABLE"], "true");
    assert_eq!(env["GRADIENT_LISTEN_ADDR"], "127.0.0.1");
    assert_eq!(env["GRADIENT_PORT"], "3200");
    assert_eq!(env["GRADIENT_MAX_PROTO_CONNECTIONS"], "4");
    assert_eq!(env["GRADIENT_MAX_NIXDAEMON_CONNECTIONS"], "64");
    assert_eq!(env["GRADIENT_MAX_CONCURRENT_BUILDS"], "8");
    let vhost = &remote["services"]["nginx"]["virtualHosts"]["builder.example.com"];
    assert_eq!(
        (&vhost["enableACME"], &vhost["forceSSL"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    assert_eq!(vhost["locations"]["/proto"]["proxyPass"], "http://127.0.0.1:3200");
    assert_eq!(vhost["locations"]["/proto"]["proxyWebsockets"], true);
    assert!(env["GRADIENT_CA_FILE"].is_null(), "no CA file unless one is given");
    assert_eq!(env["GRADIENT_EVAL_WORKERS"], "1");
    assert_eq!(env["GRADIENT_MAX_EVALUATIONS_PER_WORKER"], "20");
    // Without TLS the vhost is plain http.
    let Some(plain) = eval_ok("remoteWorkerWithoutTls") else {
        return;
    };
    let vhost = &plain["services"]["nginx"]["virtualHosts"]["builder.example.com"];
    assert_eq!(
        (&vhost["enableACME"], &vhost["forceSSL"]),
        (&Value::Bool(false), &Value::Bool(false))
    );
    assert_eq!(plain["warnings"], serde_json::json!([]));

    // A dialing worker given the listener's options: they are left out of its environment, with a warning.
    let Some(dialing) = eval_ok("dialingWithListenerOptions") else {
        return;
    };
    let env = unit(&dialing, "gradient-worker")["environment"]
        .as_object()
        .expect("env");
    for var in LISTENER_ONLY {
        assert!(!env.contains_key(var), "{var}: {env:?}");
    }
    assert_eq!(
        dialing["warnings"],
        serde_json::json!([
            "services.gradient.worker: port, settings.maxProtoConnections have an effect only on a discoverable worker (this one dials serverUrl)"
        ])
    );
}

#[test]
fn nixos_module_refuses_secrets_in_the_store_and_inconsistent_settings() {
    let Some(store) = eval("storeSecret") else { return };
    let e = store.expect_err("a secret in the Nix store is refused");
    assert!(e.contains("services.gradient.jwtSecretFile"), "{e}");
    assert!(e.contains("outside the Nix store"), "{e}");
    let Some(v) = eval_ok("conflicts") else { return };
    assert!(
        unit(&v, "gradient-server")["environment"]["GRADIENT_FRONTEND_DIR"].is_null(),
        "no web UI without frontend.enable"
    );
    let failed = strings(&v["assertions"]);
    for want in [
        "services.gradient.reverseProxy: enable nginx or caddy, not both",
        "services.gradient.githubApp: enable needs appId, privateKeyFile and webhookSecretFile",
        "services.gradient.worker: set serverUrl (the worker dials the server, e.g. wss://gradient.example.com/proto) or discoverable = true (the server dials the worker), one of the two",
        "services.gradient.email: enable needs smtpHost and fromAddress",
    ] {
        assert!(failed.contains(&want.to_owned()), "{failed:?}");
    }
    let Some(v) = eval_ok("badState") else { return };
    let failed = strings(&v["assertions"]);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].starts_with("services.gradient.state.integrations.i: "));
    assert!(failed[1].starts_with("services.gradient.state.projects.p.flake_input_overrides.nixpkgs: "));
}

#[test]
fn nixos_state_renders_every_entity_kind_with_secrets_as_credentials() {
    let Some(v) = eval_ok("state") else { return };
    assert_eq!(v["assertions"], serde_json::json!([]));
    let state = &v["state"];
    let creds = "/run/credentials/gradient-server.service";
    assert_eq!(state["version"], 1);
    assert_eq!(state["delete_state"], true);
    let users = &state["users"];
    assert_eq!(users["alice"]["username"], "alice");
    assert_eq!(users["alice"]["name"], "Alice Johnson");
    assert_eq!(users["alice"]["password_file"], format!("{creds}/state-user-alice"));
    assert_eq!(users["ci-bot"]["password_file"], Value::Null);
    assert_eq!(users["ci-bot"]["email_verified"], true);
    let acme = &state["organizations"]["acme"];
    assert_eq!(
        acme["members"],
        serde_json::json!({"alice": "Admin", "ci-bot": "releaser"})
    );
    assert_eq!(acme["push_cache"], "main");
    assert_eq!(acme["created_by"], "alice");
    assert_eq!(
        state["roles"]["releaser"]["permissions"],
        serde_json::json!(["view_org", "trigger_evaluation"])
    );
    let project = &state["projects"]["web-app"];
    assert_eq!(
        project["flake_input_overrides"],
        serde_json::json!({"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-unstable"}, "flake-utils": {"keep_url": true}})
    );
    assert_eq!(project["poll_interval_secs"], 300);
    assert_eq!(
        state["caches"]["main"]["signing_key_file"],
        format!("{creds}/state-cache-main")
    );
    assert_eq!(state["caches"]["scratch"]["signing_key_file"], Value::Null);
    assert_eq!(state["caches"]["scratch"]["compression"], "zstd");
    assert_eq!(
        state["api_keys"]["ci-runner"]["key_file"],
        format!("{creds}/state-api-key-ci-runner")
    );
    assert_eq!(state["api_keys"]["ci-runner"]["organization"], "acme");
    assert_eq!(
        state["workers"]["builder-1"]["token_file"],
        format!("{creds}/state-worker-builder-1")
    );
    assert_eq!(
        state["workers"]["builder-1"]["worker_id"],
        "550e8400-e29b-41d4-a716-446655440001"
    );
    let hooks = &state["integrations"]["acme-hooks"];
    assert_eq!(hooks["secret_file"], format!("{creds}/state-integration-acme-hooks"));
    assert_eq!(hooks["access_token_file"], Value::Null);
    let statuses = &state["integrations"]["acme-statuses"];
    assert_eq!(
        statuses["access_token_file"],
        format!("{creds}/state-integration-acme-statuses")
    );
    assert_eq!(statuses["endpoint_url"], "https://gitea.example.com");
    assert!(
        !state.to_string().contains("/run/secrets"),
        "no secret's path in the document"
    );

    // Each secret file is a credential of the server's unit, by the name the document uses.
    let server = unit(&v, "gradient-server");
    let credentials = strings(&server["serviceConfig"]["LoadCredential"]);
    for c in [
        "state-user-alice:/run/secrets/alice-password",
        "state-cache-main:/run/secrets/cache-main-key",
        "state-api-key-ci-runner:/run/secrets/ci-runner-key",
        "state-worker-builder-1:/run/secrets/builder-1-token",
        "state-integration-acme-hooks:/run/secrets/acme-hook-secret",
        "state-integration-acme-statuses:/run/secrets/gitea-token",
    ] {
        assert!(credentials.contains(&c.to_owned()), "{c} not in {credentials:?}");
    }
    // The document sits at a stable path, checked at build time; a change reloads (SIGHUP), not restarts.
    assert_eq!(server["environment"]["GRADIENT_STATE_FILE"], "/etc/gradient/state.json");
    let etc = &v["etc"]["gradient/state.json"];
    let script = etc["script"].as_str().expect("a string");
    assert!(
        script.contains("/bin/gradient-server state check --offline "),
        "{script}"
    );
    // The check judges the document with the server's settings, never its secrets.
    let check_env = etc["env"].as_object().expect("the check's environment");
    assert_eq!(check_env["GRADIENT_ALLOW_LOCAL_REPOSITORIES"], "false");
    assert_eq!(check_env["GRADIENT_DOMAIN"], "gradient.example.com");
    assert_eq!(check_env["GRADIENT_DELETE_STATE"], "true");
    assert!(check_env.keys().all(|k| !k.ends_with("_SECRET_FILE")), "{check_env:?}");
    assert!(check_env.get("GRADIENT_STATE_FILE").is_none());
    assert_eq!(
        strings(&server["reloadTriggers"]),
        [etc["source"].as_str().expect("a string")]
    );

    // docs/state.md's complete example (the server's contract) is this configuration: every field it shows
    // is rendered the same.
    let doc = repo_root().join("docs/state.md");
    let Ok(doc) = std::fs::read_to_string(&doc) else {
        eprintln!("SKIPPED: docs/state.md is not on this branch yet; the document is not compared with its example");
        return;
    };
    let example = doc
        .split("## A complete example")
        .nth(1)
        .and_then(|s| s.split("```json").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/state.md has a complete example");
    let example: Value = serde_json::from_str(example).expect("the example is JSON");
    contains(&example, state, "state");
}

/// Every field of `want` is in `got` with the same value (objects recursively; `got` may have more fields).
fn contains(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                contains(v, g.get(k).unwrap_or(&Value::Null), &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(want, got, "{at}"),
    }
}

/// The document of case `state` as the server would see it: the credentials directory is `dir/credentials`,
/// holding a valid secret for each credential the module loads.
fn rendered_state_in(dir: &Path) -> Option<PathBuf> {
    use base64::Engine;
    let v = eval_ok("state")?;
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials).expect("mkdir");
    let keys = dir.join("cache-key");
    let status = Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("main-1")
        .arg(keys.with_extension("sec"))
        .arg(keys.with_extension("pub"))
        .status()
        .expect("nix-store runs");
    assert!(status.success());
    let signing_key = std::fs::read_to_string(keys.with_extension("sec")).expect("secret key");
    let token = base64::engine::general_purpose::STANDARD.encode([7u8; 48]);
    for (name, contents) in [
        ("state-user-alice", "correct horse battery staple\n".to_owned()),
        ("state-cache-main", signing_key),
        ("state-api-key-ci-runner", format!("GRAD{}\n", "ab".repeat(32))),
        ("state-worker-builder-1", format!("{token}\n")),
        ("state-integration-acme-hooks", "a webhook secret\n".to_owned()),
        ("state-integration-acme-statuses", "a gitea access token\n".to_owned()),
    ] {
        std::fs::write(credentials.join(name), contents).expect("write secret");
    }
    let text = v["state"].to_string().replace(
        "/run/credentials/gradient-server.service/",
        &format!("{}/", credentials.display()),
    );
    let file = dir.join("state.json");
    std::fs::write(&file, text).expect("write state");
    Some(file)
}

/// `gradient-server state check [--offline] FILE` with the given variables: exit status, stdout, stderr.
fn state_check(offline: bool, file: &Path, vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(server_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["state", "check"]);
    if offline {
        cmd.arg("--offline");
    }
    cmd.arg(file).envs(vars.iter().copied());
    let out = cmd.output().expect("gradient-server runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The server applies what the module renders: `state check --offline` (what the module runs at build
/// time) accepts it and plans every entity, a real server applies it at start-up (alice logs in with her
/// password file, acme is managed and refuses changes), and checked again against that database nothing is
/// left to change. Runs once the server reads `GRADIENT_STATE_FILE` (the declarative state's branch).
async fn rendered_state_is_applied(postgres: bool) {
    let server_reads_state = schema(&server_binary())
        .iter()
        .any(|v| v["name"] == "GRADIENT_STATE_FILE");
    if !server_reads_state {
        eprintln!("SKIPPED: this gradient-server does not read GRADIENT_STATE_FILE yet");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(file) = rendered_state_in(dir.path()) else {
        return;
    };

    let (status, plan, err) = state_check(true, &file, &[]);
    assert_eq!(status, 0, "state check --offline refused the module's document: {err}");
    for line in [
        "create user alice",
        "create user ci-bot",
        "create organization acme",
        "create role ",
        "create project ",
        "create cache main",
        "create cache scratch",
        "create api key ",
        "create worker ",
        "create integration ",
    ] {
        assert!(
            plan.lines().any(|l| l.starts_with(line)),
            "no `{line}` in the plan:\n{plan}"
        );
    }
    assert!(
        plan.trim_end()
            .ends_with("to create, 0 to update, 0 to delete, 0 to unmanage"),
        "{plan}"
    );

    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).expect("mkdir");
    let database = postgres.then(crate::harness::fresh_postgres_database);
    let mut vars = vec![("GRADIENT_STATE_FILE", file.to_str().expect("utf-8"))];
    if let Some(url) = &database {
        vars.push(("GRADIENT_DATABASE_URL", url));
    }
    let server = crate::harness::Server::start(&base, &vars).await;
    let mut client = crate::harness::Client::new(&server);
    let jwt = client
        .ok(
            reqwest::Method::POST,
            "/auth/basic/login",
            Some(serde_json::json!({"loginname": "alice", "password": "correct horse battery staple"})),
        )
        .await;
    client.token = Some(jwt.as_str().expect("a token").to_owned());
    let acme = client.ok(reqwest::Method::GET, "/orgs/acme", None).await;
    assert_eq!(acme["managed"], true, "{acme}");
    assert_eq!(acme["display_name"], "ACME Corporation");
    let (status, refused) = client
        .call(
            reqwest::Method::PATCH,
            "/orgs/acme",
            Some(serde_json::json!({"description": "changed by hand"})),
        )
        .await;
    assert_eq!((status, refused["code"].as_str()), (409, Some("managed")), "{refused}");
    server.stop();

    let base_dir = base.to_str().expect("utf-8");
    let mut vars = vec![("GRADIENT_BASE_DIR", base_dir)];
    if let Some(url) = &database {
        vars.push(("GRADIENT_DATABASE_URL", url));
    }
    let (status, plan, err) = state_check(false, &file, &vars);
    assert_eq!(status, 0, "{err}");
    assert_eq!(plan.trim_end(), "plan: no changes");
}

#[tokio::test]
async fn nixos_rendered_state_is_applied_by_the_server_on_sqlite() {
    rendered_state_is_applied(false).await;
}

#[tokio::test]
async fn nixos_rendered_state_is_applied_by_the_server_on_postgres() {
    rendered_state_is_applied(true).await;
}
