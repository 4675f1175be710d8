//! The proxy against real loopback sockets: delays as asked, order kept,
//! partitions that stall or reset, connection loss, a dead upstream.

use std::{net::SocketAddr, time::Duration};

use faultline_proxy::{Faults, Latency, Partition, Proxy};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    time::Instant,
};

/// A line echo server: answers every line at once.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.expect("connect")
    }

    /// A proxy that resets at once may do so before `connect` returns.
    async fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        Ok(Client {
            lines: BufReader::new(r).lines(),
            w,
        })
    }

    async fn send(&mut self, line: &str) {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    async fn recv(&mut self) -> std::io::Result<Option<String>> {
        self.lines.next_line().await
    }

    /// Round trip of one line.
    async fn rtt(&mut self, line: &str) -> Duration {
        let start = Instant::now();
        self.send(line).await;
        assert_eq!(self.recv().await.expect("read").as_deref(), Some(line));
        start.elapsed()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_what_was_asked() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let mut direct = Client::connect(upstream).await;
    let mut via = Client::connect(proxy.local_addr()).await;
    let mut base = Vec::new();
    for i in 0..30 {
        base.push(direct.rtt(&format!("d{i}")).await);
    }
    proxy.set_faults(Faults {
        latency: Some(Latency {
            delay: Duration::from_millis(100),
            jitter: Duration::ZERO,
            loss: 0.0,
            correlation: 0.0,
        }),
        partition: None,
        rate: None,
    });
    let mut delayed = Vec::new();
    for i in 0..30 {
        delayed.push(via.rtt(&format!("p{i}")).await);
    }
    // Each exchange's request was held back: the evidence the fault acted.
    assert!(
        proxy
            .stats()
            .delayed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 30,
        "chunks counted as delayed"
    );
    let added = median(delayed).saturating_sub(median(base));
    eprintln!("added median through the proxy: {added:?}");
    assert!(
        (Duration::from_millis(98)..=Duration::from_millis(102)).contains(&added),
        "added median {added:?} is not 100 ms ± 2 %"
    );
    // Lifted: back to direct speed on the same connection.
    proxy.set_faults(Faults::default());
    assert!(via.rtt("after").await < Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_stays_in_bounds_and_keeps_order() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    proxy.set_faults(Faults {
        latency: Some(Latency {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(20),
            loss: 0.0,
            correlation: 0.0,
        }),
        partition: None,
        rate: None,
    });
    let mut c = Client::connect(proxy.local_addr()).await;
    let mut rtts = Vec::new();
    for i in 0..20 {
        rtts.push(c.rtt(&format!("j{i}")).await);
    }
    for r in &rtts {
        assert!(
            *r >= Duration::from_millis(19) && *r < Duration::from_millis(90),
            "{r:?}"
        );
    }
    assert!(
        rtts.iter().max() > rtts.iter().min(),
        "jitter varies the delay"
    );
    // Pipelined lines come back in the order they were sent.
    for i in 0..50 {
        c.send(&format!("o{i}")).await;
    }
    for i in 0..50 {
        assert_eq!(c.recv().await.expect("read"), Some(format!("o{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_stalls_and_resumes() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let mut open = Client::connect(proxy.local_addr()).await;
    open.rtt("before").await;
    proxy.set_faults(Faults {
        latency: None,
        partition: Some(Partition::Blackhole),
        rate: None,
    });
    open.send("during").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), open.recv())
            .await
            .is_err(),
        "no answer in a blackhole"
    );
    let blackholed = || {
        proxy
            .stats()
            .blackholed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(blackholed(), 0, "a frozen open connection is not counted");
    let mut fresh = Client::connect(proxy.local_addr()).await;
    fresh.send("new").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fresh.recv())
            .await
            .is_err()
    );
    assert_eq!(blackholed(), 1, "the connection it held back is");
    // Lifted: what waited gets through, on both connections.
    proxy.set_faults(Faults::default());
    let got = tokio::time::timeout(Duration::from_secs(2), open.recv())
        .await
        .expect("resumes")
        .expect("read");
    assert_eq!(got.as_deref(), Some("during"));
    let got = tokio::time::timeout(Duration::from_secs(2), fresh.recv())
        .await
        .expect("resumes")
        .expect("read");
    assert_eq!(got.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_closes_open_connections_and_refuses_new_ones() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let mut open = Client::connect(proxy.local_addr()).await;
    open.rtt("before").await;
    proxy.set_faults(Faults {
        latency: None,
        partition: Some(Partition::Reset),
        rate: None,
    });
    let ended = tokio::time::timeout(Duration::from_secs(2), open.recv())
        .await
        .expect("ends at once");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    // The handshake completes (the proxy listens), then the connection is reset.
    let refused = match TcpStream::connect(proxy.local_addr()).await {
        Err(e) => Err(e),
        Ok(mut fresh) => {
            let mut buf = [0u8; 8];
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut fresh, &mut buf),
            )
            .await
            .expect("ends at once")
        }
    };
    assert!(
        matches!(refused, Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{refused:?}"
    );
    proxy.set_faults(Faults::default());
    Client::connect(proxy.local_addr())
        .await
        .rtt("healed")
        .await;
}

/// A server that floods every connection without reading; counts the
/// connections it is still writing to.
async fn flood_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                while conn.write_all(&chunk).await.is_ok() {}
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_ends_a_connection_stuck_on_a_client_that_stopped_reading() {
    let (upstream, open) = flood_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let _stalled = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    // Let the buffers fill: the proxy is now blocked writing to a client that
    // does not read, and the upstream is blocked writing to the proxy.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(open.load(std::sync::atomic::Ordering::SeqCst), 1);
    proxy.set_faults(Faults {
        latency: None,
        partition: Some(Partition::Reset),
        rate: None,
    });
    // The reset tears the connection down on both sides at once: the upstream
    // sees its connection reset although nobody read anything.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while open.load(std::sync::atomic::Ordering::SeqCst) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck connection was not reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_that_share_of_connections() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let lossy = |loss| Faults {
        latency: Some(Latency {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss,
            correlation: 0.0,
        }),
        partition: None,
        rate: None,
    };
    let attempt = |addr| async move {
        let Ok(mut c) = Client::try_connect(addr).await else {
            return false;
        };
        if c.w.write_all(b"x\n").await.is_err() {
            return false;
        }
        matches!(c.recv().await, Ok(Some(_)))
    };
    proxy.set_faults(lossy(1.0));
    for _ in 0..10 {
        assert!(!attempt(proxy.local_addr()).await);
    }
    proxy.set_faults(lossy(0.5));
    let mut ok = 0;
    for _ in 0..200 {
        ok += usize::from(attempt(proxy.local_addr()).await);
    }
    assert!(
        (60..=140).contains(&ok),
        "{ok} of 200 got through at 50 % loss"
    );
    assert_eq!(
        proxy
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        10 + 200 - ok as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_also_takes_calls_on_a_connection_kept_open() {
    let upstream = echo_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
        .await
        .expect("proxy");
    let mut kept = Client::connect(proxy.local_addr()).await;
    kept.rtt("before").await;
    proxy.set_faults(Faults {
        latency: Some(Latency {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 1.0,
            correlation: 0.0,
        }),
        partition: None,
        rate: None,
    });
    kept.send("lost").await;
    let answer = tokio::time::timeout(Duration::from_secs(2), kept.recv())
        .await
        .expect("the connection ends at once");
    assert!(
        matches!(answer, Err(_) | Ok(None)),
        "the call on the open connection was lost: {answer:?}"
    );
    assert_eq!(
        proxy
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_closes_the_client_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone = listener.local_addr().expect("addr");
    drop(listener);
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), gone)
        .await
        .expect("proxy");
    if let Ok(mut c) = Client::try_connect(proxy.local_addr()).await {
        let _ = c.w.write_all(b"hello\n").await;
        let r = tokio::time::timeout(Duration::from_secs(2), c.recv())
            .await
            .expect("closed at once");
        assert!(!matches!(r, Ok(Some(_))));
    }
    assert_eq!(
        proxy
            .stats()
            .upstream_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A server that reads every connection to the end; counts the bytes.
async fn sink_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = got.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, got)
}

/// Bytes a client reads from `addr` in `secs` seconds.
async fn read_for(addr: SocketAddr, secs: f64) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// 1mbit as bytes per second.
const RATE: u64 = 125_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limits_the_whole_edge_in_each_direction() {
    // Downstream: two connections read a flood at once; together they get
    // the edge's rate, not twice it.
    let (flood, _) = flood_server().await;
    let down_proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), flood)
        .await
        .expect("proxy");
    down_proxy.set_faults(Faults {
        rate: Some(RATE),
        ..Faults::default()
    });
    let secs = 3.0;
    let (a, b) = tokio::join!(
        read_for(down_proxy.local_addr(), secs),
        read_for(down_proxy.local_addr(), secs)
    );
    let down = (a + b) as f64 / secs / RATE as f64;
    assert!(
        (0.85..=1.15).contains(&down),
        "downstream at {down:.3} of the rate ({a} + {b} bytes)"
    );
    assert!(a > 0 && b > 0, "both connections moved: {a}, {b}");
    assert!(
        down_proxy
            .stats()
            .delayed
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );

    // Upstream: a client writing as fast as it can reaches the sink at the rate.
    let (sink, got) = sink_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), sink)
        .await
        .expect("proxy");
    proxy.set_faults(Faults {
        rate: Some(RATE),
        ..Faults::default()
    });
    let mut client = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 16 * 1024];
        while client.write_all(&chunk).await.is_ok() {}
    });
    // Past the first queue-filling moment, then measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = got.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = got.load(std::sync::atomic::Ordering::SeqCst);
    writer.abort();
    let up = (after - before) as f64 / secs / RATE as f64;
    assert!(
        (0.85..=1.15).contains(&up),
        "upstream at {up:.3} of the rate"
    );

    // Lifted: the flooded edge runs free again (far above the rate).
    down_proxy.set_faults(Faults::default());
    let n = read_for(down_proxy.local_addr(), 0.5).await;
    assert!(
        n as f64 > 10.0 * RATE as f64 * 0.5,
        "unlimited: {n} bytes in 0.5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_a_rate_frees_a_chunk_waiting_its_turn() {
    use tokio::io::AsyncReadExt;
    let (flood, _) = flood_server().await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), flood)
        .await
        .expect("proxy");
    // 1000 bytes a second: each chunk read waits well over a second.
    proxy.set_faults(Faults {
        rate: Some(1000),
        ..Faults::default()
    });
    let mut s = TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect");
    let mut buf = vec![0u8; 64 * 1024];
    let first = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(first, Ok(Ok(n)) if n > 0), "{first:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set_faults(Faults::default());
    // Freed at once, not after the wait it was in.
    let mut got = 0usize;
    let end = Instant::now() + Duration::from_millis(500);
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(
        got > 100_000,
        "{got} bytes in 0.5 s after the rate was lifted"
    );
}
