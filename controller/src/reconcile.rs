//! The Kubernetes side: one reconcile per Experiment, level-triggered.
//!
//! Each turn reads the experiment, the pods and namespaces and the
//! NodeFaults objects (reflector stores, one cluster-wide watch each),
//! steps the engine's run to now, and writes the difference: this
//! experiment's entries on each node by server-side apply under its own
//! field manager, then its status. Nothing is remembered that cannot be
//! read back: a restarted controller resumes a run from its status and the
//! NodeFaults objects, and writes only what differs.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use faultline_api::{Experiment, ExperimentStatus, KillMethod, Phase};
use faultline_engine::next_start;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
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
    decide::{self, Next, Removal, Takeaway, View, second, until},
    live::{Live, elapsed},
    nodes::{self, converge},
    plan::{self, ExperimentRef, PodInfo},
    status,
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
pub(crate) use crate::errors::{Error, Result, chain};

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
            ctx.let_go.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
    // What its run wrote counts too: the cache may not show it yet.
    let mut live = ctx.take_run(&r.uid);
    let mut written = match live.as_mut() {
        Some(live) => {
            live.end_spans();
            live.closed = true;
            std::mem::take(&mut live.written)
        }
        None => BTreeMap::new(),
    };
    if let Err(e) = nodes::remove_all(ctx, &r, &mut written, (ctx.clock)()).await {
        // Kept for the retry, with what it wrote.
        if let Some(mut live) = live {
            live.written = written;
            ctx.keep_run(&r.uid, live);
        }
        return Err(e);
    }
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
        if let Err(e) = nodes::remove_all(ctx, &r, &mut written, now).await {
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
    // Woken by its own status write (or another change of no matter to
    // the run) before the tick: a step at 150 000 pods is not free.
    if let Some(wait) = live.not_yet(&seen(exp)) {
        ctx.keep_run(&r.uid, live);
        return Ok(Action::requeue(wait));
    }
    step(exp, ctx, &r, live, &previous, now).await
}

fn seen(exp: &Experiment) -> crate::live::Seen {
    (
        exp.metadata.generation,
        exp.annotations().get(ABORT_ANNOTATION).cloned(),
    )
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
    let let_go = ctx.let_go_of(&r.uid, !in_progress);
    if in_progress && let Some(started) = &previous.started_at {
        if let_go == Some(started.0) {
            // Ended here, but the cache has not shown it yet.
            return Ok(Err(Action::requeue(Duration::from_millis(100))));
        }
        tracing::info!(experiment = %key(exp), phase = ?phase, "resuming a run");
        let max = ctx.settings.ceilings;
        return Ok(Ok(Live::resume(r, exp, previous, (started.0, now), max)));
    }
    // Whatever ended before (a restart after the end, a removal that
    // failed) must have left nothing on the nodes.
    nodes::remove_all(ctx, r, &mut BTreeMap::new(), now).await?;
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
    // A spec edited between runs: its schedule decides the next start.
    if exp.metadata.generation != previous.observed_generation && phase != Some(Phase::Invalid) {
        let next = next_run(exp, previous.started_at.as_ref().map(|t| t.0), now);
        let status = ExperimentStatus {
            next_run_at: next.map(|(at, _)| Time(at)),
            observed_generation: exp.metadata.generation,
            ..previous.clone()
        };
        write_status(ctx, exp, &status).await?;
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

/// A run that ended: its entries removed and its final status written,
/// it is let go of (the status is the record, and `start_or_resume` starts
/// the next run from it) — unless the next start is due now.
async fn ended(
    exp: &Experiment,
    ctx: &Context,
    r: &ExperimentRef,
    mut live: Live,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Result<Action> {
    if let Err(e) = nodes::remove_all(ctx, r, &mut live.written, now).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    // A spec edited between runs: its schedule decides the next start.
    if exp.metadata.generation != live.generation {
        live.generation = exp.metadata.generation;
        live.next_run_at = next_run(exp, Some(live.started_at), now).map(|(at, _)| at);
    }
    let facts = decide::facts(
        &live,
        live.targets,
        0,
        nodes::failed(&nodes::in_store(ctx), r),
    );
    let status = status::of_run(&live.run, &facts, live.generation, previous, second(now));
    if let Err(e) = write_status(ctx, exp, &status).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    let Some(at) = live.next_run_at else {
        // Nothing more to run.
        ctx.let_go(&r.uid, live.started_at);
        return Ok(Action::await_change());
    };
    if stale_abort(ctx, exp).await {
        ctx.keep_run(&r.uid, live);
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    if now < at {
        // A finished run of 150 000 pods is no small thing to hold for
        // hours; its status holds the next start.
        ctx.let_go(&r.uid, live.started_at);
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

/// One step of a run that goes on: read, decide (`decide`), act.
async fn step(
    exp: &Experiment,
    ctx: &Context,
    r: &ExperimentRef,
    mut live: Live,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Result<Action> {
    let spec = live.run.shared_spec();
    let protected = |ns: &str| {
        ctx.settings.protected_namespaces.iter().any(|p| p == ns)
            || ctx
                .namespaces
                .get(&reflector::ObjectRef::new(ns))
                .is_some_and(|n| plan::labelled_protected(&n))
    };
    let opted_in = |ns: &str| {
        ctx.namespaces
            .get(&reflector::ObjectRef::new(ns))
            .is_some_and(|n| plan::opted_in(&n))
    };
    let (pods_generation, pods) = ctx
        .pods
        .in_namespaces_at(plan::target_namespaces(&spec, &r.namespace));
    let cached = nodes::in_store(ctx);
    let reports = nodes::reports(&cached, r, &live.written);
    let view = View {
        now,
        instant: std::time::Instant::now(),
        abort: exp.annotations().get(ABORT_ANNOTATION).map(String::as_str),
        generation: exp.metadata.generation,
        settings: &ctx.settings,
        observer_configured: ctx.observer.is_configured(),
        protected: &protected,
        opted_in: &opted_in,
        pods: &pods,
        pods_generation: Some(pods_generation),
        cached: &cached,
        reports: &reports,
        failed: nodes::failed(&cached, r),
    };

    decide::admit(&mut live, r, &view);
    let mut readings = Vec::new();
    for (c, kind) in decide::due_checks(&mut live, &view) {
        let reading = ctx.observer.observe(&kind, &r.namespace).await.map_err(|e| {
            tracing::warn!(experiment = %key(exp), check = ?c, error = %chain(&e), "check not evaluated");
            chain(&e)
        });
        readings.push((c, reading));
    }
    let notes = decide::judge(&mut live, &view, readings);
    tell(ctx, exp, notes).await;
    let intent = decide::decide(&mut live, r, &view, previous);
    ctx.metrics
        .decide_seconds
        .observe(intent.planning.as_secs_f64());

    if let Some(starting) = &intent.record_start
        && let Err(e) = write_status(ctx, exp, starting).await
    {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    let removals = take_away(ctx, exp, &intent.takeaways).await;
    decide::count_removals(&mut live, removals);
    // While the run goes on, a step writes for a bounded time and the rest
    // waits for the next one, which comes at once; once it has ended, every
    // entry goes now.
    // At least as long as deciding took: at 150 000 pods that is about a
    // second, and writes would otherwise get a third of the time.
    let until = (!live.run.is_finished())
        .then(|| std::time::Instant::now() + ctx.settings.writing_per_step.max(intent.planning));
    // Nothing of the status is written before the nodes hold what the run
    // wants: a status that says "ended" means the faults are gone.
    let (left, written) = converge(
        ctx,
        r,
        &intent.writes,
        &mut live.written,
        now,
        until,
        Some(&intent.inputs),
    )
    .await;
    for node in intent.writes.keys().filter(|n| !left.contains(*n)) {
        live.write_tried.entry(node.clone()).or_insert(now);
    }
    if let Err(e) = written {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    live.unwritten
        .retain(|n| left.contains(n) || !intent.writes.contains_key(n));
    let unwritten = &live.unwritten;
    live.write_tried.retain(|n, _| unwritten.contains(n));
    let behind = intent.more || !left.is_empty();
    if behind && live.run.is_finished() {
        // Never so (an ended run's writes are neither bounded nor cut
        // short), but if it were, the end must wait for every removal.
        ctx.keep_run(&r.uid, live);
        return Ok(Action::requeue(Duration::ZERO));
    }
    let outcome = decide::conclude(&mut live, &view, previous, |started| {
        next_run(exp, Some(started), now)
    });
    if let Err(e) = write_status(ctx, exp, &outcome.status).await {
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }
    let notes = decide::announce(&mut live, intent.holding);
    tell(ctx, exp, notes).await;
    if outcome.finished {
        live.end_spans();
        live.closed = true;
        ctx.metrics.runs_finished.inc();
        if exp.annotations().contains_key(ABORT_ANNOTATION) {
            clear_abort(ctx, exp).await;
        }
    }
    // Cut short (by time or by the nodes a step builds): go on at once. A
    // node that differs again after its write waits for the tick.
    let next = if behind {
        Next::After(Duration::ZERO)
    } else {
        decide::next_look(&live, &ctx.settings, intent.planning, now)
    };
    live.next_step = match next {
        Next::After(wait) => Some((std::time::Instant::now() + wait, seen(exp))),
        Next::OnChange => None,
    };
    ctx.keep_run(&r.uid, live);
    Ok(match next {
        Next::After(wait) => Action::requeue(wait),
        Next::OnChange => Action::await_change(),
    })
}

/// Records the Events, in order.
async fn tell(ctx: &Context, exp: &Experiment, notes: Vec<decide::Note>) {
    for n in notes {
        ctx.event(exp, n.type_, n.reason, n.note).await;
    }
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

/// The experiment is being deleted: remove every entry it placed before
/// the finalizer lets it go.
async fn cleanup(exp: &Experiment, ctx: &Context) -> Result<Action> {
    let r = experiment_ref(exp)?;
    let now = (ctx.clock)();
    let (mut written, live) = match ctx.take_run(&r.uid) {
        Some(mut live) => {
            if !live.closed {
                live.run
                    .abort(elapsed(live.started_at, now), "the experiment was deleted");
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
    if let Err(e) = nodes::remove_all(ctx, &r, &mut written, now).await {
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
    ctx.let_go_of(&r.uid, true);
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
        "metadata": {"name": pod.name, "namespace": &*pod.namespace},
        "deleteOptions": {"preconditions": {"uid": &*pod.uid}},
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

/// How many pods are taken away at once: a PodDisruptionBudget that holds
/// each for `EVICTION_PATIENCE` must not hold the step past a lease.
const REMOVALS_AT_ONCE: usize = 16;

/// Takes away pods (`method: delete` through the Eviction API, so
/// PodDisruptionBudgets hold; `force-delete` by a plain delete), several
/// at once; what became of each.
async fn take_away(ctx: &Context, exp: &Experiment, takeaways: &[Takeaway]) -> Vec<Removal> {
    use futures::StreamExt as _;
    // Built first: a closure inside the stream would not be Send here.
    let removals: Vec<_> = takeaways
        .iter()
        .map(|t| remove_pod(ctx, exp, &t.fault, t.method, &t.pod))
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
            uid: Some(pod.uid.to_string()),
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
                pod: pod.uid.to_string(),
                why,
            })
        }
        Err(None) => None,
    }
}
