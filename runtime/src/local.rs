//! A game day on local processes: the topology's services under supervision,
//! a fault proxy on every dependency edge, the observer in-process, and the
//! engine deciding what to inject and judging the hypothesis.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use faultline_api::{
    BreakerState, CheckKind, Experiment, FaultAction, Phase, Signal, Topology, Verdict, addr_var,
};
use faultline_engine::{Action, CheckReport, Effect, Entry, Instance, Observed, Run, Snapshot};
use faultline_observer::{Addresses, Limits};
use faultline_proxy::{Faults, Proxy};
use http_body_util::{BodyExt, Empty};
use tokio::sync::watch;

use crate::{
    plan::{Edge, candidates, edge_faults, edges, namespace_of, ports},
    processes::{Launch, Supervised, supervise, wait_for_port},
    stress::Stressing,
};

#[derive(Debug, Clone)]
pub struct Options {
    /// Fixes target choices.
    pub seed: u64,
    /// How often the engine steps.
    pub tick: Duration,
    /// How often due checks are evaluated.
    pub check_every: Duration,
    /// Write each service's output to `DIR/<service>.log`.
    pub logs: Option<std::path::PathBuf>,
    /// The program stress workers run (`PROGRAM stress-worker …`): this one.
    pub stress_exe: std::path::PathBuf,
    /// An OTLP/gRPC receiver (such as Jaeger's `http://host:4317`) the
    /// observer forwards every span the services send it to, as well as
    /// keeping its own figures.
    pub forward: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 0,
            tick: Duration::from_millis(200),
            check_every: Duration::from_secs(1),
            logs: None,
            stress_exe: std::env::current_exe()
                .unwrap_or_else(|_| std::path::PathBuf::from("/proc/self/exe")),
            forward: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub phase: Phase,
    pub message: Option<String>,
    pub report: Vec<CheckReport>,
    /// Each fault with the effect counted for it (None: nothing counted).
    pub effects: Vec<(String, Option<Effect>)>,
    /// Faults that required an effect and had none, each with why.
    pub effect_failures: Vec<String>,
    pub journal: Vec<Entry>,
    /// Service restarts during the run, and supervisor messages.
    pub restarts: BTreeMap<String, u64>,
    pub log: Vec<String>,
    /// With `Options::forward`: the spans forwarded, and those dropped
    /// (queue full, or the receiver refused every attempt).
    pub forwarded: Option<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the observer: {0}")]
    Observer(std::io::Error),
    #[error("cannot start the proxy from {from} to {to}: {source}")]
    Proxy {
        from: String,
        to: String,
        source: std::io::Error,
    },
    #[error("{service} did not listen on port {port} within 15 s{}", said(.output))]
    NotReady {
        service: String,
        port: u16,
        /// Its last lines of output.
        output: Vec<String>,
    },
    #[error("cannot set up the services' cgroups: {0}")]
    Cgroups(String),
}

fn said(output: &[String]) -> String {
    if output.is_empty() {
        "; it printed nothing".to_owned()
    } else {
        format!("; its last output:\n  {}", output.join("\n  "))
    }
}

/// What of an experiment local mode cannot do, for the user to read before
/// the run: CIDR peers and destinations match nothing here, since services
/// reach each other only through the proxies, named by target.
pub fn local_mode_notes(experiment: &Experiment) -> Vec<String> {
    let mut notes = Vec::new();
    for f in &experiment.spec.faults {
        let (field, list) = match &f.action {
            FaultAction::Latency(l) => ("latency.to", &l.to),
            FaultAction::Network(n) => ("network.to", &n.to),
            FaultAction::Partition(p) => ("partition.peers", &p.peers),
            FaultAction::Kill(k) => {
                if k.sandbox {
                    notes.push(format!(
                        "fault {}: kill.sandbox has no meaning for a local process; the service gets the signal alone",
                        f.name
                    ));
                }
                continue;
            }
            FaultAction::Stress(_) => continue,
        };
        let cidrs: Vec<&str> = list
            .iter()
            .filter(|p| faultline_api::parse_cidr(p).is_some())
            .map(String::as_str)
            .collect();
        if !cidrs.is_empty() {
            notes.push(format!(
                "fault {}: {field} {} are addresses; in local mode only target names are matched, so they are ignored",
                f.name,
                cidrs.join(", ")
            ));
        }
    }
    notes
}

/// What a run publishes for displays, replaced as it goes. Displays read it
/// in their own tasks, so a slow terminal never holds up the control loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// The embedded observer's live API, once it listens.
    pub observer_api: Option<SocketAddr>,
    /// The service being started, before the run begins.
    pub starting: Option<String>,
    /// The run, once it has begun.
    pub run: Option<Snapshot>,
    /// Each phase the run entered, and when: a display that reads now and
    /// then still learns of a phase that lasted one step.
    pub phases: Vec<(Duration, Phase)>,
    /// Why the run broke, when it did (what `run` returns as its error).
    pub failed: Option<String>,
}

/// Runs `experiment` against `topology` until it completes or is aborted
/// (`cancel` set to true aborts it, with full recovery), publishing its
/// progress on `progress`.
pub async fn run(
    experiment: &Experiment,
    topology: &Topology,
    options: &Options,
    cancel: watch::Receiver<bool>,
    progress: &watch::Sender<Progress>,
) -> Result<Outcome, Error> {
    let result = drive(experiment, topology, options, cancel, progress).await;
    if let Err(e) = &result {
        let said = e.to_string();
        progress.send_modify(|p| {
            p.starting = None;
            p.failed = Some(said);
        });
    }
    result
}

async fn drive(
    experiment: &Experiment,
    topology: &Topology,
    options: &Options,
    mut cancel: watch::Receiver<bool>,
    progress: &watch::Sender<Progress>,
) -> Result<Outcome, Error> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut observer = faultline_observer::Observer::new(Limits::default());
    if let Some(endpoint) = &options.forward {
        observer = observer.forward_to(faultline_observer::ForwardConfig::new(
            endpoint.clone(),
            faultline_observer::ForwardProtocol::Grpc,
        ));
    }
    let observer = faultline_observer::start_with(&Addresses::ephemeral(), observer)
        .await
        .map_err(Error::Observer)?;
    progress.send_modify(|p| p.observer_api = Some(observer.addresses.api));

    // A proxy on every edge; a service reaches each dependency through one.
    let ports = ports(topology);
    let mut proxies: BTreeMap<Edge, Proxy> = BTreeMap::new();
    for (from, to) in edges(topology) {
        let upstream =
            SocketAddr::from(([127, 0, 0, 1], ports.get(to.as_str()).copied().unwrap_or(0)));
        let proxy = Proxy::start(any, upstream)
            .await
            .map_err(|source| Error::Proxy {
                from: from.clone(),
                to: to.clone(),
                source,
            })?;
        proxies.insert((from, to), proxy);
    }

    // Limits and stress work through the services' own cgroups, made for
    // the run.
    let cgroups = if crate::stress::wanted(&experiment.spec) || topology.spec.has_limits() {
        Some(crate::stress::Cgroups::create().map_err(Error::Cgroups)?)
    } else {
        None
    };
    let mut stressing =
        crate::stress::wanted(&experiment.spec).then(|| Stressing::new(options.stress_exe.clone()));

    let log = Arc::new(Mutex::new(Vec::new()));
    let mut procs: BTreeMap<String, Supervised> = BTreeMap::new();
    for s in start_order(topology) {
        let mut env = BTreeMap::new();
        for dep in &s.depends_on {
            if let Some(p) = proxies.get(&(s.name.clone(), dep.clone())) {
                env.insert(addr_var(dep), p.local_addr().to_string());
            }
        }
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{}", observer.addresses.otlp_grpc),
        );
        env.insert("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into());
        env.insert("OTEL_SERVICE_NAME".into(), s.name.clone());
        let mut launch = Launch::from_service(s, env);
        launch.log_file = options
            .logs
            .as_ref()
            .map(|dir| dir.join(format!("{}.log", s.name)));
        if let Some(cg) = &cgroups {
            let placed = match &s.limits {
                Some(limits) => cg.limited(&s.name, limits),
                None => cg.service(&s.name),
            };
            match placed {
                Ok(dir) => launch.cgroup = Some(dir),
                Err(e) => {
                    stop_all(procs).await;
                    if let Some(cg) = cgroups {
                        cg.remove().await;
                    }
                    return Err(Error::Cgroups(e));
                }
            }
        }
        progress.send_modify(|p| p.starting = Some(s.name.clone()));
        procs.insert(s.name.clone(), supervise(launch, log.clone()));
        if !wait_for_port(s.port, Duration::from_secs(15)).await {
            let output = procs
                .get(&s.name)
                .map(|p| p.last_output(10))
                .unwrap_or_default();
            stop_all(procs).await;
            if let Some(cg) = cgroups {
                cg.remove().await;
            }
            return Err(Error::NotReady {
                service: s.name.clone(),
                port: s.port,
                output,
            });
        }
    }

    let namespace = namespace_of(experiment);
    let candidates = candidates(topology, &namespace);
    let mut run = Run::new(experiment.spec.clone(), &namespace, options.seed);
    progress.send_modify(|p| p.starting = None);
    let started = tokio::time::Instant::now();
    // The same moment on the wall clock, for the workers' deadlines.
    let started_wall = std::time::SystemTime::now();
    let mut last_checks: Option<Duration> = None;
    // What is in place: instances a proxy carries (on which edges), kills
    // whose signal went out.
    let mut in_place: BTreeMap<Instance, Vec<Edge>> = BTreeMap::new();
    let mut signalled: BTreeSet<Instance> = BTreeSet::new();
    let mut effects = Effects::default();
    let mut ticker = tokio::time::interval(options.tick);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = cancel.changed() => {
                if changed.is_err() || *cancel.borrow() {
                    run.abort(started.elapsed(), "interrupted by the user");
                }
            }
        }
        let now = started.elapsed();
        if last_checks.is_none_or(|t| now.saturating_sub(t) >= options.check_every) {
            last_checks = Some(now);
            for c in run.due(now) {
                let check = if c.abort {
                    &run.spec().abort[c.index]
                } else {
                    &run.spec().hypothesis[c.index]
                };
                // Under faults, no further back than when they were in place.
                let kind = match run.window_for(c, now) {
                    Some(w) => check.kind.with_window(w),
                    None => check.kind.clone(),
                };
                let observed = observe(&observer.observer, &kind).await;
                run.observe(now, c, &observed);
            }
        }
        let actions = run.step(now, &candidates);
        for a in &actions {
            // A `delete` kill is a pod deletion on a cluster; here the
            // closest thing is SIGKILL, after which the supervisor restarts.
            let deletes = |fault: &str| {
                run.spec().faults.iter().any(|f| {
                    f.name == fault
                        && matches!(&f.action, FaultAction::Kill(k) if k.method.deletes_pod())
                })
            };
            let Action::Signal(i, sig) = a else { continue };
            let sent = match procs.get(&*i.target) {
                Some(p) => p.signal(if deletes(&i.fault) {
                    Signal::Kill.number()
                } else {
                    sig.number()
                }),
                None => Err(std::io::Error::other("no such service")),
            };
            match sent {
                // A kill is in place once its first signal was delivered.
                Ok(()) => {
                    signalled.insert(i.clone());
                    *effects.signals.entry(i.fault.to_string()).or_default() += 1;
                }
                Err(e) => log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("signal to {}: {e}", i.target)),
            }
        }
        if actions.iter().any(|a| !matches!(a, Action::Signal(..))) {
            in_place = apply_faults(&run, &proxies, &ports);
            effects.watch(&in_place, &proxies);
        }
        // Level-based, every tick: a worker that died is started again.
        if let (Some(st), Some(cg)) = (stressing.as_mut(), cgroups.as_ref()) {
            let said = st.reconcile(&run.resolved(), started_wall, cg);
            if !said.is_empty() {
                log.lock().unwrap_or_else(|e| e.into_inner()).extend(said);
            }
        }
        // A proxy that took the setting, a delivered signal, or a worker
        // the kernel lists in its cgroup is the local agent's word; what
        // reached no edge was not injected.
        run.confirm(now, |i| {
            in_place.contains_key(i)
                || signalled.contains(i)
                || stressing.as_ref().is_some_and(|st| st.in_place(i))
        });
        effects.record(&mut run, &proxies, stressing.as_ref());
        let overdue: Vec<String> = run
            .overdue(now)
            .iter()
            .map(|i| format!("{} on {}", i.fault, i.target))
            .collect();
        if !overdue.is_empty() {
            run.broke(
                now,
                format!(
                    "faults not confirmed within {}: {} (no proxy carries its traffic, or the signal was not delivered)",
                    run.spec()
                        .confirm_timeout
                        .unwrap_or_else(faultline_api::default_confirm_timeout),
                    overdue.join(", ")
                ),
            );
        }
        let snapshot = run.snapshot(now);
        progress.send_modify(|p| {
            if p.phases
                .last()
                .is_none_or(|(_, phase)| *phase != snapshot.phase)
            {
                p.phases.push((now, snapshot.phase));
            }
            p.run = Some(snapshot);
        });
        if run.is_finished() {
            break;
        }
    }
    // Every fault is removed by the run itself; clear the proxies anyway.
    for p in proxies.values() {
        p.set_faults(Faults::default());
    }
    if let Some(st) = stressing.as_mut() {
        st.stop_all();
        effects.record(&mut run, &proxies, Some(st));
    }
    let restarts = procs
        .iter()
        .map(|(n, p)| (n.clone(), p.restarts()))
        .collect();
    stop_all(procs).await;
    if let Some(cg) = cgroups {
        cg.remove().await;
    }
    let forwarded = drain_forward(&observer.observer).await;
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Outcome {
        verdict: run.verdict().unwrap_or(Verdict::Aborted),
        phase: run.phase(),
        message: run.message().map(str::to_owned),
        report: run.report(),
        effects: run
            .effects()
            .into_iter()
            .map(|(f, e)| (f.to_owned(), e.cloned()))
            .collect(),
        effect_failures: run.effect_failures().to_vec(),
        journal: run.journal().to_vec(),
        restarts,
        log,
        forwarded,
    })
}

/// Once the services are gone (their last spans flushed as they stopped),
/// waits for what the observer still has to forward, for at most 10 s:
/// (forwarded, dropped), or None without forwarding.
async fn drain_forward(observer: &faultline_observer::Observer) -> Option<(u64, u64)> {
    use std::sync::atomic::Ordering;
    let stats = observer.forward_stats()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // A moment first: the last exports may still be on their way in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while stats.queued.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = stats.dropped_queue_full.load(Ordering::Relaxed)
        + stats.dropped_failed.load(Ordering::Relaxed)
        + stats.queued.load(Ordering::Relaxed) as u64;
    Some((stats.forwarded.load(Ordering::Relaxed), dropped))
}

/// What each fault did, from the proxies' counters and the signals sent:
/// counted on each edge only while the fault is carried there, so traffic
/// another fault of the same kind slows on a shared edge later is not
/// taken for this one's.
#[derive(Debug, Default)]
struct Effects {
    /// Per fault and edge, what was counted there so far.
    edges: BTreeMap<String, BTreeMap<Edge, Span>>,
    /// Successful signals per kill fault.
    signals: BTreeMap<String, u64>,
}

/// An edge's evidence counters: what latency does (chunks delayed,
/// connections dropped) and what partitions do (connections held, reset).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    latency: u64,
    partition: u64,
}

impl Counters {
    fn of(stats: &faultline_proxy::Stats) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        Counters {
            latency: stats.delayed.load(Relaxed) + stats.dropped.load(Relaxed),
            partition: stats.blackholed.load(Relaxed) + stats.reset.load(Relaxed),
        }
    }

    fn since(self, then: Counters) -> Counters {
        Counters {
            latency: self.latency.saturating_sub(then.latency),
            partition: self.partition.saturating_sub(then.partition),
        }
    }

    fn plus(self, other: Counters) -> Counters {
        Counters {
            latency: self.latency + other.latency,
            partition: self.partition + other.partition,
        }
    }
}

/// A fault's count on one edge: closed stretches, and the open one's start.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    counted: Counters,
    open_since: Option<Counters>,
}

impl Effects {
    /// Opens counting where a fault is carried now, closes it where it no
    /// longer is.
    fn watch(&mut self, in_place: &BTreeMap<Instance, Vec<Edge>>, proxies: &BTreeMap<Edge, Proxy>) {
        let mut now: BTreeMap<&str, BTreeSet<&Edge>> = BTreeMap::new();
        for (i, edges) in in_place {
            now.entry(&*i.fault).or_default().extend(edges);
        }
        for (fault, edges) in &now {
            let spans = self.edges.entry((*fault).to_owned()).or_default();
            for e in edges {
                let span = spans.entry((*e).clone()).or_default();
                if span.open_since.is_none() {
                    span.open_since = proxies.get(*e).map(|p| Counters::of(p.stats()));
                }
            }
        }
        for (fault, spans) in &mut self.edges {
            for (e, span) in spans.iter_mut() {
                let carried = now.get(fault.as_str()).is_some_and(|s| s.contains(e));
                if !carried && let (Some(start), Some(p)) = (span.open_since, proxies.get(e)) {
                    span.counted = span.counted.plus(Counters::of(p.stats()).since(start));
                    span.open_since = None;
                }
            }
        }
    }

    /// Tells the run each fault's effect so far.
    fn record(
        &self,
        run: &mut Run,
        proxies: &BTreeMap<Edge, Proxy>,
        stressing: Option<&Stressing>,
    ) {
        let faults: Vec<faultline_api::Fault> = run.spec().faults.clone();
        for f in &faults {
            let effect = match &f.action {
                FaultAction::Stress(_) => match stressing.and_then(|st| st.effect(&f.name)) {
                    Some(ms) => Effect {
                        count: ms,
                        what: f.action.effect_unit().into(),
                    },
                    None => continue,
                },
                FaultAction::Kill(_) => match self.signals.get(&f.name) {
                    Some(n) => Effect {
                        count: *n,
                        what: "processes signalled".into(),
                    },
                    None => continue,
                },
                action => {
                    let Some(spans) = self.edges.get(&f.name) else {
                        continue;
                    };
                    let total = spans.iter().fold(Counters::default(), |sum, (e, span)| {
                        let open = match (span.open_since, proxies.get(e)) {
                            (Some(start), Some(p)) => Counters::of(p.stats()).since(start),
                            _ => Counters::default(),
                        };
                        sum.plus(span.counted).plus(open)
                    });
                    let latency =
                        matches!(action, FaultAction::Latency(_) | FaultAction::Network(_));
                    Effect {
                        count: if latency {
                            total.latency
                        } else {
                            total.partition
                        },
                        what: if latency {
                            "chunks delayed or connections dropped".into()
                        } else {
                            "connections held or reset".into()
                        },
                    }
                }
            };
            run.record_effect(&f.name, effect);
        }
    }
}

/// Dependencies before their dependents (validation refused cycles).
fn start_order(topology: &Topology) -> Vec<&faultline_api::Service> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < topology.spec.services.len() {
        let before = order.len();
        for s in &topology.spec.services {
            if !done.contains(s.name.as_str())
                && s.depends_on.iter().all(|d| done.contains(d.as_str()))
            {
                done.insert(&s.name);
                order.push(s);
            }
        }
        if order.len() == before {
            break; // a cycle slipped through: start the rest anyway
        }
    }
    for s in &topology.spec.services {
        if !done.contains(s.name.as_str()) {
            order.push(s);
        }
    }
    order
}

async fn stop_all(procs: BTreeMap<String, Supervised>) {
    futures::future::join_all(procs.into_values().map(Supervised::stop)).await;
}

/// Sets every proxy's faults from the active instances (see
/// `plan::edge_faults`). Returns the instances some proxy now carries, with
/// the edges that carry each.
fn apply_faults(
    run: &Run,
    proxies: &BTreeMap<Edge, Proxy>,
    ports: &HashMap<&str, u16>,
) -> BTreeMap<Instance, Vec<Edge>> {
    let (wanted, carried) = edge_faults(&run.resolved(), run.plan(), proxies.keys(), ports);
    for (edge, proxy) in proxies {
        let faults = wanted.get(edge).copied().unwrap_or_default();
        if proxy.faults() != faults {
            proxy.set_faults(faults);
        }
    }
    carried
}

/// The figure a check compares, from the observer or an HTTP request.
async fn observe(observer: &faultline_observer::Observer, kind: &CheckKind) -> Observed {
    let secs = |d: faultline_api::Duration| (d.as_millis() / 1000).max(1);
    match kind {
        // The requests in the window are the evidence a figure rests on.
        CheckKind::ErrorRate(c) => {
            let figures = observer.service(&c.service, secs(c.window));
            // Narrowed to calls to one service: its edge, as client spans count it.
            let red = match &c.to {
                Some(to) => {
                    figures.and_then(|f| f.edges.into_iter().find(|e| e.to == *to).map(|e| e.red))
                }
                None => figures.map(|f| f.red),
            };
            match red {
                Some(r) if r.requests > 0 => Observed::Rate {
                    rate: r.error_rate,
                    requests: r.requests,
                },
                _ => Observed::NoData,
            }
        }
        CheckKind::Latency(c) => {
            let window = secs(c.window);
            match observer.latency_ms(&c.service, c.percentile, window) {
                Some(ms) => Observed::LatencyMs {
                    ms,
                    requests: observer
                        .service(&c.service, window)
                        .map_or(0, |f| f.red.requests),
                },
                None => Observed::NoData,
            }
        }
        CheckKind::Breaker(c) => match observer.breaker(&c.service, &c.name) {
            Some((state, for_secs)) => Observed::Breaker {
                state: match state {
                    faultline_observer::BreakerState::Closed => BreakerState::Closed,
                    faultline_observer::BreakerState::Open => BreakerState::Open,
                    faultline_observer::BreakerState::HalfOpen => BreakerState::HalfOpen,
                },
                for_secs,
            },
            None => Observed::NoData,
        },
        CheckKind::Http(c) => Observed::Http(http_get(&c.url, c.timeout.as_std()).await),
    }
}

/// GET `url`; the status, or None when nothing answered in time.
async fn http_get(url: &str, timeout: Duration) -> Option<u16> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let req = hyper::Request::get(url).body(Empty::new()).ok()?;
    let response = tokio::time::timeout(timeout, client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_engine::Candidate;
    use faultline_proxy::{Latency, Partition};

    /// A 10 s experiment in namespace demo; `rest` continues under `targets:`.
    fn experiment(rest: &str) -> Experiment {
        let doc = format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: x, namespace: demo}}
spec:
  duration: 10s
  targets:
{rest}"
        );
        faultline_api::parse_one(doc.as_bytes()).expect("valid")
    }

    #[tokio::test]
    async fn an_effect_counts_only_while_its_fault_holds_the_edge() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An echo upstream behind one proxied edge.
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let up = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let edge: Edge = ("a".into(), "b".into());
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), up)
            .await
            .expect("proxy");
        proxy.set_faults(Faults {
            latency: Some(Latency {
                delay: Duration::from_millis(1),
                jitter: Duration::ZERO,
                loss: 0.0,
                correlation: 0.0,
            }),
            partition: None,
            rate: None,
        });
        let mut client = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        let proxies = BTreeMap::from([(edge.clone(), proxy)]);
        let mut exchange = async || {
            client.write_all(b"x").await.expect("write");
            let mut one = [0u8; 1];
            client.read_exact(&mut one).await.expect("echo");
        };
        let held = |fault: &str| {
            BTreeMap::from([(
                Instance {
                    fault: fault.into(),
                    target: "b".into(),
                },
                vec![edge.clone()],
            )])
        };
        let mut effects = Effects::default();
        // `one` holds the edge for one exchange, then `two` for two.
        effects.watch(&held("one"), &proxies);
        exchange().await;
        effects.watch(&held("two"), &proxies);
        exchange().await;
        exchange().await;
        let e = experiment(
            "    b: {labels: {app: b}}
  faults:
    - {name: one, target: b, latency: {delay: 1ms}}
    - {name: two, target: b, latency: {delay: 1ms}}
",
        );
        let mut run = Run::new(e.spec, "demo", 1);
        effects.record(&mut run, &proxies, None);
        let counts: Vec<(&str, Option<u64>)> = run
            .effects()
            .into_iter()
            .map(|(f, e)| (f, e.map(|e| e.count)))
            .collect();
        assert_eq!(counts, vec![("one", Some(1)), ("two", Some(2))]);
    }

    #[tokio::test]
    async fn partition_ports_cut_only_edges_to_those_ports() {
        let e = experiment(
            "    a: {labels: {app: a}}
    b: {labels: {app: b}}
    c: {labels: {app: c}}
  faults:
    - {name: cut, target: a, partition: {direction: egress, peers: [b, c], ports: [1002]}}
",
        );
        let candidates: Vec<Candidate> = ["a", "b", "c"]
            .iter()
            .map(|n| Candidate {
                id: (*n).into(),
                namespace: "demo".into(),
                labels: std::sync::Arc::new([("app".to_owned(), (*n).to_owned())].into()),
            })
            .collect();
        let mut run = Run::new(e.spec.clone(), "demo", 0);
        for ms in [0, 500, 1000] {
            run.step(Duration::from_millis(ms), &candidates);
        }
        assert_eq!(run.active().len(), 1, "{:?}", run.phase());
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut proxies = BTreeMap::new();
        for to in ["b", "c"] {
            let proxy = Proxy::start(any, any).await.expect("proxy");
            proxies.insert(("a".to_owned(), to.to_owned()), proxy);
        }
        let ports: HashMap<&str, u16> = [("a", 1001), ("b", 1002), ("c", 1003)].into();
        apply_faults(&run, &proxies, &ports);
        let cut = |to: &str| proxies[&("a".to_owned(), to.to_owned())].faults().partition;
        assert_eq!(cut("b"), Some(Partition::Blackhole), "b listens on 1002");
        assert_eq!(cut("c"), None, "c's port is not listed");
    }

    #[test]
    fn cidr_peers_are_called_out() {
        let e = experiment(
            "    a: {labels: {app: a}}
    b: {labels: {app: b}}
  faults:
    - {name: cut, target: a, partition: {peers: [b, 10.0.0.0/8]}}
    - {name: slow, target: a, latency: {delay: 10ms, to: [b]}}
",
        );
        assert_eq!(
            local_mode_notes(&e),
            [
                "fault cut: partition.peers 10.0.0.0/8 are addresses; in local mode only target names are matched, so they are ignored"
            ]
        );
    }
}
