//! The whole cluster path on a real kube-apiserver (faultline-testkit's
//! control plane), with the chart installed and every program acting as
//! the chart's own ServiceAccount: an Experiment applied with kubectl →
//! the `faultline-controller` binary → NodeFaults → this node's
//! `faultline-agent` (its token bound to a pod on its node) → a real
//! partition and a real SIGKILL in namespaces and cgroups this test made
//! the way a kubelet makes them. Then kube-apiserver goes down past the
//! fault's deadline (the agent removes it on time anyway), comes back, and
//! the controller finishes the run. Both export their spans to one real
//! OTLP receiver: the run is one trace, across the processes.

mod common;

use std::time::Duration;

use common::*;
use faultline_testkit::cluster::{ControlPlane, Options, eventually, faultline_api};
use mock_collector::{MockServer, Protocol};
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn an_experiment_applied_with_kubectl_partitions_and_kills_for_real() {
    if !kernel_ready() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(mut cp) = rt.block_on(ControlPlane::start(Options::default())) else {
        return;
    };
    let chart = rt.block_on(cp.install_chart());
    let net = NetPair::new();
    let addr = net.listen();
    let (checkout, cart) = rt.block_on(async {
        for node in ["node-a", "node-b"] {
            cp.node(node).await;
        }
        cp.namespace("shop", true).await;
        let checkout = cp
            .running_pod(
                "shop",
                "checkout-1",
                json!({"app": "checkout"}),
                "node-a",
                TARGET_IP,
            )
            .await;
        let cart = cp
            .running_pod(
                "shop",
                "cart-1",
                json!({"app": "cart"}),
                "node-a",
                "10.77.0.5",
            )
            .await;
        cp.running_pod(
            "shop",
            "payments-1",
            json!({"app": "payments"}),
            "node-b",
            PEER_IP,
        )
        .await;
        (checkout, cart)
    });
    let mut tree = KubeletTree::new();
    tree.pod_process(&pod_cgroup(&checkout, "1a2b"), &net.target);
    let cart_process = tree.pod_process(&pod_cgroup(&cart, "3c4d"), &net.target);

    let (controller_config, agent_config) = rt.block_on(async {
        (
            cp.controller_kubeconfig(&chart).await,
            cp.agent_kubeconfig(&chart, "node-a").await,
        )
    });
    // Both programs export their spans to one real OTLP receiver.
    let collector = rt
        .block_on(MockServer::builder().protocol(Protocol::Grpc).start())
        .expect("an OTLP receiver");
    let endpoint = format!("http://{}", collector.addr());
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let mut agent = AgentProc::new();
    agent.env = otlp
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let root = tree.root.display().to_string();
    agent.start_kube("node-a", &agent_config, &["--cgroup-root", &root]);
    let (mut controller, _) =
        cp.start_controller_with_env(&controller_config, "controller-1", &[], &otlp);

    cp.apply(
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: cut-checkout, namespace: shop}
spec:
  duration: 12s
  targets:
    checkout: {labels: {app: checkout}}
    payments: {labels: {app: payments}}
    cart: {labels: {app: cart}}
  faults:
    - {name: cut, target: checkout, requireEffect: true, partition: {peers: [payments]}}
    - {name: kill-cart, target: cart, requireEffect: true, kill: {signal: SIGKILL}}
",
    );

    // A real partition in the checkout pod's namespace, a real SIGKILL in
    // the cart pod's cgroup.
    net.expect_reachable(addr, false, 20 * SEC, &agent);
    let killed = wait_for(10 * SEC, || tree.ended_by(cart_process).is_some());
    assert!(
        killed.is_some(),
        "the cart pod's process lives; agent log:\n{}",
        agent.log()
    );
    assert_eq!(tree.ended_by(cart_process), Some(9), "killed by SIGKILL");

    let client = rt.block_on(cp.client());
    let nfs = faultline_api(&client, "NodeFaults", None);
    let exps = faultline_api(&client, "Experiment", Some("shop"));
    let node_a = rt.block_on(eventually("node-a's status: applied", WAIT, || async {
        let nf = nfs.get("node-a").await.ok()?;
        let states: Vec<Value> = nf.data["status"]["faults"]
            .as_array()?
            .iter()
            .map(|f| f["state"].clone())
            .collect();
        states.contains(&json!("applied")).then_some(nf)
    }));
    let ids: Vec<&str> = node_a.data["spec"]["faults"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    let experiment_uid = rt
        .block_on(exps.get("cut-checkout"))
        .expect("the experiment")
        .metadata
        .uid
        .expect("uid");
    assert!(
        ids.contains(&format!("{experiment_uid}/cut/{checkout}").as_str()),
        "{ids:?}"
    );
    assert!(
        rt.block_on(nfs.get_opt("node-b"))
            .expect("get")
            .is_none_or(|nf| nf.data["spec"]["faults"] == json!([])),
        "nothing for node-b, where no target runs"
    );
    rt.block_on(eventually("the experiment running", WAIT, || async {
        let e = exps.get("cut-checkout").await.ok()?;
        (e.data["status"]["phase"] == "Running").then_some(())
    }));
    // The connections the test tried were dropped, counted by the rule's
    // counter, reported by the agent and summed per fault by the controller.
    for _ in 0..3 {
        assert!(!net.reachable(addr));
    }
    let faults = rt.block_on(eventually(
        "the faults' effects in the status",
        WAIT,
        || async {
            let e = exps.get("cut-checkout").await.ok()?;
            let faults = e.data["status"]["faults"].as_array()?.clone();
            // Counts reach the status a few seconds apart: wait for all
            // three refused connections, not just the first.
            let counted = |name: &str, at_least: i64| {
                faults
                    .iter()
                    .find(|f| f["name"] == name)
                    .and_then(|f| f["effect"]["count"].as_i64())
                    .is_some_and(|n| n >= at_least)
            };
            (counted("cut", 3) && counted("kill-cart", 1)).then_some(faults)
        },
    ));
    let effect = |name: &str| {
        let f = faults.iter().find(|f| f["name"] == name).expect("fault");
        (
            f["effect"]["count"].as_i64().unwrap_or(0),
            f["effect"]["what"].clone(),
            f["confirmed"].clone(),
        )
    };
    let (dropped, what, confirmed) = effect("cut");
    assert!(dropped >= 3, "{faults:?}");
    assert_eq!((what, confirmed), (json!("packets dropped"), json!(true)));
    assert_eq!(
        effect("kill-cart"),
        (1, json!("processes signalled"), json!(true)),
        "the cart pod's one process"
    );
    let entry = rt.block_on(nfs.get("node-a")).expect("node-a");
    let reported = entry.data["status"]["faults"]
        .as_array()
        .expect("status")
        .iter()
        .find(|f| f["id"].as_str().is_some_and(|id| id.contains("/cut/")))
        .and_then(|f| f["effect"].as_i64());
    assert!(reported.is_some_and(|n| n >= 3), "{entry:?}");

    // The API server goes away past the fault's deadline: the agent removes
    // the partition at its expiresAt with nobody telling it to.
    cp.stop_apiserver();
    assert!(
        !net.reachable(addr),
        "the partition must still be in place when the API server goes"
    );
    net.expect_reachable(addr, true, 20 * SEC, &agent);
    assert!(!net.ruleset().contains("faultline"), "no table left");

    // Back, the controller finishes the run and empties the node.
    rt.block_on(cp.start_apiserver());
    let client = rt.block_on(cp.client());
    let nfs = faultline_api(&client, "NodeFaults", None);
    let exps = faultline_api(&client, "Experiment", Some("shop"));
    let status = rt.block_on(eventually("the run completed", 60 * SEC, || async {
        let e = exps.get("cut-checkout").await.ok()?;
        (e.data["status"]["phase"] == "Completed").then(|| e.data["status"].clone())
    }));
    // Both faults had an effect, as requireEffect wants.
    assert_eq!(status["verdict"], "Passed", "no check could fail: {status}");
    rt.block_on(eventually("node-a emptied", WAIT, || async {
        let nf = nfs.get("node-a").await.ok()?;
        (nf.data["spec"]["faults"] == json!([])).then_some(())
    }));
    assert!(agent.sigterm().success(), "log:\n{}", agent.log());

    // One trace across the processes: the controller's experiment → fault,
    // the agent's inject and recover under the fault the entry named.
    let cut = node_a.data["spec"]["faults"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|f| f["id"].as_str().is_some_and(|id| id.contains("/cut/")))
        .expect("the partition's entry");
    let entry_tp = cut["traceparent"]
        .as_str()
        .expect("a traceparent")
        .to_owned();
    // SIGTERM: the controller flushes its spans as it stops.
    let pid = rustix::process::Pid::from_raw(controller.0.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let _ = controller.0.wait();
    rt.block_on(expect_one_trace(&collector, &entry_tp));
}
