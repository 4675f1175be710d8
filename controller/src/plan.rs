//! From an experiment's run to the entries each node's agent must hold:
//! pure, fed with the pods and namespaces the watches hold and the time.
//!
//! A target name in `partition.peers` or `latency.to` stands for the pods
//! that target selects now, written as their addresses (`/32`, `/128`);
//! CIDRs pass through. Every entry expires at the end of its fault's
//! window or at the end of the run's lease, whichever comes first, so an
//! agent removes it on its own within one lease if the controller is gone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use faultline_api::{ExperimentSpec, FaultAction, NodeFault, NodeTarget, PodRef, parse_cidr};
use faultline_engine::{Candidate, Plan, Resolved};
use jiff::{SignedDuration, Timestamp};

use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time};

/// The label a namespace must carry, with value `true`, before any of its
/// pods can be a target.
pub(crate) const OPT_IN_LABEL: &str = "faultline.dev/enabled";

/// A namespace labelled so (value `true`) is never a target's, opted in or not.
pub(crate) const PROTECTED_LABEL: &str = "faultline.dev/protected";

/// The cluster's own namespaces: never targets (the controller's own
/// namespace is added to these at start).
pub const ALWAYS_PROTECTED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// A step's pods by uid. Hashed with foldhash: a step looks up every
/// target's pod (150 000 at the largest size measured), and SipHash over
/// the uids was a fifth of the step.
pub type PodIndex<'a> = HashMap<&'a str, &'a PodInfo, foldhash::fast::RandomState>;

/// The index of `pods`.
pub fn pod_index<'a>(pods: impl IntoIterator<Item = &'a PodInfo>) -> PodIndex<'a> {
    pods.into_iter().map(|p| (&*p.uid, p)).collect()
}

/// What the planner needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Shared with the runs that target the pod.
    pub uid: faultline_engine::TargetId,
    pub name: String,
    /// This and the next two are shared by the pods that carry the same
    /// (see `pods`).
    pub namespace: Arc<str>,
    pub labels: faultline_engine::Labels,
    pub node: Arc<str>,
    pub ips: Vec<IpAddr>,
    /// In the node's own network namespace: never a target.
    pub host_network: bool,
}

/// The cluster's ceilings (chart `ceilings`), which no Experiment exceeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    /// Pods per run.
    pub max_targets: Option<u32>,
    /// The share of a target's pods, in percent.
    pub max_percent: Option<u32>,
}

/// The spec a run follows: the Experiment's, with each of the cluster's
/// ceilings as its limit when it sets none (or a higher one, which
/// admission refuses anyway).
pub fn capped(spec: &ExperimentSpec, ceilings: Ceilings) -> ExperimentSpec {
    let mut spec = spec.clone();
    let lower = |own: Option<u32>, ceiling: u32| Some(own.map_or(ceiling, |m| m.min(ceiling)));
    if let Some(ceiling) = ceilings.max_targets {
        let limits = spec.limits.get_or_insert_with(Default::default);
        limits.max_targets = lower(limits.max_targets, ceiling);
    }
    if let Some(ceiling) = ceilings.max_percent.filter(|m| *m < 100) {
        let limits = spec.limits.get_or_insert_with(Default::default);
        limits.max_percent = lower(limits.max_percent, ceiling);
    }
    spec
}

/// Target choices are fixed per experiment and run, so a restarted
/// controller picks the same pods.
pub fn seed(uid: &str, run: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain(run.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The namespaces an experiment's targets select from.
pub fn target_namespaces<'a>(spec: &'a ExperimentSpec, own: &'a str) -> BTreeSet<&'a str> {
    spec.targets
        .values()
        .flat_map(|t| {
            if t.namespaces.is_empty() {
                vec![own]
            } else {
                t.namespaces.iter().map(String::as_str).collect()
            }
        })
        .collect()
}

/// Whether a namespace object carries the opt-in label.
pub fn opted_in(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OPT_IN_LABEL))
        .is_some_and(|v| v == "true")
}

/// Whether a namespace object carries the protection label.
pub fn labelled_protected(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROTECTED_LABEL))
        .is_some_and(|v| v == "true")
}

/// Why the run must not go on: the target namespaces that are protected
/// (the cluster's own, the controller's, or labelled so), or None.
pub fn protected_refusal(
    spec: &ExperimentSpec,
    own: &str,
    is_protected: impl Fn(&str) -> bool,
) -> Option<String> {
    let refused: Vec<&str> = target_namespaces(spec, own)
        .into_iter()
        .filter(|ns| is_protected(ns))
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "namespace{} {} {} protected: never a target, whatever an Experiment says (the cluster's own, Faultline's, or labelled {PROTECTED_LABEL}=true); nothing was injected",
            if refused.len() == 1 { "" } else { "s" },
            refused.join(", "),
            if refused.len() == 1 { "is" } else { "are" },
        )
    })
}

/// Why the run must not start: the target namespaces that have not opted
/// in (missing ones included), or None when all have.
pub fn opt_in_refusal(
    spec: &ExperimentSpec,
    own: &str,
    is_opted_in: impl Fn(&str) -> bool,
) -> Option<String> {
    let refused: Vec<&str> = target_namespaces(spec, own)
        .into_iter()
        .filter(|ns| !is_opted_in(ns))
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "namespace{} {} {} not opted in to faults (label it {OPT_IN_LABEL}=true); nothing was injected",
            if refused.len() == 1 { "" } else { "s" },
            refused.join(", "),
            if refused.len() == 1 { "is" } else { "are" },
        )
    })
}

/// The candidates of an experiment: pods in the namespaces its targets
/// select from (the rest cannot match, and copying 150 000 pods' labels
/// every tick would be the planner's whole cost).
pub fn candidates<'a>(
    spec: &ExperimentSpec,
    own: &str,
    pods: impl IntoIterator<Item = &'a PodInfo>,
) -> Vec<Candidate> {
    let namespaces = target_namespaces(spec, own);
    let mut out: Vec<Candidate> = pods
        .into_iter()
        // A fault on a pod in the node's network namespace is a fault on the node.
        .filter(|p| !p.host_network)
        .filter(|p| namespaces.contains(&*p.namespace))
        .filter(|p| {
            spec.targets.values().any(|t| {
                t.labels
                    .iter()
                    .all(|(k, v)| p.labels.get(k).is_some_and(|pv| pv == v))
            })
        })
        .map(|p| Candidate {
            id: p.uid.clone(),
            namespace: p.namespace.clone(),
            labels: p.labels.clone(),
        })
        .collect();
    out.sort();
    out
}

/// Which experiment entries belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ExperimentRef {
    /// Every entry id of this experiment starts with this: its uid, so an
    /// Experiment re-created under the same name is another one, whose
    /// entries it neither takes for its own nor rewrites.
    pub(crate) fn id_prefix(&self) -> String {
        format!("{}/", self.uid)
    }

    /// `EXPERIMENT-UID/FAULT/POD-UID`: unique per node object, and short
    /// (at most 137 characters, whatever the names).
    pub(crate) fn entry_id(&self, fault: &str, pod_uid: &str) -> String {
        // One allocation: this runs for every instance of a run each step.
        let mut id = String::with_capacity(self.uid.len() + fault.len() + pod_uid.len() + 2);
        for part in [self.uid.as_str(), "/", fault, "/", pod_uid] {
            id.push_str(part);
        }
        id
    }

    /// The server-side-apply field manager of this experiment's entries:
    /// one per experiment, so experiments sharing a node never take each
    /// other's entries away (a field manager is at most 128 characters;
    /// a uid keeps it short and tells a re-created experiment apart).
    pub(crate) fn field_manager(&self) -> String {
        format!("faultline.dev/experiment-{}", self.uid)
    }

    /// Whether an entry id is this experiment's.
    pub(crate) fn owns(&self, id: &str) -> bool {
        self.after_prefix(id).is_some()
    }

    /// What follows this experiment's prefix in an id (without building the
    /// prefix: this runs for every entry of every node each step).
    fn after_prefix<'a>(&self, id: &'a str) -> Option<&'a str> {
        id.strip_prefix(self.uid.as_str())?.strip_prefix('/')
    }

    /// The fault an entry id of this experiment is for.
    pub fn fault_of<'a>(&self, id: &'a str) -> Option<&'a str> {
        self.instance_of(id).map(|(fault, _)| fault)
    }

    /// The fault and pod uid an entry id of this experiment is for.
    pub fn instance_of<'a>(&self, id: &'a str) -> Option<(&'a str, &'a str)> {
        self.after_prefix(id)?.rsplit_once('/')
    }
}

/// Resolves target names to the addresses of the pods they select.
fn addresses(names: &[String], plan: &Plan, pods: &PodIndex<'_>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for n in names {
        if parse_cidr(n).is_some() {
            out.insert(n.clone());
            continue;
        }
        for uid in plan.get(n).into_iter().flatten() {
            for ip in pods.get(&**uid).map(|p| &p.ips[..]).unwrap_or(&[]) {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                out.insert(format!("{ip}/{bits}"));
            }
        }
    }
    out.into_iter().collect()
}

/// What each fault asks of an agent, peers and destinations resolved to
/// addresses once for every target of the fault (None: no agent acts on
/// it, as for pod deletions, or nothing left to act on).
pub fn agent_actions<'a>(
    resolved: &[Resolved<'a>],
    plan: &Plan,
    pods: &PodIndex<'_>,
) -> HashMap<&'a str, Option<FaultAction>> {
    let mut actions: HashMap<&'a str, Option<FaultAction>> = HashMap::new();
    for r in resolved {
        actions.entry(r.fault.name.as_str()).or_insert_with(|| {
            match &r.fault.action {
                FaultAction::Partition(p) => {
                    let peers = addresses(&p.peers, plan, pods);
                    (!peers.is_empty()).then(|| {
                        FaultAction::Partition(faultline_api::Partition { peers, ..p.clone() })
                    })
                }
                FaultAction::Latency(l) if l.to.is_empty() => Some(FaultAction::Latency(l.clone())),
                FaultAction::Latency(l) => {
                    let to = addresses(&l.to, plan, pods);
                    (!to.is_empty())
                        .then(|| FaultAction::Latency(faultline_api::Latency { to, ..l.clone() }))
                }
                FaultAction::Network(n) if n.to.is_empty() => Some(FaultAction::Network(n.clone())),
                FaultAction::Network(n) => {
                    let to = addresses(&n.to, plan, pods);
                    (!to.is_empty())
                        .then(|| FaultAction::Network(faultline_api::Network { to, ..n.clone() }))
                }
                // Pods are deleted by the controller itself, not by an agent.
                FaultAction::Kill(k) if k.method.deletes_pod() => None,
                FaultAction::Kill(k) => Some(FaultAction::Kill(k.clone())),
                FaultAction::Stress(st) => Some(FaultAction::Stress(st.clone())),
            }
        });
    }
    actions
}

/// The entry of one fault instance on its pod's node.
pub fn entry(
    exp: &ExperimentRef,
    r: &Resolved<'_>,
    pod: &PodInfo,
    action: &FaultAction,
    (started_at, lease_until): (Timestamp, Option<Timestamp>),
    traceparent: Option<&str>,
) -> NodeFault {
    let until = SignedDuration::try_from(r.until).unwrap_or(SignedDuration::MAX);
    // Whole seconds, as the API stores them (rounded up: never early),
    // so what is cached compares equal to what is wanted.
    let expires = started_at.checked_add(until).unwrap_or(Timestamp::MAX);
    let expires = expires
        .round(
            jiff::TimestampRound::new()
                .smallest(jiff::Unit::Second)
                .mode(jiff::RoundMode::Ceil),
        )
        .unwrap_or(expires);
    // The dead-man's switch: never later than the lease the running
    // controller keeps renewing.
    let expires = lease_until.map_or(expires, |l| expires.min(l));
    NodeFault {
        id: exp.entry_id(&r.fault.name, &pod.uid),
        target: NodeTarget::Pod(PodRef {
            uid: pod.uid.to_string(),
        }),
        expires_at: Time(expires),
        traceparent: traceparent.map(str::to_owned),
        action: action.clone(),
    }
}

/// The entries of a run on each node, sorted by id. A partition whose
/// peers select no pod with an address yet has nothing to cut and is left
/// out until they do; a latency `to` likewise.
pub fn node_entries(
    exp: &ExperimentRef,
    resolved: &[Resolved<'_>],
    plan: &Plan,
    pods: &PodIndex<'_>,
    times: (Timestamp, Option<Timestamp>),
    traceparent: Option<&str>,
) -> BTreeMap<String, Vec<NodeFault>> {
    let actions = agent_actions(resolved, plan, pods);
    let mut out: BTreeMap<String, Vec<NodeFault>> = BTreeMap::new();
    for r in resolved {
        let Some(pod) = pods.get(r.target) else {
            continue; // gone since the plan: the next plan replaces it
        };
        let Some(Some(action)) = actions.get(r.fault.name.as_str()) else {
            continue;
        };
        out.entry(pod.node.to_string()).or_default().push(entry(
            exp,
            r,
            pod,
            action,
            times,
            traceparent,
        ));
    }
    for entries in out.values_mut() {
        entries.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_engine::Run;
    use std::time::Duration;

    pub(crate) fn pod(uid: &str, ns: &str, app: &str, node: &str, ip: &str) -> PodInfo {
        PodInfo {
            uid: uid.into(),
            name: format!("{app}-{}", &uid[uid.len() - 4..]),
            namespace: ns.into(),
            labels: Arc::new([("app".to_owned(), app.to_owned())].into()),
            node: node.into(),
            ips: vec![ip.parse().expect("ip")],
            host_network: false,
        }
    }

    fn experiment(faults: &str) -> faultline_api::Experiment {
        let doc = format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: x, namespace: shop}}
spec:
  duration: 60s
  targets:
    payments: {{labels: {{app: payments}}}}
    checkout: {{labels: {{app: checkout}}}}
  faults:
{faults}"
        );
        faultline_api::parse_one(doc.as_bytes()).expect("valid")
    }

    #[test]
    fn peers_become_the_selected_pods_addresses_and_entries_land_on_their_nodes() {
        let e = experiment(
            "    - {name: cut, target: checkout, partition: {peers: [payments, 192.168.0.0/16]}}
    - {name: slow, target: payments, start: 10s, duration: 20s, latency: {delay: 300ms}}
",
        );
        let pods = [
            pod(
                "00000000-0000-4000-8000-000000000001",
                "shop",
                "payments",
                "n1",
                "10.0.0.1",
            ),
            pod(
                "00000000-0000-4000-8000-000000000002",
                "shop",
                "payments",
                "n2",
                "fd00::2",
            ),
            pod(
                "00000000-0000-4000-8000-000000000009",
                "shop",
                "checkout",
                "n1",
                "10.0.0.9",
            ),
            pod(
                "00000000-0000-4000-8000-000000000007",
                "prod",
                "payments",
                "n1",
                "10.9.0.1",
            ),
        ];
        let index = pod_index(&pods);
        let cands = candidates(&e.spec, "shop", &pods);
        assert_eq!(cands.len(), 3, "the pod in prod is not a candidate");
        let mut run = Run::new(e.spec.clone(), "shop", 1);
        run.step(Duration::from_secs(0), &cands);
        run.step(Duration::from_secs(11), &cands);
        let exp = ExperimentRef {
            namespace: "shop".into(),
            name: "x".into(),
            uid: "u".into(),
        };
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let by_node = node_entries(
            &exp,
            &run.resolved(),
            run.plan(),
            &index,
            (t0, None),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let ids = |n: &str| -> Vec<&str> { by_node[n].iter().map(|f| f.id.as_str()).collect() };
        assert_eq!(
            ids("n1"),
            [
                "u/cut/00000000-0000-4000-8000-000000000009",
                "u/slow/00000000-0000-4000-8000-000000000001"
            ]
        );
        assert_eq!(ids("n2"), ["u/slow/00000000-0000-4000-8000-000000000002"]);
        let cut = &by_node["n1"][0];
        let FaultAction::Partition(p) = &cut.action else {
            panic!("{cut:?}")
        };
        assert_eq!(p.peers, ["10.0.0.1/32", "192.168.0.0/16", "fd00::2/128"]);
        assert_eq!(cut.expires_at.0.to_string(), "2026-01-01T00:01:00Z");
        assert_eq!(
            by_node["n2"][0].expires_at.0.to_string(),
            "2026-01-01T00:00:30Z"
        );
        assert!(cut.traceparent.is_some());
        assert!(exp.owns(&cut.id) && !exp.owns("shop/x/cut/c1"));
        assert_eq!(exp.fault_of(&cut.id), Some("cut"));
        assert_eq!(exp.fault_of("another-uid/cut/c1"), None);
        // Under a lease, nothing expires after it; what ends before stays.
        let lease_until: Timestamp = "2026-01-01T00:00:45Z".parse().expect("time");
        let leased = node_entries(
            &exp,
            &run.resolved(),
            run.plan(),
            &index,
            (t0, Some(lease_until)),
            None,
        );
        assert_eq!(leased["n1"][0].expires_at.0, lease_until);
        assert_eq!(
            leased["n2"][0].expires_at.0.to_string(),
            "2026-01-01T00:00:30Z"
        );
        // Every entry is what an agent accepts.
        for entries in by_node.values() {
            let nf = faultline_api::NodeFaults::new(
                "n",
                faultline_api::NodeFaultsSpec {
                    faults: entries.clone(),
                },
            );
            let yaml = serde_saphyr::to_string(&nf).expect("yaml");
            faultline_api::parse_one::<faultline_api::NodeFaults>(yaml.as_bytes())
                .unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
        }
    }

    #[test]
    fn a_partition_with_no_addressable_peer_is_left_out() {
        let e = experiment("    - {name: cut, target: checkout, partition: {peers: [payments]}}\n");
        let pods = [pod(
            "00000000-0000-4000-8000-000000000009",
            "shop",
            "checkout",
            "n1",
            "10.0.0.9",
        )];
        let index = pod_index(&pods);
        let cands = candidates(&e.spec, "shop", &pods);
        let mut run = Run::new(e.spec.clone(), "shop", 1);
        run.step(Duration::ZERO, &cands);
        let exp = ExperimentRef {
            namespace: "shop".into(),
            name: "x".into(),
            uid: "u".into(),
        };
        let by_node = node_entries(
            &exp,
            &run.resolved(),
            run.plan(),
            &index,
            (Timestamp::UNIX_EPOCH, None),
            None,
        );
        assert!(by_node.is_empty(), "{by_node:?}");
    }

    #[test]
    fn opt_in_names_every_refused_namespace() {
        let mut e = experiment("    - {name: cut, target: checkout, kill: {}}\n");
        e.spec
            .targets
            .get_mut("payments")
            .expect("target")
            .namespaces = vec!["prod".into(), "shop".into()];
        assert_eq!(opt_in_refusal(&e.spec, "shop", |_| true), None);
        assert_eq!(
            opt_in_refusal(&e.spec, "shop", |ns| ns == "shop").as_deref(),
            Some(
                "namespace prod is not opted in to faults (label it faultline.dev/enabled=true); nothing was injected"
            )
        );
        assert!(
            opt_in_refusal(&e.spec, "shop", |_| false)
                .is_some_and(|m| m.starts_with("namespaces prod, shop are"))
        );
        // Protection is asked of the same namespaces, and wins over opt-in.
        assert_eq!(protected_refusal(&e.spec, "shop", |_| false), None);
        assert!(
            protected_refusal(&e.spec, "shop", |ns| ALWAYS_PROTECTED.contains(&ns)
                || ns == "prod")
            .is_some_and(|m| m.starts_with("namespace prod is protected"))
        );
        // Host-network pods are no candidates, however they are labelled.
        let mut host = pod(
            "00000000-0000-4000-8000-00000000000a",
            "shop",
            "payments",
            "n1",
            "10.0.0.1",
        );
        let ordinary = pod(
            "00000000-0000-4000-8000-00000000000b",
            "shop",
            "payments",
            "n1",
            "10.0.0.2",
        );
        host.host_network = true;
        let c = candidates(&e.spec, "shop", [&host, &ordinary]);
        assert_eq!(
            c.iter().map(|c| &*c.id).collect::<Vec<_>>(),
            [&*ordinary.uid]
        );
    }
}
