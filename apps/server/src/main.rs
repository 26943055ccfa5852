//! `gradient-server`: reads its configuration from `GRADIENT_*` variables and serves.

use gradient_server::config::Config;

/// mimalloc instead of glibc's malloc: glibc kept what it had freed (each argon2 password hash's 19 MiB, the
/// NAR downloads' buffers spread over its per-thread arenas), 77 MB resident after one sign-in and a push, 90 MB
/// serving 8 NARs; mimalloc gives freed pages back to the system (figures in docs/benchmarks.md). With
/// its `override` feature the C libraries' `malloc` is mimalloc's too: SQLite's connections (a thread each)
/// had left what they freed in glibc's per-thread arenas (~9 MB at the cache benchmark's peak).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives freed pages back to the system a second after they were freed, but only when the allocator
/// runs again: an idle server kept what start-up, a sign-in's argon2 hash (19 MiB) or a push had freed
/// (~6 MB after start, docs/benchmarks.md). With `MIMALLOC_PURGE_DELAY=0` they go back at once. The option is
/// read from the environment when the allocator starts, before `main`, and can be set in code only with
/// `unsafe`, which the workspace forbids: so the server starts itself again with it (same process id,
/// arguments and environment), unless the variable is set already (an operator's own value is kept).
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

fn main() {
    if std::env::var_os(PURGE_DELAY).is_none() {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let mut again = std::process::Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            again.arg0(name);
        }
        // `exec` returns only when it failed: the server then starts as it is, with mimalloc's default.
        let failed = again.args(args).env(PURGE_DELAY, "0").exec();
        eprintln!("gradient-server: could not restart itself with {PURGE_DELAY}=0 ({failed}); going on without");
    }
    serve();
}

#[tokio::main]
async fn serve() {
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
