//! The pure reconciler: desired faults + what is applied + now → actions.
//!
//! No I/O and no clock here: the caller passes time in, executes the actions
//! and reports their outcome back through [`State`]'s methods, so every rule
//! (deadlines, replacement, retries, repeats) is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use faultline_api::{FaultAction, NodeFault, NodeTarget};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// How long a failed apply or removal waits before it is tried again.
pub(crate) const RETRY_AFTER: SignedDuration = SignedDuration::from_secs(1);

/// What the desired-state source currently says.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    /// A valid list of faults (possibly empty: remove everything).
    Faults(Vec<NodeFault>),
    /// The source cannot be read or is invalid; the reason is logged. Applied
    /// faults are kept until their deadlines, nothing new is applied.
    Unknown(String),
}

/// Backend-specific data chosen before a fault is applied and journaled with
/// it, so removal after a crash knows exactly what to undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Receipt {
    #[default]
    None,
    /// The prio band (2..=16) whose netem child carries this latency fault on
    /// every interface of the target.
    Latency { band: u8 },
}

/// One fault the agent has applied, or may have half-applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Applied {
    pub fault: NodeFault,
    pub receipt: Receipt,
    /// False when the journal says "about to apply" but not "applied": the
    /// kernel may hold any part of it.
    pub confirmed: bool,
    /// When a repeating kill fires next.
    pub next_repeat: Option<Timestamp>,
    /// A removal failed; try again at this time.
    pub remove_retry_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
struct Failure {
    key: String,
    retry_at: Timestamp,
}

/// What to do now, in order: removals come before applies so a fault whose
/// parameters changed is removed before its new version is applied (but a
/// partition changed on the same target is only applied again: its apply
/// replaces the old rules in the same transaction).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Remove {
        fault: NodeFault,
        receipt: Receipt,
    },
    Apply {
        fault: NodeFault,
    },
    /// Send a repeating kill's signal again.
    Repeat {
        fault: NodeFault,
    },
    /// Same fault, new deadline or trace parent: journal it, touch nothing.
    Update {
        fault: NodeFault,
    },
}

/// What must be the same for an applied fault to count as the desired one.
/// The deadline and trace parent may change without touching the kernel.
pub(crate) fn spec_key(f: &NodeFault) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        target: &'a NodeTarget,
        #[serde(flatten)]
        action: &'a FaultAction,
    }
    serde_json::to_string(&Key {
        target: &f.target,
        action: &f.action,
    })
    .unwrap_or_else(|e| format!("unserializable:{e}"))
}

/// True when `new` can take `old`'s place with one apply and no removal:
/// partitions on the same target, whose apply rewrites every chain of the id.
fn replaces_in_place(old: &NodeFault, new: &NodeFault) -> bool {
    matches!(
        (&old.action, &new.action),
        (FaultAction::Partition(_), FaultAction::Partition(_))
    ) && old.target == new.target
}

pub(crate) fn deadline(f: &NodeFault) -> Timestamp {
    f.expires_at.0
}

/// A fault is over at its deadline, not after it.
pub(crate) fn expired(f: &NodeFault, now: Timestamp) -> bool {
    deadline(f) <= now
}

/// How often an applied latency fault is refreshed, so that interfaces
/// created in its target since (or qdiscs someone deleted) are covered.
pub(crate) const LATENCY_REFRESH: SignedDuration = SignedDuration::from_secs(2);

/// How often an applied stress fault's workers are looked at: started again
/// when they died of anything but the target's OOM killer.
pub(crate) const STRESS_CHECK: SignedDuration = SignedDuration::from_secs(1);

fn repeat_every(f: &NodeFault) -> Option<SignedDuration> {
    match &f.action {
        FaultAction::Kill(k) => k
            .every
            .map(|e| SignedDuration::from_millis(e.as_millis().min(i64::MAX as u64) as i64)),
        FaultAction::Latency(_) | FaultAction::Network(_) => Some(LATENCY_REFRESH),
        FaultAction::Stress(_) => Some(STRESS_CHECK),
        FaultAction::Partition(_) => None,
    }
}

/// The agent's memory: applied faults and recent failures.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct State {
    applied: BTreeMap<String, Applied>,
    failed: BTreeMap<String, Failure>,
}

impl State {
    /// Rebuilds the state from journal records (`confirmed` false for those
    /// only journaled as "about to apply"). Repeats go on one period after
    /// `now`: a restarted agent keeps firing kills and refreshing latency,
    /// and finds stress workers that ended with the agent before it.
    pub(crate) fn from_journal(
        records: impl IntoIterator<Item = (NodeFault, Receipt, bool)>,
        now: Timestamp,
    ) -> Self {
        let applied = records
            .into_iter()
            .map(|(fault, receipt, confirmed)| {
                let next_repeat = repeat_every(&fault).and_then(|e| now.checked_add(e).ok());
                (
                    fault.id.clone(),
                    Applied {
                        fault,
                        receipt,
                        confirmed,
                        next_repeat,
                        remove_retry_at: None,
                    },
                )
            })
            .collect();
        State {
            applied,
            failed: BTreeMap::new(),
        }
    }

    pub(crate) fn applied(&self) -> impl Iterator<Item = &Applied> {
        self.applied.values()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Applied> {
        self.applied.get(id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }

    /// The actions that bring the kernel from this state to `desired` at `now`.
    pub(crate) fn plan(&self, desired: &Desired, now: Timestamp) -> Vec<Action> {
        let mut removes = Vec::new();
        let mut applies = Vec::new();
        let mut others = Vec::new();
        let wanted: BTreeMap<&str, &NodeFault> = match desired {
            Desired::Faults(fs) => fs.iter().map(|f| (f.id.as_str(), f)).collect(),
            // Unknown desired state: keep exactly what is applied.
            Desired::Unknown(_) => self
                .applied
                .values()
                .map(|a| (a.fault.id.as_str(), &a.fault))
                .collect(),
        };
        let mut replaced = BTreeSet::new();
        for a in self.applied.values() {
            if a.remove_retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let want = wanted.get(a.fault.id.as_str()).copied();
            let same = want.filter(|w| spec_key(w) == spec_key(&a.fault));
            match same {
                // A removal that failed is retried even if the fault is desired
                // again: the old deadline had passed or its spec had changed.
                _ if a.remove_retry_at.is_some() => {
                    removes.push(remove(a));
                    replaced.insert(a.fault.id.as_str());
                }
                // Extended in time before the old deadline was acted on: keep it.
                Some(w) if a.confirmed && !expired(w, now) && expired(&a.fault, now) => {
                    others.push(Action::Update { fault: w.clone() });
                }
                // Shortened to a deadline that has passed: over now.
                _ if expired(&a.fault, now) || same.is_some_and(|w| expired(w, now)) => {
                    removes.push(remove(a));
                    replaced.insert(a.fault.id.as_str());
                }
                // A partition changed in place: its apply empties and refills
                // the fault's chains in one nf_tables transaction, so the
                // target is never left without the cut in between.
                None if want
                    .is_some_and(|w| !expired(w, now) && replaces_in_place(&a.fault, w)) =>
                {
                    if let Some(w) = want {
                        applies.push(Action::Apply { fault: w.clone() });
                    }
                }
                None => {
                    removes.push(remove(a));
                    replaced.insert(a.fault.id.as_str());
                }
                Some(w) if !a.confirmed => {
                    if !expired(w, now) {
                        applies.push(Action::Apply { fault: w.clone() });
                    } else {
                        removes.push(remove(a));
                    }
                }
                Some(w) => {
                    // A later deadline can be extended, but once the applied
                    // one passes the fault is removed, as promised.
                    if w.expires_at != a.fault.expires_at || w.traceparent != a.fault.traceparent {
                        others.push(Action::Update { fault: w.clone() });
                    }
                    if a.next_repeat.is_some_and(|t| t <= now) {
                        others.push(Action::Repeat { fault: w.clone() });
                    }
                }
            }
        }
        for (id, w) in &wanted {
            let present = self.applied.contains_key(*id) && !replaced.contains(id);
            if present || expired(w, now) {
                continue;
            }
            if let Some(f) = self.failed.get(*id)
                && f.key == spec_key(w)
                && f.retry_at > now
            {
                continue;
            }
            applies.push(Action::Apply {
                fault: (*w).clone(),
            });
        }
        removes.extend(applies);
        removes.extend(others);
        removes
    }

    /// When `plan` may next return something without the desired state
    /// changing: a deadline, a repeat or a retry.
    pub(crate) fn next_wakeup(&self, desired: &Desired) -> Option<Timestamp> {
        let mut times: Vec<Timestamp> = Vec::new();
        for a in self.applied.values() {
            times.push(deadline(&a.fault));
            times.extend(a.next_repeat);
            times.extend(a.remove_retry_at);
        }
        if let Desired::Faults(fs) = desired {
            for f in fs {
                if let Some(fail) = self.failed.get(&f.id) {
                    times.push(fail.retry_at.min(deadline(f)));
                }
            }
        }
        times.into_iter().min()
    }

    /// The journal now says "about to apply" for this fault.
    pub(crate) fn applying(&mut self, fault: &NodeFault, receipt: Receipt) {
        self.applied.insert(
            fault.id.clone(),
            Applied {
                fault: fault.clone(),
                receipt,
                confirmed: false,
                next_repeat: None,
                remove_retry_at: None,
            },
        );
    }

    pub(crate) fn apply_succeeded(&mut self, fault: &NodeFault, now: Timestamp) {
        self.failed.remove(&fault.id);
        if let Some(a) = self.applied.get_mut(&fault.id) {
            a.confirmed = true;
            a.next_repeat = repeat_every(fault).and_then(|e| now.checked_add(e).ok());
        }
    }

    /// The apply failed and its traces were removed (journal entry dropped).
    pub(crate) fn apply_failed(&mut self, fault: &NodeFault, now: Timestamp) {
        self.applied.remove(&fault.id);
        self.failed.insert(
            fault.id.clone(),
            Failure {
                key: spec_key(fault),
                retry_at: now + RETRY_AFTER,
            },
        );
    }

    /// The apply failed and undoing it failed too: keep it as applied so the
    /// removal is retried until it succeeds.
    pub(crate) fn apply_failed_dirty(&mut self, fault: &NodeFault, now: Timestamp) {
        self.failed.insert(
            fault.id.clone(),
            Failure {
                key: spec_key(fault),
                retry_at: now + RETRY_AFTER,
            },
        );
        if let Some(a) = self.applied.get_mut(&fault.id) {
            a.remove_retry_at = Some(now);
        }
    }

    pub(crate) fn removed(&mut self, id: &str) {
        self.applied.remove(id);
    }

    pub(crate) fn remove_failed(&mut self, id: &str, now: Timestamp) {
        if let Some(a) = self.applied.get_mut(id) {
            a.remove_retry_at = Some(now + RETRY_AFTER);
        }
    }

    pub(crate) fn repeated(&mut self, id: &str, now: Timestamp) {
        if let Some(a) = self.applied.get_mut(id) {
            let every = repeat_every(&a.fault);
            // From the previous due time, so repeats do not drift; never in the past.
            a.next_repeat = match (a.next_repeat, every) {
                (Some(prev), Some(e)) => prev
                    .checked_add(e)
                    .ok()
                    .map(|t| if t <= now { now + e } else { t }),
                _ => None,
            };
        }
    }

    pub(crate) fn updated(&mut self, fault: &NodeFault) {
        if let Some(a) = self.applied.get_mut(&fault.id) {
            a.fault = fault.clone();
        }
    }

    /// Forget failures of faults no longer desired, so the map stays bounded.
    pub(crate) fn prune_failures(&mut self, desired: &Desired) {
        if let Desired::Faults(fs) = desired {
            let ids: BTreeSet<&str> = fs.iter().map(|f| f.id.as_str()).collect();
            self.failed.retain(|id, _| ids.contains(id.as_str()));
        }
    }

    /// The lowest prio band not used by another latency fault on `target`.
    pub(crate) fn free_band(&self, target: &NodeTarget) -> Option<u8> {
        let used: BTreeSet<u8> = self
            .applied
            .values()
            .filter(|a| &a.fault.target == target)
            .filter_map(|a| match a.receipt {
                Receipt::Latency { band } => Some(band),
                Receipt::None => None,
            })
            .collect();
        (crate::backend::netem::FIRST_BAND..=crate::backend::netem::LAST_BAND)
            .find(|b| !used.contains(b))
    }
}

fn remove(a: &Applied) -> Action {
    Action::Remove {
        fault: a.fault.clone(),
        receipt: a.receipt.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use faultline_api::{Direction, Duration, Kill, Partition, Signal};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    pub(crate) fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    pub(crate) fn partition(id: &str, ns: &str, peer: &str, expires: i64) -> NodeFault {
        NodeFault {
            id: id.into(),
            target: NodeTarget::Netns(ns.into()),
            expires_at: Time(t(expires)),
            traceparent: None,
            action: FaultAction::Partition(Partition {
                direction: Direction::Both,
                peers: vec![peer.into()],
                ports: vec![],
            }),
        }
    }

    fn kill(id: &str, every_ms: Option<u64>, expires: i64) -> NodeFault {
        NodeFault {
            id: id.into(),
            target: NodeTarget::Cgroup("/sys/fs/cgroup/x".into()),
            expires_at: Time(t(expires)),
            traceparent: None,
            action: FaultAction::Kill(Kill {
                method: Default::default(),
                signal: Signal::Kill,
                every: every_ms.and_then(Duration::from_millis),
                sandbox: false,
            }),
        }
    }

    /// Executes a plan as a backend that always succeeds would.
    pub(crate) fn execute(s: &mut State, actions: &[Action], now: Timestamp) {
        for a in actions {
            match a {
                Action::Remove { fault, .. } => s.removed(&fault.id),
                Action::Apply { fault } => {
                    s.applying(fault, Receipt::None);
                    s.apply_succeeded(fault, now);
                }
                Action::Repeat { fault } => s.repeated(&fault.id, now),
                Action::Update { fault } => s.updated(fault),
            }
        }
    }

    fn step(s: &mut State, d: &Desired, now: Timestamp) {
        let p = s.plan(d, now);
        execute(s, &p, now);
    }

    fn ids(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Remove { fault, .. } => format!("remove {}", fault.id),
                Action::Apply { fault } => format!("apply {}", fault.id),
                Action::Repeat { fault } => format!("repeat {}", fault.id),
                Action::Update { fault } => format!("update {}", fault.id),
            })
            .collect()
    }

    #[test]
    fn applies_then_converges() {
        let mut s = State::default();
        let d = Desired::Faults(vec![
            partition("a", "/run/netns/x", "10.0.0.1", 10),
            partition("b", "/run/netns/x", "10.0.0.2", 10),
        ]);
        let p = s.plan(&d, t(0));
        assert_eq!(ids(&p), ["apply a", "apply b"]);
        execute(&mut s, &p, t(0));
        assert!(s.plan(&d, t(1)).is_empty(), "idempotent");
        // Two faults on one target coexist: removing one keeps the other.
        let d2 = Desired::Faults(vec![partition("b", "/run/netns/x", "10.0.0.2", 10)]);
        assert_eq!(ids(&s.plan(&d2, t(1))), ["remove a"]);
    }

    #[test]
    fn expired_never_applied_and_removed_at_deadline() {
        let s = State::default();
        let d = Desired::Faults(vec![partition("a", "/n", "10.0.0.1", 5)]);
        assert!(s.plan(&d, t(5)).is_empty(), "at the deadline it is over");
        assert!(s.plan(&d, t(6)).is_empty());
        let mut s = State::default();
        step(&mut s, &d, t(0));
        assert_eq!(s.next_wakeup(&d), Some(t(5)));
        assert!(s.plan(&d, t(4)).is_empty());
        assert_eq!(ids(&s.plan(&d, t(5))), ["remove a"]);
    }

    #[test]
    fn changed_spec_is_replaced_and_deadline_updated_in_place() {
        let mut s = State::default();
        let d = Desired::Faults(vec![partition("a", "/n", "10.0.0.1", 5)]);
        step(&mut s, &d, t(0));
        // A partition changed on the same target is rewritten in place.
        let d2 = Desired::Faults(vec![partition("a", "/n", "10.0.0.9", 5)]);
        assert_eq!(ids(&s.plan(&d2, t(1))), ["apply a"]);
        // On another target, the old one is removed first.
        let moved = Desired::Faults(vec![partition("a", "/m", "10.0.0.1", 5)]);
        assert_eq!(ids(&s.plan(&moved, t(1))), ["remove a", "apply a"]);
        // Another kind under the same id is a removal and an apply too.
        let other = Desired::Faults(vec![kill("a", None, 5)]);
        assert_eq!(ids(&s.plan(&other, t(1))), ["remove a", "apply a"]);
        let d3 = Desired::Faults(vec![partition("a", "/n", "10.0.0.1", 50)]);
        let p = s.plan(&d3, t(1));
        assert_eq!(ids(&p), ["update a"]);
        execute(&mut s, &p, t(1));
        assert_eq!(s.next_wakeup(&d3), Some(t(50)));
    }

    #[test]
    fn unknown_desired_keeps_until_deadline() {
        let mut s = State::default();
        let d = Desired::Faults(vec![partition("a", "/n", "10.0.0.1", 5)]);
        step(&mut s, &d, t(0));
        let u = Desired::Unknown("bad yaml".into());
        assert!(s.plan(&u, t(1)).is_empty());
        assert_eq!(ids(&s.plan(&u, t(5))), ["remove a"]);
    }

    #[test]
    fn repeats_go_on_after_a_restart() {
        let k = kill("k", Some(4000), 50);
        let s = State::from_journal([(k.clone(), Receipt::None, true)], t(10));
        let d = Desired::Faults(vec![k]);
        // Not at once (a restart fires no extra kill), but one period on.
        assert!(s.plan(&d, t(10)).is_empty());
        assert_eq!(s.next_wakeup(&d), Some(t(14)));
        assert_eq!(ids(&s.plan(&d, t(14))), ["repeat k"]);
    }

    #[test]
    fn half_applied_from_journal() {
        let a = partition("a", "/n", "10.0.0.1", 5);
        let b = partition("b", "/n", "10.0.0.2", 5);
        let s = State::from_journal(
            [(a.clone(), Receipt::None, false), (b, Receipt::None, false)],
            t(0),
        );
        let d = Desired::Faults(vec![a]);
        // Still desired: apply again (idempotent); not desired: remove.
        assert_eq!(ids(&s.plan(&d, t(0))), ["remove b", "apply a"]);
        assert_eq!(ids(&s.plan(&d, t(6))), ["remove a", "remove b"]);
    }

    #[test]
    fn failures_wait_before_retry() {
        let mut s = State::default();
        let f = partition("a", "/n", "10.0.0.1", 50);
        let d = Desired::Faults(vec![f.clone()]);
        s.applying(&f, Receipt::None);
        s.apply_failed(&f, t(0));
        assert!(s.plan(&d, t(0)).is_empty());
        assert_eq!(s.next_wakeup(&d), Some(t(1)));
        assert_eq!(ids(&s.plan(&d, t(1))), ["apply a"]);
        // A changed spec is tried at once.
        let d2 = Desired::Faults(vec![partition("a", "/n", "10.0.0.2", 50)]);
        assert_eq!(ids(&s.plan(&d2, t(0))), ["apply a"]);
        // A failed removal is retried, even when desired again.
        let mut s = State::default();
        step(&mut s, &d, t(0));
        s.remove_failed("a", t(0));
        assert!(s.plan(&Desired::Faults(vec![]), t(0)).is_empty());
        assert_eq!(ids(&s.plan(&d, t(1))), ["remove a", "apply a"]);
    }

    #[test]
    fn kill_repeats_without_drift() {
        let mut s = State::default();
        let d = Desired::Faults(vec![kill("k", Some(2000), 7)]);
        step(&mut s, &d, t(0));
        assert_eq!(s.next_wakeup(&d), Some(t(2)));
        assert!(s.plan(&d, t(1)).is_empty());
        let p = s.plan(&d, t(2));
        assert_eq!(ids(&p), ["repeat k"]);
        execute(&mut s, &p, t(2));
        assert_eq!(s.get("k").and_then(|a| a.next_repeat), Some(t(4)));
        // Late by a lot: next is from now, never in the past.
        step(&mut s, &d, t(6));
        assert_eq!(s.get("k").and_then(|a| a.next_repeat), Some(t(8)));
        assert_eq!(s.next_wakeup(&d), Some(t(7)));
        assert_eq!(ids(&s.plan(&d, t(7))), ["remove k"]);
        let mut once = State::default();
        let d = Desired::Faults(vec![kill("k", None, 7)]);
        step(&mut once, &d, t(0));
        assert_eq!(once.next_wakeup(&d), Some(t(7)));
    }

    #[test]
    fn bands_are_per_target() {
        let mut s = State::default();
        let f = partition("a", "/n", "10.0.0.1", 5);
        s.applying(&f, Receipt::Latency { band: 2 });
        assert_eq!(s.free_band(&f.target), Some(3));
        assert_eq!(s.free_band(&NodeTarget::Netns("/m".into())), Some(2));
    }

    proptest! {
        /// Whatever the desired state and time, executing a plan converges:
        /// the next plan is empty, nothing expired is applied and every
        /// desired live fault is.
        #[test]
        fn plans_converge(
            initial in proptest::collection::vec((0u8..6, 0u8..3, -5i64..20), 0..8),
            next in proptest::collection::vec((0u8..6, 0u8..3, -5i64..20), 0..8),
            now in 0i64..15,
        ) {
            let build = |v: &[(u8, u8, i64)]| {
                let mut seen = BTreeSet::new();
                Desired::Faults(v.iter()
                    .filter(|(id, _, _)| seen.insert(*id))
                    .map(|(id, peer, exp)| partition(&format!("f{id}"), "/n", &format!("10.0.0.{peer}"), *exp))
                    .collect())
            };
            let mut s = State::default();
            let d0 = build(&initial);
            step(&mut s, &d0, t(0));
            let d1 = build(&next);
            step(&mut s, &d1, t(now));
            prop_assert!(s.plan(&d1, t(now)).is_empty());
            let Desired::Faults(fs) = &d1 else { unreachable!() };
            for a in s.applied() {
                prop_assert!(!expired(&a.fault, t(now)));
                prop_assert!(fs.iter().any(|f| f == &a.fault));
            }
            for f in fs.iter().filter(|f| !expired(f, t(now))) {
                prop_assert!(s.get(&f.id).is_some());
            }
        }
    }
}
