//! What the monitor shows and how keys change it: plain data, no I/O. The network task sends [`Update`]s
//! in; key handling answers [`Action`]s for the network task to carry out. Everything here is tested
//! without a terminal or a server.

use chrono::{DateTime, Utc};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Workers,
    Queue,
    Evaluations,
    Evaluation,
    Log,
}

impl View {
    pub const TOP: [View; 3] = [View::Workers, View::Queue, View::Evaluations];

    pub fn title(self) -> &'static str {
        match self {
            View::Workers => "Workers",
            View::Queue => "Queue",
            View::Evaluations => "Evaluations",
            View::Evaluation => "Evaluation",
            View::Log => "Log",
        }
    }

    fn named(name: &str) -> Option<View> {
        match name.trim().to_lowercase().as_str() {
            "w" | "workers" | "1" => Some(View::Workers),
            "q" | "queue" | "2" => Some(View::Queue),
            "e" | "evals" | "evaluations" | "3" => Some(View::Evaluations),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub org: String,
    pub peer_id: String,
    pub worker_id: String,
    pub connected: bool,
    pub registered_at: DateTime<Utc>,
    pub systems: Vec<String>,
    pub features: Vec<String>,
    pub build_slots: u32,
    /// The names of the jobs it runs for the organization (derivation names, `evaluation`).
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationRow {
    pub id: Uuid,
    pub org: String,
    pub project: String,
    pub commit: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Builds that ended, and all builds, when known.
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRow {
    pub id: Uuid,
    pub drv_path: String,
    pub status: String,
    /// For a build whose dependency failed: the `.drv` path of the failed input of this evaluation, when known.
    pub broken_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationDetail {
    pub row: EvaluationRow,
    pub builds: Vec<BuildRow>,
    pub errors: Vec<String>,
}

/// Jobs waiting and running in one organization for one system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    pub org: String,
    pub system: String,
    pub queued: usize,
    pub building: usize,
    pub oldest_waiting: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogView {
    pub build: Option<Uuid>,
    pub title: String,
    pub text: String,
    /// The first line shown; `None` follows the end.
    pub scroll: Option<usize>,
    pub search: String,
    pub ended: Option<String>,
}

impl LogView {
    pub fn lines(&self) -> Vec<&str> {
        self.text.lines().collect()
    }

    /// The first line that looks like an error, as Nix and compilers print them.
    pub fn first_error(&self) -> Option<usize> {
        self.text.lines().position(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("failed")
        })
    }

    fn next_match(&self, from: usize) -> Option<usize> {
        if self.search.is_empty() {
            return None;
        }
        let needle = self.search.to_lowercase();
        let lines = self.lines();
        (from..lines.len())
            .chain(0..from.min(lines.len()))
            .find(|&i| lines[i].to_lowercase().contains(&needle))
    }
}

/// What the network task tells the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Identity { user: String },
    Connected(bool),
    Workers(Vec<WorkerRow>),
    Evaluations(Vec<EvaluationRow>),
    Queue(Vec<QueueRow>),
    Evaluation(EvaluationDetail),
    LogText { build: Uuid, text: String },
    LogEnd { build: Uuid, status: String },
    Error(String),
}

/// What the UI asks the network task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    OpenEvaluation(Uuid),
    OpenLog { build: Uuid, title: String },
}

/// A line being typed at the bottom: a `:` command, a `/` filter or a log search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Command(String),
    Filter(String),
}

#[derive(Debug, Clone)]
pub struct App {
    pub server: String,
    pub user: String,
    pub live: bool,
    pub now: DateTime<Utc>,
    pub view: View,
    back: Vec<View>,
    pub selected: usize,
    pub filter: String,
    pub prompt: Option<Prompt>,
    pub help: bool,
    pub message: Option<String>,
    pub workers: Vec<WorkerRow>,
    pub evaluations: Vec<EvaluationRow>,
    pub queue: Vec<QueueRow>,
    pub evaluation: Option<EvaluationDetail>,
    pub log: LogView,
}

pub fn is_finished(status: &str) -> bool {
    !matches!(status, "Queued" | "Building")
}

pub fn is_failure(status: &str) -> bool {
    matches!(status, "Failed" | "DependencyFailed" | "Aborted")
}

impl App {
    pub fn new(server: impl Into<String>, now: DateTime<Utc>) -> App {
        App {
            server: server.into(),
            user: String::new(),
            live: false,
            now,
            view: View::Evaluations,
            back: Vec::new(),
            selected: 0,
            filter: String::new(),
            prompt: None,
            help: false,
            message: None,
            workers: Vec::new(),
            evaluations: Vec::new(),
            queue: Vec::new(),
            evaluation: None,
            log: LogView::default(),
        }
    }

    /// The header's counts: builds queued and building, evaluations failed in the last 24 h, workers
    /// connected.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let queued = self.queue.iter().map(|q| q.queued).sum();
        let building = self.queue.iter().map(|q| q.building).sum();
        let day = self.now - chrono::Duration::hours(24);
        let failed = self
            .evaluations
            .iter()
            .filter(|e| is_failure(&e.status) && e.created_at >= day)
            .count();
        let connected = self.workers.iter().filter(|w| w.connected).count();
        (queued, building, failed, connected)
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    pub fn visible_workers(&self) -> Vec<&WorkerRow> {
        self.workers
            .iter()
            .filter(|w| self.matches(&format!("{} {} {}", w.org, w.peer_id, w.worker_id)))
            .collect()
    }

    pub fn visible_evaluations(&self) -> Vec<&EvaluationRow> {
        self.evaluations
            .iter()
            .filter(|e| self.matches(&format!("{}/{} {} {}", e.org, e.project, e.status, e.commit)))
            .collect()
    }

    /// The open evaluation's builds in the order shown: failed ones, each followed by what it broke (the
    /// builds whose dependency it was: [`App::depth`] 1), then running, queued and done.
    pub fn visible_builds(&self) -> Vec<&BuildRow> {
        let Some(e) = &self.evaluation else { return Vec::new() };
        let rank = |s: &str| match s {
            _ if is_failure(s) => 0,
            "Building" => 1,
            "Queued" => 2,
            _ => 3,
        };
        let shown = |b: &&BuildRow| self.matches(&format!("{} {}", b.drv_path, b.status));
        let is_child = |b: &BuildRow| {
            b.broken_by
                .as_ref()
                .is_some_and(|d| e.builds.iter().any(|x| &x.drv_path == d && x.drv_path != b.drv_path))
        };
        let mut roots: Vec<&BuildRow> = e.builds.iter().filter(|b| !is_child(b)).collect();
        roots.sort_by_key(|b| (rank(&b.status), b.drv_path.clone()));
        let mut out = Vec::new();
        for root in roots {
            if shown(&root) {
                out.push(root);
            }
            let mut children: Vec<&BuildRow> = e
                .builds
                .iter()
                .filter(|b| b.broken_by.as_deref() == Some(root.drv_path.as_str()) && is_child(b))
                .filter(shown)
                .collect();
            children.sort_by_key(|b| b.drv_path.clone());
            out.extend(children);
        }
        out
    }

    /// How far a build is indented under the failure that broke it (0 or 1).
    pub fn depth(&self, build: &BuildRow) -> usize {
        let known = self.evaluation.as_ref().is_some_and(|e| {
            build.broken_by.as_ref().is_some_and(|d| {
                e.builds
                    .iter()
                    .any(|x| &x.drv_path == d && x.drv_path != build.drv_path)
            })
        });
        usize::from(known)
    }

    fn rows(&self) -> usize {
        match self.view {
            View::Workers => self.visible_workers().len(),
            View::Queue => self.queue.len(),
            View::Evaluations => self.visible_evaluations().len(),
            View::Evaluation => self.visible_builds().len(),
            View::Log => self.log.lines().len(),
        }
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Identity { user } => self.user = user,
            Update::Connected(live) => self.live = live,
            Update::Workers(w) => self.workers = w,
            Update::Evaluations(e) => self.evaluations = e,
            Update::Queue(q) => self.queue = q,
            Update::Evaluation(mut e) => match &self.evaluation {
                Some(open) if open.row.id != e.row.id => {}
                open => {
                    // The detail does not name its project: keep what the list said.
                    if let Some(open) = open
                        && e.row.org.is_empty()
                    {
                        e.row.org.clone_from(&open.row.org);
                        e.row.project.clone_from(&open.row.project);
                    }
                    self.evaluation = Some(e);
                }
            },
            Update::LogText { build, text } => {
                if self.log.build == Some(build) {
                    self.log.text.push_str(&text);
                }
            }
            Update::LogEnd { build, status } => {
                if self.log.build == Some(build) {
                    self.log.ended = Some(status);
                }
            }
            Update::Error(m) => self.message = Some(m),
        }
        self.selected = self.selected.min(self.rows().saturating_sub(1));
    }

    fn go(&mut self, view: View) {
        if self.view != view {
            self.back.push(self.view);
            self.view = view;
            self.selected = 0;
        }
    }

    fn switch_top(&mut self, view: View) {
        self.back.clear();
        self.view = view;
        self.selected = 0;
        self.filter.clear();
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(prompt) = self.prompt.take() {
            return self.on_prompt_key(prompt, key);
        }
        if self.help {
            self.help = false;
            return Action::None;
        }
        self.message = None;
        let page = 10;
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char(':') => self.prompt = Some(Prompt::Command(String::new())),
            KeyCode::Char('/') => self.prompt = Some(Prompt::Filter(String::new())),
            KeyCode::Char(c @ '1'..='3') => {
                if let Some(v) = View::named(&c.to_string()) {
                    self.switch_top(v);
                }
            }
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                } else if let Some(v) = self.back.pop() {
                    self.view = v;
                    self.selected = 0;
                }
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll(-1),
            KeyCode::PageDown => self.scroll(page),
            KeyCode::PageUp => self.scroll(-page),
            KeyCode::Home | KeyCode::Char('g') => self.scroll(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => {
                if self.view == View::Log {
                    self.log.scroll = None;
                } else {
                    self.scroll(isize::MAX / 2);
                }
            }
            KeyCode::Char('f') if self.view == View::Log => {
                self.log.scroll = None;
            }
            KeyCode::Char('e') if self.view == View::Log => match self.log.first_error() {
                Some(line) => self.log.scroll = Some(line),
                None => self.message = Some("no error in this log".into()),
            },
            KeyCode::Char('n') if self.view == View::Log => {
                let from = self.log.scroll.map_or(0, |s| s + 1);
                match self.log.next_match(from) {
                    Some(line) => self.log.scroll = Some(line),
                    None => self.message = Some(format!("\"{}\" not found", self.log.search)),
                }
            }
            KeyCode::Enter => return self.open(),
            _ => {}
        }
        Action::None
    }

    fn scroll(&mut self, by: isize) {
        if self.view == View::Log {
            let last = self.log.lines().len().saturating_sub(1);
            let from = self.log.scroll.unwrap_or(last);
            self.log.scroll = Some(from.saturating_add_signed(by).min(last));
            return;
        }
        let last = self.rows().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(by).min(last);
    }

    fn open(&mut self) -> Action {
        match self.view {
            View::Evaluations => {
                let Some(e) = self.visible_evaluations().get(self.selected).map(|e| (*e).clone()) else {
                    return Action::None;
                };
                self.evaluation = Some(EvaluationDetail {
                    row: e.clone(),
                    builds: Vec::new(),
                    errors: Vec::new(),
                });
                self.filter.clear();
                self.go(View::Evaluation);
                Action::OpenEvaluation(e.id)
            }
            View::Evaluation => {
                let Some(b) = self.visible_builds().get(self.selected).map(|b| (*b).clone()) else {
                    return Action::None;
                };
                let title = crate::ui::drv_name(&b.drv_path).to_owned();
                self.log = LogView {
                    build: Some(b.id),
                    title: title.clone(),
                    ..LogView::default()
                };
                self.filter.clear();
                self.go(View::Log);
                Action::OpenLog { build: b.id, title }
            }
            _ => Action::None,
        }
    }

    fn on_prompt_key(&mut self, prompt: Prompt, key: KeyEvent) -> Action {
        let (mut text, is_command) = match prompt {
            Prompt::Command(t) => (t, true),
            Prompt::Filter(t) => (t, false),
        };
        match key.code {
            KeyCode::Esc => return Action::None,
            KeyCode::Enter => {
                if is_command {
                    return self.command(&text);
                }
                if self.view == View::Log {
                    self.log.search = text;
                    match self.log.next_match(0) {
                        Some(line) => self.log.scroll = Some(line),
                        None => self.message = Some(format!("\"{}\" not found", self.log.search)),
                    }
                } else {
                    self.filter = text;
                    self.selected = 0;
                }
                return Action::None;
            }
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => {}
        }
        self.prompt = Some(if is_command {
            Prompt::Command(text)
        } else {
            Prompt::Filter(text)
        });
        Action::None
    }

    fn command(&mut self, text: &str) -> Action {
        match text.trim() {
            "q" | "quit" => return Action::Quit,
            "help" => self.help = true,
            other => match View::named(other) {
                Some(v) => self.switch_top(v),
                None => self.message = Some(format!("unknown command :{other} (try :workers, :queue, :evals, :q)")),
            },
        }
        Action::None
    }
}
