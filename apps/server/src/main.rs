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
    // Run by the dynamic loader (`ld.so gradient-server …`) the binary is the loader's: not restarted.
    let by_loader = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().starts_with("ld-")))
        .unwrap_or(false);
    if std::env::var_os(PURGE_DELAY).is_none() && !by_loader {
        restart_with_purge_delay();
    }
    serve();
}

/// Starts this program again in this process with [`PURGE_DELAY`] set to 0; returns only when it could not
/// (the server then starts as it is, with mimalloc's default). The binary's own path first: the kernel names
/// the process after the file it runs (`/proc/self/exe` would make it `exe` for `ps`, `pgrep` and the
/// journal); `/proc/self/exe` when that path is gone (the binary replaced while it ran).
fn restart_with_purge_delay() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let paths = std::env::current_exe()
        .into_iter()
        .chain([std::path::PathBuf::from("/proc/self/exe")]);
    let mut failed = Vec::new();
    for path in paths {
        let mut again = std::process::Command::new(&path);
        if let Some((name, rest)) = args.split_first() {
            again.arg0(name).args(rest);
        }
        let error = again.env(PURGE_DELAY, "0").exec();
        failed.push(format!("{}: {error}", path.display()));
    }
    eprintln!(
        "gradient-server: could not restart itself with {PURGE_DELAY}=0 ({}); going on without",
        failed.join("; ")
    );
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
