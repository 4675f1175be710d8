//! Each view drawn on a test terminal: the text as a user sees it
//! (insta snapshots), the colours that carry meaning, and what keys do.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use faultline_api::{CheckPhase, Phase, Verdict};
use faultline_engine::{CheckReport, Evaluation, FaultSnapshot, Snapshot};
use faultline_tui::{
    Action, App, Effect, RunFeed,
    model::{Breaker, BreakerState, Edge, Figures, Latencies, Red, Service},
};
use ratatui::{Terminal, backend::TestBackend, buffer::Buffer, style::Color};

fn red(rps: f64, errors: f64, p50: f64, p99: f64) -> Red {
    Red {
        requests: (rps * 10.0) as u64,
        requests_per_second: rps,
        error_rate: errors,
        latency_ms: Latencies { p50, p95: p99, p99 },
    }
}

fn breaker(name: &str, state: BreakerState, for_seconds: f64) -> Breaker {
    Breaker {
        name: name.into(),
        state,
        for_seconds,
        transitions: 2,
        short_circuited: 40,
    }
}

/// The demo shop with checkout's breaker open on slow payments.
fn shop() -> Figures {
    Figures {
        window: "10s".into(),
        services: vec![
            Service {
                name: "checkout".into(),
                red: red(19.2, 0.0, 8.0, 255.0),
                breakers: vec![
                    breaker("payments", BreakerState::Open, 3.0),
                    breaker("inventory", BreakerState::Closed, 61.0),
                ],
                edges: vec![
                    Edge {
                        to: "payments".into(),
                        red: red(6.0, 0.5, 300.0, 310.0),
                    },
                    Edge {
                        to: "inventory".into(),
                        red: red(19.2, 0.0, 2.0, 3.0),
                    },
                ],
            },
            Service {
                name: "frontend".into(),
                red: red(19.3, 0.031, 9.0, 261.0),
                breakers: vec![],
                edges: vec![Edge {
                    to: "checkout".into(),
                    red: red(19.3, 0.031, 9.0, 261.0),
                }],
            },
            Service {
                name: "inventory".into(),
                red: red(19.1, 0.0, 2.0, 3.0),
                breakers: vec![],
                edges: vec![],
            },
            Service {
                name: "payments".into(),
                red: red(12.6, 0.0, 0.4, 12_500.0),
                breakers: vec![breaker("bank", BreakerState::HalfOpen, 1.0)],
                edges: vec![],
            },
        ],
    }
}

fn check(name: &str, abort: bool, passed: bool, observed: &str, expected: &str) -> CheckReport {
    CheckReport {
        name: name.into(),
        abort,
        passed,
        evaluations: 4,
        last: Some(Evaluation {
            judged: true,
            passed,
            observed: observed.into(),
            expected: expected.into(),
        }),
        failure: None,
        judged: vec![CheckPhase::During],
        not_judged: None,
        inconclusive: None,
        judged_at: None,
        baseline: None,
    }
}

/// A check that nothing failed but that never had the requests to judge by.
fn unjudged(name: &str, expected: &str) -> CheckReport {
    let mut c = check(name, false, false, "no requests", expected);
    if let Some(last) = c.last.as_mut() {
        last.judged = false;
    }
    c.judged = Vec::new();
    c.inconclusive = Some(format!("{name}: not judged during: no requests"));
    c
}

fn run(phase: Phase, at: u64, verdict: Option<Verdict>) -> RunFeed {
    RunFeed {
        name: "payments-slowdown".into(),
        observer: None,
        note: None,
        run: Some(Snapshot {
            at: Duration::from_secs(at),
            duration: Duration::from_secs(60),
            phase,
            verdict,
            message: None,
            faults: vec![FaultSnapshot {
                name: "slow-payments".into(),
                kind: "latency",
                target: "payments".into(),
                action: "latency 300ms".into(),
                window: (Duration::from_secs(10), Duration::from_secs(50)),
                targets: Some(if phase == Phase::Injecting && at >= 10 {
                    vec!["payments".into()]
                } else {
                    vec![]
                }),
                effect: (at >= 10).then(|| faultline_engine::Effect {
                    count: 1834,
                    what: "chunks delayed or connections dropped".into(),
                }),
            }],
            checks: vec![
                check(
                    "checkout opens its payments breaker",
                    false,
                    true,
                    "open",
                    "open",
                ),
                if verdict == Some(Verdict::Inconclusive) {
                    unjudged("frontend error rate under 5%", "<= 5%")
                } else {
                    check(
                        "frontend error rate under 5%",
                        false,
                        verdict != Some(Verdict::Failed),
                        "3.10%",
                        "<= 5%",
                    )
                },
                check("frontend error rate <= 50%", true, true, "3.10%", "<= 50%"),
            ],
            injected: None,
        }),
    }
}

struct Screen {
    app: App,
    terminal: Terminal<TestBackend>,
    now: Instant,
}

impl Screen {
    fn new(width: u16, height: u16, can_abort: bool) -> Screen {
        let now = Instant::now();
        Screen {
            app: App::new(Some("http://127.0.0.1:9464".into()), can_abort, now),
            terminal: Terminal::new(TestBackend::new(width, height)).expect("test terminal"),
            now,
        }
    }

    fn act(&mut self, action: Action) -> Vec<Effect> {
        self.app.update(action, self.now)
    }

    fn key(&mut self, code: KeyCode) -> Vec<Effect> {
        self.act(Action::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn keys(&mut self, text: &str) {
        for c in text.chars() {
            self.key(KeyCode::Char(c));
        }
    }

    fn draw(&mut self) -> &Buffer {
        let app = &mut self.app;
        self.terminal
            .draw(|f| faultline_tui::draw(f, app))
            .expect("draws");
        self.terminal.backend().buffer()
    }

    /// The screen as text, one line per row, trailing spaces cut.
    fn text(&mut self) -> String {
        let buffer = self.draw().clone();
        let width = usize::from(buffer.area.width);
        buffer
            .content
            .chunks(width)
            .map(|row| {
                let line: String = row.iter().map(|c| c.symbol()).collect();
                line.trim_end().to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The style of the first cell where `text` starts on screen.
fn style_at(buffer: &Buffer, text: &str) -> ratatui::style::Style {
    let width = usize::from(buffer.area.width);
    for (y, row) in buffer.content.chunks(width).enumerate() {
        let symbols: Vec<&str> = row.iter().map(|c| c.symbol()).collect();
        let line: String = symbols.concat();
        if let Some(byte) = line.find(text) {
            // Columns, not bytes: count the symbols before the match.
            let mut seen = 0;
            for (x, s) in symbols.iter().enumerate() {
                if seen == byte {
                    return buffer[(x as u16, y as u16)].style();
                }
                seen += s.len();
            }
        }
    }
    panic!("{text:?} is not on screen");
}

#[test]
fn services_with_a_run_at_80_by_24() {
    let mut s = Screen::new(80, 24, true);
    s.act(Action::Figures(shop()));
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    insta::assert_snapshot!(s.text());
    // Wide enough for every breaker.
    let mut s = Screen::new(140, 24, true);
    s.act(Action::Figures(shop()));
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    let buffer = s.draw();
    assert_eq!(style_at(buffer, "● open").fg, Some(Color::Red));
    assert_eq!(style_at(buffer, "● closed").fg, Some(Color::Green));
    assert_eq!(style_at(buffer, "● half-open").fg, Some(Color::Yellow));
    assert_eq!(style_at(buffer, "3.1%").fg, Some(Color::Yellow));
    assert_eq!(style_at(buffer, "Injecting").bg, Some(Color::Magenta));
}

#[test]
fn edges_view_shows_where_the_fault_is() {
    let mut s = Screen::new(100, 24, true);
    s.act(Action::Figures(shop()));
    s.key(KeyCode::Tab);
    s.keys("s");
    s.keys("s"); // by errors: the slow edge first
    insta::assert_snapshot!(s.text());
    assert_eq!(style_at(s.draw(), "50.0%").fg, Some(Color::Red));
}

#[test]
fn experiment_view_with_each_verdict() {
    for (verdict, colour, failed) in [
        (Verdict::Passed, Color::Green, false),
        (Verdict::Failed, Color::Red, true),
        (Verdict::Aborted, Color::Yellow, false),
        (Verdict::Inconclusive, Color::Magenta, false),
    ] {
        let mut s = Screen::new(90, 20, true);
        s.act(Action::Figures(shop()));
        let phase = if verdict == Verdict::Aborted {
            Phase::Recovered
        } else {
            Phase::Completed
        };
        s.act(Action::Run(run(phase, 60, Some(verdict))));
        s.act(Action::RunClosed);
        s.act(Action::ObserverDown {
            error: "connection refused".into(),
            retry_in: Duration::from_secs(1),
        });
        s.act(Action::Key(KeyEvent::new(
            KeyCode::Char(':'),
            KeyModifiers::NONE,
        )));
        s.keys("exp");
        s.key(KeyCode::Enter);
        insta::assert_snapshot!(format!("experiment_{verdict}"), s.text());
        let word = verdict.as_str().to_uppercase();
        assert_eq!(style_at(s.draw(), &word).bg, Some(colour), "{verdict}");
        if failed {
            assert_eq!(style_at(s.draw(), "FAILED ").fg, Some(Color::Red));
        }
        if verdict == Verdict::Inconclusive {
            // Never shown as failing (nor passing): it was not judged.
            assert!(!s.text().contains("FAILED"), "{}", s.text());
            assert_eq!(style_at(s.draw(), "UNJUDGED").fg, Some(Color::Yellow));
        }
    }
}

#[test]
fn help_and_abort_confirmation() {
    let mut s = Screen::new(80, 24, true);
    s.act(Action::Figures(shop()));
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    s.keys("?");
    insta::assert_snapshot!("help", s.text());
    s.keys("x"); // any key closes
    assert_eq!(s.key(KeyCode::Char('a')), []);
    insta::assert_snapshot!("confirm_abort", s.text());
    // Anything but y keeps the run going.
    assert_eq!(s.key(KeyCode::Char('n')), []);
    assert!(s.text().contains("abort cancelled"));
    s.keys("a");
    assert_eq!(s.key(KeyCode::Char('y')), [Effect::Abort]);
    assert!(s.text().contains("aborting: every fault is being removed"));
    // A second abort is not sent while the first is on its way.
    s.keys("a");
    assert_eq!(s.key(KeyCode::Char('y')), []);
}

#[test]
fn ctrl_c_aborts_the_own_run_at_once_and_quits_a_viewer() {
    let ctrl_c = || Action::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    // The run this process drives: Ctrl-C stops it, even while starting.
    let mut s = Screen::new(80, 24, true);
    s.app = App::new(None, true, s.now).with_ctrl_c_abort(true);
    s.act(Action::Run(RunFeed {
        name: "payments-slowdown".into(),
        note: Some("starting checkout…".into()),
        ..RunFeed::default()
    }));
    assert_eq!(s.act(ctrl_c()), [Effect::Abort]);
    assert!(!s.app.should_quit());
    // A second one, while the abort is on its way, quits.
    assert_eq!(s.act(ctrl_c()), []);
    assert!(s.app.should_quit());
    // Once the run has ended, Ctrl-C quits.
    let mut s = Screen::new(80, 24, true);
    s.app = App::new(None, true, s.now).with_ctrl_c_abort(true);
    s.act(Action::Run(run(
        Phase::Recovered,
        23,
        Some(Verdict::Aborted),
    )));
    assert_eq!(s.act(ctrl_c()), []);
    assert!(s.app.should_quit());
    // A viewer of a cluster run: Ctrl-C quits and aborts nothing.
    let mut v = Screen::new(80, 24, true);
    v.act(Action::Run(run(Phase::Injecting, 22, None)));
    assert_eq!(v.act(ctrl_c()), []);
    assert!(v.app.should_quit());
}

#[test]
fn a_failed_abort_is_said_and_can_be_retried() {
    let mut s = Screen::new(80, 24, true);
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    s.keys("a");
    assert_eq!(s.key(KeyCode::Char('y')), [Effect::Abort]);
    s.act(Action::AbortDone(Err(
        "the cluster did not answer within 5s".into(),
    )));
    assert!(
        s.text()
            .contains("abort failed: the cluster did not answer")
    );
    s.keys("a");
    assert_eq!(s.key(KeyCode::Char('y')), [Effect::Abort]);
    s.act(Action::AbortDone(Ok(
        "abort requested; the controller removes every fault".into(),
    )));
    assert!(s.text().contains("abort requested; the controller"));
}

#[test]
fn keys_do_nothing_out_of_sight_on_a_tiny_terminal() {
    let mut s = Screen::new(40, 10, true);
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    s.text();
    s.keys("a");
    assert_eq!(s.key(KeyCode::Char('y')), [], "no dialog was visible");
    s.keys("q");
    assert!(s.app.should_quit());
}

#[test]
fn abort_is_refused_without_a_run_or_a_way_to_abort() {
    let mut s = Screen::new(80, 24, false);
    s.act(Action::Run(run(Phase::Injecting, 22, None)));
    s.keys("a");
    assert!(s.text().contains("follows no experiment it could abort"));
    let mut s = Screen::new(80, 24, true);
    s.act(Action::Run(run(
        Phase::Completed,
        60,
        Some(Verdict::Passed),
    )));
    s.keys("a");
    assert!(s.text().contains("no experiment is running"));
}

#[test]
fn filter_and_commands() {
    let mut s = Screen::new(80, 24, false);
    s.act(Action::Figures(shop()));
    s.keys("/pay");
    insta::assert_snapshot!("filtering", s.text());
    s.key(KeyCode::Enter);
    let text = s.text();
    assert!(
        text.contains("Services (2)"),
        "payments, and checkout by its breaker:\n{text}"
    );
    // esc while typing undoes; esc after clears.
    s.keys("/zzz");
    s.key(KeyCode::Esc);
    assert!(s.text().contains("filter: pay"));
    s.key(KeyCode::Esc);
    assert!(s.text().contains("Services (4)"));
    s.keys(":bogus");
    s.key(KeyCode::Enter);
    assert!(s.text().contains("unknown command :bogus"));
    s.keys(":sort p99");
    s.key(KeyCode::Enter);
    let text = s.text();
    let first_row = text.lines().nth(3).unwrap_or_default();
    assert!(first_row.contains("payments"), "slowest first:\n{text}");
    s.keys(":q");
    s.key(KeyCode::Enter);
    assert!(s.app.should_quit());
}

#[test]
fn observer_unreachable_and_terminal_too_small() {
    let mut s = Screen::new(80, 24, false);
    s.act(Action::ObserverDown {
        error: "connection refused".into(),
        retry_in: Duration::from_secs(2),
    });
    insta::assert_snapshot!("observer_down", s.text());
    assert_eq!(style_at(s.draw(), "✗").fg, Some(Color::Red));
    // Figures arriving again bring it back.
    s.act(Action::Figures(shop()));
    assert!(s.text().contains("● observer http://127.0.0.1:9464"));

    let mut small = Screen::new(40, 10, false);
    small.act(Action::Figures(shop()));
    insta::assert_snapshot!("too_small", small.text());
}

#[test]
fn thousands_of_services_scroll() {
    let mut s = Screen::new(80, 24, false);
    let services = (0..5000)
        .map(|i| Service {
            name: format!("svc-{i:04}"),
            red: red(1.0, 0.0, 1.0, 2.0),
            breakers: vec![],
            edges: vec![],
        })
        .collect();
    s.act(Action::Figures(Figures {
        window: "10s".into(),
        services,
    }));
    s.key(KeyCode::End);
    let text = s.text();
    assert!(text.contains("svc-4999"), "{text}");
    assert!(!text.contains("svc-0000"));
    s.key(KeyCode::PageUp);
    s.key(KeyCode::Home);
    let text = s.text();
    assert!(text.contains("svc-0000"), "{text}");
    // Selection moves past the bottom of the screen: the view follows.
    for _ in 0..30 {
        s.key(KeyCode::Down);
    }
    assert!(s.text().contains("svc-0030"));
}

#[test]
fn local_run_before_it_begins() {
    let mut s = Screen::new(80, 24, true);
    let now = s.now;
    let mut app = App::new(None, true, now);
    let effects = app.update(
        Action::Run(RunFeed {
            name: "payments-slowdown".into(),
            observer: Some("http://127.0.0.1:4000".into()),
            note: Some("starting checkout…".into()),
            run: None,
        }),
        now,
    );
    assert_eq!(effects, [Effect::Follow("http://127.0.0.1:4000".into())]);
    s.app = app;
    insta::assert_snapshot!("starting", s.text());
}

#[test]
fn new_figures_reorder_the_rows() {
    let mut s = Screen::new(80, 24, false);
    s.act(Action::Figures(shop()));
    s.keys(":sort errors");
    s.key(KeyCode::Enter);
    let first_row = |s: &mut Screen| s.text().lines().nth(3).unwrap_or_default().to_owned();
    assert!(first_row(&mut s).contains("frontend"), "3.1 % errors first");
    let mut figures = shop();
    figures.services[2].red.error_rate = 0.9;
    s.act(Action::Figures(figures));
    assert!(first_row(&mut s).contains("inventory"), "now 90 %");
}
