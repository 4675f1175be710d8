//! The agent's loop: the pure reconciler driven by desired-state events and
//! deadlines, with the journal written around every kernel change.
//!
//! The loop is synchronous on its own thread: it waits for the next event
//! with a timeout set to the next deadline, so a fault is removed at its
//! `expiresAt` to the millisecond whatever the sources do. Sources (the
//! standalone file, the Kubernetes API) feed it the same [`Event`]s through
//! [`Events`]: a channel, or the file source itself, which the loop's thread
//! waits on directly so a change to the file wakes one thread, not a chain.

use std::{
    collections::BTreeMap,
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use faultline_api::{FaultAction, FaultState, NodeFault, NodeFaultsStatus, NodeTarget};
use jiff::Timestamp;

use crate::{
    backend::{Backend, BackendError},
    journal::{Journal, Record, RecordState},
    metrics::Metrics,
    reconcile::{Action, Desired, Receipt, State, deadline, expired, spec_key},
    report, spans,
    status::{self, Effects, Outcomes},
};

/// What sources tell the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Desired(Desired),
    /// The desired state of one generation of a NodeFaults object (kube
    /// mode): the status reports which generation the agent converged to.
    Versioned {
        desired: Desired,
        generation: i64,
    },
    /// SIGTERM/SIGINT: remove everything and stop.
    Shutdown,
}

/// What waiting for an event gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    Event(Event),
    Timeout,
    /// No event can come any more (every sender is gone).
    Closed,
}

/// Where the loop's events come from.
pub trait Events {
    /// Waits at most `timeout` for the next event.
    fn wait(&mut self, timeout: Duration) -> Wait;
}

impl Events for Receiver<Event> {
    fn wait(&mut self, timeout: Duration) -> Wait {
        match self.recv_timeout(timeout) {
            Ok(e) => Wait::Event(e),
            Err(RecvTimeoutError::Timeout) => Wait::Timeout,
            Err(RecvTimeoutError::Disconnected) => Wait::Closed,
        }
    }
}

/// Wall-clock time, injectable for tests.
pub trait Clock: Send {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Longest wait when nothing is due: a stalled clock source cannot park the
/// loop, and the backend lets go of idle resources (see `Backend::tidy`).
const IDLE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Agent<B: Backend> {
    backend: B,
    journal: Journal,
    state: State,
    desired: Desired,
    metrics: Metrics,
    outcomes: Outcomes,
    effects: Effects,
    /// When the applied faults' effects were last read.
    effects_read_at: Option<Timestamp>,
    generation: Option<i64>,
    observed: Option<i64>,
    status: Option<StatusSink>,
    /// Kube mode: anyone who can write a NodeFaults object reaches this
    /// agent, so it applies only pod targets, for at most a day.
    cluster: bool,
}

/// How far ahead a fault's `expiresAt` may be in kube mode.
const MAX_AHEAD: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// How often the applied faults' counters are read while a status is
/// reported: a fault's first effect reaches the status within this.
const READ_EFFECTS_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(2);

/// Where the agent publishes its status after every change (kube mode
/// writes it to the API); it holds None until the first status.
pub(crate) type StatusSink = tokio::sync::watch::Sender<Option<NodeFaultsStatus>>;

impl<B: Backend> Agent<B> {
    /// Loads the journal and, before anything else, removes every journaled
    /// fault that is expired or no longer in `desired` (including those that
    /// were only about to be applied when the last agent died).
    pub fn start(
        backend: B,
        journal: Journal,
        desired: Desired,
        metrics: Metrics,
        now: Timestamp,
    ) -> Self {
        if journal.set_aside() > 0 {
            tracing::warn!(
                "the journal is from an earlier boot: its {} fault(s) ended with that boot",
                journal.set_aside()
            );
        }
        let state = State::from_journal(
            journal.records().map(|r| {
                (
                    r.fault.clone(),
                    r.receipt.clone(),
                    r.state == RecordState::Applied,
                )
            }),
            now,
        );
        let mut agent = Agent {
            backend,
            journal,
            state,
            desired,
            metrics,
            outcomes: Outcomes::default(),
            effects: Effects::default(),
            effects_read_at: None,
            generation: None,
            observed: None,
            status: None,
            cluster: false,
        };
        if let Desired::Unknown(why) = &agent.desired {
            tracing::warn!(
                "desired state unusable at start, keeping journaled faults until their deadlines: {why}"
            );
        }
        let found = agent.state.applied().count();
        let removals: Vec<Action> = agent
            .state
            .plan(&agent.desired, now)
            .into_iter()
            .filter(|a| matches!(a, Action::Remove { .. }))
            .collect();
        let n = removals.len();
        for a in removals {
            agent.execute(a, now);
        }
        tracing::info!(
            "started: {found} fault(s) in the journal, {n} stale removed before anything else"
        );
        agent
    }

    /// Kube mode: from now on only `pod` targets are applied (`netns`,
    /// `pid` and `cgroup` stay for standalone mode, whose file only root
    /// writes), and none whose `expiresAt` is more than a day ahead.
    pub fn cluster_mode(&mut self) {
        self.cluster = true;
    }

    /// Why a fault must not be applied here, whatever the kernel would say.
    fn refusal(&self, fault: &NodeFault, now: Timestamp) -> Option<String> {
        if !self.cluster {
            return None;
        }
        if !matches!(fault.target, NodeTarget::Pod(_)) {
            return Some(
                "refused: in kube mode only pod targets are applied (netns, pid and cgroup targets are for standalone mode)"
                    .into(),
            );
        }
        let ahead = deadline(fault).duration_since(now);
        (ahead > MAX_AHEAD).then(|| {
            format!(
                "refused: expiresAt {} is more than 24h ahead",
                deadline(fault)
            )
        })
    }

    /// Publishes a status to `sink` after every change from now on.
    pub fn report_to(&mut self, sink: StatusSink) {
        self.status = Some(sink);
    }

    /// The status of the desired faults as of `now` (None while the desired
    /// state is unknown: the last status stands).
    pub(crate) fn status(&self, now: Timestamp) -> Option<NodeFaultsStatus> {
        match &self.desired {
            Desired::Faults(list) => Some(status::build(
                list,
                self.generation,
                self.observed,
                &self.outcomes,
                &self.effects,
                now,
            )),
            Desired::Unknown(_) => None,
        }
    }

    fn publish(&mut self, now: Timestamp) {
        let Some(status) = self.status(now) else {
            return;
        };
        self.observed = status.observed_generation;
        if let Some(sink) = &self.status {
            sink.send_if_modified(|current| {
                if current.as_ref() == Some(&status) {
                    false
                } else {
                    *current = Some(status);
                    true
                }
            });
        }
    }

    pub(crate) fn set_desired(&mut self, d: Desired) {
        if let Desired::Unknown(why) = &d {
            tracing::warn!(
                "desired state unusable, keeping {} applied fault(s) until their deadlines: {why}",
                self.state.applied().count()
            );
        }
        self.state.prune_failures(&d);
        if let Desired::Faults(list) = &d {
            self.outcomes.retain_desired(list);
            self.effects.retain_desired(list);
        }
        self.desired = d;
    }

    /// A desired state that came with its object's generation.
    pub(crate) fn set_versioned(&mut self, d: Desired, generation: i64) {
        if matches!(d, Desired::Faults(_)) {
            self.generation = Some(generation);
        }
        self.set_desired(d);
    }

    /// Brings the kernel to the desired state as of `now`.
    pub fn reconcile(&mut self, now: Timestamp) {
        for a in self.state.plan(&self.desired, now) {
            self.execute(a, now);
        }
        let mut active: BTreeMap<&'static str, u64> = BTreeMap::new();
        for a in self.state.applied() {
            *active.entry(a.fault.action.kind()).or_default() += 1;
        }
        self.metrics.set_active(active);
        if self.status.is_some()
            && self
                .effects_read_at
                .is_none_or(|t| now.duration_since(t) >= READ_EFFECTS_EVERY)
        {
            self.read_effects(now);
        }
        self.publish(now);
        self.backend.tidy();
        // After the kernel changes, so a rewrite never delays one.
        if let Err(e) = self.journal.tidy() {
            tracing::warn!(
                "cannot compact the journal (appending still works): {}",
                report(&e)
            );
        }
    }

    /// Reads what every applied fault has done so far.
    fn read_effects(&mut self, now: Timestamp) {
        self.effects_read_at = Some(now);
        let applied: Vec<(NodeFault, Receipt)> = self
            .state
            .applied()
            .filter(|a| a.confirmed)
            .map(|a| (a.fault.clone(), a.receipt.clone()))
            .collect();
        for (fault, receipt) in &applied {
            self.read_effect(fault, receipt);
        }
        self.effects.publish(now, false);
    }

    fn read_effect(&mut self, fault: &NodeFault, receipt: &Receipt) {
        match self.backend.effect(fault, receipt) {
            Ok(Some(n)) => self.effects.reading(&fault.id, n),
            Ok(None) => {}
            // Evidence missing for a turn: the last count stands.
            Err(e) => {
                tracing::debug!(fault = %fault.id, "{}: cannot count its effect: {e}", fault.id)
            }
        }
    }

    /// When the loop must next run without any event.
    pub(crate) fn next_wakeup(&self) -> Option<Timestamp> {
        let next = self.state.next_wakeup(&self.desired);
        let reading = match (&self.status, self.effects_read_at) {
            (Some(_), Some(t)) if !self.state.is_empty() => t.checked_add(READ_EFFECTS_EVERY).ok(),
            _ => None,
        };
        match (next, reading) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes everything applied; true when nothing is left.
    pub(crate) fn shutdown(&mut self, now: Timestamp) -> bool {
        self.desired = Desired::Faults(Vec::new());
        // Failed removals are retried a few times, a short while apart.
        for attempt in 0..3 {
            let removals: Vec<Action> = self
                .state
                .applied()
                .map(|a| Action::Remove {
                    fault: a.fault.clone(),
                    receipt: a.receipt.clone(),
                })
                .collect();
            for a in removals {
                self.execute(a, now);
            }
            if self.state.is_empty() {
                return true;
            }
            if attempt < 2 {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let left: Vec<&str> = self.state.applied().map(|a| a.fault.id.as_str()).collect();
        tracing::error!(
            "could not remove {} (kept in the journal for the next start)",
            left.join(", ")
        );
        false
    }

    /// Runs until a Shutdown event (or every sender is gone); returns
    /// whether everything was removed.
    pub fn run(mut self, events: &mut dyn Events, clock: &dyn Clock) -> bool {
        loop {
            let now = clock.now();
            self.reconcile(now);
            let wait = self.next_wakeup().map_or(IDLE_WAIT, |t| {
                let ms = t
                    .duration_since(clock.now())
                    .as_millis()
                    .clamp(0, IDLE_WAIT.as_millis() as i128);
                // One millisecond late rather than a spin of early wake-ups.
                Duration::from_millis(ms as u64 + 1)
            });
            match events.wait(wait) {
                Wait::Event(Event::Desired(d)) => self.set_desired(d),
                Wait::Event(Event::Versioned {
                    desired,
                    generation,
                }) => self.set_versioned(desired, generation),
                Wait::Event(Event::Shutdown) | Wait::Closed => {
                    return self.shutdown(clock.now());
                }
                Wait::Timeout => {}
            }
        }
    }

    fn execute(&mut self, action: Action, now: Timestamp) {
        match action {
            Action::Apply { fault } => self.apply(&fault, now),
            Action::Remove { fault, receipt } => self.remove(&fault, &receipt, now),
            Action::Repeat { fault } => {
                let receipt = self
                    .state
                    .get(&fault.id)
                    .map(|a| a.receipt.clone())
                    .unwrap_or_default();
                match self.backend.repeat(&fault, &receipt) {
                    Ok(true) => {
                        spans::record("inject", &fault, Ok(()));
                        if matches!(
                            fault.action,
                            FaultAction::Latency(_) | FaultAction::Network(_)
                        ) {
                            tracing::info!(fault = %fault.id,
                                "{}: {} extended to interfaces created since",
                                fault.id,
                                fault.action.kind()
                            );
                        }
                    }
                    // A refresh that found everything in place, or a
                    // fault that ended for good (said below).
                    Ok(false) => {}
                    Err(e) => {
                        spans::record("inject", &fault, Err(&e.to_string()));
                        self.metrics.failed(fault.action.kind(), "repeat");
                        tracing::warn!(fault = %fault.id, kind = fault.action.kind(), "{}: repeat failed: {e}", fault.id);
                    }
                }
                if let Some(why) = self.backend.ended(&fault) {
                    self.outcomes
                        .record(&fault, FaultState::Applied, Some(why), now);
                }
                self.state.repeated(&fault.id, now);
            }
            Action::Update { fault } => {
                // A deadline moved past what kube mode allows: the fault
                // keeps the one it was applied with.
                if let Some(why) = self.refusal(&fault, now) {
                    let why = format!("{why}; the fault keeps its earlier deadline");
                    let said = self.outcomes.get(&fault.id).is_some_and(|o| {
                        o.key == spec_key(&fault) && o.reason.as_deref() == Some(why.as_str())
                    });
                    self.outcomes
                        .record(&fault, FaultState::Failed, Some(why.clone()), now);
                    if !said {
                        tracing::warn!(fault = %fault.id, "{}: {why}", fault.id);
                    }
                    // Its own deadline passed: it ends now, as promised.
                    if let Some(a) = self.state.get(&fault.id)
                        && expired(&a.fault, now)
                    {
                        let (old, receipt) = (a.fault.clone(), a.receipt.clone());
                        self.remove(&old, &receipt, now);
                    }
                    return;
                }
                let receipt = self
                    .state
                    .get(&fault.id)
                    .map(|a| a.receipt.clone())
                    .unwrap_or_default();
                match self.journal.put(Record {
                    state: RecordState::Applied,
                    fault: fault.clone(),
                    receipt,
                }) {
                    Ok(()) => self.state.updated(&fault),
                    Err(e) => tracing::warn!(fault = %fault.id,
                        "{}: keeping the old deadline: {}",
                        fault.id,
                        report(&e)
                    ),
                }
            }
        }
    }

    fn receipt_for(&self, fault: &NodeFault) -> Result<Receipt, String> {
        if let Some(a) = self.state.get(&fault.id) {
            // A half-applied fault being applied again keeps its band.
            return Ok(a.receipt.clone());
        }
        match fault.action {
            // Network faults share latency's bands (and its receipt).
            FaultAction::Latency(_) | FaultAction::Network(_) => self
                .state
                .free_band(&fault.target)
                .map(|band| Receipt::Latency { band })
                .ok_or_else(|| {
                    "every netem band of this target is taken (15 latency and network faults)"
                        .into()
                }),
            _ => Ok(Receipt::None),
        }
    }

    fn apply(&mut self, fault: &NodeFault, now: Timestamp) {
        let kind = fault.action.kind();
        let started = Instant::now();
        if let Some(why) = self.refusal(fault, now) {
            return self.apply_refused(fault, now, &why);
        }
        let receipt = match self.receipt_for(fault) {
            Ok(r) => r,
            Err(why) => return self.apply_refused(fault, now, &why),
        };
        if let Err(e) = self.journal.put(Record {
            state: RecordState::Applying,
            fault: fault.clone(),
            receipt: receipt.clone(),
        }) {
            // Nothing is applied that the journal does not know of.
            return self.apply_refused(fault, now, &report(&e));
        }
        self.state.applying(fault, receipt.clone());
        match self.backend.apply(fault, &receipt) {
            Ok(()) => {
                if let Err(e) = self.journal.put(Record {
                    state: RecordState::Applied,
                    fault: fault.clone(),
                    receipt,
                }) {
                    // The record still says "applying", which a restart also undoes.
                    tracing::warn!(fault = %fault.id,
                        "{}: applied, but the journal still says applying: {}",
                        fault.id,
                        report(&e)
                    );
                }
                self.state.apply_succeeded(fault, now);
                self.outcomes.record(fault, FaultState::Applied, None, now);
                self.metrics.applied(kind, started.elapsed());
                spans::record("inject", fault, Ok(()));
                tracing::info!(fault = %fault.id, kind,
                    "{}: applied {kind} on {} until {}",
                    fault.id,
                    spans::target_name(&fault.target),
                    deadline(fault)
                );
            }
            Err(e) => {
                let why = e.to_string();
                // Undo whatever part was applied before the error.
                match self.backend.remove(fault, &receipt) {
                    Ok(()) | Err(BackendError::Gone(_)) => {
                        if let Err(je) = self.journal.delete(&fault.id) {
                            tracing::warn!(fault = %fault.id, "{}: {}", fault.id, report(&je));
                        }
                        self.state.apply_failed(fault, now);
                    }
                    Err(undo) => {
                        tracing::error!(fault = %fault.id, kind,
                            "{}: undoing the failed apply failed too: {undo}",
                            fault.id
                        );
                        self.state.apply_failed_dirty(fault, now);
                    }
                }
                self.metrics.failed(kind, "apply");
                self.outcomes
                    .record(fault, FaultState::Failed, Some(why.clone()), now);
                spans::record("inject", fault, Err(&why));
                tracing::warn!(fault = %fault.id, kind,
                    "{}: cannot apply {kind}: {why} (retrying in 1s)",
                    fault.id
                );
            }
        }
    }

    fn apply_refused(&mut self, fault: &NodeFault, now: Timestamp, why: &str) {
        self.state.apply_failed(fault, now);
        self.metrics.failed(fault.action.kind(), "apply");
        // Retried every second: said once per version of the fault and reason.
        let said = self.outcomes.get(&fault.id).is_some_and(|o| {
            o.key == spec_key(fault)
                && o.state == FaultState::Failed
                && o.reason.as_deref() == Some(why)
        });
        self.outcomes
            .record(fault, FaultState::Failed, Some(why.to_owned()), now);
        if !said {
            spans::record("inject", fault, Err(why));
            tracing::warn!(fault = %fault.id, "{}: not applied: {why}", fault.id);
        }
    }

    fn remove(&mut self, fault: &NodeFault, receipt: &Receipt, now: Timestamp) {
        let kind = fault.action.kind();
        // The last count, before the removal takes the kernel's counters
        // with it: in the status, and in the log for standalone mode.
        if self.state.get(&fault.id).is_some_and(|a| a.confirmed) {
            self.read_effect(fault, receipt);
            self.effects.publish(now, true);
            if let Some(n) = self.effects.published(&fault.id) {
                tracing::info!(fault = %fault.id, kind, "{}: effect: {n} {}", fault.id, fault.action.effect_unit());
            }
        }
        match self.backend.remove(fault, receipt) {
            Ok(()) | Err(BackendError::Gone(_)) => {
                if let Err(e) = self.journal.delete(&fault.id) {
                    // The kernel is clean; a restart would only remove it again.
                    tracing::warn!(fault = %fault.id, "{}: removed, but {}", fault.id, report(&e));
                }
                self.state.removed(&fault.id);
                let late =
                    expired(fault, now).then(|| now.duration_since(deadline(fault)).unsigned_abs());
                let reason = if late.is_some() {
                    "expired"
                } else {
                    "no longer desired"
                };
                self.outcomes
                    .record(fault, FaultState::Removed, Some(reason.into()), now);
                self.metrics.removed(kind, late);
                spans::record("recover", fault, Ok(()));
                match late {
                    Some(l) => tracing::info!(fault = %fault.id, kind,
                        "{}: removed {kind} at its deadline (+{} ms)",
                        fault.id,
                        l.as_millis()
                    ),
                    None => tracing::info!(fault = %fault.id, kind, "{}: removed {kind}", fault.id),
                }
            }
            Err(e) => {
                let why = e.to_string();
                self.state.remove_failed(&fault.id, now);
                self.metrics.failed(kind, "remove");
                self.outcomes.record(
                    fault,
                    FaultState::Failed,
                    Some(format!("cannot remove: {why}")),
                    now,
                );
                spans::record("recover", fault, Err(&why));
                tracing::warn!(fault = %fault.id, kind,
                    "{}: cannot remove {kind}: {why} (retrying in 1s)",
                    fault.id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::{Call, Recording},
        reconcile::tests::{partition, t},
    };

    fn agent(
        dir: &std::path::Path,
        rec: &Recording,
        d: Desired,
        now: Timestamp,
    ) -> Agent<Recording> {
        let j = Journal::open(dir).expect("journal");
        Agent::start(rec.clone(), j, d, Metrics::default(), now)
    }

    fn journal_ids(dir: &std::path::Path) -> Vec<(String, RecordState)> {
        Journal::peek(dir)
            .expect("journal")
            .into_iter()
            .map(|r| (r.fault.id, r.state))
            .collect()
    }

    #[test]
    fn effects_are_read_while_reporting_and_once_more_at_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut ag = agent(dir.path(), &rec, Desired::Faults(vec![a.clone()]), t(0));
        let (tx, rx) = tokio::sync::watch::channel(None);
        ag.report_to(tx);
        let effect = || {
            rx.borrow()
                .as_ref()
                .and_then(|s| s.faults.first().and_then(|f| f.effect))
        };
        let set = |n: u64| {
            rec.effects.lock().expect("lock").insert("a".into(), n);
        };
        ag.reconcile(t(0));
        assert_eq!(effect(), None, "the backend counts nothing yet");
        set(5);
        assert_eq!(ag.next_wakeup(), Some(t(2)), "woken to read again");
        ag.reconcile(t(1));
        assert_eq!(effect(), None, "not read again before READ_EFFECTS_EVERY");
        ag.reconcile(t(2));
        assert_eq!(effect(), Some(5));
        set(8);
        ag.reconcile(t(4));
        assert_eq!(effect(), Some(5), "held back");
        set(9);
        // Its deadline: read once more and published as it goes.
        ag.set_desired(Desired::Faults(vec![a.clone()]));
        ag.remove(&a, &Receipt::None, t(5));
        assert_eq!(ag.status(t(5)).and_then(|s| s.faults[0].effect), Some(9));
    }

    #[test]
    fn kube_mode_applies_only_pod_targets_for_at_most_a_day() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        let on_netns = partition("host", "/proc/1/ns/net", "10.0.0.1", 100);
        let pod = |id: &str, expires: i64| NodeFault {
            id: id.into(),
            target: NodeTarget::Pod(faultline_api::PodRef {
                uid: "6f1c2d3e-0000-4000-8000-000000000001".into(),
            }),
            ..partition(id, "/n", "10.0.0.1", expires)
        };
        let day = 24 * 3600;
        let desired = vec![on_netns, pod("soon", 100), pod("too-far", day + 10)];
        let mut ag = agent(dir.path(), &rec, Desired::Faults(desired), t(0));
        ag.cluster_mode();
        ag.reconcile(t(0));
        ag.reconcile(t(2));
        assert_eq!(
            rec.calls(),
            [Call::Apply("soon".into())],
            "only the pod, within a day"
        );
        let status = ag.status(t(2)).expect("status");
        let reason = |id: &str| {
            status
                .faults
                .iter()
                .find(|f| f.id == id)
                .map(|f| (f.state, f.reason.clone().unwrap_or_default()))
                .expect("reported")
        };
        let (state, why) = reason("host");
        assert_eq!(state, FaultState::Failed);
        assert!(why.contains("only pod targets"), "{why}");
        let (state, why) = reason("too-far");
        assert_eq!(state, FaultState::Failed);
        assert!(why.contains("more than 24h ahead"), "{why}");
        assert!(journal_ids(dir.path()).iter().all(|(id, _)| id == "soon"));
        // Moving an applied fault's deadline past a day is refused too: it
        // keeps the deadline it was applied with.
        let far = pod("soon", day + 1000);
        ag.set_desired(Desired::Faults(vec![far]));
        ag.reconcile(t(3));
        let status = ag.status(t(3)).expect("status");
        let soon = &status.faults[0];
        assert_eq!(soon.state, FaultState::Failed);
        assert!(
            soon.reason
                .as_deref()
                .is_some_and(|r| r.contains("keeps its earlier deadline")),
            "{soon:?}"
        );
        ag.reconcile(t(100));
        assert_eq!(
            rec.calls().last(),
            Some(&Call::Remove("soon".into())),
            "{:?}",
            rec.calls()
        );
    }

    #[test]
    fn journals_around_applies_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut ag = agent(dir.path(), &rec, Desired::Faults(vec![a.clone()]), t(0));
        ag.reconcile(t(0));
        assert_eq!(rec.calls(), [Call::Apply("a".into())]);
        assert_eq!(
            journal_ids(dir.path()),
            [("a".into(), RecordState::Applied)]
        );
        ag.reconcile(t(1));
        assert_eq!(rec.calls().len(), 1, "idempotent");
        assert_eq!(ag.next_wakeup(), Some(t(10)));
        ag.reconcile(t(10));
        assert_eq!(rec.calls()[1], Call::Remove("a".into()));
        assert!(journal_ids(dir.path()).is_empty());
    }

    #[test]
    fn restart_removes_stale_before_anything_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        let a = partition("a", "/n", "10.0.0.1", 10);
        let b = partition("b", "/n", "10.0.0.2", 10);
        let mut ag = agent(
            dir.path(),
            &rec,
            Desired::Faults(vec![a.clone(), b.clone()]),
            t(0),
        );
        ag.reconcile(t(0));
        drop(ag); // as after SIGKILL: nothing removed
        let rec2 = Recording::default();
        let c = partition("c", "/n", "10.0.0.3", 10);
        let mut ag = agent(dir.path(), &rec2, Desired::Faults(vec![b.clone(), c]), t(1));
        assert_eq!(
            rec2.calls(),
            [Call::Remove("a".into())],
            "only the stale one, before any apply"
        );
        ag.reconcile(t(1));
        assert_eq!(rec2.calls()[1..], [Call::Apply("c".into())]);
        assert!(ag.shutdown(t(2)));
        assert!(journal_ids(dir.path()).is_empty());
    }

    #[test]
    fn failed_apply_is_undone_and_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        rec.fail(Call::Apply("a".into()), BackendError::Failed("nope".into()));
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut ag = agent(dir.path(), &rec, Desired::Faults(vec![a]), t(0));
        ag.reconcile(t(0));
        assert_eq!(
            rec.calls(),
            [Call::Apply("a".into()), Call::Remove("a".into())]
        );
        assert!(journal_ids(dir.path()).is_empty());
        assert_eq!(ag.next_wakeup(), Some(t(1)));
        ag.reconcile(t(0));
        assert_eq!(rec.calls().len(), 2, "waits before retrying");
    }

    #[test]
    fn failed_removal_stays_journaled_and_shutdown_reports_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        rec.fail(
            Call::Remove("a".into()),
            BackendError::Failed("busy".into()),
        );
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut ag = agent(dir.path(), &rec, Desired::Faults(vec![a]), t(0));
        ag.reconcile(t(0));
        ag.set_desired(Desired::Faults(vec![]));
        ag.reconcile(t(1));
        assert_eq!(
            journal_ids(dir.path()),
            [("a".into(), RecordState::Applied)]
        );
        assert!(!ag.shutdown(t(2)));
    }

    #[test]
    fn gone_target_counts_as_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        rec.fail(
            Call::Remove("a".into()),
            BackendError::Gone("netns gone".into()),
        );
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut ag = agent(dir.path(), &rec, Desired::Faults(vec![a]), t(0));
        ag.reconcile(t(0));
        assert!(ag.shutdown(t(1)));
        assert!(journal_ids(dir.path()).is_empty());
    }

    #[test]
    fn run_removes_at_deadline_and_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Recording::default();
        let soon = Timestamp::now() + jiff::SignedDuration::from_millis(150);
        let mut a = partition("a", "/n", "10.0.0.1", 0);
        a.expires_at = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(soon);
        let b = partition("b", "/n", "10.0.0.2", 1_000_000);
        let ag = agent(
            dir.path(),
            &rec,
            Desired::Faults(vec![a, b]),
            Timestamp::now(),
        );
        let (tx, mut rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || ag.run(&mut rx, &SystemClock));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!rec.calls().contains(&Call::Remove("a".into())));
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            rec.calls().contains(&Call::Remove("a".into())),
            "{:?}",
            rec.calls()
        );
        tx.send(Event::Shutdown).expect("send");
        assert!(h.join().expect("join"));
        assert_eq!(rec.calls().last(), Some(&Call::Remove("b".into())));
    }
}
