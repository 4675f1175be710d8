//! One span per inject and recover, child of the fault's `traceparent` so the
//! agent's work shows in the experiment's trace.

use std::collections::HashMap;

use faultline_api::{NodeFault, NodeTarget};
use opentelemetry::{
    Context, KeyValue, global,
    trace::{Span, Status, Tracer},
};

/// How a target is named in spans and logs.
pub(crate) fn target_name(t: &NodeTarget) -> String {
    match t {
        NodeTarget::Pod(p) => format!("pod/{}", p.uid),
        NodeTarget::Netns(p) => format!("netns:{p}"),
        NodeTarget::Pid(p) => format!("pid:{p}"),
        NodeTarget::Cgroup(p) => format!("cgroup:{p}"),
    }
}

/// The parent context a traceparent names; none (a new trace) when absent.
pub(crate) fn parent_of(fault: &NodeFault) -> Context {
    match &fault.traceparent {
        Some(tp) => {
            let carrier = HashMap::from([("traceparent".to_string(), tp.clone())]);
            global::get_text_map_propagator(|p| p.extract(&carrier))
        }
        None => Context::new(),
    }
}

/// Records one finished operation (`inject`, `recover`, `repeat`) as a span.
pub(crate) fn record(op: &'static str, fault: &NodeFault, result: Result<(), &str>) {
    let tracer = global::tracer("faultline-agent");
    let mut attrs = vec![
        KeyValue::new("faultline.fault", fault.id.clone()),
        KeyValue::new("faultline.fault.id", fault.id.clone()),
        KeyValue::new("faultline.fault.kind", fault.action.kind()),
        KeyValue::new("faultline.target", target_name(&fault.target)),
    ];
    if let NodeTarget::Pod(p) = &fault.target {
        attrs.push(KeyValue::new("k8s.pod.uid", p.uid.clone()));
    }
    let parent = parent_of(fault);
    let mut span = tracer
        .span_builder(op)
        .with_attributes(attrs)
        .start_with_context(&tracer, &parent);
    if let Err(why) = result {
        span.set_status(Status::error(why.to_owned()));
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::partition;
    use opentelemetry::trace::TraceContextExt as _;
    use opentelemetry_sdk::{
        propagation::TraceContextPropagator,
        trace::{InMemorySpanExporter, SdkTracerProvider},
    };

    #[test]
    fn spans_join_the_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        let mut f = partition("shop/x/0", "/run/netns/a", "10.0.0.1", 5);
        f.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        assert!(parent_of(&f).span().span_context().is_valid());
        record("inject", &f, Ok(()));
        record("recover", &f, Err("boom"));
        let _ = provider.force_flush();
        let spans = exporter.get_finished_spans().expect("spans");
        assert_eq!(spans.len(), 2);
        let inject = &spans[0];
        assert_eq!(inject.name, "inject");
        assert_eq!(
            inject.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(inject.parent_span_id.to_string(), "00f067aa0ba902b7");
        let attr = |k: &str| {
            inject
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("faultline.fault.kind").as_deref(), Some("partition"));
        assert_eq!(
            attr("faultline.target").as_deref(),
            Some("netns:/run/netns/a")
        );
        assert!(matches!(spans[1].status, Status::Error { .. }));
    }
}
