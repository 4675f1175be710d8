//! Prometheus metrics (prometheus-client, OpenMetrics text): active faults
//! by kind, applies, removals, failures and apply time, served over HTTP by
//! [`serve`].

use std::{collections::BTreeMap, sync::Arc, sync::atomic::AtomicU64, time::Duration};

use axum::{Router, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Bucket bounds of the apply-time histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

pub(crate) const KINDS: [&str; 3] = ["latency", "kill", "partition"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindOp {
    kind: &'static str,
    op: &'static str,
}

/// Shared between the reconcile loop and the HTTP endpoint; clones share
/// the same metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    active: Family<Kind, Gauge>,
    applies: Family<Kind, Counter>,
    removals: Family<Kind, Counter>,
    failures: Family<KindOp, Counter>,
    apply_seconds: Histogram,
    /// How late removals were after their deadline (seconds), the maximum seen.
    removal_lateness_max: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let active = Family::<Kind, Gauge>::default();
        let applies = Family::<Kind, Counter>::default();
        let removals = Family::<Kind, Counter>::default();
        // Every kind is listed from the start, at zero, so rates exist
        // before the first fault of a kind.
        for kind in KINDS {
            drop(active.get_or_create(&Kind { kind }));
            drop(applies.get_or_create(&Kind { kind }));
            drop(removals.get_or_create(&Kind { kind }));
        }
        let failures = Family::<KindOp, Counter>::default();
        let apply_seconds = Histogram::new(BUCKETS);
        let removal_lateness_max = Gauge::<f64, AtomicU64>::default();
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("faultline_agent");
        r.register("active_faults", "Faults applied now", active.clone());
        r.register("applies", "Faults applied", applies.clone());
        r.register("removals", "Faults removed", removals.clone());
        r.register(
            "failures",
            "Failed applies, removals and repeats",
            failures.clone(),
        );
        r.register(
            "apply_seconds",
            "Time to apply one fault, journal included",
            apply_seconds.clone(),
        );
        r.register(
            "removal_lateness_max_seconds",
            "The latest a removal came after its deadline",
            removal_lateness_max.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            active,
            applies,
            removals,
            failures,
            apply_seconds,
            removal_lateness_max,
        }
    }
}

impl Metrics {
    pub(crate) fn set_active(&self, counts: BTreeMap<&'static str, u64>) {
        for kind in KINDS {
            let n = counts.get(kind).copied().unwrap_or(0);
            self.active
                .get_or_create(&Kind { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn applied(&self, kind: &'static str, took: Duration) {
        self.applies.get_or_create(&Kind { kind }).inc();
        self.apply_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn removed(&self, kind: &'static str, late: Option<Duration>) {
        self.removals.get_or_create(&Kind { kind }).inc();
        if let Some(l) = late {
            // One writer (the reconcile loop): get then set cannot race.
            let l = l.as_secs_f64();
            if l > self.removal_lateness_max.get() {
                self.removal_lateness_max.set(l);
            }
        }
    }

    pub(crate) fn failed(&self, kind: &'static str, op: &'static str) {
        self.failures.get_or_create(&KindOp { kind, op }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The metrics endpoint: `GET /metrics`; any other path is 404 and any other
/// method 405 (axum's router).
pub(crate) fn router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                match metrics.render() {
                    Ok(body) => (
                        StatusCode::OK,
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
        }),
    )
}

/// Serves [`router`] on `listener` until the runtime stops. axum's accept
/// loop backs off on errors such as EMFILE instead of spinning.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!("the metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.applied("partition", Duration::from_millis(3));
        m.removed("partition", Some(Duration::from_millis(7)));
        m.removed("partition", Some(Duration::from_millis(2)));
        m.failed("kill", "apply");
        m.set_active(BTreeMap::from([("partition", 2)]));
        let t = m.render().expect("renders");
        for want in [
            "# TYPE faultline_agent_active_faults gauge",
            "faultline_agent_active_faults{kind=\"partition\"} 2",
            "faultline_agent_active_faults{kind=\"kill\"} 0",
            "# TYPE faultline_agent_applies counter",
            "faultline_agent_applies_total{kind=\"partition\"} 1",
            "faultline_agent_applies_total{kind=\"latency\"} 0",
            "faultline_agent_removals_total{kind=\"partition\"} 2",
            "# TYPE faultline_agent_apply_seconds histogram",
            "faultline_agent_apply_seconds_bucket{le=\"0.002\"} 0",
            "faultline_agent_apply_seconds_bucket{le=\"0.005\"} 1",
            "faultline_agent_apply_seconds_bucket{le=\"+Inf\"} 1",
            "faultline_agent_apply_seconds_count 1",
            "faultline_agent_failures_total{kind=\"kill\",op=\"apply\"} 1",
            "faultline_agent_removal_lateness_max_seconds 0.007",
            "# EOF",
        ] {
            assert!(t.contains(want), "{want} missing from\n{t}");
        }
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let m = Metrics::default();
        m.applied("kill", Duration::from_millis(1));
        tokio::spawn(serve(listener, m));
        let (status, head, body) =
            faultline_testkit::http_with_head(addr, "GET", "/metrics", &[], b"")
                .await
                .expect("GET /metrics");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{text}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(text.contains("faultline_agent_applies_total{kind=\"kill\"} 1"));
        let status_of = |method, path| async move {
            faultline_testkit::http(addr, method, path, &[], b"")
                .await
                .map(|(status, _)| status)
                .expect("an answer")
        };
        assert_eq!(status_of("GET", "/").await, 404);
        assert_eq!(status_of("POST", "/metrics").await, 405);
    }
}
