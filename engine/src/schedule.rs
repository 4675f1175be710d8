//! When a scheduled experiment runs, read from its cron schedule against
//! times the caller gives (no clock here).
//!
//! Runs never overlap: a start time that passes while a run is still going
//! (or while nothing was following the schedule) is missed, not made up
//! later — a game day meant for 10:00 should not start at 10:40. This is a
//! CronJob with `concurrencyPolicy: Forbid` and no starting deadline slack.

use faultline_api::CronSchedule;
use jiff::Timestamp;

/// Counting missed start times stops here, so a run that lasted far longer
/// than a per-minute schedule's period costs a bounded amount of work.
pub const MISSED_COUNT_LIMIT: u32 = 10_000;

/// The next time a schedule starts a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextStart {
    pub at: Timestamp,
    /// Start times after the previous start that passed without a run (at
    /// most [`MISSED_COUNT_LIMIT`]).
    pub missed: u32,
}

/// The next start strictly after `now`; `previous` is when the last run
/// started (None before the first), to count what was missed since. None
/// when the schedule never fires again (within the next five years).
pub fn next_start(
    schedule: &CronSchedule,
    previous: Option<Timestamp>,
    now: Timestamp,
) -> Option<NextStart> {
    let at = schedule.next_after(now)?;
    let mut missed = 0;
    if let Some(previous) = previous {
        let mut t = previous;
        while missed < MISSED_COUNT_LIMIT {
            match schedule.next_after(t) {
                Some(n) if n <= now => {
                    missed += 1;
                    t = n;
                }
                _ => break,
            }
        }
    }
    Some(NextStart { at, missed })
}

/// The next `n` start times after `after`, for showing a schedule.
pub fn upcoming(schedule: &CronSchedule, after: Timestamp, n: usize) -> Vec<Timestamp> {
    let mut out = Vec::with_capacity(n);
    let mut t = after;
    while out.len() < n {
        match schedule.next_after(t) {
            Some(next) => {
                out.push(next);
                t = next;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn cron(s: &str) -> CronSchedule {
        s.parse().expect("schedule")
    }

    #[test]
    fn first_start_is_the_next_slot_after_now() {
        let s = cron("0 10 * * 1-5");
        // Wednesday 2026-12-02 09:59:30 → 10:00 the same day.
        let n = next_start(&s, None, ts("2026-12-02T09:59:30Z")).expect("fires");
        assert_eq!(n.at, ts("2026-12-02T10:00:00Z"));
        assert_eq!(n.missed, 0);
        // Exactly on the slot: that one is taken as started, the next is Thursday.
        let n = next_start(&s, None, ts("2026-12-02T10:00:00Z")).expect("fires");
        assert_eq!(n.at, ts("2026-12-03T10:00:00Z"));
    }

    #[test]
    fn a_run_longer_than_the_period_misses_slots_instead_of_overlapping() {
        let s = cron("*/15 * * * *");
        // Started at 10:00, ended 10:47: 10:15, 10:30 and 10:45 were missed.
        let n = next_start(
            &s,
            Some(ts("2026-12-02T10:00:00Z")),
            ts("2026-12-02T10:47:00Z"),
        )
        .expect("fires");
        assert_eq!(n.at, ts("2026-12-02T11:00:00Z"));
        assert_eq!(n.missed, 3);
        // A run that fits its period misses nothing.
        let n = next_start(
            &s,
            Some(ts("2026-12-02T10:00:00Z")),
            ts("2026-12-02T10:05:00Z"),
        )
        .expect("fires");
        assert_eq!((n.at, n.missed), (ts("2026-12-02T10:15:00Z"), 0));
    }

    #[test]
    fn missed_counting_is_bounded() {
        let s = cron("* * * * *");
        let n = next_start(
            &s,
            Some(ts("2020-01-01T00:00:00Z")),
            ts("2026-01-01T00:00:00Z"),
        )
        .expect("fires");
        assert_eq!(n.missed, MISSED_COUNT_LIMIT);
        assert_eq!(n.at, ts("2026-01-01T00:01:00Z"));
    }

    #[test]
    fn upcoming_lists_consecutive_slots() {
        let s = cron("30 9 * * MON");
        assert_eq!(
            upcoming(&s, ts("2026-12-02T00:00:00Z"), 3),
            vec![
                ts("2026-12-07T09:30:00Z"),
                ts("2026-12-14T09:30:00Z"),
                ts("2026-12-21T09:30:00Z"),
            ]
        );
    }

    #[test]
    fn schedule_is_read_from_the_spec() {
        let doc = "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: weekly, namespace: demo}
spec:
  duration: 1m
  schedule: \"0 10 * * 1\"
  targets:
    t: {labels: {app: a}}
  faults:
    - {name: f, target: t, latency: {delay: 10ms}}
";
        let e: faultline_api::Experiment = faultline_api::parse_one(doc.as_bytes()).expect("valid");
        assert_eq!(
            e.spec.schedule.as_ref().map(CronSchedule::as_str),
            Some("0 10 * * 1")
        );
    }
}
