//! The controller's Prometheus metrics (`/metrics`), with prometheus-client.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// What a failed reconcile ran into.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `permanent` (refused as asked; retried slowly, shown as Degraded)
    /// or `transient`.
    pub kind: String,
    /// The API's reason (`Forbidden`, `Conflict`, …) or `Unreachable`.
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    /// The pure part of a running experiment's step (`decide`): what a
    /// step costs besides the API calls it makes.
    pub decide_seconds: Histogram,
    pub nodefaults_writes: Counter,
    pub runs_finished: Counter,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            decide_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            nodefaults_writes: Counter::default(),
            runs_finished: Counter::default(),
            leader: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `faultline_controller_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("faultline_controller");
        r.register(
            "reconciles",
            "Reconciles of Experiments",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed (retried), by kind and reason",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "How long one reconcile took",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "decide_duration_seconds",
            "How long deciding one step of a running experiment took (no API calls)",
            self.decide_seconds.clone(),
        );
        r.register(
            "nodefaults_writes",
            "Server-side applies of NodeFaults entries",
            self.nodefaults_writes.clone(),
        );
        r.register(
            "runs_finished",
            "Experiment runs that ended (any verdict)",
            self.runs_finished.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lease",
            self.leader.clone(),
        );
    }
}
