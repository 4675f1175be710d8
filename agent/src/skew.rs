//! Kube mode: how far this node's clock is from the API server's, read from
//! the `Date` of a cheap request every 30 s.
//!
//! Deadlines (`expiresAt`) are written against the controller's clock, which
//! like the server's is kept by the cluster; an agent whose clock lags would
//! keep faults past their end, and one that runs ahead would take a stale
//! entry for a live one. The agent's clock ([`ServerAware`]) takes the later
//! of its own time and the server's as now, so a skew only ever ends faults
//! sooner, and the skew is reported in the NodeFaults status and logged.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

use crate::agent::Clock;

/// Below this, a skew is measurement noise (`Date` has whole seconds) and
/// neither corrects the clock nor is reported.
pub const TOLERATED: SignedDuration = SignedDuration::from_secs(2);

const MEASURE_EVERY: Duration = Duration::from_secs(30);

/// A round trip longer than this says too little about when `Date` was
/// written.
const SLOWEST_USEFUL: SignedDuration = SignedDuration::from_secs(1);

const UNKNOWN: i64 = i64::MIN;

/// The last skew measured (server minus local), shared with the clock.
#[derive(Debug, Clone)]
pub struct Skew(Arc<AtomicI64>);

impl Default for Skew {
    fn default() -> Self {
        Skew(Arc::new(AtomicI64::new(UNKNOWN)))
    }
}

impl Skew {
    pub fn get(&self) -> Option<SignedDuration> {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => None,
            ms => Some(SignedDuration::from_millis(ms)),
        }
    }

    fn set(&self, skew: SignedDuration) {
        let ms = i64::try_from(skew.as_millis()).unwrap_or(i64::MAX);
        self.0.store(ms.max(UNKNOWN + 1), Ordering::Relaxed);
    }

    /// What the status reports: whole seconds, only past [`TOLERATED`].
    pub fn reported(&self) -> Option<i64> {
        self.get()
            .filter(|s| s.abs() >= TOLERATED)
            .map(|s| s.as_secs())
    }
}

/// The server's clock minus ours, from a response's `Date` and when the
/// request went out and its answer came; None when `Date` does not parse or
/// the round trip was too slow to tell.
pub fn skew_of(date: &str, sent: Timestamp, received: Timestamp) -> Option<SignedDuration> {
    let trip = received.duration_since(sent);
    if trip.is_negative() || trip > SLOWEST_USEFUL {
        return None;
    }
    let server = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(date)
        .ok()?;
    // `Date` is truncated to the second: the server's time was, on average,
    // half a second past it, when our clock stood mid-way through the trip.
    let server = server.checked_add(SignedDuration::from_millis(500)).ok()?;
    let ours = sent.checked_add(trip / 2).ok()?;
    Some(server.duration_since(ours))
}

/// Local time, moved forward to the server's when it is ahead by more than
/// [`TOLERATED`]: never later deadlines than either clock gives.
#[derive(Debug, Clone, Default)]
pub struct ServerAware {
    pub skew: Skew,
}

impl Clock for ServerAware {
    fn now(&self) -> Timestamp {
        let local = Timestamp::now();
        match self.skew.get() {
            Some(s) if s >= TOLERATED => local.checked_add(s).unwrap_or(local),
            _ => local,
        }
    }
}

/// Measures the skew against `client`'s server every 30 s, into `skew` and
/// `reported` (for the status), logging when it crosses [`TOLERATED`].
pub async fn measure(client: kube::Client, skew: Skew, reported: watch::Sender<Option<i64>>) {
    loop {
        let request = http::Request::get("/version").body(kube::client::Body::empty());
        let sent = Timestamp::now();
        let answer = match request {
            Ok(r) => client.send(r).await,
            Err(e) => Err(kube::Error::HttpError(e)),
        };
        let received = Timestamp::now();
        let measured = answer.ok().and_then(|r| {
            let date = r.headers().get(http::header::DATE)?.to_str().ok()?;
            skew_of(date, sent, received)
        });
        if let Some(s) = measured {
            let was = skew.reported();
            skew.set(s);
            let now = skew.reported();
            if now != was {
                match now {
                    Some(secs) => tracing::warn!(
                        skew_seconds = secs,
                        "this node's clock is {}s {} the API server's: deadlines are judged by the later of the two",
                        secs.abs(),
                        if secs > 0 { "behind" } else { "ahead of" }
                    ),
                    None => tracing::info!("this node's clock agrees with the API server's again"),
                }
            }
            reported.send_if_modified(|r| std::mem::replace(r, now) != now);
        }
        tokio::time::sleep(MEASURE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn a_lagging_node_sees_the_server_ahead() {
        // Our clock says 12:00:00.1 mid-trip; the server wrote 12:00:30.
        let s = skew_of(
            "Mon, 07 Dec 2026 12:00:30 GMT",
            at("2026-12-07T12:00:00Z"),
            at("2026-12-07T12:00:00.2Z"),
        );
        assert_eq!(s, Some(SignedDuration::from_millis(30_400)));
    }

    #[test]
    fn slow_trips_and_bad_dates_tell_nothing() {
        let sent = at("2026-12-07T12:00:00Z");
        let date = "Mon, 07 Dec 2026 12:00:00 GMT";
        assert_eq!(skew_of(date, sent, at("2026-12-07T12:00:03Z")), None);
        assert_eq!(skew_of(date, at("2026-12-07T12:00:03Z"), sent), None);
        assert_eq!(skew_of("yesterday", sent, sent), None);
    }

    #[test]
    fn only_a_skew_past_the_tolerance_is_reported_or_corrects_the_clock() {
        let skew = Skew::default();
        assert_eq!(skew.reported(), None);
        skew.set(SignedDuration::from_millis(1_400));
        assert_eq!(skew.reported(), None, "noise");
        let clock = ServerAware { skew: skew.clone() };
        let drift = clock.now().duration_since(Timestamp::now()).abs();
        assert!(drift < SignedDuration::from_secs(30), "{drift:?}");
        skew.set(SignedDuration::from_secs(-90));
        assert_eq!(skew.reported(), Some(-90));
        let drift = clock.now().duration_since(Timestamp::now()).abs();
        assert!(
            drift < SignedDuration::from_secs(30),
            "a server behind never moves deadlines later: {drift:?}"
        );
        skew.set(SignedDuration::from_secs(90));
        assert_eq!(skew.reported(), Some(90));
        let ahead = clock.now().duration_since(Timestamp::now());
        assert!(ahead > SignedDuration::from_secs(60), "{ahead:?}");
    }
}
