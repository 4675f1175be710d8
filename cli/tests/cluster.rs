//! `faultline run` and `faultline abort` against a cluster: the real binary
//! with a kubeconfig naming a mocked API server (faultline-testkit, over
//! loopback HTTP), and the real controller running against the same server
//! in this process. What CI's game day in a cluster does, minus the nodes.

use std::{path::Path, process::Stdio, sync::Arc, time::Duration};

use faultline_controller::{
    metrics::Metrics,
    observe::ObserverClient,
    reconcile::{self, Settings},
};
use faultline_testkit::kube::{ApiServer, Served, until};
use serde_json::{Value, json};
use tokio::{process::Command, sync::oneshot};

const WAIT: Duration = Duration::from_secs(30);

/// The controller on the mocked API server, with the wall clock, and the
/// nodes' agents confirming what it places (for the test's lifetime).
async fn controller(server: &ApiServer) -> oneshot::Sender<()> {
    let agents = server.clone();
    tokio::spawn(async move {
        loop {
            agents.report_applied();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let (ctx, _task) = reconcile::start(
        server.client(),
        ObserverClient::new(None),
        Arc::new(jiff::Timestamp::now),
        Settings {
            tick: Duration::from_millis(100),
            check_every: Duration::from_millis(200),
            max_wait: Duration::from_millis(100),
            ..Settings::default()
        },
        Metrics::default(),
        None,
        async {
            let _ = stopped.await;
        },
    );
    assert!(
        ctx.wait_ready(WAIT).await,
        "the controller never became ready"
    );

    stop
}

fn shop(server: &ApiServer) {
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": "shop", "labels": {"faultline.dev/enabled": "true"}}}));
    for (name, node, ip) in [
        ("payments-1", "node-a", "10.0.0.1"),
        ("payments-2", "node-b", "10.0.0.2"),
    ] {
        server.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "payments"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "shop"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}));
    }
}

fn experiment_file(dir: &Path, duration: &str) -> std::path::PathBuf {
    let path = dir.join("slow.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: slow-payments, namespace: shop}}
spec:
  duration: {duration}
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - {{name: slow, target: payments, latency: {{delay: 300ms}}}}
  hypothesis:
    - name: payments answers
      http: {{url: \"http://127.0.0.1:9/unreachable\", status: 200, timeout: 200ms}}
      when: [before]
"
        ),
    )
    .expect("write experiment");
    path
}

fn faultline(served: &Served) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline"));
    cmd.env("KUBECONFIG", &served.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A ten-minute latency experiment applied directly, once the controller
/// has placed its faults on both nodes.
async fn long_run_placed(server: &ApiServer) {
    server.apply(json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "slow-payments", "namespace": "shop"},
        "spec": {"duration": "10m", "targets": {"payments": {"labels": {"app": "payments"}}},
                 "faults": [{"name": "slow", "target": "payments", "latency": {"delay": "300ms"}}]}}));
    until("faults placed", WAIT, || entries(server) == 2).await;
}

fn entries(server: &ApiServer) -> usize {
    server
        .list("NodeFaults")
        .iter()
        .map(|nf| nf["spec"]["faults"].as_array().map_or(0, Vec::len))
        .sum()
}

fn status(server: &ApiServer) -> Value {
    server
        .get("Experiment", Some("shop"), "slow-payments")
        .map_or(Value::Null, |e| e["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_game_day_exits_1_with_a_junit_report_and_nothing_left() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = experiment_file(dir.path(), "2s");
    let junit = dir.path().join("junit.xml");
    let out = tokio::time::timeout(
        WAIT,
        faultline(&served)
            .arg("run")
            .arg(&file)
            .arg("--junit")
            .arg(&junit)
            .output(),
    )
    .await
    .expect("the run ends")
    .expect("faultline runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The steady-state check fails (nothing answers on port 9): exit 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("applied from"), "{stdout}");
    assert!(
        stdout.contains("FAILED: the hypothesis did not hold"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(&junit).expect("junit written");
    assert!(report.contains("failures=\"1\""), "{report}");
    assert!(report.contains("payments answers"), "{report}");
    assert_eq!(entries(&server), 0);
    assert_eq!(status(&server)["phase"], "Completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_run_exits_0_and_a_second_run_replaces_the_finished_one() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ok.yaml");
    std::fs::write(
        &file,
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: slow-payments, namespace: shop}
spec:
  duration: 2s
  targets: {payments: {labels: {app: payments}}}
  faults: [{name: slow, target: payments, latency: {delay: 300ms}}]
",
    )
    .expect("write");
    for round in 0..2 {
        let out = tokio::time::timeout(WAIT, faultline(&served).arg("run").arg(&file).output())
            .await
            .expect("the run ends")
            .expect("faultline runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Running"),
            "progress shows the phase: {stdout}"
        );
        assert!(stdout.contains("PASSED"), "{stdout}");
        if round == 1 {
            assert!(stdout.contains("removing the finished run"), "{stdout}");
        }
        assert_eq!(entries(&server), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_aborts_the_run_on_the_cluster_with_exit_3() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = experiment_file(dir.path(), "10m");
    // Without the failing steady-state check, so the faults go in.
    let text = std::fs::read_to_string(&file).expect("read");
    let text = text.split("  hypothesis:").next().expect("head").to_owned();
    std::fs::write(&file, text).expect("write");
    let child = faultline(&served)
        .arg("run")
        .arg(&file)
        .spawn()
        .expect("spawn");
    until("faults placed", WAIT, || entries(&server) == 2).await;
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the run ends")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ABORTED"), "{stdout}");
    assert_eq!(entries(&server), 0, "every fault removed");
    assert_eq!(status(&server)["verdict"], "Aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faultline_abort_stops_a_running_experiment() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    long_run_placed(&server).await;
    let out = faultline(&served)
        .args([
            "abort",
            "slow-payments",
            "-n",
            "shop",
            "--reason",
            "pager went off",
        ])
        .output()
        .await
        .expect("faultline abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pager went off"), "{stdout}");
    assert_eq!(entries(&server), 0);
    // Unknown experiments are refused as invalid input.
    let out = faultline(&served)
        .args(["abort", "nope", "-n", "shop"])
        .output()
        .await
        .expect("faultline abort");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_controller_the_run_gives_up_with_exit_4_and_leaves_nothing() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = experiment_file(dir.path(), "2s");
    let out = tokio::time::timeout(
        WAIT,
        faultline(&served)
            .arg("run")
            .arg(&file)
            .args(["--start-timeout", "2s"])
            .output(),
    )
    .await
    .expect("the run ends")
    .expect("faultline runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no controller took it up"), "{stderr}");
    assert!(
        server
            .get("Experiment", Some("shop"), "slow-payments")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_exit_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = experiment_file(dir.path(), "2s");
    let kubeconfig = dir.path().join("kubeconfig");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: gone, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]
users: [{{name: gone, user: {{token: x}}}}]
contexts: [{{name: gone, context: {{cluster: gone, user: gone}}}}]
current-context: gone
"
        ),
    )
    .expect("kubeconfig");
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .env("KUBECONFIG", &kubeconfig)
        .arg("run")
        .arg(&file)
        .output()
        .await
        .expect("faultline runs");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_a_scheduled_experiment_waits_deletes_it_with_exit_3() {
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nightly.yaml");
    std::fs::write(
        &file,
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: slow-payments, namespace: shop}
spec:
  duration: 2s
  schedule: \"0 3 * * *\"
  targets: {payments: {labels: {app: payments}}}
  faults: [{name: slow, target: payments, latency: {delay: 300ms}}]
",
    )
    .expect("write");
    let child = faultline(&served)
        .arg("run")
        .arg(&file)
        .args(["--start-timeout", "2s"])
        .spawn()
        .expect("spawn");
    until("the next start time", WAIT, || {
        !status(&server)["nextRunAt"].is_null()
    })
    .await;
    // Past --start-timeout: a planned start counts as taken up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the run ends")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("nothing was injected"), "{stdout}");
    // Deleted; its finalizer (nothing to remove) lets it go.
    until("the experiment gone", WAIT, || {
        server
            .get("Experiment", Some("shop"), "slow-payments")
            .is_none()
    })
    .await;
    assert_eq!(entries(&server), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_cluster_run_and_aborts_it() {
    use faultline_testkit::terminal::{Tmux, tmux_available};
    if !tmux_available() {
        return;
    }
    let server = ApiServer::new();
    shop(&server);
    let served = server.serve().await;
    let _controller = controller(&server).await;
    let observer = faultline_observer::start(
        &faultline_observer::Addresses::ephemeral(),
        faultline_observer::Limits::default(),
    )
    .await
    .expect("observer");
    observer
        .observer
        .ingest(&faultline_testkit::otlp::server_spans("payments", 10, 1))
        .expect("ingests");
    long_run_placed(&server).await;

    let tmux = Tmux::start(
        100,
        30,
        &format!(
            "env -u KUBERNETES_SERVICE_HOST KUBECONFIG={} {} dashboard --observer http://{} --experiment slow-payments -n shop",
            served.kubeconfig.display(),
            env!("CARGO_BIN_EXE_faultline"),
            observer.addresses.api
        ),
    );
    let wait = |what: &str, want: &dyn Fn(&str) -> bool| {
        tokio::task::block_in_place(|| tmux.wait_for(WAIT, what, |s| want(s)))
    };
    let screen = wait("the run and the observer's figures", &|s| {
        s.contains("active,") && s.contains("│payments") && s.contains("● observer")
    });
    assert!(screen.contains("latency 300ms"), "{screen}");
    tmux.send("a");
    wait("the question", &|s| s.contains("Abort slow-payments?"));
    tmux.send("y");
    until("faults removed", WAIT, || entries(&server) == 0).await;
    let annotation = server
        .get("Experiment", Some("shop"), "slow-payments")
        .map(|e| e["metadata"]["annotations"]["faultline.dev/abort"].clone());
    assert_eq!(status(&server)["verdict"], "Aborted", "{annotation:?}");
    wait("the verdict", &|s| {
        s.contains("ABORTED: every fault removed")
    });
    tmux.send("q");
    let code = tokio::task::block_in_place(|| tmux.exit_status(WAIT));
    assert_eq!(code, Some(0), "{}", tmux.screen());
}
