//! The layers as services: state changes under a paused clock (no sleeping),
//! concurrency, the telemetry they write, and the recommended layer order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use faultline_resilience::{
    BoxError,
    breaker::{BreakerOpen, CircuitBreakerLayer, Config, Outcome, State},
    bulkhead::{BulkheadFull, BulkheadLayer},
    fallback::FallbackLayer,
    retry::{RetryConfig, RetryPolicy},
    telemetry::Instruments,
};
use futures::future::BoxFuture;
use opentelemetry::{
    Context, KeyValue,
    context::FutureExt,
    metrics::MeterProvider as _,
    trace::{TraceContextExt, Tracer, TracerProvider as _},
};
use opentelemetry_sdk::{
    metrics::{
        InMemoryMetricExporter, SdkMeterProvider,
        data::{AggregatedMetrics, MetricData},
    },
    trace::{InMemorySpanExporter, SdkTracerProvider, SpanData},
};
use tower::{
    Layer, Service, ServiceBuilder, ServiceExt, retry::RetryLayer, service_fn,
    timeout::TimeoutLayer,
};

/// An inner service that fails while `failing` is set, counting its calls.
#[derive(Clone, Default)]
struct Flaky {
    calls: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Flaky {
    fn failing() -> Self {
        let f = Flaky::default();
        f.failing.store(true, Ordering::SeqCst);
        f
    }

    fn service(
        &self,
    ) -> impl Service<
        u32,
        Response = &'static str,
        Error = BoxError,
        Future = BoxFuture<'static, Result<&'static str, BoxError>>,
    > + Clone
    + use<> {
        let me = self.clone();
        service_fn(
            move |_req: u32| -> BoxFuture<'static, Result<&'static str, BoxError>> {
                let me = me.clone();
                Box::pin(async move {
                    me.calls.fetch_add(1, Ordering::SeqCst);
                    if me.failing.load(Ordering::SeqCst) {
                        Err::<&'static str, BoxError>("boom".into())
                    } else {
                        Ok("ok")
                    }
                })
            },
        )
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn call<S>(svc: &mut S) -> Result<&'static str, BoxError>
where
    S: Service<u32, Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(1).await
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_refuses_probes_and_closes() {
    let flaky = Flaky::failing();
    let layer = CircuitBreakerLayer::new("payments", Config::default());
    let handle = layer.handle();
    let mut svc = layer.layer(flaky.service());
    for _ in 0..10 {
        assert!(call(&mut svc).await.is_err());
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(flaky.calls(), 10);
    // Open: refused without reaching the inner service.
    let err = call(&mut svc).await.expect_err("refused");
    assert!(err.downcast_ref::<BreakerOpen>().is_some(), "{err}");
    assert_eq!(flaky.calls(), 10);
    // The dependency recovers; after the wait, trial calls close the breaker.
    flaky.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..3 {
        assert_eq!(call(&mut svc).await.expect("trial"), "ok");
    }
    assert_eq!(handle.state(), State::Closed);
    let counts = handle.counts();
    assert_eq!(
        (counts.failures, counts.successes, counts.not_permitted),
        (10, 3, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_classifier_decides_what_counts_as_failure() {
    // HTTP-like: a status code; 5xx fail, 4xx are not counted.
    let layer = CircuitBreakerLayer::<u16>::new("api", Config::default()).classify(|r| match r {
        Ok(s) if *s >= 500 => Outcome::Failure,
        Ok(s) if *s >= 400 => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    });
    let handle = layer.handle();
    let mut not_found = layer.layer(service_fn(|_: ()| async { Ok::<u16, BoxError>(404) }));
    for _ in 0..50 {
        not_found
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("404 is a response");
    }
    assert_eq!(handle.state(), State::Closed);
    let mut unavailable = layer.layer(service_fn(|_: ()| async { Ok::<u16, BoxError>(503) }));
    for _ in 0..10 {
        unavailable
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("response");
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_lose_no_counts() {
    let config = Config {
        // Never trips: every outcome must be counted, none refused.
        failure_rate_threshold: 2.0,
        slow_call_rate_threshold: 2.0,
        ..Config::default()
    };
    let layer = CircuitBreakerLayer::<u32>::new("counted", config);
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|n: u32| async move {
        tokio::task::yield_now().await;
        if n.is_multiple_of(3) {
            Err::<u32, BoxError>("every third".into())
        } else {
            Ok(n)
        }
    }));
    let tasks: Vec<_> = (0..64u32)
        .map(|t| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..250u32 {
                    let _ = svc.ready().await.expect("ready").call(t * 250 + i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let counts = handle.counts();
    let failures = (0..64 * 250u32).filter(|n| n.is_multiple_of(3)).count() as u64;
    assert_eq!(counts.failures, failures);
    assert_eq!(counts.successes + counts.failures, 64 * 250);
    assert_eq!(counts.not_permitted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_trips_report_exactly_one_transition() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("test");
    let layer = CircuitBreakerLayer::<u32>::new("shared", Config::default());
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: u32| async {
        Err::<u32, BoxError>("down".into())
    }));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut svc = svc.clone();
            let span = tracer.start("call");
            let cx = Context::current_with_span(span);
            tokio::spawn(
                async move {
                    for _ in 0..20 {
                        let _ = svc.ready().await.expect("ready").call(0).await;
                    }
                    Context::current().span().end();
                }
                .with_context(cx),
            )
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(handle.state(), State::Open);
    let events: usize = exporter
        .get_finished_spans()
        .expect("spans")
        .iter()
        .map(|s| {
            s.events
                .iter()
                .filter(|e| e.name == "circuit_breaker.state_change")
                .count()
        })
        .sum();
    assert_eq!(events, 1, "one closed → open transition, reported once");
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn event_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn counter(exporter: &InMemoryMetricExporter, name: &str, attr: (&str, &str)) -> u64 {
    let mut total = 0;
    for rm in exporter.get_finished_metrics().expect("metrics") {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() {
                    for dp in sum.data_points() {
                        if dp
                            .attributes()
                            .any(|kv| kv.key.as_str() == attr.0 && kv.value.to_string() == attr.1)
                        {
                            total = total.max(dp.value());
                        }
                    }
                }
            }
        }
    }
    total
}

fn gauge(exporter: &InMemoryMetricExporter, name: &str) -> Option<i64> {
    let mut last = None;
    for rm in exporter.get_finished_metrics().expect("metrics") {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                if let AggregatedMetrics::I64(MetricData::Gauge(g)) = m.data() {
                    last = g.data_points().last().map(|dp| dp.value());
                }
            }
        }
    }
    last
}

/// The recommended order: Fallback → CircuitBreaker → Timeout → call. A slow
/// dependency times out, the timeouts open the breaker, the fallback answers
/// throughout, and every step shows in the spans and metrics.
#[tokio::test(start_paused = true)]
async fn recommended_order_with_telemetry() {
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let tracer = tracer_provider.tracer("test");
    let metrics = InMemoryMetricExporter::default();
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics.clone())
        .build();
    let instruments = Instruments::new(&meter_provider.meter("test"));

    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let dependency = {
        let slow = slow.clone();
        let inner_calls = inner_calls.clone();
        service_fn(move |_: u32| {
            let slow = slow.load(Ordering::SeqCst);
            inner_calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok::<&'static str, BoxError>("paid")
            }
        })
    };
    let breaker =
        CircuitBreakerLayer::with_instruments("payments", Config::default(), instruments.clone());
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::with_instruments(
            "payments",
            |_e: BoxError| Ok::<_, BoxError>("payment deferred"),
            instruments.clone(),
        ))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_millis(250)))
        .service(dependency);

    let mut answers = Vec::new();
    for _ in 0..15 {
        let cx = Context::current_with_span(tracer.start("checkout"));
        let answer = async { call(&mut svc).await }
            .with_context(cx.clone())
            .await;
        cx.span().end();
        answers.push(answer.expect("the fallback always answers"));
    }
    assert!(
        answers.iter().all(|a| *a == "payment deferred"),
        "{answers:?}"
    );
    assert_eq!(handle.state(), State::Open);
    // 10 timed-out calls opened it; the other 5 never reached the dependency.
    assert_eq!(inner_calls.load(Ordering::SeqCst), 10);

    // The dependency recovers; after the wait the breaker half-opens, then closes.
    slow.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let cx = Context::current_with_span(tracer.start("checkout"));
        let answer = async { call(&mut svc).await }
            .with_context(cx.clone())
            .await;
        cx.span().end();
        assert_eq!(answer.expect("answer"), "paid");
    }
    assert_eq!(handle.state(), State::Closed);

    let finished = spans.get_finished_spans().expect("spans");
    assert_eq!(finished.len(), 18);
    assert!(
        finished
            .iter()
            .all(|s| attr(s, "circuit_breaker.name").as_deref() == Some("payments"))
    );
    let states: Vec<String> = finished
        .iter()
        .filter_map(|s| attr(s, "circuit_breaker.state"))
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "closed").count(), 10);
    assert_eq!(states.iter().filter(|s| *s == "open").count(), 5);
    assert_eq!(states.iter().filter(|s| *s == "half_open").count(), 3);
    let changes: Vec<(String, String)> = finished
        .iter()
        .flat_map(|s| s.events.iter())
        .filter(|e| e.name == "circuit_breaker.state_change")
        .map(|e| {
            (
                event_attr(&e.attributes, "circuit_breaker.state.from").unwrap_or_default(),
                event_attr(&e.attributes, "circuit_breaker.state.to").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("closed".into(), "open".into()),
            ("open".into(), "half_open".into()),
            ("half_open".into(), "closed".into())
        ]
    );
    let fallbacks = finished
        .iter()
        .filter(|s| s.events.iter().any(|e| e.name == "fallback"))
        .count();
    assert_eq!(fallbacks, 15);

    meter_provider.force_flush().expect("flush");
    assert_eq!(
        counter(&metrics, "circuit_breaker.calls", ("outcome", "failure")),
        10
    );
    assert_eq!(
        counter(
            &metrics,
            "circuit_breaker.calls",
            ("outcome", "not_permitted")
        ),
        5
    );
    assert_eq!(
        counter(&metrics, "circuit_breaker.calls", ("outcome", "success")),
        3
    );
    assert_eq!(
        counter(&metrics, "circuit_breaker.transitions", ("to", "open")),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "fallback.invocations",
            ("fallback.name", "payments")
        ),
        15
    );
    assert_eq!(gauge(&metrics, "circuit_breaker.state"), Some(0));
}

/// With the timeout outside the breaker, the breaker never sees the slow
/// calls fail: why the documented order matters.
#[tokio::test(start_paused = true)]
async fn timeout_outside_the_breaker_hides_slow_calls() {
    let breaker = CircuitBreakerLayer::new(
        "payments",
        Config {
            slow_call_duration: Duration::from_secs(10),
            ..Config::default()
        },
    );
    let handle = breaker.handle();
    let mut svc = ServiceBuilder::new()
        .map_err(|e: BoxError| e)
        .layer(TimeoutLayer::new(Duration::from_millis(250)))
        .layer(breaker)
        .service(service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<&'static str, BoxError>("paid")
        }));
    for _ in 0..20 {
        assert!(call(&mut svc).await.is_err());
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_rejects_at_once_when_full() {
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let tracer = provider.tracer("test");
    let gate = Arc::new(tokio::sync::Notify::new());
    let bulkhead = BulkheadLayer::new("inventory", 2);
    let svc = bulkhead.layer(service_fn({
        let gate = gate.clone();
        move |_: u32| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<&'static str, BoxError>("reserved")
            }
        }
    }));
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = svc.clone();
        held.push(tokio::spawn(s.oneshot(1)));
    }
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.in_flight(), 2);
    let cx = Context::current_with_span(tracer.start("checkout"));
    let mut third = svc.clone();
    let err = async { call(&mut third).await }
        .with_context(cx.clone())
        .await
        .expect_err("full");
    cx.span().end();
    assert!(err.downcast_ref::<BulkheadFull>().is_some(), "{err}");
    gate.notify_waiters();
    for h in held {
        assert_eq!(h.await.expect("task").expect("answer"), "reserved");
    }
    assert_eq!(bulkhead.in_flight(), 0);
    let finished = spans.get_finished_spans().expect("spans");
    assert!(
        finished[0]
            .events
            .iter()
            .any(|e| e.name == "bulkhead.rejected")
    );
}

#[tokio::test(start_paused = true)]
async fn retry_retries_retryable_failures_with_backoff() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let inner = {
        let attempts = attempts.clone();
        service_fn(move |_: u32| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err::<&'static str, BoxError>("reset by peer".into())
                } else {
                    Ok("reserved")
                }
            }
        })
    };
    let policy = RetryPolicy::new("inventory", &RetryConfig::default()).expect("policy");
    let mut svc = RetryLayer::new(policy).layer(inner);
    let started = tokio::time::Instant::now();
    assert_eq!(call(&mut svc).await.expect("third attempt"), "reserved");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Two backoffs happened on the paused clock (50 ms, then up to 100 ms, with jitter).
    assert!(
        started.elapsed() >= Duration::from_millis(25),
        "{:?}",
        started.elapsed()
    );

    // Never more than max_attempts.
    attempts.store(0, Ordering::SeqCst);
    let always_failing =
        service_fn(|_: u32| async { Err::<&'static str, BoxError>("down".into()) });
    let counting = {
        let attempts = attempts.clone();
        tower::ServiceBuilder::new()
            .map_request(move |r: u32| {
                attempts.fetch_add(1, Ordering::SeqCst);
                r
            })
            .service(always_failing)
    };
    let policy = RetryPolicy::new("inventory", &RetryConfig::default()).expect("policy");
    let mut svc = RetryLayer::new(policy).layer(counting);
    assert!(call(&mut svc).await.is_err());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_respects_its_budget_and_the_retryable_filter() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let inner = {
        let attempts = attempts.clone();
        service_fn(move |_: u32| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<&'static str, BoxError>("down".into()) }
        })
    };
    // No free retries and no ratio: the budget refuses every retry.
    let config = RetryConfig {
        budget_min_per_second: 0,
        budget_ratio: 0.0,
        ..RetryConfig::default()
    };
    let mut svc = RetryLayer::new(RetryPolicy::new("inventory", &config).expect("policy"))
        .layer(inner.clone());
    for _ in 0..5 {
        assert!(call(&mut svc).await.is_err());
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 5);

    attempts.store(0, Ordering::SeqCst);
    let policy = RetryPolicy::new("inventory", &RetryConfig::default())
        .expect("policy")
        .retry_if(
            |r: &Result<&'static str, BoxError>| matches!(r, Err(e) if e.to_string() != "down"),
        );
    let mut svc = RetryLayer::new(policy).layer(inner);
    assert!(call(&mut svc).await.is_err());
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "a non-retryable error is not retried"
    );
}

#[tokio::test]
async fn fallback_can_decline() {
    let mut svc = FallbackLayer::new("strict", |e: BoxError| Err::<&'static str, BoxError>(e))
        .layer(service_fn(|_: u32| async {
            Err::<&'static str, BoxError>("down".into())
        }));
    assert_eq!(
        call(&mut svc).await.expect_err("declined").to_string(),
        "down"
    );
}
