//! Drawing: a pure function of [`App`], tested with ratatui's `TestBackend`.

use crate::state::{App, Prompt, View, is_failure, is_finished};
use chrono::{DateTime, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState};

/// The name of a derivation without store directory and hash: `/nix/store/abc…-hello-2.12.drv` →
/// `hello-2.12`.
pub fn drv_name(drv: &str) -> &str {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-').map_or(base, |(_, n)| n)
}

/// nix-output-monitor's legend: running ⏵, done ✔, queued ⏸, failed ✗.
pub fn symbol(status: &str) -> (&'static str, Color) {
    match status {
        "Building" | "Fetching" | "Evaluating" => ("⏵", Color::Yellow),
        "Queued" => ("⏸", Color::Blue),
        "Completed" | "Substituted" => ("✔", Color::Green),
        _ if is_failure(status) => ("✗", Color::Red),
        _ => ("·", Color::Gray),
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn elapsed(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let s = (to - from).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn draw(f: &mut Frame, app: &App) {
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_header(f, app, header);
    draw_tabs(f, app, tabs);
    match app.view {
        View::Workers => draw_workers(f, app, body),
        View::Queue => draw_queue(f, app, body),
        View::Evaluations => draw_evaluations(f, app, body),
        View::Evaluation => draw_evaluation(f, app, body),
        View::Log => draw_log(f, app, body),
    }
    draw_footer(f, app, footer);
    if app.help {
        draw_help(f, body);
    }
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    let (queued, building, failed, connected) = app.counts();
    let (live, colour) = if app.live {
        ("● live", Color::Green)
    } else {
        ("○ disconnected", Color::Red)
    };
    let user = if app.user.is_empty() { "?" } else { &app.user };
    let mut line = vec![
        Span::styled(format!("{} ", app.server), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{user} ")),
        Span::styled(live, Style::new().fg(colour)),
        Span::raw(" │ "),
    ];
    // Narrow terminals get the symbols alone (the Evaluation view's legend says what they mean).
    let words = area.width >= 90;
    let (q, b, x) = if words {
        (" queued", " building", " failed")
    } else {
        ("", "", "")
    };
    line.extend([
        Span::styled(format!("⏸ {queued}{q} "), Style::new().fg(Color::Blue)),
        Span::styled(format!("⏵ {building}{b} "), Style::new().fg(Color::Yellow)),
        Span::styled(format!("✗ {failed}{x}/24h"), Style::new().fg(Color::Red)),
        Span::raw(format!(" │ {connected}/{} workers", app.workers.len())),
    ]);
    f.render_widget(Paragraph::new(Line::from(line)), area);
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    for (i, v) in View::TOP.iter().enumerate() {
        let style = if *v == app.view {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        spans.push(Span::styled(format!(" {} {} ", i + 1, v.title()), style));
    }
    match app.view {
        View::Evaluation => spans.push(Span::styled(
            " › Evaluation ",
            Style::new().add_modifier(Modifier::REVERSED),
        )),
        View::Log => spans.push(Span::styled(
            format!(" › Log {} ", app.log.title),
            Style::new().add_modifier(Modifier::REVERSED),
        )),
        _ => {}
    }
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!("  filter: {}", app.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn table_state(selected: usize) -> TableState {
    TableState::default().with_selected(Some(selected))
}

fn highlight() -> Style {
    Style::new().add_modifier(Modifier::REVERSED)
}

fn draw_workers(f: &mut Frame, app: &App, area: Rect) {
    let rows: Vec<Row> = app
        .visible_workers()
        .into_iter()
        .map(|w| {
            let (state, colour) = if w.connected {
                ("● connected", Color::Green)
            } else {
                ("○ offline", Color::DarkGray)
            };
            let slots = if w.connected {
                format!("{}/{}", w.jobs.len(), w.build_slots)
            } else {
                "-".into()
            };
            Row::new(vec![
                Cell::from(Span::styled(state, Style::new().fg(colour))),
                Cell::from(w.org.clone()),
                Cell::from(short_id(&w.worker_id)),
                Cell::from(match w.systems.as_slice() {
                    [] => String::new(),
                    [one] => one.clone(),
                    [first, rest @ ..] => format!("{first} +{}", rest.len()),
                }),
                Cell::from(slots),
                Cell::from(w.jobs.join(", ")),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(15),
            Constraint::Length(5),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(["STATE", "ORG", "WORKER", "SYSTEMS", "BUSY", "JOBS"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(highlight())
    .block(Block::new().borders(Borders::TOP).title(" Workers "));
    f.render_stateful_widget(table, area, &mut table_state(app.selected));
    if empty {
        placeholder(f, area, "No workers registered in your organizations.");
    }
}

/// The first 8 characters of a UUID: enough to tell workers apart on a screen.
fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

fn draw_queue(f: &mut Frame, app: &App, area: Rect) {
    let rows: Vec<Row> = app
        .queue
        .iter()
        .map(|q| {
            Row::new(vec![
                q.org.clone(),
                q.system.clone(),
                q.queued.to_string(),
                q.building.to_string(),
                q.oldest_waiting.map_or_else(|| "-".into(), |t| elapsed(t, app.now)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(15),
        ],
    )
    .header(
        Row::new(["ORG", "SYSTEM", "QUEUED", "RUNNING", "OLDEST WAITING"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(highlight())
    .block(Block::new().borders(Borders::TOP).title(" Queue "));
    f.render_stateful_widget(table, area, &mut table_state(app.selected));
    if empty {
        placeholder(f, area, "Nothing queued or building.");
    }
}

/// `[#####-----]` for `done` of `total`.
fn bar(done: usize, total: usize, width: usize) -> String {
    if total == 0 {
        return " ".repeat(width + 2);
    }
    let filled = (done * width).div_ceil(total).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

fn draw_evaluations(f: &mut Frame, app: &App, area: Rect) {
    let rows: Vec<Row> = app
        .visible_evaluations()
        .into_iter()
        .map(|e| {
            let (sym, colour) = symbol(&e.status);
            Row::new(vec![
                Cell::from(Span::styled(format!("{sym} {}", e.status), Style::new().fg(colour))),
                Cell::from(format!("{}/{}", e.org, e.project)),
                Cell::from(e.commit.chars().take(8).collect::<String>()),
                Cell::from(format!("{} {}/{}", bar(e.done, e.total, 10), e.done, e.total)),
                Cell::from(elapsed(e.created_at, app.now)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(13),
            Constraint::Fill(1),
            Constraint::Length(8),
            Constraint::Length(20),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(["STATUS", "PROJECT", "COMMIT", "BUILDS", "AGE"]).style(Style::new().add_modifier(Modifier::BOLD)))
    .row_highlight_style(highlight())
    .block(Block::new().borders(Borders::TOP).title(" Evaluations (Enter: open) "));
    f.render_stateful_widget(table, area, &mut table_state(app.selected));
    if empty {
        placeholder(f, area, "No evaluations yet.");
    }
}

fn draw_evaluation(f: &mut Frame, app: &App, area: Rect) {
    let Some(e) = &app.evaluation else {
        placeholder(f, area, "No evaluation open.");
        return;
    };
    let count = |p: fn(&str) -> bool| e.builds.iter().filter(|b| p(&b.status)).count();
    let running = count(|s| s == "Building");
    let queued = count(|s| s == "Queued");
    let done = count(|s| matches!(s, "Completed" | "Substituted"));
    let failed = count(is_failure);
    let (sym, colour) = symbol(&e.row.status);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("{sym} {} ", e.row.status), Style::new().fg(colour)),
            Span::raw(format!(
                "{}/{} {}",
                e.row.org,
                e.row.project,
                e.row.commit.chars().take(12).collect::<String>()
            )),
        ]),
        Line::from(vec![
            Span::styled(format!("⏵ {running} running  "), Style::new().fg(Color::Yellow)),
            Span::styled(format!("✔ {done} done  "), Style::new().fg(Color::Green)),
            Span::styled(format!("⏸ {queued} queued  "), Style::new().fg(Color::Blue)),
            Span::styled(format!("✗ {failed} failed"), Style::new().fg(Color::Red)),
        ]),
    ];
    for err in &e.errors {
        lines.push(Line::styled(format!("✗ {err}"), Style::new().fg(Color::Red)));
    }
    let top = lines.len() as u16;
    let [summary, list] = Layout::vertical([Constraint::Length(top), Constraint::Min(1)]).areas(area);
    f.render_widget(Paragraph::new(lines), summary);
    let rows: Vec<Row> = app
        .visible_builds()
        .into_iter()
        .map(|b| {
            let (sym, colour) = symbol(&b.status);
            let time = match (b.started_at, b.finished_at) {
                (Some(s), Some(e)) => elapsed(s, e),
                (Some(s), None) if !is_finished(&b.status) => elapsed(s, app.now),
                (None, None) if b.status == "Queued" => format!("waiting {}", elapsed(b.created_at, app.now)),
                _ => String::new(),
            };
            let name = match (app.depth(b), b.status.as_str()) {
                (1, _) => format!("└ {} (its dependency failed)", drv_name(&b.drv_path)),
                (_, "DependencyFailed") => format!("{} (a dependency failed)", drv_name(&b.drv_path)),
                _ => drv_name(&b.drv_path).to_owned(),
            };
            Row::new(vec![
                Cell::from(Span::styled(sym, Style::new().fg(colour))),
                Cell::from(name),
                Cell::from(Span::styled(b.status.clone(), Style::new().fg(colour))),
                Cell::from(time),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(16),
            Constraint::Length(13),
        ],
    )
    .row_highlight_style(highlight())
    .block(Block::new().borders(Borders::TOP).title(" Builds (Enter: log) "));
    f.render_stateful_widget(table, list, &mut table_state(app.selected));
}

fn draw_log(f: &mut Frame, app: &App, area: Rect) {
    let lines = app.log.lines();
    let height = area.height.saturating_sub(1) as usize;
    let first = match app.log.scroll {
        Some(s) => s.min(lines.len().saturating_sub(1)),
        None => lines.len().saturating_sub(height),
    };
    let needle = app.log.search.to_lowercase();
    let shown: Vec<Line> = lines
        .iter()
        .skip(first)
        .take(height)
        .map(|l| {
            let lower = l.to_lowercase();
            if !needle.is_empty() && lower.contains(&needle) {
                Line::styled(l.to_string(), Style::new().fg(Color::Black).bg(Color::Yellow))
            } else if lower.contains("error") {
                Line::styled(l.to_string(), Style::new().fg(Color::Red))
            } else {
                Line::raw(l.to_string())
            }
        })
        .collect();
    let state = match (&app.log.ended, app.log.scroll) {
        (Some(s), _) => format!(" {s} "),
        (None, None) => " following ".into(),
        (None, Some(_)) => " paused (f: follow) ".into(),
    };
    let block = Block::new().borders(Borders::TOP).title(format!(
        " {} · line {}/{} ·{state}",
        app.log.title,
        first + 1,
        lines.len().max(1)
    ));
    f.render_widget(Paragraph::new(shown).block(block), area);
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    let line = match (&app.prompt, &app.message) {
        (Some(Prompt::Command(t)), _) => Line::raw(format!(":{t}▏")),
        (Some(Prompt::Filter(t)), _) => Line::raw(format!("/{t}▏")),
        (None, Some(m)) => Line::styled(m.clone(), Style::new().fg(Color::Yellow)),
        (None, None) => {
            let keys = match app.view {
                View::Log => "↑↓ scroll  / search  n next  e first error  f follow  Esc back  ? help  q quit",
                View::Evaluation => "↑↓ select  Enter log  / filter  Esc back  ? help  q quit",
                _ => "1-3 views  ↑↓ select  Enter open  / filter  : command  ? help  q quit",
            };
            Line::styled(keys, Style::new().fg(Color::DarkGray))
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

fn placeholder(f: &mut Frame, area: Rect, text: &str) {
    if area.height < 3 {
        return;
    }
    let at = Rect {
        y: area.y + 2,
        height: 1,
        ..area
    };
    f.render_widget(Paragraph::new(Span::styled(text, Style::new().fg(Color::DarkGray))), at);
}

const HELP: &[(&str, &str)] = &[
    ("1 2 3", "Workers, Queue, Evaluations"),
    (":workers :queue :evals", "the same, as commands"),
    ("↑ ↓ PgUp PgDn g G", "move / scroll"),
    ("Enter", "open the evaluation / the build's log"),
    ("/", "filter the list (in a log: search)"),
    ("n", "next match in a log"),
    ("e", "first error in a log"),
    ("f", "follow a log's end"),
    ("Esc", "clear the filter, then back"),
    ("q :q Ctrl-C", "quit"),
];

fn draw_help(f: &mut Frame, area: Rect) {
    let width = area.width.min(60);
    let height = area.height.min(HELP.len() as u16 + 2);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<24}"), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(*v),
            ])
        })
        .collect();
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(" Keys (any key closes) ")),
        popup,
    );
}
