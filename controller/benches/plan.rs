//! One experiment over 150 000 pods on 5 000 nodes: how long planning
//! takes (candidates, engine step, entries per node), how many NodeFaults
//! objects a run writes, and how big its status is. Prints its figures.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use faultline_api::ExperimentStatus;
use faultline_controller::{
    plan::{self, ExperimentRef, PodInfo},
    status::{self, RunFacts},
};
use faultline_engine::Run;

const PODS: usize = 150_000;
const NODES: usize = 5_000;

fn main() {
    let experiment: faultline_api::Experiment = faultline_api::parse_one(
        b"apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: wide, namespace: shop}
spec:
  duration: 5m
  targets:
    web: {namespaces: [shop, prod], labels: {tier: web}}
    db: {namespaces: [shop], labels: {tier: db}, mode: fixed, value: 20}
  faults:
    - {name: slow, target: web, latency: {delay: 100ms, to: [db]}}
    - {name: cut, target: db, partition: {peers: [10.0.0.0/8]}}
  hypothesis:
    - {name: errors, errorRate: {service: checkout, max: 5%}}
",
    )
    .expect("valid experiment");
    let namespaces = ["shop", "prod", "other"];
    let pods: Vec<PodInfo> = (0..PODS)
        .map(|i| PodInfo {
            uid: format!("{:08x}-0000-4000-8000-{:012x}", i, i).into(),
            name: format!("pod-{i}"),
            namespace: namespaces[i % 3].into(),
            labels: std::sync::Arc::new(
                [
                    (
                        "tier".to_owned(),
                        if i % 10 == 0 { "db" } else { "web" }.to_owned(),
                    ),
                    ("app".to_owned(), format!("app-{}", i % 50)),
                ]
                .into(),
            ),
            node: format!("node-{}", i % NODES).into(),
            ips: vec![std::net::IpAddr::from([
                10,
                (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ])],
            host_network: false,
        })
        .collect();
    let r = ExperimentRef {
        namespace: "shop".into(),
        name: "wide".into(),
        uid: "5d1f6f0e-0000-4000-8000-000000000001".into(),
    };
    let index = plan::pod_index(&pods);
    let started = jiff::Timestamp::now();
    let mut times = Vec::new();
    let mut stages = [Duration::ZERO; 3];
    let mut nodes = 0;
    let mut entries = 0;
    let mut run = Run::new(experiment.spec.clone(), "shop", 7);
    for round in 0..5 {
        let t = Instant::now();
        let candidates = plan::candidates(&experiment.spec, "shop", &pods);
        stages[0] += t.elapsed();
        let s = Instant::now();
        run.step(Duration::from_secs(round), &candidates);
        stages[1] += s.elapsed();
        let s = Instant::now();
        let by_node = plan::node_entries(
            &r,
            &run.resolved(),
            run.plan(),
            &index,
            (started, None),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        stages[2] += s.elapsed();
        times.push(t.elapsed());
        nodes = by_node.len();
        entries = by_node.values().map(Vec::len).sum();
        black_box(by_node);
    }
    let facts = RunFacts {
        started_at: Some(started),
        targets: run.plan().values().map(Vec::len).sum::<usize>() as u32,
        injected: entries as u32,
        runs: 1,
        ..RunFacts::default()
    };
    let st = status::of_run(&run, &facts, Some(1), &ExperimentStatus::default(), started);
    let status_bytes = serde_json::to_vec(&st).expect("json").len();
    let largest_node = {
        let by_node = plan::node_entries(
            &r,
            &run.resolved(),
            run.plan(),
            &index,
            (started, None),
            None,
        );
        by_node
            .values()
            .map(|v| serde_json::to_vec(v).expect("json").len())
            .max()
            .unwrap_or(0)
    };
    times.sort();
    println!("pods {PODS}, nodes {NODES}, selected {}", facts.targets);
    println!(
        "plan (candidates + engine step + entries per node): min {:.1} ms, median {:.1} ms, max {:.1} ms over {} rounds",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
    let rounds = times.len() as f64;
    println!(
        "  of which: candidates {:.1} ms, engine step {:.1} ms, entries {:.1} ms (means)",
        stages[0].as_secs_f64() * 1e3 / rounds,
        stages[1].as_secs_f64() * 1e3 / rounds,
        stages[2].as_secs_f64() * 1e3 / rounds
    );
    println!("NodeFaults objects written at the start of the run: {nodes} (target <= {NODES})");
    println!(
        "entries: {entries}; largest node's entries: {} KiB",
        largest_node / 1024
    );
    println!("status size: {status_bytes} bytes (target < 100 KiB)");
}
