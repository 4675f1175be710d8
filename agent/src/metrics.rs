//! Prometheus metrics, in the text exposition format: active faults by kind,
//! applies, removals, failures and apply time.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

/// Bucket bounds of the apply-time histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
struct Inner {
    active: BTreeMap<&'static str, u64>,
    applies: BTreeMap<&'static str, u64>,
    removals: BTreeMap<&'static str, u64>,
    failures: BTreeMap<(&'static str, &'static str), u64>,
    apply_buckets: [u64; BUCKETS.len()],
    apply_count: u64,
    apply_sum: f64,
    /// How late removals were after their deadline (seconds), the maximum seen.
    removal_lateness_max: f64,
}

/// Shared between the reconcile loop and the HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Mutex<Inner>>);

pub const KINDS: [&str; 3] = ["latency", "kill", "partition"];

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut i) = self.0.lock() {
            f(&mut i);
        }
    }

    pub fn set_active(&self, counts: BTreeMap<&'static str, u64>) {
        self.with(|i| i.active = counts);
    }

    pub fn applied(&self, kind: &'static str, took: Duration) {
        self.with(|i| {
            *i.applies.entry(kind).or_default() += 1;
            let s = took.as_secs_f64();
            i.apply_count += 1;
            i.apply_sum += s;
            for (b, bound) in i.apply_buckets.iter_mut().zip(BUCKETS) {
                if s <= bound {
                    *b += 1;
                }
            }
        });
    }

    pub fn removed(&self, kind: &'static str, late: Option<Duration>) {
        self.with(|i| {
            *i.removals.entry(kind).or_default() += 1;
            if let Some(l) = late {
                i.removal_lateness_max = i.removal_lateness_max.max(l.as_secs_f64());
            }
        });
    }

    pub fn failed(&self, kind: &'static str, op: &'static str) {
        self.with(|i| *i.failures.entry((kind, op)).or_default() += 1);
    }

    pub fn render(&self) -> String {
        let Ok(i) = self.0.lock() else {
            return String::new();
        };
        let mut o = String::new();
        let by_kind =
            |o: &mut String, name: &str, help: &str, ty: &str, m: &BTreeMap<&str, u64>| {
                let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
                for k in KINDS {
                    let _ = writeln!(
                        o,
                        "{name}{{kind=\"{k}\"}} {}",
                        m.get(k).copied().unwrap_or(0)
                    );
                }
            };
        by_kind(
            &mut o,
            "faultline_agent_active_faults",
            "Faults applied now.",
            "gauge",
            &i.active,
        );
        by_kind(
            &mut o,
            "faultline_agent_applies_total",
            "Faults applied.",
            "counter",
            &i.applies,
        );
        by_kind(
            &mut o,
            "faultline_agent_removals_total",
            "Faults removed.",
            "counter",
            &i.removals,
        );
        let _ = writeln!(
            o,
            "# HELP faultline_agent_failures_total Failed applies, removals and repeats.\n# TYPE faultline_agent_failures_total counter"
        );
        for ((k, op), n) in &i.failures {
            let _ = writeln!(
                o,
                "faultline_agent_failures_total{{kind=\"{k}\",op=\"{op}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP faultline_agent_apply_seconds Time to apply one fault, journal included.\n# TYPE faultline_agent_apply_seconds histogram"
        );
        for (b, bound) in i.apply_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                o,
                "faultline_agent_apply_seconds_bucket{{le=\"{bound}\"}} {b}"
            );
        }
        let _ = writeln!(
            o,
            "faultline_agent_apply_seconds_bucket{{le=\"+Inf\"}} {}",
            i.apply_count
        );
        let _ = writeln!(o, "faultline_agent_apply_seconds_sum {}", i.apply_sum);
        let _ = writeln!(o, "faultline_agent_apply_seconds_count {}", i.apply_count);
        let _ = writeln!(
            o,
            "# HELP faultline_agent_removal_lateness_max_seconds The latest a removal came after its deadline.\n# TYPE faultline_agent_removal_lateness_max_seconds gauge"
        );
        let _ = writeln!(
            o,
            "faultline_agent_removal_lateness_max_seconds {}",
            i.removal_lateness_max
        );
        o
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
        m.failed("kill", "apply");
        m.set_active(BTreeMap::from([("partition", 2)]));
        let t = m.render();
        assert!(
            t.contains("faultline_agent_active_faults{kind=\"partition\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("faultline_agent_applies_total{kind=\"partition\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("faultline_agent_apply_seconds_bucket{le=\"0.002\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("faultline_agent_apply_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("faultline_agent_failures_total{kind=\"kill\",op=\"apply\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("faultline_agent_removal_lateness_max_seconds 0.007"),
            "{t}"
        );
    }
}
