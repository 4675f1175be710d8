//! The observer's sockets: OTLP over gRPC and HTTP, and the live API.

use std::{
    convert::Infallible,
    io::Read,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State, rejection::BytesRejection},
    http::request::Parts,
    http::{StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use prost::Message;
use serde::Deserialize;
use serde_json::json;
use tonic::{
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use crate::{Observer, ServiceFigures};

/// Largest request body accepted, compressed or not, and largest it may
/// inflate to: a gzip bomb stops here.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// OTLP/gRPC `TraceService/Export`, decoded here rather than by the
/// generated server: the export's bytes are counted (see `shape`) before
/// prost builds anything of it.
#[derive(Clone)]
struct ExportService(Observer);

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl NamedService for ExportService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> Service<http::Request<B>> for ExportService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let observer = self.0.clone();
        if request.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(
                    tonic::Status::unimplemented("the Faultline observer takes traces only")
                        .into_http(),
                )
            });
        }
        Box::pin(async move {
            let mut accept = tonic::codec::EnabledCompressionEncodings::default();
            accept.enable(tonic::codec::CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(ExportCodec)
                .apply_compression_config(accept, Default::default())
                .apply_max_message_size_config(Some(MAX_BODY_BYTES), None);
            Ok(grpc.unary(Export(observer), request).await)
        })
    }
}

/// One export call: its raw bytes, counted, then decoded and ingested.
struct Export(Observer);

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let observer = self.0.clone();
        Box::pin(async move {
            let decoded = request.extensions().get::<Decoded>().cloned();
            let from = request.remote_addr().map(|a| a.ip());
            let body = request.into_inner();
            // Refusals here are counted by `CountRefusals` (not decoded).
            match crate::shape::check_protobuf(&body, crate::shape::MAX_ITEMS_PER_EXPORT) {
                Ok(_) => {}
                Err(
                    e @ (crate::shape::ShapeError::TooManyItems { .. }
                    | crate::shape::ShapeError::TooManySpans { .. }),
                ) => {
                    return Err(tonic::Status::invalid_argument(e.to_string()));
                }
                // As tonic's own decoder answers what it cannot parse.
                Err(e) => return Err(tonic::Status::internal(e.to_string())),
            }
            let export = ExportTraceServiceRequest::decode(body)
                .map_err(|e| tonic::Status::internal(format!("bad protobuf: {e}")))?;
            if let Some(d) = decoded {
                d.0.store(true, Ordering::Relaxed);
            }
            observer
                .ingest_from(&export, from)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        })
    }
}

/// Raw bytes in, a prost response out.
#[derive(Debug, Clone, Copy, Default)]
struct ExportCodec;

#[derive(Debug)]
struct BytesDecoder;

#[derive(Debug)]
struct ResponseEncoder;

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

impl tonic::codec::Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for ExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// The gRPC OTLP endpoint; logs and metrics are not served, so their calls
/// get UNIMPLEMENTED.
pub(crate) fn grpc_service(observer: Observer) -> tonic::service::Routes {
    let stats = observer.stats.clone();
    let gate = observer.clone();
    // Before the export is decoded: an unauthenticated sender costs nothing.
    let traces = tonic::service::interceptor::InterceptedService::new(
        ExportService(observer),
        move |req: tonic::Request<()>| {
            let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
            if gate.admits(auth) {
                Ok(req)
            } else {
                Err(tonic::Status::unauthenticated(
                    "this observer wants authorization: Bearer TOKEN",
                ))
            }
        },
    );
    tonic::service::Routes::new(CountRefusals {
        inner: traces,
        stats,
    })
}

/// Lets through requests that carry the observer's token (all of them
/// when it has none), and `/health` for probes; counts refused exports.
async fn require_token(
    State(observer): State<Observer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if request.uri().path() == "/health" || observer.admits(auth) {
        return next.run(request).await;
    }
    if request.uri().path().starts_with("/v1/") {
        observer.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this observer wants authorization: Bearer TOKEN",
    )
        .into_response()
}

/// Put on each gRPC request; set by `Export::call` once it has decoded
/// the export and handed it over.
#[derive(Debug, Clone, Default)]
struct Decoded(Arc<AtomicBool>);

/// Counts as rejected the exports tonic refuses before `Grpc::export` sees
/// them: undecodable (INTERNAL), past MAX_BODY_BYTES (OUT_OF_RANGE) or
/// inflating past it (RESOURCE_EXHAUSTED), compressed in a way not taken
/// (UNIMPLEMENTED). Such a refusal is answered at once, its status in the
/// response headers; what the handler refuses, `Observer::ingest` has
/// counted already.
#[derive(Debug, Clone)]
struct CountRefusals<S> {
    inner: S,
    stats: Arc<crate::IngestStats>,
}

impl<S: NamedService> NamedService for CountRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for CountRefusals<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let decoded = Decoded::default();
        request.extensions_mut().insert(decoded.clone());
        let stats = self.stats.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let refused = response
                .headers()
                .get(tonic::Status::GRPC_STATUS)
                .is_some_and(|code| tonic::Code::from_bytes(code.as_bytes()) != tonic::Code::Ok);
            if refused && !decoded.0.load(Ordering::Relaxed) {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Ok(response)
        })
    }
}

/// OTLP over HTTP: `POST /v1/traces`, protobuf or JSON, optionally gzipped.
pub(crate) fn http_router(observer: Observer) -> Router {
    Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/logs", post(unimplemented))
        .route("/v1/metrics", post(unimplemented))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(within_export_timeout))
        .layer(axum::middleware::from_fn_with_state(
            observer.clone(),
            require_token,
        ))
        .with_state(observer)
}

/// An export that has not arrived and been taken in within
/// `EXPORT_TIMEOUT` is answered 408, giving its turn back.
async fn within_export_timeout(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(crate::EXPORT_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the export did not arrive within {} s",
                crate::EXPORT_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
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
    parts: axum::http::request::Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let headers = &parts.headers;
    // Present when served with connect info (`start_with`).
    let from = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
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
    // Counted on the bytes first: what decoding would build stays bounded.
    let max = crate::shape::MAX_ITEMS_PER_EXPORT;
    let request = if content_type.starts_with("application/x-protobuf") {
        crate::shape::check_protobuf(&body, max)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                ExportTraceServiceRequest::decode(body).map_err(|e| format!("bad protobuf: {e}"))
            })
    } else if content_type.starts_with("application/json") {
        crate::shape::check_json(&body, max)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                serde_json::from_slice::<ExportTraceServiceRequest>(&body)
                    .map_err(|e| format!("bad OTLP JSON: {e}"))
            })
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
            if let Err(e) = observer.ingest_from(&req, from) {
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
pub(crate) fn api_router(observer: Observer) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{name}", get(service))
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(
            observer.clone(),
            require_token,
        ))
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PercentileLabels {
    service: String,
    /// 50, 95 or 99. Not `quantile`: that label belongs to summaries, which
    /// these are not (they come from the observer's sketches).
    percentile: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    service: String,
    breaker: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The OpenMetrics text of the observer's counters and of every service's
/// figures over 30 s (from this second's shared snapshot). A value that is
/// not finite is left out: the text format would print it as `inf`.
fn exposition(observer: &Observer) -> Result<String, std::fmt::Error> {
    let stats = &observer.stats;
    let store = observer.store_stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut registry = Registry::default();
    {
        let r = registry.sub_registry_with_prefix("faultline_observer");
        let counters = [
            (
                "exports",
                "OTLP trace exports received",
                load(&stats.exports),
            ),
            ("spans", "Spans ingested", load(&stats.spans)),
            (
                "rejected",
                "Exports refused as malformed or too large",
                load(&stats.rejected),
            ),
            (
                "forged_spans",
                "Spans dropped for claiming another namespace than their sender's",
                load(&stats.forged),
            ),
            (
                "dropped_services",
                "Spans dropped because the service limit was reached",
                store.dropped_services,
            ),
            (
                "dropped_edges",
                "Spans dropped because the edge limit was reached",
                store.dropped_edges,
            ),
            (
                "dropped_breakers",
                "Breaker observations dropped because the breaker limit was reached",
                store.dropped_breakers,
            ),
            (
                "dropped_memory",
                "Spans dropped because the windows reached their memory bound",
                store.dropped_memory,
            ),
            (
                "unattributed_client_spans",
                "Client spans naming no peer whose child server span never came",
                store.unattributed_client_spans,
            ),
        ];
        for (name, help, value) in counters {
            r.register(name, help, ConstCounter::new(value));
        }
        r.register(
            "exports_in_flight",
            "OTLP exports being read or taken in now (at most 4 at once)",
            ConstGauge::new(observer.exports_in_flight() as u64),
        );
        r.register(
            "store_bytes",
            "Approximate memory held by the sliding windows",
            ConstGauge::new(observer.store_bytes() as u64),
        );
        if let Some(f) = observer.forward_stats() {
            for (name, help, value) in [
                (
                    "forwarded_spans",
                    "Spans passed on downstream",
                    load(&f.forwarded),
                ),
                (
                    "forward_dropped_queue_full",
                    "Spans not forwarded because the queue was full",
                    load(&f.dropped_queue_full),
                ),
                (
                    "forward_dropped_failed",
                    "Spans not forwarded because every attempt failed",
                    load(&f.dropped_failed),
                ),
            ] {
                r.register(name, help, ConstCounter::new(value));
            }
            r.register(
                "forward_queue_spans",
                "Spans waiting to be forwarded",
                ConstGauge::new(f.queued.load(Ordering::Relaxed) as u64),
            );
            r.register(
                "forward_queue_bytes",
                "Encoded bytes of the spans waiting to be forwarded",
                ConstGauge::new(f.queued_bytes.load(Ordering::Relaxed) as u64),
            );
        }
    }
    let snapshot = observer.snapshot(30);
    register_services(&mut registry, &snapshot.services);
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// Every service's figures as gauges; values that are not finite left out.
fn register_services(registry: &mut Registry, services: &[ServiceFigures]) {
    let rate = Family::<ServiceLabel, FloatGauge>::default();
    let errors = Family::<ServiceLabel, FloatGauge>::default();
    let latency = Family::<PercentileLabels, FloatGauge>::default();
    let breakers = Family::<BreakerLabels, Gauge>::default();
    let set = |family: &Family<ServiceLabel, FloatGauge>, service: &str, v: f64| {
        if v.is_finite() {
            family
                .get_or_create(&ServiceLabel {
                    service: service.to_owned(),
                })
                .set(v);
        }
    };
    for f in services {
        set(&rate, &f.name, f.red.requests_per_second);
        set(&errors, &f.name, f.red.error_rate);
        let l = &f.red.latency_ms;
        for (percentile, ms) in [("50", l.p50), ("95", l.p95), ("99", l.p99)] {
            let seconds = ms / 1000.0;
            if seconds.is_finite() {
                latency
                    .get_or_create(&PercentileLabels {
                        service: f.name.clone(),
                        percentile,
                    })
                    .set(seconds);
            }
        }
        for b in &f.breakers {
            let v = match b.state {
                crate::store::BreakerState::Closed => 0,
                crate::store::BreakerState::Open => 1,
                crate::store::BreakerState::HalfOpen => 2,
            };
            breakers
                .get_or_create(&BreakerLabels {
                    service: f.name.clone(),
                    breaker: b.name.clone(),
                })
                .set(v);
        }
    }
    registry.register(
        "faultline_service_requests_per_second",
        "Server requests per second over the last 30 s",
        rate,
    );
    registry.register(
        "faultline_service_error_rate",
        "Share of failed server requests over the last 30 s",
        errors,
    );
    registry.register(
        "faultline_service_latency_seconds",
        "Server latency at the 50th, 95th and 99th percentiles over the last 30 s",
        latency,
    );
    registry.register(
        "faultline_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open",
        breakers,
    );
}

async fn metrics(State(observer): State<Observer>) -> Response {
    match exposition(&observer) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BreakerFigures, BreakerState, Latencies, Red};

    #[test]
    fn service_figures_encode_as_openmetrics_without_infinities() {
        let figures = |name: &str, rps: f64, p99: f64| ServiceFigures {
            name: name.into(),
            red: Red {
                requests: 10,
                requests_per_second: rps,
                error_rate: 0.5,
                latency_ms: Latencies {
                    p50: 2.0,
                    p95: 20.0,
                    p99,
                },
            },
            breakers: vec![BreakerFigures {
                name: "db".into(),
                state: BreakerState::Open,
                since: String::new(),
                for_seconds: 1.0,
                transitions: 1,
                short_circuited: 0,
            }],
            edges: vec![],
        };
        let mut registry = Registry::default();
        register_services(
            &mut registry,
            &[
                figures("shop", 2.5, 300.0),
                figures("odd \"name\"", f64::INFINITY, f64::NAN),
            ],
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        for want in [
            "# TYPE faultline_service_latency_seconds gauge",
            "faultline_service_latency_seconds{service=\"shop\",percentile=\"99\"} 0.3",
            "faultline_service_requests_per_second{service=\"shop\"} 2.5",
            "faultline_service_error_rate{service=\"odd \\\"name\\\"\"} 0.5",
            "faultline_breaker_state{service=\"shop\",breaker=\"db\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
        assert!(!text.contains("quantile"), "{text}");
        assert!(
            !text.contains("faultline_service_requests_per_second{service=\"odd"),
            "{text}"
        );
    }
}
