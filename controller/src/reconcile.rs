//! The Kubernetes side: one reconcile per Experiment, level-triggered.
//!
//! Each turn reads the experiment, the pods and namespaces and the
//! NodeFaults objects (reflector stores, one cluster-wide watch each),
//! steps the engine's run to now, and writes the difference: this
//! experiment's entries on each node by server-side apply under its own
//! field manager, then its status. Nothing is remembered that cannot be
//! read back: a restarted controller resumes a run from its status and the
//! NodeFaults objects, and writes only what differs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use faultline_api::{
    CheckKind, Experiment, ExperimentStatus, FaultAction, KillMethod, NodeFault, Phase, Verdict,
};
use faultline_engine::{Run, next_start};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp, Unit};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalize, finalizer},
        reflector,
        watcher::Config,
    },
};

pub use crate::context::{Clock, Context, Settings, Stores, watches};
use crate::{
    live::{Live, elapsed},
    nodes::{self, converge},
    plan::{self, ExperimentRef, PodInfo},
    status::{self, RunFacts},
};

/// Held on every Experiment until its faults are gone.
pub(crate) const FINALIZER: &str = "faultline.dev/cleanup";
/// Set (to a reason) to stop a run at once: `faultline abort` writes it,
/// and the controller removes it when the run has ended.
pub(crate) const ABORT_ANNOTATION: &str = "faultline.dev/abort";
/// The field manager of the status the controller writes.
pub(crate) const STATUS_MANAGER: &str = "faultline-controller";
/// A scheduled start this late is still taken; later ones count as missed.
const START_SLACK: SignedDuration = SignedDuration::from_secs(30);
/// How long checks due before or after the faults may go unreadable
/// before they count as failed (the run would otherwise wait forever).
const CHECK_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("the Kubernetes API call failed")]
    Kube(#[source] kube::Error),
    #[error("the experiment has no {0}")]
    Malformed(&'static str),
    #[error("the finalizer could not run")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) use faultline_telemetry::error_chain as chain;

/// The controller on `client` as a task, the only replica: its watches,
/// its context and its reconciler, until `shutdown` resolves. The context
/// tells when it is ready (`Context::wait_ready`).
pub fn start(
    client: kube::Client,
    observer: crate::observe::ObserverClient,
    clock: crate::context::Clock,
    settings: crate::context::Settings,
    metrics: crate::metrics::Metrics,
    instance: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let replica = Replica {
        instance,
        leading: tokio::sync::watch::channel(true).1,
    };
    start_replica(
        client, observer, clock, settings, metrics, replica, shutdown,
    )
}

/// Who this replica is, and whether it leads (see [`run`]).
#[derive(Debug)]
pub struct Replica {
    /// Its name in Events.
    pub instance: Option<String>,
    /// True while it holds the leader Lease.
    pub leading: tokio::sync::watch::Receiver<bool>,
}

/// As [`start`], for one of several replicas: it reconciles only while
/// `replica.leading` says so.
pub fn start_replica(
    client: kube::Client,
    observer: crate::observe::ObserverClient,
    clock: crate::context::Clock,
    settings: crate::context::Settings,
    metrics: crate::metrics::Metrics,
    replica: Replica,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let (stores, driver) = watches(&client);
    let ctx = Arc::new(Context::new(
        client,
        stores,
        observer,
        clock,
        settings,
        metrics,
        replica.instance,
    ));
    let task = tokio::spawn(run(ctx.clone(), driver, replica.leading, shutdown));
    (ctx, task)
}

/// Resolves when `leading` turns to `want`; never, if it cannot any more
/// (its sender gone with another value).
async fn until_leading_is(leading: &mut tokio::sync::watch::Receiver<bool>, want: bool) {
    if leading.wait_for(|l| *l == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs the controller, and the watches its stores read (`driver`, from
/// [`watches`]), until `shutdown` resolves; reconciles under way finish.
/// Nothing is reconciled before every store has listed: an empty store
/// would read as "no pods, no namespace opted in, no entries placed".
///
/// The stores are kept, and the context is ready, whether or not this
/// replica leads (a warm standby); experiments are reconciled only while
/// `leading` is true. When it turns false, reconciles under way finish and
/// no new one starts; what a later term needs is read back from the
/// statuses and NodeFaults objects, so nothing of this term is kept.
pub async fn run(
    ctx: Arc<Context>,
    driver: futures::future::BoxFuture<'static, ()>,
    mut leading: tokio::sync::watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stores = Stores {
        pods: ctx.pods.clone(),
        namespaces: ctx.namespaces.clone(),
        nodefaults: ctx.nodefaults.clone(),
        nodes: ctx.nodes.clone(),
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let work = async move {
        tokio::select! {
            _ = stores.ready() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        ctx.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            tokio::select! {
                () = until_leading_is(&mut leading, true) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            ctx.metrics.leader.set(1);
            let sweeper = tokio::spawn(sweep_now_and_then(ctx.clone()));
            // Guarded: an object that does not decode is one Invalid
            // experiment, not a broken watch for all of them.
            let experiments = Api::<DeserializeGuard<Experiment>>::all(ctx.client.clone());
            let (mut stop, mut lost) = (stopped.clone(), leading.clone());
            Controller::new(experiments, Config::default())
                .graceful_shutdown_on(async move {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => {}
                        () = until_leading_is(&mut lost, false) => {}
                    }
                })
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %chain(&e), "reconcile");
                    }
                })
                .await;
            sweeper.abort();
            ctx.metrics.leader.set(0);
            ctx.runs.lock().unwrap_or_else(|e| e.into_inner()).clear();
            if *stopped.borrow() {
                return;
            }
        }
    };
    // The watches stop with the controller.
    tokio::select! {
        _ = work => {}
        _ = driver => {}
    }
}

/// Sweeps leftovers every `sweep_every` while this replica leads (the
/// task is aborted when it stops leading).
async fn sweep_now_and_then(ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(ctx.settings.sweep_every).await;
        match crate::sweep::sweep(&ctx).await {
            Ok(s) if s.orphans.is_empty() && s.deleted.is_empty() => {}
            Ok(s) => tracing::info!(
                orphans = s.orphans.len(),
                deleted = s.deleted.len(),
                "swept leftovers"
            ),
            Err(e) => tracing::warn!(error = %chain(&e), "cannot sweep leftovers"),
        }
    }
}

/// When to try a failed Experiment again: backed off per Experiment by
/// the kind of failure (`errors`), counted in the metrics.
fn error_policy(
    exp: Arc<DeserializeGuard<Experiment>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let c = crate::errors::classify(error);
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: c.kind.as_str().into(),
            reason: c.reason.clone(),
        })
        .inc();
    let failures = {
        let mut all = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = all.entry(exp.uid().unwrap_or_default()).or_insert(0);
        *entry = entry.saturating_add(1);
        *entry
    };
    // Spread by the clock's nanoseconds: enough to keep retries apart.
    let jitter = f64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    ) / 1e9;
    let wait = crate::errors::backoff(c.kind, failures, jitter);
    let key = format!("{}/{}", exp.namespace().unwrap_or_default(), exp.name_any());
    tracing::warn!(experiment = %key, kind = c.kind.as_str(), failures, retry_in = ?wait, error = %chain(error), "reconcile failed");
    Action::requeue(wait)
}

/// The field manager of the `Degraded` condition alone, so that the
/// status writes of runs leave it be.
const DEGRADED_MANAGER: &str = "faultline-controller-errors";
const DEGRADED: &str = "Degraded";

/// Shows (or, with None, clears) a permanent failure on the Experiment as
/// its `Degraded` condition. Best effort: the write may be refused too.
async fn set_degraded(
    ctx: &Context,
    exp: &Experiment,
    failure: Option<&crate::errors::Classified>,
) {
    // The status is the record: a restarted controller clears what an
    // earlier one set.
    let was = exp
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == DEGRADED));
    if failure.is_none() && was.is_none() {
        return;
    }
    let message = failure.map(|c| {
        format!(
            "{}{} (retried with backoff until it goes through)",
            c.code.map(|code| format!("{code}: ")).unwrap_or_default(),
            c.message
        )
    });
    // Said already: writing it again would only wake this Experiment up
    // again, ahead of its backoff.
    if let (Some(c), Some(w), Some(m)) = (failure, was, &message)
        && w.reason == c.reason
        && &w.message == m
    {
        return;
    }
    let conditions = match failure {
        Some(c) => serde_json::json!([{
            "type": DEGRADED,
            "status": "True",
            "reason": c.reason,
            "message": message,
            "lastTransitionTime": was
                .map_or_else(|| Time(second((ctx.clock)())), |w| w.last_transition_time.clone()),
            "observedGeneration": exp.metadata.generation,
        }]),
        // Applying none drops the one this manager owned.
        None => serde_json::json!([]),
    };
    let Some(ns) = exp.namespace() else { return };
    let api = Api::<Experiment>::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "Experiment",
        "status": {"conditions": conditions},
    });
    match api
        .patch_status(
            &exp.name_any(),
            &PatchParams::apply(DEGRADED_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(experiment = %key(exp), error = %chain(&e), "cannot write the Degraded condition");
        }
    }
}

fn key(exp: &Experiment) -> String {
    format!("{}/{}", exp.namespace().unwrap_or_default(), exp.name_any())
}

fn experiment_ref(exp: &Experiment) -> Result<ExperimentRef> {
    Ok(ExperimentRef {
        namespace: exp.namespace().ok_or(Error::Malformed("namespace"))?,
        name: exp.name_any(),
        uid: exp.uid().ok_or(Error::Malformed("uid"))?,
    })
}

pub(crate) async fn reconcile(
    guarded: Arc<DeserializeGuard<Experiment>>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let started = std::time::Instant::now();
    let exp = match &guarded.0 {
        Ok(exp) => Arc::new(exp.clone()),
        Err(invalid) => {
            let result = unreadable(invalid, &ctx).await;
            ctx.metrics.reconciles.inc();
            return result;
        }
    };
    let ns = exp.namespace().ok_or(Error::Malformed("namespace"))?;
    let api = Api::<Experiment>::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, exp.clone(), |event| async {
        match event {
            Finalize::Apply(exp) => apply(&exp, &ctx).await,
            Finalize::Cleanup(exp) => cleanup(&exp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            let uid = exp.uid().unwrap_or_default();
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
            set_degraded(&ctx, &exp, None).await;
        }
        Err(e) => {
            let c = crate::errors::classify(e);
            if c.kind == crate::errors::Kind::Permanent && exp.metadata.deletion_timestamp.is_none()
            {
                set_degraded(&ctx, &exp, Some(&c)).await;
            }
        }
    }
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

/// An Experiment stored in a shape this controller cannot decode (written
/// under an older CRD, or past its schema): whatever it had placed is
/// removed, its status says Invalid and why, and being deleted, its
/// finalizer goes. Nothing else waits for it.
async fn unreadable(invalid: &InvalidObject, ctx: &Context) -> Result<Action> {
    let meta = &invalid.metadata;
    let r = ExperimentRef {
        namespace: meta
            .namespace
            .clone()
            .ok_or(Error::Malformed("namespace"))?,
        name: meta.name.clone().ok_or(Error::Malformed("name"))?,
        uid: meta.uid.clone().ok_or(Error::Malformed("uid"))?,
    };
    if let Some(mut live) = ctx.take_run(&r.uid) {
        live.end_spans();
    }
    converge(ctx, &r, &BTreeMap::new(), &mut BTreeMap::new()).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &r.namespace,
        &ApiResource::erase::<Experiment>(&()),
    );
    if meta.deletion_timestamp.is_some() {
        let finalizers: Vec<&String> = meta
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != FINALIZER)
            .collect();
        if finalizers.len() != meta.finalizers.as_ref().map_or(0, Vec::len) {
            let patch = serde_json::json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": meta.resource_version,
            }});
            api.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(Error::Kube)?;
        }
        return Ok(Action::await_change());
    }
    let message = format!(
        "the controller cannot read this Experiment ({}); nothing of it runs — fix it or apply it again",
        invalid.error
    );
    tracing::warn!(experiment = %format!("{}/{}", r.namespace, r.name), error = %invalid.error, "unreadable experiment");
    // The whole status, as its manager: what an earlier run wrote goes.
    // Applying the same again changes nothing and wakes nobody, so this
    // settles after one write.
    let status = ExperimentStatus {
        phase: Some(Phase::Invalid),
        observed_generation: meta.generation,
        message: Some(message),
        ..ExperimentStatus::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "Experiment",
        "status": status,
    });
    api.patch_status(
        &r.name,
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(Action::await_change())
}

/// Validates an object the API server accepted: a spec that slipped past
/// the CRD (an older CRD, a field only our validation checks) is refused
/// with the message `faultline validate` would give.
fn validate(exp: &Experiment) -> Result<(), String> {
    let yaml = serde_saphyr::to_string(exp).map_err(|e| e.to_string())?;
    faultline_api::parse_one::<Experiment>(yaml.as_bytes())
        .map(|_| ())
        .map_err(|problems| {
            problems
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

/// Times in status and deadlines are whole seconds, as the API stores
/// them: a sub-second time would never compare equal to what comes back.
fn second(t: Timestamp) -> Timestamp {
    t.round(Unit::Second).unwrap_or(t)
}

async fn write_status(ctx: &Context, exp: &Experiment, status: &ExperimentStatus) -> Result<()> {
    // As this manager wrote it: `Degraded` is another manager's.
    let mut current = exp.status.clone();
    if let Some(s) = current.as_mut() {
        s.conditions.retain(|c| c.type_ != DEGRADED);
    }
    if current.as_ref() == Some(status) {
        return Ok(());
    }
    let ns = exp.namespace().ok_or(Error::Malformed("namespace"))?;
    let api = Api::<Experiment>::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "Experiment",
        "status": status,
    });
    api.patch_status(
        &exp.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// When a scheduled experiment should start its next run after `previous`
/// (exclusive), and how many start times in between passed.
fn next_run(
    exp: &Experiment,
    previous: Option<Timestamp>,
    now: Timestamp,
) -> Option<(Timestamp, u32)> {
    let schedule = exp.spec.schedule.as_ref()?;
    next_start(schedule, previous, now).map(|n| (n.at, n.missed))
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    elapsed(now, at).max(Duration::from_millis(100))
}

async fn apply(exp: &Experiment, ctx: &Context) -> Result<Action> {
    let now = (ctx.clock)();
    let r = experiment_ref(exp)?;
    let previous = exp.status.clone().unwrap_or_default();

    if let Err(message) = validate(exp) {
        let mut live = ctx.take_run(&r.uid);
        if let Some(live) = live.as_mut().filter(|l| !l.closed) {
            live.run
                .abort(elapsed(live.started_at, now), "the spec became invalid");
            live.end_spans();
            live.closed = true;
        }
        let mut written = live
            .as_mut()
            .map(|l| std::mem::take(&mut l.written))
            .unwrap_or_default();
        if let Err(e) = converge(ctx, &r, &BTreeMap::new(), &mut written).await {
            // What this run wrote is still needed to finish removing it.
            if let Some(mut live) = live {
                live.written = written;
                ctx.keep_run(&r.uid, live);
            }
            return Err(e);
        }
        if previous.phase != Some(Phase::Invalid) || previous.message.as_deref() != Some(&message) {
            ctx.event(exp, EventType::Warning, "Invalid", message.clone())
                .await;
        }
        let status = status::invalid(message, exp.metadata.generation, &previous, second(now));
        write_status(ctx, exp, &status).await?;
        return Ok(Action::await_change());
    }

    let live = match ctx.take_run(&r.uid) {
        Some(live) => live,
        None => match start_or_resume(exp, ctx, &r, &previous, now).await? {
            Ok(live) => live,
            Err(action) => return Ok(action),
        },
    };
    if live.closed {
        return ended(exp, ctx, &r, live, &previous, now).await;
    }
    step(exp, ctx, &r, live, &previous, now).await
}

/// No run in memory: resume the one the status says is going on, or start
/// one (now for an unscheduled experiment never run, at its start time for
/// a scheduled one), or make sure an ended one left nothing behind.
async fn start_or_resume(
    exp: &Experiment,
    ctx: &Context,
    r: &ExperimentRef,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Result<Result<Live, Action>> {
    let phase = previous.phase;
    let in_progress = phase.is_some_and(|p| !status::is_final(p));
    if in_progress && let Some(started) = &previous.started_at {
        tracing::info!(experiment = %key(exp), phase = ?phase, "resuming a run");
        let max = ctx.settings.ceilings;
        return Ok(Ok(Live::resume(r, exp, previous, (started.0, now), max)));
    }
    // Whatever ended before (a restart after the end, a removal that
    // failed) must have left nothing on the nodes.
    converge(ctx, r, &BTreeMap::new(), &mut BTreeMap::new()).await?;
    let runs = previous.runs.unwrap_or(0);
    if exp.spec.schedule.is_none() {
        if phase.is_none() || phase == Some(Phase::Invalid) {
            let max = ctx.settings.ceilings;
            return Ok(Ok(Live::start(r, exp, second(now), (runs + 1, 0), max)));
        }
        return Ok(Err(Action::await_change()));
    }
    if stale_abort(ctx, exp).await {
        return Ok(Err(Action::requeue(Duration::from_millis(100))));
    }
    let missed_before = previous.missed_runs.unwrap_or(0);
    match previous.next_run_at.as_ref().map(|t| t.0) {
        Some(at) if now >= at && now.duration_since(at) <= START_SLACK => Ok(Ok(Live::start(
            r,
            exp,
            second(now),
            (runs + 1, missed_before),
            ctx.settings.ceilings,
        ))),
        Some(at) if now < at => Ok(Err(Action::requeue(
            until(at, now).min(ctx.settings.max_wait),
        ))),
        stale => {
            // Misses count from the start time that passed unseen (itself
            // one); the ones during the last run were counted at its end.
            let Some((at, missed)) = next_run(exp, stale, now) else {
                return Ok(Err(Action::await_change()));
            };
            let missed = missed_before + missed + u32::from(stale.is_some());
            let status = ExperimentStatus {
                next_run_at: Some(Time(at)),
                missed_runs: (missed > 0).then_some(missed),
                ..previous.clone()
            };
            write_status(ctx, exp, &status).await?;
            Ok(Err(Action::requeue(
                until(at, now).min(ctx.settings.max_wait),
            )))
        }
    }
}

/// A run that ended stays in memory: its entries stay removed, its final
/// status stays written, and a scheduled experiment's next run starts here.
async fn ended(
    exp: &Experiment,
    ctx: &Context,
    r: &ExperimentRef,
    mut live: Live,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Result<Action> {
    if let Err(e) = converge(ctx, r, &BTreeMap::new(), &mut live.written).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    // A spec edited between runs: its schedule decides the next start.
    if exp.metadata.generation != live.generation {
        live.generation = exp.metadata.generation;
        live.next_run_at = next_run(exp, Some(live.started_at), now).map(|(at, _)| at);
    }
    let facts = facts(ctx, r, &live, live.targets, 0);
    let status = status::of_run(&live.run, &facts, live.generation, previous, second(now));
    if let Err(e) = write_status(ctx, exp, &status).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    let Some(at) = live.next_run_at else {
        // Nothing more to run: the status is the record, memory is let go.
        return Ok(Action::await_change());
    };
    if stale_abort(ctx, exp).await {
        ctx.keep_run(&r.uid, live);
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    if now < at {
        ctx.keep_run(&r.uid, live);
        return Ok(Action::requeue(until(at, now).min(ctx.settings.max_wait)));
    }
    if now.duration_since(at) <= START_SLACK {
        let next = Live::start(
            r,
            exp,
            second(now),
            (live.runs + 1, live.missed_runs),
            ctx.settings.ceilings,
        );
        return step(exp, ctx, r, next, previous, now).await;
    }
    // The start time passed unseen (the controller was busy or away).
    match next_run(exp, Some(at), now) {
        Some((next, missed)) => {
            live.missed_runs += 1 + missed;
            live.next_run_at = Some(next);
            ctx.keep_run(&r.uid, live);
            Ok(Action::requeue(Duration::from_millis(10)))
        }
        None => {
            live.next_run_at = None;
            ctx.keep_run(&r.uid, live);
            Ok(Action::await_change())
        }
    }
}

fn facts(ctx: &Context, r: &ExperimentRef, live: &Live, targets: u32, injected: u32) -> RunFacts {
    RunFacts {
        started_at: Some(live.started_at),
        finished_at: live.finished_at,
        next_run_at: live.next_run_at,
        runs: live.runs,
        missed_runs: live.missed_runs,
        traceparent: live.traceparent.clone(),
        targets,
        injected,
        failed: nodes::failed(ctx, r),
        evictions_refused: live
            .refused
            .iter()
            .map(|(f, n)| (f.clone(), u32::try_from(*n).unwrap_or(u32::MAX)))
            .collect(),
    }
}

/// Checks other than `http` read the observer.
fn needs_observer(run: &Run) -> Vec<String> {
    run.spec()
        .hypothesis
        .iter()
        .chain(&run.spec().abort)
        .filter(|c| !matches!(c.kind, CheckKind::Http(_)))
        .map(|c| c.display_name())
        .collect()
}

async fn step(
    exp: &Experiment,
    ctx: &Context,
    r: &ExperimentRef,
    mut live: Live,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Result<Action> {
    let elapsed = elapsed(live.started_at, now);
    let before = live.run.phase();
    // Shared, not copied: a step holds it while it changes the run.
    let spec = live.run.shared_spec();

    if let Some(reason) = exp.annotations().get(ABORT_ANNOTATION) {
        let reason = if reason.is_empty() {
            "aborted by the user"
        } else {
            reason
        };
        live.run.abort(elapsed, format!("aborted: {reason}"));
    }
    if exp.metadata.generation != live.generation {
        live.run.abort(
            elapsed,
            "the spec changed during the run; every fault was removed (the new spec runs when applied anew)",
        );
    }
    if before == Phase::Pending && !ctx.observer.is_configured() {
        let checks = needs_observer(&live.run);
        if !checks.is_empty() {
            live.run.abort(
                elapsed,
                format!(
                    "checks {} read the observer, and this controller has none (--observer URL); nothing was injected",
                    checks.join(", ")
                ),
            );
        }
    }
    if !live.run.is_finished()
        && let Some(why) = plan::protected_refusal(&spec, &r.namespace, |ns| {
            ctx.settings.protected_namespaces.iter().any(|p| p == ns)
                || ctx
                    .namespaces
                    .get(&reflector::ObjectRef::new(ns))
                    .is_some_and(|n| plan::labelled_protected(&n))
        })
    {
        live.run.abort(elapsed, why);
    }
    if !live.run.is_finished()
        && let Some(why) = plan::opt_in_refusal(&spec, &r.namespace, |ns| {
            ctx.namespaces
                .get(&reflector::ObjectRef::new(ns))
                .is_some_and(|n| plan::opted_in(&n))
        })
    {
        live.run.abort(elapsed, why);
    }

    if live
        .last_check
        .is_none_or(|t| elapsed.saturating_sub(t) >= ctx.settings.check_every)
    {
        live.last_check = Some(elapsed);
        for c in live.run.due(elapsed) {
            let check = if c.abort {
                &spec.abort[c.index]
            } else {
                &spec.hypothesis[c.index]
            };
            // Under faults, no further back than when they were in place.
            let kind = match live.run.window_for(c, elapsed) {
                Some(w) => check.kind.with_window(w),
                None => check.kind.clone(),
            };
            match ctx.observer.observe(&kind, &r.namespace).await {
                Ok(observed) => {
                    // A service still unknown after the grace is most likely
                    // misnamed: said once, by name, while the run goes on.
                    if let faultline_engine::Observed::Unseen(why) = &observed
                        && elapsed >= ctx.settings.unseen_grace
                        && live.told_unseen.insert(check.display_name())
                    {
                        ctx.event(
                            exp,
                            EventType::Warning,
                            "UnseenService",
                            format!("check {}: {why}", check.display_name()),
                        )
                        .await;
                    }
                    live.run.observe(elapsed, c, &observed);
                }
                // Not judged this time: an unreadable observer is no
                // evidence; an abort check left so past its grace aborts.
                Err(e) => {
                    tracing::warn!(experiment = %key(exp), check = %check.display_name(), error = %chain(&e), "check not evaluated");
                    live.run.unreadable(elapsed, c, &chain(&e));
                }
            }
        }
        let waited_too_long = match live.run.phase() {
            Phase::Pending => elapsed > CHECK_PATIENCE,
            Phase::Recovering => elapsed > spec.duration.as_std() + CHECK_PATIENCE,
            _ => false,
        };
        if waited_too_long {
            live.run
                .give_up_due(elapsed, "its figures could not be read for 60 s");
        }
    }

    let work = std::time::Instant::now();
    let namespaces = plan::target_namespaces(&spec, &r.namespace);
    let pods = ctx.pods.in_namespaces(namespaces.iter().copied());
    let candidates = plan::candidates(&spec, &r.namespace, pods.iter().map(|p| &**p));
    let index: HashMap<&str, &PodInfo> = pods.iter().map(|p| (p.uid.as_str(), &**p)).collect();
    // Before stepping, so a run that breaks here loses its faults this turn;
    // after it too, so instances a resumed run takes up again count as
    // confirmed at once when their agents already say so.
    let reports = nodes::reports(ctx, r, &live.written);
    confirm(r, &mut live, &index, &reports, elapsed);
    record_effects(r, &mut live, &reports);
    break_overdue(ctx, r, &mut live, &index, &reports, elapsed);

    let mut actions = live.run.step(elapsed, &candidates);
    confirm(r, &mut live, &index, &reports, elapsed);
    renew_lease(&mut live, ctx.settings.fault_lease, now);
    let mut desired = desired_entries(ctx, r, &mut live, &index);
    if let Some(why) = nodes::refused(&desired) {
        // Refused before anything of this step is done: no pod deleted either.
        live.run.abort(elapsed, why);
        live.run.step(elapsed, &candidates);
        actions.clear();
        desired = desired_entries(ctx, r, &mut live, &index);
    }
    let planning = work.elapsed();
    // Durable intent first: the run's start is in the status before the
    // first pod is taken or entry written, so a controller that dies in
    // between resumes this run instead of starting another.
    let recorded = previous.started_at.as_ref().map(|t| t.0) == Some(live.started_at);
    if !recorded && (!actions.is_empty() || desired.values().any(|e| !e.is_empty())) {
        let facts = facts(ctx, r, &live, live.targets, 0);
        let starting = status::of_run(&live.run, &facts, live.generation, previous, second(now));
        if let Err(e) = write_status(ctx, exp, &starting).await {
            ctx.keep_run(&r.uid, live);
            return Err(e);
        }
    }
    for removal in delete_pods(ctx, exp, &live.run, &actions, &index).await {
        match removal {
            Removal::Done { fault } => *live.deleted.entry(fault).or_default() += 1,
            Removal::Refused { fault, pod, why } => {
                *live.refused.entry(fault).or_default() += 1;
                live.refused_pods.insert(pod, why);
            }
        }
    }
    // Nothing of the status is written before the nodes hold what the run
    // wants: a status that says "ended" means the faults are gone.
    if let Err(e) = converge(ctx, r, &desired, &mut live.written).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }

    // Confirmed by their agents (or, for pod deletions, done): not merely written.
    let injected = live.run.confirmed().len() as u32;
    // Pods that faults act on (a target only named as peers is not one).
    let targets = {
        let plan = live.run.plan();
        let all: BTreeSet<&String> = spec
            .faults
            .iter()
            .flat_map(|f| plan.get(&f.target).into_iter().flatten())
            .collect();
        all.len() as u32
    };
    let finished = live.run.is_finished();
    // Once per run (a failed status write brings the run back here).
    if finished && live.finished_at.is_none() {
        live.finished_at = Some(second(now));
        if let Some((at, missed)) = next_run(exp, Some(live.started_at), now) {
            live.next_run_at = Some(at);
            live.missed_runs += missed;
        }
    }
    live.targets = targets;
    let facts = facts(ctx, r, &live, targets, injected);
    let new_status = status::of_run(&live.run, &facts, live.generation, previous, second(now));
    if let Err(e) = write_status(ctx, exp, &new_status).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }

    // Events on what changed, each once per run.
    let after = live.run.phase();
    if !live.told_started && after != Phase::Pending && !live.run.plan().is_empty() {
        live.told_started = true;
        ctx.event(
            exp,
            EventType::Normal,
            "Started",
            format!("run {} selected {targets} pods", live.runs),
        )
        .await;
    }
    if injected > 0 && !live.told_injected {
        live.told_injected = true;
        let nodes = desired.len();
        ctx.event(
            exp,
            EventType::Normal,
            "Injected",
            format!("{injected} faults placed on {nodes} nodes"),
        )
        .await;
    }
    if !live.told_aborted && after == Phase::Recovered {
        live.told_aborted = true;
        let why = live.run.message().unwrap_or("aborted").to_owned();
        ctx.event(exp, EventType::Warning, "Aborted", why).await;
    }

    if !finished {
        ctx.keep_run(&r.uid, live);
        // Planning a very large selection (about 0.3 s at 150 000 pods)
        // takes at most a third of a core, whatever the tick.
        return Ok(Action::requeue(
            ctx.settings
                .tick
                .max((planning * 3).min(Duration::from_secs(10))),
        ));
    }
    let verdict = live.run.verdict().unwrap_or(Verdict::Aborted);
    let type_ = if verdict == Verdict::Passed {
        EventType::Normal
    } else {
        EventType::Warning
    };
    let mut note = format!("verdict {verdict}");
    if let Some(m) = live.run.message() {
        note.push_str(&format!(": {m}"));
    }
    ctx.event(exp, type_, verdict.as_str(), note).await;
    live.end_spans();
    live.closed = true;
    ctx.metrics.runs_finished.inc();
    if exp.annotations().contains_key(ABORT_ANNOTATION) {
        clear_abort(ctx, exp).await;
    }
    let action = match live.next_run_at {
        Some(at) => Action::requeue(until(at, now).min(ctx.settings.max_wait)),
        None => Action::await_change(),
    };
    ctx.keep_run(&r.uid, live);
    Ok(action)
}

/// Each fault's effect: the sum over its entries of the largest count
/// each entry's agent reported, or the pods this controller deleted. A
/// fault no agent counted anything for has none (not zero).
fn record_effects(r: &ExperimentRef, live: &mut Live, reports: &nodes::Reports) {
    for (id, n) in &reports.effects {
        let e = live.entry_effects.entry(id.clone()).or_default();
        *e = (*e).max(*n);
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, n) in &live.entry_effects {
        if let Some(f) = r.fault_of(id) {
            let t = totals.entry(f).or_default();
            *t = t.saturating_add(*n);
        }
    }
    let faults = live.run.spec().faults.clone();
    for f in &faults {
        let deletes = matches!(&f.action, FaultAction::Kill(k) if k.method.deletes_pod());
        let count = if deletes {
            Some(live.deleted.get(&f.name).copied().unwrap_or(0))
        } else {
            totals.get(f.name.as_str()).copied()
        };
        if let Some(count) = count {
            live.run.record_effect(
                &f.name,
                faultline_engine::Effect {
                    count,
                    what: f.action.effect_unit().to_owned(),
                },
            );
        }
    }
}

/// Takes the agents' reports as confirmation of the run's fault instances
/// (a pod deletion is confirmed by the pod being gone).
fn confirm(
    r: &ExperimentRef,
    live: &mut Live,
    index: &HashMap<&str, &PodInfo>,
    reports: &nodes::Reports,
    elapsed: Duration,
) {
    let deletes: BTreeSet<String> = live
        .run
        .spec()
        .faults
        .iter()
        .filter(|f| matches!(&f.action, FaultAction::Kill(k) if k.method.deletes_pod()))
        .map(|f| f.name.clone())
        .collect();
    live.run.confirm(elapsed, |i| {
        if deletes.contains(&i.fault) {
            !index.contains_key(i.target.as_str())
        } else {
            reports.applied.contains(&r.entry_id(&i.fault, &i.target))
        }
    });
}

/// Ends the run broken when a fault instance waited past its
/// `confirmTimeout`, naming the nodes and what kept each.
fn break_overdue(
    ctx: &Context,
    r: &ExperimentRef,
    live: &mut Live,
    index: &HashMap<&str, &PodInfo>,
    reports: &nodes::Reports,
    elapsed: Duration,
) {
    let timeout = live
        .run
        .spec()
        .confirm_timeout
        .unwrap_or_else(faultline_api::default_confirm_timeout);
    let overdue: Vec<_> = live.run.overdue(elapsed).into_iter().cloned().collect();
    if overdue.is_empty() {
        return;
    }
    let cached = nodes::in_store(ctx);
    // Per node, what kept its faults from being confirmed.
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &overdue {
        let id = r.entry_id(&i.fault, &i.target);
        let (node, why) = match (index.get(i.target.as_str()), reports.failed.get(&id)) {
            (Some(pod), _) if live.refused_pods.contains_key(&i.target) => {
                (pod.node.clone(), live.refused_pods[&i.target].clone())
            }
            (Some(pod), Some(reason)) => (pod.node.clone(), format!("failed: {reason}")),
            (Some(pod), None)
                if cached
                    .get(&pod.node)
                    .is_some_and(|nf| nf.spec.faults.iter().any(|e| e.id == id)) =>
            {
                (pod.node.clone(), "no answer from its agent".to_owned())
            }
            (Some(pod), None) => (
                pod.node.clone(),
                format!("nothing to apply for {}", i.fault),
            ),
            (None, _) => ("(unknown)".to_owned(), format!("pod {} is gone", i.target)),
        };
        nodes.entry(node).or_default().insert(why);
    }
    let list: Vec<String> = nodes
        .iter()
        .map(|(node, why)| {
            format!(
                "node {node} ({})",
                why.iter().cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    let reason = format!(
        "faults not confirmed within {timeout}: {}; every fault was removed",
        list.join(", ")
    );
    tracing::warn!(experiment = %format!("{}/{}", r.namespace, r.name), %reason, "run broken");
    live.run.broke(elapsed, reason);
}

/// The abort annotation stops one run; once it has ended, it goes, so a
/// scheduled experiment's next run (or a fixed spec) is not aborted too.
/// Between runs an abort annotation has nothing to stop, and left there it
/// would stop the next run the moment it starts: it is removed, with an
/// Event. True when there was one (the caller looks again once the
/// removal is seen).
async fn stale_abort(ctx: &Context, exp: &Experiment) -> bool {
    if !exp.annotations().contains_key(ABORT_ANNOTATION) {
        return false;
    }
    clear_abort(ctx, exp).await;
    ctx.event(
        exp,
        EventType::Normal,
        "AbortIgnored",
        "no run was in progress to abort; the annotation is removed and the next run starts as scheduled".into(),
    )
    .await;
    true
}

async fn clear_abort(ctx: &Context, exp: &Experiment) {
    let Some(ns) = exp.namespace() else { return };
    let api = Api::<Experiment>::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {ABORT_ANNOTATION: null}}});
    if let Err(e) = api
        .patch(
            &exp.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(experiment = %key(exp), error = %chain(&e), "cannot remove the abort annotation");
    }
}

/// Moves the run's lease on once half of it has passed: entries are
/// rewritten (a new `expiresAt`) every half lease, not every tick.
fn renew_lease(live: &mut Live, lease: Duration, now: Timestamp) {
    let lease = SignedDuration::try_from(lease).unwrap_or(SignedDuration::from_secs(60));
    let due = live
        .lease_until
        .is_none_or(|until| until.duration_since(now) < lease / 2);
    if due {
        live.lease_until = now.checked_add(lease).ok().map(|t| {
            t.round(
                jiff::TimestampRound::new()
                    .smallest(Unit::Second)
                    .mode(jiff::RoundMode::Ceil),
            )
            .unwrap_or(t)
        });
    }
}

/// The entries the run wants now on each node, each fault's carrying its
/// span's traceparent (a resumed run keeps the one its entries carry, so a
/// restart rewrites nothing).
fn desired_entries(
    ctx: &Context,
    r: &ExperimentRef,
    live: &mut Live,
    index: &HashMap<&str, &PodInfo>,
) -> BTreeMap<String, Vec<NodeFault>> {
    let active: BTreeSet<String> = live
        .run
        .resolved()
        .iter()
        .map(|x| x.fault.name.clone())
        .collect();
    let cached = nodes::in_store(ctx);
    live.fault_spans(r, &active, &|fault| {
        let prefix = format!("{}{fault}/", r.id_prefix());
        cached
            .values()
            .flat_map(|nf| nf.spec.faults.iter())
            .find(|f| f.id.starts_with(&prefix))
            .and_then(|f| f.traceparent.clone())
    });
    let resolved = live.run.resolved();
    let mut desired: BTreeMap<String, Vec<NodeFault>> = BTreeMap::new();
    for fault in &active {
        let of_fault: Vec<_> = resolved
            .iter()
            .filter(|x| &x.fault.name == fault)
            .copied()
            .collect();
        let tp = live.fault_traceparent(fault);
        for (node, entries) in plan::node_entries(
            r,
            &of_fault,
            live.run.plan(),
            index,
            (live.started_at, live.lease_until),
            tp,
        ) {
            desired.entry(node).or_default().extend(entries);
        }
    }
    for entries in desired.values_mut() {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
    }
    desired
}

/// The experiment is being deleted: remove every entry it placed before
/// the finalizer lets it go.
async fn cleanup(exp: &Experiment, ctx: &Context) -> Result<Action> {
    let r = experiment_ref(exp)?;
    let (mut written, live) = match ctx.take_run(&r.uid) {
        Some(mut live) => {
            if !live.closed {
                live.run.abort(
                    elapsed(live.started_at, (ctx.clock)()),
                    "the experiment was deleted",
                );
                live.end_spans();
            }
            (std::mem::take(&mut live.written), Some(live))
        }
        None => (BTreeMap::new(), None),
    };
    let removed: usize = nodes::in_store(ctx)
        .values()
        .map(|nf| nodes::ours(nf, &r).count())
        .sum();
    if let Err(e) = converge(ctx, &r, &BTreeMap::new(), &mut written).await {
        if let Some(mut live) = live {
            live.written = written;
            live.closed = true;
            ctx.keep_run(&r.uid, live);
        }
        return Err(e);
    }
    if removed > 0 {
        ctx.event(
            exp,
            EventType::Normal,
            "Removed",
            format!("{removed} faults removed before deletion"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Evicts a pod through the Eviction API, with its uid as precondition.
/// Sent by hand: kube's `Api::evict` writes the body's `deleteOptions` as
/// `delete_options`, which the API server drops, and with it the
/// precondition that keeps a successor with the same name safe.
async fn evict(ctx: &Context, pod: &PodInfo) -> Result<(), kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
        "deleteOptions": {"preconditions": {"uid": pod.uid}},
    });
    let request = hyper::Request::post(format!(
        "/api/v1/namespaces/{}/pods/{}/eviction",
        pod.namespace, pod.name
    ))
    .header(hyper::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
    .map_err(kube::Error::HttpError)?;
    ctx.client
        .request::<serde_json::Value>(request)
        .await
        .map(|_| ())
}

/// How long an eviction may be retried (429) before it counts as refused.
const EVICTION_PATIENCE: Duration = Duration::from_secs(3);

/// What became of one pod a kill fault was to take away.
#[derive(Debug)]
pub(crate) enum Removal {
    Done {
        fault: String,
    },
    /// The API refused the eviction (a PodDisruptionBudget), with why.
    Refused {
        fault: String,
        pod: String,
        why: String,
    },
}

/// How many pods are taken away at once: a PodDisruptionBudget that holds
/// each for `EVICTION_PATIENCE` must not hold the step past a lease.
const REMOVALS_AT_ONCE: usize = 16;

/// Takes away the pods of due kill faults with `method: delete` (through
/// the Eviction API, so PodDisruptionBudgets hold) or `force-delete` (a
/// plain delete), several at once; what became of each.
async fn delete_pods(
    ctx: &Context,
    exp: &Experiment,
    run: &Run,
    actions: &[faultline_engine::Action],
    pods: &HashMap<&str, &PodInfo>,
) -> Vec<Removal> {
    use futures::StreamExt as _;
    let due: Vec<(&str, KillMethod, &PodInfo)> = actions
        .iter()
        .filter_map(|action| {
            let faultline_engine::Action::Signal(instance, _) = action else {
                return None;
            };
            let method = run.spec().faults.iter().find_map(|f| match &f.action {
                FaultAction::Kill(k) if f.name == instance.fault && k.method.deletes_pod() => {
                    Some(k.method)
                }
                _ => None,
            })?;
            let pod = *pods.get(instance.target.as_str())?;
            Some((instance.fault.as_str(), method, pod))
        })
        .collect();
    // Built first: a closure inside the stream would not be Send here.
    let removals: Vec<_> = due
        .into_iter()
        .map(|(fault, method, pod)| remove_pod(ctx, exp, fault, method, pod))
        .collect();
    let done: Vec<Option<Removal>> = futures::stream::iter(removals)
        .buffer_unordered(REMOVALS_AT_ONCE)
        .collect()
        .await;
    done.into_iter().flatten().collect()
}

/// Evicts or deletes one pod for `fault`, with its Event; None when the
/// API failed otherwise (logged; the next step tries again).
async fn remove_pod(
    ctx: &Context,
    exp: &Experiment,
    fault: &str,
    method: KillMethod,
    pod: &PodInfo,
) -> Option<Removal> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &pod.namespace);
    // The uid precondition: never take a successor that took the name.
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = format!("{}/{}", pod.namespace, pod.name);
    // 429 is a PodDisruptionBudget's answer: no disruption allowed now.
    let answer = |r: Result<(), kube::Error>| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 429 => Err(Some(e.message.clone())),
        Err(e) => {
            tracing::warn!(experiment = %key(exp), pod = %name, error = %chain(&e), "cannot take a pod away");
            Err(None)
        }
    };
    let (result, verb) = if method == KillMethod::ForceDelete {
        (
            answer(api.delete(&pod.name, &params).await.map(|_| ())),
            "deleted",
        )
    } else {
        // kube's client retries a 429 for minutes, out of sight; for an
        // eviction it is mostly the budget's answer, taken after a few
        // tries — or a server too slow to answer, which refuses as surely.
        let result = match tokio::time::timeout(EVICTION_PATIENCE, evict(ctx, pod)).await {
            Ok(r) => answer(r.map(|_| ())),
            Err(_) => Err(Some(format!(
                "not evicted within {} s: the API kept answering 429 Too Many Requests (a PodDisruptionBudget allows no disruption now) or did not answer",
                EVICTION_PATIENCE.as_secs()
            ))),
        };
        (result, "evicted")
    };
    match result {
        Ok(()) => {
            tracing::info!(experiment = %key(exp), pod = %name, fault, "{verb} a pod");
            let reason = if verb == "evicted" {
                "PodEvicted"
            } else {
                "PodDeleted"
            };
            ctx.event(
                exp,
                EventType::Normal,
                reason,
                format!("{fault} {verb} {name}"),
            )
            .await;
            Some(Removal::Done {
                fault: fault.to_owned(),
            })
        }
        Err(Some(message)) => {
            let why = format!("eviction of {name} refused: {message}");
            tracing::warn!(experiment = %key(exp), pod = %name, fault, "{why}");
            ctx.event(
                exp,
                EventType::Warning,
                "EvictionRefused",
                format!("{fault}: {why}"),
            )
            .await;
            Some(Removal::Refused {
                fault: fault.to_owned(),
                pod: pod.uid.clone(),
                why,
            })
        }
        Err(None) => None,
    }
}
