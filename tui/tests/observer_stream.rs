//! The dashboard reading a real observer over its event stream: figures
//! arrive, an observer that goes away is reported and retried, and one
//! without a stream is polled. The outages are real: the dashboard reads
//! through Faultline's own fault proxy, which resets or blackholes it.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use faultline_observer::{Addresses, Limits};
use faultline_proxy::{Faults, Partition, Proxy};
use faultline_tui::{Action, Sources, follow_observer, model::Figures};
use ratatui::{Terminal, backend::TestBackend};
use tokio::sync::{mpsc, watch};

async fn observer_with_checkout() -> faultline_observer::Running {
    let running = faultline_observer::start(&Addresses::ephemeral(), Limits::default())
        .await
        .expect("observer starts");
    running
        .observer
        .ingest(&faultline_testkit::otlp::server_spans("checkout", 4, 1))
        .expect("ingests");
    running
}

/// The next action within `within`, skipping ticks of figures that do not
/// satisfy `want`.
async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Action>,
    within: Duration,
    what: &str,
    want: impl Fn(&Action) -> bool,
) -> Action {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(a)) if want(&a) => return a,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the follower stopped while waiting for {what}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}

fn checkout_figures(a: &Action) -> bool {
    matches!(a, Action::Figures(f) if f.services.iter().any(|s| s.name == "checkout" && s.red.requests == 4 && (s.red.error_rate - 0.25).abs() < 1e-9))
}

fn down(a: &Action) -> bool {
    matches!(a, Action::ObserverDown { .. })
}

#[tokio::test]
async fn figures_arrive_and_outages_are_survived() {
    let observer = observer_with_checkout().await;
    let proxy = Proxy::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        observer.addresses.api,
    )
    .await
    .expect("proxy");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let follower = tokio::spawn(follow_observer(
        format!("http://{}", proxy.local_addr()),
        tx,
    ));
    next_matching(&mut rx, Duration::from_secs(5), "figures", checkout_figures).await;

    // Connections reset: said at once, and retried until it works again.
    proxy.set_faults(Faults {
        partition: Some(Partition::Reset),
        ..Faults::default()
    });
    let Action::ObserverDown { error, retry_in } =
        next_matching(&mut rx, Duration::from_secs(5), "an outage", down).await
    else {
        unreachable!()
    };
    assert!(retry_in <= Duration::from_secs(5), "{retry_in:?}");
    assert!(!error.is_empty());
    proxy.set_faults(Faults::default());
    next_matching(
        &mut rx,
        Duration::from_secs(10),
        "figures again",
        checkout_figures,
    )
    .await;

    // Silence (a blackhole holds the connection open): noticed too.
    proxy.set_faults(Faults {
        partition: Some(Partition::Blackhole),
        ..Faults::default()
    });
    let Action::ObserverDown { error, .. } =
        next_matching(&mut rx, Duration::from_secs(10), "silence", down).await
    else {
        unreachable!()
    };
    assert!(error.contains("sent nothing"), "{error}");
    proxy.set_faults(Faults::default());
    next_matching(
        &mut rx,
        Duration::from_secs(15),
        "figures after silence",
        checkout_figures,
    )
    .await;

    // The follower ends once nobody listens.
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the follower stops without a receiver")
        .expect("no panic");
}

#[tokio::test]
async fn nothing_listening_is_reported_not_fatal() {
    let port = faultline_testkit::free_port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(follow_observer(format!("http://127.0.0.1:{port}"), tx));
    for _ in 0..2 {
        next_matching(&mut rx, Duration::from_secs(10), "an outage", down).await;
    }
}

/// An observer from before `/api/v1/stream`: 404 there, figures at
/// `/api/v1/services`.
async fn old_observer(figures: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /api/v1/services") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{figures}",
                        figures.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_observer_without_the_stream_is_polled() {
    let addr =
        old_observer(r#"{"window":"10s","services":[{"name":"legacy","requests":2}]}"#).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(follow_observer(format!("http://{addr}"), tx));
    for _ in 0..2 {
        next_matching(&mut rx, Duration::from_secs(5), "polled figures", |a| {
            matches!(a, Action::Figures(Figures { services, .. }) if services[0].name == "legacy")
        })
        .await;
    }
}

#[tokio::test]
async fn the_loop_draws_what_the_observer_says_until_closed() {
    let observer = observer_with_checkout().await;
    let (close_tx, close) = watch::channel(false);
    let mut terminal = Terminal::new(TestBackend::new(100, 24)).expect("terminal");
    let sources = Sources {
        observer: Some(format!("http://{}", observer.addresses.api)),
        close: Some(close),
        ..Sources::default()
    };
    let dashboard = tokio::spawn(async move {
        let keys = futures::stream::pending();
        faultline_tui::drive(&mut terminal, sources, keys)
            .await
            .expect("draws");
        terminal
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    close_tx.send(true).expect("the dashboard listens");
    let terminal = tokio::time::timeout(Duration::from_secs(5), dashboard)
        .await
        .expect("closes when told")
        .expect("no panic");
    let screen: String = terminal
        .backend()
        .buffer()
        .content
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(screen.contains("checkout"), "{screen}");
    assert!(screen.contains("25.0%"), "one error in four: {screen}");
}
