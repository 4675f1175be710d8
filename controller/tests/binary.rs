//! The `faultline-controller` binary as a Deployment runs it, against the
//! mocked API server over HTTP (kubeconfig): it runs an Experiment to its
//! verdict and serves /healthz, /readyz and /metrics; SIGTERM stops it.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use faultline_testkit::{
    free_port, http_get,
    kube::{ApiServer, until},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_an_experiment_and_serves_health_and_metrics() {
    let server = ApiServer::new();
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"faultline.dev/enabled": "true"}}}));
    server.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "payments-1", "namespace": "shop", "labels": {"app": "payments"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "shop"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]}}));
    let served = server.serve().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_faultline-controller"))
        .env("KUBECONFIG", &served.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info")
        .args([
            "--leader-elect",
            "false",
            "--tick",
            "200ms",
            "--metrics-addr",
        ])
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the controller");
    let get = move |path: &'static str| tokio::task::spawn_blocking(move || http_get(addr, path));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Ok((200, body))) = get("/readyz").await {
            assert_eq!(body, "ready");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get("/healthz").await.expect("join").expect("healthz").0,
        200
    );

    server.apply(json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "slow", "namespace": "shop"},
        "spec": {"duration": "2s", "targets": {"payments": {"labels": {"app": "payments"}}},
                 "faults": [{"name": "slow", "target": "payments", "latency": {"delay": "300ms"}}]}}));
    until("the entry placed", WAIT, || {
        server.get("NodeFaults", None, "node-a").is_some_and(|nf| {
            nf["spec"]["faults"]
                .as_array()
                .is_some_and(|f| f.len() == 1)
        })
    })
    .await;
    until("the verdict", WAIT, || {
        // node-a's agent confirms the entry.
        server.report_applied();
        server
            .get("Experiment", Some("shop"), "slow")
            .is_some_and(|e| e["status"]["verdict"] == "Passed")
    })
    .await;
    // The run is counted just after its verdict is written.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = get("/metrics").await.expect("join").expect("metrics");
        assert_eq!(status, 200);
        if metrics.contains("faultline_controller_runs_finished_total 1")
            || tokio::time::Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for family in [
        "faultline_controller_reconciles_total",
        "faultline_controller_nodefaults_writes_total",
        "faultline_controller_runs_finished_total 1",
        "faultline_controller_reconcile_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }

    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("stops")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
