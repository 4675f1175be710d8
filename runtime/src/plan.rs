//! What a local run puts where: which services each fault hits, and what
//! each proxied edge and each process gets. Pure, so `faultline plan
//! --local` shows exactly what `faultline run --local` would do.

use std::collections::{BTreeMap, HashMap};

use faultline_api::{Direction, Experiment, FaultAction, Topology};
use faultline_engine::{Candidate, Instance, Plan, Resolved};
use faultline_proxy::{Faults, Latency, Partition};

/// A proxied edge: (from service, to service).
pub type Edge = (String, String);

/// The services of `topology` as selection candidates in `namespace`.
pub(crate) fn candidates(topology: &Topology, namespace: &str) -> Vec<Candidate> {
    topology
        .spec
        .services
        .iter()
        .map(|s| Candidate {
            id: s.name.as_str().into(),
            namespace: namespace.into(),
            labels: std::sync::Arc::new(s.labels.clone()),
        })
        .collect()
}

/// The namespace a local run selects in: the experiment's, else `default`.
pub(crate) fn namespace_of(experiment: &Experiment) -> String {
    experiment
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Each service's port, by name.
pub(crate) fn ports(topology: &Topology) -> HashMap<&str, u16> {
    topology
        .spec
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.port))
        .collect()
}

/// Every dependency edge of `topology`, each of which gets a proxy.
pub(crate) fn edges(topology: &Topology) -> Vec<Edge> {
    topology
        .spec
        .services
        .iter()
        .flat_map(|s| s.depends_on.iter().map(|d| (s.name.clone(), d.clone())))
        .collect()
}

/// What each edge's proxy does while `resolved` faults hold (latency and
/// partitions apply to traffic reaching their target; `latency.to` narrows
/// latency to the target's calls to those targets), and the edges that
/// carry each fault instance. `ports` maps a service to its port.
pub(crate) fn edge_faults<'e>(
    resolved: &[Resolved<'_>],
    plan: &Plan,
    edges: impl Iterator<Item = &'e Edge> + Clone,
    ports: &HashMap<&str, u16>,
) -> (BTreeMap<Edge, Faults>, BTreeMap<Instance, Vec<Edge>>) {
    let mut wanted: BTreeMap<Edge, Faults> = BTreeMap::new();
    let mut carried: BTreeMap<Instance, Vec<Edge>> = BTreeMap::new();
    let services_of = |target: &str| -> Vec<String> {
        plan.get(target)
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .collect()
    };
    for Resolved {
        fault: f, target, ..
    } in resolved
    {
        let instance = || Instance::new(&f.name, target);
        match &f.action {
            FaultAction::Latency(_) | FaultAction::Network(_) => {
                // What a proxy can do of either: delay each chunk, drop a
                // share of new connections, hold each direction of the edge
                // to a rate (the rest is refused before the run, see
                // `faultline_api::local_refusals`).
                let l = match &f.action {
                    FaultAction::Latency(l) => faultline_api::Network::from(l),
                    FaultAction::Network(n) => n.clone(),
                    _ => continue,
                };
                // A rate alone asks for no latency (which would count every
                // chunk as delayed).
                let latency = (l.delay.is_some() || l.loss.is_some()).then(|| Latency {
                    delay: l.delay.unwrap_or_default().as_std(),
                    jitter: l.jitter.unwrap_or_default().as_std(),
                    loss: l.loss.map_or(0.0, |p| p.fraction()),
                    correlation: l.correlation.map_or(0.0, |p| p.fraction()),
                });
                let rate = l.rate.map(faultline_api::Rate::bytes_per_second);
                let on: Vec<Edge> = if l.to.is_empty() {
                    edges
                        .clone()
                        .filter(|(_, to)| to == target)
                        .cloned()
                        .collect()
                } else {
                    let to: Vec<String> = l.to.iter().flat_map(|t| services_of(t)).collect();
                    edges
                        .clone()
                        .filter(|(from, t)| from == target && to.contains(t))
                        .cloned()
                        .collect()
                };
                for e in &on {
                    let w = wanted.entry(e.clone()).or_default();
                    if let Some(latency) = latency
                        && w.latency.is_none_or(|old| old.delay < latency.delay)
                    {
                        w.latency = Some(latency);
                    }
                    // Two rates on one edge: the slower holds.
                    if let Some(r) = rate {
                        w.rate = Some(w.rate.map_or(r, |old| old.min(r)));
                    }
                }
                if !on.is_empty() {
                    carried.entry(instance()).or_default().extend(on);
                }
            }
            FaultAction::Partition(p) => {
                let peers: Vec<String> = p.peers.iter().flat_map(|t| services_of(t)).collect();
                for (from, to) in edges.clone() {
                    // Every edge ends at `to`'s port: the target's for
                    // ingress, the peer's for egress — what `ports` names.
                    let port_ok = p.ports.is_empty()
                        || ports
                            .get(to.as_str())
                            .is_some_and(|port| p.ports.contains(port));
                    let ingress = to == target && peers.contains(from) && port_ok;
                    let egress = from == target && peers.contains(to) && port_ok;
                    let cut = match p.direction {
                        Direction::Ingress => ingress,
                        Direction::Egress => egress,
                        Direction::Both => ingress || egress,
                    };
                    if cut {
                        let edge = (from.clone(), to.clone());
                        carried.entry(instance()).or_default().push(edge.clone());
                        wanted.entry(edge).or_default().partition = Some(Partition::Blackhole);
                    }
                }
            }
            // Processes, not edges (stress is refused before a local run).
            FaultAction::Kill(_) | FaultAction::Stress(_) => {}
        }
    }
    (wanted, carried)
}

/// What `faultline run --local` would do with `experiment` on `topology`
/// and this seed, decided without starting anything.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPlan {
    /// The services each target selects; Err when the run would be refused
    /// (over `limits.maxTargets`).
    pub selection: Result<Plan, String>,
    /// Per edge `from -> to`, what each fault makes its proxy do.
    pub edges: BTreeMap<Edge, Vec<String>>,
    /// Per service, the signals its process would get.
    pub processes: BTreeMap<String, Vec<String>>,
}

pub fn plan(experiment: &Experiment, topology: &Topology, seed: u64) -> LocalPlan {
    let spec = &experiment.spec;
    let selection = faultline_engine::plan(
        spec,
        &namespace_of(experiment),
        &candidates(topology, &namespace_of(experiment)),
        seed,
    )
    .map_err(|e| e.to_string());
    let mut planned = LocalPlan {
        selection,
        edges: BTreeMap::new(),
        processes: BTreeMap::new(),
    };
    let Ok(chosen) = &planned.selection else {
        return planned;
    };
    let resolved = faultline_engine::resolve_all(spec, chosen);
    let ports = ports(topology);
    let all = edges(topology);
    let (_, carried) = edge_faults(&resolved, chosen, all.iter(), &ports);
    for (instance, on) in carried {
        let Some(f) = spec.faults.iter().find(|f| *f.name == *instance.fault) else {
            continue;
        };
        let what = match &f.action {
            FaultAction::Partition(_) => "every connection held, nothing delivered".to_owned(),
            other => other.summary(),
        };
        for edge in on {
            planned.edges.entry(edge).or_default().push(format!(
                "{}: {what} (on {}, {})",
                f.name,
                instance.target,
                window(f, spec.duration)
            ));
        }
    }
    for r in &resolved {
        if let FaultAction::Stress(st) = &r.fault.action {
            planned
                .processes
                .entry(r.target.to_owned())
                .or_default()
                .push(format!(
                    "{}: a stress worker ({}) in its cgroup ({})",
                    r.fault.name,
                    st.load(),
                    window(r.fault, spec.duration)
                ));
        }
        if let FaultAction::Kill(k) = &r.fault.action {
            // As the run does it: a pod deletion's closest local thing is
            // SIGKILL, after which the supervisor restarts the service.
            let how = if k.method.deletes_pod() {
                "SIGKILL (a pod deletion's local stand-in; the service is restarted)".to_owned()
            } else {
                k.signal.to_string()
            };
            let every = k.every.map_or(String::new(), |e| format!(" every {e}"));
            planned
                .processes
                .entry(r.target.to_owned())
                .or_default()
                .push(format!(
                    "{}: {how}{every} ({})",
                    r.fault.name,
                    window(r.fault, spec.duration)
                ));
        }
    }
    for changes in planned
        .edges
        .values_mut()
        .chain(planned.processes.values_mut())
    {
        changes.sort();
    }
    planned
}

/// `from 10s to 40s` of the run.
fn window(f: &faultline_api::Fault, duration: faultline_api::Duration) -> String {
    format!("from {} to {}", f.start(), f.end(duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_api::parse_one;

    fn topology() -> Topology {
        parse_one(
            br#"
apiVersion: faultline.dev/v1alpha1
kind: Topology
metadata: {name: t}
spec:
  services:
    - {name: front, labels: {app: front, tier: shop}, command: [x], port: 7001, dependsOn: [api]}
    - {name: api, labels: {app: api, tier: shop}, command: [x], port: 7002, dependsOn: [db]}
    - {name: db, labels: {app: db, tier: shop}, command: [x], port: 7003}
"#,
        )
        .expect("topology parses")
    }

    fn experiment(rest: &str) -> Experiment {
        let text = format!(
            "apiVersion: faultline.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: e}}\nspec:\n  duration: 60s\n{rest}"
        );
        parse_one(text.as_bytes()).expect("experiment parses")
    }

    #[test]
    fn latency_lands_on_edges_into_its_target_and_kills_on_processes() {
        let e = experiment(
            "  targets:\n    api: {labels: {app: api}}\n    db: {labels: {app: db}}\n  faults:\n    - {name: slow, target: api, start: 5s, duration: 15s, latency: {delay: 200ms}}\n    - {name: cut, target: api, partition: {peers: [db], direction: egress}}\n    - {name: crash, target: db, kill: {signal: SIGTERM, every: 10s}}\n",
        );
        let p = plan(&e, &topology(), 0);
        assert_eq!(
            p.selection.as_ref().map(|s| s["api"].clone()),
            Ok(vec![faultline_engine::TargetId::from("api")])
        );
        let edge = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            p.edges[&edge("front", "api")],
            ["slow: latency 200ms (on api, from 5s to 20s)"]
        );
        assert_eq!(
            p.edges[&edge("api", "db")],
            ["cut: every connection held, nothing delivered (on api, from 0s to 1m)"]
        );
        assert_eq!(
            p.processes["db"],
            ["crash: SIGTERM every 10s (from 0s to 1m)"]
        );
        assert!(!p.processes.contains_key("api"));
    }

    #[test]
    fn over_max_targets_is_refused_with_nothing_planned() {
        let e = experiment(
            "  limits: {maxTargets: 1}\n  targets:\n    all: {labels: {tier: shop}}\n  faults:\n    - {name: crash, target: all, kill: {signal: SIGKILL}}\n",
        );
        let p = plan(&e, &topology(), 0);
        assert!(p.selection.expect_err("refused").contains("maxTargets"));
        assert!(p.processes.is_empty() && p.edges.is_empty());
    }
}
