//! Observer benchmark: prints its figures, asserts nothing.
//!
//!   cargo bench -p faultline-observer --bench ingest
//!
//! Runs `faultline-observer` as its own process and measures, in one run:
//! - ingest throughput over OTLP/gRPC for realistic spans (10 attributes,
//!   resource with service.name), per core of observer CPU time (from
//!   /proc/PID/stat), from 4 concurrent exporters in this process;
//! - p50/p99 of `GET /api/v1/services` while ingesting at full rate;
//! - resident memory per tracked service and per tracked breaker.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use faultline_testkit::{
    KillOnDrop as Observer, free_port,
    otlp::{self, attr as kv, now_nanos},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    trace::v1::{Span, span::SpanKind},
};

const LOAD_SECS: u64 = 5;
const CLIENTS: usize = 4;
const SPANS_PER_EXPORT: usize = 500;

fn export(service: &str, breaker: Option<&str>, spans: usize) -> ExportTraceServiceRequest {
    let now = now_nanos();
    let spans = (0..spans)
        .map(|i| {
            let mut attributes = vec![
                kv("http.request.method", "POST"),
                kv("http.route", "/checkout"),
                kv("url.path", "/checkout"),
                kv("server.address", "checkout.shop.svc"),
                kv("network.protocol.version", "1.1"),
                kv("user_agent.original", "faultline-bench/1"),
                kv("client.address", "10.0.3.7"),
                kv("shop.order.id", &i.to_string()),
                kv("shop.tenant", "acme"),
                kv("http.response.status_code", "200"),
            ];
            if let Some(b) = breaker {
                attributes[8] = kv("circuit_breaker.name", b);
                attributes[9] = kv("circuit_breaker.state", "closed");
            }
            Span {
                trace_id: (now as u128 + i as u128).to_be_bytes().to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: "POST /checkout".into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: now - (1 + (i as u64 % 200)) * 1_000_000,
                end_time_unix_nano: now,
                attributes,
                ..Default::default()
            }
        })
        .collect();
    otlp::export(vec![kv("service.name", service)], spans)
}

/// (user + system CPU seconds, resident KiB) of a process.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields after the command: state is 0, utime 11, stime 12; 100 ticks a second.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

async fn get(api: SocketAddr, path: &str) -> Duration {
    let started = Instant::now();
    let _ = faultline_testkit::http(api, "GET", path, &[], b"").await;
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let (grpc, http, api) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_faultline-observer"))
        .args([
            "--otlp-grpc",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http",
            &format!("127.0.0.1:{http}"),
            "--api",
            &format!("127.0.0.1:{api}"),
        ])
        .args(["--max-services", "5000"])
        .stderr(Stdio::null())
        .spawn()
        .expect("faultline-observer runs");
    let observer = Observer(child);
    let pid = observer.0.id();
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let api = SocketAddr::from(([127, 0, 0, 1], api));
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(c) = TraceServiceClient::connect(endpoint.clone()).await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = connected.expect("observer listening");

    // Throughput, with the API polled meanwhile.
    let (cpu0, rss0) = proc_usage(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(LOAD_SECS);
    let mut senders = Vec::new();
    for c in 0..CLIENTS {
        let mut client = client.clone();
        senders.push(tokio::spawn(async move {
            let req = export(&format!("svc-{c}"), None, SPANS_PER_EXPORT);
            let mut sent = 0u64;
            while Instant::now() < deadline {
                if client.export(req.clone()).await.is_ok() {
                    sent += SPANS_PER_EXPORT as u64;
                }
            }
            sent
        }));
    }
    let mut api_latencies = Vec::new();
    while Instant::now() < deadline {
        api_latencies.push(get(api, "/api/v1/services?window=30s").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut spans = 0;
    for s in senders {
        spans += s.await.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, rss1) = proc_usage(pid);
    let cpu = (cpu1 - cpu0).max(0.01);
    api_latencies.sort();
    let pct = |p: f64| {
        api_latencies
            [((api_latencies.len() as f64 * p).ceil() as usize).clamp(1, api_latencies.len()) - 1]
    };
    println!(
        "ingest over OTLP/gRPC ({CLIENTS} exporters, {SPANS_PER_EXPORT} spans per export, 10 attributes each):"
    );
    println!(
        "  spans ingested:            {spans} in {elapsed:.1} s = {:.0} spans/s",
        spans as f64 / elapsed
    );
    println!(
        "  observer CPU:              {cpu:.2} s = {:.2} cores busy",
        cpu / elapsed
    );
    println!(
        "  spans per core-second:     {:.0}   (target >= 200000)",
        spans as f64 / cpu
    );
    println!(
        "  GET /api/v1/services meanwhile: p50 {:.2} ms, p99 {:.2} ms ({} requests)",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        api_latencies.len()
    );
    println!(
        "  observer RSS:              {} KiB before, {} KiB after",
        rss0, rss1
    );

    // Memory per tracked service (each with one breaker and one busy second).
    let mut client = client.clone();
    let (_, before) = proc_usage(pid);
    const SERVICES: usize = 2000;
    for i in 0..SERVICES {
        let _ = client
            .export(export(&format!("mem-{i}"), Some("payments"), 10))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, after) = proc_usage(pid);
    println!(
        "memory: {SERVICES} more services, each with a breaker: +{} KiB RSS = {:.1} KiB per service (breaker included)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / SERVICES as f64
    );
}
