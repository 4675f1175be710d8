//! `faultline dashboard`: the dashboard on an observer anywhere, and
//! optionally one Experiment's run on the cluster, read from its status.

use std::{
    io::IsTerminal as _,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

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
    let Some(name) = experiment else {
        return show(faultline_tui::Sources {
            observer: Some(observer),
            ..Default::default()
        });
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
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
        close: None,
    })
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
            let started = Instant::now();
            annotate_abort(&api, &name, "aborted from faultline dashboard")
                .await
                .map(|()| {
                    format!(
                        "abort requested in {:.1}s; the controller removes every fault",
                        started.elapsed().as_secs_f64()
                    )
                })
                .map_err(|e| chain(&e))
        });
        Box::pin(async move { task.await.map_err(|e| e.to_string())? })
    }
}
