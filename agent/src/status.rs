//! What the agent reports about each desired fault (kube mode writes it to
//! the NodeFaults object's status subresource), built from outcomes the
//! agent records as it applies and removes. Pure: no clock, no I/O.

use std::collections::BTreeMap;

use faultline_api::{FaultState, NodeFault, NodeFaultStatus, NodeFaultsStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::reconcile::{expired, spec_key};

/// The last thing that happened to one fault id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Which version of the fault (target and parameters) it happened to.
    pub key: String,
    pub state: FaultState,
    pub reason: Option<String>,
    pub since: Timestamp,
}

/// Outcomes by fault id, kept for the faults still desired.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Outcomes(BTreeMap<String, Outcome>);

impl Outcomes {
    pub(crate) fn record(
        &mut self,
        fault: &NodeFault,
        state: FaultState,
        reason: Option<String>,
        now: Timestamp,
    ) {
        let key = spec_key(fault);
        // A repeated failure keeps the time it started failing.
        if let Some(o) = self.0.get(&fault.id)
            && o.key == key
            && o.state == state
            && o.reason == reason
        {
            return;
        }
        self.0.insert(
            fault.id.clone(),
            Outcome {
                key,
                state,
                reason,
                since: now,
            },
        );
    }

    /// Forgets faults no longer desired, so memory follows the desired list.
    pub(crate) fn retain_desired(&mut self, desired: &[NodeFault]) {
        self.0
            .retain(|id, _| desired.iter().any(|f| f.id == id.as_str()));
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Outcome> {
        self.0.get(id)
    }
}

/// How often a fault's count is published again once it has been (a
/// status write per node per change; the first effect goes out at once).
pub(crate) const PUBLISH_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// Per fault id, what its backend counted: kept across counter resets (a
/// fault re-applied starts its kernel counters from zero) and published
/// at a bounded rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Effects(BTreeMap<String, Counted>);

#[derive(Debug, Clone, Default, PartialEq)]
struct Counted {
    /// Counted by earlier copies of the fault's kernel state.
    earlier: u64,
    /// The last reading of the current copy.
    last: u64,
    published: Option<u64>,
    published_at: Option<Timestamp>,
}

impl Counted {
    fn total(&self) -> u64 {
        self.earlier.saturating_add(self.last)
    }
}

impl Effects {
    /// Takes a reading of the fault's counter; a reading below the last
    /// means the counter started again.
    pub(crate) fn reading(&mut self, id: &str, count: u64) {
        let c = self.0.entry(id.to_owned()).or_default();
        if count < c.last {
            c.earlier = c.earlier.saturating_add(c.last);
        }
        c.last = count;
    }

    /// Makes the latest totals what the status says: the first count and
    /// the first non-zero one at once, later ones every [`PUBLISH_EVERY`],
    /// every one when `all` (a fault about to be removed).
    pub(crate) fn publish(&mut self, now: Timestamp, all: bool) {
        for c in self.0.values_mut() {
            let total = c.total();
            let due = match (c.published, c.published_at) {
                (Some(p), _) if p == total => false,
                (None, _) | (Some(0), _) => true,
                (_, Some(at)) => now.duration_since(at) >= PUBLISH_EVERY,
                (_, None) => true,
            };
            if due || all {
                c.published = Some(total);
                c.published_at = Some(now);
            }
        }
    }

    pub(crate) fn published(&self, id: &str) -> Option<u64> {
        self.0.get(id).and_then(|c| c.published)
    }

    pub(crate) fn retain_desired(&mut self, desired: &[NodeFault]) {
        self.0
            .retain(|id, _| desired.iter().any(|f| f.id == id.as_str()));
    }
}

/// The status for `desired` (the faults of object generation `generation`).
/// `observedGeneration` is `generation` once every desired fault has an
/// outcome (applied, failed or removed), and `previous_observed` until then.
pub(crate) fn build(
    desired: &[NodeFault],
    generation: Option<i64>,
    previous_observed: Option<i64>,
    outcomes: &Outcomes,
    effects: &Effects,
    now: Timestamp,
) -> NodeFaultsStatus {
    let mut faults = Vec::with_capacity(desired.len());
    let mut converged = true;
    for f in desired {
        let key = spec_key(f);
        let entry = match outcomes.get(&f.id).filter(|o| o.key == key) {
            Some(o) => Some((o.state, o.reason.clone(), o.since)),
            // Never applied because its deadline had passed: that is its end.
            None if expired(f, now) => Some((
                FaultState::Removed,
                Some("expired before it was applied".to_owned()),
                f.expires_at.0,
            )),
            None => None,
        };
        match entry {
            Some((state, reason, since)) => faults.push(NodeFaultStatus {
                id: f.id.clone(),
                state,
                reason,
                since: Some(Time(since)),
                effect: effects
                    .published(&f.id)
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            }),
            None => converged = false,
        }
    }
    let applied = faults
        .iter()
        .filter(|s| s.state == FaultState::Applied)
        .count();
    NodeFaultsStatus {
        observed_generation: if converged {
            generation.or(previous_observed)
        } else {
            previous_observed
        },
        applied: Some(u32::try_from(applied).unwrap_or(u32::MAX)),
        faults,
        // The status writer adds it (`cluster::write_status`).
        clock_skew_seconds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::{partition, t};

    #[test]
    fn converged_only_when_every_fault_has_an_outcome() {
        let a = partition("a", "/n", "10.0.0.1", 10);
        let b = partition("b", "/n", "10.0.0.2", 10);
        let desired = vec![a.clone(), b.clone()];
        let mut o = Outcomes::default();
        o.record(&a, FaultState::Applied, None, t(1));
        let s = build(&desired, Some(3), Some(2), &o, &Effects::default(), t(1));
        assert_eq!(s.observed_generation, Some(2), "b has no outcome yet");
        assert_eq!(s.applied, Some(1));
        assert_eq!(s.faults.len(), 1);

        o.record(
            &b,
            FaultState::Failed,
            Some("nft: no such table".into()),
            t(2),
        );
        let s = build(&desired, Some(3), Some(2), &o, &Effects::default(), t(2));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.applied, Some(1));
        let fb = &s.faults[1];
        assert_eq!(
            (fb.id.as_str(), fb.state, fb.reason.as_deref()),
            ("b", FaultState::Failed, Some("nft: no such table"))
        );
    }

    #[test]
    fn an_outcome_of_an_older_version_does_not_count() {
        let a = partition("a", "/n", "10.0.0.1", 10);
        let mut o = Outcomes::default();
        o.record(&a, FaultState::Applied, None, t(1));
        let changed = partition("a", "/n", "10.0.0.9", 10);
        let s = build(&[changed], Some(2), Some(1), &o, &Effects::default(), t(2));
        assert_eq!((s.observed_generation, s.faults.len()), (Some(1), 0));
    }

    #[test]
    fn expired_without_outcome_reads_as_removed() {
        let a = partition("a", "/n", "10.0.0.1", 5);
        let s = build(
            std::slice::from_ref(&a),
            Some(4),
            None,
            &Outcomes::default(),
            &Effects::default(),
            t(6),
        );
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.faults[0].state, FaultState::Removed);
        assert_eq!(s.faults[0].since, Some(Time(t(5))));
        assert_eq!(s.applied, Some(0));
    }

    #[test]
    fn effects_survive_counter_resets_and_publish_at_a_bounded_rate() {
        let a = partition("a", "/n", "10.0.0.1", 100);
        let mut o = Outcomes::default();
        o.record(&a, FaultState::Applied, None, t(1));
        let mut e = Effects::default();
        let effect = |e: &Effects| {
            build(std::slice::from_ref(&a), Some(1), None, &o, e, t(1)).faults[0].effect
        };
        assert_eq!(effect(&e), None, "nothing read yet");
        e.reading("a", 0);
        e.publish(t(1), false);
        assert_eq!(
            effect(&e),
            Some(0),
            "a zero is published: it can be counted"
        );
        e.reading("a", 3);
        e.publish(t(2), false);
        assert_eq!(effect(&e), Some(3), "the first effect goes out at once");
        e.reading("a", 9);
        e.publish(t(5), false);
        assert_eq!(effect(&e), Some(3), "held back until PUBLISH_EVERY passed");
        // Re-applied: the kernel counts from zero again.
        e.reading("a", 2);
        e.publish(t(12), false);
        assert_eq!(effect(&e), Some(11));
        e.reading("a", 4);
        e.publish(t(13), true);
        assert_eq!(effect(&e), Some(13), "published at once on removal");
        e.retain_desired(&[]);
        assert_eq!(e.published("a"), None);
    }

    #[test]
    fn repeated_failures_keep_their_first_time_and_pruning_follows_desired() {
        let a = partition("a", "/n", "10.0.0.1", 10);
        let b = partition("b", "/n", "10.0.0.2", 10);
        let mut o = Outcomes::default();
        o.record(&a, FaultState::Failed, Some("x".into()), t(1));
        o.record(&a, FaultState::Failed, Some("x".into()), t(2));
        assert_eq!(o.get("a").map(|o| o.since), Some(t(1)));
        o.record(&b, FaultState::Applied, None, t(2));
        o.retain_desired(std::slice::from_ref(&b));
        assert!(o.get("a").is_none() && o.get("b").is_some());
    }
}
