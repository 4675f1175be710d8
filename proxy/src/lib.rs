//! A userspace TCP fault proxy: what local mode puts on every dependency edge
//! instead of netem and nftables.
//!
//! Faults can change while connections are open:
//! - latency delays every chunk of data travelling towards the upstream (the
//!   target) by `delay` ± `jitter`, keeping order; with `loss`, that share of
//!   calls is lost with its connection (reset) — a call being what the
//!   client sends before the next answer — whether the client opens a
//!   connection per call or keeps one open;
//! - a blackhole partition stops forwarding in both directions (bytes wait,
//!   as in a network that silently drops packets) and holds new connections
//!   without connecting upstream; forwarding resumes when it is lifted;
//! - a reset partition closes every connection with a TCP RST and refuses new
//!   ones the same way;
//! - a rate limits the edge as a link that fast would: each direction's bytes,
//!   over all its connections together, wait for their turn.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
    time::Instant,
};

const BUFFER: usize = 64 * 1024;
mod splice;
mod timer;
use splice::Mover;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub delay: Duration,
    /// Each chunk's delay is drawn uniformly from delay ± jitter (never below 0).
    pub jitter: Duration,
    /// Share of calls (what the client sends before the next answer) lost
    /// with their connection (reset), 0.0 to 1.0.
    pub loss: f64,
    /// How much each chunk's jitter follows the previous one's, 0.0 to 1.0
    /// (as netem's correlation: the random draw is mixed with the last).
    pub correlation: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Stop forwarding; hold connections open.
    Blackhole,
    /// Close with a TCP reset.
    Reset,
}

/// The faults a proxy applies now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    pub latency: Option<Latency>,
    pub partition: Option<Partition>,
    /// The most bytes per second each direction of the edge carries, over
    /// all its connections together.
    pub rate: Option<u64>,
}

/// Counters, for tests, benchmarks and the run journal.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub dropped: AtomicU64,
    pub reset: AtomicU64,
    /// Chunks held back for a latency or a rate (the evidence it acted).
    pub delayed: AtomicU64,
    /// New connections a blackhole kept from their upstream (the evidence
    /// a partition acted; traffic on connections it froze is not counted).
    pub blackholed: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A running proxy; dropping the handle stops it and closes its connections.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    faults: watch::Sender<Faults>,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let stats = Arc::new(Stats::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, rx, stats.clone()));
        Ok(Proxy {
            addr,
            upstream,
            faults,
            stats,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Applies `faults` to new and open connections alike.
    pub fn set_faults(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<Faults>,
    stats: Arc<Stats>,
) {
    // Connection tasks are owned here so that stopping the proxy stops them.
    let mut tasks = tokio::task::JoinSet::new();
    let mut rng = Rng::seeded();
    // One per direction, shared by every connection of the edge.
    let buckets = Arc::new((Bucket::default(), Bucket::default()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of file descriptors fails at once, every time:
                    // back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let now = *faults.borrow();
                if now.partition == Some(Partition::Reset) {
                    reset(client);
                    stats.reset.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let seed = rng.next_u64();
                tasks.spawn(connection(client, upstream, faults.clone(), stats.clone(), buckets.clone(), seed));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Closes a connection with RST rather than FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    stats: Arc<Stats>,
    buckets: Arc<(Bucket, Bucket)>,
    seed: u64,
) {
    let _ = client.set_nodelay(true);
    // A blackholed edge never reaches the upstream until the partition lifts.
    if faults.borrow().partition == Some(Partition::Blackhole) {
        stats.blackholed.fetch_add(1, Ordering::Relaxed);
    }
    if !wait_while_blackholed(&mut faults).await {
        return reset(client);
    }
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // A reset partition ends the connection at once, even while a copy loop
    // is stuck writing to a peer that stopped reading or sleeping on a delay.
    // Whether the client's next bytes begin a new turn of the conversation
    // (a new call): true at first and after every answer.
    let turn = AtomicBool::new(true);
    // A reset from either direction (a lost call) ends both at once.
    let copy = async {
        tokio::try_join!(
            upstream_copy(
                &mut client_read,
                &mut server_write,
                faults.clone(),
                &stats,
                &buckets.0,
                &turn,
                seed
            ),
            pump(
                &mut server_read,
                &mut client_write,
                faults.clone(),
                &stats,
                &buckets.1,
                &turn
            ),
        )
        .is_err()
    };
    let reset_requested = tokio::select! {
        r = copy => r,
        () = reset_arrives(faults.clone()) => true,
    };
    let (Ok(client), Ok(server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) else {
        return;
    };
    if reset_requested {
        reset(client);
        reset(server);
    }
}

/// Completes when a reset partition is in force (never, if the proxy stops).
async fn reset_arrives(mut faults: watch::Receiver<Faults>) {
    loop {
        if faults.borrow_and_update().partition == Some(Partition::Reset) {
            return;
        }
        if faults.changed().await.is_err() {
            return futures_pending().await;
        }
    }
}

async fn futures_pending() {
    std::future::pending::<()>().await
}

/// Returned by a pump when a reset partition ends the connection.
#[derive(Debug)]
struct Reset;

/// Waits while a blackhole partition is active. False when a reset partition
/// arrives instead (the caller closes with RST).
async fn wait_while_blackholed(faults: &mut watch::Receiver<Faults>) -> bool {
    loop {
        match faults.borrow_and_update().partition {
            None => return true,
            Some(Partition::Reset) => return false,
            Some(Partition::Blackhole) => {}
        }
        if faults.changed().await.is_err() {
            return false;
        }
    }
}

/// Upstream → client: as fast as it can, pausing in a blackhole.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    stats: &Stats,
    bucket: &Bucket,
    turn: &AtomicBool,
) -> Result<(), Reset> {
    let mut mover = Mover::new();
    // Only a rate reads through memory; allocated when one first applies.
    let mut buf = Vec::new();
    loop {
        if !wait_while_blackholed(&mut faults).await {
            return Err(Reset);
        }
        let rate = faults.borrow().rate;
        if let Some(rate) = rate {
            buf.resize(BUFFER, 0);
            // Bytes already taken into the pipe go first, unthrottled.
            if mover.drain(to).await.is_err() {
                break;
            }
            tokio::select! {
                biased;
                changed = faults.changed() => if changed.is_err() { break },
                read = from.read(&mut buf[..chunk_for(rate)]) => {
                    let n = match read { Ok(0) | Err(_) => break, Ok(n) => n };
                    throttle(bucket, n, rate, stats, &mut faults).await?;
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    turn.store(true, Ordering::Relaxed);
                    stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            continue;
        }
        // A partition arriving mid-transfer cancels it; bytes already taken
        // wait in the pipe until the partition lifts.
        // A fault change already signalled wins over bytes that are ready
        // too (unbiased, a blackhole set before a write let it through).
        tokio::select! {
            biased;
            changed = faults.changed() => if changed.is_err() { break },
            moved = mover.transfer(from, to) => match moved {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    turn.store(true, Ordering::Relaxed);
                    stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
        }
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Bytes held back for a delay, per connection, before reading pauses.
const MAX_DELAYED_BYTES: usize = 16 << 20;

/// Client → upstream: each chunk is due after the latency in force when it
/// arrived, never before the chunk ahead of it (no reordering). Without
/// latency and with nothing held back, bytes are spliced straight through.
async fn upstream_copy(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    stats: &Stats,
    bucket: &Bucket,
    turn: &AtomicBool,
    seed: u64,
) -> Result<(), Reset> {
    let mut rng = Rng(seed | 1);
    let mut last_draw = 0.5;
    let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> =
        std::collections::VecDeque::new();
    let mut held_bytes = 0usize;
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; BUFFER];
    let mut mover = Mover::new();
    let mut eof = false;
    loop {
        if !wait_while_blackholed(&mut faults).await {
            return Err(Reset);
        }
        if eof && held.is_empty() {
            break;
        }
        let (latency, rate) = {
            let f = faults.borrow();
            (f.latency, f.rate)
        };
        if !eof && held.is_empty() && latency.is_none() && rate.is_none() {
            tokio::select! {
                biased;
                changed = faults.changed() => if changed.is_err() { break },
                moved = mover.transfer(from, to) => match moved {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => { stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed); }
                },
            }
            continue;
        }
        // Bytes taken before the latency arrived go first, undelayed.
        if mover.drain(to).await.is_err() {
            break;
        }
        let next_due = held.front().map(|(due, _)| *due);
        tokio::select! {
            read = from.read(&mut buf[..rate.map_or(BUFFER, chunk_for)]), if !eof && held_bytes < MAX_DELAYED_BYTES => {
                let n = match read { Ok(0) | Err(_) => { eof = true; continue } Ok(n) => n };
                // As in force now, not when the wait began: a fault lifted
                // while this read waited no longer applies to its bytes.
                let (latency, rate) = {
                    let f = faults.borrow();
                    (f.latency, f.rate)
                };
                // Each call (the client's turn, up to the next answer) is
                // lost with its connection, new or kept open, once: the
                // chunks of one request are one decision.
                let new_turn = turn.swap(false, Ordering::Relaxed);
                if new_turn && let Some(l) = latency && l.loss > 0.0 && rng.next_f64() < l.loss {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(Reset);
                }
                let delay = match latency {
                    Some(l) => jittered(l, &mut rng, &mut last_draw),
                    None => Duration::ZERO,
                };
                if delay.is_zero() && held.is_empty() {
                    if let Some(rate) = rate {
                        throttle(bucket, n, rate, stats, &mut faults).await?;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    let due = (Instant::now() + delay).max(last_due);
                    last_due = due;
                    stats.delayed.fetch_add(1, Ordering::Relaxed);
                    held_bytes += n;
                    held.push_back((due, buf[..n].to_vec()));
                }
            }
            () = sleep_until_opt(next_due), if next_due.is_some() => {
                if let Some((_, chunk)) = held.pop_front() {
                    held_bytes -= chunk.len();
                    let rate = faults.borrow().rate;
                    if let Some(rate) = rate {
                        throttle(bucket, chunk.len(), rate, stats, &mut faults).await?;
                    }
                    if to.write_all(&chunk).await.is_err() {
                        break;
                    }
                    stats.bytes_up.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            changed = faults.changed() => if changed.is_err() { break },
        }
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// A token bucket: bytes a direction of the edge may send now, refilled at
/// the rate in force; it holds at most `BURST` of traffic.
#[derive(Debug)]
struct Bucket(std::sync::Mutex<(f64, Instant)>);

impl Default for Bucket {
    fn default() -> Self {
        Bucket(std::sync::Mutex::new((0.0, Instant::now())))
    }
}

/// How much traffic a bucket saves up while the edge is idle: a short burst
/// passes at once, as on a link with a small queue.
const BURST: Duration = Duration::from_millis(20);

impl Bucket {
    /// Charges `n` bytes at `rate` bytes per second; how long the sender
    /// must wait before sending them (the bucket runs into debt, so
    /// senders queue behind each other in the order they were charged).
    fn charge(&self, n: usize, rate: u64) -> Duration {
        let rate = rate.max(1) as f64;
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let saved = (rate * BURST.as_secs_f64()).max(1500.0);
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(saved);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / rate)
        }
    }
}

/// Reads at most this much at a time under a rate: about 10 ms of traffic
/// (at least a packet's worth), so waits stay short and even.
fn chunk_for(rate: u64) -> usize {
    usize::try_from(rate / 100)
        .unwrap_or(BUFFER)
        .clamp(1460, BUFFER)
}

/// Waits for `n` bytes' turn under `rate`, counting the chunk as held back
/// when it had to wait. A fault change cuts the wait short when it lifts
/// the rate; whatever the change, a blackhole then holds the chunk as any
/// other (Err: a reset ends the connection instead).
async fn throttle(
    bucket: &Bucket,
    n: usize,
    rate: u64,
    stats: &Stats,
    faults: &mut watch::Receiver<Faults>,
) -> Result<(), Reset> {
    let wait = bucket.charge(n, rate);
    if !wait.is_zero() {
        stats.delayed.fetch_add(1, Ordering::Relaxed);
        let due = (Instant::now() + wait).into_std();
        loop {
            tokio::select! {
                () = timer::sleep_until(due) => break,
                changed = faults.changed() => {
                    if changed.is_err() || faults.borrow().rate.is_none() {
                        break;
                    }
                }
            }
        }
    }
    if wait_while_blackholed(faults).await {
        Ok(())
    } else {
        Err(Reset)
    }
}

/// Sleeps until `due`, at once when it has passed, on the precise timer
/// (tokio's ticks in milliseconds, rounding every delay up).
async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) if d > Instant::now() => timer::sleep_until(d.into_std()).await,
        _ => {}
    }
}

/// `delay` ± `jitter`; `last` is the previous draw (in 0..1), which a
/// correlation carries into this one.
fn jittered(l: Latency, rng: &mut Rng, last: &mut f64) -> Duration {
    if l.jitter.is_zero() {
        return l.delay;
    }
    let rho = if l.correlation.is_finite() {
        l.correlation.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let draw = rng.next_f64() * (1.0 - rho) + *last * rho;
    *last = draw;
    let spread = l.jitter.as_secs_f64() * (2.0 * draw - 1.0);
    Duration::from_secs_f64((l.delay.as_secs_f64() + spread).max(0.0))
}

/// splitmix64: enough randomness for loss and jitter, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(t ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean step between consecutive delays, in ms.
    fn mean_step(correlation: f64) -> f64 {
        let l = Latency {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(50),
            loss: 0.0,
            correlation,
        };
        let mut rng = Rng(42);
        let mut last = 0.5;
        let delays: Vec<f64> = (0..2000)
            .map(|_| jittered(l, &mut rng, &mut last).as_secs_f64() * 1e3)
            .collect();
        assert!(delays.iter().all(|d| (50.0..=150.0).contains(d)));
        delays.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / 1999.0
    }

    #[test]
    fn correlation_makes_each_delay_follow_the_last() {
        let free = mean_step(0.0);
        let tied = mean_step(0.9);
        // Uniform draws over ±50 ms step about 33 ms apart on average;
        // at 90 % correlation a tenth of that.
        assert!((25.0..40.0).contains(&free), "{free}");
        assert!(tied < free / 5.0, "{tied} vs {free}");
        assert_eq!(mean_step(f64::NAN), free, "a NaN correlation is none");
    }
}
