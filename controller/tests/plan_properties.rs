//! Properties of planning, over generated clusters and experiments: no pod
//! gets the same fault twice, entries sit on their pod's node, limits and
//! namespace opt-in are respected.

use std::{collections::BTreeSet, time::Duration};

use faultline_api::Experiment;
use faultline_controller::plan::{self, ExperimentRef, PodInfo};
use faultline_engine::Run;
use jiff::Timestamp;
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["shop", "prod", "lab"];

fn pod(i: usize, ns: usize, app: usize, node: usize) -> PodInfo {
    PodInfo {
        uid: format!("00000000-0000-4000-8000-{i:012x}").into(),
        name: format!("pod-{i}"),
        namespace: NAMESPACES[ns].into(),
        labels: std::sync::Arc::new([("app".to_owned(), format!("app{app}"))].into()),
        node: format!("node-{node}").into(),
        ips: vec![std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])],
        host_network: i % 7 == 3,
    }
}

fn pods() -> impl Strategy<Value = Vec<PodInfo>> {
    prop::collection::vec((0..3usize, 0..3usize, 0..6usize), 0..60).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ns, app, node))| pod(i, ns, app, node))
            .collect()
    })
}

/// A target line: namespaces, app label, mode.
fn target() -> impl Strategy<Value = String> {
    (
        prop::sample::subsequence(NAMESPACES.to_vec(), 0..=2),
        0..3usize,
        prop_oneof![
            Just("all".to_owned()),
            Just("one".to_owned()),
            (1..5u32).prop_map(|n| format!("fixed, value: {n}")),
            (1..=100u32).prop_map(|n| format!("percent, value: {n}")),
        ],
    )
        .prop_map(|(ns, app, mode)| {
            format!(
                "{{namespaces: [{}], labels: {{app: app{app}}}, mode: {mode}}}",
                ns.join(", ")
            )
        })
}

fn experiment() -> impl Strategy<Value = Experiment> {
    (target(), target(), prop::option::of(1..40u32)).prop_map(|(a, b, max)| {
        let limits = max.map_or(String::new(), |m| {
            format!("  limits: {{maxTargets: {m}}}\n")
        });
        let doc = format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: prop, namespace: shop}}
spec:
  duration: 60s
  targets:
    a: {a}
    b: {b}
  faults:
    - {{name: slow, target: a, latency: {{delay: 10ms, to: [b]}}}}
    - {{name: cut, target: b, partition: {{peers: [a, 10.0.0.0/8]}}}}
    - {{name: kill, target: a, kill: {{every: 10s}}}}
{limits}"
        );
        faultline_api::parse_one(doc.as_bytes()).unwrap_or_else(|e| panic!("{e:?}\n{doc}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn planning_keeps_its_promises(
        pods in pods(),
        exp in experiment(),
        opted in prop::sample::subsequence(NAMESPACES.to_vec(), 0..=3),
    ) {
        let r = ExperimentRef { namespace: "shop".into(), name: "prop".into(), uid: "u".into() };
        let refusal = plan::opt_in_refusal(&exp.spec, "shop", |ns| opted.contains(&ns));
        let wanted: BTreeSet<&str> = plan::target_namespaces(&exp.spec, "shop");
        prop_assert_eq!(refusal.is_some(), wanted.iter().any(|ns| !opted.contains(ns)));

        let candidates = plan::candidates(&exp.spec, "shop", &pods);
        let mut run = Run::new(exp.spec.clone(), "shop", 9);
        run.step(Duration::ZERO, &candidates);
        let index = plan::pod_index(&pods);
        let by_node = plan::node_entries(&r, &run.resolved(), run.plan(), &index, (Timestamp::UNIX_EPOCH, None), None);

        let max = exp.spec.limits.as_ref().and_then(|l| l.max_targets);
        let selected: BTreeSet<&faultline_engine::TargetId> = run.plan().values().flatten().collect();
        if let Some(max) = max {
            if run.is_finished() {
                prop_assert!(by_node.is_empty(), "a refused run places nothing");
            } else {
                prop_assert!(selected.len() <= max as usize);
            }
        }
        let mut seen = BTreeSet::new();
        for (node, entries) in &by_node {
            for e in entries {
                prop_assert!(seen.insert(e.id.clone()), "{} twice", e.id);
                let faultline_api::NodeTarget::Pod(p) = &e.target else {
                    panic!("not a pod target")
                };
                let pod = index[p.uid.as_str()];
                prop_assert_eq!(&*pod.node, node.as_str());
                prop_assert!(wanted.contains(&*pod.namespace));
                prop_assert!(!pod.host_network, "a host-network pod is never a target");
                prop_assert!(selected.contains(&pod.uid));
            }
        }
        // Every entry is what an agent accepts.
        for entries in by_node.values() {
            let nf = faultline_api::NodeFaults::new("n", faultline_api::NodeFaultsSpec { faults: entries.clone() });
            let mut problems = faultline_api::Problems::default();
            nf.spec.validate(&mut problems);
            prop_assert!(problems.0.is_empty(), "{:?}", problems);
        }
    }
}
