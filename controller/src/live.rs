//! A run this controller drives: the engine's run, when it started, what
//! was written for it on each node, and its spans (`experiment` → `fault`,
//! whose traceparent the entries carry to the agents' `inject`/`recover`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use faultline_api::{Experiment, ExperimentStatus};
use faultline_engine::Run;
use jiff::Timestamp;
use opentelemetry::{
    Context as OtelContext, KeyValue, global,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer},
};

use crate::{
    plan::ExperimentRef,
    plan::{Ceilings, capped, seed},
    status,
};

/// A run this controller is driving (or drove: a finished run stays until
/// the next one replaces it, since a cached status may not show its end yet).
pub(crate) struct Live {
    pub run: Run,
    /// The spec generation the run follows; another one aborts it.
    pub generation: Option<i64>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// A scheduled experiment's next start, once this run has ended.
    pub next_run_at: Option<Timestamp>,
    pub runs: u32,
    pub missed_runs: u32,
    /// Pods the faults act on, as last planned.
    pub targets: u32,
    pub last_check: Option<Duration>,
    span: global::BoxedSpan,
    pub traceparent: Option<String>,
    /// One span per fault while it has entries, with its traceparent.
    fault_spans: BTreeMap<String, (global::BoxedSpan, Option<String>)>,
    /// What was last written per node (so unchanged nodes cost nothing).
    pub written: BTreeMap<String, Written>,
    /// Nodes whose entries the last step left for a later one (a step
    /// writes for a bounded time): their agents' clocks have not started.
    pub unwritten: BTreeSet<String>,
    /// Per node still to be written, when this run first tried: a node
    /// whose writes keep failing stops holding its agent's clock back.
    pub write_tried: BTreeMap<String, Timestamp>,
    pub told_injected: bool,
    /// The Started and Aborted Events went out (once per run, even when the
    /// step that got there failed to write its status).
    pub told_started: bool,
    pub told_aborted: bool,
    /// Checks whose unseen service was reported (once per run).
    pub told_unseen: BTreeSet<String>,
    /// Per entry id, the largest effect its agent reported.
    pub entry_effects: BTreeMap<String, u64>,
    /// Per kill fault with `method: delete` or `force-delete`, the pods
    /// this controller evicted or deleted.
    pub deleted: BTreeMap<String, u64>,
    /// Per such fault, the evictions the API refused (PodDisruptionBudgets),
    /// and per pod uid the last refusal's words.
    pub refused: BTreeMap<String, u64>,
    pub refused_pods: BTreeMap<String, String>,
    /// No entry of this run expires later than this (the dead-man's
    /// switch), renewed while the run goes on.
    pub lease_until: Option<Timestamp>,
    /// The end was reported (status, Event, spans).
    pub closed: bool,
    /// When the next step is due, and what of the Experiment the last step
    /// saw: a change that is only its status (this controller's own
    /// writes) does not step the run before then.
    pub next_step: Option<(std::time::Instant, Seen)>,
    /// The run's candidates, with the pod store's generation they were
    /// made at (see `decide::View::pods_generation`).
    pub candidates: Option<(u64, Vec<faultline_engine::Candidate>)>,
}

/// What of an Experiment steps a run at once when it changes: its spec
/// generation and its abort annotation.
pub(crate) type Seen = (Option<i64>, Option<String>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("phase", &self.run.phase())
            .field("started_at", &self.started_at)
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
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
    pub(crate) fn start(
        r: &ExperimentRef,
        exp: &Experiment,
        now: Timestamp,
        (runs, missed_runs): (u32, u32),
        ceilings: Ceilings,
    ) -> Live {
        let (span, traceparent) = experiment_span(r, None);
        Live {
            run: Run::new(
                capped(&exp.spec, ceilings),
                &r.namespace,
                seed(&r.uid, runs),
            ),
            generation: exp.metadata.generation,
            started_at: now,
            finished_at: None,
            next_run_at: None,
            runs,
            missed_runs,
            targets: 0,
            last_check: None,
            span,
            traceparent,
            fault_spans: BTreeMap::new(),
            written: BTreeMap::new(),
            unwritten: BTreeSet::new(),
            write_tried: BTreeMap::new(),
            told_injected: false,
            told_started: false,
            told_aborted: false,
            told_unseen: BTreeSet::new(),
            entry_effects: BTreeMap::new(),
            deleted: BTreeMap::new(),
            refused: BTreeMap::new(),
            refused_pods: BTreeMap::new(),
            lease_until: None,
            closed: false,
            next_step: None,
            candidates: None,
        }
    }

    pub(crate) fn resume(
        r: &ExperimentRef,
        exp: &Experiment,
        status: &ExperimentStatus,
        (started_at, now): (Timestamp, Timestamp),
        ceilings: Ceilings,
    ) -> Live {
        let runs = status.runs.unwrap_or(1).max(1);
        let elapsed = elapsed(started_at, now);
        // The new span joins the run's trace; the status keeps naming the
        // run's first span, so a restart changes nothing there.
        let (span, new_traceparent) = experiment_span(r, status.traceparent.as_deref());
        let traceparent = status.traceparent.clone().or(new_traceparent);
        Live {
            run: Run::resume(
                capped(&exp.spec, ceilings),
                &r.namespace,
                seed(&r.uid, runs),
                elapsed,
                &status::resume_of(status),
            ),
            // The generation its status last followed.
            generation: status.observed_generation,
            started_at,
            finished_at: None,
            next_run_at: None,
            runs,
            missed_runs: status.missed_runs.unwrap_or(0),
            targets: status.targets.unwrap_or(0),
            last_check: None,
            span,
            traceparent,
            fault_spans: BTreeMap::new(),
            written: BTreeMap::new(),
            unwritten: BTreeSet::new(),
            write_tried: BTreeMap::new(),
            told_injected: status.injected.unwrap_or(0) > 0,
            // A resumed run was started (and, if recovering, aborted) by
            // the controller before: it told them then.
            told_started: true,
            told_aborted: status.phase == Some(faultline_api::Phase::Recovered),
            told_unseen: BTreeSet::new(),
            entry_effects: BTreeMap::new(),
            deleted: BTreeMap::new(),
            refused: BTreeMap::new(),
            refused_pods: BTreeMap::new(),
            lease_until: None,
            closed: false,
            next_step: None,
            candidates: None,
        }
    }

    /// How long until the next step, when nothing that matters changed
    /// since the last one (`seen`); None when a step is due now.
    pub(crate) fn not_yet(&self, seen: &Seen) -> Option<Duration> {
        let (due, last) = self.next_step.as_ref()?;
        if last != seen {
            return None;
        }
        due.checked_duration_since(std::time::Instant::now())
            .filter(|wait| !wait.is_zero())
    }

    /// Opens a span for each fault that has entries now and ends the
    /// spans of faults that have none any more.
    /// A resumed run keeps the traceparent its entries already carry (so
    /// a restart rewrites nothing); `existing` finds it by fault.
    pub(crate) fn fault_spans(
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

    pub(crate) fn end_spans(&mut self) {
        for (_, (mut span, _)) in std::mem::take(&mut self.fault_spans) {
            span.end();
        }
        if let Some(v) = self.run.verdict() {
            self.span
                .set_attribute(KeyValue::new("faultline.verdict", v.as_str()));
        }
        self.span.end();
    }

    /// The traceparent the entries of `fault` carry.
    pub(crate) fn fault_traceparent(&self, fault: &str) -> Option<&str> {
        self.fault_spans
            .get(fault)
            .and_then(|(_, tp)| tp.as_deref())
    }
}

pub(crate) fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// What this controller last wrote on a node for one experiment (a digest:
/// the entries themselves are in the cache once it catches up), and the
/// object's generation after that write: a cached object of an older
/// generation has not caught up with the write yet.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Written {
    pub digest: u64,
    pub generation: i64,
    /// The cache has shown the object at this generation or later: an
    /// object missing from it since was deleted, not yet to arrive.
    pub seen: bool,
    /// When it was written: an object still missing from the cache long
    /// after is taken as deleted too (a reconcile may not have run between
    /// the cache catching up and a deletion; writing again is harmless).
    pub at: std::time::Instant,
    /// Since when the node holds these entries (kept through rewrites that
    /// only renew them, moved by one that adds an entry): its agent's time
    /// to confirm them counts from here.
    pub holding_since: Option<Timestamp>,
    /// A digest of the entry ids written, to tell a renewal from a change.
    pub ids: u64,
    /// What the entries were made from (see `decide::writes`), when a run
    /// step wrote them: while the object is still at `generation` and the
    /// inputs are the same, the node holds what the run wants, with no
    /// entry built to compare.
    pub inputs: Option<u64>,
}
