//! The controller and the agent's kube mode together, over one mocked API
//! server (faultline-testkit): an Experiment applied to the "cluster"
//! becomes a partition in a real network namespace on this machine, which
//! the agent removes at the entry's deadline on its own even with the
//! controller gone; the controller, back, finishes the run. Both export
//! their spans to one real OTLP receiver: the run is one trace,
//! `experiment` → `fault` → the agent's `inject` and `recover`.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use faultline_controller::{
    metrics::Metrics,
    observe::ObserverClient,
    reconcile::{self, Settings},
};
use faultline_testkit::kube::ApiServer;
use mock_collector::{MockServer, Protocol};
use opentelemetry_otlp::WithExportConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const SEC: Duration = Duration::from_secs(1);

async fn controller(server: &ApiServer) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let (ctx, task) = reconcile::start(
        server.client(),
        ObserverClient::new(None),
        Arc::new(jiff::Timestamp::now),
        Settings {
            tick: Duration::from_millis(100),
            check_every: Duration::from_millis(200),
            max_wait: Duration::from_millis(500),
            ..Settings::default()
        },
        Metrics::default(),
        None,
        async {
            let _ = stopped.await;
        },
    );
    assert!(
        ctx.wait_ready(10 * SEC).await,
        "the controller never became ready"
    );

    (stop, task)
}

fn phase(server: &ApiServer) -> Value {
    server
        .get("Experiment", Some("shop"), "cut-checkout")
        .map_or(Value::Null, |e| e["status"]["phase"].clone())
}

#[test]
fn an_experiment_becomes_a_partition_in_a_real_namespace_and_goes_at_its_deadline() {
    if !kernel_ready() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let net = NetPair::new();
    let addr = net.listen();
    let server = ApiServer::new();
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"faultline.dev/enabled": "true"}}}));
    let pod = |name: &str, app: &str, node: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "shop"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    let checkout = server.apply(pod("checkout-1", "checkout", "node-a", TARGET_IP));
    server.apply(pod("payments-1", "payments", "node-b", PEER_IP));
    let uid = checkout["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    // The checkout pod's process lives in the target namespace, in the
    // cgroup the kubelet's systemd driver gives a pod.
    let mut tree = KubeletTree::new();
    tree.pod_process(&pod_cgroup(&uid, "1a2b"), &net.target);

    let collector = rt
        .block_on(MockServer::builder().protocol(Protocol::Grpc).start())
        .expect("receiver");
    let endpoint = format!("http://{}", collector.addr());
    // The in-process controller exports as its binary does (OTLP over gRPC).
    let provider = rt.block_on(async {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&endpoint)
            .build()
            .expect("exporter");
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        provider
    });
    let served = rt.block_on(server.serve());
    let (stop, task) = rt.block_on(controller(&server));
    let mut agent = AgentProc::new();
    agent.env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
    ];
    let root = tree.root.display().to_string();
    agent.start_kube("node-a", &served.kubeconfig, &["--cgroup-root", &root]);

    rt.block_on(async {
        server.apply(
            json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": "cut-checkout", "namespace": "shop"},
            "spec": {"duration": "8s",
                     "targets": {"checkout": {"labels": {"app": "checkout"}},
                                 "payments": {"labels": {"app": "payments"}}},
                     "faults": [{"name": "cut", "target": "checkout",
                                 "partition": {"peers": ["payments"]}}]}}),
        );
    });
    // Placed on node-a (and only there), applied by the agent in the pod's namespace.
    net.expect_reachable(addr, false, 10 * SEC, &agent);
    let node_a = server
        .get("NodeFaults", None, "node-a")
        .expect("node-a's object");
    let experiment = server
        .get("Experiment", Some("shop"), "cut-checkout")
        .expect("the experiment");
    assert_eq!(
        node_a["spec"]["faults"][0]["id"],
        json!(format!(
            "{}/cut/{uid}",
            experiment["metadata"]["uid"].as_str().expect("uid")
        ))
    );
    assert_eq!(
        node_a["spec"]["faults"][0]["partition"]["peers"],
        json!([format!("{PEER_IP}/32")])
    );
    assert!(
        server.get("NodeFaults", None, "node-b").is_none(),
        "nothing for node-b"
    );
    let applied = wait_for(5 * SEC, || {
        server
            .get("NodeFaults", None, "node-a")
            .is_some_and(|nf| nf["status"]["faults"][0]["state"] == "applied")
    });
    assert!(
        applied.is_some(),
        "the agent reports the fault applied; log:\n{}",
        agent.log()
    );

    // The controller goes away: the agent still removes the fault at its
    // expiresAt (8 s after the start), with nobody telling it to.
    let _ = stop.send(());
    rt.block_on(async {
        let _ = tokio::time::timeout(5 * SEC, task).await;
    });
    assert_eq!(phase(&server), "Running");
    net.expect_reachable(addr, true, 15 * SEC, &agent);
    assert!(!net.ruleset().contains("faultline"), "no table left");

    // Back, the controller finds the run over and finishes it.
    let (stop, task) = rt.block_on(controller(&server));
    let done = wait_for(10 * SEC, || phase(&server) == "Completed");
    assert!(done.is_some(), "phase {}", phase(&server));
    let emptied = wait_for(5 * SEC, || {
        server
            .get("NodeFaults", None, "node-a")
            .is_some_and(|nf| nf["spec"]["faults"] == json!([]))
    });
    assert!(
        emptied.is_some(),
        "the entry is removed from node-a's object"
    );
    let _ = stop.send(());
    rt.block_on(async {
        let _ = tokio::time::timeout(5 * SEC, task).await;
    });
    assert!(agent.sigterm().success(), "log:\n{}", agent.log());

    // One trace: experiment → fault → inject, recover.
    let entry_tp = node_a["spec"]["faults"][0]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    let _ = provider.force_flush();
    rt.block_on(expect_one_trace(&collector, &entry_tp));
}
