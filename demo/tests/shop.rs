//! The shop as real processes on loopback, exporting over OTLP/gRPC to a real
//! receiver: what it does when payments is killed or slowed and when
//! inventory is cut off, as seen by a user and in the exported spans.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use faultline_demo::http::Dependency;
use faultline_proxy::{Faults, Latency, Partition, Proxy};
use mock_collector::{MockServer, Protocol, ServerHandle, TestSpan};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value as Any};
use serde_json::Value;

/// A free loopback port never handed out before in this test process: tests
/// run in parallel, and a port released here could otherwise be given to
/// another test's service before ours binds it.
fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// Child processes, killed when the test ends however it ends.
struct Procs(Vec<(&'static str, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Procs {
    fn kill(&mut self, role: &str) {
        let i = self
            .0
            .iter()
            .position(|(r, _)| *r == role)
            .expect("role running");
        let (_, mut child) = self.0.remove(i);
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }
}

fn spawn(
    role: &'static str,
    listen: SocketAddr,
    env: &[(&str, String)],
    args: &[&str],
    otlp: SocketAddr,
) -> (&'static str, Child) {
    let child = Command::new(env!("CARGO_BIN_EXE_faultline-demo"))
        .arg(role)
        .arg("--listen")
        .arg(listen.to_string())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("faultline-demo starts");
    (role, child)
}

async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let probe = tokio::time::timeout(Duration::from_millis(500), async {
            let s = tokio::net::TcpStream::connect(addr).await?;
            drop(s);
            Ok::<_, std::io::Error>(())
        });
        if matches!(probe.await, Ok(Ok(()))) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Shop {
    otlp: ServerHandle,
    procs: Procs,
    frontend: SocketAddr,
    payments: SocketAddr,
    payments_proxy: Proxy,
    inventory_proxy: Proxy,
}

/// Starts the shop with a fault proxy in front of payments and inventory,
/// as the local runtime does.
async fn shop() -> Shop {
    let otlp = MockServer::builder()
        .protocol(Protocol::Grpc)
        .start()
        .await
        .expect("receiver");
    let (frontend, checkout, payments, inventory) =
        (free_addr(), free_addr(), free_addr(), free_addr());
    let any = "127.0.0.1:0".parse().expect("addr");
    let payments_proxy = Proxy::start(any, payments).await.expect("proxy");
    let inventory_proxy = Proxy::start(any, inventory).await.expect("proxy");
    let mut procs = Procs(Vec::new());
    procs
        .0
        .push(spawn("payments", payments, &[], &[], otlp.addr()));
    procs
        .0
        .push(spawn("inventory", inventory, &[], &[], otlp.addr()));
    procs.0.push(spawn(
        "checkout",
        checkout,
        &[
            ("PAYMENTS_ADDR", payments_proxy.local_addr().to_string()),
            ("INVENTORY_ADDR", inventory_proxy.local_addr().to_string()),
        ],
        &["--breaker-wait", "1s"],
        otlp.addr(),
    ));
    procs.0.push(spawn(
        "frontend",
        frontend,
        &[("CHECKOUT_ADDR", checkout.to_string())],
        &[],
        otlp.addr(),
    ));
    for addr in [payments, inventory, checkout, frontend] {
        wait_healthy(addr).await;
    }
    Shop {
        otlp,
        procs,
        frontend,
        payments,
        payments_proxy,
        inventory_proxy,
    }
}

impl Shop {
    /// Places one order; the frontend's status, the answer, and how long it took.
    async fn order(&self) -> (u16, Value, Duration) {
        let started = Instant::now();
        let dep = Dependency::new("frontend", self.frontend.to_string());
        let (status, body) = match dep.post("/order", Bytes::from_static(b"{}")).await {
            Ok(a) => (
                a.status,
                serde_json::from_slice(&a.body).unwrap_or(Value::Null),
            ),
            Err(e) => (599, Value::String(e.to_string())),
        };
        (status, body, started.elapsed())
    }

    async fn orders(&self, n: usize) -> Vec<(u16, Value, Duration)> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.order().await);
        }
        out
    }

    /// Waits until the receiver holds spans satisfying `pred`.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[TestSpan]) -> bool) {
        let ok = self
            .otlp
            .wait_until(|c| pred(c.spans()), Duration::from_secs(10))
            .await
            .is_ok();
        if !ok {
            let dump = self.otlp.with_collector(|c| summarize(c.spans())).await;
            panic!("never saw {what}; spans:\n{dump}");
        }
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<String> {
    match v.as_ref()?.value.as_ref()? {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        Any::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn get(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(&kv.value))
}

fn service(s: &TestSpan) -> String {
    get(s.resource_attrs(), "service.name").unwrap_or_default()
}

/// (from, to) of every breaker state change checkout reported, in order.
fn transitions(spans: &[TestSpan]) -> Vec<(String, String)> {
    let mut events: Vec<(u64, String, String)> = spans
        .iter()
        .filter(|s| service(s) == "checkout")
        .flat_map(|s| s.span().events.iter())
        .filter(|e| e.name == "circuit_breaker.state_change")
        .map(|e| {
            (
                e.time_unix_nano,
                get(&e.attributes, "circuit_breaker.state.from").unwrap_or_default(),
                get(&e.attributes, "circuit_breaker.state.to").unwrap_or_default(),
            )
        })
        .collect();
    events.sort();
    events.into_iter().map(|(_, f, t)| (f, t)).collect()
}

fn count_events(spans: &[TestSpan], name: &str) -> usize {
    spans
        .iter()
        .flat_map(|s| s.span().events.iter())
        .filter(|e| e.name == name)
        .count()
}

fn summarize(spans: &[TestSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} state={:?} events={:?}",
                service(s),
                s.span().name,
                get(&s.span().attributes, "circuit_breaker.state"),
                s.span()
                    .events
                    .iter()
                    .map(|e| e.name.clone())
                    .collect::<Vec<_>>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn payments_of(answers: &[(u16, Value, Duration)]) -> Vec<&str> {
    answers
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 200, "{body}");
            body.get("payment").and_then(Value::as_str).unwrap_or("?")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_payments_opens_the_breaker_and_the_fallback_answers() {
    let mut shop = shop().await;
    assert!(
        payments_of(&shop.orders(15).await)
            .iter()
            .all(|p| *p == "paid")
    );

    shop.procs.kill("payments");
    let during = shop.orders(20).await;
    let during_payments = payments_of(&during);
    assert!(
        during_payments.iter().all(|p| *p == "deferred"),
        "orders are accepted, payment deferred: {during:?}"
    );

    // Payments comes back; after the breaker's wait, trial calls close it.
    let payments = shop.payments;
    let otlp = shop.otlp.addr();
    shop.procs
        .0
        .push(spawn("payments", payments, &[], &[], otlp));
    wait_healthy(payments).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = shop.orders(10).await;
    assert!(
        payments_of(&after).iter().all(|p| *p == "paid"),
        "{:?}",
        payments_of(&after)
    );

    shop.wait_for("closed → open → half_open → closed", |spans| {
        transitions(spans)
            == [
                ("closed".to_owned(), "open".to_owned()),
                ("open".to_owned(), "half_open".to_owned()),
                ("half_open".to_owned(), "closed".to_owned()),
            ]
    })
    .await;
    shop.wait_for("fallbacks and refused calls while open", |spans| {
        let refused = spans
            .iter()
            .filter(|s| {
                service(s) == "checkout"
                    && get(&s.span().attributes, "circuit_breaker.state").as_deref() == Some("open")
            })
            .count();
        refused >= 5 && count_events(spans, "fallback") == 20
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_payments_open_the_breaker_within_seconds() {
    let shop = shop().await;
    assert!(
        payments_of(&shop.orders(5).await)
            .iter()
            .all(|p| *p == "paid")
    );
    shop.payments_proxy.set_faults(Faults {
        latency: Some(Latency {
            delay: Duration::from_millis(300),
            jitter: Duration::ZERO,
            loss: 0.0,
            correlation: 0.0,
        }),
        partition: None,
        rate: None,
    });
    let started = Instant::now();
    let slow = shop.orders(25).await;
    assert!(payments_of(&slow).iter().all(|p| *p == "deferred"));
    // The first calls wait for the 250 ms timeout; with the 5 earlier
    // successes in the window, the 5th timeout makes 50 % of 10 calls and
    // opens the breaker; from then on orders are answered at once.
    let waited = slow
        .iter()
        .filter(|(_, _, took)| *took >= Duration::from_millis(240))
        .count();
    assert_eq!(waited, 5, "orders that waited for the timeout");
    assert!(
        slow[15..]
            .iter()
            .all(|(_, _, took)| *took < Duration::from_millis(100))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the breaker opened within seconds"
    );

    shop.payments_proxy.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        payments_of(&shop.orders(5).await)
            .iter()
            .all(|p| *p == "paid")
    );
    shop.wait_for(
        "the breaker opening on failure rate and closing again",
        |spans| {
            let opened_for_failures = spans.iter().flat_map(|s| s.span().events.iter()).any(|e| {
                get(&e.attributes, "circuit_breaker.state.to").as_deref() == Some("open")
                    && get(&e.attributes, "circuit_breaker.reason")
                        .is_some_and(|r| r.contains("failure rate"))
            });
            opened_for_failures
                && transitions(spans).last().map(|(_, to)| to.as_str()) == Some("closed")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_off_inventory_keeps_the_frontend_answering() {
    let shop = shop().await;
    shop.inventory_proxy.set_faults(Faults {
        latency: None,
        partition: Some(Partition::Blackhole),
        rate: None,
    });
    // 20 orders at once: retries time out one by one, the bulkhead (10) turns
    // the rest away at once, and every order is still answered.
    let answers = futures::future::join_all((0..20).map(|_| shop.order())).await;
    for (status, body, took) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body.get("inventory").and_then(Value::as_str),
            Some("unconfirmed")
        );
        assert!(*took < Duration::from_secs(3), "answered in {took:?}");
    }
    shop.inventory_proxy.set_faults(Faults::default());
    let after = shop.order().await;
    assert_eq!(
        after.1.get("inventory").and_then(Value::as_str),
        Some("reserved")
    );
    shop.wait_for("retries and bulkhead rejections", |spans| {
        count_events(spans, "retry") >= 10 && count_events(spans, "bulkhead.rejected") >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_cross_every_service_and_load_reports_a_summary() {
    let shop = shop().await;
    let out = Command::new(env!("CARGO_BIN_EXE_faultline-demo"))
        .args([
            "load",
            "--target",
            &shop.frontend.to_string(),
            "--rate",
            "20",
            "--duration",
            "1s",
        ])
        .output()
        .expect("load runs");
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("sent, ") && summary.contains("ok (100.0%)"),
        "{summary}"
    );
    assert!(summary.contains("payment paid:"), "{summary}");

    // One order's trace: frontend server → frontend client → checkout server
    // → checkout clients → payments and inventory servers.
    shop.wait_for("a trace through all four services", |spans| {
        let Some(pay) = spans
            .iter()
            .find(|s| service(s) == "payments" && s.span().name == "POST /pay")
        else {
            return false;
        };
        let trace = &pay.span().trace_id;
        let services: std::collections::BTreeSet<String> = spans
            .iter()
            .filter(|s| &s.span().trace_id == trace)
            .map(service)
            .collect();
        let parent_ok = spans.iter().any(|s| {
            s.span().span_id == pay.span().parent_span_id
                && service(s) == "checkout"
                && get(&s.span().attributes, "peer.service").as_deref() == Some("payments")
        });
        parent_ok && services.len() == 4
    })
    .await;
}
