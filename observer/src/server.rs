//! The observer's sockets: OTLP over gRPC and HTTP, and the live API.

use std::{convert::Infallible, io::Read, sync::atomic::Ordering, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State, rejection::BytesRejection},
    http::request::Parts,
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message;
use serde::Deserialize;
use serde_json::json;

use crate::Observer;

/// Largest request body accepted, compressed or not, and largest it may
/// inflate to: a gzip bomb stops here.
pub const MAX_BODY_BYTES: usize = 8 << 20;

#[derive(Clone)]
struct Grpc(Observer);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .ingest(&request.into_inner())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The gRPC OTLP endpoint; logs and metrics are not served, so their calls
/// get UNIMPLEMENTED from tonic's router.
pub fn grpc_service(observer: Observer) -> tonic::service::Routes {
    let traces = TraceServiceServer::new(Grpc(observer))
        .max_decoding_message_size(MAX_BODY_BYTES)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    tonic::service::Routes::new(traces)
}

/// OTLP over HTTP: `POST /v1/traces`, protobuf or JSON, optionally gzipped.
pub fn http_router(observer: Observer) -> Router {
    Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/logs", post(unimplemented))
        .route("/v1/metrics", post(unimplemented))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(observer)
}

async fn unimplemented() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_IMPLEMENTED,
        "the Faultline observer takes traces only",
    )
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, msg.into()).into_response()
}

async fn http_traces(
    State(observer): State<Observer>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Taken as a Result so that a refused body (413 past MAX_BODY_BYTES)
    // is counted like every other refusal.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return rejection.into_response();
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let body = match encoding {
        "gzip" => {
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(&body[..])
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut out);
            match read {
                Ok(n) if n > MAX_BODY_BYTES => {
                    observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    return bad_request(format!("body inflates past {MAX_BODY_BYTES} bytes"));
                }
                Ok(_) => Bytes::from(out),
                Err(e) => {
                    observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    return bad_request(format!("bad gzip body: {e}"));
                }
            }
        }
        "identity" => body,
        other => {
            observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other} is not supported"),
            )
                .into_response();
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let request = if content_type.starts_with("application/x-protobuf") {
        ExportTraceServiceRequest::decode(body).map_err(|e| format!("bad protobuf: {e}"))
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|e| format!("bad OTLP JSON: {e}"))
    } else {
        observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "use content-type application/x-protobuf or application/json",
        )
            .into_response();
    };
    match request {
        Ok(req) => {
            if let Err(e) = observer.ingest(&req) {
                return bad_request(e.to_string());
            }
            let response = ExportTraceServiceResponse::default();
            if content_type.starts_with("application/json") {
                Json(json!({})).into_response()
            } else {
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    response.encode_to_vec(),
                )
                    .into_response()
            }
        }
        Err(e) => {
            observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
            bad_request(e)
        }
    }
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    window: Option<String>,
}

/// `10s`, `30s`, `1m`, `5m` (1 s to 5 m); default 30 s.
pub fn parse_window(w: Option<&str>) -> Result<u64, String> {
    let Some(w) = w else { return Ok(30) };
    let bad = || format!("window {w:?} is not a duration from 1s to 5m (like 10s, 30s, 1m, 5m)");
    let split = w.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = w.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if (1..=crate::store::MAX_WINDOW_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(bad())
    }
}

/// The live API: `/api/v1/services`, `/api/v1/services/{name}`,
/// `/api/v1/stream` (server-sent events) and `/metrics`.
pub fn api_router(observer: Observer) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}", get(service))
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(observer)
}

/// The `?window=` of a request, in seconds; a bad one is answered with 400
/// before the handler runs.
struct Window(u64);

impl<S: Send + Sync> FromRequestParts<S> for Window {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Query(q) = Query::<WindowQuery>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_window(q.window.as_deref())
            .map(Window)
            .map_err(bad_request)
    }
}

async fn services(State(observer): State<Observer>, Window(window): Window) -> Response {
    Json(json!({ "window": format!("{window}s"), "services": observer.services(window) }))
        .into_response()
}

/// `?percentile=` of one service's figures: a latency percentile besides
/// p50/p95/p99, as a latency check asks for (0 < p <= 100).
#[derive(Debug, serde::Deserialize)]
struct PercentileQuery {
    percentile: Option<f64>,
}

async fn service(
    State(observer): State<Observer>,
    Path(name): Path<String>,
    Window(window): Window,
    Query(q): Query<PercentileQuery>,
) -> Response {
    if let Some(p) = q.percentile
        && !(p > 0.0 && p <= 100.0)
    {
        return bad_request(format!("percentile {p} is not in (0, 100]"));
    }
    match observer.service(&name, window) {
        Some(f) => {
            let mut body = json!(f);
            if let Some(p) = q.percentile {
                body["percentile"] = json!({"p": p, "ms": observer.latency_ms(&name, p, window)});
            }
            Json(body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no spans seen from service {name:?}")})),
        )
            .into_response(),
    }
}

async fn stream(State(observer): State<Observer>, Window(window): Window) -> Response {
    let ticks = futures::stream::unfold(
        tokio::time::interval(Duration::from_secs(1)),
        move |mut interval| {
            let observer = observer.clone();
            async move {
                interval.tick().await;
                let snapshot = observer.snapshot(window);
                Some((
                    Ok::<Event, Infallible>(
                        Event::default()
                            .event("snapshot")
                            .data(snapshot.json.as_str()),
                    ),
                    interval,
                ))
            }
        },
    );
    Sse::new(ticks)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Prometheus text exposition: a family header, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            self.0.push_str(&format!("{name} {value}\n"));
        } else {
            self.0
                .push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

async fn metrics(State(observer): State<Observer>) -> Response {
    let mut out = Exposition(String::new());
    let stats = &observer.stats;
    let store = observer.store_stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    out.single(
        "faultline_observer_exports_total",
        "counter",
        "OTLP trace exports received.",
        load(&stats.exports),
    );
    out.single(
        "faultline_observer_spans_total",
        "counter",
        "Spans ingested.",
        load(&stats.spans),
    );
    out.single(
        "faultline_observer_rejected_total",
        "counter",
        "Exports refused as malformed or too large.",
        load(&stats.rejected),
    );
    out.single(
        "faultline_observer_dropped_services_total",
        "counter",
        "Spans dropped because the service limit was reached.",
        store.dropped_services,
    );
    out.single(
        "faultline_observer_dropped_edges_total",
        "counter",
        "Spans dropped because the edge limit was reached.",
        store.dropped_edges,
    );
    out.single(
        "faultline_observer_dropped_breakers_total",
        "counter",
        "Breaker observations dropped because the breaker limit was reached.",
        store.dropped_breakers,
    );
    out.single(
        "faultline_observer_dropped_memory_total",
        "counter",
        "Spans dropped because the windows reached their memory bound.",
        store.dropped_memory,
    );
    out.single(
        "faultline_observer_unattributed_client_spans_total",
        "counter",
        "Client spans naming no peer whose child server span never came.",
        store.unattributed_client_spans,
    );
    out.single(
        "faultline_observer_store_bytes",
        "gauge",
        "Approximate memory held by the sliding windows.",
        observer.store_bytes(),
    );
    if let Some(f) = observer.forward_stats() {
        out.single(
            "faultline_observer_forwarded_spans_total",
            "counter",
            "Spans passed on downstream.",
            load(&f.forwarded),
        );
        out.single(
            "faultline_observer_forward_dropped_queue_full_total",
            "counter",
            "Spans not forwarded because the queue was full.",
            load(&f.dropped_queue_full),
        );
        out.single(
            "faultline_observer_forward_dropped_failed_total",
            "counter",
            "Spans not forwarded because every attempt failed.",
            load(&f.dropped_failed),
        );
        out.single(
            "faultline_observer_forward_queue_spans",
            "gauge",
            "Spans waiting to be forwarded.",
            f.queued.load(Ordering::Relaxed),
        );
        out.single(
            "faultline_observer_forward_queue_bytes",
            "gauge",
            "Encoded bytes of the spans waiting to be forwarded.",
            f.queued_bytes.load(Ordering::Relaxed),
        );
    }
    let snapshot = observer.snapshot(30);
    let figures = snapshot.services.as_slice();
    out.family(
        "faultline_service_requests_per_second",
        "gauge",
        "Server requests per second over the last 30 s.",
    );
    for f in figures {
        out.sample(
            "faultline_service_requests_per_second",
            &[("service", &f.name)],
            f.red.requests_per_second,
        );
    }
    out.family(
        "faultline_service_error_rate",
        "gauge",
        "Share of failed server requests over the last 30 s.",
    );
    for f in figures {
        out.sample(
            "faultline_service_error_rate",
            &[("service", &f.name)],
            f.red.error_rate,
        );
    }
    out.family(
        "faultline_service_latency_seconds",
        "gauge",
        "Server latency percentiles over the last 30 s.",
    );
    for f in figures {
        let l = &f.red.latency_ms;
        for (q, v) in [("0.5", l.p50), ("0.95", l.p95), ("0.99", l.p99)] {
            out.sample(
                "faultline_service_latency_seconds",
                &[("service", &f.name), ("quantile", q)],
                v / 1000.0,
            );
        }
    }
    out.family(
        "faultline_breaker_state",
        "gauge",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
    );
    for f in figures {
        for b in &f.breakers {
            let v = match b.state {
                crate::store::BreakerState::Closed => 0,
                crate::store::BreakerState::Open => 1,
                crate::store::BreakerState::HalfOpen => 2,
            };
            out.sample(
                "faultline_breaker_state",
                &[("service", &f.name), ("breaker", &b.name)],
                v,
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.0).into_response()
}

/// Prometheus label value escaping.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
