//! The circuit breaker as a tower layer, with a handle to read and force it.

mod core;
mod window;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::{Context as OtelContext, KeyValue, trace::TraceContextExt};
use tower::{Layer, Service};

pub use self::core::{Config, Counts, Outcome, Reason, State, Transition};
use self::core::{Core, Ticket};
pub use self::window::SlidingWindow;
use crate::{BoxError, telemetry::Instruments};

/// Decides what a call's result means to the breaker.
pub type Classifier<Res> = Arc<dyn Fn(&Result<Res, BoxError>) -> Outcome + Send + Sync>;

/// The call was refused because the breaker is open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit breaker {name} is {state}: call not permitted")]
pub struct BreakerOpen {
    pub name: Arc<str>,
    pub state: &'static str,
}

struct Shared {
    name: Arc<str>,
    core: Mutex<Core>,
    instruments: Instruments,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves counters, not invariants, half
        // updated; keep serving rather than poisoning every later call.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, cx: &OtelContext, t: &Transition) {
        let span = cx.span();
        span.add_event(
            "circuit_breaker.state_change",
            vec![
                KeyValue::new("circuit_breaker.name", self.name.to_string()),
                KeyValue::new("circuit_breaker.state.from", t.from.as_str()),
                KeyValue::new("circuit_breaker.state.to", t.to.as_str()),
                KeyValue::new("circuit_breaker.reason", t.reason.to_string()),
            ],
        );
        self.instruments.transition(&self.name, t);
    }
}

/// Reads and steers one breaker; cheap to clone.
#[derive(Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

impl BreakerHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn state(&self) -> State {
        self.shared.lock().state()
    }

    /// When the breaker entered its current state (on tokio's clock).
    pub fn since(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.shared.lock().since())
    }

    /// Call counts since the breaker was created.
    pub fn counts(&self) -> Counts {
        self.shared.lock().counts()
    }

    /// Failure and slow-call rates over the window (None below the minimum number of calls).
    pub fn rates(&self) -> Option<(f64, f64)> {
        self.shared.lock().rates(now())
    }

    /// Refuses every call until `reset`.
    pub fn force_open(&self) {
        let t = self.shared.lock().force_open(now());
        if let Some(t) = t {
            self.shared.report(&OtelContext::current(), &t);
        }
    }

    /// Permits every call and counts nothing until `reset`.
    pub fn force_closed(&self) {
        let t = self.shared.lock().force_closed(now());
        if let Some(t) = t {
            self.shared.report(&OtelContext::current(), &t);
        }
    }

    /// Back to normal: closed with an empty window.
    pub fn reset(&self) {
        let t = self.shared.lock().reset(now());
        if let Some(t) = t {
            self.shared.report(&OtelContext::current(), &t);
        }
    }
}

/// tokio's clock, so tests can pause and advance time instead of sleeping.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Builds `CircuitBreaker` services that all share one breaker.
pub struct CircuitBreakerLayer<Res> {
    shared: Arc<Shared>,
    classify: Classifier<Res>,
}

impl<Res> Clone for CircuitBreakerLayer<Res> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Res> std::fmt::Debug for CircuitBreakerLayer<Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<Res> CircuitBreakerLayer<Res> {
    /// A breaker named `name` (reported as `circuit_breaker.name`). Errors of
    /// the inner service count as failures, responses as successes, unless
    /// `classify` says otherwise.
    pub fn new(name: impl Into<Arc<str>>, config: Config) -> Self {
        Self::with_instruments(name, config, Instruments::global())
    }

    pub fn with_instruments(
        name: impl Into<Arc<str>>,
        config: Config,
        instruments: Instruments,
    ) -> Self {
        let name = name.into();
        instruments.state(&name, State::Closed);
        CircuitBreakerLayer {
            shared: Arc::new(Shared {
                name,
                core: Mutex::new(Core::new(config, now())),
                instruments,
            }),
            classify: Arc::new(|r: &Result<Res, BoxError>| match r {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            }),
        }
    }

    /// Decides per result whether it is a success, a failure, or not counted
    /// (e.g. HTTP 5xx as failures, 4xx ignored).
    pub fn classify(
        mut self,
        f: impl Fn(&Result<Res, BoxError>) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(f);
        self
    }

    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, Res> Layer<S> for CircuitBreakerLayer<Res> {
    type Service = CircuitBreaker<S, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

pub struct CircuitBreaker<S, Res> {
    inner: S,
    shared: Arc<Shared>,
    classify: Classifier<Res>,
}

impl<S: Clone, Res> Clone for CircuitBreaker<S, Res> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S, Res> std::fmt::Debug for CircuitBreaker<S, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S, Req, Res> Service<Req> for CircuitBreaker<S, Res>
where
    S: Service<Req, Response = Res>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Res, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let otel = OtelContext::current();
        let started = now();
        // The state reported is the one the decision was made in, under the
        // same lock: another call may change it right after.
        let (ticket, transition, state) = {
            let mut core = self.shared.lock();
            let (ticket, transition) = core.try_acquire(started);
            (ticket, transition, core.state())
        };
        if let Some(t) = &transition {
            self.shared.report(&otel, t);
        }
        let span = otel.span();
        span.set_attribute(KeyValue::new(
            "circuit_breaker.name",
            self.shared.name.to_string(),
        ));
        span.set_attribute(KeyValue::new("circuit_breaker.state", state.as_str()));
        let Some(ticket) = ticket else {
            self.shared
                .instruments
                .call(&self.shared.name, "not_permitted");
            let err = BreakerOpen {
                name: self.shared.name.clone(),
                state: state.as_str(),
            };
            return Box::pin(async move { Err(err.into()) });
        };
        let fut = self.inner.call(req);
        let guard = TicketGuard {
            shared: self.shared.clone(),
            ticket: Some(ticket),
        };
        let classify = self.classify.clone();
        Box::pin(async move {
            let mut guard = guard;
            let result = fut.await.map_err(Into::into);
            let finished = now();
            let outcome = classify(&result);
            let elapsed: Duration = finished.saturating_duration_since(started);
            let shared = guard.shared.clone();
            let transition = guard
                .ticket
                .take()
                .and_then(|ticket| shared.lock().record(ticket, outcome, elapsed, finished));
            let label = match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Ignored => "ignored",
            };
            shared.instruments.call(&shared.name, label);
            if elapsed >= shared.lock().config().slow_call_duration {
                shared.instruments.call(&shared.name, "slow");
            }
            if let Some(t) = transition {
                shared.report(&otel, &t);
            }
            result
        })
    }
}

/// Frees a half-open trial slot when a call's future is dropped unfinished.
struct TicketGuard {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.lock().abandon(ticket);
        }
    }
}
