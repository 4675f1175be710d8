//! A concurrency limit that rejects at once when full, rather than queueing.
//!
//! tower's `LoadShed` over `ConcurrencyLimit` behaves the same, but rejects in
//! `poll_ready`, before the request (and its trace context) is known, with an
//! anonymous `Overloaded`; this layer rejects in `call`, so the rejection is a
//! span event on the request's span and names the bulkhead.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use opentelemetry::{Context as OtelContext, KeyValue, trace::TraceContextExt};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::{BoxError, telemetry::Instruments};

/// The call was rejected because the bulkhead was full.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bulkhead {name} is full ({max} calls in flight)")]
pub struct BulkheadFull {
    pub name: Arc<str>,
    pub max: usize,
}

#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    name: Arc<str>,
    max: usize,
    permits: Arc<Semaphore>,
    instruments: Instruments,
}

impl BulkheadLayer {
    /// At most `max` calls in flight across every service this layer builds.
    pub fn new(name: impl Into<Arc<str>>, max: usize) -> Self {
        Self::with_instruments(name, max, Instruments::global())
    }

    pub fn with_instruments(
        name: impl Into<Arc<str>>,
        max: usize,
        instruments: Instruments,
    ) -> Self {
        BulkheadLayer {
            name: name.into(),
            max,
            permits: Arc::new(Semaphore::new(max)),
            instruments,
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    layer: BulkheadLayer,
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            let name = self.layer.name.clone();
            OtelContext::current().span().add_event(
                "bulkhead.rejected",
                vec![
                    KeyValue::new("bulkhead.name", name.to_string()),
                    KeyValue::new("bulkhead.max_concurrent_calls", self.layer.max as i64),
                ],
            );
            self.layer.instruments.bulkhead_rejection(&name);
            let err = BulkheadFull {
                name,
                max: self.layer.max,
            };
            return Box::pin(async move { Err(err.into()) });
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            drop(permit);
            result
        })
    }
}
