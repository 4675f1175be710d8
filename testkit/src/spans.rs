//! OTLP trace exports built by hand, for feeding an observer directly.

use std::time::SystemTime;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

/// A string attribute.
pub fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `n` server spans of `service` that ended just now, 5 ms each, the first
/// `failed` of them errors; each its own trace.
pub fn server_spans(service: &str, n: u64, failed: u64) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let spans = (0..n)
        .map(|i| Span {
            trace_id: [vec![7; 8], (i + 1).to_be_bytes().to_vec()].concat(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "GET /".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: now.saturating_sub(5_000_000),
            end_time_unix_nano: now,
            status: Some(Status {
                code: if i < failed {
                    StatusCode::Error as i32
                } else {
                    StatusCode::Ok as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
