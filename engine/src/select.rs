//! Target planning: which candidates each named target selects.
//!
//! Choices are deterministic for a seed and stable under churn: candidates
//! are ranked by a hash of (seed, target name, candidate id) — rendezvous
//! hashing — so when a selected pod goes away its replacement is the next in
//! rank, and the other selections do not move.

use std::{collections::BTreeMap, sync::Arc};

use faultline_api::{ExperimentSpec, SelectionMode, TargetSelector};

/// A candidate's id, shared: a run holds each target's id in its plan and
/// in every instance on it, and 150 000 copies each step would be most of
/// a large run's memory and time.
pub type TargetId = Arc<str>;

/// Something a target can select: a pod, or a local service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// Unique: a pod UID, or a local service's name.
    pub id: TargetId,
    pub namespace: Arc<str>,
    pub labels: Labels,
}

/// A candidate's labels, shared: pods of one workload carry the same set,
/// and a large cluster's candidates are rebuilt at every step.
pub type Labels = Arc<BTreeMap<String, String>>;

impl Candidate {
    pub fn new(id: &str, namespace: &str, labels: &[(&str, &str)]) -> Self {
        Candidate {
            id: id.into(),
            namespace: namespace.into(),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
        }
    }
}

/// Target name → selected candidate ids (sorted).
pub type Plan = BTreeMap<String, Vec<TargetId>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the targets select {selected} pods, more than limits.maxTargets = {max}; nothing was injected"
    )]
    TooManyTargets { selected: usize, max: u32 },
    #[error(
        "target {target} would take {selected} of the {matching} pods it matches, more than limits.maxPercent = {max}%; nothing was injected"
    )]
    OverShare {
        target: String,
        selected: usize,
        matching: usize,
        max: u32,
    },
}

pub fn matches(sel: &TargetSelector, default_namespace: &str, c: &Candidate) -> bool {
    let ns_ok = if sel.namespaces.is_empty() {
        *c.namespace == *default_namespace
    } else {
        sel.namespaces.iter().any(|n| **n == *c.namespace)
    };
    ns_ok && sel.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v))
}

/// How many of `matching` candidates a selector takes.
pub fn count(sel: &TargetSelector, matching: usize) -> usize {
    let wanted = match sel.mode {
        SelectionMode::All => matching,
        SelectionMode::One => 1,
        SelectionMode::Fixed => sel.value.unwrap_or(1) as usize,
        // Rounded up: 10 % of 3 pods is 1 pod, not 0.
        SelectionMode::Percent => (matching * sel.value.unwrap_or(100) as usize).div_ceil(100),
    };
    wanted.min(matching)
}

/// FNV-1a over the parts, separated so ("ab","c") ≠ ("a","bc").
fn rank(seed: u64, target: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for part in [target.as_bytes(), &[0xff], id.as_bytes()] {
        for b in part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The candidates one target selects.
pub fn select(
    name: &str,
    sel: &TargetSelector,
    default_namespace: &str,
    candidates: &[Candidate],
    seed: u64,
) -> Vec<TargetId> {
    // Ranked once per candidate and sorted without copying ids: at
    // 150 000 pods this is most of a step's cost.
    let mut ranked: Vec<(u64, &TargetId)> = candidates
        .iter()
        .filter(|c| matches(sel, default_namespace, c))
        .map(|c| (rank(seed, name, &c.id), &c.id))
        .collect();
    ranked.sort_unstable();
    ranked.dedup_by(|a, b| a.1 == b.1);
    let n = count(sel, ranked.len());
    let mut ids: Vec<TargetId> = ranked[..n].iter().map(|(_, id)| Arc::clone(id)).collect();
    ids.sort_unstable();
    ids
}

/// Plans every target and checks the blast radius before anything is injected.
pub fn plan(
    spec: &ExperimentSpec,
    default_namespace: &str,
    candidates: &[Candidate],
    seed: u64,
) -> Result<Plan, PlanError> {
    let plan: Plan = spec
        .targets
        .iter()
        .map(|(name, sel)| {
            (
                name.clone(),
                select(name, sel, default_namespace, candidates, seed),
            )
        })
        .collect();
    if let Some(max) = spec.limits.as_ref().and_then(|l| l.max_percent) {
        for (name, sel) in &spec.targets {
            let selected = plan.get(name).map_or(0, Vec::len);
            let matching = candidates
                .iter()
                .filter(|c| matches(sel, default_namespace, c))
                .count();
            // Whole pods: one of one is 100 %, whatever the mode.
            if selected * 100 > matching * max as usize {
                return Err(PlanError::OverShare {
                    target: name.clone(),
                    selected,
                    matching,
                    max,
                });
            }
        }
    }
    if let Some(max) = spec.limits.as_ref().and_then(|l| l.max_targets) {
        // A pod selected by two targets counts once: it is one pod at risk.
        let mut all: Vec<&TargetId> = plan.values().flatten().collect();
        all.sort();
        all.dedup();
        if all.len() > max as usize {
            return Err(PlanError::TooManyTargets {
                selected: all.len(),
                max,
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(mode: SelectionMode, value: Option<u32>) -> TargetSelector {
        TargetSelector {
            namespaces: vec![],
            labels: [("app".to_owned(), "payments".to_owned())].into(),
            mode,
            value,
        }
    }

    fn pods(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate::new(&format!("pod-{i}"), "shop", &[("app", "payments")]))
            .chain([
                Candidate::new("other", "shop", &[("app", "cart")]),
                Candidate::new("elsewhere", "prod", &[("app", "payments")]),
            ])
            .collect()
    }

    #[test]
    fn modes() {
        let c = pods(10);
        assert_eq!(
            select("t", &sel(SelectionMode::All, None), "shop", &c, 1).len(),
            10
        );
        assert_eq!(
            select("t", &sel(SelectionMode::One, None), "shop", &c, 1).len(),
            1
        );
        assert_eq!(
            select("t", &sel(SelectionMode::Fixed, Some(3)), "shop", &c, 1).len(),
            3
        );
        assert_eq!(
            select("t", &sel(SelectionMode::Fixed, Some(30)), "shop", &c, 1).len(),
            10
        );
        assert_eq!(
            select("t", &sel(SelectionMode::Percent, Some(25)), "shop", &c, 1).len(),
            3
        );
        assert_eq!(
            select("t", &sel(SelectionMode::Percent, Some(1)), "shop", &c, 1).len(),
            1
        );
        assert!(
            select("t", &sel(SelectionMode::All, None), "shop", &c, 1)
                .iter()
                .all(|id| id.starts_with("pod-"))
        );
        let mut in_prod = sel(SelectionMode::All, None);
        in_prod.namespaces = vec!["prod".into()];
        assert_eq!(
            select("t", &in_prod, "shop", &c, 1),
            vec![TargetId::from("elsewhere")]
        );
    }

    #[test]
    fn max_percent_holds_every_mode_to_a_share_of_the_matching_pods() {
        let spec = |mode, value| {
            let doc = "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: x, namespace: shop}
spec:
  duration: 60s
  limits: {maxPercent: 50}
  targets:
    t: {labels: {app: payments}}
  faults:
    - {name: k, target: t, kill: {}}
";
            let mut s = faultline_api::parse_one::<faultline_api::Experiment>(doc.as_bytes())
                .expect("valid")
                .spec;
            s.targets.insert("t".into(), sel(mode, value));
            s
        };
        let shared = |mode, value, pods_n| {
            plan(&spec(mode, value), "shop", &pods(pods_n), 1).map(|p| p["t"].len())
        };
        assert_eq!(shared(SelectionMode::Fixed, Some(2), 4), Ok(2), "half");
        assert_eq!(
            shared(SelectionMode::Percent, Some(50), 3),
            Err(PlanError::OverShare {
                target: "t".into(),
                selected: 2,
                matching: 3,
                max: 50
            }),
            "50 % of 3 rounds up to 2"
        );
        assert!(shared(SelectionMode::Fixed, Some(2), 3).is_err());
        assert!(
            shared(SelectionMode::One, None, 1).is_err(),
            "one of one is all"
        );
        assert!(shared(SelectionMode::All, None, 2).is_err());
        assert_eq!(shared(SelectionMode::One, None, 2), Ok(1));
        assert_eq!(
            shared(SelectionMode::All, None, 0),
            Ok(0),
            "nothing matched, nothing taken"
        );
    }

    #[test]
    fn deterministic_per_seed_and_stable_under_churn() {
        let c = pods(20);
        let s = sel(SelectionMode::Fixed, Some(5));
        let a = select("t", &s, "shop", &c, 42);
        assert_eq!(a, select("t", &s, "shop", &c, 42));
        assert_ne!(
            a,
            select("t", &s, "shop", &c, 43),
            "another seed, another choice (almost surely)"
        );
        // The first chosen pod dies: exactly one replacement, the rest stay.
        let gone = a[0].clone();
        let remaining: Vec<Candidate> = c.into_iter().filter(|p| p.id != gone).collect();
        let b = select("t", &s, "shop", &remaining, 42);
        assert_eq!(b.len(), 5);
        assert_eq!(a.iter().filter(|id| b.contains(id)).count(), 4);
    }
}
