//! Real OTLP from the official OpenTelemetry Rust exporter, over gRPC and
//! HTTP, into an in-process observer; figures read back through the live API.

use std::time::{Duration, SystemTime};

use faultline_observer::{Addresses, Limits};
use faultline_testkit::{get_json, http, otlp};
use opentelemetry::{
    KeyValue,
    trace::{Span, SpanKind, Status, Tracer, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn observer() -> faultline_observer::Running {
    faultline_observer::start(&Addresses::ephemeral(), Limits::default())
        .await
        .expect("observer starts")
}

/// A batch exporter: it exports from its own thread, so a test may block on
/// `force_flush` (from a blocking task) without stalling the runtime that
/// serves the observer and drives the gRPC channel.
fn provider(service: &str, exporter: opentelemetry_otlp::SpanExporter) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build()
}

async fn flush(p: &SdkTracerProvider) {
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .expect("flush task")
        .expect("flushed");
}

/// A finished span with an exact duration, ending now.
fn span(
    tracer: &impl Tracer,
    name: &str,
    kind: SpanKind,
    ms: u64,
    error: bool,
    attrs: Vec<KeyValue>,
) {
    let end = SystemTime::now();
    let start = end - Duration::from_millis(ms);
    let mut s = tracer
        .span_builder(name.to_owned())
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attrs)
        .start(tracer);
    if error {
        s.set_status(Status::error("failed"));
    }
    s.end_with_timestamp(end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_gives_exact_counts_percentiles_and_breakers() {
    let obs = observer().await;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", obs.addresses.otlp_grpc))
        .build()
        .expect("exporter");
    let p = provider("checkout", exporter);
    let tracer = p.tracer("test");
    // 100 server spans of 1..100 ms, every 20th failed.
    for i in 1..=100u64 {
        span(
            &tracer,
            "POST /checkout",
            SpanKind::Server,
            i,
            i % 20 == 0,
            vec![],
        );
    }
    // 20 calls to payments, half failed; the 11th trips the breaker, 9 more are refused.
    let call = |state: &str| {
        vec![
            KeyValue::new("peer.service", "payments"),
            KeyValue::new("circuit_breaker.name", "payments"),
            KeyValue::new("circuit_breaker.state", state.to_owned()),
        ]
    };
    for i in 0..10 {
        span(
            &tracer,
            "POST /pay",
            SpanKind::Client,
            250,
            i % 2 == 0,
            call("closed"),
        );
    }
    {
        let mut s = tracer
            .span_builder("POST /pay")
            .with_kind(SpanKind::Client)
            .with_attributes(call("closed"))
            .start(&tracer);
        s.add_event(
            "circuit_breaker.state_change",
            vec![
                KeyValue::new("circuit_breaker.name", "payments"),
                KeyValue::new("circuit_breaker.state.from", "closed"),
                KeyValue::new("circuit_breaker.state.to", "open"),
            ],
        );
        s.set_status(Status::error("timeout"));
        s.end();
    }
    for _ in 0..9 {
        span(
            &tracer,
            "POST /pay",
            SpanKind::Client,
            0,
            true,
            call("open"),
        );
    }
    flush(&p).await;

    let f = get_json(obs.addresses.api, "/api/v1/services/checkout?window=30s").await;
    assert_eq!(f["name"], "checkout");
    assert_eq!(f["requests"], 100);
    assert_eq!(f["errorRate"], 0.05);
    let p50 = f["latencyMs"]["p50"].as_f64().expect("p50");
    let p99 = f["latencyMs"]["p99"].as_f64().expect("p99");
    assert!((p50 - 50.0).abs() <= 0.5, "p50 {p50}");
    assert!((p99 - 99.0).abs() <= 0.99, "p99 {p99}");
    let edge = &f["edges"][0];
    assert_eq!(edge["to"], "payments");
    assert_eq!(edge["requests"], 20);
    assert_eq!(edge["errorRate"], 0.75);
    let b = &f["breakers"][0];
    assert_eq!(b["name"], "payments");
    assert_eq!(b["state"], "open");
    assert_eq!(b["transitions"], 1);
    assert_eq!(b["shortCircuited"], 9);
    assert!(b["since"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(
        obs.observer.breaker("checkout", "payments").map(|(s, _)| s),
        Some(faultline_observer::BreakerState::Open)
    );
    assert_eq!(obs.observer.error_rate("checkout", 30), Some(0.05));
    let p90 = obs
        .observer
        .latency_ms("checkout", 90.0, 30)
        .expect("latency");
    assert!((p90 - 90.0).abs() <= 0.9, "p90 {p90}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_and_the_services_list() {
    let obs = observer().await;
    let addr = obs.addresses.otlp_http;
    let p = tokio::task::spawn_blocking(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{addr}/v1/traces"))
            .build()
            .expect("exporter");
        let p = provider("frontend", exporter);
        let tracer = p.tracer("test");
        for i in 0..40u64 {
            span(
                &tracer,
                "GET /order",
                SpanKind::Server,
                10,
                false,
                vec![KeyValue::new(
                    "http.response.status_code",
                    if i < 4 { 503 } else { 200 },
                )],
            );
        }
        p
    })
    .await
    .expect("export");
    flush(&p).await;
    let all = get_json(obs.addresses.api, "/api/v1/services?window=10s").await;
    assert_eq!(all["window"], "10s");
    let frontend = &all["services"][0];
    assert_eq!(frontend["name"], "frontend");
    assert_eq!(frontend["requests"], 40);
    // HTTP 5xx on server spans count as errors even without an ERROR status.
    assert_eq!(frontend["errorRate"], 0.1);
    // 40 requests over the time the 10 one-second slices cover: 9 s and the
    // elapsed part of the current second.
    let rps = frontend["requestsPerSecond"].as_f64().expect("rate");
    assert!((40.0 / 10.0..=40.0 / 9.0).contains(&rps), "{rps}");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gzip_and_malformed_payloads() {
    let obs = observer().await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"inventory"}}}}]}},
        "scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"POST /reserve","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{}","status":{{"code":2}}}}]}}]}}]}}"#,
        now - 3_000_000,
        now
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, json.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let (status, body) = http(
        obs.addresses.otlp_http,
        "POST",
        "/v1/traces",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        &gz,
    )
    .await
    .expect("http");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let f = get_json(obs.addresses.api, "/api/v1/services/inventory").await;
    assert_eq!(
        (f["requests"].as_u64(), f["errorRate"].as_f64()),
        (Some(1), Some(1.0))
    );

    let post = |ct: &'static str, enc: Option<&'static str>, body: Vec<u8>| {
        let addr = obs.addresses.otlp_http;
        async move {
            let mut h = vec![("content-type", ct)];
            if let Some(e) = enc {
                h.push(("content-encoding", e));
            }
            http(addr, "POST", "/v1/traces", &h, &body)
                .await
                .expect("http")
                .0
        }
    };
    // Truncated protobuf.
    assert_eq!(
        post("application/x-protobuf", None, vec![0x0a, 0xff, 0xff, 0x01]).await,
        400
    );
    // Not OTLP JSON.
    assert_eq!(
        post("application/json", None, b"{\"resourceSpans\": 7}".to_vec()).await,
        400
    );
    // Wrong content type.
    assert_eq!(post("text/plain", None, b"hello".to_vec()).await, 415);
    // Past the body limit: 413, counted as a refusal. The body is written
    // from a task that may find the connection closed early.
    {
        let mut s = tokio::net::TcpStream::connect(obs.addresses.otlp_http)
            .await
            .expect("connect");
        let len = faultline_observer::MAX_BODY_BYTES + 1;
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-protobuf\r\ncontent-length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&vec![0u8; len]).await;
            wr
        });
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "no answer to an oversized body");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        drop(writer.await);
    }
    // A gzip bomb: 64 MiB of zeros in a few KiB.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![0u8; 64 << 20]).expect("gzip");
    let bomb = bomb.finish().expect("gzip");
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        post("application/x-protobuf", Some("gzip"), bomb).await,
        400
    );
    assert_eq!(
        post("application/x-protobuf", Some("gzip"), b"not gzip".to_vec()).await,
        400
    );
    // 100 001 empty spans fit in a small body but are refused whole.
    let flood = otlp::export(Vec::new(), vec![Default::default(); 100_001]);
    assert_eq!(
        post(
            "application/x-protobuf",
            None,
            prost::Message::encode_to_vec(&flood)
        )
        .await,
        400
    );
    // Logs and metrics are answered, not failed.
    let (status, _) = http(
        obs.addresses.otlp_http,
        "POST",
        "/v1/metrics",
        &[("content-type", "application/x-protobuf")],
        b"",
    )
    .await
    .expect("http");
    assert_eq!(status, 501);

    let (status, body) = http(obs.addresses.api, "GET", "/metrics", &[], b"")
        .await
        .expect("http");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("faultline_observer_rejected_total 7"),
        "{text}"
    );
    assert!(
        text.contains("faultline_service_error_rate{service=\"inventory\"} 1.0"),
        "{text}"
    );
    let (status, _) = http(
        obs.addresses.api,
        "GET",
        "/api/v1/services?window=forever",
        &[],
        b"",
    )
    .await
    .expect("http");
    assert_eq!(status, 400);
    let (status, _) = http(
        obs.addresses.api,
        "GET",
        "/api/v1/services/nobody",
        &[],
        b"",
    )
    .await
    .expect("http");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_a_snapshot_every_second() {
    let obs = observer().await;
    let mut s = tokio::net::TcpStream::connect(obs.addresses.api)
        .await
        .expect("connect");
    s.write_all(b"GET /api/v1/stream?window=10s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while String::from_utf8_lossy(&got)
        .matches("event: snapshot")
        .count()
        < 2
    {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("two snapshots in time")
            .expect("read");
        assert!(n > 0, "stream ended");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(
        text.contains("data: {\"services\":[],\"window\":\"10s\"}")
            || text.contains("\"window\":\"10s\""),
        "{text}"
    );
}

/// Sends raw bytes as a gRPC message, to exercise what the official clients never send.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One raw OTLP/gRPC export of `body`, with `authorization: TOKEN` if given.
async fn grpc_export(
    addr: std::net::SocketAddr,
    body: Vec<u8>,
    token: Option<&'static str>,
) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    grpc_export_from(None, addr, body, token).await
}

/// As [`grpc_export`], from the local address `from` when given.
async fn grpc_export_from(
    from: Option<std::net::IpAddr>,
    addr: std::net::SocketAddr,
    body: Vec<u8>,
    token: Option<&'static str>,
) -> Result<tonic::Response<Vec<u8>>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .local_address(from)
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(body);
    if let Some(t) = token {
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::from_static(t),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    grpc.unary(request, path, RawCodec).await
}

/// The observer's `faultline_observer_rejected_total`, read from `/metrics`.
async fn rejected_total(api: std::net::SocketAddr) -> u64 {
    let (status, body) = http(api, "GET", "/metrics", &[], b"").await.expect("http");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("faultline_observer_rejected_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no rejected_total in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_grpc_exports_are_refused_counted_and_ingest_goes_on() {
    let obs = observer().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", obs.addresses.otlp_grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let send_with = |request: tonic::Request<Vec<u8>>, gzip: bool| {
        let channel = channel.clone();
        let path = path.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
            if gzip {
                grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
            }
            grpc.ready().await.expect("ready");
            grpc.unary(request, path, RawCodec).await
        }
    };
    let send = |body: Vec<u8>| send_with(tonic::Request::new(body), false);
    assert_eq!(rejected_total(obs.addresses.api).await, 0);
    // A truncated message: gRPC's status-code guide has servers answer a
    // request they cannot parse with INTERNAL, which tonic follows.
    let err = send(vec![0x0a, 0xff, 0xff, 0x01])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    // Past the 8 MiB limit.
    let err = send(vec![0u8; 17 << 20]).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    // A few KiB of gzip that inflate past the limit.
    let err = send_with(tonic::Request::new(vec![0u8; 9 << 20]), true)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // A compression the observer does not take.
    let mut zstd = tonic::Request::new(Vec::new());
    zstd.metadata_mut().insert(
        "grpc-encoding",
        tonic::metadata::MetadataValue::from_static("zstd"),
    );
    let err = send_with(zstd, false).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err}");
    // Decoded, then refused by the observer itself: counted once.
    let flood = otlp::export(Vec::new(), vec![Default::default(); 100_001]);
    let err = send(prost::Message::encode_to_vec(&flood))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // The observer is unharmed and keeps ingesting.
    let ok = send(Vec::new()).await;
    assert!(ok.is_ok(), "an empty export is valid: {ok:?}");
    let (status, _) = http(obs.addresses.api, "GET", "/health", &[], b"")
        .await
        .expect("http");
    assert_eq!(status, 200);
    assert_eq!(
        rejected_total(obs.addresses.api).await,
        5,
        "each refusal counted once, the accepted export not at all"
    );
}

/// With a token, nothing gets in without it: OTLP over gRPC and HTTP and
/// the API alike (probes' `/health` aside), before anything is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_keeps_out_forged_spans_and_readers() {
    let observer = faultline_observer::Observer::new(Limits::default()).require_token("s3cret");
    let obs = faultline_observer::start_with(&Addresses::ephemeral(), observer)
        .await
        .expect("observer starts");
    let export = prost::Message::encode_to_vec(&otlp::one_span("checkout"));
    let bearer = [("authorization", "Bearer s3cret")];
    let wrong = [("authorization", "Bearer s3creT")];
    let proto = ("content-type", "application/x-protobuf");
    for headers in [&[proto][..], &[proto, wrong[0]][..]] {
        let (status, _) = http(
            obs.addresses.otlp_http,
            "POST",
            "/v1/traces",
            headers,
            &export,
        )
        .await
        .expect("http");
        assert_eq!(status, 401, "{headers:?}");
    }
    let (status, _) = http(
        obs.addresses.otlp_http,
        "POST",
        "/v1/traces",
        &[proto, bearer[0]],
        &export,
    )
    .await
    .expect("http");
    assert_eq!(status, 200);

    let grpc = obs.addresses.otlp_grpc;
    let send = |token| grpc_export(grpc, export.clone(), token);
    let err = send(None).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = send(Some("Bearer nope")).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    send(Some("Bearer s3cret")).await.expect("with the token");

    let api = obs.addresses.api;
    let (status, _) = http(api, "GET", "/api/v1/services", &[], b"")
        .await
        .expect("http");
    assert_eq!(status, 401);
    let (status, _) = http(api, "GET", "/health", &[], b"").await.expect("http");
    assert_eq!(status, 200, "probes need no token");
    let (status, body) = http(api, "GET", "/api/v1/services", &bearer, b"")
        .await
        .expect("http");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("checkout"),
        "only the two exports with the token: {text}"
    );
    let (status, body) = http(api, "GET", "/metrics", &bearer, b"")
        .await
        .expect("http");
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains("faultline_observer_rejected_total 4"),
        "the refused exports counted: {metrics}"
    );
}

/// The peak memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 8 MiB that would decode to gigabytes (four million empty spans, or two
/// million empty JSON objects): refused on their bytes, over gRPC and both
/// HTTP encodings, several at once, and the observer's peak memory stays
/// far below what decoding them would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_that_would_decode_huge_are_refused_with_memory_bounded() {
    use faultline_testkit::{KillOnDrop, free_port};
    let (grpc_port, http_port, api_port) = (free_port(), free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_faultline-observer"))
        .args(["--otlp-grpc", &format!("127.0.0.1:{grpc_port}")])
        .args(["--otlp-http", &format!("127.0.0.1:{http_port}")])
        .args(["--api", &format!("127.0.0.1:{api_port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the observer");
    let pid = child.id();
    let _child = KillOnDrop(child);
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    for _ in 0..100 {
        if http(api, "GET", "/health", &[], b"").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = peak_rss_kib(pid);

    // Four million empty spans in one scope: 8 MiB of protobuf.
    let wrap = |field: u8, inner: &[u8]| {
        let mut out = vec![field];
        prost::encoding::encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(inner);
        out
    };
    let spans: Vec<u8> = std::iter::repeat_n([0x12u8, 0x00], (4 << 20) - 64)
        .flatten()
        .collect();
    let proto = wrap(0x0a, &wrap(0x12, &spans));
    assert!(proto.len() <= 8 << 20);
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        vec!["{}"; 2_000_000].join(",")
    );
    let mut sends = Vec::new();
    for _ in 0..2 {
        let (p, j) = (proto.clone(), json.clone());
        sends.push(tokio::spawn(async move {
            http(
                http_addr,
                "POST",
                "/v1/traces",
                &[("content-type", "application/x-protobuf")],
                &p,
            )
            .await
            .expect("http")
            .0
        }));
        sends.push(tokio::spawn(async move {
            http(
                http_addr,
                "POST",
                "/v1/traces",
                &[("content-type", "application/json")],
                j.as_bytes(),
            )
            .await
            .expect("http")
            .0
        }));
    }
    for s in sends {
        assert_eq!(s.await.expect("task"), 400, "refused");
    }
    let grpc = std::net::SocketAddr::from(([127, 0, 0, 1], grpc_port));
    let err = grpc_export(grpc, proto.clone(), None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("more than 100000 spans"), "{err}");

    // Decoded, four million spans would be gigabytes; the bodies
    // themselves are what remains (a few copies of 8 MiB).
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(
        grown < 200 * 1024,
        "the observer's peak memory grew by {} MiB",
        grown / 1024
    );
    let (status, _) = http(api, "GET", "/health", &[], b"").await.expect("http");
    assert_eq!(status, 200, "unharmed");
    assert_eq!(rejected_total(api).await, 5, "each refusal counted once");
}

/// Senders that never finish their body hold a turn at most
/// `EXPORT_TIMEOUT`: after it, an export from anyone else gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_give_their_turn_back() {
    let obs = observer().await;
    let mut stalled = Vec::new();
    for _ in 0..faultline_observer::MAX_CONCURRENT_EXPORTS {
        let mut s = tokio::net::TcpStream::connect(obs.addresses.otlp_http)
            .await
            .expect("connect");
        s.write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 1000\r\n\r\nab",
        )
        .await
        .expect("send the headers and a little");
        stalled.push(s);
    }
    // Every turn taken before the next export comes (the server may take
    // connections in any order).
    let api = obs.addresses.api;
    faultline_testkit::cluster::eventually("every turn taken", Duration::from_secs(5), || async {
        let (_, metrics) = http(api, "GET", "/metrics", &[], b"").await.ok()?;
        String::from_utf8_lossy(&metrics)
            .contains("faultline_observer_exports_in_flight 4")
            .then_some(())
    })
    .await;
    let export = prost::Message::encode_to_vec(&otlp::one_span("checkout"));
    let started = std::time::Instant::now();
    // By hand: it waits longer than the test client's own patience.
    let mut s = tokio::net::TcpStream::connect(obs.addresses.otlp_http)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        export.len()
    );
    s.write_all(head.as_bytes()).await.expect("send");
    s.write_all(&export).await.expect("send");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut reply))
        .await
        .expect("an answer within 30 s")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "taken in once a stalled sender's time was up: {reply}"
    );
    assert!(
        started.elapsed() >= faultline_observer::EXPORT_TIMEOUT / 2,
        "it had to wait: every turn was taken"
    );
    // The stalled senders were answered 408.
    let mut answer = vec![0u8; 64];
    let n = stalled[0].read(&mut answer).await.expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_count_in_their_senders_namespace_and_forged_ones_are_dropped() {
    use prost::Message as _;
    // Three senders on loopback: a pod of shop, one of evil, and an
    // address no pod holds.
    let shop: std::net::IpAddr = [127, 0, 0, 2].into();
    let evil: std::net::IpAddr = [127, 0, 0, 3].into();
    let stranger: std::net::IpAddr = [127, 0, 0, 4].into();
    let ips = faultline_observer::PodIps::default();
    ips.insert(shop, "shop");
    ips.insert(evil, "evil");
    let observer = faultline_observer::Observer::new(Limits::default()).attribute(
        faultline_observer::Attribution {
            senders: std::sync::Arc::new(ips),
            relays: Default::default(),
        },
    );
    let obs = faultline_observer::start_with(&Addresses::ephemeral(), observer)
        .await
        .expect("observer starts");
    let a = obs.addresses;

    // shop's own checkout: 10 good requests, over gRPC.
    let genuine = otlp::server_spans("checkout", 10, 0).encode_to_vec();
    grpc_export_from(Some(shop), a.otlp_grpc, genuine, None)
        .await
        .expect("export");
    // evil names itself checkout: it is evil's checkout.
    let failing = otlp::server_spans("checkout", 50, 50).encode_to_vec();
    grpc_export_from(Some(evil), a.otlp_grpc, failing, None)
        .await
        .expect("export");
    // evil claims shop's namespace over HTTP, and a slashed name: dropped.
    let mut claim = otlp::server_spans("checkout", 30, 30);
    claim.resource_spans[0]
        .resource
        .as_mut()
        .expect("resource")
        .attributes
        .push(otlp::attr("k8s.namespace.name", "shop"));
    let slashed = otlp::server_spans("shop/checkout", 20, 20);
    for forged in [claim, slashed] {
        let (status, _, body) = faultline_testkit::http_from(
            Some(evil),
            a.otlp_http,
            "POST",
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            &forged.encode_to_vec(),
        )
        .await
        .expect("http");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // Nobody's address: the bare name, which no namespaced check reads.
    let (status, _, _) = faultline_testkit::http_from(
        Some(stranger),
        a.otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &otlp::server_spans("checkout", 5, 5).encode_to_vec(),
    )
    .await
    .expect("http");
    assert_eq!(status, 200);

    let figures = |name: &'static str| async move {
        get_json(a.api, &format!("/api/v1/services/{name}?window=30s")).await
    };
    let shop_checkout = figures("shop%2Fcheckout").await;
    assert_eq!(
        (
            shop_checkout["requests"].as_u64(),
            shop_checkout["errorRate"].as_f64()
        ),
        (Some(10), Some(0.0)),
        "only shop's own spans: {shop_checkout}"
    );
    assert_eq!(figures("evil%2Fcheckout").await["requests"], 50);
    assert_eq!(figures("checkout").await["requests"], 5);
    let (_, metrics) = http(a.api, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("faultline_observer_forged_spans_total 50"),
        "{metrics}"
    );
}
