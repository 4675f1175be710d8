//! Leader election on a `coordination.k8s.io/v1` Lease: of several
//! replicas, one writes.
//!
//! Every replica watches and is ready (a warm standby); only the holder of
//! the Lease reconciles. The holder renews every third of the lease and
//! steps down on its own when no renewal has succeeded for two thirds of
//! it, so it stops writing a third of a lease before anyone else may take
//! over; on SIGTERM it lets go of the Lease, and a standby takes it at its
//! next try. Expiry is judged by how long this replica has seen the same
//! record unchanged (its monotonic clock), never by comparing another
//! node's `renewTime` with ours, so clock skew cannot hand the Lease over
//! early. Writes go through `resourceVersion` preconditions: of two
//! replicas taking over at once, one wins.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, api::PostParams};
use tokio::{sync::watch, time::Instant};

/// What a replica does next with the Lease it sees (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// No Lease yet: create it, holding it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free, or its holder has not renewed for a whole lease: take it.
    TakeOver,
    /// Another's, and alive.
    Wait,
}

/// The parts of a Lease an election reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
    pub transitions: i32,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time.map(|t| t.0),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// The move for `me`, seeing `record` unchanged for `unchanged_for`.
pub(crate) fn next_move(me: &str, record: Option<&Record>, unchanged_for: Duration) -> Move {
    let Some(r) = record else {
        return Move::Create;
    };
    match r.holder.as_deref() {
        Some(h) if h == me => Move::Renew,
        None => Move::TakeOver,
        // A whole lease of the holder's own length without a renewal seen.
        Some(_) if unchanged_for > r.duration => Move::TakeOver,
        Some(_) => Move::Wait,
    }
}

/// Whether a holder whose last successful renewal was `since_renewal` ago
/// still leads: not past two thirds of the lease, leaving the last third
/// for what it had under way to finish before a standby may take over.
pub(crate) fn still_leads(since_renewal: Duration, lease: Duration) -> bool {
    since_renewal < lease * 2 / 3
}

/// One replica's election.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease: Duration,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease: Duration) -> Elector {
        Elector {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease: lease.max(Duration::from_secs(3)),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.lease.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One try: reads the Lease and creates, renews or takes it over when
    /// it should. True when this replica holds it now (the write went
    /// through); Err when the API could not be read or written.
    async fn attempt(&self, seen: &mut Option<(Record, Instant)>) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let record = current.as_ref().map(Record::of);
        // How long this record has looked the same to us.
        let unchanged_for = match (&record, seen.as_ref()) {
            (Some(r), Some((old, at))) if old == r => at.elapsed(),
            (Some(r), _) => {
                *seen = Some((r.clone(), Instant::now()));
                Duration::ZERO
            }
            (None, _) => Duration::ZERO,
        };
        match next_move(&self.identity, record.as_ref(), unchanged_for) {
            Move::Wait => Ok(false),
            Move::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Another replica created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Move::Renew | Move::TakeOver => {
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let old = lease.spec.clone().unwrap_or_default();
                let mine = old.holder_identity.as_deref() == Some(self.identity.as_str());
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!mine);
                let acquired = if mine { old.acquire_time } else { None };
                lease.spec = Some(self.spec(now, acquired, transitions));
                // With the resourceVersion read: a concurrent change wins.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Runs the election until `stop` resolves, publishing on `leading`
    /// whether this replica may write; then lets go of the Lease if held.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut seen = None;
        let mut renewed: Option<Instant> = None;
        let every = self.lease / 3;
        tokio::pin!(stop);
        loop {
            let held = match self.attempt(&mut seen).await {
                Ok(true) => {
                    renewed = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    renewed = None;
                    false
                }
                Err(e) => {
                    let leads = renewed.is_some_and(|t| still_leads(t.elapsed(), self.lease));
                    if renewed.is_some() {
                        tracing::warn!(error = %e, "cannot renew the leader lease");
                    } else {
                        tracing::debug!(error = %e, "cannot read the leader lease");
                    }
                    leads
                }
            };
            if *leading.borrow() != held {
                if held {
                    tracing::info!(identity = %self.identity, lease = %self.name, "leading");
                } else {
                    tracing::warn!(identity = %self.identity, lease = %self.name, "not leading: standing by");
                }
                leading.send_replace(held);
            }
            // The holder's next renewal, or a standby's next look.
            let wait = match renewed {
                Some(t) if held => (t + every).saturating_duration_since(Instant::now()),
                _ => every,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => break,
            }
        }
        leading.send_replace(false);
        if renewed.is_some() {
            self.release().await;
        }
    }

    /// Lets go of the Lease if this replica still holds it: a standby takes
    /// it at its next try instead of waiting for it to expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "let go of the leader lease"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot let go of the leader lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: &str) -> Record {
        Record {
            holder: Some(h.into()),
            renewed: Some(Timestamp::UNIX_EPOCH),
            duration: Duration::from_secs(15),
            transitions: 0,
        }
    }

    #[test]
    fn a_lease_is_taken_when_free_or_dead_and_left_while_alive() {
        let s = Duration::from_secs;
        assert_eq!(next_move("a", None, s(0)), Move::Create);
        assert_eq!(next_move("a", Some(&held_by("a")), s(100)), Move::Renew);
        assert_eq!(next_move("a", Some(&held_by("b")), s(10)), Move::Wait);
        assert_eq!(next_move("a", Some(&held_by("b")), s(15)), Move::Wait);
        assert_eq!(next_move("a", Some(&held_by("b")), s(16)), Move::TakeOver);
        let mut free = held_by("b");
        free.holder = None;
        assert_eq!(next_move("a", Some(&free), s(0)), Move::TakeOver);
    }

    #[test]
    fn a_holder_that_cannot_renew_steps_down_a_third_of_a_lease_early() {
        let lease = Duration::from_secs(15);
        assert!(still_leads(Duration::from_secs(9), lease));
        assert!(!still_leads(Duration::from_secs(10), lease));
    }
}
