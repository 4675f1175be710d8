//! The Kubernetes side: one reconcile per Experiment, level-triggered.
//!
//! Each turn reads the experiment, the pods and namespaces (reflector
//! stores, one cluster-wide watch each) and the NodeFaults objects, steps
//! the engine's run to now, and writes the difference: this experiment's
//! entries on each node by server-side apply under its own field manager,
//! then its status. Nothing here is remembered that cannot be read back:
//! a restarted controller resumes a run from its status and the NodeFaults
//! objects, and writes only what differs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use faultline_api::{
    Experiment, ExperimentStatus, NodeFault, NodeFaults, NodeFaultsSpec,
    experiment::{Phase, Verdict},
    nodefaults::FaultState,
};
use faultline_engine::{Run, next_start};
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        finalizer::{Event as Finalize, finalizer},
        reflector::{self, Store},
        watcher::{self, Config},
    },
};
use opentelemetry::{
    Context as OtelContext, KeyValue, global,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer},
};

use crate::{
    metrics::Metrics,
    observe::ObserverClient,
    plan::{self, ExperimentRef, PodInfo},
    status::{self, RunFacts},
};

/// Held on every Experiment until its faults are gone.
pub const FINALIZER: &str = "faultline.dev/cleanup";
/// Set (to a reason) to stop a run at once: `faultline abort` writes it.
pub const ABORT_ANNOTATION: &str = "faultline.dev/abort";
/// The field manager of the status the controller writes.
pub const STATUS_MANAGER: &str = "faultline-controller";
/// A scheduled start this late is still taken; later ones count as missed.
const START_SLACK: SignedDuration = SignedDuration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API call failed")]
    Kube(#[source] kube::Error),
    #[error("the experiment has no {0}")]
    Malformed(&'static str),
    #[error("the finalizer could not run")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its causes, for one log line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Some errors (kube's among them) already print their cause.
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The time, as the controller reads it (tests move it by hand).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a running experiment is stepped.
    pub tick: Duration,
    /// How often due checks are evaluated.
    pub check_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_secs(1),
            check_every: Duration::from_secs(2),
        }
    }
}

/// A run this controller is driving.
struct Live {
    run: Run,
    started_at: Timestamp,
    runs: u32,
    missed_runs: u32,
    last_check: Option<Duration>,
    span: global::BoxedSpan,
    traceparent: Option<String>,
    /// One span per fault while it has entries, with its traceparent.
    fault_spans: BTreeMap<String, (global::BoxedSpan, Option<String>)>,
    /// What was last written per node (so unchanged nodes cost nothing).
    written: BTreeMap<String, Vec<NodeFault>>,
    told_injected: bool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("phase", &self.run.phase())
            .field("started_at", &self.started_at)
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

/// Everything a reconcile reads besides the experiment.
pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub nodefaults: Store<NodeFaults>,
    pub observer: ObserverClient,
    pub recorder: Recorder,
    pub clock: Clock,
    pub settings: Settings,
    pub metrics: Metrics,
    runs: Mutex<HashMap<String, Live>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Keeps what a pod watch stores to what planning reads: 150 000 pods'
/// container specs and managed fields would be most of the memory.
fn slim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            ..Default::default()
        };
    }
}

/// The stores the controller reads from.
#[derive(Clone)]
pub struct Stores {
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub nodefaults: Store<NodeFaults>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Waits until every store has listed: before that a plan sees no pods.
    pub async fn ready(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.nodefaults.wait_until_ready().await;
    }
}

/// The watches the controller reads from, on `client`: the stores, and the
/// future that drives the three watches (run it until shutdown).
pub fn watches(client: &Client) -> (Stores, futures::future::BoxFuture<'static, ()>) {
    let (pods, pod_writer) = reflector::store();
    let (namespaces, ns_writer) = reflector::store();
    let (nodefaults, nf_writer) = reflector::store();
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(pod_writer)
        .touched_objects();
    let ns_stream = watcher(Api::<Namespace>::all(client.clone()), Config::default())
        .default_backoff()
        .reflect(ns_writer)
        .touched_objects();
    let nf_stream = watcher(Api::<NodeFaults>::all(client.clone()), Config::default())
        .default_backoff()
        .reflect(nf_writer)
        .touched_objects();
    let driver = async move {
        futures::join!(
            pod_stream.for_each(|_| async {}),
            ns_stream.for_each(|_| async {}),
            nf_stream.for_each(|_| async {}),
        );
    };
    (
        Stores {
            pods,
            namespaces,
            nodefaults,
        },
        Box::pin(driver),
    )
}

fn watcher<K>(
    api: Api<K>,
    config: Config,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        observer: ObserverClient,
        clock: Clock,
        settings: Settings,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "faultline-controller".into(),
                instance,
            },
        );
        Context {
            client,
            pods: stores.pods,
            namespaces: stores.namespaces,
            nodefaults: stores.nodefaults,
            observer,
            recorder,
            clock,
            settings,
            metrics,
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn take_run(&self, uid: &str) -> Option<Live> {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid)
    }

    fn keep_run(&self, uid: &str, live: Live) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), live);
    }

    /// Runs being driven now.
    pub fn running(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn event(&self, exp: &Experiment, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &exp.object_ref(&())).await {
            tracing::warn!(experiment = %exp.name_any(), reason, error = %chain(&e), "cannot record an event");
        }
    }
}

/// Runs the controller, and the watches its stores read (`driver`, from
/// [`watches`]), until `shutdown` resolves; reconciles under way finish.
pub async fn run(
    ctx: Arc<Context>,
    driver: futures::future::BoxFuture<'static, ()>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let experiments = Api::<Experiment>::all(ctx.client.clone());
    let controller = Controller::new(experiments, Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %chain(&e), "reconcile");
            }
        });
    tokio::select! {
        _ = controller => {}
        _ = driver => {}
    }
}

fn error_policy(exp: Arc<Experiment>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(experiment = %key(&exp), error = %chain(error), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
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

pub async fn reconcile(exp: Arc<Experiment>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let ns = exp.namespace().ok_or(Error::Malformed("namespace"))?;
    let api = Api::<Experiment>::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, exp, |event| async {
        match event {
            Finalize::Apply(exp) => apply(&exp, &ctx).await,
            Finalize::Cleanup(exp) => cleanup(&exp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    result
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

/// This experiment's entries in the NodeFaults objects, per node.
fn entries_in_store(ctx: &Context, r: &ExperimentRef) -> BTreeMap<String, Vec<NodeFault>> {
    let mut out = BTreeMap::new();
    for nf in ctx.nodefaults.state() {
        let ours: Vec<NodeFault> = nf
            .spec
            .faults
            .iter()
            .filter(|f| r.owns(&f.id))
            .cloned()
            .collect();
        if !ours.is_empty() {
            out.insert(nf.name_any(), ours);
        }
    }
    out
}

/// How many of this experiment's entries the agents report as failed.
fn failed_in_store(ctx: &Context, r: &ExperimentRef) -> u32 {
    ctx.nodefaults
        .state()
        .iter()
        .flat_map(|nf| nf.status.iter().flat_map(|s| s.faults.iter()))
        .filter(|f| f.state == FaultState::Failed && r.owns(&f.id))
        .count() as u32
}

/// Writes this experiment's entries on one node (an empty list removes
/// them; other experiments' entries are other managers' and stay).
async fn write_node(
    ctx: &Context,
    r: &ExperimentRef,
    node: &str,
    entries: &[NodeFault],
) -> Result<()> {
    let api = Api::<NodeFaults>::all(ctx.client.clone());
    let object = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "metadata": {"name": node},
        "spec": NodeFaultsSpec { faults: entries.to_vec() },
    });
    let params = PatchParams::apply(&r.field_manager()).force();
    api.patch(node, &params, &Patch::Apply(&object))
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.nodefaults_writes.inc();
    Ok(())
}

/// Brings every node to `desired`: writes the nodes whose entries differ
/// from what was last written (or, after a restart, from what the objects
/// hold). Returns how many nodes were written.
async fn converge(
    ctx: &Context,
    r: &ExperimentRef,
    desired: &BTreeMap<String, Vec<NodeFault>>,
    written: &mut BTreeMap<String, Vec<NodeFault>>,
) -> Result<usize> {
    let in_store = entries_in_store(ctx, r);
    let nodes: BTreeSet<&String> = desired
        .keys()
        .chain(in_store.keys())
        .chain(written.keys())
        .collect();
    let mut writes = Vec::new();
    for node in nodes {
        let want = desired.get(node).map_or(&[][..], Vec::as_slice);
        let have = written
            .get(node)
            .or_else(|| in_store.get(node))
            .map_or(&[][..], Vec::as_slice);
        // A node whose object lags behind what was written is left alone.
        if want != have
            || (want.is_empty() && in_store.contains_key(node) && !written.contains_key(node))
        {
            writes.push((node.clone(), want.to_vec()));
        }
    }
    let count = writes.len();
    // Bounded concurrency: thousands of nodes at the start of a run.
    let results: Vec<(String, Vec<NodeFault>, Result<()>)> = futures::stream::iter(writes)
        .map(|(node, want)| async move {
            let result = write_node(ctx, r, &node, &want).await;
            (node, want, result)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut first_error = None;
    for (node, want, result) in results {
        match result {
            Ok(()) if want.is_empty() => {
                written.remove(&node);
            }
            Ok(()) => {
                written.insert(node, want);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

async fn write_status(ctx: &Context, exp: &Experiment, status: &ExperimentStatus) -> Result<()> {
    if exp.status.as_ref() == Some(status) {
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

/// The W3C traceparent of a span; None when nothing records spans (no
/// exporter configured), whose ids are all zero.
fn traceparent_of(span: &global::BoxedSpan) -> Option<String> {
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

fn parent_from(traceparent: Option<&str>) -> OtelContext {
    match traceparent {
        Some(tp) => {
            let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
            global::get_text_map_propagator(|p| p.extract(&carrier))
        }
        None => OtelContext::new(),
    }
}

fn experiment_span(r: &ExperimentRef, parent: Option<&str>) -> (global::BoxedSpan, Option<String>) {
    let tracer = global::tracer("faultline-controller");
    let span = tracer
        .span_builder("experiment")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new(
                "faultline.experiment",
                format!("{}/{}", r.namespace, r.name),
            ),
            KeyValue::new("k8s.namespace.name", r.namespace.clone()),
        ])
        .start_with_context(&tracer, &parent_from(parent));
    let tp = traceparent_of(&span);
    (span, tp)
}

impl Live {
    fn start(
        r: &ExperimentRef,
        exp: &Experiment,
        now: Timestamp,
        runs: u32,
        missed_runs: u32,
    ) -> Live {
        let (span, traceparent) = experiment_span(r, None);
        Live {
            run: Run::new(exp.spec.clone(), &r.namespace, seed(&r.uid, runs)),
            started_at: now,
            runs,
            missed_runs,
            last_check: None,
            span,
            traceparent,
            fault_spans: BTreeMap::new(),
            written: BTreeMap::new(),
            told_injected: false,
        }
    }

    fn resume(
        r: &ExperimentRef,
        exp: &Experiment,
        status: &ExperimentStatus,
        started_at: Timestamp,
        now: Timestamp,
    ) -> Live {
        let runs = status.runs.unwrap_or(1).max(1);
        let elapsed = elapsed(started_at, now);
        let (span, traceparent) = experiment_span(r, status.traceparent.as_deref());
        Live {
            run: Run::resume(
                exp.spec.clone(),
                &r.namespace,
                seed(&r.uid, runs),
                elapsed,
                &status::resume_of(status),
            ),
            started_at,
            runs,
            missed_runs: status.missed_runs.unwrap_or(0),
            last_check: None,
            span,
            traceparent,
            fault_spans: BTreeMap::new(),
            written: BTreeMap::new(),
            told_injected: status.injected.unwrap_or(0) > 0,
        }
    }

    /// Opens a span for each fault that has entries now and ends the
    /// spans of faults that have none any more.
    /// A resumed run keeps the traceparent its entries already carry (so
    /// a restart rewrites nothing); `existing` finds it by fault.
    fn fault_spans(
        &mut self,
        r: &ExperimentRef,
        active: &BTreeSet<String>,
        existing: &dyn Fn(&str) -> Option<String>,
    ) {
        let tracer = global::tracer("faultline-controller");
        let parent = OtelContext::new().with_remote_span_context(self.span.span_context().clone());
        for fault in active {
            if !self.fault_spans.contains_key(fault) {
                let kind = self
                    .run
                    .spec()
                    .faults
                    .iter()
                    .find(|f| &f.name == fault)
                    .map_or("", |f| f.action.kind());
                let span = tracer
                    .span_builder("fault")
                    .with_attributes([
                        KeyValue::new(
                            "faultline.experiment",
                            format!("{}/{}", r.namespace, r.name),
                        ),
                        KeyValue::new("faultline.fault", fault.clone()),
                        KeyValue::new("faultline.fault.kind", kind),
                    ])
                    .start_with_context(&tracer, &parent);
                let tp = existing(fault).or_else(|| traceparent_of(&span));
                self.fault_spans.insert(fault.clone(), (span, tp));
            }
        }
        let ended: Vec<String> = self
            .fault_spans
            .keys()
            .filter(|f| !active.contains(*f))
            .cloned()
            .collect();
        for f in ended {
            if let Some((mut span, _)) = self.fault_spans.remove(&f) {
                span.end();
            }
        }
    }

    fn end_spans(&mut self) {
        for (_, (mut span, _)) in std::mem::take(&mut self.fault_spans) {
            span.end();
        }
        if let Some(v) = self.run.verdict() {
            self.span
                .set_attribute(KeyValue::new("faultline.verdict", v.as_str()));
        }
        self.span.end();
    }
}

/// Target choices are fixed per experiment and run, so a restarted
/// controller picks the same pods.
fn seed(uid: &str, run: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain(run.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// When a scheduled experiment should start its next run, and how many
/// start times were missed since `previous`.
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
        if let Some(mut live) = ctx.take_run(&r.uid) {
            live.end_spans();
        }
        let mut written = BTreeMap::new();
        converge(ctx, &r, &BTreeMap::new(), &mut written).await?;
        if previous.phase != Some(Phase::Invalid) || previous.message.as_deref() != Some(&message) {
            ctx.event(exp, EventType::Warning, "Invalid", message.clone())
                .await;
        }
        write_status(
            ctx,
            exp,
            &status::invalid(message, exp.metadata.generation, &previous, now),
        )
        .await?;
        return Ok(Action::await_change());
    }

    let live = match ctx.take_run(&r.uid) {
        Some(live) => live,
        None => match start_or_resume(exp, ctx, &r, &previous, now).await? {
            Ok(live) => live,
            Err(action) => return Ok(action),
        },
    };
    step(exp, ctx, &r, live, &previous, now).await
}

/// A run to drive now, or what to do instead (wait for a scheduled start,
/// nothing at all after the one run of an unscheduled experiment).
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
        return Ok(Ok(Live::resume(r, exp, previous, started.0, now)));
    }
    let runs = previous.runs.unwrap_or(0);
    if exp.spec.schedule.is_none() {
        if phase.is_none() || phase == Some(Phase::Invalid) {
            return Ok(Ok(Live::start(r, exp, now, runs + 1, 0)));
        }
        // Done: make sure nothing of it is left (a restart after the end).
        let mut written = BTreeMap::new();
        converge(ctx, r, &BTreeMap::new(), &mut written).await?;
        return Ok(Err(Action::await_change()));
    }
    // Scheduled: start at the next start time, never late.
    let missed_before = previous.missed_runs.unwrap_or(0);
    match previous.next_run_at.as_ref().map(|t| t.0) {
        Some(at) if now >= at && now.duration_since(at) <= START_SLACK => {
            Ok(Ok(Live::start(r, exp, now, runs + 1, missed_before)))
        }
        Some(at) if now < at => Ok(Err(Action::requeue(until(at, now)))),
        stale => {
            let previous_start = previous.started_at.as_ref().map(|t| t.0).or(stale);
            let Some((at, missed)) = next_run(exp, previous_start, now) else {
                return Ok(Err(Action::await_change()));
            };
            // A stale start time (the controller was away) is one more miss.
            let missed = missed_before
                + missed
                + u32::from(stale.is_some() && previous.started_at.is_none());
            let status = ExperimentStatus {
                next_run_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at)),
                missed_runs: (missed > 0).then_some(missed),
                ..previous.clone()
            };
            write_status(ctx, exp, &status).await?;
            Ok(Err(Action::requeue(until(at, now))))
        }
    }
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    elapsed(now, at).max(Duration::from_millis(100))
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

    if let Some(reason) = exp.annotations().get(ABORT_ANNOTATION) {
        let reason = if reason.is_empty() {
            "aborted by the user"
        } else {
            reason
        };
        live.run.abort(elapsed, format!("aborted: {reason}"));
    }
    if !live.run.is_finished()
        && let Some(why) = plan::opt_in_refusal(&exp.spec, &r.namespace, |ns| {
            ctx.namespaces
                .get(&reflector::ObjectRef::new(ns))
                .is_some_and(|n| plan::opted_in(&n))
        })
    {
        live.run.abort(elapsed, why);
    }

    let namespaces = plan::target_namespaces(&exp.spec, &r.namespace);
    let pods: Vec<PodInfo> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| namespaces.contains(ns))
        })
        .filter_map(|p| PodInfo::from_pod(p))
        .collect();
    let candidates = plan::candidates(&exp.spec, &r.namespace, &pods);

    if live
        .last_check
        .is_none_or(|t| elapsed.saturating_sub(t) >= ctx.settings.check_every)
    {
        live.last_check = Some(elapsed);
        for c in live.run.due(elapsed) {
            let spec = live.run.spec();
            let check = if c.abort {
                &spec.abort[c.index]
            } else {
                &spec.hypothesis[c.index]
            };
            match ctx.observer.observe(&check.kind).await {
                Ok(observed) => {
                    live.run.observe(elapsed, c, &observed);
                }
                // Not judged this time: an unreadable observer is no evidence.
                Err(e) => {
                    tracing::warn!(experiment = %key(exp), check = %check.display_name(), error = %chain(&e), "check not evaluated")
                }
            }
        }
    }

    live.run.step(elapsed, &candidates);
    let index: HashMap<&str, &PodInfo> = pods.iter().map(|p| (p.uid.as_str(), p)).collect();
    let resolved = live.run.resolved();
    let active: BTreeSet<String> = resolved.iter().map(|x| x.fault.name.clone()).collect();
    drop(resolved);
    let in_store = entries_in_store(ctx, r);
    live.fault_spans(r, &active, &|fault| {
        let prefix = format!("{}{fault}/", r.id_prefix());
        in_store
            .values()
            .flatten()
            .find(|f| f.id.starts_with(&prefix))
            .and_then(|f| f.traceparent.clone())
    });
    let resolved = live.run.resolved();
    let mut desired = BTreeMap::new();
    for fault in &active {
        let tp = live
            .fault_spans
            .get(fault)
            .and_then(|(_, tp)| tp.as_deref());
        let of_fault: Vec<_> = resolved
            .iter()
            .filter(|x| &x.fault.name == fault)
            .copied()
            .collect();
        for (node, entries) in
            plan::node_entries(r, &of_fault, live.run.plan(), &index, live.started_at, tp)
        {
            desired.entry(node).or_insert_with(Vec::new).extend(entries);
        }
    }
    for entries in desired.values_mut() {
        entries.sort_by(|a: &NodeFault, b: &NodeFault| a.id.cmp(&b.id));
    }
    drop(resolved);
    let written = converge(ctx, r, &desired, &mut live.written).await;

    let injected: u32 = desired.values().map(|v| v.len() as u32).sum();
    // Pods that faults act on (a target only named as peers is not one).
    let targets = {
        let plan = live.run.plan();
        let all: BTreeSet<&String> = live
            .run
            .spec()
            .faults
            .iter()
            .flat_map(|f| plan.get(&f.target).into_iter().flatten())
            .collect();
        all.len() as u32
    };
    let finished = live.run.is_finished();
    let next = if finished {
        next_run(exp, Some(live.started_at), now)
    } else {
        None
    };
    let facts = RunFacts {
        started_at: Some(live.started_at),
        finished_at: finished
            .then_some(previous.finished_at.as_ref().map_or(now, |t| t.0))
            .filter(|_| finished),
        next_run_at: next.map(|(at, _)| at),
        runs: live.runs,
        missed_runs: live.missed_runs + next.map_or(0, |(_, m)| m),
        traceparent: live.traceparent.clone(),
        targets,
        injected,
        failed: failed_in_store(ctx, r),
    };
    let new_status = status::of_run(&live.run, &facts, exp.metadata.generation, previous, now);

    // Events on what changed.
    let after = live.run.phase();
    if before == Phase::Pending && after != Phase::Pending && !finished_without_start(&live.run) {
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
    if before != after && after == Phase::Recovered {
        let why = live.run.message().unwrap_or("aborted").to_owned();
        ctx.event(exp, EventType::Warning, "Aborted", why).await;
    }

    if let Err(e) = written {
        // Status first, so what the run decided is not lost; retried next turn.
        write_status(ctx, exp, &new_status).await?;
        ctx.keep_run(&r.uid, live);
        return Err(e);
    }

    if finished && live.written.is_empty() {
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
        write_status(ctx, exp, &new_status).await?;
        ctx.event(exp, type_, verdict.as_str(), note).await;
        live.end_spans();
        ctx.metrics.runs_finished.inc();
        return Ok(match next {
            Some((at, _)) => Action::requeue(until(at, now)),
            None => Action::await_change(),
        });
    }
    write_status(ctx, exp, &new_status).await?;
    ctx.keep_run(&r.uid, live);
    Ok(Action::requeue(ctx.settings.tick))
}

/// A run that ended before injecting anything (refused by its limits,
/// its namespaces, or its steady-state checks).
fn finished_without_start(run: &Run) -> bool {
    run.is_finished() && run.plan().is_empty()
}

/// The experiment is being deleted: remove every entry it placed.
async fn cleanup(exp: &Experiment, ctx: &Context) -> Result<Action> {
    let r = experiment_ref(exp)?;
    let mut written = match ctx.take_run(&r.uid) {
        Some(mut live) => {
            live.run.abort(
                elapsed(live.started_at, (ctx.clock)()),
                "the experiment was deleted",
            );
            live.end_spans();
            live.written
        }
        None => BTreeMap::new(),
    };
    let removed: usize = entries_in_store(ctx, &r).values().map(Vec::len).sum();
    converge(ctx, &r, &BTreeMap::new(), &mut written).await?;
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
