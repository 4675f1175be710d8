//! A run as a display shows it at one moment: built from a run in progress
//! (local mode) or from an Experiment's status (a cluster), so one display
//! serves both.

use std::time::Duration;

use faultline_api::{CheckStatus, ExperimentSpec, ExperimentStatus, Fault, Phase, Verdict};

use crate::{CheckReport, Evaluation, Run};

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Time since the run started.
    pub at: Duration,
    /// How long the run lasts.
    pub duration: Duration,
    pub phase: Phase,
    pub verdict: Option<Verdict>,
    pub message: Option<String>,
    pub faults: Vec<FaultSnapshot>,
    pub checks: Vec<CheckReport>,
    /// Fault instances applied, as a cluster's status counts them (a local
    /// run names its targets in each fault instead).
    pub injected: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultSnapshot {
    pub name: String,
    /// `latency`, `kill` or `partition`.
    pub kind: &'static str,
    /// The experiment's target it acts on.
    pub target: String,
    /// What it does, e.g. `latency 300ms`.
    pub action: String,
    /// When it is active, as offsets from the run's start.
    pub window: (Duration, Duration),
    /// The targets it is active on now; None when not known (a cluster's
    /// status counts instances, it does not name them).
    pub targets: Option<Vec<String>>,
    /// What it has touched so far; None where nothing is counted.
    pub effect: Option<crate::Effect>,
}

impl FaultSnapshot {
    fn of(f: &Fault, spec: &ExperimentSpec, targets: Option<Vec<String>>) -> FaultSnapshot {
        FaultSnapshot {
            name: f.name.clone(),
            kind: f.action.kind(),
            target: f.target.clone(),
            action: f.action.summary(),
            window: (f.start().as_std(), f.end(spec.duration).as_std()),
            targets,
            effect: None,
        }
    }
}

/// Where a fault stands at a snapshot's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultState {
    Pending { starts_in: Duration },
    Active { left: Duration },
    Done,
}

impl Snapshot {
    /// Time left until the run's end (zero once past it or finished).
    pub fn left(&self) -> Duration {
        if self.is_finished() {
            Duration::ZERO
        } else {
            self.duration.saturating_sub(self.at)
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Completed | Phase::Recovered | Phase::Invalid
        )
    }

    /// Where `fault` stands: active only while the run injects and the
    /// window is open (an aborted or finished run has nothing active).
    pub fn fault_state(&self, fault: &FaultSnapshot) -> FaultState {
        let (start, end) = fault.window;
        let injecting = matches!(
            self.phase,
            Phase::Pending | Phase::Injecting | Phase::Running
        );
        if !injecting || self.at >= end {
            FaultState::Done
        } else if self.at < start {
            FaultState::Pending {
                starts_in: start - self.at,
            }
        } else {
            FaultState::Active {
                left: end - self.at,
            }
        }
    }

    /// A run's state as its Experiment's status tells it, `at` after the
    /// run started (the caller's clock against `status.startedAt`).
    pub fn from_status(spec: &ExperimentSpec, status: &ExperimentStatus, at: Duration) -> Snapshot {
        let checks = spec
            .hypothesis
            .iter()
            .map(|c| (false, c))
            .chain(spec.abort.iter().map(|c| (true, c)))
            .map(|(abort, c)| {
                let name = c.display_name();
                let s = status
                    .checks
                    .iter()
                    .find(|s| s.name == name && s.abort == abort);
                s.map_or_else(
                    || CheckReport::not_yet(&name, abort),
                    CheckReport::from_status,
                )
            })
            .collect();
        Snapshot {
            at,
            duration: spec.duration.as_std(),
            phase: status.phase.unwrap_or(Phase::Pending),
            verdict: status.verdict,
            message: status.message.clone(),
            faults: spec
                .faults
                .iter()
                .map(|f| {
                    let mut snap = FaultSnapshot::of(f, spec, None);
                    snap.effect = status
                        .faults
                        .iter()
                        .find(|s| s.name == f.name)
                        .and_then(|s| s.effect.as_ref())
                        .map(crate::Effect::from);
                    snap
                })
                .collect(),
            checks,
            injected: status.injected,
        }
    }
}

impl Run {
    /// The run at `now` (time since it started), for a display.
    pub fn snapshot(&self, now: Duration) -> Snapshot {
        let spec = self.spec();
        let resolved = self.resolved();
        Snapshot {
            at: now,
            duration: spec.duration.as_std(),
            phase: self.phase(),
            verdict: self.verdict(),
            message: self.message().map(str::to_owned),
            faults: spec
                .faults
                .iter()
                .map(|f| {
                    let targets = resolved
                        .iter()
                        .filter(|r| r.fault.name == f.name)
                        .map(|r| r.target.to_owned())
                        .collect();
                    let mut snap = FaultSnapshot::of(f, spec, Some(targets));
                    snap.effect = self
                        .effects()
                        .into_iter()
                        .find(|(name, _)| *name == f.name)
                        .and_then(|(_, e)| e.cloned());
                    snap
                })
                .collect(),
            checks: self.report(),
            injected: None,
        }
    }
}

impl CheckReport {
    /// Nothing failed, and its last figure (or, at the end, a phase it
    /// names) lacked the evidence to judge it: shown as such, never as
    /// passing or failing.
    pub fn unjudged(&self) -> bool {
        self.failure.is_none()
            && (self.inconclusive.is_some() || self.last.as_ref().is_some_and(|e| !e.judged))
    }

    /// A check as an Experiment's status tells it. A message with
    /// `passed` unset is why the check was not judged.
    pub fn from_status(s: &CheckStatus) -> CheckReport {
        let (failure, inconclusive) = match s.passed {
            Some(false) => (s.message.clone(), None),
            None => (None, s.message.clone()),
            Some(true) => (None, None),
        };
        CheckReport {
            name: s.name.clone(),
            abort: s.abort,
            passed: s.passed != Some(false) && inconclusive.is_none(),
            evaluations: s.evaluations.unwrap_or(0),
            last: match (&s.observed, &s.expected) {
                (Some(observed), Some(expected)) => Some(Evaluation {
                    judged: s.passed.is_some(),
                    passed: s.passed == Some(true),
                    observed: observed.clone(),
                    expected: expected.clone(),
                }),
                _ => None,
            },
            failure,
            judged: s.judged.clone(),
            not_judged: s.not_judged.clone(),
            inconclusive,
            // A time, where the run counts offsets: not needed for display.
            judged_at: None,
            // Shown within `observed` already.
            baseline: None,
        }
    }

    /// A check the status does not mention yet.
    fn not_yet(name: &str, abort: bool) -> CheckReport {
        CheckReport {
            name: name.to_owned(),
            abort,
            passed: true,
            evaluations: 0,
            last: None,
            failure: None,
            judged: Vec::new(),
            not_judged: None,
            inconclusive: None,
            judged_at: None,
            baseline: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use faultline_api::CheckStatus;

    use super::*;
    use crate::Candidate;

    fn spec() -> ExperimentSpec {
        let doc = "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: x, namespace: demo}
spec:
  duration: 60s
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: slow, target: payments, start: 10s, duration: 20s, latency: {delay: 300ms, jitter: 20ms}}
  hypothesis:
    - {name: fast enough, errorRate: {service: frontend, max: 5%}}
  abort:
    - errorRate: {service: frontend, max: 50%}
";
        faultline_api::parse_one::<faultline_api::Experiment>(doc.as_bytes())
            .expect("valid")
            .spec
    }

    #[test]
    fn a_run_shows_its_faults_targets_and_checks() {
        let mut run = Run::new(spec(), "demo", 0);
        let pods = [Candidate {
            id: "payments-1".into(),
            namespace: "demo".into(),
            labels: std::sync::Arc::new([("app".to_owned(), "payments".to_owned())].into()),
        }];
        for s in [0, 5, 12] {
            run.step(Duration::from_secs(s), &pods);
        }
        let s = run.snapshot(Duration::from_secs(12));
        assert_eq!(s.left(), Duration::from_secs(48));
        assert_eq!(s.faults[0].action, "latency 300ms ±20ms");
        assert_eq!(s.faults[0].targets, Some(vec!["payments-1".to_owned()]));
        assert_eq!(
            s.fault_state(&s.faults[0]),
            FaultState::Active {
                left: Duration::from_secs(18)
            }
        );
        assert_eq!(s.checks.len(), 2);
        assert!(s.checks[1].abort);
        let early = run.snapshot(Duration::from_secs(4));
        assert_eq!(
            early.fault_state(&early.faults[0]),
            FaultState::Pending {
                starts_in: Duration::from_secs(6)
            }
        );
        run.abort(Duration::from_secs(13), "stop");
        let aborted = run.snapshot(Duration::from_secs(13));
        assert_eq!(aborted.fault_state(&aborted.faults[0]), FaultState::Done);
    }

    #[test]
    fn a_status_reads_as_the_same_snapshot() {
        let status = ExperimentStatus {
            phase: Some(Phase::Completed),
            verdict: Some(Verdict::Failed),
            checks: vec![
                CheckStatus {
                    name: "fast enough".into(),
                    passed: Some(false),
                    observed: Some("7.00%".into()),
                    expected: Some("<= 5%".into()),
                    evaluations: Some(3),
                    message: Some("7.00% > 5%".into()),
                    ..CheckStatus::default()
                },
                // A same-named abort check is another check.
                CheckStatus {
                    name: "fast enough".into(),
                    abort: true,
                    ..CheckStatus::default()
                },
            ],
            faults: vec![faultline_api::FaultStatus {
                name: spec().faults[0].name.clone(),
                effect: Some(faultline_api::FaultEffect {
                    count: 42,
                    what: "packets delayed".into(),
                }),
                ..Default::default()
            }],
            ..ExperimentStatus::default()
        };
        let s = Snapshot::from_status(&spec(), &status, Duration::from_secs(61));
        assert!(s.is_finished());
        assert_eq!(s.left(), Duration::ZERO);
        assert_eq!(
            s.faults[0].window,
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!(s.faults[0].targets, None);
        assert_eq!(
            s.faults[0].effect.as_ref().map(ToString::to_string),
            Some("42 packets delayed".into())
        );
        let hypothesis = &s.checks[0];
        assert!(!hypothesis.passed && !hypothesis.abort);
        assert_eq!(hypothesis.evaluations, 3);
        assert_eq!(
            hypothesis.last.as_ref().map(|e| e.observed.as_str()),
            Some("7.00%")
        );
        // The abort check is not in the status under its own name: never evaluated.
        assert_eq!(s.checks[1].evaluations, 0);
        assert!(s.checks[1].last.is_none());
    }
}
