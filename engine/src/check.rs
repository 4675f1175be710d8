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

/// A check's figure measured before the first fault: an error rate (a
/// fraction) or a latency in milliseconds, over this many requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub value: f64,
    pub requests: u64,
}

impl Baseline {
    /// The figure of `observed` if it is evidence enough for `kind`.
    pub fn of(kind: &CheckKind, observed: &Observed) -> Result<Baseline, String> {
        let (value, requests, min) = match (kind, observed) {
            (CheckKind::ErrorRate(c), Observed::Rate { rate, requests }) => {
                (*rate, *requests, c.min_requests())
            }
            (CheckKind::Latency(c), Observed::LatencyMs { ms, requests }) => {
                (*ms, *requests, c.min_requests())
            }
            (_, Observed::Unseen(why)) => return Err(why.clone()),
            _ => return Err("no requests".into()),
        };
        // A baseline rests on evidence even when judging does not ask for it.
        if requests < u64::from(min.max(1)) {
            return Err(format!("{requests} requests, fewer than {}", min.max(1)));
        }
        Ok(Baseline { value, requests })
    }

    /// As people read it, for `kind`: `0.50%` or `42.0ms`.
    pub fn show(&self, kind: &CheckKind) -> String {
        match kind {
            CheckKind::ErrorRate(_) => pct(self.value),
            _ => format!("{:.1}ms", self.value),
        }
    }

    /// A baseline or why there is none, as reports and the status carry
    /// it: `42.000ms over 230 requests`, `none: 3 requests, fewer than 10`.
    pub fn describe(baseline: &Result<Baseline, String>, kind: &CheckKind) -> String {
        // More digits than `show`: a restarted controller goes on with it.
        match (baseline, kind) {
            (Ok(b), CheckKind::ErrorRate(_)) => {
                format!("{:.4}% over {} requests", b.value * 100.0, b.requests)
            }
            (Ok(b), _) => format!("{:.3}ms over {} requests", b.value, b.requests),
            (Err(why), _) => format!("none: {why}"),
        }
    }

    /// A baseline read back from what [`Baseline::describe`] wrote (a
    /// restarted controller goes on with the one its status holds).
    pub fn parse(text: &str) -> Option<Baseline> {
        let (figure, rest) = text.split_once(" over ")?;
        let requests = rest.strip_suffix(" requests")?.parse().ok()?;
        let value = match (figure.strip_suffix('%'), figure.strip_suffix("ms")) {
            (Some(p), _) => p.parse::<f64>().ok()? / 100.0,
            (_, Some(ms)) => ms.parse().ok()?,
            _ => return None,
        };
        Some(Baseline { value, requests })
    }
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
    evaluate_against(kind, observed, &Err("not measured".into()))
}

/// Judges a figure against absolute and baseline-relative limits: over an
/// absolute limit fails whatever the baseline; a relative limit without a
/// baseline (`Err`: why none) is not judged.
fn relative(
    kind: &CheckKind,
    value: f64,
    shown: String,
    absolute_ok: bool,
    limit: Option<f64>,
    baseline: &Result<Baseline, String>,
) -> Evaluation {
    let expected = kind_limit(kind);
    let Some(allowed) = limit else {
        return judged(absolute_ok, shown, expected);
    };
    match baseline {
        _ if !absolute_ok => judged(false, shown, expected),
        Ok(b) => {
            let bound = allowed_above(kind, b.value, allowed);
            let observed = format!("{shown} (baseline {})", b.show(kind));
            let bound_shown = Baseline {
                value: bound,
                requests: b.requests,
            }
            .show(kind);
            judged(
                value <= bound + 1e-12,
                observed,
                format!("{expected} ({bound_shown})"),
            )
        }
        Err(why) => Evaluation {
            judged: false,
            passed: false,
            observed: format!("{shown}, no baseline: {why}"),
            expected,
        },
    }
}

/// The highest figure a relative limit allows over `baseline`.
fn allowed_above(kind: &CheckKind, baseline: f64, limit: f64) -> f64 {
    match kind {
        CheckKind::ErrorRate(_) => baseline + limit,
        _ => baseline * limit,
    }
}

fn kind_limit(kind: &CheckKind) -> String {
    match kind {
        CheckKind::ErrorRate(c) => c.limit(),
        CheckKind::Latency(c) => c.limit(),
        CheckKind::Breaker(c) => c.state.to_string(),
        CheckKind::Http(c) => format!("HTTP {}", c.status),
    }
}

/// [`evaluate`], with the check's baseline for relative limits.
pub fn evaluate_against(
    kind: &CheckKind,
    observed: &Observed,
    baseline: &Result<Baseline, String>,
) -> Evaluation {
    match (kind, observed) {
        (CheckKind::ErrorRate(c), Observed::Rate { rate, requests }) => {
            if *requests < u64::from(c.min_requests()) {
                return few(*requests, c.min_requests(), c.limit());
            }
            let absolute_ok = c.max.is_none_or(|m| *rate <= m.fraction() + 1e-12);
            let limit = c.max_increase.map(|i| i.fraction());
            relative(kind, *rate, pct(*rate), absolute_ok, limit, baseline)
        }
        (CheckKind::Latency(c), Observed::LatencyMs { ms, requests }) => {
            if *requests < u64::from(c.min_requests()) {
                return few(*requests, c.min_requests(), c.limit());
            }
            let absolute_ok = c.max.is_none_or(|m| *ms <= m.as_millis() as f64);
            relative(
                kind,
                *ms,
                format!("{ms:.1}ms"),
                absolute_ok,
                c.max_ratio,
                baseline,
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
        (CheckKind::ErrorRate(c), Observed::NoData) => few(0, c.min_requests(), c.limit()),
        (CheckKind::Latency(c), Observed::NoData) => few(0, c.min_requests(), c.limit()),
        (CheckKind::Breaker(c), Observed::NoData) => {
            judged(false, "breaker not seen".into(), c.state.to_string())
        }
        // Not judged, whatever minRequests says: a name nobody reports on
        // is no evidence either way (most likely a typo).
        (kind, Observed::Unseen(why)) => Evaluation {
            passed: false,
            judged: false,
            observed: why.clone(),
            expected: kind_limit(kind),
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
            to: None,
            max: Some("5%".parse().expect("percent")),
            max_increase: None,
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

    fn latency(max: Option<&str>, ratio: Option<f64>) -> CheckKind {
        CheckKind::Latency(LatencyCheck {
            service: "checkout".into(),
            percentile: 99.0,
            max: max.map(|m| m.parse().expect("dur")),
            max_ratio: ratio,
            window: "30s".parse().expect("dur"),
            min_requests: None,
        })
    }

    fn ms(ms: f64) -> Observed {
        Observed::LatencyMs { ms, requests: 500 }
    }

    #[test]
    fn a_described_baseline_reads_back() {
        let check = latency(None, Some(1.5));
        let b = Baseline {
            value: 42.24,
            requests: 230,
        };
        let text = Baseline::describe(&Ok(b), &check);
        assert_eq!(text, "42.240ms over 230 requests");
        let back = Baseline::parse(&text).expect("parses");
        assert!((back.value - 42.24).abs() < 1e-9 && back.requests == 230);
        let rate = Baseline {
            value: 0.005,
            requests: 1000,
        };
        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "frontend".into(),
            to: None,
            max: None,
            max_increase: Some("2%".parse().expect("pct")),
            window: "30s".parse().expect("dur"),
            min_requests: None,
        });
        let back = Baseline::parse(&Baseline::describe(&Ok(rate), &er)).expect("parses");
        assert!((back.value - 0.005).abs() < 1e-12);
        assert_eq!(Baseline::parse("none: no requests"), None);
        assert_eq!(
            Baseline::describe(&Err("no requests".into()), &er),
            "none: no requests"
        );
    }

    #[test]
    fn relative_limits_compare_with_the_baseline() {
        let check = latency(None, Some(1.5));
        let base = Baseline::of(&check, &ms(40.0));
        assert_eq!(
            base,
            Ok(Baseline {
                value: 40.0,
                requests: 500
            })
        );
        let ok = evaluate_against(&check, &ms(60.0), &base);
        assert!(ok.judged && ok.passed, "{ok:?}");
        assert_eq!(ok.observed, "60.0ms (baseline 40.0ms)");
        assert_eq!(ok.expected, "p99 <= 1.5x baseline (60.0ms)");
        let slow = evaluate_against(&check, &ms(60.5), &base);
        assert!(slow.judged && !slow.passed, "{slow:?}");
        // No baseline: not judged, never passed.
        let none = evaluate_against(&check, &ms(10.0), &Err("3 requests, fewer than 10".into()));
        assert!(!none.judged && !none.passed);
        assert_eq!(
            none.observed,
            "10.0ms, no baseline: 3 requests, fewer than 10"
        );
        // An absolute limit broken fails whatever the baseline.
        let both = latency(Some("50ms"), Some(10.0));
        let e = evaluate_against(&both, &ms(51.0), &Err("none".into()));
        assert!(e.judged && !e.passed);
        assert_eq!(e.expected, "p99 <= 50ms and <= 10x baseline");

        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "frontend".into(),
            to: None,
            max: None,
            max_increase: Some("2%".parse().expect("pct")),
            window: "30s".parse().expect("dur"),
            min_requests: None,
        });
        let base = Baseline::of(&er, &rate(0.005, 1000));
        let e = evaluate_against(&er, &rate(0.025, 1000), &base);
        assert!(e.judged && e.passed, "{e:?}");
        assert_eq!(e.expected, "<= baseline + 2% (2.50%)");
        assert!(!evaluate_against(&er, &rate(0.026, 1000), &base).passed);
        // A baseline needs evidence, even where judging asks for none.
        assert_eq!(
            Baseline::of(&er, &rate(0.0, 3)),
            Err("3 requests, fewer than 10".into())
        );
        assert!(Baseline::of(&er, &Observed::NoData).is_err());
    }

    #[test]
    fn comparisons() {
        let er = CheckKind::ErrorRate(ErrorRateCheck {
            service: "checkout".into(),
            to: None,
            max: Some("5%".parse().expect("pct")),
            max_increase: None,
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
                to: None,
                max: Some("5%".parse().expect("pct")),
                max_increase: None,
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
            max: Some("300ms".parse().expect("dur")),
            max_ratio: None,
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
