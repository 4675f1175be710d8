//! Sleeps that end when they are due, for injected latency.
//!
//! Tokio's timer wheel ticks in milliseconds and rounds every deadline up to
//! the next tick, so a 100 ms delay took 100–101 ms before a busy scheduler
//! added its share: too coarse for a fault that must be what was asked
//! (±2 %). One thread keeps the pending deadlines in a heap and waits for
//! the earliest with a futex timeout (high-resolution, but late by the
//! kernel's timer slack and a wake-up), spins the last 200 µs, then wakes
//! the sleepers that are due. One thread for every connection of every
//! proxy; it spins only in those last microseconds.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{
        OnceLock,
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

/// A sleeper, ordered by deadline (then by arrival, for a total order).
#[derive(Debug)]
struct Entry {
    due: Instant,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The last stretch before a deadline, waited by spinning: a futex timeout
/// wakes 50–250 µs late on a busy machine, a spin on this one thread not.
const SPIN: Duration = Duration::from_micros(200);

/// A deadline and whom to wake at it.
type Request = (Instant, oneshot::Sender<()>);

static TIMER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();

fn timer() -> Option<&'static mpsc::Sender<Request>> {
    TIMER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("proxy-timer".into())
                .spawn(move || run(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn run(requests: &mpsc::Receiver<Request>) {
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.due <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                // A sleeper that was dropped (cancelled) is not waiting.
                let _ = e.done.send(());
            }
        }
        let next = match heap.peek() {
            // Woken early by the futex's slack at most; the rest is spun.
            Some(Reverse(e)) if e.due.saturating_duration_since(now) <= SPIN => {
                while Instant::now() < e.due {
                    std::hint::spin_loop();
                }
                continue;
            }
            Some(Reverse(e)) => requests.recv_timeout(e.due.saturating_duration_since(now) - SPIN),
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((due, done)) => {
                seq += 1;
                heap.push(Reverse(Entry { due, seq, done }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Completes at `due` (within tens of microseconds), or at once if it has
/// passed. Falls back to tokio's timer if the thread cannot be started.
pub(crate) async fn sleep_until(due: Instant) {
    if due <= Instant::now() {
        return;
    }
    let (done, woken) = oneshot::channel();
    match timer() {
        Some(t) if t.send((due, done)).is_ok() => {
            let _ = woken.await;
        }
        _ => tokio::time::sleep_until(due.into()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_end_in_order_and_not_early() {
        let start = Instant::now();
        let mut handles = Vec::new();
        for ms in [30u64, 10, 20] {
            handles.push(tokio::spawn(async move {
                let due = start + Duration::from_millis(ms);
                sleep_until(due).await;
                (ms, Instant::now() >= due)
            }));
        }
        for h in handles {
            let (ms, not_early) = h.await.expect("task");
            assert!(not_early, "the {ms} ms sleep ended early");
        }
        // A deadline in the past completes at once.
        sleep_until(start).await;
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_the_others_alone() {
        let due = Instant::now() + Duration::from_millis(20);
        let cancelled = tokio::time::timeout(Duration::from_millis(1), sleep_until(due)).await;
        assert!(cancelled.is_err());
        sleep_until(due).await;
        assert!(Instant::now() >= due);
    }
}
