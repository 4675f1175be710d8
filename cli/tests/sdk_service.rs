//! A relative latency check on a third-party-style service: instrumented
//! only with the official OpenTelemetry Python SDK (tests/python/
//! sdk_service.py), none of Faultline's layers, run in local mode. Its p99
//! with a fault is compared with its own p99 before the fault: 20 ms more
//! on its database calls stays within 1.5x and passes; 400 ms does not.
//! The test script installs the SDK and sets FAULTLINE_PYTHON.

use std::{path::Path, process::Command};

use faultline_testkit::free_port;

fn topology(dir: &Path, python: &str) -> std::path::PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_service.py");
    let script = script.display();
    let (db, api, load) = (free_port(), free_port(), free_port());
    let path = dir.join("sdk-shop.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Topology
metadata: {{name: sdk-shop}}
spec:
  services:
    - {{name: db, labels: {{app: db}}, port: {db}, command: [{python}, {script}, db, \"127.0.0.1:{db}\"]}}
    - {{name: api, labels: {{app: api}}, port: {api}, dependsOn: [db], command: [{python}, {script}, api, \"127.0.0.1:{api}\"]}}
    - {{name: load, labels: {{app: load}}, port: {load}, dependsOn: [api], command: [{python}, {script}, load, \"127.0.0.1:{load}\", \"60\"]}}
"
        ),
    )
    .expect("write the topology");
    path
}

fn experiment(dir: &Path, delay: &str) -> std::path::PathBuf {
    let path = dir.join(format!("relative-{delay}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: relative, namespace: demo}}
spec:
  duration: 24s
  targets:
    db: {{labels: {{app: db}}}}
  faults:
    - {{name: slow-db, target: db, start: 12s, latency: {{delay: {delay}}}}}
  hypothesis:
    - name: api p99 within 1.5x of steady state
      latency: {{service: api, percentile: 99, maxRatio: 1.5, window: 5s}}
"
        ),
    )
    .expect("write the experiment");
    path
}

/// Runs the experiment with `delay`; the exit code and stdout.
fn run(dir: &Path, python: &str, delay: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .env("FAULTLINE_TEST_MARK", format!("sdk-{delay}"))
        .arg("run")
        .arg(experiment(dir, delay))
        .arg("--local")
        .arg(topology(dir, python))
        .arg("--no-dashboard")
        .output()
        .expect("faultline runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}\n{stderr}"))
}

#[test]
fn a_relative_latency_check_on_an_sdk_only_service() {
    let Some(python) = faultline_testkit::peer_var("FAULTLINE_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (code, out) = run(dir.path(), &python, "20ms");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("(baseline "),
        "baseline beside the figure: {out}"
    );
    let (code, out) = run(dir.path(), &python, "400ms");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("p99 <= 1.5x baseline"), "{out}");
}
