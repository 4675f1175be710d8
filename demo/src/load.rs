//! The `load` role: a steady, open-loop request rate at the frontend for a
//! bounded time, then a summary.

use std::{collections::BTreeMap, fmt, time::Duration};

use bytes::Bytes;
use tokio::{sync::Semaphore, time::Instant};

use crate::http::Dependency;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `host:port` of the frontend.
    pub target: String,
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Each request gives up after this long.
    pub timeout: Duration,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub ok: u64,
    /// Failures by kind: `HTTP 502`, `timeout`, `connection`.
    pub errors: BTreeMap<String, u64>,
    /// Answers by what the order's payment came to (from the JSON body).
    pub payments: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(i.saturating_sub(1).min(v.len().saturating_sub(1)))
            .copied()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |n: u64| {
            if self.sent == 0 {
                0.0
            } else {
                n as f64 * 100.0 / self.sent as f64
            }
        };
        writeln!(
            f,
            "requests: {} sent, {} ok ({:.1}%), {} failed ({:.1}%)",
            self.sent,
            self.ok,
            pct(self.ok),
            self.failed(),
            pct(self.failed())
        )?;
        for (kind, n) in &self.errors {
            writeln!(f, "  failed: {kind}: {n}")?;
        }
        for (payment, n) in &self.payments {
            writeln!(f, "  payment {payment}: {n}")?;
        }
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_owned(), |d| {
                format!("{:.1}ms", d.as_secs_f64() * 1000.0)
            })
        };
        write!(
            f,
            "latency: p50 {} p95 {} p99 {} max {}",
            ms(self.percentile(50.0)),
            ms(self.percentile(95.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0))
        )
    }
}

/// Sends `rate` requests a second for `duration` (open loop: a slow target
/// does not slow the sender), at most 1 000 in flight.
pub async fn run(opts: &LoadOptions) -> Summary {
    let dep = Dependency::new("frontend", opts.target.clone());
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let in_flight = std::sync::Arc::new(Semaphore::new(1000));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summary = Summary::default();
    while start.elapsed() < opts.duration {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            *summary
                .errors
                .entry("not sent: 1000 in flight".into())
                .or_default() += 1;
            continue;
        };
        summary.sent += 1;
        let dep = dep.clone();
        let path = opts.path.clone();
        let tx = tx.clone();
        let timeout = opts.timeout;
        tokio::spawn(async move {
            let began = Instant::now();
            let result =
                tokio::time::timeout(timeout, dep.post(&path, Bytes::from_static(b"{}"))).await;
            let _ = tx.send((began.elapsed(), result));
            drop(permit);
        });
    }
    drop(tx);
    while let Some((took, result)) = rx.recv().await {
        summary.latencies.push(took);
        match result {
            Ok(Ok(answer)) => {
                summary.ok += 1;
                let payment = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("payment").and_then(|p| p.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| "unknown".into());
                *summary.payments.entry(payment).or_default() += 1;
            }
            Ok(Err(e)) => {
                let msg = e.to_string();
                let kind = match msg.rsplit_once("HTTP ") {
                    Some((_, code)) => format!("HTTP {code}"),
                    None => "connection".into(),
                };
                *summary.errors.entry(kind).or_default() += 1;
            }
            Err(_) => *summary.errors.entry("timeout".into()).or_default() += 1,
        }
    }
    summary
}
