//! Dashboard costs, printed: the time to draw one frame with 10, 1 000 and
//! 10 000 services (target: under 2 ms at 1 000), and the CPU the dashboard uses
//! while nothing is typed, following a real observer that holds 4 or
//! 1 000 services (target: under 1 % of a core).
//!
//! `cargo bench -p faultline-tui`. Machines here are shared and noisy: read
//! the 1 000 / 10 ratio as much as the absolute figures.

use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use faultline_api::Phase;
use faultline_engine::{CheckReport, FaultSnapshot, Snapshot};
use faultline_observer::{Addresses, Limits};
use faultline_tui::{
    Action, App, RunFeed, Sources,
    model::{Breaker, BreakerState, Edge, Figures, Latencies, Red, Service},
};
use ratatui::{Terminal, backend::TestBackend};
use rustix::time::{ClockId, clock_gettime};

fn red(i: usize) -> Red {
    Red {
        requests: 1000 + i as u64,
        requests_per_second: 100.0 + i as f64,
        error_rate: (i % 17) as f64 / 400.0,
        latency_ms: Latencies {
            p50: 3.0 + (i % 11) as f64,
            p95: 40.0,
            p99: 100.0 + (i % 97) as f64,
        },
    }
}

fn figures(services: usize) -> Figures {
    let states = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];
    Figures {
        window: "10s".into(),
        services: (0..services)
            .map(|i| Service {
                name: format!("service-{i:04}"),
                red: red(i),
                breakers: (0..2)
                    .map(|b| Breaker {
                        name: format!("dep-{b}"),
                        state: states[(i + b) % 3],
                        for_seconds: (i % 300) as f64,
                        transitions: 3,
                        short_circuited: 10,
                    })
                    .collect(),
                edges: (1..3)
                    .map(|d| Edge {
                        to: format!("service-{:04}", (i + d) % services),
                        red: red(i + d),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn run_feed() -> RunFeed {
    RunFeed {
        name: "payments-slowdown".into(),
        observer: None,
        note: None,
        run: Some(Snapshot {
            at: Duration::from_secs(20),
            duration: Duration::from_secs(60),
            phase: Phase::Injecting,
            verdict: None,
            message: None,
            faults: vec![FaultSnapshot {
                name: "slow-payments".into(),
                kind: "latency",
                target: "payments".into(),
                action: "latency 300ms".into(),
                window: (Duration::from_secs(10), Duration::from_secs(50)),
                targets: Some(vec!["service-0001".into()]),
                effect: None,
            }],
            checks: vec![CheckReport {
                name: "error rate under 5%".into(),
                abort: false,
                passed: true,
                evaluations: 10,
                last: None,
                failure: None,
                judged: Vec::new(),
                not_judged: None,
                inconclusive: None,
                judged_at: None,
                baseline: None,
            }],
            injected: None,
        }),
    }
}

/// Median and 99th percentile time of drawing one frame.
fn frame_time(services: usize, width: u16, height: u16, sort_keys: usize) -> (Duration, Duration) {
    let now = Instant::now();
    let mut app = App::new(Some("http://127.0.0.1:9464".into()), true, now);
    let f = figures(services);
    // A full sparkline history: three minutes of snapshots.
    for _ in 0..180 {
        app.update(Action::Figures(f.clone()), now);
    }
    app.update(Action::Run(run_feed()), now);
    for _ in 0..sort_keys {
        app.update(
            Action::Key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::NONE)),
            now,
        );
    }
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    let mut times = Vec::new();
    for i in 0..400 {
        // Scroll a row each frame, so every frame differs from the last.
        let key = if i % 100 < 50 {
            KeyCode::Down
        } else {
            KeyCode::Up
        };
        app.update(Action::Key(KeyEvent::new(key, KeyModifiers::NONE)), now);
        let start = Instant::now();
        terminal
            .draw(|frame| faultline_tui::draw(frame, &mut app))
            .expect("draws");
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// CPU time the dashboard's thread used per second of wall time, reading
/// a real observer holding `services` services for `secs` seconds.
fn idle_cpu(services: usize, secs: u64) -> f64 {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let observer = rt.block_on(async {
        let running = faultline_observer::start(&Addresses::ephemeral(), Limits::default())
            .await
            .expect("observer");
        for i in 0..services {
            running
                .observer
                .ingest(&faultline_testkit::otlp::server_spans(
                    &format!("service-{i:04}"),
                    5,
                    1,
                ))
                .expect("ingests");
        }
        running
    });
    let url = format!("http://{}", observer.addresses.api);
    let dashboard = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (close_tx, close) = tokio::sync::watch::channel(false);
        let mut terminal = Terminal::new(TestBackend::new(160, 48)).expect("terminal");
        let cpu = |c: rustix::time::Timespec| c.tv_sec as f64 + c.tv_nsec as f64 / 1e9;
        let start_cpu = cpu(clock_gettime(ClockId::ThreadCPUTime));
        let start = Instant::now();
        rt.block_on(async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                let _ = close_tx.send(true);
            });
            let sources = Sources {
                observer: Some(url),
                close: Some(close),
                ..Sources::default()
            };
            faultline_tui::drive(&mut terminal, sources, futures::stream::pending())
                .await
                .expect("draws");
        });
        (cpu(clock_gettime(ClockId::ThreadCPUTime)) - start_cpu) / start.elapsed().as_secs_f64()
    });
    let share = dashboard.join().expect("no panic");
    drop(observer);
    share
}

fn main() {
    println!("dashboard frame time (400 frames, scrolling; median / p99):");
    let mut medians = Vec::new();
    for (services, width, height, sort) in [
        (10, 80, 24, 0),
        (1000, 80, 24, 0),
        (1000, 200, 60, 0),
        (1000, 200, 60, 2),
        (10_000, 200, 60, 0),
        (10_000, 200, 60, 2),
    ] {
        let (median, p99) = frame_time(services, width, height, sort);
        medians.push(median);
        println!(
            "  {services:>5} services, {width}×{height}{}: {:>7.3} ms / {:>7.3} ms",
            if sort > 0 { ", sorted by errors" } else { "" },
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
    }
    println!(
        "  1000 / 10 services at 80×24: {:.2}× (target: < 2 ms at 1000)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
    println!("dashboard CPU while idle (following the observer's stream, 10 s):");
    for services in [4, 1000] {
        let share = idle_cpu(services, 10);
        println!(
            "  {services:>5} services: {:.2} % of a core (target: < 1 %)",
            share * 100.0
        );
    }
}
