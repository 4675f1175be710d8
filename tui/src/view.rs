//! Drawing the app: the header, the services or edges table, the
//! experiment panel, the footer, and the help and abort overlays. Rows are
//! filtered and sorted once per change of figures, filter or sort, and only
//! the rows on screen are built, so a frame costs about the same at 10 or
//! 10 000 services (`cargo bench -p faultline-tui`).

use std::time::Duration;

use faultline_api::{Phase, Verdict};
use faultline_engine::{CheckReport, FaultState, Snapshot};
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span, Text},
    widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
};

use crate::{
    app::{AbortState, App, Link, Mode, Order, OrderKey, Sort, View},
    model::{BreakerState, Red, Service, sparkline},
};

/// Smaller than this, nothing readable fits.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 15;

/// An error rate at or above this is drawn red; half of it, yellow.
const BAD_ERROR_RATE: f64 = 0.05;

pub fn draw(frame: &mut Frame<'_>, app: &mut App) {
    let area = frame.area();
    app.too_small = area.width < MIN_WIDTH || area.height < MIN_HEIGHT;
    if app.too_small {
        too_small(frame, area);
        return;
    }
    let [header, main, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, app);
    let snapshot = app.snapshot();
    match (app.view, &snapshot) {
        (View::Experiment, _) => draw_experiment(frame, main, app, snapshot.as_ref()),
        (view, snapshot) if app.run.is_some() => {
            // The panel gets what it needs, up to half the screen.
            let wanted = snapshot.as_ref().map_or(3, panel_height);
            let [table, panel] = Layout::vertical([
                Constraint::Min(6),
                Constraint::Length(wanted.min(main.height / 2)),
            ])
            .areas(main);
            draw_table(frame, table, app, view);
            draw_experiment(frame, panel, app, snapshot.as_ref());
        }
        (view, _) => draw_table(frame, main, app, view),
    }
    draw_footer(frame, footer, app);
    match app.mode {
        Mode::Help => draw_help(frame, area),
        Mode::ConfirmAbort => draw_confirm(frame, area, app),
        _ => {}
    }
}

fn too_small(frame: &mut Frame<'_>, area: Rect) {
    let text = Text::from(vec![
        Line::from("Terminal too small".bold()),
        Line::from(format!(
            "{}×{} here; the dashboard needs at least {MIN_WIDTH}×{MIN_HEIGHT}.",
            area.width, area.height
        )),
        Line::from("Enlarge the window, or press q to quit."),
    ]);
    let height = 5.min(area.height);
    let y = area.y + area.height.saturating_sub(height) / 2;
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        Rect::new(area.x, y, area.width, height),
    );
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let mut left = vec![Span::styled(" faultline ", Style::new().bold().reversed())];
    if let Some(name) = app.run_name() {
        left.push(Span::raw(format!(" {name} ")));
    }
    let (dot, text, color) = match &app.link {
        Link::NoAddress => ("○", "observer: starting".to_owned(), Color::Yellow),
        Link::Connecting(url) => ("○", format!("observer {url}: connecting"), Color::Yellow),
        Link::Live(url) => ("●", format!("observer {url}"), Color::Green),
        Link::Down { url, retry_in, .. } => (
            "✗",
            format!(
                "observer {url} unreachable, retrying in {}s",
                retry_in.as_secs().max(1)
            ),
            Color::Red,
        ),
        Link::Stopped(url) => (
            "■",
            format!("observer {url}: stopped with the run"),
            Color::DarkGray,
        ),
    };
    let right = Line::from(vec![
        Span::styled(dot, Style::new().fg(color)),
        Span::raw(format!(" {text} ")),
    ]);
    let left = Line::from(left);
    let right_width = (right.width() as u16).min(area.width.saturating_sub(left.width() as u16));
    let [l, r] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right_width)]).areas(area);
    frame.render_widget(left, l);
    frame.render_widget(right.alignment(Alignment::Right), r);
}

fn draw_footer(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = match &app.mode {
        Mode::Filter { .. } => Line::from(vec![
            Span::styled("/", Style::new().bold()),
            Span::raw(app.filter.clone()),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled("  enter: keep  esc: undo", Style::new().dim()),
        ]),
        Mode::Command(line) => Line::from(vec![
            Span::styled(":", Style::new().bold()),
            Span::raw(line.clone()),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled(
                "  services edges experiment abort sort <by> quit",
                Style::new().dim(),
            ),
        ]),
        _ => match (&app.message, &app.abort) {
            (Some(m), _) => Line::from(Span::styled(m.clone(), Style::new().fg(Color::Yellow))),
            (None, AbortState::Sent) => Line::from(Span::styled(
                "aborting: every fault is being removed…",
                Style::new().fg(Color::Yellow).bold(),
            )),
            (None, AbortState::Done(said)) if app.abortable() => Line::from(Span::styled(
                said.clone(),
                Style::new().fg(Color::Yellow).bold(),
            )),
            _ => hints(app),
        },
    };
    frame.render_widget(line, area);
}

fn hints(app: &App) -> Line<'static> {
    if app.run_closed {
        return Line::from(vec![
            Span::styled("The run is over. ", Style::new().bold()),
            Span::styled("<q>", Style::new().fg(Color::Cyan)),
            Span::raw(" quits and prints the summary"),
        ]);
    }
    let mut keys: Vec<(&str, &str)> = Vec::new();
    if app.can_abort && app.abortable() && app.abort == AbortState::Idle {
        keys.push(("a", "abort"));
    }
    keys.extend([
        ("/", "filter"),
        ("s", "sort"),
        ("tab", "view"),
        (":", "command"),
        ("?", "help"),
        ("q", "quit"),
    ]);
    let mut spans = Vec::new();
    for (key, what) in keys {
        spans.push(Span::styled(
            format!("<{key}>"),
            Style::new().fg(Color::Cyan),
        ));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// Rows of the services or edges view, filtered and sorted.
fn draw_table(frame: &mut Frame<'_>, area: Rect, app: &mut App, view: View) {
    let key = OrderKey {
        version: app.figures_version,
        filter: app.filter.to_lowercase(),
        sort: app.sort,
        edges: view != View::Services,
    };
    if app.order.as_ref().is_none_or(|o| o.key != key) {
        app.order = Some(order_rows(&app.figures.services, key));
    }
    let Some(order) = &app.order else {
        return;
    };
    let services = &app.figures.services;
    let mut title = format!(" {} ", view.title());
    title.push_str(&table_title(order.rows.len(), app));
    let empty = empty_text(app, order.rows.is_empty());
    match view {
        View::Services => {
            let name_width = order.widest.clamp(7, 24) as u16;
            let spark_width = (area.width / 8).clamp(8, 36);
            let widths = [
                Constraint::Length(name_width),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Min(20),
                Constraint::Length(spark_width),
            ];
            let header = [
                "SERVICE", "REQ/S", "ERR%", "P50", "P99", "BREAKERS", "ERRORS",
            ];
            let state = &mut app.services_table;
            let (offset, visible) = window(state, order.rows.len(), area.height.saturating_sub(3));
            let history = &app.history;
            let built: Vec<Row<'_>> = order.rows[offset..offset + visible]
                .iter()
                .filter_map(|(i, _)| services.get(*i))
                .map(|s| {
                    let spark = history
                        .of(&s.name)
                        .map(|h| sparkline(h, usize::from(spark_width), BAD_ERROR_RATE))
                        .unwrap_or_default();
                    let mut cells = red_cells(&s.red);
                    cells.insert(0, Cell::from(s.name.clone()).bold());
                    cells.push(Cell::from(breakers(s)));
                    cells.push(Cell::from(spark).fg(error_color(s.red.error_rate)));
                    Row::new(cells)
                })
                .collect();
            render_rows(
                frame, area, title, &header, &widths, built, offset, state, empty,
            );
        }
        View::Edges | View::Experiment => {
            let widths = [
                Constraint::Min(16),
                Constraint::Min(16),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
            ];
            let header = ["CALLER", "CALLEE", "REQ/S", "ERR%", "P50", "P99"];
            let state = &mut app.edges_table;
            let (offset, visible) = window(state, order.rows.len(), area.height.saturating_sub(3));
            let built: Vec<Row<'_>> = order.rows[offset..offset + visible]
                .iter()
                .filter_map(|(i, e)| {
                    let s = services.get(*i)?;
                    Some((s, s.edges.get(*e)?))
                })
                .map(|(s, e)| {
                    let mut cells = red_cells(&e.red);
                    cells.insert(0, Cell::from(format!("→ {}", e.to)));
                    cells.insert(0, Cell::from(s.name.clone()).bold());
                    Row::new(cells)
                })
                .collect();
            render_rows(
                frame, area, title, &header, &widths, built, offset, state, empty,
            );
        }
    }
}

/// The rows a view shows, filtered and sorted: services, or every edge.
fn order_rows(services: &[Service], key: OrderKey) -> Order {
    let filter = key.filter.as_str();
    let matches = |name: &str| filter.is_empty() || name.to_lowercase().contains(filter);
    let mut rows: Vec<(usize, usize)> = if key.edges {
        services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.edges.len()).map(move |e| (i, e)))
            .filter(|(i, e)| {
                let s = &services[*i];
                matches(&s.name) || matches(&s.edges[*e].to)
            })
            .collect()
    } else {
        services
            .iter()
            .enumerate()
            .filter(|(_, s)| matches(&s.name) || s.breakers.iter().any(|b| matches(&b.name)))
            .map(|(i, _)| (i, 0))
            .collect()
    };
    let figures = |(i, e): (usize, usize)| -> (&str, &str, &Red) {
        let s = &services[i];
        match s.edges.get(e).filter(|_| key.edges) {
            Some(edge) => (s.name.as_str(), edge.to.as_str(), &edge.red),
            None => (s.name.as_str(), "", &s.red),
        }
    };
    rows.sort_by(|a, b| {
        let (a, b) = (figures(*a), figures(*b));
        order(key.sort, (a.0, a.2), (b.0, b.2)).then_with(|| a.1.cmp(b.1))
    });
    let widest = rows
        .iter()
        .map(|(i, _)| services[*i].name.chars().count())
        .max()
        .unwrap_or(0);
    Order { key, rows, widest }
}

fn table_title(rows: usize, app: &App) -> String {
    let mut t = format!("({rows}) ─ sort: {} ", app.sort.as_str());
    if !app.filter.is_empty() {
        t.push_str(&format!("─ filter: {} ", app.filter));
    }
    if matches!(app.link, Link::Down { .. }) {
        t.push_str("─ stale ");
    }
    t
}

fn empty_text(app: &App, empty: bool) -> Option<String> {
    if !empty {
        return None;
    }
    Some(if !app.filter.is_empty() {
        format!(
            "nothing matches the filter {:?} (esc clears it)",
            app.filter
        )
    } else {
        match &app.link {
            Link::Live(_) | Link::Stopped(_) => {
                "no spans yet: services appear as they send traces".into()
            }
            Link::Down { url, error, .. } => {
                format!(
                    "the observer at {url} is unreachable: {error}. Retrying; start it or fix --observer."
                )
            }
            Link::Connecting(url) => format!("connecting to the observer at {url}…"),
            Link::NoAddress => "starting…".into(),
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn render_rows(
    frame: &mut Frame<'_>,
    area: Rect,
    title: String,
    header: &[&'static str],
    widths: &[Constraint],
    rows: Vec<Row<'_>>,
    offset: usize,
    state: &TableState,
    empty: Option<String>,
) {
    let block = Block::bordered().title(title.bold());
    if let Some(text) = empty {
        let inner = block.inner(area);
        frame.render_widget(block, area);
        frame.render_widget(
            Paragraph::new(text)
                .style(Style::new().dim())
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let mut local =
        TableState::default().with_selected(state.selected().map(|s| s.saturating_sub(offset)));
    let table = Table::new(rows, widths.iter().copied())
        .header(header_row(header))
        .block(block)
        .column_spacing(1)
        .row_highlight_style(Style::new().reversed());
    frame.render_stateful_widget(table, area, &mut local);
}

/// Which rows to build: clamps the selection to the rows there are and
/// keeps it on screen, moving the offset as little as possible.
fn window(state: &mut TableState, rows: usize, height: u16) -> (usize, usize) {
    let height = usize::from(height).max(1);
    if rows == 0 {
        state.select(Some(0));
        *state.offset_mut() = 0;
        return (0, 0);
    }
    let selected = state.selected().unwrap_or(0).min(rows - 1);
    state.select(Some(selected));
    let mut offset = state.offset().min(rows.saturating_sub(height));
    if selected < offset {
        offset = selected;
    } else if selected >= offset + height {
        offset = selected + 1 - height;
    }
    *state.offset_mut() = offset;
    (offset, height.min(rows - offset))
}

fn order(sort: Sort, a: (&str, &Red), b: (&str, &Red)) -> std::cmp::Ordering {
    let desc = |x: f64, y: f64| y.total_cmp(&x);
    match sort {
        Sort::Name => std::cmp::Ordering::Equal,
        Sort::Rate => desc(a.1.requests_per_second, b.1.requests_per_second),
        Sort::Errors => desc(a.1.error_rate, b.1.error_rate),
        Sort::P99 => desc(a.1.latency_ms.p99, b.1.latency_ms.p99),
    }
    .then_with(|| a.0.cmp(b.0))
}

fn right(text: String) -> Line<'static> {
    Line::from(text).alignment(Alignment::Right)
}

fn red_cells(red: &Red) -> Vec<Cell<'static>> {
    vec![
        Cell::from(right(format!("{:.1}", red.requests_per_second))),
        Cell::from(right(percent(red.error_rate))).fg(error_color(red.error_rate)),
        Cell::from(right(millis(red.latency_ms.p50))),
        Cell::from(right(millis(red.latency_ms.p99))),
    ]
}

/// Header cells; the figures' columns are right-aligned like their values.
fn header_row(names: &[&'static str]) -> Row<'static> {
    const FIGURES: [&str; 4] = ["REQ/S", "ERR%", "P50", "P99"];
    Row::new(names.iter().map(|n| {
        if FIGURES.contains(n) {
            Cell::from(right((*n).to_owned()))
        } else {
            Cell::from(*n)
        }
    }))
    .style(Style::new().fg(Color::Cyan).bold())
}

fn breakers(s: &Service) -> Line<'static> {
    if s.breakers.is_empty() {
        return Line::from(Span::styled("-", Style::new().dim()));
    }
    // Open and half-open first: what matters stays visible in a narrow column.
    let mut shown: Vec<&crate::model::Breaker> = s.breakers.iter().collect();
    shown.sort_by_key(|b| (b.state == BreakerState::Closed, b.name.as_str()));
    let mut spans = Vec::new();
    for (i, b) in shown.into_iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw("  "));
        }
        spans.push(Span::raw(format!("{} ", b.name)));
        spans.push(Span::styled(
            format!("● {}", b.state.as_str()),
            Style::new().fg(breaker_color(b.state)).bold(),
        ));
        spans.push(Span::styled(
            format!(" {}", seconds(b.for_seconds)),
            Style::new().dim(),
        ));
    }
    Line::from(spans)
}

pub(crate) fn breaker_color(state: BreakerState) -> Color {
    match state {
        BreakerState::Closed => Color::Green,
        BreakerState::Open => Color::Red,
        BreakerState::HalfOpen => Color::Yellow,
        BreakerState::Unknown => Color::DarkGray,
    }
}

fn error_color(rate: f64) -> Color {
    if rate >= BAD_ERROR_RATE {
        Color::Red
    } else if rate >= BAD_ERROR_RATE / 2.0 {
        Color::Yellow
    } else {
        Color::Reset
    }
}

fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.1}%", fraction * 100.0)
    } else {
        "-".into()
    }
}

fn millis(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "-".into()
    } else if ms < 1.0 {
        "<1ms".into()
    } else if ms < 10_000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// `12s`, `3m04s`, `1h02m`.
fn seconds(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn clock(d: Duration) -> String {
    seconds(d.as_secs_f64().ceil())
}

/// Borders, the status line, the two table headers and their rows.
fn panel_height(s: &Snapshot) -> u16 {
    let rows = 2 + 1 + 1 + s.faults.len().max(1) + 1 + s.checks.len().max(1);
    u16::try_from(rows).unwrap_or(u16::MAX)
}

fn phase_color(phase: Phase) -> Color {
    match phase {
        Phase::Pending => Color::Blue,
        Phase::Injecting => Color::Magenta,
        Phase::Running => Color::Cyan,
        Phase::Aborted | Phase::Recovering => Color::Yellow,
        Phase::Completed | Phase::Recovered => Color::Green,
        Phase::Invalid => Color::Red,
    }
}

fn draw_experiment(frame: &mut Frame<'_>, area: Rect, app: &App, snapshot: Option<&Snapshot>) {
    let name = app.run_name().unwrap_or("");
    let block = Block::bordered().title(format!(" Experiment {name} ").bold());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(s) = snapshot else {
        let note = app
            .run
            .as_ref()
            .and_then(|(f, _)| f.note.clone())
            .unwrap_or_else(|| {
                "no experiment: this dashboard shows the observer's figures only".into()
            });
        frame.render_widget(Paragraph::new(note).wrap(Wrap { trim: true }), inner);
        return;
    };
    let faults_height = u16::try_from(s.faults.len().max(1) + 1).unwrap_or(u16::MAX);
    let [status, faults, checks] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(faults_height),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(status_line(s), status);

    let fault_rows: Vec<Row<'_>> = s
        .faults
        .iter()
        .map(|f| {
            let targets = match &f.targets {
                Some(t) if t.is_empty() => "-".to_owned(),
                Some(t) => t.join(", "),
                // A cluster's status counts instances; name the selector.
                None => format!("pods of {}", f.target),
            };
            let (state, color) = match s.fault_state(f) {
                FaultState::Pending { starts_in } => {
                    (format!("starts in {}", clock(starts_in)), Color::Blue)
                }
                FaultState::Active { left } => {
                    (format!("active, {} left", clock(left)), Color::Magenta)
                }
                FaultState::Done => ("removed".to_owned(), Color::DarkGray),
            };
            // What it touched: the evidence it acted at all.
            // Short: the count and its verb ("1834 delayed", "2 signalled").
            let (effect, effect_color) = match &f.effect {
                Some(e) if e.count > 0 => {
                    let verb = e.what.split(' ').nth(1).unwrap_or(&e.what);
                    (format!("{} {verb}", e.count), Color::Reset)
                }
                Some(_) => ("no effect yet".to_owned(), Color::Yellow),
                None => ("-".to_owned(), Color::DarkGray),
            };
            Row::new([
                Cell::from(f.name.clone()).bold(),
                Cell::from(f.action.clone()),
                Cell::from(targets),
                Cell::from(state).fg(color),
                Cell::from(effect).fg(effect_color),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            fault_rows,
            [
                Constraint::Fill(3),
                Constraint::Fill(3),
                Constraint::Fill(2),
                Constraint::Length(17),
                Constraint::Length(14),
            ],
        )
        .header(
            Row::new(["FAULT", "WHAT", "TARGETS", "STATE", "EFFECT"])
                .style(Style::new().fg(Color::Cyan).bold()),
        ),
        faults,
    );

    let check_rows: Vec<Row<'_>> = s.checks.iter().map(|c| check_row(c, s)).collect();
    frame.render_widget(
        Table::new(
            check_rows,
            [
                Constraint::Fill(3),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Length(9),
            ],
        )
        .header(
            Row::new(["CHECK", "OBSERVED", "EXPECTED", "RESULT"])
                .style(Style::new().fg(Color::Cyan).bold()),
        ),
        checks,
    );
}

fn status_line(s: &Snapshot) -> Line<'static> {
    let mut spans = vec![
        Span::styled(
            format!(" {} ", s.phase.as_str()),
            Style::new()
                .fg(Color::Black)
                .bg(phase_color(s.phase))
                .bold(),
        ),
        Span::raw(format!(
            "  {} / {}",
            clock(s.at.min(s.duration)),
            clock(s.duration)
        )),
    ];
    if let Some(v) = s
        .verdict
        .filter(|_| s.is_finished() || s.phase == Phase::Aborted)
    {
        let (text, color) = match v {
            Verdict::Passed => ("PASSED: the hypothesis held", Color::Green),
            Verdict::Failed => ("FAILED: the hypothesis did not hold", Color::Red),
            Verdict::Aborted => ("ABORTED: every fault removed", Color::Yellow),
            Verdict::Inconclusive => ("INCONCLUSIVE: not enough evidence", Color::Magenta),
            Verdict::Broken => ("BROKEN: faults not confirmed", Color::Red),
        };
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!(" {text} "),
            Style::new().fg(Color::Black).bg(color).bold(),
        ));
    } else {
        spans.push(Span::raw(format!("  {} left", clock(s.left()))));
    }
    if let Some(n) = s.injected.filter(|_| !s.is_finished()) {
        spans.push(Span::raw(format!(
            "  {n} fault instance{} applied",
            if n == 1 { "" } else { "s" }
        )));
    }
    if let Some(m) = &s.message {
        spans.push(Span::styled(format!("  {m}"), Style::new().dim()));
    }
    Line::from(spans)
}

fn check_row(c: &CheckReport, s: &Snapshot) -> Row<'static> {
    let (observed, expected) = c
        .last
        .as_ref()
        .map_or(("-".to_owned(), "-".to_owned()), |e| {
            (e.observed.clone(), e.expected.clone())
        });
    let over = s.is_finished();
    let (result, color) = match (c.abort, c.passed, c.evaluations, over) {
        (_, _, 0, false) => ("waiting", Color::DarkGray),
        (_, _, 0, true) => ("not run", Color::DarkGray),
        _ if c.unjudged() && over => ("UNJUDGED", Color::Yellow),
        _ if c.unjudged() => ("no evidence", Color::Yellow),
        (true, true, _, _) => ("held", Color::Green),
        (true, false, _, _) => ("TRIPPED", Color::Red),
        (false, true, _, false) => ("holding", Color::Green),
        (false, true, _, true) => ("passed", Color::Green),
        (false, false, _, _) => ("FAILED", Color::Red),
    };
    let name = if c.abort {
        format!("abort if not {}", c.name)
    } else {
        c.name.clone()
    };
    Row::new([
        Cell::from(name),
        Cell::from(observed),
        Cell::from(expected),
        Cell::from(result).fg(color).bold(),
    ])
}

/// A rectangle of at most `width`×`height` in the middle of `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

const HELP: &[(&str, &str)] = &[
    ("a", "abort the run (asks first): every fault removed"),
    ("ctrl-c", "a local run: abort at once; otherwise quit"),
    ("/", "filter by name (esc undoes)"),
    ("s", "sort: name, req/s, errors, p99"),
    ("tab", "next view: services, edges, experiment"),
    ("↑↓ j k", "move; pgup pgdn g G: page, top, bottom"),
    (":", "services edges experiment abort sort filter quit"),
    ("esc", "clear the filter, then back to services"),
    ("q", "quit the dashboard"),
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let popup = centered(area, 62, u16::try_from(HELP.len() + 2).unwrap_or(u16::MAX));
    frame.render_widget(Clear, popup);
    let lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>8}  "), Style::new().fg(Color::Cyan).bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" Keys ─ any key closes ".bold()))
            .wrap(Wrap { trim: false }),
        popup,
    );
}

fn draw_confirm(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let popup = centered(area, 44, 5);
    frame.render_widget(Clear, popup);
    let name = app.run_name().unwrap_or("the experiment");
    let text = Text::from(vec![
        Line::from(format!("Abort {name}?")).bold(),
        Line::from("Every fault is removed at once."),
        Line::from(vec![
            Span::styled("y", Style::new().fg(Color::Red).bold()),
            Span::raw(" abort   "),
            Span::styled("any other key", Style::new().bold()),
            Span::raw(" keep it running"),
        ]),
    ]);
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .block(
                Block::bordered()
                    .title(" Abort ".bold())
                    .border_style(Style::new().fg(Color::Red)),
            )
            .wrap(Wrap { trim: true }),
        popup,
    );
}
