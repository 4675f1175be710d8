//! Answers with a fallback response when the inner service fails (including
//! when a breaker refused the call or a bulkhead rejected it).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use opentelemetry::{Context as OtelContext, KeyValue, trace::TraceContextExt};
use tower::{Layer, Service};

use crate::{BoxError, telemetry::Instruments};

/// Turns an error into a response, or hands it back to fail the call.
pub type FallbackFn<Res> = Arc<dyn Fn(BoxError) -> Result<Res, BoxError> + Send + Sync>;

pub struct FallbackLayer<Res> {
    name: Arc<str>,
    f: FallbackFn<Res>,
    instruments: Instruments,
}

impl<Res> Clone for FallbackLayer<Res> {
    fn clone(&self) -> Self {
        FallbackLayer {
            name: self.name.clone(),
            f: self.f.clone(),
            instruments: self.instruments.clone(),
        }
    }
}

impl<Res> std::fmt::Debug for FallbackLayer<Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.name)
            .finish()
    }
}

impl<Res> FallbackLayer<Res> {
    pub fn new(
        name: impl Into<Arc<str>>,
        f: impl Fn(BoxError) -> Result<Res, BoxError> + Send + Sync + 'static,
    ) -> Self {
        Self::with_instruments(name, f, Instruments::global())
    }

    pub fn with_instruments(
        name: impl Into<Arc<str>>,
        f: impl Fn(BoxError) -> Result<Res, BoxError> + Send + Sync + 'static,
        instruments: Instruments,
    ) -> Self {
        FallbackLayer {
            name: name.into(),
            f: Arc::new(f),
            instruments,
        }
    }
}

impl<S, Res> Layer<S> for FallbackLayer<Res> {
    type Service = Fallback<S, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            layer: self.clone(),
        }
    }
}

pub struct Fallback<S, Res> {
    inner: S,
    layer: FallbackLayer<Res>,
}

impl<S: Clone, Res> Clone for Fallback<S, Res> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, Res> std::fmt::Debug for Fallback<S, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("name", &self.layer.name)
            .finish()
    }
}

impl<S, Req, Res> Service<Req> for Fallback<S, Res>
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
        let fut = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            match fut.await.map_err(Into::into) {
                Ok(res) => Ok(res),
                Err(err) => {
                    let reason = err.to_string();
                    let result = (layer.f)(err);
                    if result.is_ok() {
                        otel.span().add_event(
                            "fallback",
                            vec![
                                KeyValue::new("fallback.name", layer.name.to_string()),
                                KeyValue::new("fallback.reason", reason),
                            ],
                        );
                        layer.instruments.fallback(&layer.name);
                    }
                    result
                }
            }
        })
    }
}
