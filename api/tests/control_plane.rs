//! The CRDs on a real kube-apiserver (faultline-testkit's control plane):
//! they install with server-side apply (structural schemas, CEL within its
//! cost budget), every experiment of the library passes a server-side dry
//! run, and the server refuses each object of the table in common/ with the
//! message the CRD gives.

mod common;

use std::path::Path;

use common::{By, refusals, repo};
use faultline_testkit::cluster::{ControlPlane, Options, faultline_api};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::Value;

fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn api_for(client: &kube::Client, object: &Value) -> Api<DynamicObject> {
    faultline_api(
        client,
        object["kind"].as_str().expect("kind"),
        object["metadata"]["namespace"].as_str(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_api_server_installs_the_crds_and_refuses_what_they_refuse() {
    let Some(cp) = ControlPlane::start(Options::default()).await else {
        return;
    };
    let crds = repo().join("charts/faultline/crds");
    let (ok, text) = run(cp
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager=faultline-test",
            "-f",
        ])
        .arg(&crds));
    assert!(ok, "kubectl apply --server-side of the CRDs: {text}");
    // e.g. `unrecognized format "uint32"`: the server ignores such a format.
    assert!(!text.contains("Warning"), "the server warned: {text}");
    let (ok, text) = run(cp.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/experiments.faultline.dev",
        "crd/nodefaults.faultline.dev",
    ]));
    assert!(ok, "the CRDs were not established: {text}");

    // Every Experiment of the library, as a user would apply it.
    let mut files: Vec<_> = Vec::new();
    for dir in [repo().join("experiments"), repo().join("experiments/demo")] {
        for entry in std::fs::read_dir(&dir).expect("experiments/") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Topology is local mode's kind, never sent to a cluster.
            if path.extension().is_some_and(|e| e == "yaml") && text.contains("kind: Experiment") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for ns in ["shop", "demo"] {
        cp.namespace(ns, true).await;
    }
    for file in &files {
        let (ok, text) = run(cp
            .kubectl()
            .args(["apply", "--dry-run=server", "-f"])
            .arg(file));
        assert!(ok, "{}: {text}", rel(file));
    }

    let client = cp.client().await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut wrong = Vec::new();
    for refusal in refusals() {
        let object: DynamicObject =
            serde_json::from_value(refusal.object.clone()).expect("an object");
        let api = api_for(&client, &refusal.object);
        let expected = match refusal.by {
            By::Schema(field) | By::Cel(field) => field,
        };
        match api.create(&dry_run, &object).await {
            Ok(_) => wrong.push(format!("{}: accepted", refusal.what)),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(expected) => {}
            Err(kube::Error::Api(status)) => wrong.push(format!(
                "{}: {} without {expected:?}: {}",
                refusal.what, status.code, status.message
            )),
            Err(e) => panic!("{}: {e}", refusal.what),
        }
    }
    assert!(
        wrong.is_empty(),
        "the real server did not refuse as the CRDs mean to:\n{}",
        wrong.join("\n")
    );
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}
