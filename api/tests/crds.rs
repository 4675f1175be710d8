//! The CRDs: checked in and in step with the code, accepted by the official
//! Kubernetes schemas, and agreeing with `faultline validate` on what is valid.

use std::{fs, path::PathBuf, process::Command};

mod common;

use common::{By, base_experiment, experiments, refusals, repo, with};
use faultline_api::{Experiment, Resource, crd_yaml, crds, parse_documents};
use serde_json::{Value, json};

/// The checked-in schema of the CRD in `file`.
fn schema(file: &str) -> Value {
    let (_, crd) = crds().into_iter().find(|(f, _)| *f == file).expect("a CRD");
    schema_of(&crd)
}

const EXPERIMENTS: &str = "experiments.faultline.dev.yaml";
const NODE_FAULTS: &str = "nodefaults.faultline.dev.yaml";

#[test]
fn checked_in_crds_match_the_code() {
    let dir = repo().join("charts/faultline/crds");
    let mut stale = Vec::new();
    for (file, crd) in crds() {
        let generated = crd_yaml(&crd).expect("serializes");
        let path = dir.join(file);
        let checked_in = fs::read_to_string(&path).unwrap_or_default();
        if generated != checked_in {
            if std::env::var_os("FAULTLINE_UPDATE_CRDS").is_some() {
                fs::write(&path, generated).expect("write");
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} drifted from the Rust types; regenerate with `cargo run -p faultline -- crd --out-dir charts/faultline/crds`"
    );
}

/// `kubernetes-validate --strict` checks the CRD manifests against the
/// official apiextensions schema. The test script installs it and sets
/// FAULTLINE_REQUIRE_PEERS, so CI can never pass by skipping this.
#[test]
fn crds_pass_kubernetes_validate_strict() {
    let tool = std::env::var("FAULTLINE_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".into());
    let dir = repo().join("charts/faultline/crds");
    let files: Vec<PathBuf> = crds().iter().map(|(f, _)| dir.join(f)).collect();
    let out = match Command::new(&tool)
        .arg("--strict")
        .arg("--kubernetes-version")
        .arg("1.33")
        .args(&files)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            faultline_testkit::skip_without_peer(&format!("{tool} not available ({e})"));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.matches(" passed for resource ").count()
            + stderr.matches(" passed for resource ").count(),
        files.len(),
        "every CRD must be reported as passed:\n{stdout}\n{stderr}"
    );
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(schema).expect("json")
}

/// OpenAPI checks (types, enums, patterns, bounds, oneOf) as the apiserver applies them.
fn openapi_errors(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(schema)
        .expect("schema compiles");
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// CEL rules (`x-kubernetes-validations`) as the apiserver evaluates them.
fn cel_errors(schema: &Value, object: &Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[test]
fn every_valid_experiment_is_accepted_by_the_crd_schema_and_rules() {
    let schema = schema(EXPERIMENTS);
    for (file, e) in experiments() {
        let object = serde_json::to_value(&e).expect("json");
        assert_eq!(
            openapi_errors(&schema, &object),
            Vec::<String>::new(),
            "{file}"
        );
        assert_eq!(cel_errors(&schema, &object), Vec::<String>::new(), "{file}");
    }
}

/// The schema of the CRD `object` is of.
fn schema_for(object: &Value) -> Value {
    match object["kind"].as_str() {
        Some("NodeFaults") => schema(NODE_FAULTS),
        _ => schema(EXPERIMENTS),
    }
}

#[test]
fn the_crds_refuse_every_object_of_the_table() {
    let base = base_experiment();
    let schema_of_experiments = schema(EXPERIMENTS);
    assert_eq!(
        openapi_errors(&schema_of_experiments, &base),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors(&schema_of_experiments, &base),
        Vec::<String>::new()
    );
    for refusal in refusals() {
        let schema = schema_for(&refusal.object);
        match refusal.by {
            By::Schema(_) => assert!(
                !openapi_errors(&schema, &refusal.object).is_empty(),
                "{} was accepted by the schema",
                refusal.what
            ),
            By::Cel(message) => {
                let errors = cel_errors(&schema, &refusal.object);
                assert!(
                    errors.iter().any(|e| e.contains(message)),
                    "{}: {errors:?}",
                    refusal.what
                );
            }
        }
    }
}

#[test]
fn the_crd_bounds_are_inclusive() {
    let schema = schema(EXPERIMENTS);
    let base = base_experiment();
    let mut max_targets = base.clone();
    for i in 0..29 {
        max_targets["spec"]["targets"][format!("extra-{i}")] = json!({"labels": {"app": "x"}});
    }
    assert_eq!(cel_errors(&schema, &max_targets), Vec::<String>::new());
    let mut ports = base.clone();
    ports["spec"]["faults"][2]["partition"]["ports"] = json!([1, 65535]);
    assert_eq!(openapi_errors(&schema, &ports), Vec::<String>::new());
    let largest = with(base.clone(), "/spec/limits/maxTargets", json!(u32::MAX));
    assert_eq!(openapi_errors(&schema, &largest), Vec::<String>::new());
    assert_eq!(
        cel_errors(
            &schema,
            &with(base, "/spec/hypothesis/2/latency/percentile", json!(0.1))
        ),
        Vec::<String>::new()
    );
}

#[test]
fn validate_refuses_what_the_crd_bounds_refuse() {
    // The same bad objects, written as YAML, are refused by `faultline validate`.
    let base = fs::read_to_string(repo().join("experiments/payments-slowdown.yaml")).expect("read");
    let refused = |text: &str| {
        parse_documents(text.as_bytes())
            .iter()
            .any(|d| d.result.is_err())
    };
    assert!(refused(&base.replace("labels: {app: cart}", "labels: {}")));
    let labels: Vec<String> = (0..33).map(|i| format!("l{i}: x")).collect();
    assert!(refused(&base.replace(
        "labels: {app: cart}",
        &format!("labels: {{{}}}", labels.join(", "))
    )));
    assert!(refused(&base.replace(
        "peers: [payments]}",
        "peers: [payments], ports: [0]}"
    )));
    assert!(refused(&base.replace("percentile: 99", "percentile: 0")));
}

#[test]
fn node_faults_schema_accepts_valid_and_refuses_two_targets() {
    let text = "apiVersion: faultline.dev/v1alpha1
kind: NodeFaults
metadata: {name: node-1}
spec:
  faults:
    - id: a/b/c/0
      target: {pod: {uid: 6f1c2d3e-0000-4000-8000-000000000001}}
      expiresAt: \"2026-11-22T10:02:00Z\"
      traceparent: \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\"
      latency: {delay: 300ms, jitter: 50ms, to: [\"10.0.0.0/8\"]}
    - id: a/b/d/0
      target: {pid: 1234}
      expiresAt: \"2026-11-22T10:02:00Z\"
      kill: {signal: SIGTERM, every: 5s}
";
    let docs = parse_documents(text.as_bytes());
    let Ok(Resource::NodeFaults(nf)) = &docs[0].result else {
        panic!("{docs:?}")
    };
    let schema = schema(NODE_FAULTS);
    let object = serde_json::to_value(nf.as_ref()).expect("json");
    assert_eq!(openapi_errors(&schema, &object), Vec::<String>::new());
    assert_eq!(cel_errors(&schema, &object), Vec::<String>::new());
    let mut two = object.clone();
    two["spec"]["faults"][1]["target"]["netns"] = json!("/run/netns/x");
    assert!(!openapi_errors(&schema, &two).is_empty());
}

#[test]
fn serde_and_located_decoding_agree() {
    // The controller reads objects through serde; `faultline validate` through
    // the located decoder. Both must read every example the same way.
    for (file, e) in experiments() {
        let text = fs::read_to_string(&file).expect("read");
        let via_serde: Experiment =
            serde_saphyr::from_str(&text).unwrap_or_else(|err| panic!("{file}: {err}"));
        assert_eq!(
            serde_json::to_value(&via_serde).expect("json"),
            serde_json::to_value(&e).expect("json"),
            "{file}"
        );
        // And JSON written by one is read back identically.
        let json = serde_json::to_string(&e).expect("json");
        let back: Experiment = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, e, "{file}");
    }
}
