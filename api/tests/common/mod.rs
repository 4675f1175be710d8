//! What the CRD tests share: the experiment library, and the table of
//! objects the CRDs must refuse, checked client-side (crds.rs) and by a
//! real kube-apiserver (control_plane.rs).

#![allow(dead_code)]

use std::{fs, path::PathBuf};

use faultline_api::{Experiment, Resource, parse_documents};
use serde_json::{Value, json};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every Experiment in `experiments/` (the top level), by file.
pub fn experiments() -> Vec<(String, Experiment)> {
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

/// payments-slowdown.yaml as JSON: the object every case edits.
pub fn base_experiment() -> Value {
    let (_, e) = experiments()
        .into_iter()
        .find(|(f, _)| f.ends_with("payments-slowdown.yaml"))
        .expect("payments-slowdown");
    serde_json::to_value(&e).expect("json")
}

/// `v` with the value at `pointer` (which must exist) replaced.
pub fn with(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = new;
    v
}

/// A NodeFaults object with one valid entry.
pub fn base_node_faults() -> Value {
    json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "metadata": {"name": "node-1"},
        "spec": {"faults": [{
            "id": "a/b/c/0",
            "target": {"pod": {"uid": "6f1c2d3e-0000-4000-8000-000000000001"}},
            "expiresAt": "2026-11-22T10:02:00Z",
            "partition": {"peers": ["10.0.0.0/8"], "ports": [80]}
        }]}
    })
}

/// Which part of the CRD refuses an object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum By {
    /// The OpenAPI schema (types, enums, patterns, bounds, oneOf); the
    /// server's message names this field path.
    Schema(&'static str),
    /// A CEL rule (`x-kubernetes-validations`) with this message.
    Cel(&'static str),
}

/// An object the CRDs must refuse.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub what: String,
    pub object: Value,
    pub by: By,
}

fn case(what: &str, object: Value, by: By) -> Refusal {
    Refusal {
        what: what.to_owned(),
        object,
        by,
    }
}

/// Every object the CRDs are meant to refuse, each an edit of a valid one.
pub fn refusals() -> Vec<Refusal> {
    let base = base_experiment();
    let edit = |pointer: &str, value: Value, by: By| {
        case(
            &format!("{pointer} = {value}"),
            with(base.clone(), pointer, value),
            by,
        )
    };
    let mut out = vec![
        edit(
            "/spec/duration",
            json!("5 minutes"),
            By::Schema("spec.duration"),
        ),
        edit(
            "/spec/hypothesis/0/errorRate/max",
            json!("105%"),
            By::Schema("spec.hypothesis[0].errorRate.max"),
        ),
        edit(
            "/spec/targets/cart/mode",
            json!("some"),
            By::Schema("spec.targets.cart.mode"),
        ),
        edit(
            "/spec/faults/1/kill/signal",
            json!("KILL"),
            By::Schema("spec.faults[1].kill.signal"),
        ),
        edit("/spec/faults", json!([]), By::Schema("spec.faults")),
        edit(
            "/spec/hypothesis/3/http/status",
            json!(42),
            By::Schema("spec.hypothesis[3].http.status"),
        ),
        edit(
            "/spec/hypothesis/1/breaker/state",
            json!("opened"),
            By::Schema("spec.hypothesis[1].breaker.state"),
        ),
        // Numbers the Rust types cannot hold: the apiserver ignores
        // `format: uint32`, so only a `maximum` keeps them out.
        edit(
            "/spec/limits/maxTargets",
            json!(4_294_967_296_u64),
            By::Schema("spec.limits.maxTargets"),
        ),
        edit(
            "/spec/limits",
            json!({"maxTargets": 20, "maxPercent": 101}),
            By::Schema("spec.limits.maxPercent"),
        ),
        edit(
            "/spec/targets/cart/value",
            json!(4_294_967_296_u64),
            By::Schema("spec.targets.cart.value"),
        ),
        edit(
            "/spec/faults/2/target",
            json!("inventroy"),
            By::Cel("every fault's target must name an entry of spec.targets"),
        ),
        edit(
            "/spec/faults/2/start",
            json!("2m"),
            By::Cel("a fault's start must fall inside the experiment's duration"),
        ),
        edit(
            "/spec/faults/2/duration",
            json!("90s"),
            By::Cel("start + duration must not run past"),
        ),
        edit(
            "/spec/duration",
            json!("0s"),
            By::Cel("the duration must be greater than 0s"),
        ),
        edit(
            "/spec/targets/cart/mode",
            json!("all"),
            By::Cel("value is required with mode fixed or percent"),
        ),
        edit(
            "/spec/targets",
            json!({}),
            By::Cel("targets has 1 to 32 entries"),
        ),
        edit(
            "/spec/targets/cart/labels",
            json!({}),
            By::Cel("labels has 1 to 32 entries"),
        ),
        edit(
            "/spec/hypothesis/2/latency/percentile",
            json!(0.0),
            By::Cel("the percentile must be greater than 0"),
        ),
        edit(
            "/metadata/name",
            json!("x".repeat(64)),
            By::Cel("at most 63 characters"),
        ),
    ];

    let mut two_kinds = base.clone();
    two_kinds["spec"]["faults"][1]["latency"] = json!({"delay": "1s"});
    out.push(case(
        "a fault with two kinds",
        two_kinds,
        By::Schema("spec.faults[1]"),
    ));
    let mut percent = with(base.clone(), "/spec/targets/cart/mode", json!("percent"));
    percent["spec"]["targets"]["cart"]["value"] = json!(150);
    out.push(case(
        "percent over 100",
        percent,
        By::Cel("with mode percent, value is 1 to 100"),
    ));
    let mut bad_fault_ref = base.clone();
    bad_fault_ref["spec"]["hypothesis"][1]["breaker"]["fault"] = json!("nope");
    out.push(case(
        "a breaker check naming no fault",
        bad_fault_ref,
        By::Cel("a breaker check's fault"),
    ));
    let mut many_targets = base.clone();
    for i in 0..30 {
        many_targets["spec"]["targets"][format!("extra-{i}")] = json!({"labels": {"app": "x"}});
    }
    out.push(case(
        "33 targets",
        many_targets,
        By::Cel("targets has 1 to 32 entries"),
    ));
    let labels: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("l{i}"), json!("x"))).collect();
    out.push(case(
        "33 labels",
        with(
            base.clone(),
            "/spec/targets/cart/labels",
            Value::Object(labels),
        ),
        By::Cel("labels has 1 to 32 entries"),
    ));
    let mut port_zero = base.clone();
    port_zero["spec"]["faults"][2]["partition"]["ports"] = json!([0]);
    out.push(case(
        "port 0",
        port_zero,
        By::Schema("spec.faults[2].partition.ports[0]"),
    ));

    let nf = base_node_faults();
    let mut two_targets = nf.clone();
    two_targets["spec"]["faults"][0]["target"]["pid"] = json!(1234);
    out.push(case(
        "a NodeFaults entry with two targets",
        two_targets,
        By::Schema("spec.faults[0].target"),
    ));
    out.push(case(
        "a NodeFaults entry on port 0",
        with(nf.clone(), "/spec/faults/0/partition/ports", json!([0])),
        By::Schema("spec.faults[0].partition.ports[0]"),
    ));
    out.push(case(
        "a NodeFaults pid too large for a pid",
        with(
            nf,
            "/spec/faults/0/target",
            json!({"pid": 4_294_967_296_u64}),
        ),
        By::Schema("spec.faults[0].target.pid"),
    ));
    out
}
