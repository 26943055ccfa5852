//! `gradient-server`: reads its configuration from `GRADIENT_*` variables and serves.

use gradient_server::config::Config;

/// mimalloc instead of glibc's malloc: glibc kept what it had freed (each argon2 password hash's 19 MiB, the
/// NAR downloads' buffers spread over its per-thread arenas), 77 MB resident after one sign-in and a push, 90 MB
/// serving 8 NARs; mimalloc gives freed pages back to the system (figures in docs/benchmarks.md). With
/// its `override` feature the C libraries' `malloc` is mimalloc's too: SQLite's connections (a thread each)
/// had left what they freed in glibc's per-thread arenas (~9 MB at the cache benchmark's peak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--print-config-schema") {
        let schema: Vec<_> = Config::schema().iter().map(|v| v.to_json()).collect();
        println!("{}", serde_json::Value::Array(schema));
        return;
    }
    if args.first().map(String::as_str) == Some("state") {
        std::process::exit(state_command(&args[1..]).await);
    }
    let config = Config::from_env().unwrap_or_else(|e| fail(&e));
    gradient_server::init_logging(&config.log_level);
    if let Err(e) = gradient_server::run(config).await {
        fail(&e);
    }
}

/// `state check [--offline] FILE`: prints the plan; exit status 1 with one line on standard error when the
/// document is invalid, 2 for a usage error.
async fn state_command(args: &[String]) -> i32 {
    let usage = "usage: gradient-server state check [--offline] FILE";
    let (offline, file) = match args {
        [check, file] if check == "check" => (false, file),
        [check, flag, file] if check == "check" && flag == "--offline" => (true, file),
        _ => {
            eprintln!("{usage}");
            return 2;
        }
    };
    match gradient_server::declared::check(std::path::Path::new(file), offline).await {
        Ok(plan) => {
            println!("{plan}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("gradient-server: {e}");
    std::process::exit(1)
}
