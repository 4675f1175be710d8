//! The lifecycle, phase by phase, and properties over random experiments and
//! event orders: nothing is injected after the end, every abort ends in full
//! recovery, and no fault is active outside its window.

use std::time::Duration;

use faultline_api::{
    BreakerState, Check, CheckKind, CheckPhase, Direction, ErrorRateCheck, Experiment,
    ExperimentSpec, Fault, FaultAction, Kill, Latency, Partition, Phase, SelectionMode, Signal,
    TargetSelector, Verdict, parse_one,
};
use faultline_engine::{Action, Candidate, CheckRef, Instance, Observed, Run};
use proptest::prelude::*;

fn spec(yaml: &str) -> ExperimentSpec {
    let text = format!(
        "apiVersion: faultline.dev/v1alpha1\nkind: Experiment\nmetadata: {{name: t, namespace: shop}}\nspec:\n{yaml}"
    );
    match parse_one::<Experiment>(text.as_bytes()) {
        Ok(e) => e.spec,
        Err(d) => panic!("{d:?}\n{text}"),
    }
}

/// An error rate over plenty of requests (evidence enough to judge).
fn rate(rate: f64) -> Observed {
    Observed::Rate {
        rate,
        requests: 1000,
    }
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn shop() -> Vec<Candidate> {
    vec![
        Candidate::new("payments-1", "shop", &[("app", "payments")]),
        Candidate::new("payments-2", "shop", &[("app", "payments")]),
        Candidate::new("cart-1", "shop", &[("app", "cart")]),
    ]
}

const SLOW: &str = "  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - name: slow
      target: payments
      start: 10s
      duration: 30s
      latency: {delay: 300ms}
  hypothesis:
    - name: steady
      when: [before]
      errorRate: {service: checkout, max: 1%}
    - name: healthy
      errorRate: {service: checkout, max: 5%}
    - name: opens
      breaker: {service: checkout, name: payments, state: open, within: 20s}
    - name: answers after
      when: [after]
      http: {url: \"http://frontend/health\"}
  abort:
    - errorRate: {service: frontend, max: 50%}
";

fn injects(a: &[Action]) -> Vec<&Instance> {
    a.iter()
        .filter_map(|a| {
            if let Action::Inject(i) = a {
                Some(i)
            } else {
                None
            }
        })
        .collect()
}

fn removes(a: &[Action]) -> Vec<&Instance> {
    a.iter()
        .filter_map(|a| {
            if let Action::Remove(i) = a {
                Some(i)
            } else {
                None
            }
        })
        .collect()
}

/// Steps the run, then confirms everything it holds, as a driver whose
/// agents apply every fault at once would.
fn step(run: &mut Run, now: Duration, candidates: &[Candidate]) -> Vec<Action> {
    let actions = run.step(now, candidates);
    run.confirm(now, |_| true);
    actions
}

/// Answers every due check with what `f` says.
fn answer(run: &mut Run, now: Duration, f: impl Fn(CheckRef) -> Observed) {
    for c in run.due(now) {
        run.observe(now, c, &f(c));
    }
}

#[test]
fn a_passing_run_from_steady_state_to_verdict() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    // Pending: the steady-state check comes first; nothing is injected before it.
    assert_eq!(
        run.due(s(0)),
        vec![CheckRef {
            abort: false,
            index: 0
        }]
    );
    assert!(step(&mut run, s(0), &shop()).is_empty());
    assert_eq!(run.phase(), Phase::Pending);
    run.observe(
        s(0),
        CheckRef {
            abort: false,
            index: 0,
        },
        &rate(0.0),
    );
    // Before the fault's window nothing is active.
    assert!(step(&mut run, s(1), &shop()).is_empty());
    assert_eq!(run.phase(), Phase::Running);
    // The window opens: both payments pods.
    let a = step(&mut run, s(10), &shop());
    assert_eq!(injects(&a).len(), 2);
    assert_eq!(run.phase(), Phase::Injecting);
    answer(&mut run, s(12), |c| match (c.abort, c.index) {
        (true, _) => rate(0.01),
        (false, 1) => rate(0.02),
        _ => Observed::Breaker {
            state: BreakerState::Closed,
            for_secs: 12.0,
        },
    });
    assert!(step(&mut run, s(15), &shop()).is_empty());
    assert_eq!(run.phase(), Phase::Running);
    answer(&mut run, s(16), |c| match (c.abort, c.index) {
        (false, 2) => Observed::Breaker {
            state: BreakerState::Open,
            for_secs: 1.0,
        },
        _ => rate(0.02),
    });
    // The window closes at 40 s, the experiment at 60 s.
    assert_eq!(removes(&step(&mut run, s(40), &shop())).len(), 2);
    assert!(run.active().is_empty());
    let a = step(&mut run, s(60), &shop());
    assert!(a.is_empty());
    assert_eq!(run.phase(), Phase::Recovering);
    assert_eq!(
        run.due(s(60)),
        vec![CheckRef {
            abort: false,
            index: 3
        }]
    );
    run.observe(
        s(61),
        CheckRef {
            abort: false,
            index: 3,
        },
        &Observed::Http(Some(200)),
    );
    step(&mut run, s(61), &shop());
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Passed))
    );
    assert!(run.report().iter().all(|r| r.passed));
}

#[test]
fn a_breaker_that_never_opens_within_its_limit_fails_the_run() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |_| rate(0.0));
    for t in [10, 20, 30, 31, 35] {
        step(&mut run, s(t), &shop());
        answer(&mut run, s(t), |c| {
            if !c.abort && c.index == 2 {
                Observed::Breaker {
                    state: BreakerState::Closed,
                    for_secs: 30.0,
                }
            } else {
                rate(0.0)
            }
        });
    }
    step(&mut run, s(60), &shop());
    answer(&mut run, s(60), |_| Observed::Http(Some(200)));
    step(&mut run, s(61), &shop());
    assert_eq!(run.verdict(), Some(Verdict::Failed), "{:?}", run.message());
    let failed: Vec<String> = run
        .report()
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| r.name)
        .collect();
    assert_eq!(failed, vec!["opens".to_owned()]);
}

#[test]
fn an_abort_check_stops_the_run_and_removes_everything() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |_| rate(0.0));
    assert_eq!(injects(&step(&mut run, s(10), &shop())).len(), 2);
    answer(
        &mut run,
        s(11),
        |c| {
            if c.abort { rate(0.6) } else { rate(0.0) }
        },
    );
    assert_eq!(run.phase(), Phase::Aborted);
    let a = step(&mut run, s(11), &shop());
    assert_eq!(removes(&a).len(), 2);
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Recovered, Some(Verdict::Aborted))
    );
    assert!(run.message().is_some_and(|m| m.contains("abort check")));
    assert!(
        step(&mut run, s(20), &shop()).is_empty(),
        "nothing after recovery"
    );
}

#[test]
fn a_failed_steady_state_never_injects() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    run.observe(
        s(0),
        CheckRef {
            abort: false,
            index: 0,
        },
        &rate(0.2),
    );
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Failed))
    );
    assert!(step(&mut run, s(10), &shop()).is_empty());
}

#[test]
fn blast_radius_is_refused_before_anything_is_injected() {
    let text = SLOW.replace("  abort:", "  limits: {maxTargets: 1}\n  abort:");
    let mut run = Run::new(spec(&text), "shop", 7);
    answer(&mut run, s(0), |_| rate(0.0));
    let a = step(&mut run, s(0), &shop());
    assert!(injects(&a).is_empty());
    assert_eq!(run.phase(), Phase::Recovered);
    assert!(
        run.message().is_some_and(|m| m.contains("maxTargets = 1")),
        "{:?}",
        run.message()
    );
}

#[test]
fn kills_repeat_and_replacements_are_covered() {
    let mut run = Run::new(
        spec(
            "  duration: 60s
  targets:
    one: {labels: {app: payments}, mode: one}
  faults:
    - name: kill
      target: one
      kill: {signal: SIGTERM, every: 20s}
",
        ),
        "shop",
        3,
    );
    let signals = |a: &[Action]| {
        a.iter()
            .filter(|a| matches!(a, Action::Signal(_, Signal::Term)))
            .count()
    };
    assert_eq!(signals(&step(&mut run, s(0), &shop())), 1);
    assert_eq!(signals(&step(&mut run, s(5), &shop())), 0);
    let first = run.plan()["one"][0].clone();
    assert_eq!(signals(&step(&mut run, s(20), &shop())), 1);
    // The killed pod is replaced by a new one: the plan moves to it.
    let replaced: Vec<Candidate> = shop()
        .into_iter()
        .filter(|c| c.id != first)
        .chain([Candidate::new("payments-3", "shop", &[("app", "payments")])])
        .collect();
    let a = step(&mut run, s(40), &replaced);
    assert_eq!(signals(&a), 1);
    assert_ne!(run.plan()["one"][0], first);
    assert_eq!(signals(&step(&mut run, s(59), &replaced)), 0);
    step(&mut run, s(60), &replaced);
    assert_eq!(run.verdict(), Some(Verdict::Passed));
}

#[test]
fn a_once_kill_leaves_replacements_alone_and_a_periodic_one_waits_for_its_period() {
    let spec = |every: &str| {
        spec(&format!(
            "  duration: 60s
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - name: kill
      target: payments
      kill: {{signal: SIGTERM{every}}}
"
        ))
    };
    let signalled = |a: &[Action]| -> Vec<String> {
        a.iter()
            .filter_map(|a| match a {
                Action::Signal(i, _) => Some(i.target.to_string()),
                _ => None,
            })
            .collect()
    };
    let with_newcomer: Vec<Candidate> = shop()
        .into_iter()
        .chain([Candidate::new("payments-3", "shop", &[("app", "payments")])])
        .collect();

    let mut once = Run::new(spec(""), "shop", 1);
    assert_eq!(
        signalled(&step(&mut once, s(0), &shop())),
        ["payments-1", "payments-2"]
    );
    assert!(signalled(&step(&mut once, s(5), &with_newcomer)).is_empty());
    let held: Vec<String> = once
        .resolved()
        .iter()
        .map(|r| r.target.to_owned())
        .collect();
    assert_eq!(
        held,
        ["payments-1", "payments-2"],
        "the newcomer holds no kill"
    );

    let mut periodic = Run::new(spec(", every: 20s"), "shop", 1);
    assert_eq!(signalled(&step(&mut periodic, s(0), &shop())).len(), 2);
    assert!(
        signalled(&step(&mut periodic, s(5), &with_newcomer)).is_empty(),
        "not at once"
    );
    assert_eq!(
        periodic.resolved().len(),
        2,
        "nor held: a node agent signals as it applies"
    );
    assert_eq!(
        signalled(&step(&mut periodic, s(20), &with_newcomer)).len(),
        3
    );
    assert_eq!(
        periodic.resolved().len(),
        3,
        "held from its first period on"
    );
}

#[test]
fn a_resumed_run_repeats_no_signal_and_keeps_its_checks() {
    let spec = spec(
        "  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: kill, target: payments, kill: {every: 20s}}
    - {name: slow, target: payments, start: 10s, latency: {delay: 100ms}}
",
    );
    let mut first = Run::new(spec.clone(), "shop", 1);
    step(&mut first, s(0), &shop());
    step(&mut first, s(25), &shop());
    // Taken over at 30 s: the signals of the 20 s period were sent already.
    let resume = faultline_engine::Resume {
        phase: Some(first.phase()),
        ..Default::default()
    };
    let mut second = Run::resume(spec, "shop", 1, s(30), &resume);
    let a = step(&mut second, s(30), &shop());
    assert!(!a.iter().any(|a| matches!(a, Action::Signal(..))), "{a:?}");
    let mut held: Vec<(String, String, u64)> = second
        .resolved()
        .iter()
        .map(|r| (r.fault.name.clone(), r.target.to_owned(), r.until.as_secs()))
        .collect();
    held.sort();
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(held.iter().all(|(_, _, until)| *until == 60));
    let a = step(&mut second, s(40), &shop());
    assert_eq!(
        a.iter().filter(|a| matches!(a, Action::Signal(..))).count(),
        2
    );
}

#[test]
fn a_resumed_run_over_its_limits_stops_instead_of_running_with_nothing() {
    let spec = spec(
        "  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: slow, target: payments, latency: {delay: 100ms}}
  limits: {maxTargets: 1}
",
    );
    let resume = faultline_engine::Resume {
        phase: Some(Phase::Running),
        ..Default::default()
    };
    let mut run = Run::resume(spec, "shop", 1, s(30), &resume);
    step(&mut run, s(30), &shop());
    assert_eq!(run.phase(), Phase::Recovered);
    assert_eq!(run.verdict(), Some(Verdict::Aborted));
    assert!(run.message().is_some_and(|m| m.contains("maxTargets")));
}

// ---- properties ----

fn dur(ms: u64) -> faultline_api::Duration {
    faultline_api::Duration::from_millis(ms).expect("under 24h")
}

prop_compose! {
    fn experiment()(
        duration in 10u64..120,
        faults in proptest::collection::vec((0u64..100, proptest::option::of(1u64..100), 0u8..3, 0usize..2), 1..5),
        modes in proptest::collection::vec((0u8..4, 1u32..4), 2),
        with_abort in any::<bool>(),
    ) -> ExperimentSpec {
        let targets = modes.iter().enumerate().map(|(i, (m, v))| {
            let (mode, value) = match m {
                0 => (SelectionMode::All, None),
                1 => (SelectionMode::One, None),
                2 => (SelectionMode::Fixed, Some(*v)),
                _ => (SelectionMode::Percent, Some(*v * 30)),
            };
            (format!("t{i}"), TargetSelector {
                namespaces: vec![],
                labels: [("app".to_owned(), if i == 0 { "payments" } else { "cart" }.to_owned())].into(),
                mode,
                value,
            })
        }).collect();
        let faults = faults.iter().enumerate().map(|(i, (start, len, kind, target))| {
            let start = start % duration;
            let len = len.map(|l| 1 + l % (duration - start));
            let action = match kind {
                0 => FaultAction::Latency(Latency { delay: dur(100), jitter: None, correlation: None, loss: None, to: vec![] }),
                1 => FaultAction::Partition(Partition { direction: Direction::Both, peers: vec!["10.0.0.0/8".into()], ports: vec![] }),
                _ => FaultAction::Kill(Kill { signal: Signal::Kill, method: Default::default(), every: Some(dur(3000)), sandbox: false }),
            };
            Fault {
                name: format!("f{i}"),
                target: format!("t{target}"),
                start: Some(dur(start * 1000)),
                duration: len.map(|l| dur(l * 1000)),
                require_effect: false,
                action,
            }
        }).collect();
        let check = Check {
            name: None,
            when: vec![],
            kind: CheckKind::ErrorRate(ErrorRateCheck { service: "x".into(), to: None, max: Some("50%".parse().expect("pct")), max_increase: None, window: dur(10_000), min_requests: None }),
        };
        ExperimentSpec {
            description: None,
            duration: dur(duration * 1000),
            schedule: None,
            targets,
            faults,
            hypothesis: vec![check.clone()],
            abort: if with_abort { vec![check] } else { vec![] },
            limits: None,
            abort_grace: None,
            confirm_timeout: None,
        }
    }
}

fn candidates(n: usize, generation: u64) -> Vec<Candidate> {
    (0..n)
        .map(|i| {
            let app = if i % 2 == 0 { "payments" } else { "cart" };
            Candidate::new(&format!("{app}-{generation}-{i}"), "shop", &[("app", app)])
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_experiment_and_event_order(
        spec in experiment(),
        times in proptest::collection::vec(0u64..150_000, 1..40),
        churn in proptest::collection::vec((1usize..8, 0u64..3), 40),
        abort_at in proptest::option::of(0u64..150_000),
        rates in proptest::collection::vec(0.0f64..1.0, 80),
        seed in any::<u64>(),
        confirm_every in 1usize..6,
    ) {
        let mut times = times;
        times.sort();
        let end = spec.duration.as_std();
        let mut run = Run::new(spec.clone(), "shop", seed);
        let mut aborted = false;
        let mut applied: std::collections::BTreeSet<Instance> = Default::default();
        for (k, t) in times.iter().enumerate() {
            let now = Duration::from_millis(*t);
            if let Some(a) = abort_at && !aborted && *t >= a {
                run.abort(now, "user");
                aborted = true;
            }
            // As drivers do, before stepping: the faults come off in this step.
            if !aborted && !run.overdue(now).is_empty() {
                run.broke(now, "not confirmed");
                aborted = true;
                prop_assert_eq!(run.verdict(), Some(Verdict::Broken));
            }
            for c in run.due(now) {
                run.observe(now, c, &rate(rates[k % rates.len()]));
            }
            let (n, generation) = churn[k % churn.len()];
            let actions = run.step(now, &candidates(n, generation));
            // Agents that answer now and then, some never (a target's
            // generation 2 has none): a fault waiting too long breaks the run.
            if k % confirm_every == 0 {
                run.confirm(now, |i| !i.target.contains("-2-"));
            }
            let held: std::collections::BTreeSet<&Instance> = run.unconfirmed().collect();
            prop_assert!(held.iter().all(|i| !run.confirmed().contains(*i)), "confirmed and waiting at once");
            for a in &actions {
                match a {
                    Action::Inject(i) => {
                        prop_assert!(now < end, "injected after the end");
                        prop_assert!(applied.insert(i.clone()), "injected twice: {i:?}");
                    }
                    Action::Remove(i) => prop_assert!(applied.remove(i), "removed what was not applied: {i:?}"),
                    Action::Signal(i, _) => {
                        let (s, e) = run.window(&i.fault).expect("fault");
                        prop_assert!(s <= now && now < e, "signal outside the window");
                    }
                }
            }
            prop_assert_eq!(&applied, run.active());
            // No fault active outside its window.
            for i in run.active() {
                let (s, e) = run.window(&i.fault).expect("fault");
                prop_assert!(s <= now && now < e, "{i:?} active at {now:?} outside {s:?}..{e:?}");
            }
            if aborted {
                prop_assert!(run.active().is_empty(), "an abort removes everything in the next step");
                prop_assert!(matches!(run.phase(), Phase::Recovered | Phase::Completed));
            }
        }
        // Past the end, a final step leaves nothing applied, whatever happened.
        let last = end + Duration::from_secs(1);
        for c in run.due(last) {
            run.observe(last, c, &Observed::Http(Some(200)));
        }
        step(&mut run, last, &candidates(4, 0));
        prop_assert!(run.active().is_empty());
        if run.phase() != Phase::Pending {
            prop_assert!(run.is_finished() || run.phase() == Phase::Recovering, "{:?}", run.phase());
        }
    }
}

/// Runs SLOW from start to verdict, answering every due check with `f`
/// (given the check and the second it is asked at).
fn run_with(f: impl Fn(CheckRef, u64) -> Observed) -> Run {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    for t in 0..=62 {
        for c in run.due(s(t)) {
            run.observe(s(t), c, &f(c, t));
        }
        step(&mut run, s(t), &shop());
    }
    run
}

/// The breaker opens and the health check answers: only the rate checks
/// vary between the tests below.
fn others(c: CheckRef) -> Option<Observed> {
    match (c.abort, c.index) {
        (false, 2) => Some(Observed::Breaker {
            state: BreakerState::Open,
            for_secs: 1.0,
        }),
        (false, 3) => Some(Observed::Http(Some(200))),
        _ => None,
    }
}

#[test]
fn no_traffic_during_the_fault_is_inconclusive_not_passed() {
    // Steady state judged on plenty of traffic; after it, nothing for the
    // hypothesis (the abort check has figures of its own).
    let run = run_with(|c, t| {
        others(c).unwrap_or(if t == 0 || c.abort {
            rate(0.0)
        } else {
            Observed::NoData
        })
    });
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Inconclusive))
    );
    let healthy = &run.report()[1];
    assert!(!healthy.passed && healthy.failure.is_none(), "{healthy:?}");
    assert_eq!(healthy.judged, Vec::<CheckPhase>::new());
    assert_eq!(
        healthy.inconclusive.as_deref(),
        Some("healthy: not judged during: no requests")
    );
    assert!(
        run.message()
            .is_some_and(|m| m.contains("healthy: not judged")),
        "{:?}",
        run.message()
    );
    // The steady-state check was judged in the one phase it names.
    assert!(run.report()[0].passed);
}

#[test]
fn too_few_requests_are_no_evidence_and_a_failure_still_fails() {
    // Nine requests a window: under the default minimum of ten.
    let few = |rate: f64| Observed::Rate { rate, requests: 9 };
    // The abort check has figures of its own throughout.
    let hypothesis_few = |r: f64| {
        move |c: CheckRef, _| match others(c) {
            Some(o) => o,
            None if c.abort => rate(0.0),
            None => few(r),
        }
    };
    let run = run_with(hypothesis_few(0.0));
    assert_eq!(run.verdict(), Some(Verdict::Inconclusive));
    assert_eq!(
        run.report()[0].inconclusive.as_deref(),
        Some("steady: not judged before: 9 requests, fewer than 10")
    );
    // Not judged is no failure either: 9 failing requests fail nothing.
    let run = run_with(hypothesis_few(1.0));
    assert_eq!(run.verdict(), Some(Verdict::Inconclusive));
    // A check that failed on evidence outweighs one never judged.
    let run = run_with(|c, t| {
        others(c).unwrap_or(match (c.index, t) {
            (1, 20) => rate(0.5),
            (1, _) => Observed::NoData,
            _ => rate(0.0),
        })
    });
    assert_eq!(run.verdict(), Some(Verdict::Failed));
    // Judged once during the fault is enough for that phase.
    let run = run_with(|c, t| {
        others(c).unwrap_or(match (c.index, t) {
            (1, 20) => rate(0.0),
            (1, _) => Observed::NoData,
            _ => rate(0.0),
        })
    });
    assert_eq!(run.verdict(), Some(Verdict::Passed));
}

#[test]
fn an_abort_check_left_unjudged_past_its_grace_aborts_the_run() {
    let abort = CheckRef {
        abort: true,
        index: 0,
    };
    // Judged until 20 s (faults active from 10 s), then unreadable.
    let mut run = Run::new(spec(SLOW), "shop", 7);
    for t in 0..=40u64 {
        for c in run.due(s(t)) {
            if c == abort && t > 20 {
                run.unreadable(s(t), c, "the observer did not answer");
            } else {
                run.observe(s(t), c, &others(c).unwrap_or(rate(0.0)));
            }
        }
        let actions = step(&mut run, s(t), &shop());
        if run.phase() == Phase::Recovered || run.verdict() == Some(Verdict::Aborted) {
            // Aborted at the first step more than 10 s after the last
            // judgement, every fault removed in that same step.
            assert_eq!(t, 31, "{:?}", run.message());
            assert_eq!(removes(&actions).len(), 2);
            break;
        }
        assert!(t < 40, "never aborted");
    }
    assert_eq!(run.verdict(), Some(Verdict::Aborted));
    assert_eq!(
        run.message(),
        Some(
            "abort check frontend error rate <= 50% could not be judged for 10s: the observer did not answer"
        )
    );

    // Unreadable before any fault is active costs nothing: the grace
    // counts from the faults' start (10 s), and judging resets it.
    let run = run_with(|c, t| {
        if c == abort && (t < 10 || (t > 15 && t < 24)) {
            Observed::NoData
        } else {
            others(c).unwrap_or(rate(0.0))
        }
    });
    assert_eq!(run.verdict(), Some(Verdict::Passed), "{:?}", run.message());
}

#[test]
fn checks_of_the_fault_window_wait_for_confirmation() {
    let healthy = CheckRef {
        abort: false,
        index: 1,
    };
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |c| others(c).unwrap_or(rate(0.0)));
    run.step(s(10), &shop());
    // Injected but unconfirmed: abort checks guard it, the hypothesis waits.
    assert_eq!(run.unconfirmed().count(), 2);
    assert!(!run.due(s(11)).contains(&healthy));
    assert!(run.due(s(11)).iter().any(|c| c.abort));
    // One of two confirmed is not yet "faults in place".
    run.confirm(s(12), |i| &*i.target == "payments-1");
    assert!(!run.due(s(12)).contains(&healthy));
    run.confirm(s(13), |_| true);
    assert!(run.due(s(13)).contains(&healthy));
    assert_eq!(run.confirmed().len(), 2);
    assert!(run.overdue(s(60)).is_empty());
}

#[test]
fn a_fault_nobody_confirms_breaks_the_run_and_comes_off() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |c| others(c).unwrap_or(rate(0.0)));
    run.step(s(10), &shop());
    run.confirm(s(10), |i| &*i.target == "payments-1");
    // The default timeout is 30 s: not overdue at 40 s, overdue after it.
    assert!(run.overdue(s(40)).is_empty());
    let late: Vec<String> = run
        .overdue(s(41))
        .iter()
        .map(|i| i.target.to_string())
        .collect();
    assert_eq!(late, vec!["payments-2".to_owned()]);
    run.broke(
        s(41),
        "faults not confirmed within 30s: node n2 (no answer from its agent)",
    );
    let actions = run.step(s(41), &shop());
    assert_eq!(removes(&actions).len(), 2, "every fault comes off");
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Recovered, Some(Verdict::Broken))
    );
    assert!(run.unconfirmed().next().is_none() && run.confirmed().is_empty());
    // Checks never judged during the fault do not turn it into anything else.
    assert!(run.message().is_some_and(|m| m.contains("not confirmed")));

    // Settable per experiment.
    let quick = SLOW.replace(
        "  duration: 60s\n",
        "  duration: 60s\n  confirmTimeout: 5s\n",
    );
    let mut run = Run::new(spec(&quick), "shop", 7);
    answer(&mut run, s(0), |c| others(c).unwrap_or(rate(0.0)));
    run.step(s(10), &shop());
    assert!(run.overdue(s(15)).is_empty());
    assert_eq!(run.overdue(s(16)).len(), 2);
}

#[test]
fn a_window_that_ends_unconfirmed_ends_the_run_broken() {
    let patient = SLOW.replace(
        "  duration: 60s\n",
        "  duration: 60s\n  confirmTimeout: 2m\n",
    );
    let mut run = Run::new(spec(&patient), "shop", 7);
    for t in 0..=62 {
        answer(&mut run, s(t), |c| others(c).unwrap_or(rate(0.0)));
        run.step(s(t), &shop());
        // One target's agent answers, the other's never does.
        run.confirm(s(t), |i| &*i.target == "payments-1");
        assert!(
            run.overdue(s(t)).is_empty(),
            "the timeout is longer than the run"
        );
    }
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Broken))
    );
    assert_eq!(
        run.message(),
        Some("faults never confirmed in place during their window: slow on 1 target")
    );
}

#[test]
fn a_resumed_run_remembers_where_its_faults_went_unconfirmed_and_their_effect() {
    let patient = SLOW.replace(
        "  duration: 60s\n",
        "  duration: 60s\n  confirmTimeout: 2m\n",
    );
    let mut first = Run::new(spec(&patient), "shop", 7);
    for t in 0..=45 {
        answer(&mut first, s(t), |c| others(c).unwrap_or(rate(0.0)));
        first.step(s(t), &shop());
        first.confirm(s(t), |i| &*i.target == "payments-1");
    }
    first.record_effect(
        "slow",
        faultline_engine::Effect {
            count: 5,
            what: "packets delayed".into(),
        },
    );
    let reports = first.fault_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(
        r.placed && r.confirmed && r.unconfirmed_targets == 1,
        "{r:?}"
    );
    assert_eq!(first.phase(), Phase::Running);
    let resume = faultline_engine::Resume {
        phase: Some(first.phase()),
        faults: reports.clone(),
        ..Default::default()
    };
    let mut second = Run::resume(spec(&patient), "shop", 7, s(46), &resume);
    // A restarted driver that lost some figures does not lower the count.
    second.record_effect(
        "slow",
        faultline_engine::Effect {
            count: 2,
            what: "packets delayed".into(),
        },
    );
    for t in 46..=62 {
        answer(&mut second, s(t), |c| others(c).unwrap_or(rate(0.0)));
        second.step(s(t), &shop());
        second.confirm(s(t), |i| &*i.target == "payments-1");
    }
    let after = &second.fault_reports()[0];
    assert_eq!(after.effect.as_ref().map(|e| e.count), Some(5));
    assert_eq!(after.unconfirmed_targets, 1, "{after:?}");
    assert_eq!(
        second.verdict(),
        Some(Verdict::Broken),
        "{:?}",
        second.message()
    );
    assert_eq!(
        second.message(),
        Some("faults never confirmed in place during their window: slow on 1 target")
    );
}

const RELATIVE: &str = "  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - name: slow
      target: payments
      start: 10s
      duration: 30s
      latency: {delay: 20ms}
  hypothesis:
    - name: p99 within 1.5x
      latency: {service: checkout, percentile: 99, maxRatio: 1.5}
";

/// Runs RELATIVE to its verdict, answering the check at second `t` with
/// what `f` says (None: no figures).
fn relative_run(f: impl Fn(u64) -> Observed) -> Run {
    let mut run = Run::new(spec(RELATIVE), "shop", 7);
    for t in 0..=62 {
        answer(&mut run, s(t), |_| f(t));
        step(&mut run, s(t), &shop());
    }
    run
}

fn ms(ms: f64) -> Observed {
    Observed::LatencyMs { ms, requests: 300 }
}

#[test]
fn a_relative_check_compares_the_fault_window_with_its_baseline() {
    // 40 ms in steady state; 55 ms under the fault is within 1.5x.
    let run = relative_run(|t| ms(if t < 10 { 40.0 } else { 55.0 }));
    assert_eq!(run.verdict(), Some(Verdict::Passed), "{:?}", run.message());
    let report = &run.report()[0];
    assert_eq!(
        report.baseline,
        Some(Ok(faultline_engine::Baseline {
            value: 40.0,
            requests: 300
        }))
    );
    let last = report.last.as_ref().expect("judged");
    assert_eq!(last.observed, "55.0ms (baseline 40.0ms)");
    assert_eq!(last.expected, "p99 <= 1.5x baseline (60.0ms)");
    // 70 ms is more than 1.5 x 40 ms.
    let run = relative_run(|t| ms(if t < 10 { 40.0 } else { 70.0 }));
    assert_eq!(run.verdict(), Some(Verdict::Failed));
    // The last figure before the first fault is the baseline.
    let run = relative_run(|t| {
        ms(if t < 9 {
            10.0
        } else if t == 9 {
            40.0
        } else {
            55.0
        })
    });
    assert_eq!(run.verdict(), Some(Verdict::Passed), "{:?}", run.message());
}

#[test]
fn a_baseline_without_evidence_makes_a_relative_check_inconclusive() {
    let quiet = |t: u64| {
        if t < 10 {
            Observed::LatencyMs {
                ms: 1.0,
                requests: 3,
            }
        } else {
            ms(1.0)
        }
    };
    let run = relative_run(quiet);
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Inconclusive))
    );
    let report = &run.report()[0];
    assert!(!report.passed && report.failure.is_none());
    assert_eq!(
        report.baseline,
        Some(Err("3 requests, fewer than 10".into()))
    );
    assert!(
        report
            .not_judged
            .as_deref()
            .is_some_and(|w| w.contains("no baseline: 3 requests, fewer than 10")),
        "{report:?}"
    );
}

#[test]
fn a_resumed_run_keeps_its_baseline() {
    let mut first = Run::new(spec(RELATIVE), "shop", 7);
    for t in 0..=20 {
        answer(&mut first, s(t), |_| ms(if t < 10 { 40.0 } else { 50.0 }));
        step(&mut first, s(t), &shop());
    }
    let saved = first.report()[0].clone();
    let resume = faultline_engine::Resume {
        phase: Some(first.phase()),
        verdict: None,
        message: None,
        checks: vec![faultline_engine::ResumedCheck {
            evaluations: saved.evaluations,
            failure: saved.failure.clone(),
            last: saved.last.clone(),
            judged: saved.judged.clone(),
            not_judged: saved.not_judged.clone(),
            judged_at: saved.judged_at,
            baseline: saved.baseline.clone().and_then(Result::ok),
        }],
        faults: Vec::new(),
    };
    let mut second = Run::resume(spec(RELATIVE), "shop", 7, s(21), &resume);
    for t in 21..=62 {
        step(&mut second, s(t), &shop());
        answer(&mut second, s(t), |_| ms(if t < 30 { 50.0 } else { 65.0 }));
    }
    assert_eq!(
        second.verdict(),
        Some(Verdict::Failed),
        "65 ms > 1.5 x 40 ms"
    );
}

#[test]
fn a_fault_required_to_have_an_effect_fails_the_run_without_one() {
    let spec_with = |require: bool| {
        spec(&format!(
            "  duration: 20s
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - {{name: slow, target: payments, start: 5s, requireEffect: {require}, latency: {{delay: 20ms}}}}
"
        ))
    };
    let finish = |run: &mut Run, effect: Option<u64>| {
        for t in 0..=21 {
            step(run, s(t), &shop());
            if let Some(count) = effect {
                run.record_effect(
                    "slow",
                    faultline_engine::Effect {
                        count: if t < 6 { 0 } else { count },
                        what: "chunks delayed".into(),
                    },
                );
            }
        }
    };
    let mut run = Run::new(spec_with(true), "shop", 1);
    finish(&mut run, Some(0));
    assert_eq!(run.verdict(), Some(Verdict::Failed));
    assert_eq!(
        run.message(),
        Some("requireEffect: fault slow: no effect observed (0 chunks delayed)")
    );
    // Nothing counted at all is no evidence either.
    let mut run = Run::new(spec_with(true), "shop", 1);
    finish(&mut run, None);
    assert_eq!(run.verdict(), Some(Verdict::Failed));
    // An effect seen passes; without requireEffect, none is only said.
    let mut run = Run::new(spec_with(true), "shop", 1);
    finish(&mut run, Some(12));
    assert_eq!(run.verdict(), Some(Verdict::Passed), "{:?}", run.message());
    let mut run = Run::new(spec_with(false), "shop", 1);
    finish(&mut run, Some(0));
    assert_eq!(run.verdict(), Some(Verdict::Passed));
    assert!(
        run.journal()
            .iter()
            .any(|e| e.event == "fault slow: no effect observed (0 chunks delayed)")
    );
}

#[test]
fn a_delete_kill_confirmed_keeps_its_window_judged_after_the_pods_go() {
    let mut run = Run::new(
        spec(
            "  duration: 30s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: kill, target: payments, start: 5s, duration: 20s, kill: {method: delete}}
  hypothesis:
    - errorRate: {service: checkout, max: 5%}
",
        ),
        "shop",
        1,
    );
    let healthy = CheckRef {
        abort: false,
        index: 0,
    };
    // Their successors, which a once-kill leaves alone.
    let replaced = vec![
        Candidate::new("payments-3", "shop", &[("app", "payments")]),
        Candidate::new("cart-1", "shop", &[("app", "cart")]),
    ];
    for t in 0..=31 {
        answer(&mut run, s(t), |_| rate(0.0));
        let pods = if t <= 5 { shop() } else { replaced.clone() };
        // A deletion is confirmed by the pod being gone; as the controller
        // does, before stepping and after.
        let gone = |i: &Instance| !pods.iter().any(|p| p.id == i.target);
        run.confirm(s(t), gone);
        run.step(s(t), &pods);
        run.confirm(s(t), gone);
        if t == 5 {
            assert!(!run.due(s(5)).contains(&healthy), "not before the pods go");
        }
        if (7..25).contains(&t) {
            assert!(
                run.due(s(t)).contains(&healthy),
                "judged in the kill's window at {t}"
            );
        }
    }
    assert_eq!(run.verdict(), Some(Verdict::Passed), "{:?}", run.message());
}

#[test]
fn a_fault_confirmed_nowhere_breaks_the_run_even_beside_one_that_was() {
    let mut run = Run::new(
        spec(
            "  duration: 30s
  confirmTimeout: 1h
  targets:
    payments: {labels: {app: payments}}
    cart: {labels: {app: cart}}
  faults:
    - {name: slow, target: payments, start: 5s, latency: {delay: 20ms}}
    - {name: cut, target: cart, start: 5s, partition: {peers: [payments]}}
",
        ),
        "shop",
        1,
    );
    for t in 0..=31 {
        run.step(s(t), &shop());
        // cart's agent never answers.
        run.confirm(s(t), |i| &*i.fault == "slow");
    }
    assert_eq!(
        (run.phase(), run.verdict()),
        (Phase::Completed, Some(Verdict::Broken))
    );
    assert_eq!(
        run.message(),
        Some("faults never confirmed in place during their window: cut on 1 target")
    );
}

#[test]
fn checks_of_the_fault_window_read_no_figure_from_before_it() {
    let healthy = CheckRef {
        abort: false,
        index: 1,
    };
    let abort = CheckRef {
        abort: true,
        index: 0,
    };
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |c| others(c).unwrap_or(rate(0.0)));
    run.step(s(10), &shop());
    assert_eq!(run.window_for(healthy, s(11)), None, "not in place yet");
    run.confirm(s(12), |_| true);
    let w = |t: u64| run.window_for(healthy, s(t)).map(|d| d.as_millis() / 1000);
    // `healthy` reads 30 s windows: from the confirmation on, 1 s, then
    // what has passed since, until a whole window has.
    assert_eq!(w(12), Some(1));
    assert_eq!(w(20), Some(8));
    assert_eq!(w(41), Some(29));
    assert_eq!(w(42), None);
    assert_eq!(
        run.window_for(abort, s(20)),
        None,
        "abort checks read their own"
    );
    // After the faults (their window ends at 40 s), no further back than
    // their end: figures under the fault are not figures of the recovery.
    for t in 13..=59 {
        answer(&mut run, s(t), |c| others(c).unwrap_or(rate(0.0)));
        run.step(s(t), &shop());
        run.confirm(s(t), |_| true);
    }
    run.step(s(60), &shop());
    assert_eq!(run.phase(), Phase::Recovering);
    let w = |t: u64| run.window_for(healthy, s(t)).map(|d| d.as_millis() / 1000);
    assert_eq!(w(60), Some(20));
    assert_eq!(w(69), Some(29));
    assert_eq!(w(70), None);
}

#[test]
fn steps_that_change_nothing_keep_the_books_and_a_changed_plan_moves_them() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    answer(&mut run, s(0), |_| rate(0.0));
    run.step(s(0), &shop());
    answer(&mut run, s(0), |_| rate(0.0));
    assert_eq!(injects(&run.step(s(10), &shop())).len(), 2);
    run.confirm(s(11), |i| &*i.target == "payments-1");
    // Same pods, same window: nothing is injected again, the books stand.
    for t in 12..15 {
        let a = run.step(s(t), &shop());
        assert!(injects(&a).is_empty() && removes(&a).is_empty(), "{a:?}");
        assert_eq!(run.confirmed().len(), 1);
        assert_eq!(run.unconfirmed().count(), 1);
    }
    // payments-2 is replaced: its instance goes, the newcomer's waits for
    // confirmation, payments-1 stays confirmed.
    let replaced: Vec<Candidate> = shop()
        .into_iter()
        .filter(|c| &*c.id != "payments-2")
        .chain([Candidate::new("payments-3", "shop", &[("app", "payments")])])
        .collect();
    let a = run.step(s(15), &replaced);
    assert_eq!(
        removes(&a).iter().map(|i| &*i.target).collect::<Vec<_>>(),
        ["payments-2"]
    );
    assert_eq!(
        injects(&a).iter().map(|i| &*i.target).collect::<Vec<_>>(),
        ["payments-3"]
    );
    let unconfirmed: Vec<&str> = run.unconfirmed().map(|i| &*i.target).collect();
    assert_eq!(unconfirmed, ["payments-3"]);
    assert_eq!(run.confirmed().len(), 1);
    // The window's end takes everything away, whatever the plan did.
    let a = run.step(s(40), &replaced);
    assert_eq!(removes(&a).len(), 2);
    assert!(run.active().is_empty());
}

#[test]
fn the_journal_names_a_few_targets_per_fault_and_counts_the_rest() {
    let mut run = Run::new(spec(SLOW), "shop", 7);
    let many = candidates(40, 0); // 20 payments pods
    answer(&mut run, s(0), |_| rate(0.0));
    run.step(s(0), &many);
    answer(&mut run, s(0), |_| rate(0.0));
    assert_eq!(injects(&step(&mut run, s(10), &many)).len(), 20);
    let at_10: Vec<&str> = run
        .journal()
        .iter()
        .filter(|e| e.at == s(10))
        .map(|e| e.event.as_str())
        .collect();
    let named = |verb: &str| at_10.iter().filter(|e| e.starts_with(verb)).count();
    assert_eq!(named("inject slow into "), 8, "{at_10:#?}");
    assert!(
        at_10.contains(&"inject slow: 12 more targets"),
        "{at_10:#?}"
    );
    assert_eq!(named("confirmed slow on "), 8, "{at_10:#?}");
    assert!(
        at_10.contains(&"confirmed slow: 12 more targets"),
        "{at_10:#?}"
    );
}

/// Candidates the driver numbers the same are taken as unchanged: the plan
/// is not made again (at 150 000 pods, most of a step); a new number makes
/// it again, and unnumbered candidates are always planned.
#[test]
fn numbered_candidates_are_planned_again_only_when_their_number_moves() {
    let mut run = Run::new(
        spec(
            "  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: slow, target: payments, latency: {delay: 300ms}}
",
        ),
        "shop",
        3,
    );
    run.step_with(s(0), &shop(), Some(1));
    run.confirm(s(0), |_| true);
    assert_eq!(run.plan()["payments"].len(), 2);
    let more: Vec<Candidate> = shop()
        .into_iter()
        .chain([Candidate::new("payments-3", "shop", &[("app", "payments")])])
        .collect();
    // Numbered as before: the driver says nothing changed, so nothing is planned.
    run.step_with(s(1), &more, Some(1));
    assert_eq!(run.plan()["payments"].len(), 2);
    // A new number: planned again, the newcomer taken in.
    let a = run.step_with(s(2), &more, Some(2));
    assert_eq!(run.plan()["payments"].len(), 3);
    assert_eq!(injects(&a).len(), 1, "{a:?}");
    // Unnumbered: always planned.
    let a = run.step_with(s(3), &shop(), None);
    assert_eq!(run.plan()["payments"].len(), 2);
    assert_eq!(removes(&a).len(), 1, "{a:?}");
}
