//! OpenTelemetry metrics shared by the layers. Span attributes and events are
//! written where they happen; these are the counters and gauges beside them.

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Meter},
};

use crate::breaker::{State, Transition};

/// The instruments every layer reports to; cheap to clone.
#[derive(Clone, Debug)]
pub struct Instruments {
    state: Gauge<i64>,
    calls: Counter<u64>,
    transitions: Counter<u64>,
    bulkhead_rejections: Counter<u64>,
    retries: Counter<u64>,
    fallbacks: Counter<u64>,
}

impl Instruments {
    /// Instruments from the global meter provider (a no-op until the
    /// application installs one).
    pub fn global() -> Self {
        Self::new(&opentelemetry::global::meter("faultline-resilience"))
    }

    pub fn new(meter: &Meter) -> Self {
        Instruments {
            state: meter
                .i64_gauge("circuit_breaker.state")
                .with_description("Circuit breaker state: 0 closed, 1 open, 2 half-open")
                .build(),
            calls: meter
                .u64_counter("circuit_breaker.calls")
                .with_description("Calls through a circuit breaker by outcome (success, failure, ignored, slow, not_permitted)")
                .build(),
            transitions: meter
                .u64_counter("circuit_breaker.transitions")
                .with_description("Circuit breaker state changes")
                .build(),
            bulkhead_rejections: meter
                .u64_counter("bulkhead.rejections")
                .with_description("Calls rejected because the bulkhead was full")
                .build(),
            retries: meter
                .u64_counter("retry.attempts")
                .with_description("Retries made (not counting first attempts), by result")
                .build(),
            fallbacks: meter
                .u64_counter("fallback.invocations")
                .with_description("Responses served by a fallback")
                .build(),
        }
    }

    pub(crate) fn state(&self, name: &str, state: State) {
        self.state.record(
            state.gauge_value(),
            &[KeyValue::new("circuit_breaker.name", name.to_owned())],
        );
    }

    pub(crate) fn transition(&self, name: &str, t: &Transition) {
        self.state(name, t.to);
        self.transitions.add(
            1,
            &[
                KeyValue::new("circuit_breaker.name", name.to_owned()),
                KeyValue::new("from", t.from.as_str()),
                KeyValue::new("to", t.to.as_str()),
            ],
        );
    }

    pub(crate) fn call(&self, name: &str, outcome: &'static str) {
        self.calls.add(
            1,
            &[
                KeyValue::new("circuit_breaker.name", name.to_owned()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    pub(crate) fn bulkhead_rejection(&self, name: &str) {
        self.bulkhead_rejections
            .add(1, &[KeyValue::new("bulkhead.name", name.to_owned())]);
    }

    pub(crate) fn retry(&self, name: &str, granted: bool) {
        self.retries.add(
            1,
            &[
                KeyValue::new("retry.name", name.to_owned()),
                KeyValue::new(
                    "result",
                    if granted {
                        "retried"
                    } else {
                        "budget_exhausted"
                    },
                ),
            ],
        );
    }

    pub(crate) fn fallback(&self, name: &str) {
        self.fallbacks
            .add(1, &[KeyValue::new("fallback.name", name.to_owned())]);
    }
}
