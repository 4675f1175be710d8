//! Sliding-window RED figures per service and per dependency edge, and
//! circuit-breaker states, fed with span records and the current time.
//! Pure: no clock, no I/O; memory is bounded by the configured limits.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::sketch::{Merged, Sketch};

/// One-second slices kept per series: the longest window.
pub(crate) const MAX_WINDOW_SECS: u64 = 300;
const NANOS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn parse(s: &str) -> Option<BreakerState> {
        match s {
            "closed" => Some(BreakerState::Closed),
            "open" => Some(BreakerState::Open),
            "half_open" | "half-open" | "halfopen" => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }

    /// As `circuit_breaker.state` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Server,
    Client,
    Other,
}

/// What the store needs of one span.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpanRecord {
    pub service: String,
    pub kind: Kind,
    pub end_nanos: u64,
    pub duration_nanos: u64,
    pub error: bool,
    /// For client spans: the service called.
    pub peer: Option<String>,
    /// `circuit_breaker.name` and `circuit_breaker.state` on the span.
    pub breaker: Option<(String, Option<BreakerState>)>,
    /// `circuit_breaker.state_change` events: (time, breaker name, to).
    pub transitions: Vec<(u64, String, BreakerState)>,
    pub ids: SpanIds,
}

/// Span identity (0 when absent), to attribute a client span that names no
/// peer to the service of its child server span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct SpanIds {
    pub trace: u128,
    pub span: u64,
    pub parent: u64,
}

/// Client spans waiting for their child server span (and server spans for
/// their parent) at most; older ones are let go.
const MAX_JOIN: usize = 20_000;

#[derive(Debug)]
struct PendingClient {
    service: String,
    second: u64,
    error: bool,
    micros: f64,
}

/// Bounds on what is tracked; anything beyond is counted and dropped.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_services: usize,
    pub max_edges_per_service: usize,
    pub max_breakers_per_service: usize,
    pub max_name_bytes: usize,
    /// Bytes the sliding windows may hold; beyond, spans are dropped and counted.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: 500,
            max_edges_per_service: 50,
            max_breakers_per_service: 50,
            max_name_bytes: 200,
            max_bytes: 256 << 20,
        }
    }
}

const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

#[derive(Debug, Clone, Default)]
struct Slot {
    second: u64,
    requests: u32,
    errors: u32,
    latency: Sketch,
}

/// Per-second slices of the last `MAX_WINDOW_SECS` seconds that saw traffic,
/// oldest first: memory follows activity, not the number of series.
#[derive(Debug, Clone, Default)]
struct Series {
    slots: VecDeque<Slot>,
}

impl Series {
    /// Records a call; returns the bytes the series grew by (negative when
    /// old slices were let go).
    fn record(&mut self, second: u64, error: bool, micros: f64) -> isize {
        let mut delta = 0isize;
        // Spans mostly arrive in order: look from the newest slice back.
        let pos = self.slots.iter().rposition(|s| s.second <= second);
        let at = match pos {
            Some(p) if self.slots[p].second == second => p,
            Some(p) => {
                self.slots.insert(
                    p + 1,
                    Slot {
                        second,
                        ..Slot::default()
                    },
                );
                delta += SLOT_BYTES as isize;
                p + 1
            }
            None => {
                self.slots.push_front(Slot {
                    second,
                    ..Slot::default()
                });
                delta += SLOT_BYTES as isize;
                0
            }
        };
        let slot = &mut self.slots[at];
        slot.requests = slot.requests.saturating_add(1);
        slot.errors = slot.errors.saturating_add(u32::from(error));
        if slot.latency.add_micros(micros) {
            delta += Sketch::BUCKET_BYTES as isize;
        }
        let newest = self.slots.back().map_or(second, |s| s.second);
        while self
            .slots
            .front()
            .is_some_and(|s| s.second + MAX_WINDOW_SECS <= newest)
        {
            if let Some(old) = self.slots.pop_front() {
                delta -= (SLOT_BYTES + old.latency.buckets() * Sketch::BUCKET_BYTES) as isize;
            }
        }
        delta
    }

    /// Drops slices that left the longest window; returns the bytes freed
    /// (negative) and whether the series is now empty.
    fn trim(&mut self, now_second: u64) -> (isize, bool) {
        let mut delta = 0isize;
        while self
            .slots
            .front()
            .is_some_and(|s| s.second + MAX_WINDOW_SECS <= now_second)
        {
            if let Some(old) = self.slots.pop_front() {
                delta -= (SLOT_BYTES + old.latency.buckets() * Sketch::BUCKET_BYTES) as isize;
            }
        }
        (delta, self.slots.is_empty())
    }

    /// Slots of the `window` seconds ending at `now_second` (inclusive).
    fn window(&self, now_second: u64, window: u64) -> impl Iterator<Item = &Slot> {
        let from = now_second.saturating_sub(window.saturating_sub(1));
        self.slots
            .iter()
            .filter(move |s| s.second >= from && s.second <= now_second && s.requests > 0)
    }

    /// Figures over the last `window` one-second slices, the current (partial)
    /// one included; rates are over the time those slices actually cover.
    fn figures(&self, now_nanos: u64, window: u64) -> Red {
        let now_second = now_nanos / NANOS;
        let mut merged = Merged::default();
        let (mut requests, mut errors) = (0u64, 0u64);
        for s in self.window(now_second, window) {
            requests += u64::from(s.requests);
            errors += u64::from(s.errors);
            merged.add(&s.latency);
        }
        let ms = |p| {
            merged
                .percentile_micros(p)
                .map_or(0.0, |us| round(us / 1000.0))
        };
        Red {
            requests,
            requests_per_second: round(requests as f64 / covered_secs(now_nanos, window)),
            error_rate: if requests == 0 {
                0.0
            } else {
                round(errors as f64 / requests as f64)
            },
            latency_ms: Latencies {
                p50: ms(50.0),
                p95: ms(95.0),
                p99: ms(99.0),
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self
                .slots
                .iter()
                .map(|s| s.latency.heap_bytes())
                .sum::<usize>()
    }
}

/// Seconds covered by a window of `window` one-second slices ending with the
/// current one, of which only the elapsed part counts.
fn covered_secs(now_nanos: u64, window: u64) -> f64 {
    let elapsed = (now_nanos % NANOS) as f64 / NANOS as f64;
    ((window - 1) as f64 + elapsed).max(1e-3)
}

/// Times outside [now − 5 m, now + 10 s] come from skewed clocks (or
/// hostile input): count them at arrival time instead.
fn sane_time(t: u64, now_nanos: u64) -> u64 {
    if t.saturating_add(MAX_WINDOW_SECS * NANOS) < now_nanos
        || t > now_nanos.saturating_add(10 * NANOS)
    {
        now_nanos
    } else {
        t
    }
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latencies {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Red {
    pub requests: u64,
    pub requests_per_second: f64,
    pub error_rate: f64,
    pub latency_ms: Latencies,
}

#[derive(Debug, Clone)]
struct Breaker {
    state: BreakerState,
    /// When the current state was entered (or first seen), unix nanos.
    since: u64,
    /// Latest evidence of the state (span end or event time), unix nanos.
    seen: u64,
    transitions: VecDeque<u64>,
    /// Calls seen while open, per second slot (short-circuited calls).
    open_calls: Vec<(u64, u32)>,
}

/// A hard cap besides age, so a breaker flapping absurdly fast stays bounded.
const MAX_TRANSITIONS_KEPT: usize = 100_000;

impl Breaker {
    fn observe(&mut self, at: u64, state: BreakerState) {
        if at < self.seen {
            return; // older evidence than what we have
        }
        if state != self.state {
            // A state seen on a span without a state_change event (e.g. the
            // event was sampled away): take it, and date the change now.
            self.state = state;
            self.since = at;
        }
        self.seen = at;
    }

    fn transition(&mut self, at: u64, to: BreakerState) {
        while self
            .transitions
            .front()
            .is_some_and(|t| t.saturating_add(MAX_WINDOW_SECS * NANOS) < at)
        {
            self.transitions.pop_front();
        }
        if self.transitions.len() == MAX_TRANSITIONS_KEPT {
            self.transitions.pop_front();
        }
        self.transitions.push_back(at);
        if at >= self.seen {
            self.state = to;
            self.since = at;
            self.seen = at;
        }
    }

    fn open_call(&mut self, second: u64) {
        let slot = (second % MAX_WINDOW_SECS) as usize;
        if self.open_calls.is_empty() {
            self.open_calls = vec![(0, 0); MAX_WINDOW_SECS as usize];
        }
        let s = &mut self.open_calls[slot];
        if s.0 > second {
            return; // the slot already holds a later second
        }
        if s.0 != second {
            *s = (second, 0);
        }
        s.1 = s.1.saturating_add(1);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerFigures {
    pub name: String,
    pub state: BreakerState,
    /// RFC 3339 time the current state was entered.
    pub since: String,
    /// Seconds in the current state at the time of the query.
    pub for_seconds: f64,
    pub transitions: u64,
    pub short_circuited: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeFigures {
    pub to: String,
    #[serde(flatten)]
    pub red: Red,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFigures {
    pub name: String,
    #[serde(flatten)]
    pub red: Red,
    pub breakers: Vec<BreakerFigures>,
    pub edges: Vec<EdgeFigures>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    server: Option<Series>,
    edges: HashMap<String, Series>,
    breakers: HashMap<String, Breaker>,
}

/// Counters about the store itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StoreStats {
    pub spans: u64,
    pub dropped_services: u64,
    pub dropped_edges: u64,
    pub dropped_breakers: u64,
    /// Spans dropped because the windows reached their memory bound.
    pub dropped_memory: u64,
    /// Client spans naming no peer whose child server span never came.
    pub unattributed_client_spans: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    limits: Limits,
    services: HashMap<String, ServiceEntry>,
    stats: StoreStats,
    /// Bytes held by the windows' slices and sketches.
    window_bytes: usize,
    /// Peerless client spans by (trace, span), awaiting a child server span.
    join_clients: HashMap<(u128, u64), PendingClient>,
    /// Server spans by (trace, parent span), awaiting a peerless parent.
    join_servers: HashMap<(u128, u64), String>,
    join_order: VecDeque<(u128, u64)>,
    /// The second of the last sweep.
    swept_second: u64,
    /// When a peerless client span was last seen: server spans are indexed
    /// for joining only while that is recent.
    peerless_seen: u64,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Store {
            limits,
            services: HashMap::new(),
            stats: StoreStats::default(),
            window_bytes: 0,
            join_clients: HashMap::new(),
            join_servers: HashMap::new(),
            join_order: VecDeque::new(),
            swept_second: 0,
            peerless_seen: 0,
        }
    }

    pub(crate) fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Records one span. `now_nanos` is the receive time; spans dated more
    /// than 5 minutes in the past or 10 s in the future (clock skew) are
    /// counted at the receive time instead.
    pub(crate) fn record(&mut self, now_nanos: u64, span: &SpanRecord) {
        self.stats.spans += 1;
        let limits = self.limits;
        self.sweep(now_nanos);
        let end = sane_time(span.end_nanos, now_nanos);
        let start = end.saturating_sub(span.duration_nanos);
        let second = end / NANOS;
        let micros = span.duration_nanos as f64 / 1000.0;
        if self.window_bytes >= limits.max_bytes && matches!(span.kind, Kind::Server | Kind::Client)
        {
            // Shed load rather than grow: figures go on from what is held.
            self.stats.dropped_memory += 1;
            return;
        }
        let service = truncate(&span.service, limits.max_name_bytes);
        if !self.services.contains_key(service) && self.services.len() >= limits.max_services {
            self.stats.dropped_services += 1;
            return;
        }
        let entry = self.services.entry(service.to_owned()).or_default();
        let delta = match span.kind {
            Kind::Server => entry
                .server
                .get_or_insert_default()
                .record(second, span.error, micros),
            Kind::Client => match &span.peer {
                Some(peer) => {
                    let peer = truncate(peer, limits.max_name_bytes);
                    if entry.edges.contains_key(peer)
                        || entry.edges.len() < limits.max_edges_per_service
                    {
                        entry
                            .edges
                            .entry(peer.to_owned())
                            .or_default()
                            .record(second, span.error, micros)
                    } else {
                        self.stats.dropped_edges += 1;
                        0
                    }
                }
                None => 0,
            },
            Kind::Other => 0,
        };
        self.window_bytes = self.window_bytes.saturating_add_signed(delta);
        let breaker_slot =
            |entry: &mut ServiceEntry, name: &str, first_state: BreakerState, at: u64| -> bool {
                let name = truncate(name, limits.max_name_bytes);
                if !entry.breakers.contains_key(name)
                    && entry.breakers.len() >= limits.max_breakers_per_service
                {
                    return false;
                }
                entry
                    .breakers
                    .entry(name.to_owned())
                    .or_insert_with(|| Breaker {
                        state: first_state,
                        since: at,
                        seen: at,
                        transitions: VecDeque::new(),
                        open_calls: Vec::new(),
                    });
                true
            };
        for (at, name, to) in &span.transitions {
            let at = &sane_time(*at, now_nanos);
            if breaker_slot(entry, name, *to, *at) {
                if let Some(b) = entry
                    .breakers
                    .get_mut(truncate(name, limits.max_name_bytes))
                {
                    b.transition(*at, *to);
                }
            } else {
                self.stats.dropped_breakers += 1;
            }
        }
        if let Some((name, Some(state))) = &span.breaker {
            if breaker_slot(entry, name, *state, end) {
                if let Some(b) = entry
                    .breakers
                    .get_mut(truncate(name, limits.max_name_bytes))
                {
                    // The state on the span is the one the call saw when it
                    // started, so it is evidence as of the start; a change
                    // the call caused is in its events, recorded above.
                    if !span.transitions.iter().any(|(_, n, _)| n == name) {
                        b.observe(start, *state);
                    }
                    if *state == BreakerState::Open {
                        b.open_call(second);
                    }
                }
            } else {
                self.stats.dropped_breakers += 1;
            }
        }
        let service = service.to_owned();
        self.join(span, &service, second, micros, now_nanos);
    }

    /// Once a second: lets go of slices older than the longest window, and of
    /// series, breakers and services that saw nothing for that long, so
    /// memory follows recent activity and the bounds free up again.
    fn sweep(&mut self, now_nanos: u64) {
        let now_second = now_nanos / NANOS;
        if now_second <= self.swept_second {
            return;
        }
        self.swept_second = now_second;
        let mut freed = 0isize;
        self.services.retain(|_, e| {
            if let Some(s) = &mut e.server {
                let (d, empty) = s.trim(now_second);
                freed += d;
                if empty {
                    e.server = None;
                }
            }
            e.edges.retain(|_, s| {
                let (d, empty) = s.trim(now_second);
                freed += d;
                !empty
            });
            e.breakers
                .retain(|_, b| b.seen.saturating_add(MAX_WINDOW_SECS * NANOS) > now_nanos);
            e.server.is_some() || !e.edges.is_empty() || !e.breakers.is_empty()
        });
        self.window_bytes = self.window_bytes.saturating_add_signed(freed);
    }

    /// Edges from client spans that name no peer: matched with the child
    /// server span (same trace, parent = the client span), in either order.
    fn join(&mut self, span: &SpanRecord, service: &str, second: u64, micros: f64, now_nanos: u64) {
        let ids = span.ids;
        if ids.trace == 0 {
            return;
        }
        match span.kind {
            Kind::Client if span.peer.is_none() && ids.span != 0 => {
                self.peerless_seen = now_nanos;
                let key = (ids.trace, ids.span);
                if let Some(callee) = self.join_servers.remove(&key) {
                    self.record_edge(service, &callee, second, span.error, micros);
                } else {
                    let pending = PendingClient {
                        service: service.to_owned(),
                        second,
                        error: span.error,
                        micros,
                    };
                    self.join_clients.insert(key, pending);
                    self.join_order.push_back(key);
                }
            }
            Kind::Server if ids.parent != 0 => {
                let key = (ids.trace, ids.parent);
                if let Some(p) = self.join_clients.remove(&key) {
                    self.record_edge(&p.service, service, p.second, p.error, p.micros);
                } else if self.peerless_seen + MAX_WINDOW_SECS * NANOS > now_nanos {
                    self.join_servers.insert(key, service.to_owned());
                    self.join_order.push_back(key);
                }
            }
            _ => {}
        }
        while self.join_order.len() > MAX_JOIN {
            if let Some(k) = self.join_order.pop_front() {
                if self.join_clients.remove(&k).is_some() {
                    self.stats.unattributed_client_spans += 1;
                }
                self.join_servers.remove(&k);
            }
        }
    }

    fn record_edge(&mut self, from: &str, to: &str, second: u64, error: bool, micros: f64) {
        let limits = self.limits;
        let Some(entry) = self.services.get_mut(from) else {
            return;
        };
        let to = truncate(to, limits.max_name_bytes);
        if entry.edges.contains_key(to) || entry.edges.len() < limits.max_edges_per_service {
            let delta = entry
                .edges
                .entry(to.to_owned())
                .or_default()
                .record(second, error, micros);
            self.window_bytes = self.window_bytes.saturating_add_signed(delta);
        } else {
            self.stats.dropped_edges += 1;
        }
    }

    pub(crate) fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.keys().cloned().collect();
        names.sort();
        names
    }

    /// The figures of one service over the `window` seconds up to `now`.
    pub(crate) fn service(
        &self,
        name: &str,
        now_nanos: u64,
        window_secs: u64,
    ) -> Option<ServiceFigures> {
        let entry = self.services.get(name)?;
        let window = window_secs.clamp(1, MAX_WINDOW_SECS);
        let now_second = now_nanos / NANOS;
        let red = entry.server.as_ref().map_or_else(
            || Series::default().figures(now_nanos, window),
            |s| s.figures(now_nanos, window),
        );
        let mut edges: Vec<EdgeFigures> = entry
            .edges
            .iter()
            .map(|(to, s)| EdgeFigures {
                to: to.clone(),
                red: s.figures(now_nanos, window),
            })
            .collect();
        edges.sort_by(|a, b| a.to.cmp(&b.to));
        // The same one-second slices as the RED figures.
        let from_second = now_second.saturating_sub(window - 1);
        let in_window = |second: u64| second >= from_second && second <= now_second;
        let mut breakers: Vec<BreakerFigures> = entry
            .breakers
            .iter()
            .map(|(n, b)| BreakerFigures {
                name: n.clone(),
                state: b.state,
                since: rfc3339(b.since),
                for_seconds: round(now_nanos.saturating_sub(b.since) as f64 / NANOS as f64),
                transitions: b
                    .transitions
                    .iter()
                    .filter(|t| in_window(**t / NANOS))
                    .count() as u64,
                short_circuited: b
                    .open_calls
                    .iter()
                    .filter(|(s, _)| in_window(*s))
                    .map(|(_, c)| u64::from(*c))
                    .sum(),
            })
            .collect();
        breakers.sort_by(|a, b| a.name.cmp(&b.name));
        Some(ServiceFigures {
            name: name.to_owned(),
            red,
            breakers,
            edges,
        })
    }

    /// Any latency percentile (0–100] of a service's server requests, or of
    /// one of its edges, over the window: what a `latency` check compares.
    /// None without requests in the window.
    pub(crate) fn latency_ms(
        &self,
        service: &str,
        edge: Option<&str>,
        percentile: f64,
        now_nanos: u64,
        window_secs: u64,
    ) -> Option<f64> {
        let entry = self.services.get(service)?;
        let series = match edge {
            Some(to) => entry.edges.get(to)?,
            None => entry.server.as_ref()?,
        };
        let window = window_secs.clamp(1, MAX_WINDOW_SECS);
        let mut merged = Merged::default();
        for s in series.window(now_nanos / NANOS, window) {
            merged.add(&s.latency);
        }
        merged
            .percentile_micros(percentile)
            .map(|us| round(us / 1000.0))
    }

    pub(crate) fn services(&self, now_nanos: u64, window_secs: u64) -> Vec<ServiceFigures> {
        self.service_names()
            .iter()
            .filter_map(|n| self.service(n, now_nanos, window_secs))
            .collect()
    }

    /// Approximate heap bytes held (for the memory benchmark and /metrics).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.services
            .iter()
            .map(|(k, e)| {
                k.capacity()
                    + e.server.as_ref().map_or(0, Series::heap_bytes)
                    + e.edges
                        .iter()
                        .map(|(k, s)| k.capacity() + s.heap_bytes())
                        .sum::<usize>()
                    + e.breakers
                        .iter()
                        .map(|(k, b)| {
                            k.capacity()
                                + b.transitions.capacity() * 8
                                + b.open_calls.capacity() * 12
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}

/// Cuts a name at a character boundary so a flood of huge names stays bounded.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) fn rfc3339(nanos: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000 * NANOS;

    fn server(service: &str, at: u64, ms: u64, error: bool) -> SpanRecord {
        SpanRecord {
            service: service.into(),
            kind: Kind::Server,
            end_nanos: at,
            duration_nanos: ms * 1_000_000,
            error,
            peer: None,
            breaker: None,
            transitions: Vec::new(),
            ids: SpanIds::default(),
        }
    }

    #[test]
    fn red_over_windows() {
        let mut s = Store::default();
        // 100 requests over 10 s, 10 % errors, latencies 1..100 ms.
        for i in 0..100u64 {
            s.record(
                T0 + 10 * NANOS,
                &server("checkout", T0 + i * NANOS / 10, i + 1, i % 10 == 0),
            );
        }
        let now = T0 + 10 * NANOS;
        let f = s.service("checkout", now, 30).expect("known");
        assert_eq!(f.red.requests, 100);
        assert!((f.red.error_rate - 0.1).abs() < 1e-9);
        // The 30 one-second slices ending now cover 29 s (the current second has just begun).
        assert!((f.red.requests_per_second - 100.0 / 29.0).abs() < 1e-3);
        assert!(
            (f.red.latency_ms.p50 - 50.0).abs() <= 0.5 + 0.01 * 50.0,
            "{:?}",
            f.red.latency_ms
        );
        assert!((f.red.latency_ms.p99 - 99.0).abs() <= 0.01 * 99.0 + 0.5);
        // A 5 s window holds the slices of seconds 6 to 10: 4 full seconds of
        // 10 requests each, and the current one, just begun.
        let f5 = s.service("checkout", now, 5).expect("known");
        assert_eq!(f5.red.requests, 40);
        assert!((f5.red.requests_per_second - 10.0).abs() < 1e-9);
        // Half a second later (5 more requests), a steady 10 requests/s reads as 10/s.
        for k in 1..=5 {
            s.record(
                now + NANOS / 2,
                &server("checkout", now + k * NANOS / 11, 1, false),
            );
        }
        let f5 = s.service("checkout", now + NANOS / 2, 5).expect("known");
        assert!((f5.red.requests_per_second - 45.0 / 4.5).abs() < 1e-9);
        // Ten minutes later the window is empty.
        let later = s.service("checkout", now + 600 * NANOS, 30).expect("known");
        assert_eq!(later.red.requests, 0);
    }

    #[test]
    fn breakers_follow_events_and_span_states() {
        let mut s = Store::default();
        let mut span = server("checkout", T0, 5, false);
        span.kind = Kind::Client;
        span.peer = Some("payments".into());
        span.breaker = Some(("payments".into(), Some(BreakerState::Closed)));
        s.record(T0, &span);
        let mut tripping = span.clone();
        tripping.end_nanos = T0 + NANOS;
        tripping.transitions = vec![(T0 + NANOS, "payments".into(), BreakerState::Open)];
        s.record(T0 + NANOS, &tripping);
        for i in 2..5 {
            let mut refused = span.clone();
            refused.end_nanos = T0 + i * NANOS;
            refused.breaker = Some(("payments".into(), Some(BreakerState::Open)));
            s.record(T0 + i * NANOS, &refused);
        }
        let f = s.service("checkout", T0 + 5 * NANOS, 30).expect("known");
        let b = &f.breakers[0];
        assert_eq!((b.name.as_str(), b.state), ("payments", BreakerState::Open));
        assert_eq!(b.transitions, 1);
        assert_eq!(b.short_circuited, 3);
        assert!((b.for_seconds - 4.0).abs() < 1e-9);
        assert_eq!(f.edges[0].to, "payments");
        assert_eq!(f.edges[0].red.requests, 5);
        // Older evidence does not roll the state back.
        s.record(T0 + 6 * NANOS, &span);
        assert_eq!(
            s.service("checkout", T0 + 6 * NANOS, 30)
                .expect("known")
                .breakers[0]
                .state,
            BreakerState::Open
        );
    }

    #[test]
    fn memory_is_bounded_by_the_limits() {
        let mut s = Store::new(Limits {
            max_services: 10,
            ..Limits::default()
        });
        for i in 0..1000 {
            s.record(T0, &server(&format!("svc-{i}"), T0, 1, false));
        }
        assert_eq!(s.service_names().len(), 10);
        assert_eq!(s.stats().dropped_services, 990);
        let huge = "x".repeat(1 << 20);
        s.record(T0, &server(&huge, T0, 1, false));
        assert!(s.service_names().iter().all(|n| n.len() <= 200));
    }

    #[test]
    fn the_windows_stay_under_their_memory_bound() {
        let mut s = Store::new(Limits {
            max_bytes: 64 << 10,
            ..Limits::default()
        });
        // Many seconds of widely spread latencies for many services.
        for sec in 0..300u64 {
            for svc in 0..20 {
                for ms in [1u64, 7, 40, 300, 2000, 9000] {
                    s.record(
                        T0 + sec * NANOS,
                        &server(&format!("s{svc}"), T0 + sec * NANOS, ms + sec, false),
                    );
                }
            }
        }
        assert!(s.window_bytes <= (64 << 10) + 1024, "{}", s.window_bytes);
        assert!(s.stats().dropped_memory > 0);
    }

    #[test]
    fn a_client_span_without_peer_takes_its_child_server_spans_service() {
        let mut s = Store::default();
        let client = |span: u64| SpanRecord {
            kind: Kind::Client,
            ids: SpanIds {
                trace: 7,
                span,
                parent: 1,
            },
            ..server("frontend", T0, 20, false)
        };
        let child = |parent: u64, err: bool| SpanRecord {
            ids: SpanIds {
                trace: 7,
                span: 100 + parent,
                parent,
            },
            ..server("checkout", T0, 15, err)
        };
        // Client first, then its child; and the other way round.
        s.record(T0, &client(2));
        s.record(T0, &child(2, false));
        s.record(T0, &child(3, false));
        s.record(
            T0,
            &SpanRecord {
                error: true,
                ..client(3)
            },
        );
        // A child of some other span does not count.
        s.record(T0, &child(9, false));
        let f = s.service("frontend", T0, 10).expect("known");
        assert_eq!(f.edges.len(), 1);
        assert_eq!(
            (
                f.edges[0].to.as_str(),
                f.edges[0].red.requests,
                f.edges[0].red.error_rate
            ),
            ("checkout", 2, 0.5)
        );
    }

    #[test]
    fn any_percentile_for_latency_checks() {
        let mut s = Store::default();
        for ms in 1..=1000u64 {
            s.record(T0, &server("a", T0, ms, false));
        }
        let p999 = s.latency_ms("a", None, 99.9, T0, 30).expect("requests");
        assert!((p999 - 999.0).abs() <= 999.0 * 0.01, "{p999}");
        assert_eq!(s.latency_ms("a", Some("nobody"), 50.0, T0, 30), None);
        assert_eq!(s.latency_ms("a", None, 50.0, T0 + 600 * NANOS, 30), None);
    }

    #[test]
    fn idle_series_and_services_are_let_go() {
        let mut s = Store::new(Limits {
            max_services: 2,
            ..Limits::default()
        });
        s.record(T0, &server("a", T0, 5, false));
        s.record(T0, &server("b", T0, 5, false));
        s.record(T0, &server("c", T0, 5, false));
        assert_eq!(s.stats().dropped_services, 1);
        assert!(s.window_bytes > 0);
        // Five minutes of silence later, the old services are gone and the
        // bound has room again.
        let later = T0 + (MAX_WINDOW_SECS + 1) * NANOS;
        s.record(later, &server("c", later, 5, false));
        assert_eq!(s.service_names(), vec!["c".to_owned()]);
        assert_eq!(s.stats().dropped_services, 1);
    }

    #[test]
    fn a_slow_call_that_started_before_a_trip_does_not_close_the_breaker() {
        let mut s = Store::default();
        let call = |at: u64, ms: u64, state: BreakerState, trip: bool| SpanRecord {
            kind: Kind::Client,
            peer: Some("payments".into()),
            breaker: Some(("payments".into(), Some(state))),
            transitions: if trip {
                vec![(at, "payments".into(), BreakerState::Open)]
            } else {
                vec![]
            },
            ..server("checkout", at, ms, false)
        };
        // B trips the breaker at 1.0 s; A started closed at 0.9 s and ends at 1.15 s.
        s.record(
            T0 + 2 * NANOS,
            &call(T0 + NANOS, 1, BreakerState::Closed, true),
        );
        s.record(
            T0 + 2 * NANOS,
            &call(
                T0 + NANOS + NANOS * 15 / 100,
                250,
                BreakerState::Closed,
                false,
            ),
        );
        let b = &s
            .service("checkout", T0 + 2 * NANOS, 30)
            .expect("known")
            .breakers[0];
        assert_eq!(b.state, BreakerState::Open);
        assert_eq!(b.since, rfc3339(T0 + NANOS));
    }

    #[test]
    fn absurd_times_neither_panic_nor_stick() {
        let mut s = Store::default();
        let mut span = server("a", u64::MAX, 5, false);
        span.breaker = Some(("b".into(), Some(BreakerState::Closed)));
        span.transitions = vec![
            (u64::MAX, "b".into(), BreakerState::Open),
            (0, "b".into(), BreakerState::Open),
        ];
        s.record(T0, &span);
        let f = s.service("a", T0, 10).expect("known");
        assert_eq!(f.red.requests, 1);
        assert_eq!(f.breakers[0].since, rfc3339(T0));
    }

    #[test]
    fn skewed_clocks_count_at_receive_time() {
        let mut s = Store::default();
        s.record(T0, &server("a", T0 + 3600 * NANOS, 1, false));
        s.record(T0, &server("a", 0, 1, false));
        assert_eq!(s.service("a", T0, 10).expect("known").red.requests, 2);
    }
}
