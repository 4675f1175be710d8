//! OTLP trace requests, as the observer receives them, for tests and
//! benchmarks that build them by hand.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

/// A string attribute.
pub fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Now, in nanoseconds since the Unix epoch (0 before it).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One export: one resource with these attributes (`service.name` among
/// them, usually) and one scope holding `spans`.
pub fn export(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
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

/// `n` server spans of `service` that ended just now, 5 ms each, the first
/// `failed` of them errors; each its own trace.
pub fn server_spans(service: &str, n: u64, failed: u64) -> ExportTraceServiceRequest {
    let now = now_nanos();
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
    export(vec![attr("service.name", service)], spans)
}

/// `n` client spans of `service` calling `peer` (its `peer.service`) that
/// ended just now, the first `failed` of them errors; each its own trace.
pub fn client_spans(service: &str, peer: &str, n: u64, failed: u64) -> ExportTraceServiceRequest {
    let mut e = server_spans(service, n, failed);
    for s in &mut e.resource_spans[0].scope_spans[0].spans {
        s.kind = SpanKind::Client as i32;
        s.name = "POST".into();
        s.attributes.push(attr("peer.service", peer));
        // Apart from any server span's ids.
        s.trace_id[0] = 9;
    }
    e
}

/// The smallest useful export: one server span of `service` that ended
/// just now.
pub fn one_span(service: &str) -> ExportTraceServiceRequest {
    server_spans(service, 1, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_carries_its_resource_and_spans() {
        let e = export(vec![attr("service.name", "shop")], vec![Span::default(); 3]);
        let r = &e.resource_spans[0];
        assert_eq!(r.scope_spans[0].spans.len(), 3);
        let name = r.resource.as_ref().map(|r| &r.attributes[0]);
        assert_eq!(name, Some(&attr("service.name", "shop")));
        assert!(now_nanos() > 1_600_000_000_000_000_000);
        let one = one_span("shop");
        assert_eq!(one.resource_spans[0].scope_spans[0].spans.len(), 1);
    }
}
