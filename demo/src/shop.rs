//! The shop's services: frontend → checkout → payments and inventory.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router, extract::State, http::StatusCode, middleware, routing::get, routing::post,
};
use bytes::Bytes;
use faultline_resilience::{
    BoxError,
    breaker::{self, CircuitBreakerLayer},
    bulkhead::BulkheadLayer,
    fallback::FallbackLayer,
    retry::{RetryConfig, RetryPolicy},
};
use opentelemetry::trace::FutureExt;
use serde_json::{Value, json};
use tower::{
    ServiceBuilder, ServiceExt, retry::RetryLayer, timeout::TimeoutLayer, util::BoxCloneSyncService,
};

use crate::http::{Dependency, end_client_span, server_span};

/// How checkout protects its calls; the defaults are what the demo
/// experiments expect (see the crate README).
#[derive(Debug, Clone)]
pub struct CheckoutOptions {
    /// Payments calls taking longer than this fail (and count against the breaker).
    pub payments_timeout: Duration,
    /// The payments breaker; None runs without one (to show what it buys).
    pub breaker: Option<breaker::Config>,
    /// Inventory calls taking longer than this fail (and are retried).
    pub inventory_timeout: Duration,
    /// Inventory calls in flight at once; more are rejected at once.
    pub inventory_bulkhead: usize,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        CheckoutOptions {
            payments_timeout: Duration::from_millis(250),
            breaker: Some(breaker::Config::default()),
            inventory_timeout: Duration::from_millis(300),
            inventory_bulkhead: 10,
        }
    }
}

fn health() -> Router {
    Router::new().route("/health", get(|| async { "ok" }))
}

/// Finishes a role's router: health endpoint and a server span per request.
fn traced(router: Router) -> Router {
    router
        .route_layer(middleware::from_fn(server_span))
        .merge(health())
}

/// payments: charges a card (always succeeds, takes ~2 ms).
pub fn payments() -> Router {
    traced(Router::new().route(
        "/pay",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Json(json!({"status": "paid"}))
        }),
    ))
}

/// inventory: reserves items (always succeeds, takes ~1 ms).
pub fn inventory() -> Router {
    traced(Router::new().route(
        "/reserve",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Json(json!({"status": "reserved"}))
        }),
    ))
}

/// What happened to an order's payment.
#[derive(Debug, Clone, PartialEq)]
enum Payment {
    Paid,
    /// The order is accepted and the payment queued: the fallback.
    Deferred(String),
}

type Stack<Req, Res> = BoxCloneSyncService<Req, Res, BoxError>;

#[derive(Clone)]
struct Checkout {
    payments: Dependency,
    inventory: Dependency,
    pay: Stack<u64, Payment>,
    reserve: Stack<u64, Bytes>,
    orders: Arc<AtomicU64>,
}

/// checkout: reserves inventory (Retry → Bulkhead → Timeout) and charges
/// payments (Fallback → CircuitBreaker → Timeout); answers 200 whenever it
/// can, degrading instead of failing.
pub fn checkout(opts: &CheckoutOptions) -> Result<Router, crate::Error> {
    let payments = Dependency::from_env("payments")?;
    let inventory = Dependency::from_env("inventory")?;

    let pay_call = {
        let dep = payments.clone();
        tower::service_fn(move |order: u64| {
            let dep = dep.clone();
            async move {
                dep.post("/pay", Bytes::from(format!("{{\"order\":{order}}}")))
                    .await?;
                Ok::<Payment, BoxError>(Payment::Paid)
            }
        })
    };
    let fallback = FallbackLayer::new("payments", |e: BoxError| {
        Ok::<_, BoxError>(Payment::Deferred(e.to_string()))
    });
    let pay: Stack<u64, Payment> = match &opts.breaker {
        Some(config) => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(fallback)
                .layer(CircuitBreakerLayer::new("payments", config.clone()))
                .layer(TimeoutLayer::new(opts.payments_timeout))
                .service(pay_call),
        ),
        None => BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(fallback)
                .layer(TimeoutLayer::new(opts.payments_timeout))
                .service(pay_call),
        ),
    };

    let reserve_call = {
        let dep = inventory.clone();
        tower::service_fn(move |order: u64| {
            let dep = dep.clone();
            async move {
                let answer = dep
                    .post("/reserve", Bytes::from(format!("{{\"order\":{order}}}")))
                    .await?;
                Ok::<Bytes, BoxError>(answer.body)
            }
        })
    };
    let policy = RetryPolicy::new("inventory", &RetryConfig::default())
        .map_err(crate::Error::RetryPolicy)?;
    let reserve: Stack<u64, Bytes> = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .layer(BulkheadLayer::new("inventory", opts.inventory_bulkhead))
            .layer(TimeoutLayer::new(opts.inventory_timeout))
            .service(reserve_call),
    );

    let state = Checkout {
        payments,
        inventory,
        pay,
        reserve,
        orders: Arc::new(AtomicU64::new(1)),
    };
    Ok(traced(
        Router::new()
            .route("/checkout", post(place_order))
            .with_state(state),
    ))
}

async fn place_order(State(app): State<Checkout>) -> (StatusCode, Json<Value>) {
    let order = app.orders.fetch_add(1, Ordering::Relaxed);

    let cx = app.inventory.client_span("POST", "/reserve");
    let reserved = app
        .reserve
        .clone()
        .oneshot(order)
        .with_context(cx.clone())
        .await;
    let inventory = match &reserved {
        Ok(_) => {
            end_client_span(&cx, Ok(200));
            "reserved"
        }
        Err(e) => {
            end_client_span(&cx, Err(&e.to_string()));
            // Degrade: accept the order and confirm stock later.
            "unconfirmed"
        }
    };

    let cx = app.payments.client_span("POST", "/pay");
    let paid = app
        .pay
        .clone()
        .oneshot(order)
        .with_context(cx.clone())
        .await;
    let payment = match &paid {
        Ok(Payment::Paid) => {
            end_client_span(&cx, Ok(200));
            "paid"
        }
        Ok(Payment::Deferred(reason)) => {
            // The call failed even though the order goes on: the edge shows it.
            end_client_span(&cx, Err(reason));
            "deferred"
        }
        Err(e) => {
            end_client_span(&cx, Err(&e.to_string()));
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"order": order, "error": e.to_string()})),
            );
        }
    };
    (
        StatusCode::OK,
        Json(json!({"order": order, "inventory": inventory, "payment": payment})),
    )
}

#[derive(Clone)]
struct Frontend {
    checkout: Dependency,
    timeout: Duration,
}

/// frontend: takes orders from users and passes them to checkout.
pub fn frontend() -> Result<Router, crate::Error> {
    let state = Frontend {
        checkout: Dependency::from_env("checkout")?,
        timeout: Duration::from_secs(3),
    };
    Ok(traced(
        Router::new()
            .route("/order", post(order).get(order))
            .route("/", get(order))
            .with_state(state),
    ))
}

async fn order(State(app): State<Frontend>) -> (StatusCode, Json<Value>) {
    let cx = app.checkout.client_span("POST", "/checkout");
    let call = tokio::time::timeout(
        app.timeout,
        app.checkout.post("/checkout", Bytes::from_static(b"{}")),
    );
    match call.with_context(cx.clone()).await {
        Ok(Ok(answer)) => {
            end_client_span(&cx, Ok(answer.status));
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            (StatusCode::OK, Json(body))
        }
        Ok(Err(e)) => {
            end_client_span(&cx, Err(&e.to_string()));
            (
                StatusCode::BAD_GATEWAY,
                Json(json!({"error": e.to_string()})),
            )
        }
        Err(_) => {
            end_client_span(&cx, Err("checkout timed out"));
            (
                StatusCode::GATEWAY_TIMEOUT,
                Json(json!({"error": "checkout timed out"})),
            )
        }
    }
}
