//! `gradient-server`: reads its configuration from `GRADIENT_*` variables and serves.

use gradient_server::config::Config;

#[tokio::main]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--print-config-schema") {
        let schema: Vec<_> = Config::schema().iter().map(|v| v.to_json()).collect();
        println!("{}", serde_json::Value::Array(schema));
        return;
    }
    let config = Config::from_env().unwrap_or_else(|e| fail(&e));
    gradient_server::init_logging(&config.log_level);
    if let Err(e) = gradient_server::run(config).await {
        fail(&e);
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("gradient-server: {e}");
    std::process::exit(1)
}
