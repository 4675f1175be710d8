//! Judging one observation of a check. What to observe and when is the
//! runtime's and the run's business; this only compares.

use faultline_api::{BreakerState, CheckKind};

/// A figure measured for a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A share of failed requests, 0.0 to 1.0, over this many requests.
    Rate { rate: f64, requests: u64 },
    /// A latency percentile over this many requests.
    LatencyMs { ms: f64, requests: u64 },
    /// A breaker's state and how long it has been in it.
    Breaker { state: BreakerState, for_secs: f64 },
    /// An HTTP answer's status, or None when nothing answered in time.
    Http(Option<u16>),
    /// Nothing to judge by (no traffic in the window, a service or breaker
    /// never seen).
    NoData,
    /// The check's service is unknown to whoever holds the figures; why,
    /// as people read it (with a "did you mean" when one fits).
    Unseen(String),
}

/// The result of one evaluation: whether the figure met the check, what was
/// seen and what was wanted (both as people read them, for reports). A
/// figure without enough evidence is not judged: neither met nor failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub judged: bool,
    pub passed: bool,
    pub observed: String,
    pub expected: String,
}

fn pct(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

fn judged(passed: bool, observed: String, expected: String) -> Evaluation {
    Evaluation {
        judged: true,
        passed,
        observed,
        expected,
    }
}

/// Too little traffic to judge by: not judged, unless the check asked
/// for no minimum (`minRequests: 0`), when an empty window meets it.
fn few(requests: u64, min: u32, expected: String) -> Evaluation {
    if min == 0 {
        return judged(true, "no requests".into(), expected);
    }
    let observed = match requests {
        0 => "no requests".to_owned(),
        n => format!("{n} requests, fewer than {min}"),
    };
    Evaluation {
        judged: false,
        passed: false,
        observed,
        expected,
    }
}

/// Compares `observed` with the check's threshold. Too few requests is no
/// evidence either way; a breaker never seen is not in any state.
pub fn evaluate(kind: &CheckKind, observed: &Observed) -> Evaluation {
    match (kind, observed) {
        (CheckKind::ErrorRate(c), Observed::Rate { rate, requests }) => {
            let expected = format!("<= {}", c.max);
            if *requests < u64::from(c.min_requests()) {
                return few(*requests, c.min_requests(), expected);
            }
            judged(*rate <= c.max.fraction() + 1e-12, pct(*rate), expected)
        }
        (CheckKind::Latency(c), Observed::LatencyMs { ms, requests }) => {
            let expected = format!("p{} <= {}", c.percentile, c.max);
            if *requests < u64::from(c.min_requests()) {
                return few(*requests, c.min_requests(), expected);
            }
            judged(
                *ms <= c.max.as_millis() as f64,
                format!("{ms:.1}ms"),
                expected,
            )
        }
        (CheckKind::Breaker(c), Observed::Breaker { state, .. }) => {
            judged(*state == c.state, state.to_string(), c.state.to_string())
        }
        (CheckKind::Http(c), Observed::Http(status)) => judged(
            *status == Some(c.status),
            status.map_or("no answer".into(), |s| format!("HTTP {s}")),
            format!("HTTP {}", c.status),
        ),
        (CheckKind::ErrorRate(c), Observed::NoData) => {
            few(0, c.min_requests(), format!("<= {}", c.max))
        }
        (CheckKind::Latency(c), Observed::NoData) => few(
            0,
            c.min_requests(),
            format!("p{} <= {}", c.percentile, c.max),
        ),
        (CheckKind::Breaker(c), Observed::NoData) => {
            judged(false, "breaker not seen".into(), c.state.to_string())
        }
        // `minRequests: 0` asks for no evidence, explicitly: as no requests.
        (CheckKind::ErrorRate(c), Observed::Unseen(_)) if c.min_requests() == 0 => {
            evaluate(kind, &Observed::NoData)
        }
        (CheckKind::Latency(c), Observed::Unseen(_)) if c.min_requests() == 0 => {
            evaluate(kind, &Observed::NoData)
        }
        // Not judged: a name nobody reports on is no evidence either way.
        (kind, Observed::Unseen(why)) => Evaluation {
            passed: false,
            judged: false,
            observed: why.clone(),
            expected: match kind {
                CheckKind::ErrorRate(c) => format!("<= {}", c.max),
                CheckKind::Latency(c) => format!("p{} <= {}", c.percentile, c.max),
                CheckKind::Breaker(c) => c.state.to_string(),
                CheckKind::Http(c) => format!("HTTP {}", c.status),
            },
        },
        (kind, other) => judged(
            false,
            format!("{other:?} does not fit a {} check", kind.key()),
            String::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use faultline_api::{BreakerCheck, ErrorRateCheck, HttpCheck, LatencyCheck};

    use super::*;

    fn rate(rate: f64, requests: u64) -> Observed {
        Observed::Rate { rate, requests }
    }

    #[test]
    fn an_unseen_service_is_not_judged_and_says_why() {
        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "chekout".into(),
            max: "5%".parse().expect("percent"),
            window: "30s".parse().expect("duration"),
            min_requests: None,
        });
        let e = evaluate(
            &er,
            &Observed::Unseen("never seen (did you mean checkout?)".into()),
        );
        assert!(!e.judged && !e.passed);
        assert_eq!(e.observed, "never seen (did you mean checkout?)");
        assert_eq!(e.expected, "<= 5%");
    }

    #[test]
    fn comparisons() {
        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "checkout".into(),
            max: "5%".parse().expect("pct"),
            window: "30s".parse().expect("dur"),
            min_requests: None,
        });
        assert!(evaluate(&er, &rate(0.05, 100)).passed);
        let e = evaluate(&er, &rate(0.0501, 10_000));
        assert!(e.judged && !e.passed);
        assert_eq!(
            (e.observed.as_str(), e.expected.as_str()),
            ("5.01%", "<= 5%")
        );
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
        let unseen = evaluate(&br, &Observed::NoData);
        assert!(unseen.judged && !unseen.passed);
        let http = CheckKind::Http(HttpCheck {
            url: "http://x/health".into(),
            status: 200,
            timeout: "2s".parse().expect("dur"),
            allow_link_local: false,
        });
        assert!(!evaluate(&http, &Observed::Http(None)).passed);
        assert!(!evaluate(&http, &rate(0.0, 100)).passed);
    }

    #[test]
    fn too_few_requests_are_not_judged_unless_the_check_asks_for_none() {
        let check = |min: Option<u32>| {
            CheckKind::ErrorRate(ErrorRateCheck {
                service: "checkout".into(),
                max: "5%".parse().expect("pct"),
                window: "30s".parse().expect("dur"),
                min_requests: min,
            })
        };
        // The default minimum is 10 requests: 9 clean ones are no evidence,
        // nor are 9 failing ones.
        for r in [0.0, 1.0] {
            let e = evaluate(&check(None), &rate(r, 9));
            assert!(!e.judged && !e.passed, "{e:?}");
            assert_eq!(e.observed, "9 requests, fewer than 10");
        }
        assert!(evaluate(&check(None), &rate(0.0, 10)).judged);
        let none = evaluate(&check(None), &Observed::NoData);
        assert!(!none.judged && !none.passed);
        assert_eq!(none.observed, "no requests");
        // minRequests: 0 keeps judging an empty window as met, on purpose.
        let empty = evaluate(&check(Some(0)), &Observed::NoData);
        assert!(empty.judged && empty.passed);
        let latency = CheckKind::Latency(LatencyCheck {
            service: "checkout".into(),
            percentile: 99.0,
            max: "300ms".parse().expect("dur"),
            window: "30s".parse().expect("dur"),
            min_requests: Some(50),
        });
        let e = evaluate(
            &latency,
            &Observed::LatencyMs {
                ms: 900.0,
                requests: 49,
            },
        );
        assert!(!e.judged, "{e:?}");
        let e = evaluate(
            &latency,
            &Observed::LatencyMs {
                ms: 900.0,
                requests: 50,
            },
        );
        assert!(e.judged && !e.passed, "{e:?}");
    }
}
