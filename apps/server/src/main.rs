//! `gradient-server`: reads its configuration from `GRADIENT_*` variables and serves.

use gradient_server::config::Config;

/// mimalloc instead of glibc's malloc: glibc kept what it had freed (each argon2 password hash's 19 MiB, the
/// NAR downloads' buffers spread over its per-thread arenas), 77 MB resident after one sign-in and a push, 90 MB
/// serving 8 NARs; mimalloc gives freed pages back to the system (figures in the README's cache table).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// glibc's malloc arenas at most. Rust's allocations go to mimalloc; glibc's malloc serves C code, SQLite
/// above all, which sqlx runs on a thread per connection. glibc gives such threads arenas of their own (up to 8
/// per core) and keeps what they freed there after the threads end (8.8 MB after a push burst, README); one
/// arena shared by all keeps only what is in use. SQLite allocates under its own locks, briefly: one arena's
/// lock costs nothing measurable here (`bench/cache.sh`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: i32 = 1;

/// Caps glibc's malloc arenas ([`MALLOC_ARENAS`]); must run before any other thread starts.
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets one of malloc's parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
    }
}

fn main() {
    cap_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the runtime: {e}")));
    runtime.block_on(serve());
}

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
