//! Sliding windows over call outcomes: the last N calls, or the calls of the
//! last T. Both keep running totals, so recording and reading are O(1)
//! (amortized over bucket expiry for the time window).

use std::{collections::VecDeque, time::Duration, time::Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last N calls (N at least 1).
    Count(u32),
    /// The calls of the last T, in 20 buckets of T/20.
    Time(Duration),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Summary {
    fn add(&mut self, failed: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: Summary) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

#[derive(Debug)]
pub enum Window {
    Count {
        size: usize,
        /// (failed, slow) of the last `size` calls.
        ring: VecDeque<(bool, bool)>,
        total: Summary,
    },
    Time {
        bucket: Duration,
        buckets: usize,
        /// (bucket start, counts), oldest first.
        ring: VecDeque<(Instant, Summary)>,
        total: Summary,
    },
}

const TIME_BUCKETS: u32 = 20;

impl Window {
    pub fn new(kind: &SlidingWindow) -> Self {
        match *kind {
            SlidingWindow::Count(n) => {
                let size = n.max(1) as usize;
                Window::Count {
                    size,
                    ring: VecDeque::with_capacity(size),
                    total: Summary::default(),
                }
            }
            SlidingWindow::Time(d) => Window::Time {
                bucket: (d / TIME_BUCKETS).max(Duration::from_millis(1)),
                buckets: TIME_BUCKETS as usize,
                ring: VecDeque::with_capacity(TIME_BUCKETS as usize + 1),
                total: Summary::default(),
            },
        }
    }

    pub fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        match self {
            Window::Count { size, ring, total } => {
                if ring.len() == *size
                    && let Some((f, s)) = ring.pop_front()
                {
                    total.sub(Summary {
                        calls: 1,
                        failures: u64::from(f),
                        slow: u64::from(s),
                    });
                }
                ring.push_back((failed, slow));
                total.add(failed, slow);
            }
            Window::Time {
                bucket,
                ring,
                total,
                ..
            } => {
                let start_new = match ring.back() {
                    Some((start, _)) => now.saturating_duration_since(*start) >= *bucket,
                    None => true,
                };
                if start_new {
                    ring.push_back((now, Summary::default()));
                }
                if let Some((_, s)) = ring.back_mut() {
                    s.add(failed, slow);
                }
                total.add(failed, slow);
                self.expire(now);
            }
        }
    }

    pub fn summary(&mut self, now: Instant) -> Summary {
        self.expire(now);
        match self {
            Window::Count { total, .. } | Window::Time { total, .. } => *total,
        }
    }

    pub fn clear(&mut self) {
        match self {
            Window::Count { ring, total, .. } => {
                ring.clear();
                *total = Summary::default();
            }
            Window::Time { ring, total, .. } => {
                ring.clear();
                *total = Summary::default();
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        if let Window::Time {
            bucket,
            buckets,
            ring,
            total,
        } = self
        {
            let span = *bucket * *buckets as u32;
            while let Some((start, s)) = ring.front() {
                if now.saturating_duration_since(*start) >= span {
                    total.sub(*s);
                    ring.pop_front();
                } else {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let t = Instant::now();
        let mut w = Window::new(&SlidingWindow::Count(3));
        w.record(t, true, false);
        w.record(t, true, true);
        w.record(t, false, false);
        assert_eq!(
            w.summary(t),
            Summary {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        w.record(t, false, false);
        assert_eq!(
            w.summary(t),
            Summary {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.clear();
        assert_eq!(w.summary(t), Summary::default());
    }

    #[test]
    fn time_window_expires_whole_buckets() {
        let t = Instant::now();
        let mut w = Window::new(&SlidingWindow::Time(Duration::from_secs(2)));
        w.record(t, true, false);
        w.record(t + Duration::from_millis(1500), false, false);
        assert_eq!(w.summary(t + Duration::from_millis(1900)).calls, 2);
        assert_eq!(
            w.summary(t + Duration::from_millis(2000)),
            Summary {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.summary(t + Duration::from_secs(10)), Summary::default());
    }
}
