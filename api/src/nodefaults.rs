//! The `NodeFaults` kind: one node agent's desired state. Cluster-scoped, one
//! object per node, written by the controller; also the file the agent follows
//! in standalone mode.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    decode::{Cx, Decode, Fields, decode_from_str},
    diag::Path,
    fault::FaultAction,
    string_enum,
    validate::{Problems, unique},
    yaml::{Node, quote},
};

pub const MAX_NODE_FAULTS: usize = 4096;

/// The faults one node's agent must have applied, each until its deadline.
// The lint mistakes the repeated `type_` of two printer columns for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "faultline.dev",
    version = "v1alpha1",
    kind = "NodeFaults",
    plural = "nodefaults",
    status = "NodeFaultsStatus",
    shortname = "nf",
    category = "faultline",
    derive = "PartialEq",
    printcolumn(name = "Faults", type_ = "integer", json_path = ".status.applied"),
    printcolumn(
        name = "Converged",
        type_ = "integer",
        json_path = ".status.observedGeneration"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeFaultsSpec {
    /// The desired faults; ids are unique.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub faults: Vec<NodeFault>,
}

/// One fault instance on one target, with an absolute deadline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFault {
    /// Unique within the object, e.g. `shop/payments-slowdown/slow-payments/0`.
    #[schemars(length(min = 1, max = 253))]
    pub id: String,
    pub target: NodeTarget,
    /// The agent removes the fault at this time on its own and never applies
    /// it after this time.
    pub expires_at: Time,
    /// W3C trace context of the controller's span, so the agent's spans join the experiment's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 55))]
    pub traceparent: Option<String>,
    #[serde(flatten)]
    pub action: FaultAction,
}

/// Exactly one way of naming what the fault acts on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NodeTarget {
    /// A pod on this node, found through its cgroup.
    Pod(PodRef),
    /// A network namespace file, e.g. `/run/netns/NAME`.
    Netns(String),
    /// A process: its network namespace and cgroup.
    Pid(u32),
    /// A cgroup v2 directory, e.g. `/sys/fs/cgroup/...`.
    Cgroup(String),
}

impl NodeTarget {
    pub const KEYS: [&'static str; 4] = ["pod", "netns", "pid", "cgroup"];
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    /// The pod's `metadata.uid`.
    pub uid: String,
}

string_enum! {
    pub enum FaultState ("a fault state") {
        Applied = "applied",
        Failed = "failed",
        Removed = "removed",
    }
}

/// What the agent reports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeFaultsStatus {
    /// The spec generation the agent has converged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many faults are applied now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<NodeFaultStatus>,
    /// How far the API server's clock is ahead of this node's, in seconds
    /// (negative: behind), when it is 2 s or more; the agent then judges
    /// deadlines by the later of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_seconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFaultStatus {
    pub id: String,
    pub state: FaultState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// What the fault has done on this node so far, as the kernel counts
    /// it: packets a partition dropped, packets a latency fault delayed,
    /// processes a kill signalled. Absent when it cannot be counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub effect: Option<i64>,
}

// ---- decoding ----

impl Decode for NodeFaultsSpec {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["faults"])?;
        let faults = f.list(cx, "faults");
        Some(NodeFaultsSpec { faults: faults? })
    }
}

impl Decode for NodeFault {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &FaultAction::keys_with(&["id", "target", "expiresAt", "traceparent"]),
        )?;
        let id = f.req(cx, "id");
        let target = f.req(cx, "target");
        let expires_at = f.req::<Timestamp>(cx, "expiresAt");
        let traceparent = f.opt(cx, "traceparent");
        let action = FaultAction::decode_in(cx, &f, "a fault");
        Some(NodeFault {
            id: id?,
            target: target?,
            expires_at: Time(expires_at?.0),
            traceparent: traceparent?,
            action: action?,
        })
    }
}

/// An RFC 3339 time, decoded with a message that says what is expected.
struct Timestamp(jiff::Timestamp);

impl std::str::FromStr for Timestamp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "{} is not an RFC 3339 time (like 2026-11-22T10:02:00Z)",
                quote(s)
            )
        };
        // jiff also accepts forms the apiserver refuses (a space for T,
        // lowercase, offsets without a colon, named zones); check the shape first.
        if !is_rfc3339(s) {
            return Err(bad());
        }
        s.parse::<jiff::Timestamp>()
            .map(Timestamp)
            .map_err(|_| bad())
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with 1 to 9 fraction digits.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| {
        b.get(from..from + n)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let date_time = digits(0, 4)
        && at(4, b'-')
        && digits(5, 2)
        && at(7, b'-')
        && digits(8, 2)
        && at(10, b'T')
        && digits(11, 2)
        && at(13, b':')
        && digits(14, 2)
        && at(16, b':')
        && digits(17, 2);
    let Some(mut rest) = s.get(19..).filter(|_| date_time) else {
        return false;
    };
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        rest = &frac[n..];
    }
    let o = rest.as_bytes();
    rest == "Z"
        || (o.len() == 6
            && matches!(o[0], b'+' | b'-')
            && o[1..3].iter().all(u8::is_ascii_digit)
            && o[3] == b':'
            && o[4..6].iter().all(u8::is_ascii_digit))
}

impl Decode for Timestamp {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        decode_from_str(cx, node, path)
    }
}

impl Decode for NodeTarget {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &NodeTarget::KEYS)?;
        let present = f.present(&NodeTarget::KEYS);
        match present.as_slice() {
            ["pod"] => f.req(cx, "pod").map(NodeTarget::Pod),
            ["netns"] => f.req(cx, "netns").map(NodeTarget::Netns),
            ["pid"] => f.req(cx, "pid").map(NodeTarget::Pid),
            ["cgroup"] => f.req(cx, "cgroup").map(NodeTarget::Cgroup),
            [] if f.suggested_any(&NodeTarget::KEYS) => None,
            [] => {
                cx.error(f.pos(), path, "needs one of pod, netns, pid or cgroup");
                None
            }
            [first, rest @ ..] => {
                for other in rest {
                    let pos = f.key_pos(other);
                    cx.error(
                        pos,
                        &path.key(other),
                        format!("a target is one thing only; it already has {first}"),
                    );
                }
                None
            }
        }
    }
}

impl Decode for PodRef {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["uid"])?;
        let uid = f.req(cx, "uid");
        Some(PodRef { uid: uid? })
    }
}

// ---- validation ----

impl NodeFaultsSpec {
    pub fn validate(&self, p: &mut Problems) {
        validate_faults(&self.faults, p);
    }
}

/// The checks of [`NodeFaultsSpec::validate`] on a list of entries (one
/// writer's share of an object, without building the object).
pub fn validate_faults(faults: &[NodeFault], p: &mut Problems) {
    let path = Path::root().key("spec").key("faults");
    if faults.len() > MAX_NODE_FAULTS {
        p.add(
            path.clone(),
            format!("has more than {MAX_NODE_FAULTS} faults"),
        );
        return;
    }
    unique(
        p,
        faults
            .iter()
            .enumerate()
            .map(|(i, f)| (path.index(i).key("id"), f.id.as_str())),
        "fault id",
    );
    for (i, f) in faults.iter().enumerate() {
        let fp = path.index(i);
        if let Err(e) = fault_id(&f.id) {
            p.add(fp.key("id"), e);
        }
        let tp = fp.key("target");
        match &f.target {
            NodeTarget::Pod(pod) => {
                if !is_uuid(&pod.uid) {
                    p.add(
                        tp.key("pod").key("uid"),
                        format!("{} is not a pod UID (a UUID)", quote(&pod.uid)),
                    );
                }
            }
            NodeTarget::Netns(ns) => {
                if let Err(e) = abs_path(ns) {
                    p.add(tp.key("netns"), e);
                }
            }
            NodeTarget::Pid(pid) => {
                if *pid == 0 {
                    p.add(tp.key("pid"), "must be a process id, 1 or more");
                }
            }
            NodeTarget::Cgroup(cg) => {
                if let Err(e) = abs_path(cg) {
                    p.add(tp.key("cgroup"), e);
                }
            }
        }
        if let Some(tp) = &f.traceparent
            && !is_traceparent(tp)
        {
            p.add(
                fp.key("traceparent"),
                format!(
                    "{} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
                    quote(tp)
                ),
            );
        }
        let cidr_only = |peer: &str| -> Result<(), String> {
            Err(format!(
                "{} is not a CIDR; NodeFaults carry resolved addresses like 10.0.0.0/8",
                quote(peer)
            ))
        };
        f.action.validate(&fp, p, &cidr_only);
        if let FaultAction::Kill(k) = &f.action
            && k.method.deletes_pod()
        {
            p.add(
                fp.key("kill").key("method"),
                "delete and force-delete are done by the controller through the Kubernetes API; a node agent only sends signals",
            );
        }
    }
}

fn fault_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'))
    {
        return Err(format!(
            "{} may only hold letters, digits and - _ . / :",
            quote(id)
        ));
    }
    Ok(())
}

fn abs_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{} is not an absolute path", quote(p)));
    }
    if p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err(format!("{} must not contain .. or NUL", quote(p)));
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_uuid("6f1c2d3e-0000-4000-8000-000000000001"));
        assert!(!is_uuid("6f1c2d3e-0000-4000-8000"));
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(fault_id("shop/payments-slowdown/slow-payments/0").is_ok());
        assert!(fault_id("a b").is_err());
        assert!(abs_path("/run/netns/x").is_ok());
        assert!(abs_path("run/netns/x").is_err());
        assert!(abs_path("/sys/fs/cgroup/../../etc").is_err());
    }

    #[test]
    fn timestamps_are_strict_rfc3339() {
        for ok in [
            "2026-11-22T10:02:00Z",
            "2026-11-22T10:02:00.5Z",
            "2026-11-22T10:02:00.123456789Z",
            "2026-11-22T10:02:00+01:00",
            "2026-11-22T10:02:00.25-05:30",
        ] {
            assert!(ok.parse::<Timestamp>().is_ok(), "{ok}");
        }
        for bad in [
            "2026-11-22 10:02:00Z",
            "2026-11-22t10:02:00z",
            "2026-11-22T10:02:00",
            "2026-11-22T10:02:00+0100",
            "2026-11-22T10:02Z",
            "2026-11-22T10:02:00.Z",
            "2026-11-22T10:02:00.1234567890Z",
            "2026-11-22T10:02:00Z[Europe/Paris]",
            "2026-11-22T10:02:00+01:00[Europe/Paris]",
            " 2026-11-22T10:02:00Z",
            "2026-11-22T10:02:00Z ",
            "2026-13-22T10:02:00Z",
            "+002026-11-22T10:02:00Z",
            "2026-11-22T10:02:00-01",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }
}
