//! `gradient`: Gradient from the terminal. Every request goes through the client generated from the OpenAPI
//! document (`gradient-client`); this crate reads arguments, keeps the configuration and prints.
//!
//! Exit codes: 0 success (for `eval --watch`: the evaluation completed), 1 failure (a refusal, or the
//! evaluation failed or was aborted), 2 a usage error, 3 the server could not be reached.

/// `println!` that ignores a closed standard output (`gradient log BUILD | head`) instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` likewise.
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

mod cache;
mod cli;
mod config;
mod output;
mod watch;

use clap::Parser;
use cli::{Cli, Command};
use gradient_client::{Client, Failure, types};
use output::Out;
use std::process::ExitCode;

/// A failed command: the sentence to print and the exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: 2,
            message: sentence(&message.into()),
        }
    }
    pub fn failed(message: impl Into<String>) -> Fail {
        Fail {
            code: 1,
            message: sentence(&message.into()),
        }
    }
}

impl From<Failure> for Fail {
    fn from(f: Failure) -> Fail {
        match f {
            Failure::Unreachable(cause) => Fail {
                code: 3,
                message: format!("Could not reach the server ({cause}); check the address and that it is running."),
            },
            Failure::Refused {
                status: 401, message, ..
            } => Fail::failed(format!(
                "The server refused the credentials ({message}); run `gradient login` again."
            )),
            Failure::Refused { message, .. } => Fail::failed(sentence(&message)),
            Failure::Unexpected(m) => Fail::failed(format!("The server answered unexpectedly: {m}.")),
            Failure::Usage(m) => Fail::usage(sentence(&m)),
        }
    }
}

impl From<gradient_client::Error<types::ErrorBody>> for Fail {
    fn from(e: gradient_client::Error<types::ErrorBody>) -> Fail {
        Failure::from(e).into()
    }
}

/// A message as one sentence: capitalized, ending with a full stop.
fn sentence(m: &str) -> String {
    let m = m.trim();
    let mut chars = m.chars();
    let mut s: String = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>())
        .unwrap_or_default();
    s.push_str(chars.as_str());
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

pub type Result<T> = std::result::Result<T, Fail>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gradient: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let out = Out { json: cli.json };
    match runtime.block_on(run(cli, out)) {
        Ok(code) => ExitCode::from(code),
        Err(fail) => {
            if out.json {
                let body = serde_json::json!({"error": true, "message": fail.message, "exit_code": fail.code});
                eprintln!("{body}");
            } else {
                eprintln!("gradient: {}", fail.message);
            }
            ExitCode::from(fail.code)
        }
    }
}

/// The configuration file, loaded.
fn load_config() -> Result<(std::path::PathBuf, config::Config)> {
    let path = config::path().map_err(Fail::usage)?;
    let config = config::Config::load(&path).map_err(Fail::usage)?;
    Ok((path, config))
}

/// The server the command talks to: its name, address and a client with its key.
pub struct Session {
    pub name: String,
    pub url: String,
    pub key: String,
    pub client: Client,
}

fn session(server: Option<&str>) -> Result<Session> {
    let (_, config) = load_config()?;
    let (name, s) = config.server(server).map_err(Fail::usage)?;
    // GRADIENT_API_KEY overrides the stored key (CI jobs keep it in a secret).
    let key = std::env::var("GRADIENT_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| s.key.clone());
    Ok(Session {
        client: gradient_client::connect(&s.url, Some(&key))?,
        name,
        url: s.url.clone(),
        key,
    })
}

/// `ORG/NAME` split in two.
fn org_and_name(arg: &str, what: &str) -> Result<(String, String)> {
    match arg.split_once('/') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => Ok((o.to_owned(), n.to_owned())),
        _ => Err(Fail::usage(format!(
            "\"{arg}\" is not ORG/{what}: write the organization, a slash and the {}.",
            what.to_lowercase()
        ))),
    }
}

fn parse_id(arg: &str, what: &str) -> Result<uuid::Uuid> {
    arg.parse().map_err(|_| {
        Fail::usage(format!(
            "\"{arg}\" is not {what} id (a UUID, as `gradient builds` and `gradient evals` print them)."
        ))
    })
}

async fn run(cli: Cli, out: Out) -> Result<u8> {
    let server = cli.server.as_deref();
    match cli.command {
        Command::Login { url, name } => login(&url, name, out).await,
        Command::Logout { name } => logout(name.as_deref().or(server), out),
        Command::Whoami => {
            let s = session(server)?;
            let user = s.client.get_user().await?.into_inner().message;
            out.show(&user, || format!("{} on {} ({})", user.username, s.name, s.url));
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "gradient", &mut script);
            say_raw!("{}", String::from_utf8_lossy(&script));
            Ok(0)
        }
        Command::Org(c) => cli::org(&session(server)?, c, out).await,
        Command::Project(c) => cli::project(&session(server)?, c, out).await,
        Command::Cache(c) => cache::run(server, c, out).await,
        Command::Worker(c) => cli::worker(&session(server)?, c, out).await,
        Command::Key(c) => cli::key(&session(server)?, c, out).await,
        Command::Eval { project, commit, watch } => {
            let s = session(server)?;
            let (org, name) = org_and_name(&project, "PROJECT")?;
            let body = types::EvaluateRequest { commit };
            let evaluation = s
                .client
                .evaluate_project(&org, &name, &body)
                .await?
                .into_inner()
                .message;
            if !watch {
                out.show(&evaluation, || format!("{}\t{}", evaluation.id, evaluation.status));
                return Ok(0);
            }
            watch::evaluation(&s, evaluation.id, out).await
        }
        Command::Evals { project } => {
            let s = session(server)?;
            let (org, name) = org_and_name(&project, "PROJECT")?;
            let list = s
                .client
                .list_project_evaluations(&org, &name)
                .await?
                .into_inner()
                .message;
            out.table(&list, &["ID", "STATUS", "COMMIT", "CREATED"], |e| {
                vec![
                    e.id.to_string(),
                    e.status.clone(),
                    short(&e.commit),
                    e.created_at.to_rfc3339(),
                ]
            });
            Ok(0)
        }
        Command::Builds { evaluation, failed } => {
            let s = session(server)?;
            let id = parse_id(&evaluation, "an evaluation")?;
            let mut list = s.client.list_evaluation_builds(&id).await?.into_inner().message;
            if failed {
                list.retain(|b| matches!(b.status.as_str(), "Failed" | "DependencyFailed" | "Aborted"));
            }
            out.table(&list, &["ID", "STATUS", "DERIVATION"], |b| {
                vec![b.id.to_string(), b.status.clone(), b.drv_path.clone()]
            });
            Ok(0)
        }
        Command::Log { build, follow } => {
            watch::log(&session(server)?, parse_id(&build, "a build")?, follow, out).await
        }
        Command::Abort { evaluation } => act(&session(server)?, &evaluation, "abort", out).await,
        Command::Restart { evaluation } => act(&session(server)?, &evaluation, "restart", out).await,
    }
}

async fn act(s: &Session, evaluation: &str, method: &str, out: Out) -> Result<u8> {
    let id = parse_id(evaluation, "an evaluation")?;
    let body = types::EvaluationAction {
        method: method.to_owned(),
    };
    let e = s.client.act_on_evaluation(&id, &body).await?.into_inner().message;
    out.show(&e, || format!("{}\t{}", e.id, e.status));
    Ok(0)
}

fn short(commit: &str) -> String {
    commit.chars().take(12).collect()
}

/// The API key: `GRADIENT_API_KEY`, else a prompt on a terminal, else the first line of standard input.
fn read_key() -> Result<String> {
    if let Ok(k) = std::env::var("GRADIENT_API_KEY")
        && !k.trim().is_empty()
    {
        return Ok(k.trim().to_owned());
    }
    use std::io::IsTerminal;
    let key = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("API key (create one in the web UI or with `POST /user/keys`): ")
            .map_err(|e| Fail::usage(format!("Cannot read the API key: {e}.")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Fail::usage(format!("Cannot read the API key from standard input: {e}.")))?;
        line
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(Fail::usage(
            "No API key was given: type it at the prompt, pipe it in, or set GRADIENT_API_KEY.",
        ));
    }
    Ok(key)
}

async fn login(url: &str, name: Option<String>, out: Out) -> Result<u8> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Fail::usage(format!(
            "\"{url}\" is not a server address: write it with http:// or https://."
        )));
    }
    let url = url.trim_end_matches('/').to_owned();
    let key = read_key()?;
    let client = gradient_client::connect(&url, Some(&key))?;
    let user = client.get_user().await?.into_inner().message;
    let (path, mut config) = load_config()?;
    let name = name.unwrap_or_else(|| config::default_name(&url));
    config
        .servers
        .insert(name.clone(), config::Server { url: url.clone(), key });
    config.default = Some(name.clone());
    config.save(&path).map_err(Fail::failed)?;
    out.show(
        &serde_json::json!({"server": name, "url": url, "username": user.username}),
        || format!("Logged in to {name} ({url}) as {}.", user.username),
    );
    Ok(0)
}

fn logout(name: Option<&str>, out: Out) -> Result<u8> {
    let (path, mut config) = load_config()?;
    let name = config.server(name).map_err(Fail::usage)?.0;
    config.servers.remove(&name);
    if config.default.as_deref() == Some(&name) {
        config.default = config.servers.keys().next().cloned();
    }
    config.save(&path).map_err(Fail::failed)?;
    out.show(&serde_json::json!({"server": name}), || {
        format!("Logged out of {name}; its key is forgotten.")
    });
    Ok(0)
}
