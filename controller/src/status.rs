//! An Experiment's status, built from its run, and a run continued from
//! its status: pure. Status stays small whatever the number of targets:
//! counts and one entry per check, never one per pod.

use faultline_api::{CheckStatus, ExperimentStatus, FaultEffect, FaultStatus, Phase, Verdict};
use faultline_engine::{Baseline, Effect, Evaluation, FaultReport, Resume, ResumedCheck, Run};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// What the controller knows of a run besides the engine's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFacts {
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub next_run_at: Option<Timestamp>,
    pub runs: u32,
    pub missed_runs: u32,
    pub traceparent: Option<String>,
    /// Pods selected by the run.
    pub targets: u32,
    /// Entries the agents hold for it (from the NodeFaults objects).
    pub injected: u32,
    /// Entries the agents report as failed.
    pub failed: u32,
    /// Per fault, evictions the API refused.
    pub evictions_refused: std::collections::BTreeMap<String, u32>,
}

/// Whether a phase is one a run ends in.
pub(crate) fn is_final(phase: Phase) -> bool {
    matches!(phase, Phase::Completed | Phase::Recovered | Phase::Invalid)
}

/// The status of a run; `previous` keeps conditions' transition times.
pub fn of_run(
    run: &Run,
    facts: &RunFacts,
    generation: Option<i64>,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> ExperimentStatus {
    let spec = run.spec();
    let kinds = spec.hypothesis.iter().chain(&spec.abort).map(|c| &c.kind);
    let checks = run
        .report()
        .into_iter()
        .zip(kinds)
        .map(|(r, kind)| CheckStatus {
            name: r.name,
            // Unset until judged on enough evidence; an inconclusive check
            // carries its reason as the message with `passed` unset.
            passed: if r.failure.is_some() {
                Some(false)
            } else if r.inconclusive.is_some() || r.judged.is_empty() {
                None
            } else {
                Some(true)
            },
            observed: r.last.as_ref().map(|e| e.observed.clone()),
            expected: r.last.as_ref().map(|e| e.expected.clone()),
            evaluations: Some(r.evaluations),
            judged: r.judged,
            not_judged: r.not_judged.map(|m| m.chars().take(256).collect()),
            baseline: r
                .baseline
                .as_ref()
                .map(|b| Baseline::describe(b, kind).chars().take(256).collect()),
            last_judged_at: facts
                .started_at
                .zip(r.judged_at)
                .and_then(|(start, at)| start.checked_add(at).ok())
                .map(Time),
            abort: r.abort,
            message: r.failure.or(r.inconclusive),
        })
        .collect();
    let phase = run.phase();
    let mut status = ExperimentStatus {
        phase: Some(phase),
        verdict: run
            .verdict()
            .filter(|_| is_final(phase) || phase == Phase::Aborted),
        observed_generation: generation,
        conditions: Vec::new(),
        targets: Some(facts.targets),
        injected: Some(facts.injected),
        failed: Some(facts.failed),
        started_at: facts.started_at.map(Time),
        finished_at: facts.finished_at.map(Time),
        next_run_at: facts.next_run_at.map(Time),
        runs: Some(facts.runs),
        missed_runs: (facts.missed_runs > 0).then_some(facts.missed_runs),
        traceparent: facts.traceparent.clone(),
        checks,
        faults: run
            .fault_reports()
            .into_iter()
            .map(|f| FaultStatus {
                evictions_refused: facts.evictions_refused.get(&f.name).copied(),
                name: f.name,
                injected: Some(f.injected),
                placed: f.placed,
                confirmed: f.confirmed,
                unconfirmed_targets: (f.unconfirmed_targets > 0).then_some(f.unconfirmed_targets),
                effect: f.effect.as_ref().map(FaultEffect::from),
            })
            .collect(),
        message: run.message().map(str::to_owned),
    };
    status.conditions = conditions(&status, generation, previous, now);
    status
}

/// The status of an experiment validation refused: nothing was injected.
pub(crate) fn invalid(
    message: String,
    generation: Option<i64>,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> ExperimentStatus {
    let mut status = ExperimentStatus {
        phase: Some(Phase::Invalid),
        observed_generation: generation,
        message: Some(message),
        runs: previous.runs,
        ..ExperimentStatus::default()
    };
    status.conditions = conditions(&status, generation, previous, now);
    status
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Condition {
    // The transition time moves only when the condition's status does.
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// `Running` (faults may be in place) and `Succeeded` (the verdict), as
/// `kubectl wait --for=condition=...` reads them.
fn conditions(
    s: &ExperimentStatus,
    generation: Option<i64>,
    previous: &ExperimentStatus,
    now: Timestamp,
) -> Vec<Condition> {
    let phase = s.phase.unwrap_or(Phase::Pending);
    let message = s.message.as_deref().unwrap_or("");
    let running = !is_final(phase);
    let (succeeded, reason) = match (phase, s.verdict) {
        (Phase::Invalid, _) => ("False", "Invalid"),
        (_, Some(Verdict::Passed)) => ("True", "Passed"),
        (_, Some(Verdict::Failed)) => ("False", "Failed"),
        (_, Some(Verdict::Aborted)) => ("False", "Aborted"),
        (_, Some(Verdict::Inconclusive)) => ("False", "Inconclusive"),
        (_, Some(Verdict::Broken)) => ("False", "Broken"),
        (_, None) => ("Unknown", "Running"),
    };
    vec![
        condition(
            "Running",
            if running { "True" } else { "False" },
            phase.as_str(),
            message,
            generation,
            previous,
            now,
        ),
        condition(
            "Succeeded",
            succeeded,
            reason,
            message,
            generation,
            previous,
            now,
        ),
    ]
}

/// What a run had come to, read back from its status.
pub(crate) fn resume_of(status: &ExperimentStatus) -> Resume {
    Resume {
        phase: status.phase,
        verdict: status.verdict,
        message: status.message.clone(),
        checks: status
            .checks
            .iter()
            .map(|c| ResumedCheck {
                evaluations: c.evaluations.unwrap_or(0),
                failure: c.message.clone().filter(|_| c.passed == Some(false)),
                last: match (&c.observed, &c.expected) {
                    (Some(observed), Some(expected)) => Some(Evaluation {
                        judged: c.passed.is_some(),
                        passed: c.passed.unwrap_or(false),
                        observed: observed.clone(),
                        expected: expected.clone(),
                    }),
                    _ => None,
                },
                judged: c.judged.clone(),
                not_judged: c.not_judged.clone(),
                baseline: c.baseline.as_deref().and_then(Baseline::parse),
                judged_at: status
                    .started_at
                    .as_ref()
                    .zip(c.last_judged_at.as_ref())
                    .and_then(|(start, at)| at.0.duration_since(start.0).try_into().ok()),
            })
            .collect(),
        faults: status
            .faults
            .iter()
            .map(|f| FaultReport {
                name: f.name.clone(),
                injected: f.injected.unwrap_or(0),
                placed: f.placed,
                confirmed: f.confirmed,
                unconfirmed_targets: f.unconfirmed_targets.unwrap_or(0),
                effect: f.effect.as_ref().map(Effect::from),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_engine::Observed;
    use std::time::Duration;

    #[test]
    fn a_run_read_back_from_its_status_keeps_its_checks_and_phase() {
        let e: faultline_api::Experiment = faultline_api::parse_one(
            b"apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: x, namespace: shop}
spec:
  duration: 60s
  targets: {p: {labels: {app: p}}}
  faults: [{name: slow, target: p, latency: {delay: 100ms}}]
  hypothesis:
    - {name: errors, errorRate: {service: checkout, max: 5%}}
    - {name: opens, breaker: {service: checkout, name: payments, state: open, within: 10s}}
",
        )
        .expect("valid");
        let cands = [faultline_engine::Candidate::new(
            "p1",
            "shop",
            &[("app", "p")],
        )];
        let mut run = Run::new(e.spec.clone(), "shop", 1);
        run.step(Duration::ZERO, &cands);
        run.confirm(Duration::ZERO, |_| true);
        for c in run.due(Duration::from_secs(1)) {
            let observed = if c.index == 0 {
                Observed::Rate {
                    rate: 0.09,
                    requests: 100,
                }
            } else {
                Observed::Breaker {
                    state: faultline_api::BreakerState::Open,
                    for_secs: 1.0,
                }
            };
            run.observe(Duration::from_secs(1), c, &observed);
        }
        run.step(Duration::from_secs(1), &cands);
        run.record_effect(
            "slow",
            Effect {
                count: 12,
                what: "packets delayed".into(),
            },
        );
        let now: Timestamp = "2026-01-01T00:00:01Z".parse().expect("time");
        let status = of_run(
            &run,
            &RunFacts::default(),
            Some(3),
            &ExperimentStatus::default(),
            now,
        );
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.verdict, None, "no verdict before the end");
        assert_eq!(status.checks[0].passed, Some(false));
        assert_eq!(status.checks[1].observed.as_deref(), Some("open"));
        let running = &status.conditions[0];
        assert_eq!(
            (running.type_.as_str(), running.status.as_str()),
            ("Running", "True")
        );

        assert_eq!(
            status.faults,
            [FaultStatus {
                name: "slow".into(),
                injected: Some(1),
                placed: true,
                confirmed: true,
                unconfirmed_targets: None,
                evictions_refused: None,
                effect: Some(FaultEffect {
                    count: 12,
                    what: "packets delayed".into()
                }),
            }]
        );
        assert_eq!(resume_of(&status).faults, run.fault_reports());

        // A controller restarted 30 s later continues the same run.
        let mut resumed = Run::resume(
            e.spec.clone(),
            "shop",
            1,
            Duration::from_secs(31),
            &resume_of(&status),
        );
        resumed.step(Duration::from_secs(31), &cands);
        assert_eq!(resumed.resolved().len(), 1, "the fault is still wanted");
        resumed.confirm(Duration::from_secs(31), |_| true);
        resumed.step(Duration::from_secs(60), &cands);
        resumed.step(Duration::from_secs(61), &cands);
        assert_eq!(resumed.phase(), Phase::Completed);
        assert_eq!(
            resumed.verdict(),
            Some(Verdict::Failed),
            "the failure was kept"
        );
        let report = resumed.report();
        assert!(
            report[1].passed,
            "the breaker reached open before the restart"
        );
        let later = "2026-01-01T00:01:01Z".parse().expect("time");
        let done = of_run(&resumed, &RunFacts::default(), Some(3), &status, later);
        let succeeded = &done.conditions[1];
        assert_eq!(
            (succeeded.status.as_str(), succeeded.reason.as_str()),
            ("False", "Failed")
        );
        assert_eq!(done.conditions[0].last_transition_time.0, later);
        assert!(
            serde_json::to_vec(&done).expect("json").len() < 4096,
            "small"
        );
    }
}
