//! The CRDs: checked in and in step with the code, accepted by the official
//! Kubernetes schemas, and agreeing with `faultline validate` on what is valid.

use std::{fs, path::PathBuf, process::Command};

use faultline_api::{Experiment, NodeFaults, Resource, crd_yaml, crds, parse_documents};
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

fn experiments() -> Vec<(String, Experiment)> {
    let dir = repo().join("experiments");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).expect("experiments/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let bytes = fs::read(&path).expect("read");
            for doc in parse_documents(&bytes) {
                match doc.result {
                    Ok(Resource::Experiment(e)) => out.push((path.display().to_string(), *e)),
                    other => panic!("{}: {other:?}", path.display()),
                }
            }
        }
    }
    assert!(out.len() >= 6, "the library holds at least six experiments");
    out
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
    let schema = schema_of(&Experiment::crd());
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

fn base_experiment() -> Value {
    let (_, e) = experiments()
        .into_iter()
        .find(|(f, _)| f.ends_with("payments-slowdown.yaml"))
        .expect("payments-slowdown");
    serde_json::to_value(&e).expect("json")
}

fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = new;
    v
}

#[test]
fn the_crd_refuses_at_apply_time_what_validate_refuses() {
    let schema = schema_of(&Experiment::crd());
    let base = base_experiment();
    assert_eq!(openapi_errors(&schema, &base), Vec::<String>::new());
    assert_eq!(cel_errors(&schema, &base), Vec::<String>::new());

    let openapi_cases = [
        ("/spec/duration", json!("5 minutes")),
        ("/spec/hypothesis/0/errorRate/max", json!("105%")),
        ("/spec/targets/cart/mode", json!("some")),
        ("/spec/faults/1/kill/signal", json!("KILL")),
        ("/spec/faults", json!([])),
        ("/spec/hypothesis/3/http/status", json!(42)),
        ("/spec/hypothesis/1/breaker/state", json!("opened")),
    ];
    for (pointer, value) in openapi_cases {
        let object = with(base.clone(), pointer, value.clone());
        assert!(
            !openapi_errors(&schema, &object).is_empty(),
            "{pointer} = {value} was accepted"
        );
    }
    // A fault with two kinds fails the oneOf.
    let mut two_kinds = base.clone();
    two_kinds["spec"]["faults"][1]["latency"] = json!({"delay": "1s"});
    assert!(!openapi_errors(&schema, &two_kinds).is_empty());

    let cel_cases = [
        (
            "/spec/faults/2/target",
            json!("inventroy"),
            "every fault's target must name an entry of spec.targets",
        ),
        (
            "/spec/faults/2/start",
            json!("2m"),
            "a fault's start must fall inside the experiment's duration",
        ),
        (
            "/spec/faults/2/duration",
            json!("90s"),
            "start + duration must not run past",
        ),
        (
            "/spec/duration",
            json!("0s"),
            "the duration must be greater than 0s",
        ),
        (
            "/spec/targets/cart/mode",
            json!("all"),
            "value is required with mode fixed or percent",
        ),
    ];
    for (pointer, value, message) in cel_cases {
        let object = with(base.clone(), pointer, value.clone());
        let errors = cel_errors(&schema, &object);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{pointer} = {value}: {errors:?}"
        );
    }
    let mut percent = with(base.clone(), "/spec/targets/cart/mode", json!("percent"));
    percent["spec"]["targets"]["cart"]["value"] = json!(150);
    assert!(
        cel_errors(&schema, &percent)
            .iter()
            .any(|e| e.contains("with mode percent, value is 1 to 100"))
    );
    let mut bad_fault_ref = base.clone();
    bad_fault_ref["spec"]["hypothesis"][1]["breaker"]["fault"] = json!("nope");
    assert!(
        cel_errors(&schema, &bad_fault_ref)
            .iter()
            .any(|e| e.contains("a breaker check's fault"))
    );
    let long_name = with(base, "/metadata/name", json!("x".repeat(64)));
    assert!(
        cel_errors(&schema, &long_name)
            .iter()
            .any(|e| e.contains("at most 63 characters"))
    );
}

#[test]
fn the_crd_bounds_maps_ports_and_percentiles() {
    let schema = schema_of(&Experiment::crd());
    let base = base_experiment();
    let refused_by_cel = |object: &Value, message: &str| {
        let errors = cel_errors(&schema, object);
        assert!(
            errors.iter().any(|e| e.contains(message)),
            "{message}: {errors:?}"
        );
    };

    // spec.targets: 1 to 32 entries. An empty map also leaves faults without
    // a target, which another rule reports; the size rule must fire too.
    refused_by_cel(
        &with(base.clone(), "/spec/targets", json!({})),
        "targets has 1 to 32 entries",
    );
    let mut many_targets = base.clone();
    for i in 0..30 {
        many_targets["spec"]["targets"][format!("extra-{i}")] = json!({"labels": {"app": "x"}});
    }
    refused_by_cel(&many_targets, "targets has 1 to 32 entries");
    let mut max_targets = base.clone();
    for i in 0..29 {
        max_targets["spec"]["targets"][format!("extra-{i}")] = json!({"labels": {"app": "x"}});
    }
    assert_eq!(cel_errors(&schema, &max_targets), Vec::<String>::new());

    // A target's labels: 1 to 32.
    refused_by_cel(
        &with(base.clone(), "/spec/targets/cart/labels", json!({})),
        "labels has 1 to 32 entries",
    );
    let labels: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("l{i}"), json!("x"))).collect();
    refused_by_cel(
        &with(
            base.clone(),
            "/spec/targets/cart/labels",
            Value::Object(labels),
        ),
        "labels has 1 to 32 entries",
    );

    // Ports are 1 to 65535.
    let mut port_zero = base.clone();
    port_zero["spec"]["faults"][2]["partition"]["ports"] = json!([0]);
    assert!(!openapi_errors(&schema, &port_zero).is_empty());
    port_zero["spec"]["faults"][2]["partition"]["ports"] = json!([1, 65535]);
    assert_eq!(openapi_errors(&schema, &port_zero), Vec::<String>::new());

    // A latency percentile is greater than 0.
    refused_by_cel(
        &with(
            base.clone(),
            "/spec/hypothesis/2/latency/percentile",
            json!(0.0),
        ),
        "the percentile must be greater than 0",
    );
    assert_eq!(
        cel_errors(
            &schema,
            &with(base, "/spec/hypothesis/2/latency/percentile", json!(0.1))
        ),
        Vec::<String>::new()
    );

    // NodeFaults share the partition type: port 0 is refused there too.
    let nf_schema = schema_of(&NodeFaults::crd());
    let nf = json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "metadata": {"name": "node-1"},
        "spec": {"faults": [{
            "id": "a/b/c/0",
            "target": {"pid": 1},
            "expiresAt": "2026-11-22T10:02:00Z",
            "partition": {"peers": ["10.0.0.0/8"], "ports": [0]}
        }]}
    });
    assert!(!openapi_errors(&nf_schema, &nf).is_empty());
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
    let schema = schema_of(&NodeFaults::crd());
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
