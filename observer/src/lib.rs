//! The observer: receives the system's traces over OTLP (gRPC and HTTP),
//! keeps sliding-window RED figures per service and per dependency edge and
//! the state of every circuit breaker, and serves them to hypothesis checks,
//! abort checks and the dashboard. Runs as `faultline-observer` or in-process.
//!
//! The store is pure and fed with the time; this crate adds the clock and the
//! sockets. See `docs/observer.md` for the API.

// Modules are private and what the binary, the tests and other crates use
// is re-exported here, so the compiler reports what nothing uses.
mod attribution;
mod forward;
mod otlp;
pub mod pods;
mod server;
mod shape;
mod sketch;
mod store;

pub use attribution::{Attribution, PodIps, Senders};
pub use forward::{ForwardConfig, ForwardProtocol, ForwardStats};
pub use server::{MAX_BODY_BYTES, parse_window};

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::{net::TcpListener, task::JoinSet};

pub use store::{
    BreakerFigures, BreakerState, EdgeFigures, Latencies, Limits, Red, ServiceFigures,
};
use store::{Store, StoreStats};

/// Spans one export may carry: bounds the time the store is locked and the
/// memory a tiny, highly compressible body can expand into.
pub const MAX_SPANS_PER_EXPORT: usize = 100_000;

/// The longest one export may take to arrive and be taken in: a slow
/// sender must not hold one of the `MAX_CONCURRENT_EXPORTS` turns.
pub const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Exports read and decoded at once, over gRPC and HTTP together: with
/// `MAX_BODY_BYTES` and `shape::MAX_ITEMS_PER_EXPORT` each, a few hundred
/// MiB at most.
pub const MAX_CONCURRENT_EXPORTS: usize = 4;

/// Why an export was refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("{spans} spans in one export; the observer takes at most {max}")]
    TooManySpans { spans: usize, max: usize },
}

/// Counters about ingest, for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub exports: AtomicU64,
    pub spans: AtomicU64,
    pub rejected: AtomicU64,
    /// Spans dropped for claiming another namespace than their sender's.
    pub forged: AtomicU64,
}

/// The figures of every service over one window, as of one whole second:
/// computed once per second and window, and shared by every stream client
/// and scrape in that second, so that N clients lock the store once, not N
/// times.
#[derive(Debug)]
pub struct Snapshot {
    /// Seconds since the Unix epoch when it was computed.
    pub second: u64,
    pub services: Vec<ServiceFigures>,
    /// The `/api/v1/services` document for it, serialized once.
    pub json: String,
}

/// A handle on the figures; cheap to clone, shared by every endpoint.
#[derive(Debug, Clone)]
pub struct Observer {
    store: Arc<Mutex<Store>>,
    pub stats: Arc<IngestStats>,
    forwarder: Option<forward::Forwarder>,
    /// This second's snapshot per window (in seconds).
    snapshots: Arc<Mutex<HashMap<u64, Arc<Snapshot>>>>,
    /// When set, every OTLP export and API call (but `/health`) must carry
    /// `authorization: Bearer TOKEN`.
    token: Option<Arc<str>>,
    /// When set, spans count in their sender's namespace.
    attribution: Option<Attribution>,
    /// The turns of exports in flight (`MAX_CONCURRENT_EXPORTS`), shared
    /// by both OTLP servers.
    turns: Arc<tokio::sync::Semaphore>,
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Observer {
    pub fn new(limits: Limits) -> Self {
        Observer {
            store: Arc::new(Mutex::new(Store::new(limits))),
            stats: Arc::default(),
            forwarder: None,
            snapshots: Arc::default(),
            token: None,
            attribution: None,
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS)),
        }
    }

    /// Refuses every export and API call without `authorization: Bearer
    /// TOKEN` from now on: on a shared cluster any pod could otherwise
    /// forge spans to pass a hypothesis or trip another team's abort.
    pub fn require_token(mut self, token: &str) -> Self {
        self.token = Some(Arc::from(token));
        self
    }

    /// Whether a request's `authorization` header value lets it in.
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Constant time over the token's length: no timing oracle.
        let want = token.as_bytes();
        given.len() == want.len()
            && given
                .iter()
                .zip(want)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Records every span as `namespace/service`, the namespace its sender's
    /// (see `attribution`), from now on.
    pub fn attribute(mut self, attribution: Attribution) -> Self {
        self.attribution = Some(attribution);
        self
    }

    /// Passes every export on to another receiver (starts a sending task).
    pub fn forward_to(mut self, config: forward::ForwardConfig) -> Self {
        self.forwarder = Some(forward::Forwarder::start(config));
        self
    }

    pub fn forward_stats(&self) -> Option<&forward::ForwardStats> {
        self.forwarder.as_ref().map(|f| f.stats.as_ref())
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one OTLP export from an unknown sender, or refuses it whole
    /// (too many spans).
    pub fn ingest(&self, req: &ExportTraceServiceRequest) -> Result<(), IngestError> {
        self.ingest_from(req, None)
    }

    /// Takes one OTLP export sent from `from`, or refuses it whole.
    pub fn ingest_from(
        &self,
        req: &ExportTraceServiceRequest,
        from: Option<std::net::IpAddr>,
    ) -> Result<(), IngestError> {
        let spans = forward::span_count(req);
        if spans > MAX_SPANS_PER_EXPORT {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::TooManySpans {
                spans,
                max: MAX_SPANS_PER_EXPORT,
            });
        }
        // Convert outside the lock; hold it once per export, not per span.
        if let Some(f) = &self.forwarder {
            f.offer(req);
        }
        let (records, forged) = otlp::records(req, |service, claimed| match &self.attribution {
            Some(a) => a.key(service, claimed, from),
            None => attribution::Key::As(service.to_owned()),
        });
        if forged > 0 {
            self.stats.forged.fetch_add(forged, Ordering::Relaxed);
            // Debug: a forger sending without pause would flood the log;
            // `faultline_observer_forged_spans_total` counts them.
            tracing::debug!(
                from = ?from,
                spans = forged,
                "dropped spans that claim another namespace than their sender's"
            );
        }
        let now = now_nanos();
        self.stats.exports.fetch_add(1, Ordering::Relaxed);
        self.stats
            .spans
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut store = self.store();
        for r in &records {
            store.record(now, r);
        }
        Ok(())
    }

    /// This second's figures of every service over `window_secs`, computed
    /// by the first caller in the second and shared with the others.
    pub fn snapshot(&self, window_secs: u64) -> Arc<Snapshot> {
        self.snapshot_at(window_secs, now_nanos())
    }

    fn snapshot_at(&self, window_secs: u64, now: u64) -> Arc<Snapshot> {
        let second = now / 1_000_000_000;
        // Held while computing, so callers in the same second wait for the
        // first one's result instead of each locking the store.
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = snapshots.get(&window_secs)
            && s.second == second
        {
            return s.clone();
        }
        let services = self.store().services(now, window_secs);
        let json = serde_json::json!({
            "window": format!("{window_secs}s"),
            "services": services,
        })
        .to_string();
        let snap = Arc::new(Snapshot {
            second,
            services,
            json,
        });
        // Only this second's snapshots are worth keeping.
        snapshots.retain(|_, s| s.second == second);
        snapshots.insert(window_secs, snap.clone());
        snap
    }

    /// Figures of every service seen, over the last `window_secs`.
    pub fn services(&self, window_secs: u64) -> Vec<ServiceFigures> {
        self.store().services(now_nanos(), window_secs)
    }

    pub fn service(&self, name: &str, window_secs: u64) -> Option<ServiceFigures> {
        self.store().service(name, now_nanos(), window_secs)
    }

    /// The share of `service`'s server requests that failed (hypothesis `errorRate`).
    pub fn error_rate(&self, service: &str, window_secs: u64) -> Option<f64> {
        self.service(service, window_secs)
            .filter(|f| f.red.requests > 0)
            .map(|f| f.red.error_rate)
    }

    /// A latency percentile (0–100] of `service`'s server requests, in
    /// milliseconds (hypothesis `latency`).
    pub fn latency_ms(&self, service: &str, percentile: f64, window_secs: u64) -> Option<f64> {
        self.store()
            .latency_ms(service, None, percentile, now_nanos(), window_secs)
    }

    /// A breaker's state and seconds since it entered it (hypothesis `breaker`).
    pub fn breaker(&self, service: &str, name: &str) -> Option<(BreakerState, f64)> {
        self.service(service, 1)?
            .breakers
            .into_iter()
            .find(|b| b.name == name)
            .map(|b| (b.state, b.for_seconds))
    }

    fn store_stats(&self) -> StoreStats {
        self.store().stats()
    }

    /// Exports being read or taken in now.
    fn exports_in_flight(&self) -> usize {
        MAX_CONCURRENT_EXPORTS.saturating_sub(self.turns.available_permits())
    }

    fn store_bytes(&self) -> usize {
        self.store().heap_bytes()
    }
}

/// Where the observer listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub api: SocketAddr,
}

impl Addresses {
    /// Free loopback ports for all three (embedding, tests).
    pub fn ephemeral() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Addresses {
            otlp_grpc: any,
            otlp_http: any,
            api: any,
        }
    }
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            api: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// A running observer; dropping it stops its servers.
#[derive(Debug)]
pub struct Running {
    pub observer: Observer,
    /// The bound addresses (port 0 in `Addresses` picks free ports).
    pub addresses: Addresses,
    tasks: JoinSet<()>,
}

impl Running {
    /// Runs until a server fails (a bind that succeeded rarely does).
    pub async fn wait(mut self) -> std::io::Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            r.map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// Binds all three sockets, then serves them in the background.
pub async fn start(addresses: &Addresses, limits: Limits) -> std::io::Result<Running> {
    start_with(addresses, Observer::new(limits)).await
}

/// Serves an observer built by the caller (e.g. one that forwards).
pub async fn start_with(addresses: &Addresses, observer: Observer) -> std::io::Result<Running> {
    let grpc = TcpListener::bind(addresses.otlp_grpc).await?;
    let http = TcpListener::bind(addresses.otlp_http).await?;
    let api = TcpListener::bind(addresses.api).await?;
    let bound = Addresses {
        otlp_grpc: grpc.local_addr()?,
        otlp_http: http.local_addr()?,
        api: api.local_addr()?,
    };
    let mut tasks = JoinSet::new();
    // One bound for both OTLP servers: exports in flight at once, each at
    // most MAX_BODY_BYTES and MAX_ITEMS_PER_EXPORT, so memory is bounded
    // whatever the senders do; more wait their turn.
    let exports = tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(observer.turns.clone());
    let routes = server::grpc_service(observer.clone());
    let grpc_limit = exports.clone();
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        if let Err(e) = tonic::transport::Server::builder()
            // A sender that takes longer gives its turn back.
            .timeout(EXPORT_TIMEOUT)
            .layer(grpc_limit)
            .add_routes(routes)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "the OTLP/gRPC server stopped");
        }
    });
    let router = server::http_router(observer.clone()).layer(exports);
    tasks.spawn(async move {
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(http, router).await {
            tracing::error!(error = %e, "the OTLP/HTTP server stopped");
        }
    });
    let router = server::api_router(observer.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(api, router).await {
            tracing::error!(error = %e, "the API server stopped");
        }
    });
    Ok(Running {
        observer,
        addresses: bound,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;

    fn export(spans: usize) -> ExportTraceServiceRequest {
        faultline_testkit::otlp::export(Vec::new(), vec![Span::default(); spans])
    }

    #[test]
    fn one_snapshot_per_second_and_window_is_shared() {
        let obs = Observer::new(Limits::default());
        let t = 1_000 * 1_000_000_000 + 200_000_000;
        let a = obs.snapshot_at(30, t);
        let b = obs.snapshot_at(30, t + 700_000_000);
        assert!(Arc::ptr_eq(&a, &b), "same second, same snapshot");
        let other_window = obs.snapshot_at(10, t);
        assert!(!Arc::ptr_eq(&a, &other_window));
        assert!(a.json.contains("\"window\":\"30s\""), "{}", a.json);
        assert!(other_window.json.contains("\"window\":\"10s\""));
        // The next second computes anew, and sees what came in meanwhile.
        obs.ingest(&export(1)).expect("ingest");
        let c = obs.snapshot_at(30, t + 1_000_000_000);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.second, a.second + 1);
        // Older seconds are not kept.
        let kept = obs.snapshots.lock().expect("lock").len();
        assert_eq!(kept, 1);
    }

    #[test]
    fn a_flood_is_refused_whole_with_a_typed_error() {
        let obs = Observer::new(Limits::default());
        let err = obs
            .ingest(&export(MAX_SPANS_PER_EXPORT + 1))
            .expect_err("too many spans");
        assert_eq!(
            err,
            IngestError::TooManySpans {
                spans: MAX_SPANS_PER_EXPORT + 1,
                max: MAX_SPANS_PER_EXPORT
            }
        );
        assert!(err.to_string().contains("at most 100000"), "{err}");
        assert_eq!(obs.stats.rejected.load(Ordering::Relaxed), 1);
        assert_eq!(obs.stats.spans.load(Ordering::Relaxed), 0);
        assert_eq!(obs.ingest(&export(3)), Ok(()));
        assert_eq!(obs.stats.spans.load(Ordering::Relaxed), 3);
    }
}
