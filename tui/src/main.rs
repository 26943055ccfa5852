//! The terminal side: reads the `gradient` CLI's configuration, starts the network thread, and runs the
//! draw / key loop until `q`.

use gradient_tui::state::{Action, App};
use gradient_tui::{net, ui};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Deserialize)]
struct Config {
    default: Option<String>,
    #[serde(default)]
    servers: BTreeMap<String, Server>,
}

#[derive(Deserialize)]
struct Server {
    url: String,
    key: String,
}

const USAGE: &str = "usage: gradient-tui [--server NAME]\n\nMonitors the server `gradient login` stored (in ~/.config/gradient/config.toml).";

/// The server to watch: `--server NAME` (or GRADIENT_SERVER), else the CLI's default.
fn server() -> Result<(String, Server), String> {
    let mut args = std::env::args().skip(1);
    let mut name = std::env::var("GRADIENT_SERVER").ok();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--server" => name = args.next(),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let path = match std::env::var_os("GRADIENT_CONFIG") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|x| !x.is_empty())
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
                .ok_or("HOME is not set; set GRADIENT_CONFIG")?;
            base.join("gradient/config.toml")
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "not logged in: run `gradient login SERVER` first (no {})",
            path.display()
        )
    })?;
    let mut config: Config =
        toml::from_str(&text).map_err(|e| format!("{} is not valid: {}", path.display(), e.message()))?;
    let name = name
        .or(config.default.clone())
        .or_else(|| config.servers.keys().next().cloned())
        .ok_or("not logged in: run `gradient login SERVER` first")?;
    let mut server = config
        .servers
        .remove(&name)
        .ok_or_else(|| format!("no server named \"{name}\": run `gradient login URL --name {name}` first"))?;
    if let Ok(k) = std::env::var("GRADIENT_API_KEY")
        && !k.is_empty()
    {
        server.key = k;
    }
    Ok((name, server))
}

fn main() -> ExitCode {
    let (name, server) = match server() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gradient-tui: {e}");
            return ExitCode::from(2);
        }
    };
    let client = match gradient_client::connect(&server.url, Some(&server.key)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gradient-tui: {e}");
            return ExitCode::from(2);
        }
    };
    let (updates_tx, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let (actions, actions_rx) = tokio::sync::mpsc::unbounded_channel();
    let network = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(net::run(client, updates_tx, actions_rx));
    });

    let mut terminal = ratatui::init();
    let mut app = App::new(name, chrono::Utc::now());
    let result = (|| -> std::io::Result<()> {
        loop {
            while let Ok(u) = updates.try_recv() {
                app.apply(u);
            }
            app.now = chrono::Utc::now();
            terminal.draw(|f| ui::draw(f, &app))?;
            if event::poll(Duration::from_millis(200))?
                && let Event::Key(key) = event::read()?
                && key.kind == KeyEventKind::Press
            {
                let action = app.on_key(key);
                if action == Action::Quit {
                    return Ok(());
                }
                if action != Action::None {
                    let _ = actions.send(action);
                }
            }
        }
    })();
    ratatui::restore();
    let _ = actions.send(Action::Quit);
    drop(network);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gradient-tui: the terminal failed: {e}");
            ExitCode::from(1)
        }
    }
}
