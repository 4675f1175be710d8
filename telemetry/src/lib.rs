//! Trace and metric export for every Faultline process through the standard
//! `OTEL_*` variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `..._PROTOCOL`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`): nothing is exported, and
//! nothing is logged about it, unless an OTLP endpoint is set.
//!
//! Traces go out whenever an endpoint is set (`OTEL_TRACES_EXPORTER=none`
//! stops them). Metrics — the resilience layers' breaker, retry, bulkhead
//! and fallback counters — go out only when asked for, with
//! `OTEL_METRICS_EXPORTER=otlp` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`:
//! Faultline's observer, where the endpoint usually points, takes traces
//! only, and would refuse every metrics export.

use std::time::Duration;

use opentelemetry::global;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the OTLP protocol {0:?} is not supported; use grpc or http/protobuf")]
    Protocol(String),
    #[error("cannot set up the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Flushes and stops export when dropped.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: Option<SdkMeterProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.traces.take() {
            let _ = p.shutdown();
        }
        if let Some(p) = self.metrics.take() {
            let _ = p.shutdown();
        }
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The protocol for one signal: its own variable, else the general one.
fn protocol(signal: &str) -> String {
    env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into())
}

/// An error with its causes, `outer: inner: …`, for a log line or the
/// terminal. Faultline's errors never repeat their source in their
/// message; a cause some other crate's error already printed (kube's do)
/// is not said twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Logs for a Faultline binary: `tracing` events as one line each on
/// stderr, at the levels `RUST_LOG` picks (`info` by default), colored only
/// when stderr is a terminal so that log collectors get plain text. Call it
/// once, first thing in `main`.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Installs W3C trace-context propagation and, when an endpoint is set, an
/// OTLP trace exporter (and a metric exporter when asked for, see the
/// crate's documentation). `default_service` is the `service.name` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` name one.
pub fn init(default_service: &str) -> Result<Telemetry, Error> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let traces_wanted = (endpoint || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
        && env("OTEL_TRACES_EXPORTER").as_deref() != Some("none");
    let metrics_wanted = match env("OTEL_METRICS_EXPORTER").as_deref() {
        Some("otlp") => endpoint || env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some(),
        Some(_) => false,
        None => env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some(),
    };
    let mut telemetry = Telemetry {
        traces: None,
        metrics: None,
    };
    if !traces_wanted && !metrics_wanted {
        return Ok(telemetry);
    }
    let resource = resource(default_service);
    if traces_wanted {
        let exporter = match protocol("TRACES").as_str() {
            "grpc" => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?,
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()?,
            other => return Err(Error::Protocol(other.to_owned())),
        };
        // Dashboards and checks look at windows of seconds: export twice a
        // second unless told otherwise, rather than the SDK's every 5 s.
        let mut batch = BatchConfigBuilder::default();
        if env("OTEL_BSP_SCHEDULE_DELAY").is_none() {
            batch = batch.with_scheduled_delay(Duration::from_millis(500));
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(processor)
            .build();
        global::set_tracer_provider(provider.clone());
        telemetry.traces = Some(provider);
    }
    if metrics_wanted {
        let exporter = match protocol("METRICS").as_str() {
            "grpc" => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()?,
            "http/protobuf" => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()?,
            other => return Err(Error::Protocol(other.to_owned())),
        };
        // The interval comes from OTEL_METRIC_EXPORT_INTERVAL (60 s unset).
        let reader = PeriodicReader::builder(exporter).build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        global::set_meter_provider(provider.clone());
        telemetry.metrics = Some(provider);
    }
    Ok(telemetry)
}

fn resource(default_service: &str) -> Resource {
    let named_elsewhere = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let mut resource = Resource::builder();
    if !named_elsewhere {
        resource = resource.with_service_name(default_service.to_owned());
    }
    resource.build()
}
