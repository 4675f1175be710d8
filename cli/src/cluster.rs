//! `faultline run EXPERIMENT` against a cluster (the current kubeconfig)
//! and `faultline abort NAME`: the CLI applies the Experiment, follows the
//! status the controller writes, and exits as local mode does.

use std::{
    collections::BTreeMap,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use faultline_api::{Experiment, ExperimentStatus, Phase, Verdict};
use faultline_engine::{CheckReport, Effect, Entry};
use faultline_runtime::Outcome;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};

use crate::local::{EXIT_ABORTED, EXIT_BROKE, EXIT_INVALID, Reports, load, summary};

/// The field manager of the Experiments the CLI applies.
const FIELD_MANAGER: &str = "faultline-cli";
/// The annotation the controller reads to abort a run.
const ABORT_ANNOTATION: &str = "faultline.dev/abort";
/// How long one read of the Experiment may take.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the status is read.
const POLL: Duration = Duration::from_millis(500);

/// How long to wait for things the cluster does.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// For the controller to take the experiment up (a status phase).
    pub start: Duration,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tell!("faultline: cannot start: {e}");
            ExitCode::from(EXIT_BROKE)
        })
}

pub(crate) async fn client() -> Result<Client, ExitCode> {
    Client::try_default().await.map_err(|e| {
        tell!(
            "faultline: cannot reach the cluster (kubeconfig or in-cluster config): {}",
            chain(&e)
        );
        ExitCode::from(EXIT_BROKE)
    })
}

/// Runs `job` with a client of the current kubeconfig's cluster, on a
/// runtime of its own; what starting either costs is said and exit 4.
pub(crate) fn with_cluster<F>(job: impl FnOnce(Client) -> F) -> ExitCode
where
    F: std::future::Future<Output = ExitCode>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        match client().await {
            Ok(c) => job(c).await,
            Err(code) => code,
        }
    })
}

pub(crate) use faultline_telemetry::error_chain as chain;

pub(crate) fn is_final(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Completed | Phase::Recovered | Phase::Invalid)
    )
}

/// `faultline run EXPERIMENT` without `--local`.
pub fn run_file(path: &Path, reports: &Reports, waits: Waits) -> ExitCode {
    let file = path.display().to_string();
    let experiment: Experiment = match load(path) {
        Ok(e) => e,
        Err(code) => return code,
    };
    with_cluster(|client| async move {
        match run(client, experiment, &file, reports, waits).await {
            Ok(code) => code,
            Err(message) => {
                tell!("faultline run: {message}");
                ExitCode::from(EXIT_BROKE)
            }
        }
    })
}

/// Ctrl-C, SIGTERM and SIGHUP, caught from the moment this is made (a
/// signal between applying and following must abort, not kill the CLI).
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Interrupts, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let on = |kind| signal(kind).map_err(|e| format!("cannot catch signals: {e}"));
        Ok(Interrupts {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

async fn run(
    client: Client,
    mut experiment: Experiment,
    file: &str,
    reports: &Reports,
    waits: Waits,
) -> Result<ExitCode, String> {
    let namespace = experiment
        .namespace()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let name = experiment.name_any();
    let api = Api::<Experiment>::namespaced(client, &namespace);
    let what = format!("experiment {namespace}/{name}");

    // A finished run of the same experiment (yesterday's game day) makes
    // way for this one; a running one is left alone.
    if let Some(old) = api.get_opt(&name).await.map_err(|e| chain(&e))? {
        let phase = old.status.as_ref().and_then(|s| s.phase);
        if !is_final(phase) {
            return Err(format!(
                "{what} exists and has not finished (phase {}); `faultline abort {name}` stops it",
                phase.map_or("none yet", Phase::as_str)
            ));
        }
        say!(
            "{what}: removing the finished run of {}",
            old.creation_timestamp()
                .map_or("earlier".into(), |t| t.0.to_string())
        );
        api.delete(&name, &DeleteParams::default())
            .await
            .map_err(|e| chain(&e))?;
        let deadline = Instant::now() + waits.start;
        while api.get_opt(&name).await.map_err(|e| chain(&e))?.is_some() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: the finished run was not removed within {:?}",
                    waits.start
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    let mut interrupts = Interrupts::new()?;
    experiment.metadata.namespace = Some(namespace.clone());
    experiment.status = None;
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&experiment),
        )
        .await
        .map_err(|e| format!("{what}: cannot apply it: {}", chain(&e)))?;
    let uid = applied.uid().unwrap_or_default();
    say!("{what}: applied from {file}; following its status (Ctrl-C aborts it)");

    let begun = Instant::now();
    let mut journal: Vec<Entry> = Vec::new();
    let mut last_line = String::new();
    let mut abort_sent: Option<Instant> = None;
    let mut failing_since: Option<Instant> = None;
    loop {
        // A stalled API server must not keep Ctrl-C or the deadlines waiting.
        let read = tokio::select! {
            r = tokio::time::timeout(READ_TIMEOUT, api.get_opt(&name)) => r,
            _ = interrupts.next() => {
                if let Some(code) = interrupted(&api, &name, &what, &mut abort_sent).await {
                    return Ok(code);
                }
                continue;
            }
        };
        let read = read.unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer within {READ_TIMEOUT:?}").into(),
            ))
        });
        let current = match read {
            Ok(Some(e)) if e.uid().unwrap_or_default() == uid => e,
            Ok(_) => {
                tell!(
                    "faultline run: {what} was deleted before it finished (its finalizer removed its faults)"
                );
                return Ok(ExitCode::from(EXIT_ABORTED));
            }
            Err(e) => {
                // Transient, for a while: the agents hold their own deadlines.
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > waits.start {
                    return Err(format!(
                        "{what}: the cluster has not answered for {:?}: {}; the agents remove each fault at its deadline",
                        waits.start,
                        chain(&e)
                    ));
                }
                tell!("faultline run: reading {what}: {}", chain(&e));
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        failing_since = None;
        let status = current.status.clone().unwrap_or_default();
        let line = progress_line(&status);
        if line != last_line {
            say!("{:>6.1}s {line}", begun.elapsed().as_secs_f64());
            journal.push(Entry {
                at: begun.elapsed(),
                event: line.clone(),
            });
            last_line = line;
        }
        // A scheduled experiment waits for its start time (nextRunAt) with
        // no phase yet; its run is over once one has ended.
        // Invalid ends it at once; otherwise a scheduled experiment waits
        // for its start time (nextRunAt) with no phase, and is over once
        // one run has ended.
        if status.phase == Some(Phase::Invalid)
            || (is_final(status.phase) && status.runs.unwrap_or(0) >= 1)
        {
            return Ok(finish(&name, &status, journal, reports, begun.elapsed()));
        }
        let taken_up = status.phase.is_some() || status.next_run_at.is_some();
        if !taken_up && begun.elapsed() > waits.start {
            let _ = api.delete(&name, &DeleteParams::default()).await;
            return Err(format!(
                "{what}: no controller took it up within {:?} (is faultline-controller running?); it was deleted",
                waits.start
            ));
        }
        if let Some(since) = abort_sent
            && since.elapsed() > waits.start
        {
            return Err(format!(
                "{what}: the abort was not confirmed within {:?}; the agents remove each fault at its deadline",
                waits.start
            ));
        }
        // A run that outlives its duration by far has lost its controller.
        if let Some(started) = &status.started_at {
            let limit = experiment.spec.duration.as_std() + Duration::from_secs(300);
            let running_for = jiff::Timestamp::now().duration_since(started.0);
            if running_for
                > jiff::SignedDuration::try_from(limit).unwrap_or(jiff::SignedDuration::MAX)
            {
                return Err(format!(
                    "{what} has run {:.0} s past its duration without ending; is faultline-controller running?",
                    running_for.as_secs_f64() - experiment.spec.duration.as_std().as_secs_f64()
                ));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupts.next() => {
                if let Some(code) = interrupted(&api, &name, &what, &mut abort_sent).await {
                    return Ok(code);
                }
            }
        }
    }
}

/// Ctrl-C while following: before the first run has started (a scheduled
/// experiment waiting), nothing is injected and the experiment goes;
/// otherwise the run is aborted; a second one stops waiting for that.
async fn interrupted(
    api: &Api<Experiment>,
    name: &str,
    what: &str,
    abort_sent: &mut Option<Instant>,
) -> Option<ExitCode> {
    if abort_sent.is_some() {
        tell!(
            "faultline run: stopped following {what} before its abort was confirmed; the agents remove each fault at its deadline"
        );
        return Some(ExitCode::from(EXIT_ABORTED));
    }
    // Read afresh: the status last shown may predate the run's start.
    let started = match api.get_opt(name).await {
        Ok(Some(e)) => e.status.and_then(|s| s.started_at).is_some(),
        _ => true,
    };
    if !started {
        let _ = api.delete(name, &DeleteParams::default()).await;
        say!("{what}: interrupted before its first run; deleted, nothing was injected");
        return Some(ExitCode::from(EXIT_ABORTED));
    }
    *abort_sent = Some(Instant::now());
    say!("{what}: aborting (every fault is being removed; interrupt again to stop waiting)");
    if let Err(e) = annotate_abort(api, name, "interrupted by the user").await {
        tell!("faultline run: cannot abort {what}: {}", chain(&e));
    }
    None
}

pub(crate) async fn annotate_abort(
    api: &Api<Experiment>,
    name: &str,
    reason: &str,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {ABORT_ANNOTATION: reason}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// One line of what the status says now.
fn progress_line(s: &ExperimentStatus) -> String {
    let mut line = format!(
        "{:<10} targets {}  injected {}  failed {}",
        s.phase
            .map_or("(waiting for the controller)", Phase::as_str),
        s.targets.unwrap_or(0),
        s.injected.unwrap_or(0),
        s.failed.unwrap_or(0)
    );
    for c in &s.checks {
        let verdict = match c.passed {
            Some(true) => "ok",
            Some(false) => "FAILED",
            None => "-",
        };
        line.push_str(&format!(
            "  | {} {} {verdict}",
            c.name,
            c.observed.as_deref().unwrap_or("-")
        ));
    }
    line
}

/// The run as the local mode's reports read it, built from the status.
fn outcome_of(status: &ExperimentStatus, journal: Vec<Entry>) -> Outcome {
    let report = status.checks.iter().map(CheckReport::from_status).collect();
    let effects = status
        .faults
        .iter()
        .map(|f| (f.name.clone(), f.effect.as_ref().map(Effect::from)))
        .collect();
    // The engine's own words: "requireEffect: fault a: …; fault b: …".
    let effect_failures = match (status.verdict, status.message.as_deref()) {
        (Some(Verdict::Failed), Some(m)) => m
            .strip_prefix("requireEffect: ")
            .map(|rest| rest.split("; ").map(str::to_owned).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Outcome {
        effects,
        effect_failures,
        verdict: status.verdict.unwrap_or(Verdict::Aborted),
        phase: status.phase.unwrap_or(Phase::Recovered),
        message: status.message.clone(),
        report,
        journal,
        restarts: BTreeMap::new(),
        log: Vec::new(),
        forwarded: None,
    }
}

fn finish(
    name: &str,
    status: &ExperimentStatus,
    journal: Vec<Entry>,
    reports: &Reports,
    took: Duration,
) -> ExitCode {
    if status.phase == Some(Phase::Invalid) {
        tell!(
            "faultline run: the controller refused {name}: {}",
            status.message.as_deref().unwrap_or("invalid")
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let outcome = outcome_of(status, journal);
    let code = summary(&outcome);
    if !crate::local::write_reports(name, &outcome, reports, took.as_secs_f64()) {
        return ExitCode::from(EXIT_BROKE);
    }
    match outcome.verdict {
        Verdict::Aborted => ExitCode::from(EXIT_ABORTED),
        Verdict::Broken => ExitCode::from(EXIT_BROKE),
        _ => ExitCode::from(code),
    }
}

/// `faultline abort NAME`: stops a running experiment at once.
pub fn abort(name: &str, namespace: Option<&str>, reason: &str, wait: Duration) -> ExitCode {
    with_cluster(|client| async move {
        let namespace =
            namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
        let api = Api::<Experiment>::namespaced(client.clone(), &namespace);
        let what = format!("experiment {namespace}/{name}");
        match api.get_opt(name).await {
            Ok(Some(e)) if is_final(e.status.as_ref().and_then(|s| s.phase)) => {
                say!("{what} has already finished; nothing to abort");
                return ExitCode::SUCCESS;
            }
            // Between scheduled runs (or before the first): nothing runs,
            // and an annotation now would abort the next run instead.
            Ok(Some(e)) if !in_progress(&e) => {
                say!("{what} has no run in progress; nothing to abort");
                return ExitCode::SUCCESS;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                tell!("faultline abort: {what} does not exist");
                return ExitCode::from(EXIT_INVALID);
            }
            Err(e) => {
                tell!("faultline abort: reading {what}: {}", chain(&e));
                return ExitCode::from(EXIT_BROKE);
            }
        }
        abort_and_wait(&client, vec![(namespace, name.to_owned())], reason, wait).await
    })
}

/// A run has started and not ended.
fn in_progress(e: &Experiment) -> bool {
    let status = e.status.as_ref();
    status.and_then(|s| s.started_at.as_ref()).is_some() && !is_final(status.and_then(|s| s.phase))
}

/// `faultline abort --all`: aborts every run in progress, in `namespace`
/// or in every namespace, and waits until each has removed its faults.
pub fn abort_all(namespace: Option<&str>, reason: &str, wait: Duration) -> ExitCode {
    with_cluster(|client| async move {
        let api: Api<Experiment> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let scope = namespace.map_or_else(
            || "any namespace".to_owned(),
            |ns| format!("namespace {ns}"),
        );
        let list = match api.list(&Default::default()).await {
            Ok(l) => l,
            Err(e) => {
                tell!(
                    "faultline abort: listing experiments in {scope}: {}",
                    chain(&e)
                );
                return ExitCode::from(EXIT_BROKE);
            }
        };
        let running: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|e| in_progress(e))
            .filter_map(|e| Some((e.namespace()?, e.name_any())))
            .collect();
        if running.is_empty() {
            say!("no experiment runs in {scope}; nothing to abort");
            return ExitCode::SUCCESS;
        }
        abort_and_wait(&client, running, reason, wait).await
    })
}

/// Annotates each experiment to abort, then waits until every one has
/// ended (its faults removed) or is gone.
async fn abort_and_wait(
    client: &kube::Client,
    experiments: Vec<(String, String)>,
    reason: &str,
    wait: Duration,
) -> ExitCode {
    let mut pending = Vec::new();
    let mut failed = false;
    for (ns, name) in experiments {
        let api = Api::<Experiment>::namespaced(client.clone(), &ns);
        let what = format!("experiment {ns}/{name}");
        match annotate_abort(&api, &name, reason).await {
            Ok(()) => {
                say!("{what}: abort requested; waiting for its faults to be removed");
                pending.push((api, name, what));
            }
            Err(e) => {
                tell!("faultline abort: cannot abort {what}: {}", chain(&e));
                failed = true;
            }
        }
    }
    let deadline = Instant::now() + wait;
    while !pending.is_empty() {
        let mut left = Vec::new();
        for (api, name, what) in pending {
            match api.get_opt(&name).await {
                Ok(Some(e)) if is_final(e.status.as_ref().and_then(|s| s.phase)) => {
                    let s = e.status.unwrap_or_default();
                    say!(
                        "{what}: {} ({})",
                        s.phase.map_or("", Phase::as_str),
                        s.message.as_deref().unwrap_or("aborted")
                    );
                }
                Ok(None) => say!("{what}: deleted"),
                _ => left.push((api, name, what)),
            }
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for (_, _, what) in &pending {
                tell!(
                    "faultline abort: {what} has not confirmed within {wait:?}; the agents still remove each fault at its deadline"
                );
            }
            return ExitCode::from(EXIT_BROKE);
        }
        tokio::time::sleep(POLL).await;
    }
    if failed {
        ExitCode::from(EXIT_BROKE)
    } else {
        ExitCode::SUCCESS
    }
}
