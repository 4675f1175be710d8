//! Spans sent by the official OpenTelemetry Python SDK and OTLP exporters,
//! over gRPC and over HTTP, give exactly the expected figures. The test
//! script installs the SDK and sets FAULTLINE_PYTHON; without it the test
//! skips, unless FAULTLINE_REQUIRE_PEERS says it must run.

use std::{path::PathBuf, process::Command};

use faultline_observer::{Addresses, BreakerState, Limits};

/// A python with the OpenTelemetry SDK.
fn python() -> Option<String> {
    faultline_testkit::peer_var("FAULTLINE_PYTHON")
}

async fn check(protocol: &'static str) {
    let Some(python) = python() else { return };
    let obs = faultline_observer::start(&Addresses::ephemeral(), Limits::default())
        .await
        .expect("observer");
    let endpoint = match protocol {
        "grpc" => format!("http://{}", obs.addresses.otlp_grpc),
        _ => format!("http://{}", obs.addresses.otlp_http),
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/send_spans.py");
    let service = format!("py-{protocol}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(protocol)
            .arg(endpoint)
            .arg(service)
            .output()
    })
    .await
    .expect("task")
    .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let f = obs
        .observer
        .service(&format!("py-{protocol}"), 60)
        .expect("service seen");
    assert_eq!(f.red.requests, 200);
    assert_eq!(f.red.error_rate, 0.1);
    // 1..200 ms uniformly: p50 = 100 ms, p95 = 190 ms, p99 = 198 ms, within the sketch's 1 %.
    for (got, exact) in [
        (f.red.latency_ms.p50, 100.0),
        (f.red.latency_ms.p95, 190.0),
        (f.red.latency_ms.p99, 198.0),
    ] {
        assert!(
            (got - exact).abs() <= exact * 0.01 + 1e-9,
            "{got} vs {exact}"
        );
    }
    let edge = &f.edges[0];
    assert_eq!((edge.to.as_str(), edge.red.requests), ("payments", 30));
    assert!((edge.red.error_rate - 10.0 / 30.0).abs() < 1e-3);
    let b = &f.breakers[0];
    assert_eq!(
        (b.name.as_str(), b.state, b.transitions, b.short_circuited),
        ("payments", BreakerState::Open, 1, 9)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_grpc() {
    check("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_http() {
    check("http").await;
}
