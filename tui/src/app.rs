//! The dashboard's state and how each action changes it: pure, fed with
//! actions and the time, so tests drive it without a terminal. Drawing is
//! in `view`, I/O in `observer` and `event_loop`.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use faultline_api::Phase;
use faultline_engine::Snapshot;
use ratatui::widgets::TableState;

use crate::model::{Figures, History};

/// A run as the dashboard is told of it: by the local runtime, or from an
/// Experiment's status in a cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFeed {
    /// The experiment's name.
    pub name: String,
    /// The observer serving this run's figures, once known (local mode
    /// starts one of its own).
    pub observer: Option<String>,
    /// What is going on before the run begins ("starting checkout"), or
    /// why its state is not known.
    pub note: Option<String>,
    pub run: Option<Snapshot>,
}

#[derive(Debug)]
pub enum Action {
    Key(KeyEvent),
    /// The terminal changed size: draw again.
    Resize,
    /// Time passed: counters move.
    Tick,
    Figures(Figures),
    ObserverDown {
        error: String,
        retry_in: Duration,
    },
    Run(RunFeed),
    /// Nothing more will come about the run.
    RunClosed,
    /// What became of an abort: what to tell the user, or why it failed.
    AbortDone(Result<String, String>),
    /// Close the dashboard (asked from outside, e.g. a signal).
    Close,
}

/// Work the event loop does for the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Stop the running experiment at once.
    Abort,
    /// Start reading the observer at this address.
    Follow(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Services,
    Edges,
    Experiment,
}

impl View {
    pub fn title(self) -> &'static str {
        match self {
            View::Services => "Services",
            View::Edges => "Edges",
            View::Experiment => "Experiment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter (`/`); applied as it is typed.
    Filter {
        before: String,
    },
    /// Typing a command (`:`).
    Command(String),
    Help,
    ConfirmAbort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    Rate,
    Errors,
    P99,
}

impl Sort {
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::Rate => "req/s",
            Sort::Errors => "errors",
            Sort::P99 => "p99",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::Rate,
            Sort::Rate => Sort::Errors,
            Sort::Errors => Sort::P99,
            Sort::P99 => Sort::Name,
        }
    }

    fn parse(s: &str) -> Option<Sort> {
        match s {
            "name" | "n" => Some(Sort::Name),
            "rate" | "req" | "rps" | "r" => Some(Sort::Rate),
            "errors" | "err" | "e" => Some(Sort::Errors),
            "p99" | "latency" | "l" => Some(Sort::P99),
            _ => None,
        }
    }
}

/// Where the observer stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// No address yet (local mode before the observer listens).
    NoAddress,
    Connecting(String),
    Live(String),
    Down {
        url: String,
        error: String,
        retry_in: Duration,
    },
    /// The run is over and its observer with it; the last figures stay.
    Stopped(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AbortState {
    Idle,
    Sent,
    /// Sent, with what to tell the user, until the run ends.
    Done(String),
}

#[derive(Debug)]
pub struct App {
    pub(crate) link: Link,
    pub(crate) figures: Figures,
    pub(crate) history: History,
    /// The run and when it was received (time left counts on from there).
    pub(crate) run: Option<(RunFeed, Instant)>,
    pub(crate) run_closed: bool,
    pub(crate) view: View,
    pub(crate) mode: Mode,
    pub(crate) filter: String,
    pub(crate) sort: Sort,
    pub(crate) services_table: TableState,
    pub(crate) edges_table: TableState,
    pub(crate) can_abort: bool,
    pub(crate) abort: AbortState,
    /// A message for the footer, until the next key.
    pub(crate) message: Option<String>,
    pub(crate) quit: bool,
    pub(crate) now: Instant,
    /// Ctrl-C aborts the run rather than quitting (see `Sources`).
    pub(crate) ctrl_c_aborts: bool,
    /// The last frame was the "too small" message: keys other than quit
    /// would act out of sight.
    pub(crate) too_small: bool,
    /// Bumped with each new set of figures.
    pub(crate) figures_version: u64,
    /// The rows of the services or edges view, filtered and sorted, kept
    /// until the figures, the filter, the sort or the view change.
    pub(crate) order: Option<Order>,
}

/// What a cached row order was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderKey {
    pub(crate) version: u64,
    pub(crate) filter: String,
    pub(crate) sort: Sort,
    pub(crate) edges: bool,
}

#[derive(Debug)]
pub(crate) struct Order {
    pub(crate) key: OrderKey,
    /// (service, edge) indices into the figures; the edge is unused in
    /// the services view.
    pub(crate) rows: Vec<(usize, usize)>,
    /// The widest service name among the rows (characters).
    pub(crate) widest: usize,
}

impl App {
    /// A dashboard reading the observer at `observer` (or the one the run
    /// names), able to abort runs when `can_abort`.
    pub fn new(observer: Option<String>, can_abort: bool, now: Instant) -> App {
        App {
            link: observer.map_or(Link::NoAddress, Link::Connecting),
            figures: Figures::default(),
            history: History::default(),
            run: None,
            run_closed: false,
            view: View::Services,
            mode: Mode::Normal,
            filter: String::new(),
            sort: Sort::Name,
            services_table: TableState::default().with_selected(0),
            edges_table: TableState::default().with_selected(0),
            can_abort,
            abort: AbortState::Idle,
            message: None,
            quit: false,
            now,
            ctrl_c_aborts: false,
            too_small: false,
            figures_version: 0,
            order: None,
        }
    }

    /// Ctrl-C aborts the run (local mode) instead of quitting.
    pub fn with_ctrl_c_abort(mut self, aborts: bool) -> App {
        self.ctrl_c_aborts = aborts && self.can_abort;
        self
    }

    /// What to do first: follow the observer given at the start.
    pub fn start(&self) -> Vec<Effect> {
        match &self.link {
            Link::Connecting(url) => vec![Effect::Follow(url.clone())],
            _ => Vec::new(),
        }
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The run's snapshot with its clock moved on to now, while it runs.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let (feed, received) = self.run.as_ref()?;
        let mut s = feed.run.clone()?;
        if !self.run_closed && matches!(s.phase, Phase::Pending | Phase::Injecting | Phase::Running)
        {
            s.at += self.now.saturating_duration_since(*received);
        }
        Some(s)
    }

    pub fn run_name(&self) -> Option<&str> {
        self.run.as_ref().map(|(f, _)| f.name.as_str())
    }

    /// A run is going on that an abort would stop.
    pub(crate) fn abortable(&self) -> bool {
        !self.run_closed
            && self
                .run
                .as_ref()
                .and_then(|(f, _)| f.run.as_ref())
                .is_some_and(|s| {
                    matches!(s.phase, Phase::Pending | Phase::Injecting | Phase::Running)
                })
    }

    pub fn update(&mut self, action: Action, now: Instant) -> Vec<Effect> {
        self.now = now;
        match action {
            Action::Key(key) if key.kind != KeyEventKind::Release => return self.key(key),
            Action::Key(_) | Action::Resize | Action::Tick => {}
            Action::Figures(f) => {
                if let Link::Connecting(url) | Link::Down { url, .. } = &self.link {
                    self.link = Link::Live(url.clone());
                }
                self.history.record(&f);
                self.figures = f;
                self.figures_version += 1;
            }
            Action::ObserverDown { error, retry_in } => match &self.link {
                Link::Stopped(_) | Link::NoAddress => {}
                Link::Connecting(url) | Link::Live(url) | Link::Down { url, .. } => {
                    let url = url.clone();
                    self.link = if self.run_closed {
                        Link::Stopped(url)
                    } else {
                        Link::Down {
                            url,
                            error,
                            retry_in,
                        }
                    };
                }
            },
            Action::Run(feed) => {
                let mut effects = Vec::new();
                if let (Link::NoAddress, Some(url)) = (&self.link, &feed.observer) {
                    self.link = Link::Connecting(url.clone());
                    effects.push(Effect::Follow(url.clone()));
                }
                self.run = Some((feed, now));
                // The dialog stays only while there is something to abort.
                if matches!(self.mode, Mode::ConfirmAbort) && !self.abortable() {
                    self.mode = Mode::Normal;
                }
                return effects;
            }
            Action::RunClosed => {
                self.run_closed = true;
                if let Link::Down { url, .. } = &self.link {
                    self.link = Link::Stopped(url.clone());
                }
                if matches!(self.mode, Mode::ConfirmAbort) {
                    self.mode = Mode::Normal;
                }
            }
            Action::AbortDone(Ok(said)) => self.abort = AbortState::Done(said),
            Action::AbortDone(Err(e)) => {
                // Said once; `a` may try again.
                self.abort = AbortState::Idle;
                self.message = Some(format!("abort failed: {e}"));
            }
            Action::Close => self.quit = true,
        }
        Vec::new()
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            // As without the dashboard, Ctrl-C stops the run this process
            // drives, even one still starting; a second one, or one with
            // nothing to stop, quits.
            self.mode = Mode::Normal;
            let finished = self
                .run
                .as_ref()
                .and_then(|(f, _)| f.run.as_ref())
                .is_some_and(Snapshot::is_finished);
            if self.ctrl_c_aborts && !self.run_closed && !finished && self.abort == AbortState::Idle
            {
                return self.request_abort();
            }
            self.quit = true;
            return Vec::new();
        }
        self.message = None;
        if self.too_small {
            self.quit = matches!(key.code, KeyCode::Char('q'));
            return Vec::new();
        }
        match self.mode.clone() {
            Mode::Help => {
                self.mode = Mode::Normal;
                Vec::new()
            }
            Mode::ConfirmAbort => {
                self.mode = Mode::Normal;
                match key.code {
                    KeyCode::Char('y' | 'Y') => self.request_abort(),
                    _ => {
                        self.message = Some("abort cancelled".into());
                        Vec::new()
                    }
                }
            }
            Mode::Filter { before } => {
                match key.code {
                    KeyCode::Esc => {
                        self.filter = before;
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) if !ctrl => self.filter.push(c),
                    _ => {}
                }
                self.select_first();
                Vec::new()
            }
            Mode::Command(mut line) => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    Vec::new()
                }
                KeyCode::Enter => {
                    self.mode = Mode::Normal;
                    self.command(line.trim())
                }
                KeyCode::Backspace => {
                    if line.pop().is_none() {
                        self.mode = Mode::Normal;
                    } else {
                        self.mode = Mode::Command(line);
                    }
                    Vec::new()
                }
                KeyCode::Char(c) if !ctrl => {
                    line.push(c);
                    self.mode = Mode::Command(line);
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Mode::Normal => self.normal_key(key),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('a') => return self.ask_abort(),
            KeyCode::Char('/') => {
                self.mode = Mode::Filter {
                    before: self.filter.clone(),
                };
            }
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.select_first();
            }
            KeyCode::Tab => {
                self.view = match self.view {
                    View::Services => View::Edges,
                    View::Edges => View::Experiment,
                    View::Experiment => View::Services,
                };
            }
            KeyCode::BackTab => {
                self.view = match self.view {
                    View::Services => View::Experiment,
                    View::Edges => View::Services,
                    View::Experiment => View::Edges,
                };
            }
            // The experiment view has no rows to move through.
            _ if self.view == View::Experiment => {}
            KeyCode::Esc => {
                if !self.filter.is_empty() {
                    self.filter.clear();
                    self.select_first();
                } else {
                    self.view = View::Services;
                }
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll(-1),
            KeyCode::PageDown | KeyCode::Char('f') => self.scroll(10),
            KeyCode::PageUp | KeyCode::Char('b') => self.scroll(-10),
            KeyCode::Home | KeyCode::Char('g') => self.scroll(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.scroll(isize::MAX),
            _ => {}
        }
        Vec::new()
    }

    fn command(&mut self, line: &str) -> Vec<Effect> {
        let mut words = line.split_whitespace();
        match (words.next().unwrap_or(""), words.next()) {
            ("", _) => {}
            ("q" | "q!" | "quit" | "exit", _) => self.quit = true,
            ("svc" | "services" | "service" | "s", _) => self.view = View::Services,
            ("edges" | "edge" | "e", _) => self.view = View::Edges,
            ("exp" | "experiment" | "x" | "run", _) => self.view = View::Experiment,
            ("abort" | "a", _) => return self.ask_abort(),
            ("help" | "h" | "?", _) => self.mode = Mode::Help,
            ("sort", by) => match by.and_then(Sort::parse) {
                Some(sort) => {
                    self.sort = sort;
                    self.select_first();
                }
                None => {
                    self.message =
                        Some("sort by name, rate, errors or p99 (like :sort errors)".into());
                }
            },
            ("filter", first) => {
                let rest: Vec<&str> = first.into_iter().chain(words).collect();
                self.filter = rest.join(" ");
                self.select_first();
            }
            (other, _) => {
                self.message = Some(format!("unknown command :{other} (:help lists them)"));
            }
        }
        Vec::new()
    }

    fn ask_abort(&mut self) -> Vec<Effect> {
        if !self.can_abort {
            self.message = Some("this dashboard follows no experiment it could abort".into());
        } else if !self.abortable() {
            self.message = Some("no experiment is running".into());
        } else if self.abort != AbortState::Idle {
            self.message = Some("the abort is on its way".into());
        } else {
            self.mode = Mode::ConfirmAbort;
        }
        Vec::new()
    }

    fn request_abort(&mut self) -> Vec<Effect> {
        if self.abort != AbortState::Idle {
            return Vec::new();
        }
        self.abort = AbortState::Sent;
        vec![Effect::Abort]
    }

    fn table(&mut self) -> &mut TableState {
        match self.view {
            View::Edges => &mut self.edges_table,
            View::Services | View::Experiment => &mut self.services_table,
        }
    }

    fn select_first(&mut self) {
        self.services_table.select(Some(0));
        self.edges_table.select(Some(0));
        *self.services_table.offset_mut() = 0;
        *self.edges_table.offset_mut() = 0;
    }

    /// Moves the selection; drawing clamps it to the rows there are.
    fn scroll(&mut self, by: isize) {
        let table = self.table();
        let at = table.selected().unwrap_or(0);
        let to = match by {
            isize::MIN => 0,
            isize::MAX => usize::MAX / 2,
            by => at.saturating_add_signed(by),
        };
        table.select(Some(to));
    }
}
