//! HTTP plumbing shared by the roles: server spans with the caller's trace
//! context, and a client that makes client spans and passes the context on.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use faultline_resilience::BoxError;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry::{
    Context, KeyValue, global,
    trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};

const TRACER: &str = "faultline-demo";

/// Axum middleware: one server span per request, child of the caller's span.
pub async fn server_span(req: Request, next: Next) -> Response {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let tracer = global::tracer(TRACER);
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", req.uri().path().to_owned()),
        ])
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let response = next.run(req).with_context(cx.clone()).await;
    let span = cx.span();
    let status = response.status().as_u16();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_status(Status::error(format!("HTTP {status}")));
    }
    span.end();
    response
}

/// An HTTP client for one dependency, found at `<NAME>_ADDR`.
#[derive(Clone, Debug)]
pub struct Dependency {
    /// The dependency's service name (`peer.service` on client spans).
    pub name: String,
    pub addr: String,
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

/// What a dependency answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Dependency {
    /// Reads `<NAME>_ADDR` (e.g. `PAYMENTS_ADDR=127.0.0.1:7003`).
    pub fn from_env(name: &str) -> Result<Dependency, crate::Error> {
        let var = format!("{}_ADDR", name.to_ascii_uppercase().replace('-', "_"));
        let addr = std::env::var(&var).map_err(|_| crate::Error::MissingAddress {
            var: var.clone(),
            dependency: name.to_owned(),
        })?;
        Ok(Dependency::new(name, addr))
    }

    pub fn new(name: &str, addr: impl Into<String>) -> Dependency {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Dependency {
            name: name.to_owned(),
            addr: addr.into(),
            client,
        }
    }

    /// POSTs `body` to `path`, carrying the current trace context; answers
    /// with 5xx are errors, so resilience layers see them as failures.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<Answer, BoxError> {
        let mut req = hyper::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let cx = Context::current();
        global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()))
        });
        let response = self.client.request(req).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        if status >= 500 {
            return Err(format!("{} answered HTTP {status}", self.name).into());
        }
        Ok(Answer { status, body })
    }

    /// Starts a client span for a call to this dependency; run the call inside
    /// the returned context so resilience layers and headers use it.
    pub fn client_span(&self, method: &str, path: &str) -> Context {
        let tracer = global::tracer(TRACER);
        let (host, port) = match self.addr.parse::<SocketAddr>() {
            Ok(a) => (a.ip().to_string(), i64::from(a.port())),
            Err(_) => (self.addr.clone(), 80),
        };
        let span = tracer
            .span_builder(format!("{method} {path}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("peer.service", self.name.clone()),
                KeyValue::new("server.address", host),
                KeyValue::new("server.port", port),
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.full", format!("http://{}{path}", self.addr)),
            ])
            .start_with_context(&tracer, &Context::current());
        Context::current_with_span(span)
    }
}

/// Ends a client span with the call's result.
pub fn end_client_span(cx: &Context, result: Result<u16, &str>) {
    let span = cx.span();
    match result {
        Ok(status) => span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        )),
        Err(reason) => span.set_status(Status::error(reason.to_owned())),
    }
    span.end();
}
