//! What the observer's live API says, as the dashboard reads it, and the
//! error-rate history the sparklines draw.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

/// One `/api/v1/services` answer or `/api/v1/stream` event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    #[serde(default)]
    pub window: String,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    #[serde(flatten)]
    pub red: Red,
    #[serde(default)]
    pub breakers: Vec<Breaker>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// Rate, errors, duration over the observer's window.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Red {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub requests_per_second: f64,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub latency_ms: Latencies,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Latencies {
    #[serde(default)]
    pub p50: f64,
    #[serde(default)]
    pub p95: f64,
    #[serde(default)]
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    pub name: String,
    pub state: BreakerState,
    /// Seconds in the current state when the figures were taken.
    #[serde(default)]
    pub for_seconds: f64,
    #[serde(default)]
    pub transitions: u64,
    #[serde(default)]
    pub short_circuited: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    /// A state this dashboard does not know (a newer observer).
    #[serde(other)]
    Unknown,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Unknown => "unknown",
        }
    }
}

/// Calls from a service to one dependency, as the caller saw them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub to: String,
    #[serde(flatten)]
    pub red: Red,
}

/// Each service's error rate at every snapshot, newest last, for the
/// sparklines; bounded in points per service and in services.
#[derive(Debug, Default)]
pub struct History {
    points: HashMap<String, VecDeque<f64>>,
}

/// Three minutes of one-second snapshots.
pub const HISTORY_POINTS: usize = 180;

impl History {
    /// Adds one point per service; services no longer reported are dropped,
    /// so the history never outgrows what the observer holds.
    pub fn record(&mut self, figures: &Figures) {
        let reported: std::collections::HashSet<&str> =
            figures.services.iter().map(|s| s.name.as_str()).collect();
        self.points
            .retain(|name, _| reported.contains(name.as_str()));
        for s in &figures.services {
            let points = self.points.entry(s.name.clone()).or_default();
            if points.len() == HISTORY_POINTS {
                points.pop_front();
            }
            points.push_back(s.red.error_rate);
        }
    }

    pub fn of(&self, service: &str) -> Option<&VecDeque<f64>> {
        self.points.get(service)
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `points` as `width` bar characters, newest at the right: each character
/// the worst of the points it covers, scaled so that `full` (or the
/// largest point, if larger) is a full bar. Empty on the left while the
/// history is shorter than the width.
pub fn sparkline(points: &VecDeque<f64>, width: usize, full: f64) -> String {
    if width == 0 {
        return String::new();
    }
    let per = points.len().div_ceil(width).max(1);
    let buckets: Vec<f64> = points
        .iter()
        .copied()
        .collect::<Vec<_>>()
        .rchunks(per)
        .rev()
        .map(|c| c.iter().copied().fold(0.0, f64::max))
        .collect();
    let top = buckets.iter().copied().fold(full, f64::max);
    let mut out = " ".repeat(width.saturating_sub(buckets.len()));
    // At most `width` buckets, by the choice of `per`.
    for v in &buckets {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let level = if top > 0.0 {
            ((v / top) * (BARS.len() - 1) as f64).round() as usize
        } else {
            0
        };
        out.push(BARS[level.min(BARS.len() - 1)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_observer_writes() {
        let json = r#"{"window":"10s","services":[{"name":"checkout","requests":12,
            "requestsPerSecond":1.2,"errorRate":0.25,"latencyMs":{"p50":3.0,"p95":9.5,"p99":310.0},
            "breakers":[{"name":"payments","state":"half_open","since":"2026-12-03T10:00:00Z",
            "forSeconds":4.5,"transitions":3,"shortCircuited":7}],
            "edges":[{"to":"payments","requests":10,"requestsPerSecond":1.0,"errorRate":0.5,
            "latencyMs":{"p50":300.0,"p95":301.0,"p99":302.0}}]}]}"#;
        let f: Figures = serde_json::from_str(json).expect("parses");
        let s = &f.services[0];
        assert_eq!(s.red.latency_ms.p99, 310.0);
        assert_eq!(s.breakers[0].state, BreakerState::HalfOpen);
        assert_eq!(s.edges[0].red.error_rate, 0.5);
        let newer =
            r#"{"services":[{"name":"a","breakers":[{"name":"b","state":"forced_open"}]}]}"#;
        let f: Figures = serde_json::from_str(newer).expect("unknown states are tolerated");
        assert_eq!(f.services[0].breakers[0].state, BreakerState::Unknown);
    }

    #[test]
    fn sparkline_keeps_the_worst_point_of_each_bucket() {
        let points: VecDeque<f64> = [0.0, 0.0, 0.1, 0.0, 0.0, 0.0].into();
        assert_eq!(sparkline(&points, 6, 0.1), "▁▁█▁▁▁");
        // Two points per character: the spike survives.
        assert_eq!(sparkline(&points, 3, 0.1), "▁█▁");
        // Fewer points than columns: padded on the left.
        assert_eq!(sparkline(&[0.05].into(), 3, 0.1), "  ▅");
        assert_eq!(sparkline(&[f64::NAN, 1.0].into(), 2, 0.1), "▁█");
        assert_eq!(sparkline(&points, 0, 0.1), "");
    }

    #[test]
    fn history_forgets_services_that_went_away() {
        let mut h = History::default();
        let service = |name: &str| Service {
            name: name.into(),
            ..Service::default()
        };
        for _ in 0..HISTORY_POINTS + 5 {
            h.record(&Figures {
                window: "10s".into(),
                services: vec![service("a"), service("b")],
            });
        }
        assert_eq!(h.of("a").map(VecDeque::len), Some(HISTORY_POINTS));
        h.record(&Figures {
            window: "10s".into(),
            services: vec![service("b")],
        });
        assert!(h.of("a").is_none());
    }
}
