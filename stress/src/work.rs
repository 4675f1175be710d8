//! The worker process itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{Error, Load, cgroup};

/// A CPU worker's duty cycle: busy for its share of each period, asleep for
/// the rest (short enough that a 5 s measurement averages many periods).
const PERIOD: Duration = Duration::from_millis(100);

/// How often the worker looks at its deadline, its parent and its ramp.
const TICK: Duration = Duration::from_millis(50);

/// Memory is taken in pieces this big, each touched whole.
const CHUNK: u64 = 1 << 20;

/// Joins the cgroup, then loads it until the deadline or the parent's end.
pub fn run(load: &Load) -> Result<(), Error> {
    if let Some(ns) = &load.cgroupns {
        cgroup::enter_namespace(ns)?;
    }
    // First, so every byte and every cycle is charged to the target.
    cgroup::join(&load.cgroup)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..load.cpu_workers {
        let mine = stop.clone();
        let busy = PERIOD * load.cpu_load_permille.min(1000) / 1000;
        let t = thread::Builder::new()
            .name(format!("cpu-{i}"))
            .spawn(move || spin(busy, &mine));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(Error::Thread(e));
            }
        }
    }
    let started = Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut held_bytes = 0u64;
    let result = loop {
        if past(load.until_ms) || orphaned(load.parent) {
            break Ok(());
        }
        let want = wanted(load, started.elapsed());
        while held_bytes < want {
            let n = CHUNK.min(want - held_bytes);
            match touched(n) {
                Some(piece) => held.push(piece),
                None => break,
            }
            held_bytes += n;
        }
        if held_bytes < want {
            break Err(Error::Allocate(want - held_bytes));
        }
        thread::sleep(TICK);
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(held);
    result
}

/// How much memory should be held `elapsed` into the run.
fn wanted(load: &Load, elapsed: Duration) -> u64 {
    if load.ramp_up_ms == 0 {
        return load.memory_bytes;
    }
    let share = (elapsed.as_millis() as f64 / load.ramp_up_ms as f64).min(1.0);
    // Whole chunks while ramping, the exact size at the end.
    let bytes = (load.memory_bytes as f64 * share) as u64;
    if share >= 1.0 {
        load.memory_bytes
    } else {
        bytes - bytes % CHUNK
    }
}

/// `n` bytes, every page written so the kernel really backs them.
fn touched(n: u64) -> Option<Vec<u8>> {
    let n = usize::try_from(n).ok()?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, 0xa5);
    Some(v)
}

fn spin(busy: Duration, stop: &AtomicBool) {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        while start.elapsed() < busy {
            // Work the optimiser cannot remove, checked now and then.
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let rest = PERIOD.saturating_sub(start.elapsed());
        if !rest.is_zero() {
            thread::sleep(rest);
        }
    }
}

fn past(until_ms: u64) -> bool {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(true, |d| d.as_millis() >= u128::from(until_ms))
}

/// The starter is gone: the worker was handed to another parent.
fn orphaned(parent: u32) -> bool {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32) != parent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(memory_bytes: u64, ramp_up_ms: u64) -> Load {
        Load {
            memory_bytes,
            ramp_up_ms,
            ..crate::idle_load()
        }
    }

    #[test]
    fn memory_ramps_in_whole_chunks_to_the_exact_size() {
        let l = load(64 * CHUNK + 5, 10_000);
        assert_eq!(wanted(&l, Duration::ZERO), 0);
        assert_eq!(wanted(&l, Duration::from_secs(5)), 32 * CHUNK);
        assert_eq!(wanted(&l, Duration::from_secs(10)), 64 * CHUNK + 5);
        assert_eq!(wanted(&l, Duration::from_secs(60)), 64 * CHUNK + 5);
        assert_eq!(wanted(&load(7, 0), Duration::ZERO), 7);
    }

    #[test]
    fn a_past_deadline_and_a_foreign_parent_both_stop() {
        assert!(past(0));
        assert!(!past(u64::MAX));
        assert!(orphaned(u32::MAX));
        let mine = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        assert!(!orphaned(mine));
    }
}
