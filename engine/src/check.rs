//! Judging one observation of a check. What to observe and when is the
//! runtime's and the run's business; this only compares.

use faultline_api::{BreakerState, CheckKind};

/// A figure measured for a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A share of failed requests, 0.0 to 1.0.
    Rate(f64),
    LatencyMs(f64),
    /// A breaker's state and how long it has been in it.
    Breaker {
        state: BreakerState,
        for_secs: f64,
    },
    /// An HTTP answer's status, or None when nothing answered in time.
    Http(Option<u16>),
    /// Nothing to judge by (no traffic in the window, breaker never seen).
    NoData,
}

/// The result of one evaluation: whether the figure met the check, what was
/// seen and what was wanted (both as people read them, for reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub passed: bool,
    pub observed: String,
    pub expected: String,
}

fn pct(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

/// Compares `observed` with the check's threshold. No traffic is no evidence
/// against a rate or latency check; a breaker never seen is not in any state.
pub fn evaluate(kind: &CheckKind, observed: &Observed) -> Evaluation {
    match (kind, observed) {
        (CheckKind::ErrorRate(c), Observed::Rate(r)) => Evaluation {
            passed: *r <= c.max.fraction() + 1e-12,
            observed: pct(*r),
            expected: format!("<= {}", c.max),
        },
        (CheckKind::Latency(c), Observed::LatencyMs(ms)) => Evaluation {
            passed: *ms <= c.max.as_millis() as f64,
            observed: format!("{ms:.1}ms"),
            expected: format!("p{} <= {}", c.percentile, c.max),
        },
        (CheckKind::Breaker(c), Observed::Breaker { state, .. }) => Evaluation {
            passed: *state == c.state,
            observed: state.to_string(),
            expected: c.state.to_string(),
        },
        (CheckKind::Http(c), Observed::Http(status)) => Evaluation {
            passed: *status == Some(c.status),
            observed: status.map_or("no answer".into(), |s| format!("HTTP {s}")),
            expected: format!("HTTP {}", c.status),
        },
        (CheckKind::ErrorRate(c), Observed::NoData) => Evaluation {
            passed: true,
            observed: "no requests".into(),
            expected: format!("<= {}", c.max),
        },
        (CheckKind::Latency(c), Observed::NoData) => Evaluation {
            passed: true,
            observed: "no requests".into(),
            expected: format!("p{} <= {}", c.percentile, c.max),
        },
        (CheckKind::Breaker(c), Observed::NoData) => Evaluation {
            passed: false,
            observed: "breaker not seen".into(),
            expected: c.state.to_string(),
        },
        (kind, other) => Evaluation {
            passed: false,
            observed: format!("{other:?} does not fit a {} check", kind.key()),
            expected: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use faultline_api::{BreakerCheck, ErrorRateCheck, HttpCheck};

    use super::*;

    #[test]
    fn comparisons() {
        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "checkout".into(),
            max: "5%".parse().expect("pct"),
            window: "30s".parse().expect("dur"),
        });
        assert!(evaluate(&er, &Observed::Rate(0.05)).passed);
        let e = evaluate(&er, &Observed::Rate(0.0501));
        assert!(!e.passed);
        assert_eq!(
            (e.observed.as_str(), e.expected.as_str()),
            ("5.01%", "<= 5%")
        );
        assert!(evaluate(&er, &Observed::NoData).passed);
        let br = CheckKind::Breaker(BreakerCheck {
            service: "checkout".into(),
            name: "payments".into(),
            state: BreakerState::Open,
            within: None,
            fault: None,
        });
        assert!(
            evaluate(
                &br,
                &Observed::Breaker {
                    state: BreakerState::Open,
                    for_secs: 1.0
                }
            )
            .passed
        );
        assert!(!evaluate(&br, &Observed::NoData).passed);
        let http = CheckKind::Http(HttpCheck {
            url: "http://x/health".into(),
            status: 200,
            timeout: "2s".parse().expect("dur"),
        });
        assert!(!evaluate(&http, &Observed::Http(None)).passed);
        assert!(!evaluate(&http, &Observed::Rate(0.0)).passed);
    }
}
