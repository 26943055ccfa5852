//! `gradient-worker`: reads its configuration from `GRADIENT_*` variables. The `/proto` link, evaluation
//! and builds arrive with the worker issue; until then the binary validates its configuration and says so.

mod config;

fn main() {
    let config = match config::WorkerConfig::from_vars(&std::env::vars().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gradient-worker: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "gradient-worker: configuration is valid (server {}); the worker link is not implemented in this version",
        config.server_url
    );
    std::process::exit(2);
}
