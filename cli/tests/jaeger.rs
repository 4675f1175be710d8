//! The demo's traces in a real Jaeger (built from its Go module by
//! scripts/jaeger.sh): `faultline demo --otlp-forward` sends on every span
//! the shop's services send the run's observer, and Jaeger's query API
//! shows each of them, every child's parent in its trace, and checkout's
//! breaker attributes and state-change events as checkout recorded them.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use faultline_testkit::jaeger::Jaeger;
use serde_json::Value;

/// Every span Jaeger holds of these services, by (trace id, span id), with
/// the service that sent it.
fn spans_of(jaeger: &Jaeger, services: &[&str]) -> BTreeMap<(String, String), (String, Value)> {
    let mut all = BTreeMap::new();
    for service in services {
        for trace in jaeger.traces(service) {
            for span in trace["spans"].as_array().into_iter().flatten() {
                let process = span["processID"].as_str().unwrap_or_default();
                let sender = trace["processes"][process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = (
                    span["traceID"].as_str().unwrap_or_default().to_owned(),
                    span["spanID"].as_str().unwrap_or_default().to_owned(),
                );
                all.insert(key, (sender, span.clone()));
            }
        }
    }
    all
}

/// The value of a span's tag (attribute), or of a log's (event's) field.
fn tag<'a>(fields: &'a Value, key: &str) -> Option<&'a Value> {
    fields
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

#[test]
fn the_demo_forwards_every_span_to_jaeger_intact() {
    let Some(jaeger) = Jaeger::start() else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args([
            "demo",
            "--duration",
            "30s",
            "--no-dashboard",
            "--otlp-forward",
        ])
        .arg(format!("http://{}", jaeger.otlp_grpc))
        .env("FAULTLINE_TEST_MARK", "jaeger-demo")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (forwarded, dropped): (usize, usize) = stdout
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("spans forwarded: ")?;
            let (n, rest) = rest.split_once(" (")?;
            let d = rest.strip_suffix(" dropped)")?;
            Some((n.parse().ok()?, d.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no forwarding line:\n{stdout}"));
    assert_eq!(dropped, 0, "{stdout}");
    assert!(
        forwarded > 100,
        "a 30 s run at 20 orders a second: {stdout}"
    );

    // Jaeger batches what it receives before it stores it.
    let services = ["frontend", "checkout", "payments", "inventory"];
    let started = Instant::now();
    let spans = loop {
        let spans = spans_of(&jaeger, &services);
        if spans.len() >= forwarded || started.elapsed() > Duration::from_secs(30) {
            break spans;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        spans.len(),
        forwarded,
        "every forwarded span is in Jaeger, once (services {:?})",
        jaeger.services()
    );
    let senders: BTreeSet<&str> = spans.values().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        senders,
        services.into_iter().collect(),
        "each service by its name"
    );

    // Parent/child links: every parent a span names is a span of its trace.
    let mut children = 0;
    for ((trace, id), (_, span)) in &spans {
        for r in span["references"].as_array().into_iter().flatten() {
            assert_eq!(r["refType"], "CHILD_OF", "{span}");
            assert_eq!(r["traceID"], trace.as_str(), "{span}");
            let parent = (
                trace.clone(),
                r["spanID"].as_str().unwrap_or_default().to_owned(),
            );
            assert!(
                spans.contains_key(&parent),
                "span {id} names parent {parent:?}, which is not in the trace"
            );
            children += 1;
        }
    }
    assert!(
        children * 2 > spans.len(),
        "most spans are children: {children}"
    );

    // Checkout's breaker on its payments calls: the state on the spans, and
    // the transition to open as an event with its attributes.
    let checkout: Vec<&Value> = spans
        .values()
        .filter(|(s, _)| s == "checkout")
        .map(|(_, span)| span)
        .collect();
    assert!(
        checkout
            .iter()
            .any(
                |s| tag(&s["tags"], "circuit_breaker.name") == Some(&Value::from("payments"))
                    && tag(&s["tags"], "circuit_breaker.state").is_some()
            ),
        "a checkout span carries the breaker's name and state"
    );
    let opened = checkout
        .iter()
        .flat_map(|s| s["logs"].as_array().into_iter().flatten())
        .any(|log| {
            tag(&log["fields"], "event") == Some(&Value::from("circuit_breaker.state_change"))
                && tag(&log["fields"], "circuit_breaker.state.to") == Some(&Value::from("open"))
                && tag(&log["fields"], "circuit_breaker.reason").is_some()
        });
    assert!(
        opened,
        "the breaker's opening is an event on a checkout span"
    );
}

/// On a cluster the chart's observer forwards; the flag is refused there
/// rather than ignored.
#[test]
fn otlp_forward_is_refused_without_local() {
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "run",
            "experiments/latency-breaker.yaml",
            "--otlp-forward",
            "http://127.0.0.1:4317",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--otlp-forward is for local mode"),
        "{stderr}"
    );
}
