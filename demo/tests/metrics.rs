//! The resilience layers' metrics leave a demo service over OTLP when asked
//! for (`OTEL_METRICS_EXPORTER=otlp`), and only then: the endpoint is
//! usually Faultline's observer, which takes traces only.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use faultline_testkit::KillOnDrop;
use mock_collector::{MockServer, Protocol, ServerHandle};

/// checkout with both dependencies on ports nothing listens on, so its
/// breaker, retries and fallback all act.
fn checkout(otlp: SocketAddr, env: &[(&str, &str)]) -> (KillOnDrop, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", faultline_testkit::free_port())
        .parse()
        .expect("addr");
    let nowhere = |_| format!("127.0.0.1:{}", faultline_testkit::free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_faultline-demo"))
        .args(["checkout", "--listen", &listen.to_string()])
        .env("PAYMENTS_ADDR", nowhere(()))
        .env("INVENTORY_ADDR", nowhere(()))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("faultline-demo starts");
    (KillOnDrop(child), listen)
}

/// `n` orders, one after the other, once checkout listens (it may take a
/// while to start on a busy machine: up to 20 s).
async fn orders(checkout: SocketAddr, n: usize) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(checkout).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..n {
        // Refusals and errors are what the test is after; the answer is not.
        let _ = faultline_testkit::http(checkout, "POST", "/checkout", &[], b"{}").await;
    }
}

async fn receiver() -> ServerHandle {
    MockServer::builder()
        .protocol(Protocol::Grpc)
        .start()
        .await
        .expect("receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilience_metrics_are_exported_when_asked_for() {
    let otlp = receiver().await;
    let (_checkout, addr) = checkout(otlp.addr(), &[("OTEL_METRICS_EXPORTER", "otlp")]);
    orders(addr, 20).await;
    otlp.wait_until(
        |c| {
            [
                "circuit_breaker.calls",
                "retry.attempts",
                "fallback.invocations",
            ]
            .iter()
            .all(|name| c.expect_metric_with_name(*name).count() >= 1)
        },
        Duration::from_secs(20),
    )
    .await
    .expect("breaker, retry and fallback metrics arrive");
    otlp.with_collector(|c| {
        let metric = &c.metrics()[0];
        assert!(
            metric
                .resource_attrs()
                .iter()
                .any(|kv| kv.key == "service.name"),
            "metrics carry the service's resource"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_asking_only_traces_leave() {
    let otlp = receiver().await;
    let (_checkout, addr) = checkout(otlp.addr(), &[]);
    orders(addr, 10).await;
    otlp.wait_until(|c| c.span_count() >= 10, Duration::from_secs(20))
        .await
        .expect("spans arrive");
    // Ten export intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    otlp.with_collector(|c| assert_eq!(c.metric_count(), 0))
        .await;
}
