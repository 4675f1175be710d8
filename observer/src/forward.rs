//! Passing every received span on to another OTLP receiver (Jaeger, a
//! collector), from a bounded queue: a slow or dead downstream never slows
//! ingest; what does not fit is dropped and counted.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry::{
    KeyValue, global,
    trace::{Span as _, SpanKind, Status, Tracer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use prost::Message;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProtocol {
    Grpc,
    HttpProtobuf,
}

impl ForwardProtocol {
    pub fn parse(s: &str) -> Option<ForwardProtocol> {
        match s {
            "grpc" => Some(ForwardProtocol::Grpc),
            "http/protobuf" => Some(ForwardProtocol::HttpProtobuf),
            _ => None,
        }
    }

    /// From `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else gRPC (what Jaeger and collectors listen for on 4317).
    pub fn from_env() -> ForwardProtocol {
        [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .and_then(|v| ForwardProtocol::parse(v.trim()))
        })
        .unwrap_or(ForwardProtocol::Grpc)
    }
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// `http://host:4317` for gRPC; `http://host:4318` (or a full
    /// `.../v1/traces` URL) for HTTP.
    pub endpoint: String,
    pub protocol: ForwardProtocol,
    /// Spans waiting to be sent at most; more are dropped.
    pub queue_spans: usize,
    /// Encoded bytes waiting to be sent at most; more are dropped. Spans
    /// alone do not bound memory: one span may carry megabytes of attributes.
    pub queue_bytes: usize,
    /// Attempts per batch before it is dropped.
    pub attempts: u32,
}

impl ForwardConfig {
    pub fn new(endpoint: impl Into<String>, protocol: ForwardProtocol) -> Self {
        ForwardConfig {
            endpoint: endpoint.into(),
            protocol,
            queue_spans: 100_000,
            queue_bytes: 64 << 20,
            attempts: 5,
        }
    }
}

#[derive(Debug, Default)]
pub struct ForwardStats {
    pub forwarded: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Dropped after every attempt failed.
    pub dropped_failed: AtomicU64,
    pub queued: AtomicUsize,
    /// Encoded bytes of the spans in `queued`.
    pub queued_bytes: AtomicUsize,
}

/// One queued export: its spans and encoded bytes, as counted in the stats.
type Queued = (ExportTraceServiceRequest, usize, usize);

/// The sending side, held by ingest.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    tx: mpsc::UnboundedSender<Queued>,
    limit: usize,
    limit_bytes: usize,
    pub stats: Arc<ForwardStats>,
}

pub(crate) fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

impl Forwarder {
    /// Starts the sending task.
    pub(crate) fn start(config: ForwardConfig) -> Forwarder {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ForwardStats::default());
        tokio::spawn(send_loop(config.clone(), rx, stats.clone()));
        Forwarder {
            tx,
            limit: config.queue_spans,
            limit_bytes: config.queue_bytes,
            stats,
        }
    }

    /// Queues an export without waiting; drops it when the queue is full.
    pub(crate) fn offer(&self, req: &ExportTraceServiceRequest) {
        let n = span_count(req);
        if n == 0 {
            return; // nothing to pass on
        }
        let bytes = req.encoded_len();
        let queued = self.stats.queued.fetch_add(n, Ordering::AcqRel);
        let queued_bytes = self.stats.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if queued.saturating_add(n) > self.limit
            || queued_bytes.saturating_add(bytes) > self.limit_bytes
            || self.tx.send((req.clone(), n, bytes)).is_err()
        {
            self.stats.queued.fetch_sub(n, Ordering::AcqRel);
            self.stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.stats
                .dropped_queue_full
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

enum Sender {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(
        Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        String,
    ),
}

impl Sender {
    fn new(config: &ForwardConfig) -> Result<Sender, String> {
        match config.protocol {
            ForwardProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| format!("forward endpoint {}: {e}", config.endpoint))?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                Ok(Sender::Grpc(TraceServiceClient::new(channel)))
            }
            ForwardProtocol::HttpProtobuf => {
                let url = if config.endpoint.ends_with("/v1/traces") {
                    config.endpoint.clone()
                } else {
                    format!("{}/v1/traces", config.endpoint.trim_end_matches('/'))
                };
                Ok(Sender::Http(
                    Client::builder(TokioExecutor::new()).build_http(),
                    url,
                ))
            }
        }
    }

    async fn send(&mut self, req: &ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Sender::Grpc(client) => client
                .export(req.clone())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Sender::Http(client, url) => {
                let body = Full::new(Bytes::from(req.encode_to_vec()));
                let request = hyper::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .map_err(|e| e.to_string())?;
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.request(request))
                        .await
                        .map_err(|_| "timed out".to_owned())?
                        .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", response.status()))
                }
            }
        }
    }
}

/// Batches queued exports (up to 2 000 spans) and sends them, retrying with
/// exponential backoff.
async fn send_loop(
    config: ForwardConfig,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    stats: Arc<ForwardStats>,
) {
    let mut sender = match Sender::new(&config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "not forwarding");
            while let Some((_, n, bytes)) = rx.recv().await {
                stats.queued.fetch_sub(n, Ordering::AcqRel);
                stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                stats.dropped_failed.fetch_add(n as u64, Ordering::Relaxed);
            }
            return;
        }
    };
    while let Some((first, n, first_bytes)) = rx.recv().await {
        let mut batch = first;
        let mut spans = n;
        let mut bytes = first_bytes;
        // Batches stay well under the 4 MiB receivers accept by default.
        while spans < 2000 && batch.encoded_len() < (2 << 20) {
            match rx.try_recv() {
                Ok((more, m, b)) => {
                    batch.resource_spans.extend(more.resource_spans);
                    spans += m;
                    bytes += b;
                }
                Err(_) => break,
            }
        }
        // The observer's own span for each batch (exported only when the
        // OTEL_* variables say where; docs/architecture.md, Telemetry).
        let tracer = global::tracer("faultline-observer");
        let mut span = tracer
            .span_builder("forward")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("faultline.forward.spans", spans as i64),
                KeyValue::new("url.full", config.endpoint.clone()),
            ])
            .start(&tracer);
        let mut backoff = Duration::from_millis(100);
        let mut sent = false;
        let mut attempts = 0;
        for attempt in 1..=config.attempts.max(1) {
            attempts = attempt;
            match sender.send(&batch).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) if attempt == config.attempts.max(1) => {
                    tracing::warn!(
                        spans,
                        attempts = attempt,
                        error = %e,
                        "forwarding failed every attempt; dropping the spans"
                    );
                    span.set_status(Status::error(e));
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        span.set_attribute(KeyValue::new(
            "faultline.forward.attempts",
            i64::from(attempts),
        ));
        span.end();
        stats.queued.fetch_sub(spans, Ordering::AcqRel);
        stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if sent {
            stats.forwarded.fetch_add(spans as u64, Ordering::Relaxed);
        } else {
            stats
                .dropped_failed
                .fetch_add(spans as u64, Ordering::Relaxed);
        }
    }
}
