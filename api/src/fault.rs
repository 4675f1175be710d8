//! Fault kinds shared by `Experiment` (where peers may be target names) and
//! `NodeFaults` (where they are resolved to CIDRs).

use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    decode::{Cx, Decode, Fields},
    diag::Path,
    string_enum,
    units::{Duration, Percent, Rate, Size},
    validate::Problems,
    yaml::{Node, quote},
};

/// The most peers, destinations or ports one fault may list.
pub const MAX_PEERS: usize = 64;

string_enum! {
    /// Which traffic a partition cuts, seen from the target.
    #[derive(Default)]
    pub enum Direction ("a direction") {
        Ingress = "ingress",
        Egress = "egress",
        #[default]
        Both = "both",
    }
}

string_enum! {
    /// Signals a kill fault may send.
    #[derive(Default)]
    pub enum Signal ("a signal name") {
        Hup = "SIGHUP",
        Int = "SIGINT",
        Quit = "SIGQUIT",
        Abrt = "SIGABRT",
        #[default]
        Kill = "SIGKILL",
        Usr1 = "SIGUSR1",
        Usr2 = "SIGUSR2",
        Term = "SIGTERM",
        Cont = "SIGCONT",
        Stop = "SIGSTOP",
    }
}

impl Signal {
    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Abrt => 6,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Cont => 18,
            Signal::Stop => 19,
        }
    }
}

/// Delay (and optionally lose) the target's outgoing packets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Added delay, greater than 0.
    pub delay: Duration,
    /// Random variation around `delay` (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// How much each packet's delay depends on the previous one (default 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Percent>,
    /// Share of packets dropped (default 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    /// Only traffic to these destinations is affected (target names in an
    /// Experiment, CIDRs in NodeFaults); empty means all traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub to: Vec<String>,
}

/// Impair the target's outgoing packets: any mix of delay, loss,
/// corruption, duplication, reordering and a bandwidth limit, as one link
/// would (netem on a node). `latency` is the common case of this with a
/// delay alone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema, Default)]
#[x_kube(
    validation = Rule::new("has(self.delay) || has(self.loss) || has(self.corrupt) || has(self.duplicate) || has(self.rate)").message("a network fault needs one of delay, loss, corrupt, duplicate or rate"),
    validation = Rule::new("has(self.delay) || !(has(self.jitter) || has(self.correlation) || has(self.reorder))").message("jitter, correlation and reorder need a delay"),
    validation = Rule::new("has(self.loss) || !has(self.lossCorrelation)").message("lossCorrelation needs a loss")
)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Added delay (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Random variation around `delay` (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// How much each packet's delay depends on the previous one (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Percent>,
    /// Share of packets dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    /// How much each packet's loss depends on the previous one's, for
    /// bursts of loss (needs `loss`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_correlation: Option<Percent>,
    /// Share of packets with a bit flipped at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
    /// Share of packets sent twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    /// Share of packets sent at once, ahead of the others, which wait for
    /// `delay` (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    /// The most the target may send, as over a link this fast: packets
    /// beyond it wait in a queue of at most about a second of traffic, then
    /// are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Only traffic to these destinations is affected (target names in an
    /// Experiment, CIDRs in NodeFaults); empty means all traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub to: Vec<String>,
}

impl Network {
    /// What it does to packets, in a few words: `delay 50ms ±5ms, 10% loss,
    /// rate 1mbit` (destinations left out).
    pub fn impairments(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            parts.push(match self.jitter {
                Some(j) => format!("delay {d} ±{j}"),
                None => format!("delay {d}"),
            });
        }
        for (p, what) in [
            (self.loss, "loss"),
            (self.corrupt, "corrupt"),
            (self.duplicate, "duplicate"),
            (self.reorder, "reorder"),
        ] {
            if let Some(p) = p {
                parts.push(format!("{p} {what}"));
            }
        }
        if let Some(r) = self.rate {
            parts.push(format!("rate {r}"));
        }
        parts.join(", ")
    }

    const FIELDS: [&'static str; 10] = [
        "delay",
        "jitter",
        "correlation",
        "loss",
        "lossCorrelation",
        "corrupt",
        "duplicate",
        "reorder",
        "rate",
        "to",
    ];
}

/// A latency fault is a network fault with a delay (and maybe loss): the
/// agent sets both up the same way.
impl From<&Latency> for Network {
    fn from(l: &Latency) -> Network {
        Network {
            delay: Some(l.delay),
            jitter: l.jitter,
            correlation: l.correlation,
            loss: l.loss,
            to: l.to.clone(),
            ..Network::default()
        }
    }
}

string_enum! {
    /// How a kill fault kills.
    #[derive(Default)]
    pub enum KillMethod ("a kill method") {
        /// A signal to every process of the target (through the node agent).
        #[default]
        Signal = "signal",
        /// The pod is evicted through the Kubernetes API (by the controller),
        /// PodDisruptionBudgets respected, so its owner replaces it; in local
        /// mode, the service gets SIGKILL and its supervisor restarts it.
        Delete = "delete",
        /// As `delete`, but deleted outright: PodDisruptionBudgets do not
        /// stop it. An explicit opt-in.
        ForceDelete = "force-delete",
    }
}

impl KillMethod {
    fn is_signal(&self) -> bool {
        *self == KillMethod::Signal
    }

    /// The controller takes the pod away through the API (no agent involved).
    pub fn deletes_pod(&self) -> bool {
        matches!(self, KillMethod::Delete | KillMethod::ForceDelete)
    }
}

/// Send a signal to every process of the target (or delete the pod), once
/// or repeatedly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Kill {
    /// The signal to send (default SIGKILL).
    #[serde(default)]
    pub signal: Signal,
    /// signal (default) or delete (Experiments only: the controller deletes the pod).
    #[serde(default, skip_serializing_if = "KillMethod::is_signal")]
    pub method: KillMethod,
    /// Repeat this often until the fault ends; without it, the signal is sent once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// Signal the pod's sandbox (`pause`) process too: the whole pod is
    /// then recreated in place by its kubelet (new sandbox and network
    /// namespace, every container restarted), as when a node's runtime
    /// loses it. Without it the sandbox is left alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

/// Cut the target off from some peers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// Which traffic is cut (default both).
    #[serde(default)]
    pub direction: Direction,
    /// Who the target is cut off from: target names in an Experiment, CIDRs in NodeFaults.
    #[schemars(length(min = 1, max = 64))]
    pub peers: Vec<String>,
    /// Only these ports (the peer's port for egress, the target's for ingress); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1)))]
    pub ports: Vec<u16>,
}

/// The most CPU workers one stress fault starts.
pub const MAX_STRESS_WORKERS: u32 = 64;

/// Load the target's own cgroup: CPU workers and memory, charged to the
/// target as if its own processes did the work (its limits, CPU throttling
/// and OOM killer apply).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, kube::KubeSchema, Default)]
#[x_kube(validation = Rule::new("has(self.cpu) || has(self.memory)").message("a stress fault needs cpu, memory or both"))]
#[serde(rename_all = "camelCase")]
pub struct Stress {
    /// Busy workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStress>,
    /// Memory allocated, touched and held until the fault ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStress>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuStress {
    /// How many workers (threads) run (default 1).
    #[serde(default = "one_worker")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: u32,
    /// How busy each worker keeps one core (default 100%).
    #[serde(default = "full_load")]
    pub load: Percent,
}

fn one_worker() -> u32 {
    1
}

fn full_load() -> Percent {
    Percent::new(100.0).unwrap_or_default()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStress {
    /// How much memory to allocate and touch.
    pub size: Size,
    /// Grow to `size` evenly over this long (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_up: Option<Duration>,
}

impl Stress {
    /// `2 CPU workers at 50%, 256Mi memory over 30s`.
    pub fn load(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpu {
            let s = if c.workers == 1 { "" } else { "s" };
            parts.push(format!("{} CPU worker{s} at {}", c.workers, c.load));
        }
        if let Some(m) = &self.memory {
            parts.push(match m.ramp_up {
                Some(r) if !r.is_zero() => format!("{} memory over {r}", m.size),
                _ => format!("{} memory", m.size),
            });
        }
        parts.join(", ")
    }
}

/// Exactly one kind of fault. Written as one of the keys `latency`, `kill`,
/// `partition` next to the fault's other fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FaultAction {
    Latency(Latency),
    Network(Network),
    Kill(Kill),
    Partition(Partition),
    Stress(Stress),
}

impl FaultAction {
    pub const KEYS: [&'static str; 5] = ["latency", "network", "kill", "partition", "stress"];

    /// A fault mapping's known keys: `fields` and every kind's key.
    pub(crate) fn keys_with(fields: &[&'static str]) -> Vec<&'static str> {
        fields.iter().chain(Self::KEYS.iter()).copied().collect()
    }

    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Latency(_) => "latency",
            FaultAction::Network(_) => "network",
            FaultAction::Kill(_) => "kill",
            FaultAction::Partition(_) => "partition",
            FaultAction::Stress(_) => "stress",
        }
    }

    /// What a node agent counts as this fault's effect, in the plural.
    pub fn effect_unit(&self) -> &'static str {
        match self {
            FaultAction::Latency(_) => "packets delayed",
            FaultAction::Network(_) => "packets impaired",
            FaultAction::Kill(k) if k.method == KillMethod::Delete => "pods evicted",
            FaultAction::Kill(k) if k.method == KillMethod::ForceDelete => "pods deleted",
            FaultAction::Kill(_) => "processes signalled",
            FaultAction::Partition(_) => "packets dropped",
            FaultAction::Stress(_) => "CPU-ms spent by workers",
        }
    }

    /// One line saying what the fault does, for displays: `latency 300ms
    /// ±20ms, 5% loss`, `kill SIGTERM every 10s`, `partition from db`.
    pub fn summary(&self) -> String {
        match self {
            FaultAction::Latency(l) => {
                let mut s = format!("latency {}", l.delay);
                if let Some(j) = l.jitter {
                    s.push_str(&format!(" ±{j}"));
                }
                if !l.to.is_empty() {
                    s.push_str(&format!(" to {}", l.to.join(", ")));
                }
                if let Some(p) = l.loss {
                    s.push_str(&format!(", {p} loss"));
                }
                s
            }
            FaultAction::Network(n) => {
                let mut s = format!("network {}", n.impairments());
                if !n.to.is_empty() {
                    s.push_str(&format!(" to {}", n.to.join(", ")));
                }
                s
            }
            FaultAction::Kill(k) => {
                let mut s = match k.method {
                    KillMethod::Signal => format!("kill {}", k.signal),
                    KillMethod::Delete => "evict pod".to_owned(),
                    KillMethod::ForceDelete => "delete pod (force)".to_owned(),
                };
                if let Some(every) = k.every {
                    s.push_str(&format!(" every {every}"));
                }
                s
            }
            FaultAction::Partition(p) => {
                let preposition = match p.direction {
                    Direction::Ingress => "from",
                    Direction::Egress => "to",
                    Direction::Both => "with",
                };
                let mut s = format!("partition {preposition} {}", p.peers.join(", "));
                if !p.ports.is_empty() {
                    let ports: Vec<String> = p.ports.iter().map(u16::to_string).collect();
                    s.push_str(&format!(" ports {}", ports.join(",")));
                }
                s
            }
            FaultAction::Stress(st) => format!("stress {}", st.load()),
        }
    }

    /// Decodes the one fault-kind key of a fault mapping, reporting none or several.
    pub(crate) fn decode_in(cx: &mut Cx, f: &Fields<'_>, what: &str) -> Option<FaultAction> {
        let present = f.present(&Self::KEYS);
        match present.as_slice() {
            [] if f.suggested_any(&Self::KEYS) => None,
            [] => {
                cx.error(
                    f.pos(),
                    f.path(),
                    format!(
                        "{what} needs one fault kind: latency, network, kill, partition or stress"
                    ),
                );
                None
            }
            [one] => match *one {
                "latency" => f.req(cx, "latency").map(FaultAction::Latency),
                "network" => f.req(cx, "network").map(FaultAction::Network),
                "kill" => f.req(cx, "kill").map(FaultAction::Kill),
                "stress" => f.req(cx, "stress").map(FaultAction::Stress),
                _ => f.req(cx, "partition").map(FaultAction::Partition),
            },
            [first, rest @ ..] => {
                for other in rest {
                    let pos = f.key_pos(other);
                    cx.error(
                        pos,
                        &f.path().key(other),
                        format!("{what} has one kind only; it already has {first}"),
                    );
                }
                None
            }
        }
    }

    /// Checks values; `peer_ok` decides which peer/destination names are
    /// acceptable besides CIDRs (target names in an Experiment).
    pub(crate) fn validate(
        &self,
        path: &Path,
        p: &mut Problems,
        peer_ok: &dyn Fn(&str) -> Result<(), String>,
    ) {
        match self {
            FaultAction::Latency(l) => {
                let path = path.key("latency");
                if l.delay.is_zero() {
                    p.add(path.key("delay"), "must be greater than 0s");
                }
                check_peers(&path.key("to"), &l.to, p, peer_ok);
            }
            FaultAction::Network(n) => {
                let path = path.key("network");
                let impairs = n.delay.is_some_and(|d| !d.is_zero())
                    || [n.loss, n.corrupt, n.duplicate]
                        .iter()
                        .any(|p| p.is_some_and(|p| p.points() > 0.0))
                    || n.rate.is_some();
                if !impairs {
                    p.add(
                        path.clone(),
                        "impairs nothing: set a delay above 0s, a loss, corrupt or duplicate share above 0%, or a rate",
                    );
                }
                if n.delay.is_some_and(Duration::is_zero) {
                    p.add(path.key("delay"), "must be greater than 0s (or left out)");
                }
                let no_delay = n.delay.is_none_or(Duration::is_zero);
                for (field, set) in [
                    ("jitter", n.jitter.is_some()),
                    ("correlation", n.correlation.is_some()),
                    ("reorder", n.reorder.is_some()),
                ] {
                    if set && no_delay {
                        p.add(
                            path.key(field),
                            "needs a delay: it varies or overtakes the delay packets wait",
                        );
                    }
                }
                if n.loss_correlation.is_some() && n.loss.is_none() {
                    p.add(path.key("lossCorrelation"), "needs a loss");
                }
                check_peers(&path.key("to"), &n.to, p, peer_ok);
            }
            FaultAction::Stress(st) => {
                let path = path.key("stress");
                if st.cpu.is_none() && st.memory.is_none() {
                    p.add(path.clone(), "stresses nothing: set cpu, memory or both");
                }
                if let Some(c) = &st.cpu {
                    let path = path.key("cpu");
                    if c.workers == 0 || c.workers > MAX_STRESS_WORKERS {
                        p.add(
                            path.key("workers"),
                            format!("must be 1 to {MAX_STRESS_WORKERS}"),
                        );
                    }
                    if c.load.points() <= 0.0 {
                        p.add(path.key("load"), "must be above 0% (or leave cpu out)");
                    }
                }
            }
            FaultAction::Kill(k) => {
                if k.every.is_some_and(Duration::is_zero) {
                    p.add(path.key("kill").key("every"), "must be greater than 0s");
                }
                if k.sandbox && k.method.deletes_pod() {
                    p.add(
                        path.key("kill").key("sandbox"),
                        format!(
                            "is for signals; method {} takes the whole pod already",
                            k.method
                        ),
                    );
                }
            }
            FaultAction::Partition(part) => {
                let path = path.key("partition");
                if part.peers.is_empty() {
                    p.add(path.key("peers"), "needs at least one peer");
                }
                check_peers(&path.key("peers"), &part.peers, p, peer_ok);
                // Over the limit, one report says it all; per-port checks would only add noise.
                if part.ports.len() > MAX_PEERS {
                    p.add(
                        path.key("ports"),
                        format!("lists more than {MAX_PEERS} ports"),
                    );
                    return;
                }
                let mut seen = HashSet::new();
                for (i, port) in part.ports.iter().enumerate() {
                    if *port == 0 {
                        p.add(
                            path.key("ports").index(i),
                            "port 0 is not a port; use 1 to 65535",
                        );
                    } else if !seen.insert(*port) {
                        p.add(
                            path.key("ports").index(i),
                            format!("port {port} is listed twice"),
                        );
                    }
                }
            }
        }
    }
}

fn check_peers(
    path: &Path,
    peers: &[String],
    p: &mut Problems,
    peer_ok: &dyn Fn(&str) -> Result<(), String>,
) {
    if peers.len() > MAX_PEERS {
        p.add(path.clone(), format!("lists more than {MAX_PEERS} entries"));
        return;
    }
    let mut seen = HashSet::new();
    for (i, peer) in peers.iter().enumerate() {
        if !seen.insert(peer.as_str()) {
            p.add(path.index(i), format!("{} is listed twice", quote(peer)));
        } else if parse_cidr(peer).is_none()
            && let Err(msg) = peer_ok(peer)
        {
            p.add(path.index(i), msg);
        }
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let len = match len {
        // Digits only (no sign, no spaces), as the CRD's validation says.
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 => {
            l.parse::<u8>().ok()?
        }
        Some(_) => return None,
        None => return Some(IpNet::from(addr)),
    };
    // ipnet refuses a prefix longer than the address.
    IpNet::new(addr, len).ok()
}

impl Decode for Latency {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &["delay", "jitter", "correlation", "loss", "to"],
        )?;
        let delay = f.req(cx, "delay");
        let jitter = f.opt(cx, "jitter");
        let correlation = f.opt(cx, "correlation");
        let loss = f.opt(cx, "loss");
        let to = f.list(cx, "to");
        Some(Latency {
            delay: delay?,
            jitter: jitter?,
            correlation: correlation?,
            loss: loss?,
            to: to?,
        })
    }
}

impl Decode for Network {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &Network::FIELDS)?;
        let delay = f.opt(cx, "delay");
        let jitter = f.opt(cx, "jitter");
        let correlation = f.opt(cx, "correlation");
        let loss = f.opt(cx, "loss");
        let loss_correlation = f.opt(cx, "lossCorrelation");
        let corrupt = f.opt(cx, "corrupt");
        let duplicate = f.opt(cx, "duplicate");
        let reorder = f.opt(cx, "reorder");
        let rate = f.opt(cx, "rate");
        let to = f.list(cx, "to");
        Some(Network {
            delay: delay?,
            jitter: jitter?,
            correlation: correlation?,
            loss: loss?,
            loss_correlation: loss_correlation?,
            corrupt: corrupt?,
            duplicate: duplicate?,
            reorder: reorder?,
            rate: rate?,
            to: to?,
        })
    }
}

impl Decode for Stress {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["cpu", "memory"])?;
        let cpu = f.opt(cx, "cpu");
        let memory = f.opt(cx, "memory");
        Some(Stress {
            cpu: cpu?,
            memory: memory?,
        })
    }
}

impl Decode for CpuStress {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["workers", "load"])?;
        let workers = f.opt(cx, "workers");
        let load = f.opt(cx, "load");
        Some(CpuStress {
            workers: workers?.unwrap_or_else(one_worker),
            load: load?.unwrap_or_else(full_load),
        })
    }
}

impl Decode for MemoryStress {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["size", "rampUp"])?;
        let size = f.req(cx, "size");
        let ramp_up = f.opt(cx, "rampUp");
        Some(MemoryStress {
            size: size?,
            ramp_up: ramp_up?,
        })
    }
}

impl Decode for Kill {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["signal", "method", "every", "sandbox"])?;
        let signal = f.opt(cx, "signal");
        let method = f.opt(cx, "method");
        let every = f.opt(cx, "every");
        let sandbox = f.opt(cx, "sandbox");
        Some(Kill {
            signal: signal?.unwrap_or_default(),
            method: method?.unwrap_or_default(),
            every: every?,
            sandbox: sandbox?.unwrap_or(false),
        })
    }
}

impl Decode for Partition {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["direction", "peers", "ports"])?;
        let direction = f.opt(cx, "direction");
        let peers = f.req(cx, "peers");
        let ports = f.list(cx, "ports");
        Some(Partition {
            direction: direction?.unwrap_or_default(),
            peers: peers?,
            ports: ports?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_say_what_a_fault_does() {
        let parse = |yaml: &str| -> FaultAction {
            let doc = format!(
                "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: x}}
spec:
  duration: 1m
  targets: {{a: {{labels: {{app: a}}}}, db: {{labels: {{app: db}}}}}}
  faults:
    - {{name: f, target: a, {yaml}}}
"
            );
            crate::parse_one::<crate::Experiment>(doc.as_bytes())
                .expect("valid")
                .spec
                .faults
                .remove(0)
                .action
        };
        for (yaml, summary) in [
            ("latency: {delay: 300ms}", "latency 300ms"),
            (
                "latency: {delay: 1s, jitter: 50ms, loss: 5%, to: [db]}",
                "latency 1s ±50ms to db, 5% loss",
            ),
            (
                "kill: {signal: SIGTERM, every: 10s}",
                "kill SIGTERM every 10s",
            ),
            (
                "network: {loss: 10%, corrupt: 1%, rate: 1mbit, to: [db]}",
                "network 10% loss, 1% corrupt, rate 1mbit to db",
            ),
            (
                "network: {delay: 50ms, jitter: 5ms, reorder: 25%}",
                "network delay 50ms ±5ms, 25% reorder",
            ),
            ("kill: {method: delete}", "evict pod"),
            ("kill: {method: force-delete}", "delete pod (force)"),
            (
                "partition: {direction: ingress, peers: [db], ports: [5432]}",
                "partition from db ports 5432",
            ),
            (
                "partition: {peers: [db, 10.0.0.0/8]}",
                "partition with db, 10.0.0.0/8",
            ),
        ] {
            assert_eq!(parse(yaml).summary(), summary, "{yaml}");
        }
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert_eq!(
            parse_cidr("10.1.2.3").map(|n| n.prefix_len()),
            Some(32),
            "an address alone is one host"
        );
        assert_eq!(parse_cidr("fd00::1").map(|n| n.prefix_len()), Some(128));
        assert!(parse_cidr("fd00::/129").is_none());
        assert!(parse_cidr("10.0.0.0/ 8").is_none());
        assert!(parse_cidr("fd00::/8").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("10.0.0.0/+8").is_none());
        assert!(parse_cidr("payments").is_none());
    }

    #[test]
    fn signals() {
        assert_eq!("SIGKILL".parse::<Signal>().map(Signal::number), Ok(9));
        let err = "KILL".parse::<Signal>().expect_err("no prefix");
        assert!(err.0.contains("did you mean SIGKILL?"), "{err}");
        let err = "SIGFOO".parse::<Signal>().expect_err("unknown");
        assert!(err.0.contains("is not a signal name"), "{err}");
    }
}
