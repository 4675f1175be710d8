//! `faultline dashboard`: the dashboard on an observer anywhere, and
//! optionally one Experiment's run on the cluster, read from its status.

use std::{io::IsTerminal as _, process::ExitCode, sync::Arc, time::Duration};

use faultline_api::Experiment;
use faultline_engine::Snapshot;
use faultline_tui::RunFeed;
use kube::Api;
use tokio::sync::watch;

use crate::{
    EXIT_INVALID,
    cluster::{READ_TIMEOUT, annotate_abort, chain, client, is_final, runtime},
    local::EXIT_BROKE,
};

/// How often the Experiment is read.
const POLL: Duration = Duration::from_secs(1);

pub fn run(observer: &str, experiment: Option<&str>, namespace: Option<&str>) -> ExitCode {
    let observer = match faultline_tui::base_url(observer) {
        Ok(url) => url,
        Err(e) => {
            tell!("faultline dashboard: --observer {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        tell!(
            "faultline dashboard: needs a terminal (stdin and stdout); the observer's figures are at {observer}/api/v1/services"
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let close = match rt.block_on(async { closed_by_signals() }) {
        Ok(close) => close,
        Err(e) => {
            tell!("faultline dashboard: cannot watch for SIGTERM, SIGHUP and SIGINT: {e}");
            return ExitCode::from(EXIT_BROKE);
        }
    };
    let Some(name) = experiment else {
        return show(faultline_tui::Sources {
            observer: Some(observer),
            close: Some(close),
            ..Default::default()
        });
    };
    let setup = rt.block_on(async {
        let client = client().await?;
        let namespace =
            namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
        let api = Api::<Experiment>::namespaced(client, &namespace);
        Ok::<_, ExitCode>((api, namespace))
    });
    let (api, namespace) = match setup {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (feed_tx, feed) = watch::channel(RunFeed {
        name: name.to_owned(),
        note: Some("reading the experiment…".into()),
        ..RunFeed::default()
    });
    let what = format!("{namespace}/{name}");
    let _follow = rt.spawn(follow(api.clone(), name.to_owned(), what, feed_tx));
    let abort = ClusterAbort {
        api,
        name: name.to_owned(),
        handle: rt.handle().clone(),
    };
    show(faultline_tui::Sources {
        observer: Some(observer),
        run: Some(feed),
        abort: Some(Arc::new(abort)),
        close: Some(close),
        // This viewer did not start the run: Ctrl-C quits; `a` asks.
        ctrl_c_aborts: false,
    })
}

/// True once SIGTERM, SIGHUP or SIGINT comes (the terminal in raw mode
/// sends no SIGINT for Ctrl-C; `kill -INT` still can): the dashboard
/// closes and the terminal is given back.
fn closed_by_signals() -> std::io::Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn show(sources: faultline_tui::Sources) -> ExitCode {
    match faultline_tui::run(sources) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tell!("faultline dashboard: {}", chain(&e));
            ExitCode::from(EXIT_BROKE)
        }
    }
}

/// Reads the Experiment every second into the feed; a failed read is said
/// in the feed and retried.
async fn follow(api: Api<Experiment>, name: String, what: String, feed: watch::Sender<RunFeed>) {
    let mut known: Option<Snapshot> = None;
    loop {
        let read = tokio::time::timeout(READ_TIMEOUT, api.get_opt(&name)).await;
        let (note, run) = match read {
            Err(_) => (
                Some(format!(
                    "the cluster did not answer within {READ_TIMEOUT:?}; retrying"
                )),
                known.clone(),
            ),
            Ok(Err(e)) => (
                Some(format!(
                    "cannot read the experiment: {}; retrying",
                    chain(&e)
                )),
                known.clone(),
            ),
            Ok(Ok(None)) => (
                Some(format!("experiment {what} does not exist (yet)")),
                None,
            ),
            Ok(Ok(Some(e))) => snapshot_of(&e),
        };
        known.clone_from(&run);
        let sent = feed.send(RunFeed {
            name: name.clone(),
            observer: None,
            note,
            run,
        });
        if sent.is_err() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The run the status tells of, or a note saying why there is none.
fn snapshot_of(e: &Experiment) -> (Option<String>, Option<Snapshot>) {
    let status = e.status.clone().unwrap_or_default();
    let Some(started) = status.started_at.as_ref() else {
        let note = match &status.next_run_at {
            Some(at) => format!("no run in progress; the next starts at {}", at.0),
            None => "waiting for the controller to start it".to_owned(),
        };
        return (Some(note), None);
    };
    let end = match (&status.finished_at, is_final(status.phase)) {
        (Some(f), true) => f.0,
        _ => jiff::Timestamp::now(),
    };
    let at = Duration::try_from(end.duration_since(started.0)).unwrap_or_default();
    (None, Some(Snapshot::from_status(&e.spec, &status, at)))
}

/// The dashboard's kill switch on a cluster: the abort annotation the
/// controller acts on, as `faultline abort` sets it.
struct ClusterAbort {
    api: Api<Experiment>,
    name: String,
    /// The kube client lives on this runtime, not the dashboard's.
    handle: tokio::runtime::Handle,
}

impl faultline_tui::Abort for ClusterAbort {
    fn abort(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        let api = self.api.clone();
        let name = self.name.clone();
        let task = self.handle.spawn(async move {
            // What the dashboard shows may be a second old, or older while
            // the cluster does not answer: between scheduled runs an
            // annotation would abort the next run instead.
            let now = tokio::time::timeout(READ_TIMEOUT, api.get_opt(&name))
                .await
                .map_err(|_| format!("the cluster did not answer within {READ_TIMEOUT:?}"))?
                .map_err(|e| chain(&e))?
                .ok_or_else(|| format!("experiment {name} no longer exists"))?;
            let status = now.status.unwrap_or_default();
            if is_final(status.phase) {
                return Err("the run has already ended".to_owned());
            }
            if status.started_at.is_none() {
                return Err("no run is in progress".to_owned());
            }
            tokio::time::timeout(
                READ_TIMEOUT,
                annotate_abort(&api, &name, "aborted from faultline dashboard"),
            )
            .await
            .map_err(|_| format!("the cluster did not answer within {READ_TIMEOUT:?}"))?
            .map_err(|e| chain(&e))?;
            Ok("abort requested; the controller removes every fault".to_owned())
        });
        Box::pin(async move { task.await.map_err(|e| e.to_string())? })
    }
}
