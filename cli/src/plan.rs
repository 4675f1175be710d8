//! `faultline plan EXPERIMENT`: what a run would touch, applying nothing —
//! which pods each fault hits and on which nodes, which pods were skipped
//! and why, what each node's agent would change in its kernel, and whether
//! the limits pass. The same selection and planning code as the
//! controller's (`faultline_controller::plan`, the engine's `plan`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    process::ExitCode,
};

use faultline_api::{Experiment, ExperimentSpec, FaultAction, KillMethod, Topology};
use faultline_controller::plan::{
    ALWAYS_PROTECTED, Ceilings, ExperimentRef, PodInfo, candidates, capped, labelled_protected,
    node_entries, opt_in_refusal, opted_in, protected_refusal, seed, target_namespaces,
};
use faultline_controller::pods::SlimPod;
use faultline_engine::plan;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde::Serialize;

use crate::local::{EXIT_BROKE, EXIT_INVALID, load};

/// How the plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// What the cluster's ceilings and protections are (as the chart sets the
/// controller's flags).
pub struct Cluster<'a> {
    /// Faultline's own namespace (the release's): never a target.
    pub release_namespace: &'a str,
    pub ceilings: Ceilings,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Planned {
    experiment: String,
    /// Empty when the run would start; else why it would not.
    refused: Vec<String>,
    /// The pods a run would choose depend on the run's seed when a target
    /// picks some of its pods: exact for an Experiment already on the
    /// cluster (its next run), an example otherwise.
    selection: &'static str,
    faults: Vec<PlannedFault>,
    skipped: Vec<Skipped>,
    /// Per node, what its agent would change.
    nodes: BTreeMap<String, Vec<String>>,
    /// Local mode: per proxied edge `from -> to`, what its proxy would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    edges: Option<BTreeMap<String, Vec<String>>>,
    /// Local mode: per service, the signals its process would get.
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<BTreeMap<String, Vec<String>>>,
    /// What of the experiment a local run ignores.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    limits: Limits,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlannedFault {
    name: String,
    action: String,
    target: String,
    pods: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    pod: String,
    why: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Limits {
    max_targets: Option<u32>,
    max_percent: Option<u32>,
    targets: usize,
    pass: bool,
}

pub fn run(
    path: &Path,
    namespace: Option<&str>,
    cluster: &Cluster<'_>,
    output: Output,
) -> ExitCode {
    let experiment: Experiment = match load(path) {
        Ok(e) => e,
        Err(code) => return code,
    };
    crate::cluster::with_cluster(|client| async move {
        match planned(client, experiment, namespace, cluster).await {
            Ok(p) => show(&p, output),
            Err(message) => {
                tell!("faultline plan: {message}");
                ExitCode::from(EXIT_BROKE)
            }
        }
    })
}

/// `faultline plan EXPERIMENT --local TOPOLOGY`: what `faultline run
/// --local` with the same seed would do (the runtime's own planning).
pub fn run_local(path: &Path, topology: &Path, seed: u64, output: Output) -> ExitCode {
    let experiment: Experiment = match load(path) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let topology_path = topology;
    let topology: Topology = match load(topology) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // As `run --local` refuses them: checks of services nobody runs, and
    // what this host cannot do.
    let mut refused = crate::local::unknown_services(path, &experiment, &topology);
    refused.extend(crate::local::unenforceable_limits(topology_path, &topology));
    let local = faultline_runtime::plan(&experiment, &topology, seed);
    let (chosen, selection_ok) = match local.selection {
        Ok(p) => (p, true),
        Err(e) => {
            refused.push(e);
            (Default::default(), false)
        }
    };
    let spec = &experiment.spec;
    let faults = spec
        .faults
        .iter()
        .map(|f| {
            let mut services: Vec<String> = chosen
                .get(&f.target)
                .into_iter()
                .flatten()
                .map(|s| s.to_string())
                .collect();
            services.sort();
            PlannedFault {
                name: f.name.clone(),
                action: f.action.summary(),
                target: f.target.clone(),
                pods: services,
            }
        })
        .collect();
    let p = Planned {
        experiment: experiment.name_any(),
        limits: Limits::of(spec, &chosen, selection_ok),
        refused,
        selection: "exact: `faultline run --local` with the same --seed chooses these",
        faults,
        skipped: Vec::new(),
        nodes: BTreeMap::new(),
        edges: Some(
            local
                .edges
                .into_iter()
                .map(|((from, to), what)| (format!("{from} -> {to}"), what))
                .collect(),
        ),
        processes: Some(local.processes),
        notes: faultline_runtime::local_mode_notes(&experiment),
    };
    show(&p, output)
}

/// Prints `p`; exit 0 when the run would start, 2 when refused.
fn show(p: &Planned, output: Output) -> ExitCode {
    match output {
        Output::Json => match serde_json::to_string_pretty(p) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                tell!("faultline plan: {e}");
                return ExitCode::from(EXIT_BROKE);
            }
        },
        Output::Text => print_text(p),
    }
    if p.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

async fn planned(
    client: Client,
    mut experiment: Experiment,
    namespace: Option<&str>,
    cluster: &Cluster<'_>,
) -> Result<Planned, String> {
    let own = namespace
        .map(str::to_owned)
        .or_else(|| experiment.namespace())
        .unwrap_or_else(|| client.default_namespace().to_owned());
    experiment.metadata.namespace = Some(own.clone());
    let name = experiment.name_any();
    // An Experiment already there: its uid and next run fix the choice.
    let existing = Api::<Experiment>::namespaced(client.clone(), &own)
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading experiment {own}/{name}: {e}"))?;
    let (uid, runs, selection) = match &existing {
        Some(e) => (
            e.uid().unwrap_or_default(),
            e.status.as_ref().and_then(|s| s.runs).unwrap_or(0) + 1,
            "as the next run of the Experiment on the cluster will choose",
        ),
        None => (
            String::new(),
            1,
            "an example: where a target picks some of its pods, which ones depends on the applied Experiment's uid",
        ),
    };
    let spec = capped(&experiment.spec, cluster.ceilings);
    let wanted: BTreeSet<String> = target_namespaces(&spec, &own)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let namespaces: Vec<Namespace> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing namespaces: {e}"))?
        .items;
    let by_name: HashMap<String, &Namespace> =
        namespaces.iter().map(|n| (n.name_any(), n)).collect();
    let protected = |ns: &str| {
        ALWAYS_PROTECTED.contains(&ns)
            || ns == cluster.release_namespace
            || by_name.get(ns).is_some_and(|n| labelled_protected(n))
    };
    let mut refused = Vec::new();
    refused.extend(protected_refusal(&spec, &own, protected));
    refused.extend(opt_in_refusal(&spec, &own, |ns| {
        by_name.get(ns).is_some_and(|n| opted_in(n))
    }));

    let mut pods: Vec<SlimPod> = Vec::new();
    for ns in &wanted {
        let list = Api::<SlimPod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing pods in {ns}: {e}"))?;
        pods.extend(list.items);
    }
    // Pods a target's labels match, and why each that is not a candidate is not.
    let matches = |p: &SlimPod| {
        let labels = p.labels();
        spec.targets.values().any(|t| {
            t.labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|pv| pv == v))
        })
    };
    let mut skipped = Vec::new();
    let mut infos = Vec::new();
    for p in pods.iter().filter(|p| matches(p)) {
        let id = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        match PodInfo::from_pod(p) {
            None => skipped.push(Skipped {
                pod: id,
                why: "not running (pending, finished or being deleted)".into(),
            }),
            Some(info) if info.host_network => skipped.push(Skipped {
                pod: id,
                why: "hostNetwork: a fault there would be a fault on its node".into(),
            }),
            Some(info) if protected(&info.namespace) => skipped.push(Skipped {
                pod: id,
                why: "in a protected namespace".into(),
            }),
            Some(info) => infos.push(info),
        }
    }
    let cands = candidates(&spec, &own, &infos);
    let index = faultline_controller::plan::pod_index(&infos);
    let (chosen, selection_ok) = match plan(&spec, &own, &cands, seed(&uid, runs)) {
        Ok(p) => (p, true),
        Err(e) => {
            refused.push(e.to_string());
            (Default::default(), false)
        }
    };
    let pod_name = |uid: &str| {
        index.get(uid).map_or_else(
            || uid.to_owned(),
            |p| format!("{}/{} on {}", p.namespace, p.name, p.node),
        )
    };
    let resolved = faultline_engine::resolve_all(&spec, &chosen);
    let r = ExperimentRef {
        namespace: own.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    let now = jiff::Timestamp::now();
    let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, entries) in node_entries(&r, &resolved, &chosen, &index, (now, None), None) {
        for e in entries {
            let pod = match &e.target {
                faultline_api::NodeTarget::Pod(p) => pod_name(&p.uid),
                other => format!("{other:?}"),
            };
            nodes.entry(node.clone()).or_default().push(format!(
                "{}: {} ({pod})",
                r.fault_of(&e.id).unwrap_or("?"),
                kernel_change(&e.action)
            ));
        }
    }
    for f in &spec.faults {
        if let FaultAction::Kill(k) = &f.action
            && k.method.deletes_pod()
        {
            for uid in chosen.get(&f.target).into_iter().flatten() {
                let node = index.get(&**uid).map_or("?", |p| &*p.node);
                let how = if k.method == KillMethod::ForceDelete {
                    "deleted by the controller (past PodDisruptionBudgets)"
                } else {
                    "evicted by the controller (PodDisruptionBudgets hold)"
                };
                nodes.entry(node.to_owned()).or_default().push(format!(
                    "{}: {how} ({})",
                    f.name,
                    pod_name(uid)
                ));
            }
        }
    }
    let faults = spec
        .faults
        .iter()
        .map(|f| {
            // By name, not by uid: the order a person reads.
            let mut pods: Vec<String> = chosen
                .get(&f.target)
                .into_iter()
                .flatten()
                .map(|u| pod_name(u))
                .collect();
            pods.sort();
            PlannedFault {
                name: f.name.clone(),
                action: f.action.summary(),
                target: f.target.clone(),
                pods,
            }
        })
        .collect();
    for changes in nodes.values_mut() {
        changes.sort();
    }
    Ok(Planned {
        experiment: format!("{own}/{name}"),
        limits: Limits::of(&spec, &chosen, selection_ok),
        refused,
        selection,
        faults,
        skipped,
        nodes,
        edges: None,
        processes: None,
        notes: Vec::new(),
    })
}

impl Limits {
    /// `spec`'s limits (the cluster's ceilings applied) and whether the
    /// selection `chosen` kept them (`pass`: the engine's plan said so).
    fn of(spec: &ExperimentSpec, chosen: &faultline_engine::Plan, pass: bool) -> Limits {
        Limits {
            max_targets: spec.limits.as_ref().and_then(|l| l.max_targets),
            max_percent: spec.limits.as_ref().and_then(|l| l.max_percent),
            targets: chosen.values().flatten().collect::<BTreeSet<_>>().len(),
            pass,
        }
    }
}

/// What an agent would change in the kernel for one entry.
fn kernel_change(action: &FaultAction) -> String {
    match action {
        FaultAction::Partition(p) => format!(
            "nftables table inet faultline: drop {} {} {}",
            p.direction,
            if p.ports.is_empty() {
                "all traffic".to_owned()
            } else {
                format!("ports {:?}", p.ports)
            },
            format_args!("with {}", p.peers.join(", "))
        ),
        FaultAction::Latency(l) => format!(
            "netem delay {} on every interface{}",
            l.delay,
            if l.to.is_empty() {
                String::new()
            } else {
                format!(" to {}", l.to.join(", "))
            }
        ),
        FaultAction::Network(n) => format!(
            "netem {} on every interface{}",
            n.impairments(),
            if n.to.is_empty() {
                String::new()
            } else {
                format!(" to {}", n.to.join(", "))
            }
        ),
        FaultAction::Kill(k) => format!(
            "{} to every process of the pod {}{}",
            k.signal,
            if k.sandbox {
                "and its pause (the kubelet recreates the pod)"
            } else {
                "but its pause"
            },
            k.every.map_or(String::new(), |e| format!(", every {e}"))
        ),
        FaultAction::Stress(st) => format!(
            "a stress worker ({}) in the cgroup of the pod's first application container",
            st.load()
        ),
    }
}

fn print_text(p: &Planned) {
    say!("plan for experiment {} (nothing applied)", p.experiment);
    if p.refused.is_empty() {
        say!("would start: yes");
    } else {
        say!("would start: NO");
        for r in &p.refused {
            say!("  refused: {r}");
        }
    }
    say!("selection: {}", p.selection);
    for f in &p.faults {
        say!("fault {} ({}) on target {}:", f.name, f.action, f.target);
        if f.pods.is_empty() {
            say!("  nothing selected");
        }
        for pod in &f.pods {
            say!("  {pod}");
        }
    }
    if !p.skipped.is_empty() {
        say!("skipped:");
        for s in &p.skipped {
            say!("  {}: {}", s.pod, s.why);
        }
    }
    let places = [
        ("node", Some(&p.nodes)),
        ("edge", p.edges.as_ref()),
        ("process", p.processes.as_ref()),
    ];
    for (kind, changes) in places {
        for (place, changes) in changes.into_iter().flatten() {
            say!("{kind} {place}:");
            for c in changes {
                say!("  {c}");
            }
        }
    }
    for n in &p.notes {
        say!("note: {n}");
    }
    let or_none =
        |m: Option<u32>, unit: &str| m.map_or_else(|| "none".to_owned(), |m| format!("{m}{unit}"));
    say!(
        "limits: {} target(s), maxTargets {}, maxPercent {} — {}",
        p.limits.targets,
        or_none(p.limits.max_targets, ""),
        or_none(p.limits.max_percent, "%"),
        if p.limits.pass { "pass" } else { "FAIL" }
    );
}
