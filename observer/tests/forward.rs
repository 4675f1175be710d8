//! Forwarding to a real OTLP receiver (mock-collector) over gRPC and HTTP:
//! every span arrives intact; a dead downstream costs only what overflows
//! the queue, and ingest keeps its pace.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime},
};

use faultline_observer::{Addresses, ForwardConfig, ForwardProtocol, Limits, Observer};
use faultline_testkit::otlp::{self, attr as kv};
use mock_collector::{MockServer, Protocol};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    trace::v1::{Span, span::SpanKind},
};

/// One export of `n` spans in one trace: a root and children pointing at it.
fn export(service: &str, trace: u8, n: usize) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_nanos() as u64;
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![trace; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: if i == 0 {
                vec![]
            } else {
                1u64.to_be_bytes().to_vec()
            },
            name: format!("op-{i}"),
            kind: if i == 0 {
                SpanKind::Server as i32
            } else {
                SpanKind::Client as i32
            },
            start_time_unix_nano: now - 1_000_000,
            end_time_unix_nano: now,
            attributes: vec![
                kv("peer.service", "payments"),
                kv("faultline.test.index", &i.to_string()),
            ],
            ..Default::default()
        })
        .collect();
    otlp::export(
        vec![
            kv("service.name", service),
            kv("deployment.environment", "test"),
        ],
        spans,
    )
}

async fn observer_forwarding(config: ForwardConfig) -> faultline_observer::Running {
    faultline_observer::start_with(
        &Addresses::ephemeral(),
        Observer::new(Limits::default()).forward_to(config),
    )
    .await
    .expect("observer")
}

async fn forwards_intact(protocol: Protocol, forward: ForwardProtocol) {
    let downstream = MockServer::builder()
        .protocol(protocol)
        .start()
        .await
        .expect("receiver");
    let obs = observer_forwarding(ForwardConfig::new(
        format!("http://{}", downstream.addr()),
        forward,
    ))
    .await;
    let mut client = TraceServiceClient::connect(format!("http://{}", obs.addresses.otlp_grpc))
        .await
        .expect("connect");
    let sent: Vec<ExportTraceServiceRequest> = (1..=5).map(|t| export("checkout", t, 20)).collect();
    for req in &sent {
        client.export(req.clone()).await.expect("export");
    }
    downstream
        .wait_for_spans(100, Duration::from_secs(10))
        .await
        .expect("all 100 spans forwarded");
    let mut expected: Vec<&Span> = sent
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let got = downstream.with_collector(|c| c.spans().to_vec()).await;
    assert_eq!(got.len(), 100);
    let mut received: Vec<Span> = got.iter().map(|s| s.span().clone()).collect();
    received.sort_by(|a, b| (&a.trace_id, &a.span_id).cmp(&(&b.trace_id, &b.span_id)));
    expected.sort_by(|a, b| (&a.trace_id, &a.span_id).cmp(&(&b.trace_id, &b.span_id)));
    for (r, e) in received.iter().zip(expected) {
        assert_eq!(
            r, e,
            "span arrives exactly as sent: ids, parents, attributes, times"
        );
    }
    assert!(got.iter().all(|s| {
        s.resource_attrs().contains(&kv("service.name", "checkout"))
            && s.resource_attrs()
                .contains(&kv("deployment.environment", "test"))
    }));
    // The counter moves once the downstream has acknowledged, just after
    // it holds the spans.
    let stats = obs.observer.forward_stats().expect("forwarding");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stats.forwarded.load(Ordering::Relaxed) < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_every_span_intact_over_grpc() {
    forwards_intact(Protocol::Grpc, ForwardProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_every_span_intact_over_http() {
    forwards_intact(Protocol::HttpBinary, ForwardProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_downstream_loses_only_the_overflow() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut config = ForwardConfig::new(format!("http://{dead}"), ForwardProtocol::Grpc);
    config.queue_spans = 1000;
    let obs = observer_forwarding(config).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", obs.addresses.otlp_grpc))
        .await
        .expect("connect");
    let started = Instant::now();
    for t in 0..50u8 {
        client
            .export(export("flood", t, 100))
            .await
            .expect("ingest never waits for the downstream");
    }
    // 5 000 spans ingested while the downstream refuses every connection.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ingest slowed: {:?}",
        started.elapsed()
    );
    let stats = obs.observer.forward_stats().expect("forwarding");
    let dropped = stats.dropped_queue_full.load(Ordering::Relaxed);
    assert!(
        dropped >= 4000,
        "only what overflowed the 1 000-span queue is dropped at once: {dropped}"
    );
    assert!(stats.queued.load(Ordering::Relaxed) <= 1000);
    let f = obs.observer.service("flood", 30).expect("seen");
    assert_eq!(f.red.requests, 50, "every root span was still counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_in_bytes_too() {
    // A downstream that accepts connections and never answers: everything
    // queued stays queued for the length of the test.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let mut config = ForwardConfig::new(format!("http://{addr}"), ForwardProtocol::HttpProtobuf);
    // Room for two exports by bytes, for thousands by spans.
    let one = prost::Message::encoded_len(&export("big", 0, 10));
    config.queue_spans = 100_000;
    config.queue_bytes = 2 * one + one / 2;
    let observer = Observer::new(Limits::default()).forward_to(config);
    for t in 0..5u8 {
        observer.ingest(&export("big", t, 10)).expect("ingest");
    }
    let stats = observer.forward_stats().expect("forwarding");
    assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 30);
    assert_eq!(stats.queued.load(Ordering::Relaxed), 20);
    assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 2 * one);
    drop(silent);
}
