//! What one step of a run decides, from what was read: pure. The
//! reconciler (`reconcile`) reads the cluster into a [`View`], asks these
//! functions in turn, and carries out what they return, in this order:
//!
//! 1. [`admit`] — stop the run if something outside it says so (the abort
//!    annotation, a changed spec, checks with no observer, a namespace
//!    protected or no longer opted in);
//! 2. [`due_checks`] — the checks to read now; the reconciler asks the
//!    observer, then [`judge`] takes the answers in;
//! 3. [`decide`] — the step's [`Intent`]: the status to record before any
//!    side effect (a run's start), the pods to take away, the entries
//!    each node should hold;
//! 4. [`count_removals`] — after the side effects, what became of the
//!    pods taken away; [`conclude`] — once the nodes hold the entries (or,
//!    while the run goes on, as many as one step writes), the status that
//!    says what was done; [`announce`] then the Events, once the status is
//!    written.
//!
//! Nothing here calls the API; everything it needs is in its arguments.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use faultline_api::{
    CheckKind, ExperimentStatus, FaultAction, KillMethod, NodeFault, NodeFaults, Phase, Verdict,
};
use faultline_engine::{CheckRef, Observed, Run};
use jiff::{SignedDuration, Timestamp, Unit};
use kube::runtime::events::EventType;

use crate::{
    context::Settings,
    live::{Live, elapsed},
    nodes,
    plan::{self, ExperimentRef, PodInfo},
    status::{self, RunFacts},
};

/// How long checks due before or after the faults may go unreadable
/// before they count as failed (the run would otherwise wait forever).
const CHECK_PATIENCE: Duration = Duration::from_secs(60);

/// The cluster as one step reads it.
pub(crate) struct View<'a> {
    pub now: Timestamp,
    /// The same moment on the monotonic clock (this controller's writes
    /// are timed with it).
    pub instant: std::time::Instant,
    /// The abort annotation, when set (empty: no reason given).
    pub abort: Option<&'a str>,
    /// The spec generation the Experiment has now.
    pub generation: Option<i64>,
    pub settings: &'a Settings,
    pub observer_configured: bool,
    /// Whether a namespace is protected (never a target).
    pub protected: &'a (dyn Fn(&str) -> bool + Sync),
    /// Whether a namespace opted in to faults.
    pub opted_in: &'a (dyn Fn(&str) -> bool + Sync),
    /// The running pods in the run's target namespaces.
    pub pods: &'a [Arc<PodInfo>],
    /// The pod store's generation they were read at (None: unknown): while
    /// it stays the same, the candidates and the plan made from them do.
    pub pods_generation: Option<u64>,
    /// The NodeFaults objects as cached, by node.
    pub cached: &'a BTreeMap<String, Arc<NodeFaults>>,
    /// What the agents say of this experiment's entries.
    pub reports: &'a nodes::Reports<'a>,
    /// This experiment's entries its agents report as failed.
    pub failed: u32,
}

/// An Event to record on the Experiment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

impl Note {
    fn normal(reason: &'static str, note: String) -> Note {
        Note {
            type_: EventType::Normal,
            reason,
            note,
        }
    }
    fn warning(reason: &'static str, note: String) -> Note {
        Note {
            type_: EventType::Warning,
            reason,
            note,
        }
    }
}

/// A pod a kill fault takes away through the API (`method: delete`
/// evicts, `force-delete` deletes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Takeaway {
    pub fault: String,
    pub method: KillMethod,
    pub pod: PodInfo,
}

/// What became of one [`Takeaway`].
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

/// What one step wants done, in this order.
#[derive(Debug, Default)]
pub(crate) struct Intent {
    /// Written before any side effect: the run's start, so a controller
    /// that dies in between resumes this run instead of starting another.
    pub record_start: Option<ExperimentStatus>,
    /// Pods to take away.
    pub takeaways: Vec<Takeaway>,
    /// The nodes to write, each with this experiment's entries it should
    /// hold (empty: none); nodes not named hold what they should, or wait
    /// for a later step (`more`).
    pub writes: BTreeMap<String, Vec<NodeFault>>,
    /// Per node in `writes`, what its entries were made from (for
    /// `Written::inputs`).
    pub inputs: BTreeMap<String, u64>,
    /// Nodes differ beyond those in `writes`.
    pub more: bool,
    /// Nodes the run wants holding entries.
    pub holding: usize,
    /// How long planning took (the next look waits three times that).
    pub planning: Duration,
}

/// When to look at the Experiment again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Next {
    After(Duration),
    /// Only when it changes.
    OnChange,
}

/// The step's end: the status to write, and whether the run is over.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub status: ExperimentStatus,
    pub finished: bool,
}

/// Stops the run when something outside it says so.
pub(crate) fn admit(live: &mut Live, r: &ExperimentRef, view: &View) {
    let elapsed = elapsed(live.started_at, view.now);
    let spec = live.run.shared_spec();
    if let Some(reason) = view.abort {
        let reason = if reason.is_empty() {
            "aborted by the user"
        } else {
            reason
        };
        live.run.abort(elapsed, format!("aborted: {reason}"));
    }
    if view.generation != live.generation {
        live.run.abort(
            elapsed,
            "the spec changed during the run; every fault was removed (the new spec runs when applied anew)",
        );
    }
    if live.run.phase() == Phase::Pending && !view.observer_configured {
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
        && let Some(why) = plan::protected_refusal(&spec, &r.namespace, view.protected)
    {
        live.run.abort(elapsed, why);
    }
    if !live.run.is_finished()
        && let Some(why) = plan::opt_in_refusal(&spec, &r.namespace, view.opted_in)
    {
        live.run.abort(elapsed, why);
    }
}

/// The checks to read now (none between `checkEvery`s), each with what to
/// ask: under faults, no further back than when they were in place.
pub(crate) fn due_checks(live: &mut Live, view: &View) -> Vec<(CheckRef, CheckKind)> {
    let elapsed = elapsed(live.started_at, view.now);
    if live
        .last_check
        .is_some_and(|t| elapsed.saturating_sub(t) < view.settings.check_every)
    {
        return Vec::new();
    }
    live.last_check = Some(elapsed);
    let spec = live.run.shared_spec();
    live.run
        .due(elapsed)
        .into_iter()
        .map(|c| {
            let check = if c.abort {
                &spec.abort[c.index]
            } else {
                &spec.hypothesis[c.index]
            };
            let kind = match live.run.window_for(c, elapsed) {
                Some(w) => check.kind.with_window(w),
                None => check.kind.clone(),
            };
            (c, kind)
        })
        .collect()
}

/// Takes the observer's answers to [`due_checks`] in (an error is the
/// reason it could not be read: no evidence, and an abort check left so
/// past its grace aborts). Returns the Events to record.
pub(crate) fn judge(
    live: &mut Live,
    view: &View,
    readings: Vec<(CheckRef, Result<Observed, String>)>,
) -> Vec<Note> {
    let elapsed = elapsed(live.started_at, view.now);
    let spec = live.run.shared_spec();
    let mut notes = Vec::new();
    let checked = !readings.is_empty() || live.last_check == Some(elapsed);
    for (c, reading) in readings {
        let check = if c.abort {
            &spec.abort[c.index]
        } else {
            &spec.hypothesis[c.index]
        };
        match reading {
            Ok(observed) => {
                // A service still unknown after the grace is most likely
                // misnamed: said once, by name, while the run goes on.
                if let Observed::Unseen(why) = &observed
                    && elapsed >= view.settings.unseen_grace
                    && live.told_unseen.insert(check.display_name())
                {
                    notes.push(Note::warning(
                        "UnseenService",
                        format!("check {}: {why}", check.display_name()),
                    ));
                }
                live.run.observe(elapsed, c, &observed);
            }
            Err(why) => live.run.unreadable(elapsed, c, &why),
        }
    }
    if checked {
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
    notes
}

/// The step itself: the agents' reports taken in, the run stepped to now,
/// and what should be on the nodes and which pods taken away.
pub(crate) fn decide(
    live: &mut Live,
    r: &ExperimentRef,
    view: &View,
    previous: &ExperimentStatus,
) -> Intent {
    let work = std::time::Instant::now();
    let elapsed = elapsed(live.started_at, view.now);
    let spec = live.run.shared_spec();
    // While the pods are those of the last step, so are the candidates.
    let candidates = match (view.pods_generation, live.candidates.take()) {
        (Some(now), Some((then, kept))) if now == then => kept,
        _ => plan::candidates(&spec, &r.namespace, view.pods.iter().map(|p| &**p)),
    };
    let index = plan::pod_index(view.pods.iter().map(|p| &**p));
    // Before stepping, so a run that breaks here loses its faults this turn;
    // after it too, so instances a resumed run takes up again count as
    // confirmed at once when their agents already say so.
    confirm(live, &index, view.reports, elapsed);
    record_effects(r, live, view.reports);
    break_overdue(
        view.cached,
        r,
        live,
        &index,
        view.reports,
        elapsed,
        view.now,
    );

    let mut actions = live
        .run
        .step_with(elapsed, &candidates, view.pods_generation);
    confirm(live, &index, view.reports, elapsed);
    renew_lease(
        live,
        lease_for(view.settings.fault_lease, view.pods),
        view.now,
    );
    let writes = match writes(view, r, live, &index) {
        Ok(w) => w,
        Err(why) => {
            // Refused before anything of this step is done: no pod taken either.
            live.run.abort(elapsed, why);
            live.run
                .step_with(elapsed, &candidates, view.pods_generation);
            actions.clear();
            // Nothing is left to place, so nothing can be refused.
            writes(view, r, live, &index).unwrap_or_default()
        }
    };
    let takeaways = takeaways(&live.run, &actions, &index);
    let recorded = previous.started_at.as_ref().map(|t| t.0) == Some(live.started_at);
    let record_start = (!recorded && (!takeaways.is_empty() || writes.holding > 0)).then(|| {
        let facts = facts(live, live.targets, 0, view.failed);
        status::of_run(
            &live.run,
            &facts,
            live.generation,
            previous,
            second(view.now),
        )
    });
    // A run that ended plans nothing more.
    live.candidates = view
        .pods_generation
        .filter(|_| !live.run.is_finished())
        .map(|g| (g, candidates));
    Intent {
        record_start,
        takeaways,
        writes: writes.nodes,
        inputs: writes.inputs,
        more: writes.more,
        holding: writes.holding,
        planning: work.elapsed(),
    }
}

/// After the side effects: what became of the pods taken away is counted.
pub(crate) fn count_removals(live: &mut Live, removals: Vec<Removal>) {
    for removal in removals {
        match removal {
            Removal::Done { fault } => *live.deleted.entry(fault).or_default() += 1,
            Removal::Refused { fault, pod, why } => {
                *live.refused.entry(fault).or_default() += 1;
                live.refused_pods.insert(pod, why);
            }
        }
    }
}

/// Once the nodes hold what the run wants (or, while it goes on, as much
/// of it as one step writes): the status says where the run stands.
pub(crate) fn conclude(
    live: &mut Live,
    view: &View,
    previous: &ExperimentStatus,
    next_run: impl FnOnce(Timestamp) -> Option<(Timestamp, u32)>,
) -> Outcome {
    // Confirmed by their agents (or, for pod deletions, done): not merely written.
    let injected = live.run.confirmed().len() as u32;
    // Pods that faults act on (a target only named as peers is not one).
    let targets = {
        let plan = live.run.plan();
        let all: BTreeSet<&faultline_engine::TargetId> = live
            .run
            .spec()
            .faults
            .iter()
            .flat_map(|f| plan.get(&f.target).into_iter().flatten())
            .collect();
        all.len() as u32
    };
    let finished = live.run.is_finished();
    // Once per run (a failed status write brings the run back here).
    if finished && live.finished_at.is_none() {
        live.finished_at = Some(second(view.now));
        if let Some((at, missed)) = next_run(live.started_at) {
            live.next_run_at = Some(at);
            live.missed_runs += missed;
        }
    }
    live.targets = targets;
    let facts = facts(live, targets, injected, view.failed);
    let status = status::of_run(
        &live.run,
        &facts,
        live.generation,
        previous,
        second(view.now),
    );
    Outcome { status, finished }
}

/// The Events on what changed, each once per run; called once the status
/// saying so is written.
pub(crate) fn announce(live: &mut Live, holding: usize) -> Vec<Note> {
    let mut notes = Vec::new();
    let phase = live.run.phase();
    if !live.told_started && phase != Phase::Pending && !live.run.plan().is_empty() {
        live.told_started = true;
        notes.push(Note::normal(
            "Started",
            format!("run {} selected {} pods", live.runs, live.targets),
        ));
    }
    let injected = live.run.confirmed().len();
    if injected > 0 && !live.told_injected {
        live.told_injected = true;
        notes.push(Note::normal(
            "Injected",
            format!("{injected} faults placed on {holding} nodes"),
        ));
    }
    let verdict_now = live.run.is_finished() && !live.closed;
    // The verdict's own Event says the same when it goes out now.
    if !live.told_aborted && phase == Phase::Recovered {
        live.told_aborted = true;
        if !verdict_now {
            let why = live.run.message().unwrap_or("aborted").to_owned();
            notes.push(Note::warning("Aborted", why));
        }
    }
    if verdict_now {
        let verdict = live.run.verdict().unwrap_or(Verdict::Aborted);
        let mut note = format!("verdict {verdict}");
        if let Some(m) = live.run.message() {
            note.push_str(&format!(": {m}"));
        }
        notes.push(Note {
            type_: if verdict == Verdict::Passed {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: verdict.as_str(),
            note,
        });
    }
    notes
}

/// When to step a run that goes on: every tick, and planning a very large
/// selection (about 0.3 s at 150 000 pods) takes at most a third of a
/// core whatever the tick. An ended run is looked at again for its next
/// start, if it has one.
pub(crate) fn next_look(
    live: &Live,
    settings: &Settings,
    planning: Duration,
    now: Timestamp,
) -> Next {
    if !live.run.is_finished() {
        return Next::After(
            settings
                .tick
                .max((planning * 3).min(Duration::from_secs(10))),
        );
    }
    match live.next_run_at {
        Some(at) => Next::After(until(at, now).min(settings.max_wait)),
        None => Next::OnChange,
    }
}

/// How long until `at`, at least 100 ms.
pub(crate) fn until(at: Timestamp, now: Timestamp) -> Duration {
    elapsed(now, at).max(Duration::from_millis(100))
}

/// Times in status and deadlines are whole seconds, as the API stores
/// them: a sub-second time would never compare equal to what comes back.
pub(crate) fn second(t: Timestamp) -> Timestamp {
    t.round(Unit::Second).unwrap_or(t)
}

pub(crate) fn facts(live: &Live, targets: u32, injected: u32, failed: u32) -> RunFacts {
    RunFacts {
        started_at: Some(live.started_at),
        finished_at: live.finished_at,
        next_run_at: live.next_run_at,
        runs: live.runs,
        missed_runs: live.missed_runs,
        traceparent: live.traceparent.clone(),
        targets,
        injected,
        failed,
        evictions_refused: live
            .refused
            .iter()
            .map(|(f, n)| (f.clone(), u32::try_from(*n).unwrap_or(u32::MAX)))
            .collect(),
    }
}

/// Renewals the API server is asked for, at most, per second: each
/// rewrites one node's entries.
const RENEWALS_PER_SECOND: u64 = 20;

/// The run's lease: `--fault-lease`, or longer when the nodes the run may
/// touch are so many that renewing every half lease would write more than
/// `RENEWALS_PER_SECOND` (at 5 000 nodes, 500 s: the API server is not
/// kept busy rewriting entries for nothing).
fn lease_for(lease: Duration, pods: &[Arc<PodInfo>]) -> Duration {
    let nodes = pods
        .iter()
        .map(|p| &*p.node)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    lease.max(Duration::from_secs(nodes * 2 / RENEWALS_PER_SECOND))
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

/// The pods of due kill faults that are taken away through the API.
fn takeaways(
    run: &Run,
    actions: &[faultline_engine::Action],
    pods: &plan::PodIndex<'_>,
) -> Vec<Takeaway> {
    actions
        .iter()
        .filter_map(|action| {
            let faultline_engine::Action::Signal(instance, _) = action else {
                return None;
            };
            let method = run.spec().faults.iter().find_map(|f| match &f.action {
                FaultAction::Kill(k) if *f.name == *instance.fault && k.method.deletes_pod() => {
                    Some(k.method)
                }
                _ => None,
            })?;
            let pod = *pods.get(&*instance.target)?;
            Some(Takeaway {
                fault: instance.fault.to_string(),
                method,
                pod: pod.clone(),
            })
        })
        .collect()
}

/// Each fault's effect: the sum over its entries of the largest count
/// each entry's agent reported, or the pods this controller deleted. A
/// fault no agent counted anything for has none (not zero).
fn record_effects(r: &ExperimentRef, live: &mut Live, reports: &nodes::Reports<'_>) {
    for (id, n) in &reports.effects {
        match live.entry_effects.get_mut(*id) {
            Some(e) => *e = (*e).max(*n),
            None => {
                live.entry_effects.insert((*id).to_owned(), *n);
            }
        }
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
    live: &mut Live,
    index: &plan::PodIndex<'_>,
    reports: &nodes::Reports<'_>,
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
        if deletes.contains(&*i.fault) {
            !index.contains_key(&*i.target)
        } else {
            reports.applied.contains(&(&*i.fault, &*i.target))
        }
    });
}

/// Ends the run broken when a fault instance waited past its
/// `confirmTimeout`, naming the nodes and what kept each.
fn break_overdue(
    cached: &BTreeMap<String, Arc<NodeFaults>>,
    r: &ExperimentRef,
    live: &mut Live,
    index: &plan::PodIndex<'_>,
    reports: &nodes::Reports<'_>,
    elapsed: Duration,
    now: Timestamp,
) {
    let timeout = live
        .run
        .spec()
        .confirm_timeout
        .unwrap_or_else(faultline_api::default_confirm_timeout);
    // An agent's time to confirm counts from when its node got the entry:
    // at thousands of nodes the writes take longer than the timeout.
    // A node whose writes keep failing holds no clock back for longer than
    // the timeout from its first try.
    let within = |since: Timestamp| crate::live::elapsed(since, now) <= timeout.as_std();
    let waiting_for_write = |i: &faultline_engine::Instance| {
        index.get(&*i.target).is_some_and(|pod| {
            (live.unwritten.contains(&*pod.node)
                && live.write_tried.get(&*pod.node).is_none_or(|t| within(*t)))
                || live
                    .written
                    .get(&*pod.node)
                    .and_then(|w| w.holding_since)
                    .is_some_and(within)
        })
    };
    let overdue: Vec<_> = live
        .run
        .overdue(elapsed)
        .into_iter()
        .filter(|i| !waiting_for_write(i))
        .cloned()
        .collect();
    if overdue.is_empty() {
        return;
    }
    // Per node, what kept its faults from being confirmed.
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &overdue {
        let id = r.entry_id(&i.fault, &i.target);
        let (node, why) = match (index.get(&*i.target), reports.failed.get(id.as_str())) {
            (Some(pod), _) if live.refused_pods.contains_key(&*i.target) => {
                (pod.node.to_string(), live.refused_pods[&*i.target].clone())
            }
            (Some(pod), Some(reason)) => (pod.node.to_string(), format!("failed: {reason}")),
            (Some(pod), None)
                if cached
                    .get(&*pod.node)
                    .is_some_and(|nf| nf.spec.faults.iter().any(|e| e.id == id)) =>
            {
                (pod.node.to_string(), "no answer from its agent".to_owned())
            }
            (Some(pod), None) => (
                pod.node.to_string(),
                format!("nothing to apply for {}", i.fault),
            ),
            (None, _) => ("(unknown)".to_owned(), format!("pod {} is gone", i.target)),
        };
        nodes.entry(node).or_default().insert(why);
    }
    // A few nodes by name: thousands would fill the status and Events.
    const NAMED: usize = 10;
    let mut list: Vec<String> = nodes
        .iter()
        .take(NAMED)
        .map(|(node, why)| {
            format!(
                "node {node} ({})",
                why.iter().cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect();
    if nodes.len() > NAMED {
        list.push(format!("and {} more nodes", nodes.len() - NAMED));
    }
    let reason = format!(
        "faults not confirmed within {timeout}: {}; every fault was removed",
        list.join(", ")
    );
    tracing::warn!(experiment = %format!("{}/{}", r.namespace, r.name), %reason, "run broken");
    live.run.broke(elapsed, reason);
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

/// Nodes written at most per step: the entries built and held for writing
/// are bounded too, not only the time spent writing.
const NODES_PER_STEP: usize = 1024;

/// What one step writes.
#[derive(Debug, Default)]
struct Writes {
    nodes: BTreeMap<String, Vec<NodeFault>>,
    inputs: BTreeMap<String, u64>,
    more: bool,
    holding: usize,
}

/// The nodes that do not hold what the run wants now (as far as the cache
/// and this controller's last writes tell), each with the entries it
/// should, each fault's carrying its span's traceparent (a resumed run
/// keeps the one its entries carry, so a restart rewrites nothing). Built
/// one node at a time and kept only for nodes to write, at most
/// [`NODES_PER_STEP`] while the run goes on (all once it has ended);
/// `live.unwritten` names every node that differs.
/// Err: entries of a node the API server would refuse.
fn writes(
    view: &View,
    r: &ExperimentRef,
    live: &mut Live,
    index: &plan::PodIndex<'_>,
) -> Result<Writes, String> {
    let cached = view.cached;
    let active: BTreeSet<String> = live
        .run
        .resolved()
        .iter()
        .map(|x| x.fault.name.clone())
        .collect();
    live.fault_spans(r, &active, &|fault| {
        let prefix = format!("{}{fault}/", r.id_prefix());
        cached
            .values()
            .flat_map(|nf| nf.spec.faults.iter())
            .find(|f| f.id.starts_with(&prefix))
            .and_then(|f| f.traceparent.clone())
    });
    let traceparents: HashMap<&str, Option<String>> = active
        .iter()
        .map(|f| (f.as_str(), live.fault_traceparent(f).map(str::to_owned)))
        .collect();
    nodes::note_seen(&mut live.written, cached);
    let resolved = live.run.resolved();
    let actions = plan::agent_actions(&resolved, live.run.plan(), index);
    let times = (live.started_at, live.lease_until);
    // Hashed, not ordered: 150 000 inserts; the nodes are put in order below.
    let mut by_node: HashMap<
        &str,
        Vec<(&faultline_engine::Resolved, &PodInfo, &FaultAction)>,
        foldhash::fast::RandomState,
    > = HashMap::default();
    for x in &resolved {
        // A pod gone since the plan: the next plan replaces it.
        let (Some(pod), Some(Some(action))) =
            (index.get(x.target), actions.get(x.fault.name.as_str()))
        else {
            continue;
        };
        by_node
            .entry(&*pod.node)
            .or_default()
            .push((x, pod, action));
    }
    // What every entry of a fault carries besides its pod: its action,
    // window and traceparent; with the run's times, what a node's entries
    // are made from.
    let fault_inputs: HashMap<&str, u64> = actions
        .iter()
        .map(|(fault, action)| {
            let mut h = std::hash::DefaultHasher::new();
            serde_json::to_vec(action).unwrap_or_default().hash(&mut h);
            traceparents.get(fault).hash(&mut h);
            resolved
                .iter()
                .find(|x| x.fault.name == *fault)
                .map(|x| x.until)
                .hash(&mut h);
            (*fault, h.finish())
        })
        .collect();
    let inputs_of = |held: &[(&faultline_engine::Resolved, &PodInfo, &FaultAction)]| {
        let mut parts: Vec<(&str, &str)> = held
            .iter()
            .map(|(x, pod, _)| (x.fault.name.as_str(), &*pod.uid))
            .collect();
        parts.sort_unstable();
        let mut h = std::hash::DefaultHasher::new();
        times.hash(&mut h);
        for (fault, uid) in parts {
            (fault, uid, fault_inputs.get(fault)).hash(&mut h);
        }
        h.finish()
    };
    let nodes: BTreeSet<&str> = by_node
        .keys()
        .copied()
        .chain(cached.keys().map(String::as_str))
        .chain(live.written.keys().map(String::as_str))
        .collect();
    let finished = live.run.is_finished();
    let mut out = Writes::default();
    let mut unwritten = BTreeSet::new();
    for node in nodes {
        let held = by_node.get(node).map_or(&[][..], Vec::as_slice);
        let inputs = inputs_of(held);
        // Written by a run step from the same inputs, and nobody has
        // changed the object since: it holds what is wanted. Most nodes in
        // most steps; building their entries to compare was most of a step.
        if let (Some(w), Some(nf)) = (live.written.get(node), cached.get(node))
            && w.inputs == Some(inputs)
            && nf.metadata.generation == Some(w.generation)
        {
            if !held.is_empty() {
                out.holding += 1;
            }
            continue;
        }
        // Past this step's share, a node this run never wrote that holds
        // none of its entries wants writing: no entry is built to say so
        // (while placing, thousands of nodes each step).
        if out.nodes.len() >= NODES_PER_STEP
            && !finished
            && !held.is_empty()
            && !live.written.contains_key(node)
            && cached
                .get(node)
                .is_none_or(|nf| !nf.spec.faults.iter().any(|f| r.owns(&f.id)))
        {
            out.holding += 1;
            unwritten.insert(node.to_owned());
            out.more = true;
            continue;
        }
        let mut want: Vec<NodeFault> = held
            .iter()
            .map(|(x, pod, action)| {
                let tp = traceparents
                    .get(x.fault.name.as_str())
                    .and_then(Option::as_deref);
                plan::entry(r, x, pod, action, times, tp)
            })
            .collect();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        if !want.is_empty() {
            out.holding += 1;
        }
        let there = cached.get(node).map(|nf| &**nf);
        if nodes::holds(r, &want, there, live.written.get(node), view.instant) {
            continue;
        }
        unwritten.insert(node.to_owned());
        // An ended run takes every entry away at once: its status may say
        // it ended only after.
        if out.nodes.len() < NODES_PER_STEP || finished {
            // Checked before it is written (what a node holds already
            // passed): 150 000 entries each step would cost more than the
            // rest of the step.
            if let Some(why) = nodes::refused(node, &want) {
                return Err(why);
            }
            out.nodes.insert(node.to_owned(), want);
            out.inputs.insert(node.to_owned(), inputs);
        } else {
            out.more = true;
        }
    }
    drop(resolved);
    live.unwritten = unwritten;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_api::Experiment;

    const UID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";

    fn experiment(faults: &str) -> (Experiment, ExperimentRef) {
        let yaml = format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: slow, namespace: shop}}
spec:
  duration: 5m
  targets:
    web: {{labels: {{app: web}}}}
  faults:
{faults}"
        );
        let mut exp: Experiment =
            faultline_api::parse_one(yaml.as_bytes()).expect("a valid experiment");
        exp.metadata.uid = Some(UID.into());
        exp.metadata.generation = Some(1);
        let r = ExperimentRef {
            namespace: "shop".into(),
            name: "slow".into(),
            uid: UID.into(),
        };
        (exp, r)
    }

    fn uid(i: usize) -> String {
        format!("00000000-0000-4000-8000-{i:012}")
    }

    fn pod(i: usize, node: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            uid: uid(i).into(),
            name: format!("web-{i}"),
            namespace: "shop".into(),
            labels: Arc::new(BTreeMap::from([("app".into(), "web".into())])),
            node: node.into(),
            ips: vec![std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])],
            host_network: false,
        })
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("a time")
    }

    /// Runs the four phases against one view, with no observer readings
    /// and no side effects failing: the intent, the outcome and the Events.
    struct Stepped {
        intent: Intent,
        outcome: Outcome,
        notes: Vec<Note>,
    }

    /// `previous`: the status as last written.
    fn step(
        live: &mut Live,
        r: &ExperimentRef,
        view: &View,
        previous: &ExperimentStatus,
    ) -> Stepped {
        let previous = previous.clone();
        admit(live, r, view);
        let due = due_checks(live, view);
        assert!(due.is_empty(), "no checks in these experiments");
        let mut notes = judge(live, view, Vec::new());
        let intent = decide(live, r, view, &previous);
        let outcome = conclude(live, view, &previous, |_| None);
        notes.extend(announce(live, intent.holding));
        Stepped {
            intent,
            outcome,
            notes,
        }
    }

    fn view<'a>(
        now: Timestamp,
        pods: &'a [Arc<PodInfo>],
        reports: &'a nodes::Reports<'a>,
        settings: &'a Settings,
        cached: &'a BTreeMap<String, Arc<NodeFaults>>,
    ) -> View<'a> {
        View {
            now,
            instant: std::time::Instant::now(),
            abort: None,
            generation: Some(1),
            settings,
            observer_configured: false,
            protected: &|ns| ns == "kube-system",
            opted_in: &|_| true,
            pods,
            pods_generation: None,
            cached,
            reports,
            failed: 0,
        }
    }

    #[test]
    fn a_new_run_records_its_start_then_places_one_entry_per_pod_on_its_node() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a"), pod(2, "node-a"), pod(3, "node-b")];
        let (reports, settings, cached) = Default::default();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());

        let start = s.intent.record_start.unwrap_or_else(|| {
            panic!(
                "the start recorded first: {:?} {:?} {:?}",
                live.run.phase(),
                s.intent.writes,
                s.outcome.status
            )
        });
        assert_eq!(start.started_at.map(|t| t.0), Some(at(0)));
        assert!(s.intent.takeaways.is_empty());
        let placed: BTreeMap<&str, Vec<&str>> = s
            .intent
            .writes
            .iter()
            .map(|(node, e)| (node.as_str(), e.iter().map(|f| f.id.as_str()).collect()))
            .collect();
        let id = |i| format!("{UID}/slow/{}", uid(i));
        assert_eq!(
            placed,
            BTreeMap::from([
                ("node-a", vec![id(1).as_str(), id(2).as_str()]),
                ("node-b", vec![id(3).as_str()]),
            ])
        );
        // Written, not confirmed: nothing counts as injected yet.
        assert_eq!(s.outcome.status.targets, Some(3));
        assert_eq!(s.outcome.status.injected, Some(0));
        assert!(!s.outcome.finished);
        assert_eq!(
            decide_next(&live, &settings),
            Next::After(settings.tick),
            "a run going on is stepped every tick"
        );

        // The agents confirm: injected, said once.
        let reports = nodes::Reports {
            applied: placed
                .values()
                .flatten()
                .filter_map(|id| id.split_once('/')?.1.split_once('/'))
                .collect(),
            ..Default::default()
        };
        let v = view(at(2), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &s.outcome.status);
        assert!(s.intent.record_start.is_none(), "recorded once");
        assert_eq!(s.outcome.status.injected, Some(3));
        let reasons: Vec<&str> = s.notes.iter().map(|n| n.reason).collect();
        assert!(reasons.contains(&"Injected"), "{reasons:?}");
        let s = step(&mut live, &r, &v, &s.outcome.status);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
    }

    /// The cache once it shows a step's writes.
    #[test]
    fn a_node_written_from_the_same_inputs_and_untouched_since_is_not_built_again() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a"), pod(2, "node-a"), pod(3, "node-b")];
        let (reports, settings) = Default::default();
        let cached = BTreeMap::new();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert_eq!(s.intent.inputs.len(), 2, "{:?}", s.intent.inputs);
        // As the executor records a write that succeeded: the object's
        // generation then, and what the entries were made from.
        let wrote = |inputs: u64| crate::live::Written {
            digest: 0,
            generation: 1,
            seen: true,
            at: std::time::Instant::now(),
            holding_since: Some(at(0)),
            ids: 0,
            inputs: Some(inputs),
        };
        for (node, inputs) in &s.intent.inputs {
            live.written.insert(node.clone(), wrote(*inputs));
        }
        // The cache holds node-b at the written generation but with its
        // entries gone: it is not looked into (the generation says nobody
        // changed it since the write).
        let mut cached = as_cached(s.intent.writes.clone());
        let mut emptied = (*cached["node-b"]).clone();
        emptied.spec.faults.clear();
        cached.insert("node-b".into(), Arc::new(emptied.clone()));
        let v = view(at(1), &pods, &reports, &settings, &cached);
        let s2 = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(s2.intent.writes.is_empty(), "{:?}", s2.intent.writes.keys());
        assert_eq!(s2.intent.holding, 2);
        assert!(live.unwritten.is_empty());

        // Someone changed node-b since (its generation moved on): compared
        // in full, and written again.
        emptied.metadata.generation = Some(2);
        cached.insert("node-b".into(), Arc::new(emptied));
        let v = view(at(2), &pods, &reports, &settings, &cached);
        let s3 = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert_eq!(s3.intent.writes.keys().collect::<Vec<_>>(), ["node-b"]);

        // A pod more on node-a: other inputs, so node-a is built and written.
        let mut more = pods.to_vec();
        more.push(pod(4, "node-a"));
        let v = view(at(3), &more, &reports, &settings, &cached);
        let s4 = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(
            s4.intent.writes.contains_key("node-a"),
            "{:?}",
            s4.intent.writes.keys()
        );
        assert_eq!(s4.intent.writes["node-a"].len(), 3);
    }

    fn as_cached(writes: BTreeMap<String, Vec<NodeFault>>) -> BTreeMap<String, Arc<NodeFaults>> {
        writes
            .into_iter()
            .map(|(node, faults)| {
                let mut nf = NodeFaults::new(&node, faultline_api::NodeFaultsSpec { faults });
                nf.metadata.generation = Some(1);
                (node, Arc::new(nf))
            })
            .collect()
    }

    fn decide_next(live: &Live, settings: &Settings) -> Next {
        next_look(live, settings, Duration::ZERO, at(0))
    }

    #[test]
    fn an_abort_or_a_changed_spec_places_nothing_and_ends_the_run() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let pods = [pod(1, "node-a")];
        let (reports, settings, cached) = Default::default();
        for (abort, generation) in [(Some("game over"), Some(1)), (None, Some(2))] {
            let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
            let v = View {
                abort,
                generation,
                ..view(at(0), &pods, &reports, &settings, &cached)
            };
            let s = step(&mut live, &r, &v, &ExperimentStatus::default());
            assert!(s.intent.writes.values().all(Vec::is_empty));
            assert!(s.intent.record_start.is_none(), "nothing to record");
            assert!(s.outcome.finished);
            assert_eq!(s.outcome.status.verdict, Some(Verdict::Aborted));
            let message = s.outcome.status.message.unwrap_or_default();
            let reasons: Vec<&str> = s.notes.iter().map(|n| n.reason).collect();
            assert_eq!(reasons, ["Aborted"], "{message}");
            match abort {
                Some(why) => assert!(message.contains(why), "{message}"),
                None => assert!(message.contains("spec changed"), "{message}"),
            }
        }
    }

    #[test]
    fn a_protected_target_namespace_refuses_the_run_before_anything_is_done() {
        let (mut exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        exp.spec
            .targets
            .values_mut()
            .for_each(|t| t.namespaces = vec!["kube-system".into()]);
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a")];
        let (reports, settings, cached) = Default::default();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(s.intent.writes.values().all(Vec::is_empty));
        assert!(s.outcome.finished);
        let message = s.outcome.status.message.unwrap_or_default();
        assert!(message.contains("kube-system"), "{message}");
    }

    #[test]
    fn a_kill_by_eviction_takes_pods_away_and_counts_what_the_api_refused() {
        let (exp, r) = experiment("    - {name: evict, target: web, kill: {method: delete}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a"), pod(2, "node-b")];
        let (reports, settings, cached) = Default::default();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        let previous = ExperimentStatus::default();
        admit(&mut live, &r, &v);
        let intent = decide(&mut live, &r, &v, &previous);
        assert!(
            intent.record_start.is_some(),
            "recorded before any pod is taken"
        );
        let taken: BTreeSet<String> = intent
            .takeaways
            .iter()
            .map(|t| t.pod.uid.to_string())
            .collect();
        assert_eq!(taken, BTreeSet::from([uid(1), uid(2)]));
        assert!(
            intent
                .takeaways
                .iter()
                .all(|t| t.method == KillMethod::Delete)
        );
        assert!(
            intent.writes.values().all(Vec::is_empty),
            "nothing for agents"
        );
        let removals = vec![
            Removal::Done {
                fault: "evict".into(),
            },
            Removal::Refused {
                fault: "evict".into(),
                pod: uid(2),
                why: "a budget".into(),
            },
        ];
        count_removals(&mut live, removals);
        let outcome = conclude(&mut live, &v, &previous, |_| None);
        assert_eq!(live.deleted.get("evict"), Some(&1));
        assert_eq!(
            live.refused_pods.get(&uid(2)).map(String::as_str),
            Some("a budget")
        );
        let refused = serde_json::to_value(&outcome.status).expect("json");
        assert!(refused.to_string().contains("evict"), "{refused}");
    }

    #[test]
    fn the_lease_grows_with_the_nodes_a_run_may_touch() {
        let minute = Duration::from_secs(60);
        let few: Vec<_> = (0..50)
            .map(|i| pod(i, &format!("node-{}", i % 5)))
            .collect();
        assert_eq!(lease_for(minute, &few), minute);
        let many: Vec<_> = (0..10_000)
            .map(|i| pod(i, &format!("node-{}", i % 5000)))
            .collect();
        assert_eq!(lease_for(minute, &many), Duration::from_secs(500));
    }

    #[test]
    fn a_change_that_is_only_status_waits_for_the_tick() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let seen: crate::live::Seen = (Some(1), None);
        assert_eq!(live.not_yet(&seen), None, "never stepped: due now");
        live.next_step = Some((
            std::time::Instant::now() + Duration::from_secs(60),
            seen.clone(),
        ));
        assert!(
            live.not_yet(&seen)
                .is_some_and(|w| w > Duration::from_secs(50))
        );
        assert_eq!(live.not_yet(&(Some(2), None)), None, "a new spec: at once");
        assert_eq!(
            live.not_yet(&(Some(1), Some("stop".into()))),
            None,
            "an abort: at once"
        );
        live.next_step = Some((std::time::Instant::now(), seen.clone()));
        assert_eq!(live.not_yet(&seen), None, "the tick has come");
    }

    #[test]
    fn an_agent_has_its_confirm_timeout_from_when_its_node_was_written() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a"), pod(2, "node-b")];
        let (reports, settings, cached) = Default::default();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        step(&mut live, &r, &v, &ExperimentStatus::default());
        let wrote = |since| crate::live::Written {
            digest: 0,
            generation: 1,
            seen: true,
            at: std::time::Instant::now(),
            holding_since: Some(since),
            ids: 0,
            inputs: None,
        };
        // node-a got its entries 20 s in, node-b is still waiting for its
        // write: 40 s in, neither agent is late (the timeout is 30 s).
        live.written.insert("node-a".into(), wrote(at(20)));
        live.unwritten.insert("node-b".into());
        let v = view(at(40), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(!s.outcome.finished, "{:?}", s.outcome.status.message);
        // As the executor leaves it: node-a written again, node-b not yet.
        live.unwritten.retain(|n| n == "node-b");

        // 51 s after its write, node-a's agent is late; node-b's clock has
        // not started, so it is not named.
        let v = view(at(71), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(s.outcome.finished);
        let message = s.outcome.status.message.unwrap_or_default();
        assert!(message.contains("node node-a"), "{message}");
        assert!(!message.contains("node-b"), "{message}");
    }

    #[test]
    fn a_node_whose_writes_keep_failing_holds_no_clock_back_past_the_timeout() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let pods = [pod(1, "node-a")];
        let (reports, settings, cached) = Default::default();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        step(&mut live, &r, &v, &ExperimentStatus::default());
        // Tried at 1 s, refused ever since.
        live.write_tried.insert("node-a".into(), at(1));
        let v = view(at(20), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(!s.outcome.finished, "{:?}", s.outcome.status.message);
        assert!(live.unwritten.contains("node-a"));
        let v = view(at(32), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(s.outcome.finished, "broken 31 s after the first try");
        assert_eq!(s.outcome.status.verdict, Some(Verdict::Broken));
    }

    #[test]
    fn an_ended_run_takes_entries_off_every_node_in_one_step() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let n = NODES_PER_STEP + 10;
        let pods: Vec<_> = (0..n).map(|i| pod(i, &format!("node-{i:05}"))).collect();
        let (reports, settings) = Default::default();
        let mut cached: BTreeMap<String, Arc<NodeFaults>> = BTreeMap::new();
        // Two steps place every node's entries; the cache then shows them.
        for t in 0..2 {
            let v = view(at(t), &pods, &reports, &settings, &cached);
            let s = step(&mut live, &r, &v, &ExperimentStatus::default());
            cached.extend(as_cached(s.intent.writes));
        }
        assert_eq!(cached.len(), n);
        let v = View {
            abort: Some("stop"),
            ..view(at(3), &pods, &reports, &settings, &cached)
        };
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert!(s.outcome.finished);
        assert_eq!(s.intent.writes.len(), n, "every node at once");
        assert!(s.intent.writes.values().all(Vec::is_empty));
        assert!(!s.intent.more);
    }

    #[test]
    fn a_step_builds_and_writes_a_bounded_number_of_nodes_and_skips_those_that_hold_theirs() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let n = NODES_PER_STEP + 76;
        let pods: Vec<_> = (0..n).map(|i| pod(i, &format!("node-{i:05}"))).collect();
        let (reports, settings) = Default::default();
        let cached = BTreeMap::new();
        let v = view(at(0), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert_eq!(s.intent.writes.len(), NODES_PER_STEP);
        assert!(s.intent.more, "the rest wait for the next step");
        assert_eq!(s.intent.holding, n);
        assert_eq!(live.unwritten.len(), n, "every node waits for its write");

        // The cache shows every node holding what the run wants: nothing
        // to write.
        let cached = as_cached(s.intent.writes);
        let v = view(at(1), &pods, &reports, &settings, &cached);
        let s = step(&mut live, &r, &v, &ExperimentStatus::default());
        assert_eq!(
            s.intent.writes.keys().collect::<Vec<_>>(),
            live.unwritten.iter().collect::<Vec<_>>(),
            "only the nodes not yet holding their entries"
        );
        assert_eq!(live.unwritten.len(), n - NODES_PER_STEP);
        assert!(!s.intent.more);
    }

    #[test]
    fn candidates_are_kept_while_the_pods_generation_stays_and_made_again_when_it_moves() {
        let (exp, r) = experiment("    - {name: slow, target: web, latency: {delay: 100ms}}\n");
        let mut live = Live::start(&r, &exp, at(0), (1, 0), Default::default());
        let (reports, settings, cached) = Default::default();
        let two = [pod(1, "node-a"), pod(2, "node-a")];
        let three = [pod(1, "node-a"), pod(2, "node-a"), pod(3, "node-b")];
        let planned = |live: &Live| live.run.plan().get("web").map_or(0, Vec::len);
        let at_generation = |secs, pods, generation| View {
            pods_generation: generation,
            ..view(at(secs), pods, &reports, &settings, &cached)
        };
        step(
            &mut live,
            &r,
            &at_generation(0, &two, Some(1)),
            &ExperimentStatus::default(),
        );
        assert_eq!(planned(&live), 2);
        // The store says nothing changed: what it was made from stands.
        step(
            &mut live,
            &r,
            &at_generation(1, &three, Some(1)),
            &ExperimentStatus::default(),
        );
        assert_eq!(planned(&live), 2);
        // It moved: the newcomer is a target.
        step(
            &mut live,
            &r,
            &at_generation(2, &three, Some(2)),
            &ExperimentStatus::default(),
        );
        assert_eq!(planned(&live), 3);
        // Unknown generations are never taken as unchanged.
        step(
            &mut live,
            &r,
            &at_generation(3, &two, None),
            &ExperimentStatus::default(),
        );
        assert_eq!(planned(&live), 2);
    }
}
