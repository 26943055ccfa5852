//! `gradient-worker`: reads its configuration from `GRADIENT_*` variables, resolves its identity and
//! peers, and keeps a link to the server's `/proto`.

mod batches;
mod config;
mod identity;
mod jobs;
mod link;
mod outbox;
mod peers;
mod substituters;
mod trust;

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("gradient-worker: {e}");
    std::process::exit(1)
}

/// The argument that makes this binary one of the worker's evaluator subprocesses.
const EVALUATOR: &str = "--evaluator";

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some(EVALUATOR) {
        // Answers evaluations on stdin until the worker closes it (`gradient_nix_cli::evaluator`).
        if let Err(e) = gradient_nix_cli::evaluator::serve().await {
            fail(&format!("evaluator: {e}"));
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--print-config-schema") {
        let schema: Vec<_> = config::WorkerConfig::schema()
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name,
                    "secret_file": v.secret_file,
                    "default": v.default,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(schema));
        return;
    }
    let config = config::WorkerConfig::from_vars(&std::env::vars().collect()).unwrap_or_else(|e| fail(&e));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(config.log_filter()))
        .try_init();
    let worker_id = identity::resolve(config.worker_id, &config.state_dir).unwrap_or_else(|e| fail(&e));
    let peers = match &config.peers_file {
        Some(f) => peers::load(f).unwrap_or_else(|e| fail(&e)),
        None => peers::Peers::default(),
    };
    // The extra CA certificates, read once: the link and the cache client both trust them.
    let extra_ca = config.ca_file.as_ref().map(|f| {
        std::fs::read(f).unwrap_or_else(|e| fail(&format!("GRADIENT_CA_FILE: cannot read {}: {e}", f.display())))
    });
    let tls = gradient_link_ws::TlsRoots::new(extra_ca.as_deref(), trust::system_bundle().as_deref())
        .unwrap_or_else(|e| fail(&format!("GRADIENT_CA_FILE: {e}")));
    // Every Nix process the worker starts (builds, pushes, evaluations, queries) holds one of these.
    let mut nix = gradient_nix_cli::NixCli::new()
        .max_sessions(config.max_nixdaemon_connections as usize)
        // An evaluation's attributes are split between this many `nix eval` processes at once.
        .eval_processes(config.eval_workers as usize);
    // Evaluations run in `evalWorkers` subprocesses (this binary again), each replaced after
    // `maxEvaluationsPerWorker` evaluations.
    let program = std::env::current_exe().unwrap_or_else(|e| fail(&format!("cannot find this program: {e}")));
    nix = nix.evaluators(
        program,
        vec![EVALUATOR.into()],
        config.eval_workers as usize,
        config.max_evaluations_per_worker,
    );
    if let Some(extra) = &extra_ca {
        let bundle = trust::write_nix_bundle(&config.state_dir, extra)
            .unwrap_or_else(|e| fail(&format!("cannot write the CA bundle for Nix: {e}")));
        nix = nix.env("NIX_SSL_CERT_FILE", bundle);
    }
    let host = gradient_domain::ports::nix::Nix::host(&nix)
        .await
        .unwrap_or_else(|e| fail(&format!("nix: {e}")));
    if config.probe_substituters {
        let configured = nix
            .configured_substituters()
            .await
            .unwrap_or_else(|e| fail(&format!("nix: {e}")));
        let (answering, silent) = substituters::split(&configured, substituters::PROBE_TIMEOUT, &tls).await;
        if !silent.is_empty() {
            tracing::warn!(
                "substituters not answering within {:?}, left out of every Nix run: {} (GRADIENT_PROBE_SUBSTITUTERS=false keeps them)",
                substituters::PROBE_TIMEOUT,
                silent.join(" ")
            );
            nix = nix.only_substituters(answering);
        }
    }
    tracing::info!(
        "worker {worker_id} starting (Nix {}, systems {:?})",
        host.nix_version,
        host.systems
    );
    let dirs = jobs::Local {
        state: config.state_dir.clone(),
        cache: gradient_cache_http::HttpCacheClient::with_tls(tls.client_config()).unwrap_or_else(|e| fail(&e)),
        gcroots: config.gcroots_dir.clone(),
    };
    // Nix builds as many derivations at once as it has build users: more would wait for one.
    let parallel_builds = match host.parallel_builds {
        Some(users) if users < config.max_concurrent_builds => {
            tracing::info!(
                "Nix has {users} build users: at most {users} of the {} build slots build at once",
                config.max_concurrent_builds
            );
            users
        }
        _ => config.max_concurrent_builds,
    };
    // Reports not acknowledged before the worker stopped are sent again once linked.
    let outbox = outbox::Outbox::open(&config.state_dir)
        .unwrap_or_else(|e| fail(&format!("{}/outbox: {e}", config.state_dir.display())));
    let mut work = link::Work::new(nix, dirs, parallel_builds, outbox);
    let identity = link::Identity {
        worker_id,
        capabilities: config.capabilities,
        systems: host.systems.clone(),
        features: host.features.clone(),
        max_concurrent_builds: config.max_concurrent_builds,
        max_concurrent_evaluations: config.max_concurrent_evaluations,
        queued_builds: link::build_jobs_queued(parallel_builds),
    };
    match &config.link {
        config::LinkMode::Dial(url) => tokio::select! {
            _ = link::run(url, &tls, &identity, &peers, &mut work) => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
        },
        config::LinkMode::Listen { addr, max_connections } => {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| {
                fail(&format!(
                    "GRADIENT_LISTEN_ADDR/GRADIENT_PORT: cannot listen on {addr}: {e}"
                ))
            });
            tracing::info!(target: "gradient::proto", "listening on ws://{addr}/proto for the server to dial");
            tokio::select! {
                _ = link::listen(listener, *max_connections, &identity, &peers, &mut work) => {}
                _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
            }
        }
    }
}
