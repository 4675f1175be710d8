//! `faultline run --local` and `faultline demo`: game days on local processes.

use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use faultline_api::{Experiment, Phase, Topology, Verdict, parse_one};
use faultline_engine::Snapshot;
use faultline_runtime::{Options, Outcome, Progress};
use tokio::sync::watch;

/// Exit codes of `faultline run` (docs/architecture.md).
pub const EXIT_PASSED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_ABORTED: u8 = 3;
pub const EXIT_BROKE: u8 = 4;
/// Nothing failed, but a hypothesis check was never judged on enough
/// evidence in a phase it names: not a pass.
pub const EXIT_INCONCLUSIVE: u8 = 5;

pub(crate) fn load<T: faultline_api::FromResource>(path: &Path) -> Result<T, ExitCode> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        tell!("{name}: cannot read: {e}");
        ExitCode::from(EXIT_INVALID)
    })?;
    parse_one::<T>(&bytes).map_err(|diags| {
        for d in &diags {
            tell!("{}", d.display_in(&name));
        }
        tell!("faultline run: {name} is invalid; nothing was started");
        ExitCode::from(EXIT_INVALID)
    })
}

/// Where to write what a run produces.
#[derive(Debug, Default, Clone)]
pub struct Reports {
    pub junit: Option<std::path::PathBuf>,
    pub json: Option<std::path::PathBuf>,
    /// A directory for each service's output (`<service>.log`).
    pub logs: Option<std::path::PathBuf>,
    /// An OTLP/gRPC receiver (Jaeger, a collector) to forward every span to.
    pub otlp_forward: Option<String>,
}

/// `--follow-schedule`: wait for each start time of the experiment's
/// schedule instead of running once now.
#[derive(Debug, Default, Clone, Copy)]
pub struct Follow {
    /// Stop after this many runs (None: until Ctrl-C or an abort).
    pub runs: Option<u32>,
}

/// How a local run shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ui {
    /// The terminal dashboard; plain lines again if the user quits it
    /// before the run ends.
    Dashboard,
    /// One line per phase change and every few seconds.
    Plain,
}

impl Ui {
    /// The dashboard when the user is at a terminal and did not say
    /// `--no-dashboard`.
    pub fn choose(no_dashboard: bool) -> Ui {
        use std::io::IsTerminal as _;
        if !no_dashboard && std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
            Ui::Dashboard
        } else {
            Ui::Plain
        }
    }
}

/// `faultline run EXPERIMENT --local TOPOLOGY`.
pub fn run_files(
    experiment: &Path,
    topology: &Path,
    seed: u64,
    reports: &Reports,
    follow: Option<Follow>,
    ui: Ui,
) -> ExitCode {
    let name = experiment.display().to_string();
    let path = experiment;
    let experiment: Experiment = match load(experiment) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let topology_path = topology;
    let topology: Topology = match load(topology) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if follow.is_some() && experiment.spec.schedule.is_none() {
        tell!(
            "{name}: spec.schedule: --follow-schedule needs a schedule; without one the experiment runs once (drop the flag)"
        );
        tell!("faultline run: nothing was started");
        return ExitCode::from(EXIT_INVALID);
    }
    let mut unknown = unknown_services(path, &experiment, &topology);
    unknown.extend(unenforceable_limits(topology_path, &topology));
    if !unknown.is_empty() {
        for d in unknown {
            tell!("{d}");
        }
        tell!("faultline run: nothing was started");
        return ExitCode::from(EXIT_INVALID);
    }
    run(&experiment, &topology, seed, None, reports, follow, ui)
}

/// Checks of services `topology` does not run, which could never be
/// judged, and faults local mode cannot inject: each as FILE:LINE:COL:
/// field: problem, located in the file at `path` that `experiment` was
/// read from.
pub(crate) fn unknown_services(
    path: &Path,
    experiment: &Experiment,
    topology: &Topology,
) -> Vec<String> {
    let mut unknown = faultline_api::unknown_services(&experiment.spec, topology);
    unknown
        .0
        .extend(faultline_api::local_refusals(&experiment.spec, stress_here()).0);
    located(path, &unknown)
}

/// Problems of the file at `path` as FILE:LINE:COL: field: problem.
fn located(path: &Path, problems: &faultline_api::Problems) -> Vec<String> {
    if problems.0.is_empty() {
        return Vec::new();
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let name = path.display().to_string();
    faultline_api::locate(&bytes, problems)
        .iter()
        .map(|d| d.display_in(&name).to_string())
        .collect()
}

/// Limits of `topology` (read from `path`) this host cannot enforce, as
/// FILE:LINE:COL: field: problem.
pub(crate) fn unenforceable_limits(path: &Path, topology: &Topology) -> Vec<String> {
    if !topology.spec.has_limits() {
        return Vec::new();
    }
    let usable = faultline_runtime::cgroup_controllers();
    let refused =
        faultline_api::limit_refusals(topology, usable.as_deref().map_err(String::as_str));
    located(path, &refused)
}

/// Whether stress faults can run locally on this host; why not.
fn stress_here() -> Result<(), &'static str> {
    static SUPPORT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    SUPPORT
        .get_or_init(|| faultline_runtime::stress_support().map(|_| ()))
        .as_ref()
        .copied()
        .map_err(String::as_str)
}

/// Runs to the end on a runtime of its own (once, or at each start time of
/// the schedule with `follow`); Ctrl-C aborts with recovery.
pub fn run(
    experiment: &Experiment,
    topology: &Topology,
    seed: u64,
    load: Option<(String, Duration)>,
    reports: &Reports,
    follow: Option<Follow>,
    ui: Ui,
) -> ExitCode {
    // Runs that follow a schedule go on unattended: the dashboard would
    // hold each verdict until someone pressed q.
    let ui = if follow.is_some() { Ui::Plain } else { ui };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tell!("faultline: cannot start: {e}");
            return ExitCode::from(EXIT_BROKE);
        }
    };
    let code = rt.block_on(async {
        let (cancel_tx, cancel) = watch::channel(false);
        let cancel_tx = Arc::new(cancel_tx);
        // Closes the dashboard on a signal, so the terminal is restored
        // before faultline ends.
        let (close_tx, close) = watch::channel(false);
        // Registered before anything is printed or started, so a Ctrl-C at
        // any moment is caught rather than killing the process mid-run; and
        // so are SIGTERM (a CI job cancelled, `kill`) and SIGHUP (the
        // terminal closed), whose default would end faultline without
        // stopping the services it started.
        use tokio::signal::unix::{SignalKind, signal};
        let watched = (|| {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ))
        })();
        let (mut int, mut term, mut hup) = match watched {
            Ok(s) => s,
            Err(e) => {
                tell!("faultline: cannot watch for Ctrl-C, SIGTERM and SIGHUP: {e}");
                return EXIT_BROKE;
            }
        };
        let stop = cancel_tx.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "interrupted",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            let _ = close_tx.send(true);
            let _ = stop.send(true);
            if ui == Ui::Plain {
                // (The dashboard's screen would swallow it; its summary
                // says the run was interrupted.)
                tell!("\n{name}: removing every fault…");
            }
        });
        let display = Display {
            ui,
            abort: cancel_tx,
            close,
        };
        let once = || {
            run_once(
                experiment,
                topology,
                seed,
                load.clone(),
                reports,
                cancel.clone(),
                display.clone(),
            )
        };
        match (follow, &experiment.spec.schedule) {
            (Some(follow), Some(schedule)) => {
                follow_schedule(schedule, follow, cancel.clone(), once).await
            }
            (_, schedule) => {
                if let Some(at) = schedule
                    .as_ref()
                    .and_then(|s| s.next_after(jiff::Timestamp::now()))
                {
                    say!(
                        "faultline: the schedule would start the next run at {at}; running once now (--follow-schedule waits for it)"
                    );
                }
                once().await
            }
        }
    });
    ExitCode::from(code)
}

/// Runs at each start time of `schedule` until `follow.runs` runs are done,
/// a run is aborted or breaks, or Ctrl-C. The exit code is the worst of the
/// runs' (an abort or a broken run ends the loop with its own code).
async fn follow_schedule<F, Fut>(
    schedule: &faultline_api::CronSchedule,
    follow: Follow,
    mut cancel: watch::Receiver<bool>,
    mut once: F,
) -> u8
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    let mut previous = None;
    let mut worst = EXIT_PASSED;
    let mut done = 0u32;
    loop {
        let Some(next) = faultline_engine::next_start(schedule, previous, jiff::Timestamp::now())
        else {
            say!("faultline: the schedule \"{schedule}\" never fires again");
            return worst;
        };
        if next.missed > 0 {
            say!(
                "faultline: {} scheduled start{} passed while the last run went on; runs never overlap",
                next.missed,
                if next.missed == 1 { "" } else { "s" }
            );
        }
        say!(
            "faultline: following \"{schedule}\" (UTC): next run at {} — Ctrl-C to stop",
            next.at
        );
        if !wait_until(next.at, &mut cancel).await {
            say!("ABORTED while waiting for the next run: nothing was injected");
            return EXIT_ABORTED;
        }
        previous = Some(next.at);
        let code = once().await;
        done += 1;
        if code == EXIT_ABORTED || code == EXIT_BROKE {
            return code;
        }
        worst = worse(worst, code);
        if follow.runs.is_some_and(|n| done >= n) {
            return worst;
        }
    }
}

/// The worse of two runs' exit codes: a failed run outweighs an
/// inconclusive one, which outweighs a pass (5 is not worse than 1).
fn worse(a: u8, b: u8) -> u8 {
    let rank = |code: u8| match code {
        EXIT_PASSED => 0,
        EXIT_INCONCLUSIVE => 1,
        EXIT_FAILED => 2,
        other => 3 + u16::from(other),
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Sleeps until the wall clock reaches `at`, in steps so that a clock change
/// or a suspended machine is noticed; false when cancelled first.
async fn wait_until(at: jiff::Timestamp, cancel: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *cancel.borrow() {
            return false;
        }
        let left = jiff::Timestamp::now().duration_until(at);
        if left <= jiff::SignedDuration::ZERO {
            return true;
        }
        let step = Duration::try_from(left)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(30));
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            changed = cancel.changed() => {
                if changed.is_err() {
                    // The Ctrl-C watcher is gone: nothing can cancel any more.
                    tokio::time::sleep(step).await;
                }
            }
        }
    }
}

/// Where a run's progress goes, and what the dashboard may do.
#[derive(Debug, Clone)]
struct Display {
    ui: Ui,
    /// Set to abort the run (the dashboard's kill switch).
    abort: Arc<watch::Sender<bool>>,
    /// Set when faultline is told to stop.
    close: watch::Receiver<bool>,
}

/// The dashboard's kill switch in local mode: the run removes every fault
/// at its next step.
struct LocalAbort(Arc<watch::Sender<bool>>);

impl faultline_tui::Abort for LocalAbort {
    fn abort(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        Box::pin(async move {
            self.0
                .send(true)
                .map(|()| "aborted: every fault is being removed".to_owned())
                .map_err(|_| "the run has already ended".to_owned())
        })
    }
}

/// Shows `progress` until the run ends, on a thread of its own so a
/// terminal that blocks never holds up the run: the dashboard (then plain
/// lines, if the user quits it early), or plain lines.
fn show(
    name: String,
    progress: watch::Receiver<Progress>,
    display: Display,
) -> std::thread::JoinHandle<()> {
    let feed = (display.ui == Ui::Dashboard).then(|| {
        let (tx, rx) = watch::channel(feed_of(&name, &progress.borrow()));
        let mut from = progress.clone();
        tokio::spawn(async move {
            while from.changed().await.is_ok() {
                let feed = feed_of(&name, &from.borrow_and_update());
                if tx.send(feed).is_err() {
                    return;
                }
            }
        });
        rx
    });
    std::thread::spawn(move || {
        if let Some(feed) = feed {
            let sources = faultline_tui::Sources {
                observer: None,
                run: Some(feed),
                abort: Some(Arc::new(LocalAbort(display.abort))),
                close: Some(display.close),
                ctrl_c_aborts: true,
            };
            if let Err(e) = faultline_tui::run(sources) {
                tell!(
                    "faultline: the dashboard stopped ({}); plain progress follows",
                    crate::cluster::chain(&e)
                );
            } else if progress.has_changed().is_err() {
                return; // the run is over; its summary follows
            }
        }
        let mut progress = progress;
        let mut printer = Printer::default();
        loop {
            // Copied out, so the lock is not held while the terminal or a
            // pipe takes its time: the run's next step waits for it.
            let now = progress.borrow_and_update().clone();
            if let Some(run) = &now.run {
                printer.show(run, &now.phases);
            }
            if futures::executor::block_on(progress.changed()).is_err() {
                break;
            }
        }
        printer.finish();
    })
}

fn feed_of(name: &str, p: &Progress) -> faultline_tui::RunFeed {
    faultline_tui::RunFeed {
        name: name.to_owned(),
        observer: p.observer_api.map(|a| format!("http://{a}")),
        note: match (&p.failed, &p.starting) {
            (Some(why), _) => Some(format!("the run broke: {why}")),
            (None, Some(s)) => Some(format!("starting {s}…")),
            (None, None) => None,
        },
        run: p.run.clone(),
    }
}

/// One run with its progress display, summary and reports; the exit code.
async fn run_once(
    experiment: &Experiment,
    topology: &Topology,
    seed: u64,
    load: Option<(String, Duration)>,
    reports: &Reports,
    cancel: watch::Receiver<bool>,
    display: Display,
) -> u8 {
    let name = experiment.metadata.name.clone().unwrap_or_default();
    for note in faultline_runtime::local_mode_notes(experiment) {
        say!("note: {note}");
    }
    say!(
        "faultline: running {name} against {} local services ({}s)",
        topology.spec.services.len(),
        experiment.spec.duration.as_millis() / 1000
    );
    let load_task = load.map(|(target, duration)| {
        tokio::spawn(async move {
            // Give the services a moment to come up before traffic starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            faultline_demo::load::run(&faultline_demo::load::LoadOptions {
                target,
                path: "/order".into(),
                rate: 20.0,
                duration,
                timeout: Duration::from_secs(5),
            })
            .await
        })
    });
    let (progress_tx, progress) = watch::channel(Progress::default());
    let shown = show(name.clone(), progress, display);
    let outcome = faultline_runtime::run(
        experiment,
        topology,
        &Options {
            seed,
            logs: reports.logs.clone(),
            forward: reports.otlp_forward.clone(),
            ..Options::default()
        },
        cancel,
        &progress_tx,
    )
    .await;
    drop(progress_tx);
    if let Some(t) = load_task {
        t.abort();
    }
    // The dashboard stays until the user has read the verdict.
    let _ = tokio::task::spawn_blocking(move || shown.join()).await;
    match outcome {
        Ok(o) => {
            let code = summary(&o);
            let seconds = o.journal.last().map_or(0.0, |e| e.at.as_secs_f64());
            if write_reports(&name, &o, reports, seconds) {
                code
            } else {
                EXIT_BROKE
            }
        }
        Err(e) => {
            tell!("faultline: the run broke: {e}");
            EXIT_BROKE
        }
    }
}

/// Writes `--junit` and `--json`; false (said on stderr) when one could not be written.
pub(crate) fn write_reports(name: &str, o: &Outcome, reports: &Reports, seconds: f64) -> bool {
    let write = |path: &Option<std::path::PathBuf>, text: String| -> bool {
        let Some(path) = path else { return true };
        match std::fs::write(path, text) {
            Ok(()) => true,
            Err(e) => {
                tell!("faultline: cannot write {}: {e}", path.display());
                false
            }
        }
    };
    write(&reports.junit, crate::report::junit(name, o, seconds))
        & write(&reports.json, crate::report::journal(name, o))
}

/// Progress: on a terminal, one status line redrawn in place (a new line on
/// each phase change); otherwise plain lines, one per phase change and one
/// every 5 s.
struct Printer {
    phase: Option<Phase>,
    /// Phase changes already shown.
    phases_shown: usize,
    last: Option<Duration>,
    tty: bool,
    /// A line is on the terminal, not yet ended.
    drawn: bool,
}

impl Default for Printer {
    fn default() -> Self {
        Printer {
            phase: None,
            phases_shown: 0,
            last: None,
            tty: std::io::IsTerminal::is_terminal(&std::io::stdout()),
            drawn: false,
        }
    }
}

impl Printer {
    /// Ends the status line being redrawn, so what follows starts below it.
    fn finish(&self) {
        if self.drawn {
            say!();
        }
    }

    fn show(&mut self, run: &Snapshot, phases: &[(Duration, Phase)]) {
        // Phases entered and left between two reads: a line each.
        let missed = phases.len().saturating_sub(1);
        for (at, phase) in phases.iter().take(missed).skip(self.phases_shown) {
            if Some(*phase) != self.phase {
                self.line(
                    &format!("[{:>6.1}s] {}", at.as_secs_f64(), phase.as_str()),
                    true,
                );
                self.phase = Some(*phase);
            }
        }
        self.phases_shown = self.phases_shown.max(missed);
        let phase = run.phase;
        let every = if self.tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let periodic = self.last.is_none_or(|t| run.at.saturating_sub(t) >= every);
        let changed = Some(phase) != self.phase;
        if !changed && !periodic {
            return;
        }
        self.phase = Some(phase);
        self.last = Some(run.at);
        let checks: Vec<String> = run
            .checks
            .iter()
            .filter_map(|r| {
                r.last
                    .as_ref()
                    .map(|e| format!("{}: {}", r.name, e.observed))
            })
            .collect();
        let left = run.duration.saturating_sub(run.at);
        // Latency and partitions applied; kills act, they are not held.
        let active: usize = run
            .faults
            .iter()
            .filter(|f| f.kind != "kill")
            .map(|f| f.targets.as_ref().map_or(0, Vec::len))
            .sum();
        let line = format!(
            "[{:>6.1}s] {:<10} {:>4}s left  faults active: {:<3} {}",
            run.at.as_secs_f64(),
            phase.as_str(),
            left.as_secs() + u64::from(left.subsec_nanos() > 0),
            active,
            checks.join(" · ")
        );
        self.line(&line, changed);
    }

    /// On a terminal, `line` redrawn in place (below the last one when
    /// `new`); otherwise a line of its own.
    fn line(&mut self, line: &str, new: bool) {
        if self.tty {
            use std::io::Write as _;
            // A line wider than the terminal wraps, and `\r` would then
            // redraw only its last row: keep it to one row.
            let line = fit(line, terminal_columns());
            // Keep the finished line of a phase; redraw within one.
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "{}\r\x1b[2K{line}",
                if new && self.drawn { "\n" } else { "" }
            );
            let _ = out.flush();
            self.drawn = true;
        } else {
            say!("{line}");
        }
    }
}

/// The width of the terminal on stdout (80 when it cannot be told).
fn terminal_columns() -> usize {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .map(|w| usize::from(w.ws_col))
        .ok()
        .filter(|c| *c > 0)
        .unwrap_or(80)
}

/// `line` cut to fit in `columns - 1` characters (the last column stays
/// free so the cursor never wraps), with `…` where it was cut.
fn fit(line: &str, columns: usize) -> String {
    let room = columns.saturating_sub(1).max(1);
    if line.chars().count() <= room {
        line.to_owned()
    } else {
        truncate(line, room)
    }
}

pub(crate) fn summary(o: &Outcome) -> u8 {
    say!();
    say!(
        "{:<48} {:<8} {:<16} expected",
        "check",
        "result",
        "observed"
    );
    for r in &o.report {
        let (observed, expected) = r
            .last
            .as_ref()
            .map_or(("-".to_owned(), "-".to_owned()), |e| {
                (e.observed.clone(), e.expected.clone())
            });
        let result = match (r.abort, r.passed, r.evaluations) {
            (_, _, 0) => "not run",
            _ if r.unjudged() => "UNJUDGED",
            (true, true, _) => "held",
            (true, false, _) => "TRIPPED",
            (false, true, _) => "passed",
            (false, false, _) => "FAILED",
        };
        say!(
            "{:<48} {:<8} {:<16} {}",
            truncate(&r.name, 48),
            result,
            observed,
            expected
        );
        if let Some(f) = r.failure.as_ref().or(r.inconclusive.as_ref()) {
            say!("    {f}");
        }
    }
    for (fault, effect) in &o.effects {
        match effect {
            Some(e) if e.count > 0 => say!("fault {fault}: {e}"),
            Some(e) => say!("fault {fault}: no effect observed (0 {})", e.what),
            None => say!("fault {fault}: no effect observed (none could be counted)"),
        }
    }
    if let Some((forwarded, dropped)) = o.forwarded {
        say!("spans forwarded: {forwarded} ({dropped} dropped)");
    }
    for (service, n) in o.restarts.iter().filter(|(_, n)| **n > 0) {
        say!(
            "{service} restarted {n} time{}",
            if *n == 1 { "" } else { "s" }
        );
    }
    if let Some(m) = &o.message {
        say!("{m}");
    }
    let (word, code) = match o.verdict {
        Verdict::Passed => ("PASSED: the hypothesis held", EXIT_PASSED),
        Verdict::Failed => ("FAILED: the hypothesis did not hold", EXIT_FAILED),
        Verdict::Aborted => ("ABORTED: every fault was removed", EXIT_ABORTED),
        Verdict::Inconclusive => (
            "INCONCLUSIVE: a check was never judged on enough evidence",
            EXIT_INCONCLUSIVE,
        ),
        Verdict::Broken => (
            "BROKEN: the run could not be carried out; every fault was removed",
            EXIT_BROKE,
        ),
    };
    say!("{word}");
    code
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(n - 1).collect();
        format!("{cut}…")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// `faultline demo`: the demo shop from this very binary, with payments
/// slowed by 300 ms; checkout's breaker must open and frontend's error rate
/// stay under 5 %.
pub fn demo(duration: Duration, no_breaker: bool, reports: &Reports, ui: Ui) -> ExitCode {
    let secs = duration.as_secs().max(30);
    let fault_secs = secs - 20;
    let (f, c, p, i) = (free_port(), free_port(), free_port(), free_port());
    let breaker = if no_breaker { ", --no-breaker" } else { "" };
    let topology = format!(
        "apiVersion: faultline.dev/v1alpha1
kind: Topology
metadata: {{name: shop}}
spec:
  services:
    - {{name: payments, labels: {{app: payments}}, port: {p}, command: [faultline, demo-role, payments, --listen, \"127.0.0.1:{p}\"]}}
    - {{name: inventory, labels: {{app: inventory}}, port: {i}, command: [faultline, demo-role, inventory, --listen, \"127.0.0.1:{i}\"]}}
    - {{name: checkout, labels: {{app: checkout}}, port: {c}, dependsOn: [payments, inventory],
        command: [faultline, demo-role, checkout, --listen, \"127.0.0.1:{c}\"{breaker}]}}
    - {{name: frontend, labels: {{app: frontend}}, port: {f}, dependsOn: [checkout],
        command: [faultline, demo-role, frontend, --listen, \"127.0.0.1:{f}\"]}}
"
    );
    let experiment = format!(
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: payments-slowdown, namespace: demo}}
spec:
  description: Payments answers 300 ms slower; checkout must open its breaker and keep frontend's errors under 5%.
  duration: {secs}s
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - name: slow-payments
      target: payments
      start: 10s
      duration: {fault_secs}s
      latency: {{delay: 300ms}}
  hypothesis:
    - name: checkout opens its payments breaker
      breaker: {{service: checkout, name: payments, state: open, within: 15s, fault: slow-payments}}
    - name: frontend error rate under 5%
      errorRate: {{service: frontend, max: 5%, window: 10s}}
  abort:
    - errorRate: {{service: frontend, max: 50%, window: 10s}}
"
    );
    let (Ok(topology), Ok(experiment)) = (
        parse_one::<Topology>(topology.as_bytes()),
        parse_one::<Experiment>(experiment.as_bytes()),
    ) else {
        tell!("faultline demo: the built-in experiment is invalid (a bug)");
        return ExitCode::from(EXIT_BROKE);
    };
    run(
        &experiment,
        &topology,
        0,
        Some((format!("127.0.0.1:{f}"), Duration::from_secs(secs + 10))),
        reports,
        None,
        ui,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_fit_one_terminal_row() {
        assert_eq!(fit("short", 80), "short");
        let cut = fit("abcdefghij", 6);
        assert_eq!(cut, "abcd…");
        assert_eq!(cut.chars().count(), 5);
        // Wide enough for exactly the line minus the last column.
        assert_eq!(fit("abcde", 6), "abcde");
        assert_eq!(fit("abc", 0), "…");
    }
}
