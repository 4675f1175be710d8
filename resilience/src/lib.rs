//! Resilience layers for tower services, reporting what they do through
//! OpenTelemetry: every call through a circuit breaker sets
//! `circuit_breaker.name` and `circuit_breaker.state` on the current span;
//! every state change adds a `circuit_breaker.state_change` event (from, to,
//! reason); bulkhead rejections, retries and fallbacks are span events too;
//! and metrics count calls by outcome, transitions, rejections, retries and
//! fallbacks, with a gauge of each breaker's state.
//!
//! # Why a circuit breaker of our own
//!
//! We evaluated the candidates (late 2026):
//! - `tower-resilience-circuitbreaker` 0.14 has the right API shape, but its
//!   count-based window does not slide (counts grow until a state change, so
//!   after 1 000 successes it takes ~1 000 failures to trip), its time window
//!   keeps every call, it reads `std::time::Instant` directly (no controlled
//!   clock in tests) and one failed half-open call reopens it outright.
//! - `failsafe` 1.3 (last release 2024) has no tower layer, no count window,
//!   no slow-call rate, and lets unlimited calls through half-open.
//! - `recloser` 1.4 is count-based only, with no slow calls, no half-open
//!   limit, no state listeners and no forced states.
//!
//! Ours is a pure state machine (`breaker::Config`, fed outcomes and times)
//! behind a short `std::sync::Mutex`, on tokio's clock so tests pause and
//! advance time instead of sleeping.
//!
//! # Recommended order
//!
//! Outermost first: `Fallback` → `CircuitBreaker` → `Timeout` → the call, and
//! for idempotent calls `Retry` → `Bulkhead` → `Timeout` → the call.
//! The timeout sits inside the breaker so timeouts count as failures; the
//! fallback sits outside so it also answers when the breaker refuses a call;
//! the retry sits outside the bulkhead so each attempt takes its own slot and
//! a full bulkhead fails fast instead of holding a slot while backing off.
//!
//! ```
//! use std::time::Duration;
//! use faultline_resilience::{BoxError, breaker::{CircuitBreakerLayer, Config}, fallback::FallbackLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn, timeout::TimeoutLayer};
//!
//! # async fn demo() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::<&'static str>::new("payments", Config::default());
//! let handle = breaker.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(FallbackLayer::new("payments", |_err: BoxError| Ok::<_, BoxError>("payment deferred")))
//!     .layer(breaker)
//!     .layer(TimeoutLayer::new(Duration::from_millis(250)))
//!     .service(service_fn(|_req: ()| async { Ok::<_, BoxError>("paid") }));
//! assert_eq!(svc.oneshot(()).await?, "paid");
//! assert_eq!(handle.state().as_str(), "closed");
//! # Ok(()) }
//! ```

pub mod breaker;
pub mod bulkhead;
pub mod fallback;
pub mod retry;
pub mod telemetry;

pub use tower::BoxError;
