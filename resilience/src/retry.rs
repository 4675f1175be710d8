//! A retry policy for tower's `Retry`: only retryable outcomes, exponential
//! backoff with jitter, and a budget so that retries cannot multiply load on
//! a dependency that is already failing.

use std::{sync::Arc, time::Duration};

use opentelemetry::{Context as OtelContext, KeyValue, trace::TraceContextExt};
use tower::retry::{
    Policy,
    backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, InvalidBackoff, MakeBackoff},
    budget::{Budget, TpsBudget},
};
use tower::util::rng::HasherRng;

use crate::{BoxError, telemetry::Instruments};

/// Whether a result is worth another attempt.
pub type Retryable<Res> = Arc<dyn Fn(&Result<Res, BoxError>) -> bool + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 3.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each time. Default 50 ms.
    pub min_backoff: Duration,
    /// The longest backoff. Default 1 s.
    pub max_backoff: Duration,
    /// Random share of each backoff (0.0–100.0 in tower's terms is 0–1 here). Default 0.5.
    pub jitter: f64,
    /// Retries allowed as a share of first attempts over `budget_window`. Default 0.2 (20 %).
    pub budget_ratio: f32,
    /// Retries always allowed per second, whatever the ratio. Default 10.
    pub budget_min_per_second: u32,
    /// The window the budget is computed over (1 s to 60 s). Default 10 s.
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            jitter: 0.5,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// Use with `tower::retry::RetryLayer::new(policy)`; requests must be cloneable.
pub struct RetryPolicy<Res> {
    name: Arc<str>,
    max_attempts: u32,
    /// Attempts made for the current request (0 on the layer's own copy).
    attempts: u32,
    budget: Arc<TpsBudget>,
    maker: ExponentialBackoffMaker<HasherRng>,
    backoff: Option<ExponentialBackoff<HasherRng>>,
    retryable: Retryable<Res>,
    instruments: Instruments,
}

impl<Res> Clone for RetryPolicy<Res> {
    fn clone(&self) -> Self {
        RetryPolicy {
            name: self.name.clone(),
            max_attempts: self.max_attempts,
            attempts: self.attempts,
            budget: self.budget.clone(),
            maker: self.maker.clone(),
            backoff: self.backoff.clone(),
            retryable: self.retryable.clone(),
            instruments: self.instruments.clone(),
        }
    }
}

impl<Res> std::fmt::Debug for RetryPolicy<Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("name", &self.name)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<Res> RetryPolicy<Res> {
    /// Retries errors (not responses) by default; see `retry_if`.
    pub fn new(name: impl Into<Arc<str>>, config: &RetryConfig) -> Result<Self, InvalidBackoff> {
        Self::with_instruments(name, config, Instruments::global())
    }

    pub fn with_instruments(
        name: impl Into<Arc<str>>,
        config: &RetryConfig,
        instruments: Instruments,
    ) -> Result<Self, InvalidBackoff> {
        let maker = ExponentialBackoffMaker::new(
            config.min_backoff,
            config.max_backoff,
            config.jitter,
            HasherRng::default(),
        )?;
        Ok(RetryPolicy {
            name: name.into(),
            max_attempts: config.max_attempts.max(1),
            attempts: 0,
            budget: Arc::new(TpsBudget::new(
                config
                    .budget_window
                    .clamp(Duration::from_secs(1), Duration::from_secs(60)),
                config.budget_min_per_second,
                config.budget_ratio,
            )),
            maker,
            backoff: None,
            retryable: Arc::new(|r: &Result<Res, BoxError>| r.is_err()),
            instruments,
        })
    }

    pub fn retry_if(
        mut self,
        f: impl Fn(&Result<Res, BoxError>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retryable = Arc::new(f);
        self
    }
}

impl<Req: Clone, Res> Policy<Req, Res, BoxError> for RetryPolicy<Res> {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        self.attempts += 1;
        if self.attempts >= self.max_attempts || !(self.retryable)(result) {
            return None;
        }
        let granted = self.budget.withdraw();
        let reason = match result {
            Err(e) => e.to_string(),
            Ok(_) => "retryable response".to_owned(),
        };
        OtelContext::current().span().add_event(
            if granted {
                "retry"
            } else {
                "retry.budget_exhausted"
            },
            vec![
                KeyValue::new("retry.name", self.name.to_string()),
                KeyValue::new("retry.attempt", i64::from(self.attempts) + 1),
                KeyValue::new("retry.reason", reason),
            ],
        );
        self.instruments.retry(&self.name, granted);
        if !granted {
            return None;
        }
        let maker = &mut self.maker;
        Some(
            self.backoff
                .get_or_insert_with(|| maker.make_backoff())
                .next_backoff(),
        )
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        // Called on the layer's own copy for each new request (attempts is 0
        // there) and on the request's copy before each retry.
        if self.attempts == 0 {
            self.budget.deposit();
        }
        Some(req.clone())
    }
}
