//! What a failed reconcile means, and when to try again (pure).
//!
//! A permanent refusal (403, 413, 422, …) will be refused again as it is:
//! it is shown on the Experiment as a `Degraded` condition with the API's
//! message and retried slowly. A transient one (a conflict, 429, a 5xx, a
//! broken connection) is retried soon. Both back off exponentially per
//! Experiment, with jitter so that many failing together spread out.

use std::time::Duration;

use kube::runtime::finalizer;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("the Kubernetes API call failed")]
    Kube(#[source] kube::Error),
    #[error("the experiment has no {0}")]
    Malformed(&'static str),
    #[error("the finalizer could not run")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) use faultline_telemetry::error_chain as chain;

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Permanent,
    Transient,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Permanent => "permanent",
            Kind::Transient => "transient",
        }
    }
}

/// A failure as the metrics and the `Degraded` condition show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    pub kind: Kind,
    /// The API's reason (`Forbidden`, `Invalid`, …), or what went wrong.
    pub reason: String,
    /// The HTTP status, when the API answered.
    pub code: Option<u16>,
    pub message: String,
}

fn of_kube(e: &kube::Error) -> Classified {
    match e {
        kube::Error::Api(s) => {
            let kind = match s.code {
                // Refused as asked: asking again the same way changes nothing.
                400 | 403 | 405 | 406 | 413 | 415 | 422 => Kind::Permanent,
                _ => Kind::Transient,
            };
            Classified {
                kind,
                reason: if s.reason.is_empty() {
                    format!("Status{}", s.code)
                } else {
                    s.reason.clone()
                },
                code: Some(s.code),
                message: s.message.clone(),
            }
        }
        other => Classified {
            kind: Kind::Transient,
            reason: "Unreachable".into(),
            code: None,
            message: faultline_telemetry::error_chain(other).to_string(),
        },
    }
}

pub(crate) fn classify(e: &Error) -> Classified {
    match e {
        Error::Kube(k) => of_kube(k),
        Error::Malformed(what) => Classified {
            kind: Kind::Permanent,
            reason: "Malformed".into(),
            code: None,
            message: format!("the experiment has no {what}"),
        },
        Error::Finalizer(f) => match f.as_ref() {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                classify(inner)
            }
            finalizer::Error::AddFinalizer(k) | finalizer::Error::RemoveFinalizer(k) => of_kube(k),
            other => Classified {
                kind: Kind::Permanent,
                reason: "Finalizer".into(),
                code: None,
                message: other.to_string(),
            },
        },
    }
}

/// How long to wait before the `failures`-th retry in a row (1-based) of a
/// failure of `kind`; `jitter` in [0, 1) spreads it by ±25 %.
pub(crate) fn backoff(kind: Kind, failures: u32, jitter: f64) -> Duration {
    let (first, most) = match kind {
        Kind::Transient => (Duration::from_secs(1), Duration::from_secs(60)),
        // A run is bounded in time: a refusal mended (a role fixed) is
        // picked up within a minute, not after the run has long ended.
        Kind::Permanent => (Duration::from_secs(5), Duration::from_secs(60)),
    };
    let doubled = first.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled
        .min(most)
        .mul_f64(0.75 + jitter.clamp(0.0, 1.0) * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("refused", reason)
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn refusals_are_permanent_and_trouble_is_transient() {
        for (code, kind) in [
            (403, Kind::Permanent),
            (413, Kind::Permanent),
            (422, Kind::Permanent),
            (409, Kind::Transient),
            (429, Kind::Transient),
            (500, Kind::Transient),
            (503, Kind::Transient),
        ] {
            let c = classify(&api(code, "Why"));
            assert_eq!((c.kind, c.code), (kind, Some(code)), "{code}");
            assert_eq!(c.reason, "Why");
        }
        let wrapped = Error::Finalizer(Box::new(finalizer::Error::ApplyFailed(api(
            403,
            "Forbidden",
        ))));
        assert_eq!(classify(&wrapped).kind, Kind::Permanent);
    }

    #[test]
    fn retries_back_off_exponentially_to_a_ceiling_with_jitter() {
        let s = Duration::from_secs;
        let mid = |k, n| backoff(k, n, 0.5);
        assert_eq!(mid(Kind::Transient, 1), s(1));
        assert_eq!(mid(Kind::Transient, 3), s(4));
        assert_eq!(mid(Kind::Transient, 30), s(60));
        assert_eq!(mid(Kind::Permanent, 1), s(5));
        assert_eq!(mid(Kind::Permanent, 3), s(20));
        assert_eq!(mid(Kind::Permanent, 30), s(60));
        assert_eq!(backoff(Kind::Transient, 1, 0.0), Duration::from_millis(750));
        assert!(backoff(Kind::Transient, 1, 0.999) < Duration::from_millis(1250));
    }
}
