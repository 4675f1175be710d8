//! The circuit-breaker state machine, pure: fed with outcomes and times, it
//! decides whether calls are permitted and when the state changes. No clock,
//! no locking, no telemetry — the service layer adds those.

use std::{fmt, time::Duration, time::Instant};

use super::window::{SlidingWindow, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    /// Forced open through the handle: every call is refused until reset.
    ForcedOpen,
    /// Forced closed through the handle: every call is permitted, nothing is counted.
    Disabled,
}

impl State {
    /// The value written to `circuit_breaker.state` (docs/architecture.md, Telemetry):
    /// forced states report what callers experience.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed | State::Disabled => "closed",
            State::Open | State::ForcedOpen => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Numeric value for the state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            State::Closed | State::Disabled => 0,
            State::Open | State::ForcedOpen => 1,
            State::HalfOpen => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a protected call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither success nor failure (e.g. a client error the breaker should not count).
    Ignored,
}

/// When and how the breaker trips and recovers.
///
/// Defaults suit HTTP services with tens to hundreds of requests a second;
/// resilience4j's (window 100, minimum 100 calls, 60 s open, 10 half-open
/// calls) react too slowly for that: a dependency that turns slow should trip
/// its breaker within a second or two, and be retried within seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Open when at least this share of calls in the window failed (0.0–1.0). Default 0.5.
    pub failure_rate_threshold: f64,
    /// Open when at least this share of calls in the window were slow (0.0–1.0).
    /// Default 1.0: only when every call is slow.
    pub slow_call_rate_threshold: f64,
    /// A call taking at least this long is slow. Default 1 s.
    pub slow_call_duration: Duration,
    /// Which calls the rates are computed over. Default: the last 20 calls.
    pub window: SlidingWindow,
    /// No decision before the window holds this many calls. Default 10.
    pub minimum_calls: u32,
    /// How long the breaker stays open before letting trial calls through. Default 5 s.
    pub wait_in_open: Duration,
    /// Trial calls let through when half-open; they decide between closed and open. Default 3.
    pub half_open_calls: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(1),
            window: SlidingWindow::Count(20),
            minimum_calls: 10,
            wait_in_open: Duration::from_secs(5),
            half_open_calls: 3,
        }
    }
}

/// Why the state changed; written into the `circuit_breaker.state_change` event.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    FailureRate(f64),
    SlowCallRate(f64),
    WaitElapsed,
    TrialsSucceeded,
    TrialsFailed(f64),
    Forced,
    Reset,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailureRate(r) => {
                write!(f, "failure rate {:.1}% reached the threshold", r * 100.0)
            }
            Reason::SlowCallRate(r) => {
                write!(f, "slow call rate {:.1}% reached the threshold", r * 100.0)
            }
            Reason::WaitElapsed => f.write_str("wait in open state elapsed"),
            Reason::TrialsSucceeded => f.write_str("trial calls succeeded"),
            Reason::TrialsFailed(r) => write!(f, "trial calls failed ({:.1}% failures)", r * 100.0),
            Reason::Forced => f.write_str("forced through the handle"),
            Reason::Reset => f.write_str("reset through the handle"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// A permission to make one call; recorded back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Outcomes of calls started before a state change are not counted after it.
    generation: u64,
    half_open: bool,
}

/// Counters for the handle's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub successes: u64,
    pub failures: u64,
    pub slow: u64,
    pub ignored: u64,
    pub not_permitted: u64,
}

#[derive(Debug)]
pub struct Core {
    config: Config,
    state: State,
    since: Instant,
    generation: u64,
    window: Window,
    half_open_started: u32,
    half_open_done: u32,
    half_open_failures: u32,
    half_open_slow: u32,
    counts: Counts,
}

impl Core {
    pub fn new(config: Config, now: Instant) -> Self {
        let window = Window::new(&config.window);
        Core {
            config,
            state: State::Closed,
            since: now,
            generation: 0,
            window,
            half_open_started: 0,
            half_open_done: 0,
            half_open_failures: 0,
            half_open_slow: 0,
            counts: Counts::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state was entered.
    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Failure and slow-call rates over the current window, once it holds
    /// the minimum number of calls.
    pub fn rates(&mut self, now: Instant) -> Option<(f64, f64)> {
        let s = self.window.summary(now);
        (s.calls >= u64::from(self.config.minimum_calls.max(1))).then(|| {
            let calls = s.calls as f64;
            (s.failures as f64 / calls, s.slow as f64 / calls)
        })
    }

    /// Asks to make a call. An open breaker whose wait has elapsed turns
    /// half-open here (the transition is returned so it can be reported).
    pub fn try_acquire(&mut self, now: Instant) -> (Option<Ticket>, Option<Transition>) {
        let mut transition = None;
        if self.state == State::Open
            && now.saturating_duration_since(self.since) >= self.config.wait_in_open
        {
            transition = Some(self.go(State::HalfOpen, Reason::WaitElapsed, now));
        }
        let ticket = match self.state {
            State::Closed | State::Disabled => Some(Ticket {
                generation: self.generation,
                half_open: false,
            }),
            State::HalfOpen if self.half_open_started < self.config.half_open_calls.max(1) => {
                self.half_open_started += 1;
                Some(Ticket {
                    generation: self.generation,
                    half_open: true,
                })
            }
            State::HalfOpen | State::Open | State::ForcedOpen => None,
        };
        if ticket.is_none() {
            self.counts.not_permitted += 1;
        }
        (ticket, transition)
    }

    /// Records how a permitted call went.
    pub fn record(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Duration,
        now: Instant,
    ) -> Option<Transition> {
        let slow = elapsed >= self.config.slow_call_duration;
        match outcome {
            Outcome::Success => self.counts.successes += 1,
            Outcome::Failure => self.counts.failures += 1,
            Outcome::Ignored => self.counts.ignored += 1,
        }
        if slow && outcome != Outcome::Ignored {
            self.counts.slow += 1;
        }
        if ticket.generation != self.generation || self.state == State::Disabled {
            return None;
        }
        if outcome == Outcome::Ignored {
            if ticket.half_open {
                // Give the trial slot back so half-open does not stall.
                self.half_open_started = self.half_open_started.saturating_sub(1);
            }
            return None;
        }
        let failed = outcome == Outcome::Failure;
        match self.state {
            State::Closed => {
                self.window.record(now, failed, slow);
                let (failure_rate, slow_rate) = self.rates(now)?;
                if failure_rate >= self.config.failure_rate_threshold {
                    Some(self.go(State::Open, Reason::FailureRate(failure_rate), now))
                } else if slow_rate >= self.config.slow_call_rate_threshold {
                    Some(self.go(State::Open, Reason::SlowCallRate(slow_rate), now))
                } else {
                    None
                }
            }
            State::HalfOpen => {
                self.half_open_done += 1;
                self.half_open_failures += u32::from(failed);
                self.half_open_slow += u32::from(slow);
                let trials = self.config.half_open_calls.max(1);
                if self.half_open_done < trials {
                    return None;
                }
                // Each rate against its own threshold, as when closed.
                let done = f64::from(self.half_open_done);
                let failure_rate = f64::from(self.half_open_failures) / done;
                let slow_rate = f64::from(self.half_open_slow) / done;
                Some(if failure_rate >= self.config.failure_rate_threshold {
                    self.go(State::Open, Reason::TrialsFailed(failure_rate), now)
                } else if slow_rate >= self.config.slow_call_rate_threshold {
                    self.go(State::Open, Reason::SlowCallRate(slow_rate), now)
                } else {
                    self.go(State::Closed, Reason::TrialsSucceeded, now)
                })
            }
            State::Open | State::ForcedOpen | State::Disabled => None,
        }
    }

    /// A permitted call that never finished (its future was dropped): frees a
    /// half-open trial slot, counts nothing.
    pub fn abandon(&mut self, ticket: Ticket) {
        if ticket.half_open && ticket.generation == self.generation {
            self.half_open_started = self.half_open_started.saturating_sub(1);
        }
    }

    pub fn force_open(&mut self, now: Instant) -> Option<Transition> {
        (self.state != State::ForcedOpen).then(|| self.go(State::ForcedOpen, Reason::Forced, now))
    }

    pub fn force_closed(&mut self, now: Instant) -> Option<Transition> {
        (self.state != State::Disabled).then(|| self.go(State::Disabled, Reason::Forced, now))
    }

    /// Back to normal operation: closed, with an empty window.
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        let t = self.go(State::Closed, Reason::Reset, now);
        (t.from != State::Closed).then_some(t)
    }

    fn go(&mut self, to: State, reason: Reason, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.since = now;
        self.generation += 1;
        self.half_open_started = 0;
        self.half_open_done = 0;
        self.half_open_failures = 0;
        self.half_open_slow = 0;
        if to == State::Closed || to == State::Disabled {
            self.window.clear();
        }
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn core(config: Config) -> (Core, Instant) {
        let t0 = Instant::now();
        (Core::new(config, t0), t0)
    }

    fn call(
        c: &mut Core,
        now: Instant,
        outcome: Outcome,
        took: Duration,
    ) -> (bool, Option<Transition>) {
        let (ticket, t1) = c.try_acquire(now);
        match ticket {
            Some(ticket) => {
                let t2 = c.record(ticket, outcome, took, now);
                (true, t2.or(t1))
            }
            None => (false, t1),
        }
    }

    #[test]
    fn stays_closed_below_minimum_calls() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..9 {
            assert_eq!(call(&mut c, t0, Outcome::Failure, secs(0.01)), (true, None));
        }
        assert_eq!(c.state(), State::Closed);
        let (_, t) = call(&mut c, t0, Outcome::Failure, secs(0.01));
        let t = t.expect("opens at the 10th call");
        assert_eq!((t.from, t.to), (State::Closed, State::Open));
        assert_eq!(t.reason, Reason::FailureRate(1.0));
    }

    #[test]
    fn opens_at_the_failure_threshold_not_below() {
        let (mut c, t0) = core(Config::default());
        // 4 failures in 10 calls: 40% < 50%.
        for i in 0..10 {
            let o = if i < 4 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            call(&mut c, t0, o, secs(0.01));
        }
        assert_eq!(c.state(), State::Closed);
        // One more failure: window of 11 calls, 5 failures = 45%; then 6/12 = 50%.
        call(&mut c, t0, Outcome::Failure, secs(0.01));
        assert_eq!(c.state(), State::Closed);
        let (_, t) = call(&mut c, t0, Outcome::Failure, secs(0.01));
        assert_eq!(t.map(|t| t.reason), Some(Reason::FailureRate(0.5)));
    }

    #[test]
    fn open_refuses_then_half_open_after_the_wait_then_closes() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..10 {
            call(&mut c, t0, Outcome::Failure, secs(0.01));
        }
        assert_eq!(c.state(), State::Open);
        assert_eq!(
            call(&mut c, t0 + secs(4.9), Outcome::Success, secs(0.01)),
            (false, None)
        );
        assert_eq!(c.counts().not_permitted, 1);
        // The wait elapses: the next call turns the breaker half-open and is a trial.
        let now = t0 + secs(5.0);
        let (ticket, t) = c.try_acquire(now);
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((State::Open, State::HalfOpen))
        );
        let ticket = ticket.expect("trial");
        // Only 3 trials at a time.
        let t2 = c.try_acquire(now).0.expect("trial 2");
        let t3 = c.try_acquire(now).0.expect("trial 3");
        assert!(c.try_acquire(now).0.is_none());
        assert_eq!(c.record(ticket, Outcome::Success, secs(0.01), now), None);
        assert_eq!(c.record(t2, Outcome::Success, secs(0.01), now), None);
        let t = c
            .record(t3, Outcome::Success, secs(0.01), now)
            .expect("closes");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::HalfOpen, State::Closed, Reason::TrialsSucceeded)
        );
        // Closed again with a fresh window: 9 failures do not reopen it.
        for _ in 0..9 {
            call(&mut c, now, Outcome::Failure, secs(0.01));
        }
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn failed_trials_reopen() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..10 {
            call(&mut c, t0, Outcome::Failure, secs(0.01));
        }
        let now = t0 + secs(6.0);
        call(&mut c, now, Outcome::Success, secs(0.01));
        call(&mut c, now, Outcome::Failure, secs(0.01));
        let (_, t) = call(&mut c, now, Outcome::Failure, secs(0.01));
        let t = t.expect("reopens");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!(matches!(t.reason, Reason::TrialsFailed(r) if (r - 2.0 / 3.0).abs() < 1e-9));
        assert_eq!(c.since(), now);
    }

    #[test]
    fn half_open_judges_failures_and_slowness_separately() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..10 {
            call(&mut c, t0, Outcome::Failure, secs(0.01));
        }
        let now = t0 + secs(5.0);
        // One failure, one slow success, one fast success: 1/3 failed (< 50 %)
        // and 1/3 slow (< 100 %), so the breaker closes.
        call(&mut c, now, Outcome::Failure, secs(0.01));
        call(&mut c, now, Outcome::Success, secs(1.5));
        let (_, t) = call(&mut c, now, Outcome::Success, secs(0.01));
        assert_eq!(t.map(|t| t.to), Some(State::Closed));
    }

    #[test]
    fn slow_calls_open_the_breaker() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..9 {
            call(&mut c, t0, Outcome::Success, secs(1.5));
        }
        let (_, t) = call(&mut c, t0, Outcome::Success, secs(1.5));
        assert_eq!(t.map(|t| t.reason), Some(Reason::SlowCallRate(1.0)));
    }

    #[test]
    fn late_outcomes_from_an_earlier_state_are_not_counted() {
        let (mut c, t0) = core(Config::default());
        let early = c.try_acquire(t0).0.expect("ticket");
        for _ in 0..10 {
            call(&mut c, t0, Outcome::Failure, secs(0.01));
        }
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.record(early, Outcome::Success, secs(0.01), t0), None);
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn abandoned_and_ignored_trials_free_their_slot() {
        let (mut c, t0) = core(Config::default());
        for _ in 0..10 {
            call(&mut c, t0, Outcome::Failure, secs(0.01));
        }
        let now = t0 + secs(5.0);
        let a = c.try_acquire(now).0.expect("a");
        let b = c.try_acquire(now).0.expect("b");
        let _c3 = c.try_acquire(now).0.expect("c");
        assert!(c.try_acquire(now).0.is_none());
        c.abandon(a);
        assert_eq!(c.record(b, Outcome::Ignored, secs(0.01), now), None);
        assert!(c.try_acquire(now).0.is_some());
        assert!(c.try_acquire(now).0.is_some());
        assert!(c.try_acquire(now).0.is_none());
    }

    #[test]
    fn forced_states() {
        let (mut c, t0) = core(Config::default());
        let t = c.force_open(t0).expect("forced");
        assert_eq!(
            (t.from, t.to, t.reason),
            (State::Closed, State::ForcedOpen, Reason::Forced)
        );
        assert!(!call(&mut c, t0 + secs(3600.0), Outcome::Success, secs(0.0)).0);
        c.force_closed(t0);
        for _ in 0..50 {
            assert!(call(&mut c, t0, Outcome::Failure, secs(0.0)).0);
        }
        assert_eq!(c.state(), State::Disabled);
        assert_eq!(c.state().as_str(), "closed");
        assert_eq!(c.reset(t0).map(|t| t.to), Some(State::Closed));
        assert_eq!(c.reset(t0), None);
    }

    #[test]
    fn time_based_window_forgets_old_failures() {
        let config = Config {
            window: SlidingWindow::Time(Duration::from_secs(10)),
            ..Config::default()
        };
        let (mut c, t0) = core(config);
        for i in 0..9 {
            call(
                &mut c,
                t0 + secs(f64::from(i) * 0.1),
                Outcome::Failure,
                secs(0.01),
            );
        }
        // 11 s later the old failures have left the window: 5 new calls are below the minimum.
        for i in 0..5 {
            call(
                &mut c,
                t0 + secs(11.0 + f64::from(i)),
                Outcome::Failure,
                secs(0.01),
            );
        }
        assert_eq!(c.state(), State::Closed);
        for i in 0..5 {
            call(
                &mut c,
                t0 + secs(16.0 + f64::from(i) * 0.1),
                Outcome::Failure,
                secs(0.01),
            );
        }
        assert_eq!(c.state(), State::Open);
    }
}
