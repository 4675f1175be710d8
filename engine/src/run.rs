//! One run of an experiment as a state machine fed with time offsets,
//! candidate targets and check observations; it answers with the actions to
//! take (inject, remove, signal) and the checks to evaluate now.
//!
//! Phases: Pending (steady-state checks) → Injecting/Running → Recovering →
//! Completed with a verdict; or Aborted (abort check, user, failed
//! injection, blast radius) → Recovered. Every fault is removed before a run
//! ends, whichever way it ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use faultline_api::{
    CheckKind, CheckPhase, ExperimentSpec, Fault, FaultAction, Phase, Signal, Verdict,
};

use crate::{
    check::{Baseline, Evaluation, Observed, evaluate_against},
    select::{Candidate, Plan, TargetId, plan},
};

/// How long an agent may take to answer at the least: an instance wanted
/// for less than this when its window ends is not held against the run.
const ANSWER_TIME: Duration = Duration::from_secs(2);

/// Targets journaled by name per fault and event in one step; the rest are
/// counted.
const JOURNAL_NAMED: usize = 8;

/// One fault applied to one selected target. Both names are shared, so
/// the run's books (held, confirmed, killing...) copy no strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub fault: Arc<str>,
    pub target: TargetId,
}

impl Instance {
    pub fn new(fault: &str, target: &str) -> Instance {
        Instance {
            fault: fault.into(),
            target: target.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Inject(Instance),
    Remove(Instance),
    /// A kill fault's signal, due now.
    Signal(Instance, Signal),
}

/// One fault instance as the run holds it now, with the end of its window
/// (an offset from the run's start): what a level-triggered writer applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved<'a> {
    pub fault: &'a Fault,
    pub target: &'a str,
    pub until: Duration,
}

/// Every fault of `spec` on every target `plan` selects for it, each over
/// its whole window: what a run would hold at one time or another (what
/// `faultline plan` shows).
pub fn resolve_all<'a>(spec: &'a ExperimentSpec, plan: &'a crate::Plan) -> Vec<Resolved<'a>> {
    spec.faults
        .iter()
        .flat_map(|f| {
            let until = f.end(spec.duration).as_std();
            plan.get(&f.target)
                .into_iter()
                .flatten()
                .map(move |t| Resolved {
                    fault: f,
                    target: t,
                    until,
                })
        })
        .collect()
}

/// Evidence that a fault acted: how much it touched, as its driver counts
/// it (chunks delayed, connections held, processes signalled...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub count: u64,
    /// What was counted, in the plural: `chunks delayed`.
    pub what: String,
}

/// As an Experiment's status carries it (a count never negative there).
impl From<&faultline_api::FaultEffect> for Effect {
    fn from(e: &faultline_api::FaultEffect) -> Self {
        Effect {
            count: u64::try_from(e.count).unwrap_or(0),
            what: e.what.clone(),
        }
    }
}

impl From<&Effect> for faultline_api::FaultEffect {
    fn from(e: &Effect) -> Self {
        faultline_api::FaultEffect {
            count: i64::try_from(e.count).unwrap_or(i64::MAX),
            // The status schema's bound.
            what: e.what.chars().take(64).collect(),
        }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.count, self.what)
    }
}

/// What a run had come to when its driver stopped, to continue it from
/// (a restarted controller reads this back from the Experiment's status).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resume {
    pub phase: Option<Phase>,
    pub verdict: Option<Verdict>,
    pub message: Option<String>,
    /// One per check, hypothesis first then abort checks, as `report` lists them.
    pub checks: Vec<ResumedCheck>,
    /// What the run knew of its faults, by name.
    pub faults: Vec<FaultReport>,
}

/// What a run knows of one of its faults: where it was placed and
/// confirmed, and its effect. Reports carry it; a resumed run reads it back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultReport {
    pub name: String,
    /// Instances held and confirmed applied now.
    pub injected: u32,
    /// Held on some target at some point of the run.
    pub placed: bool,
    /// Confirmed applied on some target at some point of the run.
    pub confirmed: bool,
    /// Targets whose window ended before the fault was confirmed there.
    pub unconfirmed_targets: u32,
    pub effect: Option<Effect>,
}

/// A check's state as reports carry it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResumedCheck {
    pub evaluations: u32,
    pub failure: Option<String>,
    pub last: Option<Evaluation>,
    /// Phases in which it was judged on enough evidence.
    pub judged: Vec<CheckPhase>,
    /// Why it was last not judged.
    pub not_judged: Option<String>,
    /// When it was last judged.
    pub judged_at: Option<Duration>,
    /// The baseline of a relative check, as measured before the first fault.
    pub baseline: Option<Baseline>,
}

/// A check to evaluate now: index into the spec's `hypothesis` or `abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckRef {
    pub abort: bool,
    pub index: usize,
}

/// An entry of the run's journal (what `--json` writes).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: Duration,
    pub event: String,
}

#[derive(Debug, Clone, Default)]
struct CheckState {
    /// Phases in which it has been evaluated at least once.
    done: BTreeSet<CheckPhase>,
    evaluations: u32,
    /// The first failure, as a message.
    failure: Option<String>,
    last: Option<Evaluation>,
    /// Phases in which it was judged on enough evidence.
    judged: BTreeSet<CheckPhase>,
    /// Why it was last not judged (too few requests, nothing seen).
    not_judged: Option<String>,
    /// Set at the end: the phases it names that it was never judged in.
    inconclusive: Option<String>,
    /// When it was last judged (an abort check's grace counts from there).
    judged_at: Option<Duration>,
    /// A breaker check with `within` has reached its state.
    reached: bool,
    /// A relative check's baseline: the last figure before the first
    /// fault, or why there was none to take.
    baseline: Option<Result<Baseline, String>>,
}

/// What a check came to, for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub name: String,
    pub abort: bool,
    /// Judged in every phase it names, and never failed.
    pub passed: bool,
    pub evaluations: u32,
    pub last: Option<Evaluation>,
    pub failure: Option<String>,
    /// Phases it was judged in.
    pub judged: Vec<CheckPhase>,
    /// Why it was last not judged.
    pub not_judged: Option<String>,
    /// Nothing failed, but it was never judged in a phase it names.
    pub inconclusive: Option<String>,
    /// When it was last judged.
    pub judged_at: Option<Duration>,
    /// A relative check's baseline, or why there is none (None: not
    /// relative, or not measured yet).
    pub baseline: Option<Result<Baseline, String>>,
}

#[derive(Debug, Clone)]
pub struct Run {
    /// Shared, so a driver holds it across a step without a copy.
    spec: std::sync::Arc<ExperimentSpec>,
    namespace: String,
    seed: u64,
    phase: Phase,
    plan: Plan,
    active: BTreeSet<Instance>,
    /// Kill faults in their window, per target (signals are actions; this
    /// is the level a node agent repeats them from).
    killing: BTreeSet<Instance>,
    /// Per kill fault, the targets it had when its first signals went out.
    /// A fault without `every` acts on those only: a replacement (a
    /// deleted pod's successor) is not killed in turn. With `every`, a
    /// target that joins later gets its first signal at the next period.
    kill_targets: BTreeMap<String, BTreeSet<TargetId>>,
    /// When signals were last worked out (a newcomer's periods count from there).
    signals_at: Option<Duration>,
    /// Kill instances under way: the first round's targets, and newcomers
    /// once their first signal is due (a node agent signals as it applies).
    kill_started: BTreeSet<Instance>,
    signals_sent: BTreeMap<Instance, u64>,
    hypothesis: Vec<CheckState>,
    aborts: Vec<CheckState>,
    verdict: Option<Verdict>,
    message: Option<String>,
    journal: Vec<Entry>,
    /// When a resumed run was taken over: kill signals due by then count
    /// as sent, so a restarted driver never repeats one.
    resumed_at: Option<Duration>,
    /// Since when faults have been active without a break: abort checks'
    /// grace counts from there at the earliest.
    faults_since: Option<Duration>,
    /// Instances held now that the driver has confirmed applied.
    confirmed: BTreeSet<Instance>,
    /// Instances held now and not yet confirmed, with when they were first
    /// wanted: a fault nobody confirmed was not injected.
    unconfirmed: BTreeMap<Instance, Duration>,
    /// Instances whose window ended before anyone confirmed them.
    never_confirmed: BTreeSet<Instance>,
    /// Per fault, instances a driver before a restart saw so end.
    never_confirmed_earlier: BTreeMap<String, u32>,
    /// Faults held on some target at some point, and those confirmed on
    /// one: a fault held but never confirmed anywhere tested nothing.
    ever_held: BTreeSet<String>,
    ever_confirmed: BTreeSet<String>,
    /// Per fault, its effect so far, as the driver last counted it.
    effects: BTreeMap<String, Effect>,
    /// Faults that required an effect and had none, as said at the end.
    effect_failures: Vec<String>,
    /// Since when faults have been confirmed in place without a break:
    /// checks of the fault window read no figure from before it.
    in_place_since: Option<Duration>,
    /// Which faults were in their window when `active` was last made to
    /// match the plan; None once the plan changed. While both stay, the
    /// held set and its books stand as they are (at 150 000 targets,
    /// working them out again is most of a step).
    held_for: Option<Vec<bool>>,
    /// The version of the candidates the plan was last made from, as the
    /// driver numbered them (see [`Run::step_with`]).
    planned_from: Option<u64>,
}

impl Run {
    /// A run of a validated experiment; `namespace` is the experiment's own
    /// (the default for targets), `seed` fixes target choices.
    pub fn new(spec: ExperimentSpec, namespace: &str, seed: u64) -> Run {
        let hypothesis = vec![CheckState::default(); spec.hypothesis.len()];
        let aborts = vec![CheckState::default(); spec.abort.len()];
        Run {
            spec: std::sync::Arc::new(spec),
            namespace: namespace.to_owned(),
            seed,
            phase: Phase::Pending,
            plan: Plan::new(),
            active: BTreeSet::new(),
            killing: BTreeSet::new(),
            kill_targets: BTreeMap::new(),
            signals_at: None,
            kill_started: BTreeSet::new(),
            signals_sent: BTreeMap::new(),
            hypothesis,
            aborts,
            verdict: None,
            message: None,
            journal: Vec::new(),
            resumed_at: None,
            faults_since: None,
            confirmed: BTreeSet::new(),
            unconfirmed: BTreeMap::new(),
            never_confirmed: BTreeSet::new(),
            never_confirmed_earlier: BTreeMap::new(),
            ever_held: BTreeSet::new(),
            ever_confirmed: BTreeSet::new(),
            effects: BTreeMap::new(),
            effect_failures: Vec::new(),
            held_for: None,
            planned_from: None,
            in_place_since: None,
        }
    }

    /// Continues a run another driver began, at `now` (time since the run
    /// started): phase, verdict and check results as `resume` says. Faults
    /// are not in it: the next `step` re-plans and `resolved` then names
    /// what should be applied, which a level-triggered writer compares with
    /// what is.
    pub fn resume(
        spec: ExperimentSpec,
        namespace: &str,
        seed: u64,
        now: Duration,
        resume: &Resume,
    ) -> Run {
        let mut run = Run::new(spec, namespace, seed);
        let phase = resume.phase.unwrap_or(Phase::Pending);
        run.phase = phase;
        run.verdict = resume.verdict;
        run.message = resume.message.clone();
        run.resumed_at = Some(now);
        let mut done = BTreeSet::new();
        if phase != Phase::Pending {
            done.insert(CheckPhase::Before);
        }
        if matches!(phase, Phase::Completed | Phase::Recovered) {
            done.insert(CheckPhase::After);
        }
        let kinds: Vec<CheckKind> = run
            .spec
            .hypothesis
            .iter()
            .chain(&run.spec.abort)
            .map(|c| c.kind.clone())
            .collect();
        let states = run.hypothesis.iter_mut().chain(run.aborts.iter_mut());
        for ((state, kind), saved) in states.zip(&kinds).zip(&resume.checks) {
            state.evaluations = saved.evaluations;
            state.failure = saved.failure.clone();
            state.last = saved.last.clone();
            state.judged = saved.judged.iter().copied().collect();
            state.not_judged = saved.not_judged.clone();
            state.judged_at = saved.judged_at;
            state.baseline = saved.baseline.map(Ok);
            if saved.evaluations > 0 {
                state.done = done.clone();
            }
            // A breaker check keeps showing the observation that decided it.
            state.reached = matches!(kind, CheckKind::Breaker(_))
                && saved
                    .last
                    .as_ref()
                    .is_some_and(|e| e.observed == e.expected);
        }
        for f in &resume.faults {
            if !run.spec.faults.iter().any(|s| s.name == f.name) {
                continue;
            }
            if f.placed {
                run.ever_held.insert(f.name.clone());
            }
            if f.confirmed {
                run.ever_confirmed.insert(f.name.clone());
            }
            if f.unconfirmed_targets > 0 {
                run.never_confirmed_earlier
                    .insert(f.name.clone(), f.unconfirmed_targets);
            }
            if let Some(e) = &f.effect {
                run.effects.insert(f.name.clone(), e.clone());
            }
        }
        if matches!(phase, Phase::Injecting | Phase::Running) {
            // Faults were in place before the restart: the abort checks'
            // grace goes on from their last judgement, not from now.
            run.faults_since = run.spec.faults.iter().map(|f| f.start().as_std()).min();
        }
        run.log(now, format!("resumed in phase {phase}"));
        run
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Why the run was aborted, or failed before starting.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    pub fn active(&self) -> &BTreeSet<Instance> {
        &self.active
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn journal(&self) -> &[Entry] {
        &self.journal
    }

    pub fn spec(&self) -> &ExperimentSpec {
        &self.spec
    }

    /// The spec, shared: a handle a driver keeps while it changes the run.
    pub fn shared_spec(&self) -> std::sync::Arc<ExperimentSpec> {
        self.spec.clone()
    }

    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Completed | Phase::Recovered | Phase::Invalid
        )
    }

    fn log(&mut self, at: Duration, event: impl Into<String>) {
        self.journal.push(Entry {
            at,
            event: event.into(),
        });
    }

    fn set_phase(&mut self, at: Duration, phase: Phase) {
        if self.phase != phase {
            self.log(at, format!("phase {} -> {}", self.phase, phase));
            self.phase = phase;
        }
    }

    /// While faults are active, an abort check that has not been judged for
    /// the experiment's `abortGrace` aborts the run: an abort check nobody
    /// can read protects nothing.
    fn enforce_abort_grace(&mut self, now: Duration) {
        let Some(since) = self.faults_since else {
            return;
        };
        let grace = self
            .spec
            .abort_grace
            .unwrap_or_else(faultline_api::default_abort_grace);
        let late = self.spec.abort.iter().zip(&self.aborts).find(|(_, s)| {
            let from = s.judged_at.map_or(since, |j| j.max(since));
            now.saturating_sub(from) > grace.as_std()
        });
        if let Some((check, state)) = late {
            let why = state
                .not_judged
                .clone()
                .unwrap_or_else(|| "not evaluated".to_owned());
            let reason = format!(
                "abort check {} could not be judged for {grace}: {why}",
                check.display_name()
            );
            self.abort(now, reason);
        }
    }

    /// A due check whose figure could not be read at all (the observer did
    /// not answer): not judged, for `why`.
    pub fn unreadable(&mut self, now: Duration, check: CheckRef, why: &str) {
        let name = self.check(check).display_name();
        self.state_mut(check).not_judged = Some(why.to_owned());
        self.journal.push(Entry {
            at: now,
            event: format!("check {name}: not judged: {why}"),
        });
    }

    /// When a fault is active, as offsets from the run's start.
    pub fn window(&self, fault: &str) -> Option<(Duration, Duration)> {
        let f = self.spec.faults.iter().find(|f| f.name == fault)?;
        Some((f.start().as_std(), f.end(self.spec.duration).as_std()))
    }

    /// Stops the run at once: the next step removes every fault.
    pub fn abort(&mut self, at: Duration, reason: impl Into<String>) {
        self.stop(at, Verdict::Aborted, "abort", reason.into());
    }

    /// Stops the run at once because it could not be carried out (a fault
    /// nobody confirmed): the next step removes every fault, and the
    /// verdict is Broken whatever the checks said.
    pub fn broke(&mut self, at: Duration, reason: impl Into<String>) {
        self.stop(at, Verdict::Broken, "broken", reason.into());
    }

    fn stop(&mut self, at: Duration, verdict: Verdict, word: &str, reason: String) {
        if self.is_finished() || self.phase == Phase::Aborted {
            return;
        }
        self.log(at, format!("{word}: {reason}"));
        self.message = Some(reason);
        self.verdict = Some(verdict);
        self.set_phase(at, Phase::Aborted);
    }

    /// Takes the driver's word on which held instances are applied for
    /// real (an agent's status, a proxy that took the setting, a signal
    /// delivered). Once confirmed, an instance stays so while it is held.
    pub fn confirm(&mut self, now: Duration, applied: impl Fn(&Instance) -> bool) {
        let newly: Vec<Instance> = self
            .unconfirmed
            .keys()
            .filter(|i| applied(i))
            .cloned()
            .collect();
        log_each(
            &mut self.journal,
            now,
            &newly,
            |i| format!("confirmed {} on {}", i.fault, i.target),
            "confirmed",
        );
        for i in newly {
            self.unconfirmed.remove(&i);
            if !self.ever_confirmed.contains(&*i.fault) {
                self.ever_confirmed.insert(i.fault.to_string());
            }
            self.confirmed.insert(i);
        }
        self.note_in_place(now);
    }

    /// Keeps `in_place_since` in step with whether faults are in place.
    fn note_in_place(&mut self, now: Duration) {
        let in_place =
            matches!(self.phase, Phase::Injecting | Phase::Running) && self.faults_confirmed(now);
        self.in_place_since = in_place.then(|| self.in_place_since.unwrap_or(now));
    }

    /// The window to read a due check over at `now`: a check of the fault
    /// window reads no further back than the moment faults were confirmed
    /// in place, a check after the faults no further back than their end
    /// (whole seconds, at least one), so figures from one never count as
    /// figures of the other. None: the check's own.
    pub fn window_for(&self, check: CheckRef, now: Duration) -> Option<faultline_api::Duration> {
        if check.abort {
            return None;
        }
        let since = match self.phase {
            Phase::Injecting | Phase::Running => self.in_place_since?,
            Phase::Recovering => self
                .spec
                .faults
                .iter()
                .map(|f| f.end(self.spec.duration).as_std())
                .max()?,
            _ => return None,
        };
        let own = self.spec.hypothesis.get(check.index)?.kind.window()?;
        let secs = now.saturating_sub(since).as_secs().max(1);
        let clipped = faultline_api::Duration::from_secs(secs)?;
        (clipped < own).then_some(clipped)
    }

    /// Held instances nobody confirmed within the experiment's
    /// `confirmTimeout`: the driver ends the run broken, naming where.
    pub fn overdue(&self, now: Duration) -> Vec<&Instance> {
        let timeout = self
            .spec
            .confirm_timeout
            .unwrap_or_else(faultline_api::default_confirm_timeout)
            .as_std();
        self.unconfirmed
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) > timeout)
            .map(|(i, _)| i)
            .collect()
    }

    /// A fault's effect so far (cumulative, as the driver counts it). A
    /// count below one already recorded (a driver restarted and lost some
    /// of its figures) does not lower it.
    pub fn record_effect(&mut self, fault: &str, effect: Effect) {
        match self.effects.get_mut(fault) {
            Some(e) if e.what == effect.what && e.count >= effect.count => {}
            Some(e) => *e = effect,
            None => {
                self.effects.insert(fault.to_owned(), effect);
            }
        }
    }

    /// What the run knows of each fault of the spec, in its order.
    pub fn fault_reports(&self) -> Vec<FaultReport> {
        self.spec
            .faults
            .iter()
            .map(|f| {
                let ended = self
                    .never_confirmed
                    .iter()
                    .filter(|i| *i.fault == *f.name)
                    .count();
                let earlier = self
                    .never_confirmed_earlier
                    .get(&f.name)
                    .copied()
                    .unwrap_or(0);
                FaultReport {
                    name: f.name.clone(),
                    injected: self
                        .confirmed
                        .iter()
                        .filter(|i| *i.fault == *f.name)
                        .count() as u32,
                    placed: self.ever_held.contains(&f.name),
                    confirmed: self.ever_confirmed.contains(&f.name),
                    unconfirmed_targets: earlier.saturating_add(ended as u32),
                    effect: self.effects.get(&f.name).cloned(),
                }
            })
            .collect()
    }

    /// Each fault of the spec with its effect, None where none was counted.
    pub fn effects(&self) -> Vec<(&str, Option<&Effect>)> {
        self.spec
            .faults
            .iter()
            .map(|f| (f.name.as_str(), self.effects.get(&f.name)))
            .collect()
    }

    /// Faults with `requireEffect` that had none: why each failed the run.
    pub fn effect_failures(&self) -> &[String] {
        &self.effect_failures
    }

    /// Held instances not confirmed yet.
    pub fn unconfirmed(&self) -> impl Iterator<Item = &Instance> {
        self.unconfirmed.keys()
    }

    /// Held instances confirmed applied.
    pub fn confirmed(&self) -> &BTreeSet<Instance> {
        &self.confirmed
    }

    /// Faults are in place for checks of the fault window to count: none
    /// waiting, and at least one instance held and confirmed — or a kill
    /// in its window that was (a deleted pod leaves the plan, and with it
    /// the instance, as soon as its deletion is seen).
    fn faults_confirmed(&self, now: Duration) -> bool {
        let kill_done = || {
            self.spec.faults.iter().any(|f| {
                matches!(f.action, FaultAction::Kill(_))
                    && self.ever_confirmed.contains(&f.name)
                    && self
                        .window(&f.name)
                        .is_some_and(|(s, e)| s <= now && now < e)
            })
        };
        self.unconfirmed.is_empty() && (!self.confirmed.is_empty() || kill_done())
    }

    /// Keeps the confirmation books in step with what the run holds now.
    fn track_confirmations(&mut self, now: Duration) {
        // Not a merged copy: at 150 000 targets this runs every step.
        let (active, killing) = (&self.active, &self.killing);
        let held = |i: &Instance| active.contains(i) || killing.contains(i);
        self.confirmed.retain(|i| held(i));
        // Let go unconfirmed: at its window's end it was never injected; a
        // target that went away (replaced, rescheduled) is no one's fault.
        // One wanted only for the last moments of its window (a late
        // replacement) had no time for an agent's answer.
        let ended: Vec<Instance> = self
            .unconfirmed
            .iter()
            .filter(|(i, _)| !held(i))
            .filter(|(_, since)| now.saturating_sub(**since) >= ANSWER_TIME)
            .filter(|(i, _)| self.window(&i.fault).is_some_and(|(_, end)| now >= end))
            .map(|(i, _)| i.clone())
            .collect();
        self.never_confirmed.extend(ended);
        self.unconfirmed.retain(|i, _| held(i));
        for i in active.iter().chain(killing) {
            if !self.ever_held.contains(&*i.fault) {
                self.ever_held.insert(i.fault.to_string());
            }
            if !self.confirmed.contains(i) && !self.unconfirmed.contains_key(i) {
                self.unconfirmed.insert(i.clone(), now);
            }
        }
    }

    /// Advances the run to `now` (time since the run started) with the
    /// targets that exist now; returns what to do.
    pub fn step(&mut self, now: Duration, candidates: &[Candidate]) -> Vec<Action> {
        self.step_with(now, candidates, None)
    }

    /// As [`Run::step`], with the candidates numbered by the driver: while
    /// `version` is the one the plan was last made from, the candidates are
    /// the same and so would the plan be, so it is not made again (at
    /// 150 000 candidates, most of a step). None: always planned.
    pub fn step_with(
        &mut self,
        now: Duration,
        candidates: &[Candidate],
        version: Option<u64>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let in_a_window = self
            .spec
            .faults
            .iter()
            .any(|f| f.start().as_std() <= now && now < f.end(self.spec.duration).as_std());
        if matches!(self.phase, Phase::Injecting | Phase::Running) && in_a_window {
            // Before anything else: an abort here removes every fault below.
            self.enforce_abort_grace(now);
        }
        if self.phase == Phase::Pending {
            if !self.due(now).is_empty() {
                return actions; // steady-state checks first
            }
            match plan(&self.spec, &self.namespace, candidates, self.seed) {
                Ok(p) => {
                    self.log(
                        now,
                        format!(
                            "planned {} targets",
                            p.values().map(Vec::len).sum::<usize>()
                        ),
                    );
                    self.plan = p;
                    self.held_for = None;
                    self.planned_from = version;
                    self.set_phase(now, Phase::Injecting);
                }
                Err(e) => {
                    self.abort(now, e.to_string());
                }
            }
        }
        let duration = self.spec.duration.as_std();
        if matches!(self.phase, Phase::Injecting | Phase::Running) && now >= duration {
            self.set_phase(now, Phase::Recovering);
        }
        let same_candidates = version.is_some() && version == self.planned_from;
        if matches!(self.phase, Phase::Injecting | Phase::Running) && !same_candidates {
            // Re-plan so a replaced target (a killed pod's successor) is
            // covered. Over the limits mid-run, the last plan stands; a run
            // with no plan yet (resumed by another driver) does not start.
            self.planned_from = version;
            match plan(&self.spec, &self.namespace, candidates, self.seed) {
                // Compared cheaply: ids shared with the last plan are equal
                // by pointer.
                Ok(p) if p != self.plan => {
                    self.plan = p;
                    self.held_for = None;
                }
                Ok(_) => {}
                Err(e) if self.plan.is_empty() => self.abort(now, e.to_string()),
                Err(_) => {}
            }
        }
        match self.phase {
            Phase::Injecting | Phase::Running => {
                let windows = self.in_window(now);
                // While neither the plan nor the faults in their window
                // changed, what is held stands as it is.
                let same = self.held_for.as_ref() == Some(&windows);
                let mut injected = false;
                if !same {
                    let desired = self.desired(now);
                    let gone: Vec<Instance> = self.active.difference(&desired).cloned().collect();
                    log_each(
                        &mut self.journal,
                        now,
                        &gone,
                        |i| format!("remove {} from {}", i.fault, i.target),
                        "remove",
                    );
                    for gone in gone {
                        self.active.remove(&gone);
                        actions.push(Action::Remove(gone));
                    }
                    let new: Vec<Instance> = desired.difference(&self.active).cloned().collect();
                    log_each(
                        &mut self.journal,
                        now,
                        &new,
                        |i| format!("inject {} into {}", i.fault, i.target),
                        "inject",
                    );
                    injected = !new.is_empty();
                    for new in new {
                        self.active.insert(new.clone());
                        actions.push(Action::Inject(new));
                    }
                }
                actions.extend(self.signals(now));
                let killing = self.kill_window(now);
                // The books follow what is held; with it unchanged they are
                // in step already (only `confirm` moves an instance on).
                if !same || killing != self.killing {
                    self.killing = killing;
                    self.track_confirmations(now);
                }
                self.held_for = Some(windows);
                self.note_in_place(now);
                let faulting = !self.active.is_empty() || !self.killing.is_empty();
                self.faults_since = faulting.then(|| self.faults_since.unwrap_or(now));
                self.set_phase(
                    now,
                    if injected {
                        Phase::Injecting
                    } else {
                        Phase::Running
                    },
                );
            }
            Phase::Recovering | Phase::Aborted => {
                self.killing.clear();
                self.held_for = None;
                if self.phase == Phase::Recovering {
                    let left = std::mem::take(&mut self.unconfirmed);
                    self.never_confirmed.extend(
                        left.into_iter()
                            .filter(|(_, since)| now.saturating_sub(*since) >= ANSWER_TIME)
                            .map(|(i, _)| i),
                    );
                }
                self.confirmed.clear();
                self.unconfirmed.clear();
                let gone = std::mem::take(&mut self.active);
                log_each(
                    &mut self.journal,
                    now,
                    &gone,
                    |i| format!("remove {} from {}", i.fault, i.target),
                    "remove",
                );
                actions.extend(gone.into_iter().map(Action::Remove));
                if self.phase == Phase::Aborted {
                    self.set_phase(now, Phase::Recovered);
                } else if self.due(now).is_empty() {
                    self.complete(now);
                }
            }
            Phase::Pending | Phase::Completed | Phase::Recovered | Phase::Invalid => {}
        }
        actions
    }

    /// Per fault of the spec, whether its window holds `now`.
    fn in_window(&self, now: Duration) -> Vec<bool> {
        let duration = self.spec.duration;
        self.spec
            .faults
            .iter()
            .map(|f| f.start().as_std() <= now && now < f.end(duration).as_std())
            .collect()
    }

    /// The instances that should be applied at `now`.
    fn desired(&self, now: Duration) -> BTreeSet<Instance> {
        let duration = self.spec.duration;
        self.spec
            .faults
            .iter()
            .filter(|f| !matches!(f.action, FaultAction::Kill(_)))
            .filter(|f| f.start().as_std() <= now && now < f.end(duration).as_std())
            .flat_map(|f| {
                let fault: Arc<str> = f.name.as_str().into();
                self.plan
                    .get(&f.target)
                    .into_iter()
                    .flatten()
                    .map(move |t| Instance {
                        fault: fault.clone(),
                        target: t.clone(),
                    })
            })
            .collect()
    }

    /// Kill faults whose window holds `now`, per target they act on.
    fn kill_window(&self, now: Duration) -> BTreeSet<Instance> {
        let duration = self.spec.duration;
        let mut out = BTreeSet::new();
        for f in &self.spec.faults {
            let FaultAction::Kill(_) = &f.action else {
                continue;
            };
            if now < f.start().as_std() || now >= f.end(duration).as_std() {
                continue;
            }
            let fault: Arc<str> = f.name.as_str().into();
            for t in self.plan.get(&f.target).into_iter().flatten() {
                let instance = Instance {
                    fault: fault.clone(),
                    target: t.clone(),
                };
                if self.kill_started.contains(&instance) {
                    out.insert(instance);
                }
            }
        }
        out
    }

    /// Every fault instance the run holds now — latency and partitions
    /// applied, kill faults inside their window — with the end of its
    /// window. Level-based: drivers apply this set, whatever actions led
    /// to it.
    pub fn resolved(&self) -> Vec<Resolved<'_>> {
        let duration = self.spec.duration;
        self.active
            .iter()
            .chain(&self.killing)
            .filter_map(|i| {
                let fault = self.spec.faults.iter().find(|f| *f.name == *i.fault)?;
                Some(Resolved {
                    fault,
                    target: &i.target,
                    until: fault.end(duration).as_std(),
                })
            })
            .collect()
    }

    /// Kill signals due at `now`: at the fault's start, then every `every`
    /// while it is active; at most one per target and step.
    fn signals(&mut self, now: Duration) -> Vec<Action> {
        let duration = self.spec.duration;
        let mut out = Vec::new();
        for f in &self.spec.faults {
            let FaultAction::Kill(k) = &f.action else {
                continue;
            };
            let (start, end) = (f.start().as_std(), f.end(duration).as_std());
            if now < start || now >= end {
                continue;
            }
            let due_at = |t: Duration| match k.every {
                Some(every) if !every.is_zero() => {
                    t.saturating_sub(start).as_millis() as u64 / every.as_millis() + 1
                }
                _ => 1,
            };
            let due = due_at(now);
            let targets: BTreeSet<TargetId> = self
                .plan
                .get(&f.target)
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            // The first round: signals due by a resume count as sent.
            let begun = self.kill_targets.contains_key(&f.name);
            let first = if begun {
                due_at(self.signals_at.unwrap_or(now))
            } else {
                self.resumed_at.filter(|r| *r >= start).map_or(0, due_at)
            };
            let known = self
                .kill_targets
                .entry(f.name.clone())
                .or_insert_with(|| targets.clone());
            let fault: Arc<str> = f.name.as_str().into();
            for t in &targets {
                if k.every.is_none() && !known.contains(t) {
                    continue; // a once-kill's replacement is left alone
                }
                let instance = Instance {
                    fault: fault.clone(),
                    target: t.clone(),
                };
                if !begun {
                    self.kill_started.insert(instance.clone());
                }
                let sent = self.signals_sent.entry(instance.clone()).or_insert(first);
                if *sent < due {
                    *sent = due;
                    self.kill_started.insert(instance.clone());
                    out.push(Action::Signal(instance, k.signal));
                }
            }
        }
        self.signals_at = Some(now);
        let signals: BTreeMap<&str, Signal> = self
            .spec
            .faults
            .iter()
            .filter_map(|f| match &f.action {
                FaultAction::Kill(k) => Some((f.name.as_str(), k.signal)),
                _ => None,
            })
            .collect();
        let sent: Vec<&Instance> = out
            .iter()
            .filter_map(|a| match a {
                Action::Signal(i, _) => Some(i),
                _ => None,
            })
            .collect();
        let say = |i: &Instance| {
            let s = signals.get(&*i.fault).copied().unwrap_or_default();
            format!("signal {s} to {} ({})", i.target, i.fault)
        };
        log_each(&mut self.journal, now, sent, say, "signal");
        out
    }

    /// The checks to evaluate now, for the current phase.
    pub fn due(&self, now: Duration) -> Vec<CheckRef> {
        let hypothesis = |phase: CheckPhase, once: bool| {
            self.spec
                .hypothesis
                .iter()
                .enumerate()
                .filter(move |(i, c)| {
                    c.phases().contains(&phase)
                        && !(once && self.hypothesis[*i].done.contains(&phase))
                })
                .map(|(index, _)| CheckRef {
                    abort: false,
                    index,
                })
        };
        match self.phase {
            Phase::Pending => hypothesis(CheckPhase::Before, true).collect(),
            // Checks of the fault window count only while faults are
            // confirmed in place; abort checks guard the whole window.
            // Before the first fault, relative checks take their baseline.
            Phase::Injecting | Phase::Running => hypothesis(CheckPhase::During, false)
                .filter(|_| self.faults_confirmed(now))
                .chain(
                    self.spec
                        .hypothesis
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.kind.is_relative() && self.before_first_fault(now))
                        .map(|(index, _)| CheckRef {
                            abort: false,
                            index,
                        }),
                )
                .chain((0..self.spec.abort.len()).map(|index| CheckRef { abort: true, index }))
                .collect(),
            Phase::Recovering if self.active.is_empty() => {
                hypothesis(CheckPhase::After, true).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The spec's check a reference names.
    fn check(&self, c: CheckRef) -> &faultline_api::Check {
        if c.abort {
            &self.spec.abort[c.index]
        } else {
            &self.spec.hypothesis[c.index]
        }
    }

    fn state(&self, c: CheckRef) -> &CheckState {
        if c.abort {
            &self.aborts[c.index]
        } else {
            &self.hypothesis[c.index]
        }
    }

    fn state_mut(&mut self, c: CheckRef) -> &mut CheckState {
        if c.abort {
            &mut self.aborts[c.index]
        } else {
            &mut self.hypothesis[c.index]
        }
    }

    /// The phase a check evaluated now is judged for.
    fn check_phase(&self) -> CheckPhase {
        match self.phase {
            Phase::Pending => CheckPhase::Before,
            Phase::Recovering | Phase::Completed => CheckPhase::After,
            _ => CheckPhase::During,
        }
    }

    /// Whether no fault has started yet at `now`: steady state, where
    /// relative checks take their baseline.
    fn before_first_fault(&self, now: Duration) -> bool {
        self.spec
            .faults
            .iter()
            .map(|f| f.start().as_std())
            .min()
            .is_some_and(|first| now < first)
    }

    /// When the fault a breaker check's `within` counts from starts.
    fn breaker_origin(&self, fault: Option<&str>) -> Duration {
        match fault {
            Some(name) => self.window(name).map_or(Duration::ZERO, |(s, _)| s),
            None => self
                .spec
                .faults
                .iter()
                .map(|f| f.start().as_std())
                .min()
                .unwrap_or_default(),
        }
    }

    /// Takes an observation for a due check and judges it. A failed abort
    /// check aborts the run; a failed steady-state check ends it before any
    /// fault is injected.
    pub fn observe(&mut self, now: Duration, check: CheckRef, observed: &Observed) -> Evaluation {
        let name = self.check(check).display_name();
        let kind = self.check(check).kind.clone();
        let phase = self.check_phase();
        if phase == CheckPhase::During && kind.is_relative() && self.before_first_fault(now) {
            return self.take_baseline(now, check, observed);
        }
        let baseline = self
            .state(check)
            .baseline
            .clone()
            .unwrap_or_else(|| Err("none was measured before the first fault".into()));
        let mut evaluation = evaluate_against(&kind, observed, &baseline);
        let within = match &kind {
            CheckKind::Breaker(b) if phase == CheckPhase::During => {
                b.within.map(|w| (w.as_std(), b.fault.clone()))
            }
            _ => None,
        };
        let origin = within
            .as_ref()
            .map(|(_, fault)| self.breaker_origin(fault.as_deref()));
        let state = self.state_mut(check);
        state.evaluations += 1;
        state.done.insert(phase);
        if !evaluation.judged {
            // No evidence either way: it neither fails nor aborts the run,
            // and counts for nothing towards a pass.
            state.not_judged = Some(evaluation.observed.clone());
            state.last = Some(evaluation.clone());
            self.journal.push(Entry {
                at: now,
                event: format!(
                    "check {name} ({phase}): not judged (observed {}, expected {})",
                    evaluation.observed, evaluation.expected
                ),
            });
            return evaluation;
        }
        state.judged.insert(phase);
        state.judged_at = Some(now);
        let observed_reached = within.is_some() && evaluation.passed;
        if let (Some((within, _)), Some(origin)) = (within.clone(), origin) {
            if evaluation.passed {
                state.reached = true;
            }
            // Reaching the state once within the limit is what counts; before
            // the limit, not having reached it yet is no failure.
            if state.reached || now.saturating_sub(origin) <= within {
                evaluation.passed = true;
            }
        }
        // A breaker check that reached its state keeps showing the
        // observation that decided it.
        if !(state.reached && within.is_some() && !observed_reached) || state.last.is_none() {
            state.last = Some(evaluation.clone());
        }
        if !evaluation.passed && state.failure.is_none() {
            state.failure = Some(format!(
                "{name}: observed {}, expected {} ({phase})",
                evaluation.observed, evaluation.expected
            ));
        }
        self.journal.push(Entry {
            at: now,
            event: format!(
                "check {name} ({phase}): {} (observed {}, expected {})",
                if evaluation.passed { "ok" } else { "FAILED" },
                evaluation.observed,
                evaluation.expected
            ),
        });
        if !evaluation.passed {
            if check.abort {
                self.abort(
                    now,
                    format!(
                        "abort check {name} failed: observed {}",
                        evaluation.observed
                    ),
                );
            } else if phase == CheckPhase::Before {
                self.message = Some(format!("steady state not met before injection: {name}"));
                self.verdict = Some(Verdict::Failed);
                self.set_phase(now, Phase::Completed);
            }
        }
        evaluation
    }

    /// A relative check's figure before the first fault: its baseline,
    /// the last one taken counting. Nothing is judged.
    fn take_baseline(&mut self, now: Duration, check: CheckRef, observed: &Observed) -> Evaluation {
        let name = self.check(check).display_name();
        let kind = &self.check(check).kind;
        let baseline = Baseline::of(kind, observed);
        let shown = Baseline::describe(&baseline, kind);
        let state = self.state_mut(check);
        // A baseline taken once is not lost to a quieter window after it.
        if baseline.is_ok() || !state.baseline.as_ref().is_some_and(Result::is_ok) {
            state.baseline = Some(baseline);
        }
        self.journal.push(Entry {
            at: now,
            event: format!("check {name}: baseline {shown}"),
        });
        Evaluation {
            judged: false,
            passed: false,
            observed: format!("baseline {shown}"),
            expected: String::new(),
        }
    }

    /// Due checks whose figures could not be read for too long count as
    /// failed, so the run goes on rather than waiting forever: a
    /// steady-state check then ends the run before anything is injected,
    /// an after-check ends it failed.
    pub fn give_up_due(&mut self, now: Duration, why: &str) {
        let phase = self.check_phase();
        for c in self.due(now) {
            let name = self.check(c).display_name();
            let state = self.state_mut(c);
            state.done.insert(phase);
            if !c.abort && state.failure.is_none() {
                state.failure = Some(format!("{name}: {why} ({phase})"));
            }
            self.journal.push(Entry {
                at: now,
                event: format!("check {name} ({phase}): not judged: {why}"),
            });
            if !c.abort && phase == CheckPhase::Before {
                self.message = Some(format!(
                    "steady state not known before injection: {name}: {why}"
                ));
                self.verdict = Some(Verdict::Failed);
                self.set_phase(now, Phase::Completed);
            }
        }
    }

    fn complete(&mut self, now: Duration) {
        // Failures judged on figures, before those that only say a check
        // was never evaluated or never reached its state are added.
        let failed_on_figures = self.hypothesis.iter().any(|s| s.failure.is_some());
        // A fault that touched nothing proved nothing: said for every
        // fault, a failure for those that require an effect.
        self.effect_failures.clear();
        for f in &self.spec.faults {
            let seen = self.effects.get(&f.name).filter(|e| e.count > 0);
            if seen.is_some() {
                continue;
            }
            let why = match self.effects.get(&f.name) {
                Some(e) => format!("fault {}: no effect observed (0 {})", f.name, e.what),
                None => format!(
                    "fault {}: no effect observed (none could be counted)",
                    f.name
                ),
            };
            self.journal.push(Entry {
                at: now,
                event: why.clone(),
            });
            if f.require_effect {
                self.effect_failures.push(why);
            }
        }
        // A check that was never judged is no evidence that the hypothesis held.
        for (i, c) in self.spec.hypothesis.iter().enumerate() {
            let state = &mut self.hypothesis[i];
            if state.evaluations == 0 && state.failure.is_none() {
                state.failure = Some(format!(
                    "{}: never evaluated (no figures could be read)",
                    c.display_name()
                ));
            }
        }
        // A breaker check with `within` that never reached its state fails.
        for (i, c) in self.spec.hypothesis.iter().enumerate() {
            if let CheckKind::Breaker(b) = &c.kind
                && b.within.is_some()
                && c.phases().contains(&CheckPhase::During)
                && !self.hypothesis[i].reached
                && self.hypothesis[i].failure.is_none()
            {
                self.hypothesis[i].failure = Some(format!(
                    "{}: never {} within {}",
                    c.display_name(),
                    b.state,
                    b.within.map(|w| w.to_string()).unwrap_or_default()
                ));
            }
        }
        // Judged in some phases only is no evidence for the others: a check
        // of the fault's window with no traffic during it proves nothing.
        for (i, c) in self.spec.hypothesis.iter().enumerate() {
            let state = &mut self.hypothesis[i];
            let missing: Vec<String> = c
                .phases()
                .iter()
                .filter(|p| !state.judged.contains(p))
                .map(ToString::to_string)
                .collect();
            if state.failure.is_none() && !missing.is_empty() {
                state.inconclusive = Some(format!(
                    "{}: not judged {}: {}",
                    c.display_name(),
                    missing.join(", "),
                    state.not_judged.as_deref().unwrap_or("no figures")
                ));
            }
        }
        // Faults that were never confirmed in place were never tested: an
        // instance whose window ended unconfirmed, or a fault held
        // somewhere but confirmed nowhere, however its instances came and
        // went. A check that failed did so on evidence gathered while
        // every held fault was confirmed (only then are fault-window
        // checks due), so a failure still stands.
        let mut per_fault: BTreeMap<&str, usize> = self
            .never_confirmed_earlier
            .iter()
            .map(|(f, n)| (f.as_str(), *n as usize))
            .collect();
        for i in &self.never_confirmed {
            *per_fault.entry(&*i.fault).or_default() += 1;
        }
        let mut list: Vec<String> = per_fault
            .iter()
            .map(|(f, n)| format!("{f} on {n} target{}", if *n == 1 { "" } else { "s" }))
            .collect();
        list.extend(
            self.spec
                .faults
                .iter()
                .filter(|f| self.ever_held.contains(&f.name))
                .filter(|f| !self.ever_confirmed.contains(&f.name))
                .filter(|f| !per_fault.contains_key(f.name.as_str()))
                .map(|f| format!("{} on no target", f.name)),
        );
        if !failed_on_figures && !list.is_empty() {
            self.message = Some(format!(
                "faults never confirmed in place during their window: {}",
                list.join(", ")
            ));
            self.verdict = Some(Verdict::Broken);
            self.set_phase(now, Phase::Completed);
            return;
        }
        if !self.effect_failures.is_empty() {
            self.message = Some(format!(
                "requireEffect: {}",
                self.effect_failures.join("; ")
            ));
            self.verdict = Some(Verdict::Failed);
            self.set_phase(now, Phase::Completed);
            return;
        }
        let failed = self.hypothesis.iter().any(|s| s.failure.is_some());
        let inconclusive: Vec<&str> = self
            .hypothesis
            .iter()
            .filter_map(|s| s.inconclusive.as_deref())
            .collect();
        self.verdict = Some(if failed {
            Verdict::Failed
        } else if !inconclusive.is_empty() {
            if self.message.is_none() {
                self.message = Some(format!("not enough evidence: {}", inconclusive.join("; ")));
            }
            Verdict::Inconclusive
        } else {
            Verdict::Passed
        });
        self.set_phase(now, Phase::Completed);
    }

    /// Every check with what it came to.
    pub fn report(&self) -> Vec<CheckReport> {
        let one = |abort: bool, c: &faultline_api::Check, s: &CheckState| CheckReport {
            name: c.display_name(),
            abort,
            passed: s.failure.is_none() && s.inconclusive.is_none(),
            evaluations: s.evaluations,
            last: s.last.clone(),
            failure: s.failure.clone(),
            judged: s.judged.iter().copied().collect(),
            not_judged: s.not_judged.clone(),
            inconclusive: s.inconclusive.clone(),
            judged_at: s.judged_at,
            baseline: s.baseline.clone(),
        };
        self.spec
            .hypothesis
            .iter()
            .zip(&self.hypothesis)
            .map(|(c, s)| one(false, c, s))
            .chain(
                self.spec
                    .abort
                    .iter()
                    .zip(&self.aborts)
                    .map(|(c, s)| one(true, c, s)),
            )
            .collect()
    }
}

/// Journals what happened to each instance (`inject F into T`), by
/// fault: the first few targets by name, the rest as a count, so a run
/// over 150 000 pods keeps a journal people can read, in bounded memory.
fn log_each<'a>(
    journal: &mut Vec<Entry>,
    at: Duration,
    instances: impl IntoIterator<Item = &'a Instance>,
    say: impl Fn(&Instance) -> String,
    rest: &str,
) {
    let mut per_fault: BTreeMap<&str, (usize, Vec<String>)> = BTreeMap::new();
    for i in instances {
        let (count, named) = per_fault.entry(&i.fault).or_default();
        *count += 1;
        if named.len() < JOURNAL_NAMED {
            named.push(say(i));
        }
    }
    for (fault, (count, named)) in per_fault {
        let more = count - named.len();
        for event in named {
            journal.push(Entry { at, event });
        }
        if more > 0 {
            journal.push(Entry {
                at,
                event: format!("{rest} {fault}: {more} more targets"),
            });
        }
    }
}
