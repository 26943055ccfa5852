//! Every view drawn into ratatui's `TestBackend` from a fixed state, compared with the snapshots in
//! `tests/snapshots/` (`INSTA_UPDATE=always cargo test -p gradient-tui` rewrites them; review the diff), at a
//! roomy 100×30 and at a narrow 80×24; and the keys that move between views.

use chrono::{DateTime, TimeZone, Utc};
use gradient_tui::state::{Action, App, BuildRow, EvaluationDetail, EvaluationRow, QueueRow, Update, View, WorkerRow};
use gradient_tui::ui;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use uuid::Uuid;

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 5, h, m, s)
        .single()
        .expect("a valid time")
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn build(n: u128, name: &str, status: &str, started: Option<u32>, finished: Option<u32>) -> BuildRow {
    BuildRow {
        id: id(n),
        drv_path: format!("/nix/store/{:032}-{name}.drv", n),
        status: status.into(),
        broken_by: None,
        created_at: at(12, 0, 0),
        started_at: started.map(|s| at(12, 0, s)),
        finished_at: finished.map(|s| at(12, 1, s)),
    }
}

fn evaluation_row(n: u128, project: &str, status: &str, done: usize, total: usize) -> EvaluationRow {
    EvaluationRow {
        id: id(n),
        org: "acme".into(),
        project: project.into(),
        commit: format!("{:08x}{}", (n as u32).wrapping_mul(0x9e37_79b9), "0".repeat(32)),
        status: status.into(),
        created_at: at(11, 50 - n as u32, 0),
        done,
        total,
    }
}

/// A server with two workers, a busy queue, three evaluations, one of them open, and a log.
fn app() -> App {
    let mut app = App::new("ci.example.com", at(12, 2, 0));
    app.apply(Update::Identity { user: "alice".into() });
    app.apply(Update::Connected(true));
    app.apply(Update::Workers(vec![
        WorkerRow {
            org: "acme".into(),
            peer_id: "a1b2c3d4-0000-4000-8000-000000000001".into(),
            worker_id: "5e1f0c2a-0000-4000-8000-000000000001".into(),
            connected: true,
            registered_at: at(9, 0, 0),
            systems: vec!["x86_64-linux".into(), "i686-linux".into()],
            features: vec!["kvm".into()],
            build_slots: 4,
            jobs: vec!["docs".into(), "evaluation".into()],
        },
        WorkerRow {
            org: "acme".into(),
            peer_id: "77c0ffee-0000-4000-8000-000000000002".into(),
            worker_id: "9d8e7f60-0000-4000-8000-000000000002".into(),
            connected: false,
            registered_at: at(9, 5, 0),
            systems: vec![],
            features: vec![],
            build_slots: 0,
            jobs: vec![],
        },
    ]));
    app.apply(Update::Queue(vec![
        QueueRow {
            org: "acme".into(),
            system: "x86_64-linux".into(),
            queued: 3,
            building: 1,
            oldest_waiting: Some(at(11, 58, 30)),
        },
        QueueRow {
            org: "acme".into(),
            system: "evaluation".into(),
            queued: 0,
            building: 1,
            oldest_waiting: None,
        },
        QueueRow {
            org: "widgets".into(),
            system: "aarch64-linux".into(),
            queued: 0,
            building: 2,
            oldest_waiting: None,
        },
    ]));
    app.apply(Update::Evaluations(vec![
        evaluation_row(1, "website", "Building", 3, 7),
        evaluation_row(2, "tools", "Failed", 4, 4),
        evaluation_row(3, "website", "Completed", 12, 12),
    ]));
    app
}

fn open_evaluation(app: &mut App) {
    app.view = View::Evaluations;
    assert_eq!(app.on_key(key(KeyCode::Enter)), Action::OpenEvaluation(id(1)));
    app.apply(Update::Evaluation(EvaluationDetail {
        row: EvaluationRow {
            org: String::new(),
            project: String::new(),
            ..evaluation_row(1, "", "Building", 3, 7)
        },
        builds: vec![
            build(11, "hello-2.12", "Completed", Some(0), Some(10)),
            build(12, "libfoo-1.0", "Failed", Some(5), Some(40)),
            BuildRow {
                broken_by: Some(build(12, "libfoo-1.0", "Failed", None, None).drv_path),
                ..build(13, "app-1.0", "DependencyFailed", None, Some(41))
            },
            build(18, "orphan-2.0", "DependencyFailed", None, Some(42)),
            build(14, "docs", "Building", Some(30), None),
            build(15, "bar-0.3", "Queued", None, None),
            build(16, "baz-0.4", "Queued", None, None),
            build(17, "zlib-1.3", "Substituted", None, Some(1)),
        ],
        errors: vec![],
    }));
}

fn open_log(app: &mut App) {
    open_evaluation(app);
    // Failed builds come first: the first row is libfoo.
    match app.on_key(key(KeyCode::Enter)) {
        Action::OpenLog { build, title } => {
            assert_eq!((build, title.as_str()), (id(12), "libfoo-1.0"));
        }
        other => panic!("Enter on a build opens its log, not {other:?}"),
    }
    let mut text = String::new();
    for i in 1..=40 {
        text.push_str(&format!("building libfoo: step {i}\n"));
    }
    text.push_str("libfoo.c:12: error: expected ';' before '}' token\nmake: *** [all] Error 1\n");
    app.apply(Update::LogText { build: id(12), text });
    app.apply(Update::LogEnd {
        build: id(12),
        status: "Failed".into(),
    });
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
    terminal.draw(|f| ui::draw(f, app)).expect("drawn");
    terminal.backend().to_string()
}

fn both_sizes(name: &str, app: &App) {
    insta::assert_snapshot!(format!("{name}_100x30"), render(app, 100, 30));
    insta::assert_snapshot!(format!("{name}_80x24"), render(app, 80, 24));
}

#[test]
fn workers_view() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('1')));
    assert_eq!(app.view, View::Workers);
    both_sizes("workers", &app);
}

#[test]
fn queue_view() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('2')));
    assert_eq!(app.view, View::Queue);
    both_sizes("queue", &app);
}

#[test]
fn evaluations_view() {
    let app = app();
    assert_eq!(app.view, View::Evaluations, "the monitor opens on the evaluations");
    both_sizes("evaluations", &app);
}

#[test]
fn evaluation_view_groups_builds_by_status() {
    let mut app = app();
    open_evaluation(&mut app);
    assert_eq!(app.view, View::Evaluation);
    let order: Vec<&str> = app.visible_builds().iter().map(|b| ui::drv_name(&b.drv_path)).collect();
    assert_eq!(
        order,
        [
            "libfoo-1.0",
            "app-1.0",
            "orphan-2.0",
            "docs",
            "bar-0.3",
            "baz-0.4",
            "hello-2.12",
            "zlib-1.3"
        ],
        "failures first, each with what it broke under it"
    );
    both_sizes("evaluation", &app);
}

#[test]
fn log_view_follows_the_end_and_jumps_to_the_first_error() {
    let mut app = app();
    open_log(&mut app);
    both_sizes("log_following", &app);
    app.on_key(key(KeyCode::Char('e')));
    assert_eq!(app.log.scroll, Some(40), "the first error is the compiler's line");
    both_sizes("log_first_error", &app);
}

#[test]
fn log_search_finds_and_highlights() {
    let mut app = app();
    open_log(&mut app);
    for c in "/step 3".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.log.scroll, Some(2), "\"step 3\" is first on line 3");
    app.on_key(key(KeyCode::Char('n')));
    assert_eq!(app.log.scroll, Some(29), "then \"step 30\"");
    insta::assert_snapshot!("log_search_80x24", render(&app, 80, 24));
}

#[test]
fn help_and_filter() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('?')));
    insta::assert_snapshot!("help_80x24", render(&app, 80, 24));
    app.on_key(key(KeyCode::Char('x')));
    assert!(!app.help, "any key closes the help");
    for c in "/tools".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.visible_evaluations().len(), 1);
    insta::assert_snapshot!("evaluations_filtered_80x24", render(&app, 80, 24));
}

#[test]
fn escape_goes_back_and_commands_switch_views() {
    let mut app = app();
    open_log(&mut app);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.view, View::Evaluation);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.view, View::Evaluations);
    for c in ":workers".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.view, View::Workers);
    for c in ":nonsense".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    assert!(app.message.as_deref().is_some_and(|m| m.contains("unknown command")));
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
}

#[test]
fn a_lost_connection_shows_in_the_header() {
    let mut app = app();
    app.apply(Update::Connected(false));
    let screen = render(&app, 80, 24);
    assert!(screen.contains("disconnected"), "{screen}");
}
