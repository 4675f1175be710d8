//! `faultline run`, `faultline abort` and `faultline dashboard` on a real
//! kube-apiserver (faultline-testkit's control plane), the chart installed
//! and the `faultline-controller` binary acting as the chart's own
//! ServiceAccount; the user is the cluster's admin. A game day in CI on a
//! cluster does exactly this, minus the kubelets.

use std::{path::PathBuf, process::Stdio, time::Duration};

use faultline_testkit::{
    KillOnDrop,
    agents::{report_applied, report_applied_counting},
    cluster::{ControlPlane, Options, eventually, faultline_api, gone, ready},
};
use kube::{Api, api::DynamicObject};
use serde_json::{Value, json};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(40);

/// A control plane with the chart, a shop (payments on two nodes) and the
/// controller running.
async fn cluster() -> Option<(ControlPlane, KillOnDrop)> {
    let (cp, kubeconfig) = shop().await?;
    let (controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    Some((cp, controller))
}

/// A control plane with the chart and a shop (payments on two nodes); the
/// controller's kubeconfig, for the caller to start it.
async fn shop() -> Option<(ControlPlane, PathBuf)> {
    let cp = ControlPlane::start(Options::default()).await?;
    let chart = cp.install_chart().await;
    cp.namespace("shop", true).await;
    for node in ["node-a", "node-b"] {
        cp.node(node).await;
    }
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    Some((cp, kubeconfig))
}

fn faultline(cp: &ControlPlane) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline"));
    cmd.env("KUBECONFIG", &cp.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn experiment(cp: &ControlPlane, file: &str, duration: &str, failing_check: bool) -> PathBuf {
    let path = cp.dir().join(file);
    let mut text = format!(
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: slow-payments, namespace: shop}}
spec:
  duration: {duration}
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - {{name: slow, target: payments, latency: {{delay: 300ms}}}}
"
    );
    if failing_check {
        text.push_str(
            "  hypothesis:
    - name: payments answers
      http: {url: \"http://127.0.0.1:9/unreachable\", status: 200, timeout: 200ms}
      when: [before]
",
        );
    }
    std::fs::write(&path, text).expect("write the experiment");
    path
}

/// Ctrl-C, as a person at the terminal would; what the run then printed.
async fn interrupted(child: tokio::process::Child) -> std::process::Output {
    let pid = rustix::process::Pid::from_raw(child.id().expect("pid") as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the run ends")
        .expect("output")
}

async fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("faultline ends in time")
        .expect("faultline runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn experiments(client: &kube::Client) -> Api<DynamicObject> {
    faultline_api(client, "Experiment", Some("shop"))
}

/// Entries on every NodeFaults object.
async fn entries(client: &kube::Client) -> usize {
    faultline_api(client, "NodeFaults", None)
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|nf| nf.data["spec"]["faults"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(usize::MAX)
}

async fn status(client: &kube::Client) -> Value {
    experiments(client)
        .get_opt("slow-payments")
        .await
        .ok()
        .flatten()
        .map_or(Value::Null, |e| e.data["status"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn game_days_on_a_real_api_server_exit_0_1_3_4_and_broken() {
    let Some((cp, kubeconfig)) = shop().await else {
        return;
    };
    let client = cp.client().await;

    // No controller takes the run up: exit 4, and the experiment goes.
    let file = experiment(&cp, "unserved.yaml", "2s", false);
    let (code, _, stderr) = run(faultline(&cp)
        .arg("run")
        .arg(&file)
        .args(["--start-timeout", "2s"]))
    .await;
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("no controller took it up"), "{stderr}");
    gone(&experiments(&client), "slow-payments", WAIT).await;
    let (_controller, metrics) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    ready(metrics, WAIT).await;

    // No agent runs, so nobody confirms the faults: the run is broken
    // (exit 4) once the timeout passes, naming the silent nodes, and every
    // fault comes off. Never a pass.
    let silent = cp.dir().join("silent.yaml");
    let text = std::fs::read_to_string(experiment(&cp, "silent.yaml", "30s", false))
        .expect("read")
        .replace("spec:\n", "spec:\n  confirmTimeout: 2s\n");
    std::fs::write(&silent, text).expect("write");
    let (code, stdout, stderr) = run(faultline(&cp).arg("run").arg(&silent)).await;
    assert_eq!(code, Some(4), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("BROKEN"), "{stdout}");
    for node in ["node-a", "node-b"] {
        assert!(
            stdout.contains(&format!("node {node} (no answer from its agent)")),
            "{stdout}"
        );
    }
    assert_eq!(status(&client).await["verdict"], "Broken");
    assert_eq!(status(&client).await["injected"], 0);
    assert_eq!(entries(&client).await, 0, "every fault removed");
    // From here on the nodes' agents answer.
    let agents = report_applied(client.clone(), &["node-a", "node-b"]);

    // Ctrl-C while a scheduled run waits for its start: exit 3, nothing
    // injected, the experiment deleted (its finalizer lets it go).
    let nightly = cp.dir().join("nightly.yaml");
    let text = std::fs::read_to_string(experiment(&cp, "nightly.yaml", "2s", false))
        .expect("read")
        .replace("spec:\n", "spec:\n  schedule: \"0 3 * * *\"\n");
    std::fs::write(&nightly, text).expect("write");
    let child = faultline(&cp)
        .arg("run")
        .arg(&nightly)
        .args(["--start-timeout", "2s"])
        .spawn()
        .expect("spawn");
    eventually("the next start time", WAIT, || async {
        (!status(&client).await["nextRunAt"].is_null()).then_some(())
    })
    .await;
    let out = interrupted(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("nothing was injected"), "{stdout}");
    gone(&experiments(&client), "slow-payments", WAIT).await;
    assert_eq!(entries(&client).await, 0);

    // The hypothesis fails (nothing answers on port 9): exit 1, a report.
    let junit = cp.dir().join("junit.xml");
    let file = experiment(&cp, "failing.yaml", "2s", true);
    let (code, stdout, stderr) = run(faultline(&cp)
        .arg("run")
        .arg(&file)
        .arg("--junit")
        .arg(&junit))
    .await;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("FAILED: the hypothesis did not hold"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(&junit).expect("junit written");
    assert!(report.contains("failures=\"1\""), "{report}");
    assert_eq!(entries(&client).await, 0);

    // It holds: exit 0, the finished run replaced by the new one.
    let file = experiment(&cp, "passing.yaml", "2s", false);
    let (code, stdout, stderr) = run(faultline(&cp).arg("run").arg(&file)).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("removing the finished run"), "{stdout}");
    assert!(stdout.contains("PASSED"), "{stdout}");
    assert!(
        stdout.contains("fault slow: no effect observed (none could be counted)"),
        "{stdout}"
    );
    assert_eq!(entries(&client).await, 0);

    // requireEffect: agents that count nothing fail the run (exit 1); once
    // they count what the fault delayed, it passes, the count reported.
    let require = |name: &str| {
        let path = cp.dir().join(name);
        let text = std::fs::read_to_string(experiment(&cp, name, "3s", false))
            .expect("read")
            .replace("{name: slow,", "{name: slow, requireEffect: true,");
        std::fs::write(&path, text).expect("write");
        path
    };
    let (code, stdout, stderr) = run(faultline(&cp)
        .arg("run")
        .arg(require("uncounted.yaml"))
        .arg("--junit")
        .arg(&junit))
    .await;
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("requireEffect: fault slow: no effect observed (none could be counted)"),
        "{stdout}"
    );
    let report = std::fs::read_to_string(&junit).expect("junit written");
    assert!(report.contains("<failure type=\"effect\""), "{report}");
    drop(agents);
    let _agents = report_applied_counting(client.clone(), &["node-a", "node-b"], Some(40));
    let (code, stdout, stderr) = run(faultline(&cp)
        .arg("run")
        .arg(require("counted.yaml"))
        .arg("--junit")
        .arg(&junit))
    .await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let faults = status(&client).await["faults"].clone();
    assert_eq!(
        faults[0]["effect"],
        json!({"count": 80, "what": "packets delayed"}),
        "40 on each of the two targets: {faults}"
    );
    let report = std::fs::read_to_string(&junit).expect("junit written");
    assert!(
        report.contains("<property name=\"effect.slow\" value=\"80 packets delayed\"/>"),
        "{report}"
    );

    // Ctrl-C mid-run: exit 3, every fault removed.
    let file = experiment(&cp, "long.yaml", "10m", false);
    let child = faultline(&cp).arg("run").arg(&file).spawn().expect("spawn");
    eventually("faults placed", WAIT, || async {
        (entries(&client).await == 2).then_some(())
    })
    .await;
    let out = interrupted(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ABORTED"), "{stdout}");
    assert_eq!(entries(&client).await, 0, "every fault removed");
    assert_eq!(status(&client).await["verdict"], "Aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faultline_abort_and_the_dashboard_on_a_real_api_server() {
    use faultline_testkit::terminal::{Tmux, tmux_available};
    let Some((cp, _controller)) = cluster().await else {
        return;
    };
    let client = cp.client().await;
    // A run applied with kubectl, as a user would.
    let file = experiment(&cp, "long.yaml", "10m", false);
    cp.apply(&std::fs::read_to_string(&file).expect("read"));
    eventually("faults placed", WAIT, || async {
        (entries(&client).await == 2).then_some(())
    })
    .await;
    let (code, stdout, stderr) = run(faultline(&cp).args([
        "abort",
        "slow-payments",
        "-n",
        "shop",
        "--reason",
        "pager went off",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("pager went off"), "{stdout}");
    assert_eq!(entries(&client).await, 0);
    let (code, _, stderr) = run(faultline(&cp).args(["abort", "nope", "-n", "shop"])).await;
    assert_eq!(
        code,
        Some(2),
        "an unknown experiment is invalid input: {stderr}"
    );

    // Stop everything: --all in one namespace, or in every one.
    let text = std::fs::read_to_string(&file).expect("read");
    for name in ["long-a", "long-b"] {
        cp.apply(&text.replace("name: slow-payments", &format!("name: {name}")));
    }
    eventually("both runs' faults placed", WAIT, || async {
        (entries(&client).await == 4).then_some(())
    })
    .await;
    let (code, stdout, _) = run(faultline(&cp).args(["abort", "--all", "-n", "bank"])).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("no experiment runs in namespace bank"),
        "{stdout}"
    );
    assert_eq!(entries(&client).await, 4, "other namespaces untouched");
    let (code, stdout, stderr) = run(faultline(&cp).args(["abort", "--all"])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for name in ["long-a", "long-b"] {
        assert!(
            stdout.contains(&format!("experiment shop/{name}: Recovered")),
            "{stdout}"
        );
    }
    assert_eq!(entries(&client).await, 0, "every fault removed");
    let (code, _, stderr) = run(faultline(&cp).args(["abort", "slow-payments", "--all"])).await;
    assert_eq!(code, Some(2), "a name and --all: {stderr}");

    // The dashboard follows a second run and aborts it.
    if !tmux_available() {
        return;
    }
    // `kubectl delete` of the finished run waits for its finalizer.
    let mut delete = Command::from(cp.kubectl());
    delete.args([
        "delete",
        "experiment",
        "slow-payments",
        "-n",
        "shop",
        "--timeout=30s",
    ]);
    let (code, _, stderr) = run(&mut delete).await;
    assert_eq!(code, Some(0), "{stderr}");
    cp.apply(&std::fs::read_to_string(&file).expect("read"));
    eventually("faults placed again", WAIT, || async {
        (entries(&client).await == 2).then_some(())
    })
    .await;
    let tmux = Tmux::start(
        100,
        30,
        &format!(
            "env -u KUBERNETES_SERVICE_HOST KUBECONFIG={} {} dashboard --experiment slow-payments -n shop",
            cp.kubeconfig.display(),
            env!("CARGO_BIN_EXE_faultline"),
        ),
    );
    let wait = |what: &str, want: &dyn Fn(&str) -> bool| {
        tokio::task::block_in_place(|| tmux.wait_for(WAIT, what, |s| want(s)))
    };
    let screen = wait("the run", &|s| s.contains("active,"));
    assert!(screen.contains("latency 300ms"), "{screen}");
    tmux.send("a");
    wait("the question", &|s| s.contains("Abort slow-payments?"));
    tmux.send("y");
    eventually("faults removed", WAIT, || async {
        (entries(&client).await == 0).then_some(())
    })
    .await;
    wait("the verdict", &|s| {
        s.contains("ABORTED: every fault removed")
    });
    tmux.send("q");
    let code = tokio::task::block_in_place(|| tmux.exit_status(WAIT));
    assert_eq!(code, Some(0), "{}", tmux.screen());
    assert_eq!(status(&client).await["verdict"], "Aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faultline_plan_shows_what_a_run_would_touch_and_applies_nothing() {
    let Some((cp, _kubeconfig)) = shop().await else {
        return;
    };
    // Matched by the target's labels, and no target all the same.
    cp.pod_with_spec(
        "shop",
        "payments-host",
        json!({"app": "payments"}),
        "node-a",
        "127.0.0.1",
        json!({"hostNetwork": true}),
    )
    .await;
    let file = experiment(&cp, "plan.yaml", "2m", false);
    let (code, stdout, stderr) =
        run(faultline(&cp).arg("plan").arg(&file).args(["-o", "json"])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let plan: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(plan["refused"], json!([]), "{plan}");
    let pods: Vec<&str> = plan["faults"][0]["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        pods,
        ["shop/payments-0 on node-a", "shop/payments-1 on node-b"],
        "{plan}"
    );
    assert_eq!(plan["skipped"][0]["pod"], "shop/payments-host", "{plan}");
    assert!(
        plan["skipped"][0]["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("hostNetwork")),
        "{plan}"
    );
    for node in ["node-a", "node-b"] {
        let changes = plan["nodes"][node].to_string();
        assert!(
            changes.contains("netem delay 300ms on every interface"),
            "{plan}"
        );
    }
    assert_eq!(plan["limits"]["pass"], true);
    // Nothing applied: no Experiment, no entry.
    let client = cp.client().await;
    assert_eq!(entries(&client).await, 0);
    assert!(
        experiments(&client)
            .get_opt("slow-payments")
            .await
            .expect("get")
            .is_none()
    );

    // In words, and refused where a run would be.
    let (code, stdout, _) = run(faultline(&cp).arg("plan").arg(&file)).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("would start: yes"), "{stdout}");
    let system = cp.dir().join("system.yaml");
    let text = std::fs::read_to_string(&file).expect("read").replace(
        "{labels: {app: payments}}",
        "{namespaces: [kube-system], labels: {app: payments}}",
    );
    std::fs::write(&system, text).expect("write");
    let (code, stdout, _) = run(faultline(&cp).arg("plan").arg(&system)).await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("would start: NO"), "{stdout}");
    assert!(
        stdout.contains("namespace kube-system is protected"),
        "{stdout}"
    );
}
