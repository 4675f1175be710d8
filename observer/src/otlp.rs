//! From OTLP trace exports to the span records the store keeps.

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{span::SpanKind, status::StatusCode},
};

use crate::{
    attribution::Key,
    store::{BreakerState, Kind, SpanIds, SpanRecord},
};

/// A trace (16 bytes) or span (8 bytes) id as a number; None when empty or malformed.
fn id(bytes: &[u8]) -> Option<u128> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b)),
    )
}

const UNKNOWN_SERVICE: &str = "unknown_service";

fn str_value(v: &Option<AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int_value(v: &Option<AnyValue>) -> Option<i64> {
    match v.as_ref()?.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Option<AnyValue>> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attr(attrs, key).and_then(str_value)
}

/// Every span of an export, as records, each resource's under the name
/// `key` gives its `service.name` and `k8s.namespace.name`; with the number
/// of spans dropped as forged. Spans are counted once each.
pub(crate) fn records(
    req: &ExportTraceServiceRequest,
    key: impl Fn(&str, Option<&str>) -> Key,
) -> (Vec<SpanRecord>, u64) {
    let mut out = Vec::new();
    let mut forged = 0;
    for rs in &req.resource_spans {
        let attrs = rs.resource.as_ref().map(|r| r.attributes.as_slice());
        let service = attrs
            .and_then(|a| attr_str(a, "service.name"))
            .filter(|s| !s.is_empty())
            .unwrap_or(UNKNOWN_SERVICE);
        let claimed = attrs.and_then(|a| attr_str(a, "k8s.namespace.name"));
        let service = match key(service, claimed) {
            Key::As(name) => name,
            Key::Forged => {
                forged += rs
                    .scope_spans
                    .iter()
                    .map(|ss| ss.spans.len() as u64)
                    .sum::<u64>();
                continue;
            }
        };
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let kind = match SpanKind::try_from(span.kind) {
                    Ok(SpanKind::Server) => Kind::Server,
                    Ok(SpanKind::Client) => Kind::Client,
                    _ => Kind::Other,
                };
                let status_error = span
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == StatusCode::Error as i32);
                let http_status = attr(&span.attributes, "http.response.status_code")
                    .or_else(|| attr(&span.attributes, "http.status_code"))
                    .and_then(int_value);
                let error =
                    status_error || (kind == Kind::Server && http_status.is_some_and(|s| s >= 500));
                let peer = match kind {
                    Kind::Client => attr_str(&span.attributes, "peer.service")
                        .or_else(|| attr_str(&span.attributes, "server.address"))
                        .or_else(|| attr_str(&span.attributes, "net.peer.name"))
                        .map(str::to_owned),
                    _ => None,
                };
                let breaker_name = attr_str(&span.attributes, "circuit_breaker.name");
                let breaker = breaker_name.map(|n| {
                    let state = attr_str(&span.attributes, "circuit_breaker.state")
                        .and_then(BreakerState::parse);
                    (n.to_owned(), state)
                });
                let transitions = span
                    .events
                    .iter()
                    .filter(|e| e.name == "circuit_breaker.state_change")
                    .filter_map(|e| {
                        let name =
                            attr_str(&e.attributes, "circuit_breaker.name").or(breaker_name)?;
                        let to = attr_str(&e.attributes, "circuit_breaker.state.to")
                            .or_else(|| attr_str(&e.attributes, "to"))
                            .and_then(BreakerState::parse)?;
                        Some((e.time_unix_nano, name.to_owned(), to))
                    })
                    .collect();
                out.push(SpanRecord {
                    service: service.clone(),
                    kind,
                    end_nanos: span.end_time_unix_nano,
                    duration_nanos: span
                        .end_time_unix_nano
                        .saturating_sub(span.start_time_unix_nano),
                    error,
                    peer,
                    breaker,
                    transitions,
                    ids: SpanIds {
                        trace: id(&span.trace_id).unwrap_or(0),
                        span: id(&span.span_id).map_or(0, |v| v as u64),
                        parent: id(&span.parent_span_id).map_or(0, |v| v as u64),
                    },
                });
            }
        }
    }
    (out, forged)
}
