//! The dashboard in a real terminal (tmux): `faultline demo` shows
//! checkout's breaker close, open and close again and the verdict; `a`
//! then `y` aborts a run, which exits 3 and leaves no process behind; a
//! terminal closed under a run stops it cleanly.

use std::time::Duration;

use faultline_testkit::{
    marked_processes,
    terminal::{Tmux, tmux_available},
};

/// `faultline ARGS` in a 100×30 tmux terminal, its services marked.
fn faultline_in_tmux(mark: &str, args: &str) -> Tmux {
    let bin = env!("CARGO_BIN_EXE_faultline");
    Tmux::start(
        100,
        30,
        &format!("env FAULTLINE_TEST_MARK={mark} {bin} {args}"),
    )
}

/// What the marked processes are doing, for a failure's message.
fn described(mark: &str) -> String {
    marked_processes(mark)
        .iter()
        .map(|pid| {
            let read =
                |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
            let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|t| {
                            let r = |f: &str| {
                                std::fs::read_to_string(t.path().join(f)).unwrap_or_default()
                            };
                            format!("{}:{}", r("comm").trim(), r("wchan"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{pid} {} [{}]",
                read("cmdline").replace('\0', " "),
                threads.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The state of checkout's payments breaker on screen, if shown.
fn payments_breaker(screen: &str) -> Option<&str> {
    let row = screen.lines().find(|l| l.contains("│checkout"))?;
    let after = &row[row.find("payments ● ")? + "payments ● ".len()..];
    after.split_whitespace().next()
}

#[test]
fn the_demo_shows_the_breaker_open_and_close_and_the_verdict() {
    if !tmux_available() {
        return;
    }
    let tmux = faultline_in_tmux("dash-demo", "demo --duration 30s");
    let mut seen: Vec<String> = Vec::new();
    let screen = tmux.wait_for(Duration::from_secs(90), "verdict", |screen| {
        if let Some(state) = payments_breaker(screen)
            && seen.last().map(String::as_str) != Some(state)
        {
            seen.push(state.to_owned());
        }
        screen.contains("PASSED: the hypothesis held")
    });
    let states = seen.join(" → ");
    let closed_open_closed = seen
        .iter()
        .position(|s| s == "closed")
        .and_then(|i| seen[i..].iter().position(|s| s == "open").map(|j| i + j))
        .and_then(|j| seen[j..].iter().position(|s| s == "closed"))
        .is_some();
    assert!(
        closed_open_closed,
        "breaker states seen: {states}\n{screen}"
    );
    assert!(screen.contains("slow-payments"), "{screen}");
    // The verdict shows first; the run is over once its services stopped.
    tmux.wait_for(Duration::from_secs(20), "the end of the run", |s| {
        s.contains("The run is over")
    });
    tmux.send("q");
    let code = tmux.exit_status(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "{}\n{}",
        tmux.screen(),
        described("dash-demo")
    );
    let summary = tmux.screen();
    assert!(summary.contains("PASSED: the hypothesis held"), "{summary}");
    assert!(
        marked_processes("dash-demo").is_empty(),
        "{}",
        described("dash-demo")
    );
}

#[test]
fn a_then_y_aborts_the_run() {
    if !tmux_available() {
        return;
    }
    let tmux = faultline_in_tmux("dash-abort", "demo --duration 60s");
    tmux.wait_for(Duration::from_secs(60), "the fault active", |s| {
        s.contains("active,") && s.contains("● observer")
    });
    assert!(
        !marked_processes("dash-abort").is_empty(),
        "the shop runs, marked"
    );
    tmux.send("a");
    tmux.wait_for(Duration::from_secs(10), "the question", |s| {
        s.contains("Abort payments-slowdown?")
    });
    tmux.send("y");
    let screen = tmux.wait_for(Duration::from_secs(20), "the abort", |s| {
        s.contains("ABORTED: every fault removed")
    });
    assert!(screen.contains("removed"), "the fault is gone:\n{screen}");
    assert!(screen.contains("interrupted by the user"), "{screen}");
    tmux.send("q");
    let code = tmux.exit_status(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(3),
        "{}\n{}",
        tmux.screen(),
        described("dash-abort")
    );
    let summary = tmux.screen();
    assert!(
        summary.contains("ABORTED: every fault was removed"),
        "{summary}"
    );
    assert!(
        marked_processes("dash-abort").is_empty(),
        "no process left behind: {}",
        described("dash-abort")
    );
}

#[test]
fn closing_the_terminal_stops_the_run_and_its_services() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let stderr = dir.path().join("stderr");
    let tmux = faultline_in_tmux(
        "dash-hup",
        &format!("demo --duration 60s 2>{}", stderr.display()),
    );
    tmux.wait_for(Duration::from_secs(60), "the fault active", |s| {
        s.contains("active,")
    });
    drop(tmux); // the terminal goes away: SIGHUP
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !marked_processes("dash-hup").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {}",
            described("dash-hup")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let said = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(!said.contains("panicked"), "{said}");
}
