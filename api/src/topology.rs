//! The `Topology` kind (local mode only): services started as local processes,
//! and the dependency edges a fault proxy is put on.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::{
    decode::{Cx, Decode, Fields},
    diag::{Path, did_you_mean},
    validate::{Problems, dns_label, label_key, label_value, unique},
    yaml::{Node, quote},
};

pub const MAX_SERVICES: usize = 64;

/// A small system run as local processes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TopologySpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpec {
    pub services: Vec<Service>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Unique; a dependent finds this service at `<NAME>_ADDR` (upper case, `-` as `_`).
    pub name: String,
    /// What experiment targets select by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Program and arguments; run directly, never through a shell.
    pub command: Vec<String>,
    /// The loopback port the service listens on.
    pub port: u16,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Services this one calls; each edge goes through a fault proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// What the service may use, enforced by its cgroup as a pod's limits
    /// are: what a stress fault is measured against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceLimits>,
}

/// A service's resource limits (cgroup v2 `cpu.max` and `memory.max`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::Size>,
}

impl ResourceLimits {
    /// The cgroup controllers these limits need.
    pub fn controllers(&self) -> impl Iterator<Item = &'static str> {
        [
            self.cpu.is_some().then_some("cpu"),
            self.memory.is_some().then_some("memory"),
        ]
        .into_iter()
        .flatten()
    }
}

impl Service {
    /// The environment variable through which dependents find this service.
    pub fn addr_var(&self) -> String {
        addr_var(&self.name)
    }
}

/// `payments` → `PAYMENTS_ADDR`, `order-db` → `ORDER_DB_ADDR`.
pub fn addr_var(service: &str) -> String {
    format!("{}_ADDR", service.to_ascii_uppercase().replace('-', "_"))
}

impl Decode for TopologySpec {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["services"])?;
        let services = f.req(cx, "services");
        Some(TopologySpec {
            services: services?,
        })
    }
}

impl Decode for Service {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &[
                "name",
                "labels",
                "command",
                "port",
                "env",
                "dependsOn",
                "limits",
            ],
        )?;
        let name = f.req(cx, "name");
        let labels = f.list(cx, "labels");
        let command = f.req(cx, "command");
        let port = f.req(cx, "port");
        let env = f.list(cx, "env");
        let depends_on = f.list(cx, "dependsOn");
        let limits = f.opt(cx, "limits");
        Some(Service {
            name: name?,
            labels: labels?,
            command: command?,
            port: port?,
            env: env?,
            depends_on: depends_on?,
            limits: limits?,
        })
    }
}

impl Decode for ResourceLimits {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["cpu", "memory"])?;
        let cpu = f.opt(cx, "cpu");
        let memory = f.opt(cx, "memory");
        let limits = ResourceLimits {
            cpu: cpu?,
            memory: memory?,
        };
        if limits.cpu.is_none() && limits.memory.is_none() {
            cx.error(node.pos, path, "names no limit; set cpu, memory or both");
        }
        Some(limits)
    }
}

impl TopologySpec {
    /// Whether a service has limits (which need cgroups to enforce).
    pub fn has_limits(&self) -> bool {
        self.services.iter().any(|s| s.limits.is_some())
    }

    pub fn validate(&self, p: &mut Problems) {
        let path = Path::root().key("spec").key("services");
        if self.services.is_empty() {
            p.add(path.clone(), "needs at least one service");
        }
        if self.services.len() > MAX_SERVICES {
            p.add(
                path.clone(),
                format!("has more than {MAX_SERVICES} services"),
            );
            return;
        }
        // In order for suggestions (deterministic), and as a set for lookups.
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        let name_set: HashSet<&str> = names.iter().copied().collect();
        unique(
            p,
            self.services
                .iter()
                .enumerate()
                .map(|(i, s)| (path.index(i).key("name"), s.name.as_str())),
            "service name",
        );
        let mut ports: HashSet<u16> = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let sp = path.index(i);
            if let Err(e) = dns_label(&s.name) {
                p.add(sp.key("name"), format!("service name {e}"));
            } else if !s.name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                p.add(
                    sp.key("name"),
                    format!(
                        "service name {} must start with a letter: dependents find it at {}, which must be an environment variable name",
                        quote(&s.name),
                        s.addr_var()
                    ),
                );
            }
            for (k, v) in &s.labels {
                if let Err(e) = label_key(k).and_then(|_| label_value(v)) {
                    p.add(sp.key("labels").key(k), e);
                }
            }
            match s.command.first() {
                None => p.add(sp.key("command"), "needs at least the program to run"),
                Some(prog) if prog.trim().is_empty() => {
                    p.add(sp.key("command").index(0), "the program name is empty")
                }
                _ => {}
            }
            for (j, arg) in s.command.iter().enumerate() {
                if arg.contains('\0') {
                    p.add(sp.key("command").index(j), "contains a NUL byte");
                }
            }
            if s.port == 0 {
                p.add(sp.key("port"), "port 0 is not a port; use 1 to 65535");
            } else if !ports.insert(s.port) {
                p.add(
                    sp.key("port"),
                    format!("port {} is used by another service", s.port),
                );
            }
            for (k, v) in &s.env {
                let valid = k
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    p.add(
                        sp.key("env").key(k),
                        format!("{} is not an environment variable name", quote(k)),
                    );
                } else if v.contains('\0') {
                    p.add(sp.key("env").key(k), "contains a NUL byte");
                }
            }
            let mut deps_seen = HashSet::new();
            for (j, dep) in s.depends_on.iter().enumerate() {
                let dp = sp.key("dependsOn").index(j);
                let repeated = !deps_seen.insert(dep.as_str());
                if dep == &s.name {
                    p.add(dp, "a service cannot depend on itself");
                } else if !name_set.contains(dep.as_str()) {
                    let hint = did_you_mean(dep, names.iter().copied())
                        .map(|n| format!(" (did you mean {n}?)"))
                        .unwrap_or_default();
                    p.add(
                        dp,
                        format!("{} is not a service of this topology{hint}", quote(dep)),
                    );
                } else if repeated {
                    p.add(dp, format!("{} is listed twice", quote(dep)));
                } else if s.env.contains_key(&addr_var(dep)) {
                    p.add(
                        sp.key("env").key(&addr_var(dep)),
                        format!("is set by the runtime to reach {dep} through its proxy"),
                    );
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            let i = self
                .services
                .iter()
                .position(|s| s.name == cycle[0])
                .unwrap_or(0);
            p.add(
                path.index(i).key("dependsOn"),
                format!("dependencies form a cycle: {}", cycle.join(" → ")),
            );
        }
    }

    /// A dependency cycle, as the names along it (first repeated at the end).
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let index: BTreeMap<&str, usize> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut marks = vec![Mark::New; self.services.len()];
        for start in 0..self.services.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // Iterative DFS: (service, next dependency to visit).
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::Active;
            while let Some((node, next)) = stack.last_mut() {
                let deps = &self.services[*node].depends_on;
                if *next >= deps.len() {
                    marks[*node] = Mark::Done;
                    stack.pop();
                    continue;
                }
                let dep = &deps[*next];
                *next += 1;
                let Some(&d) = index.get(dep.as_str()) else {
                    continue;
                };
                if d == *node {
                    continue; // reported as self-dependency
                }
                match marks[d] {
                    Mark::Active => {
                        let from = stack.iter().position(|(n, _)| *n == d).unwrap_or(0);
                        let mut names: Vec<String> = stack[from..]
                            .iter()
                            .map(|(n, _)| self.services[*n].name.clone())
                            .collect();
                        names.push(self.services[d].name.clone());
                        return Some(names);
                    }
                    Mark::New => {
                        marks[d] = Mark::Active;
                        stack.push((d, 0));
                    }
                    Mark::Done => {}
                }
            }
        }
        None
    }
}

/// The limits of `topology` this host cannot enforce, each at its field:
/// `usable` lists the cgroup controllers local mode can use here, or says
/// why it has none. A limit is never dropped quietly — a bulkhead proven
/// without it proves nothing.
pub fn limit_refusals(topology: &Topology, usable: Result<&[&str], &str>) -> crate::Problems {
    let mut out = crate::Problems::default();
    for (i, s) in topology.spec.services.iter().enumerate() {
        let Some(limits) = &s.limits else { continue };
        for controller in limits.controllers() {
            let why = match usable {
                Ok(have) if have.contains(&controller) => continue,
                Ok(_) => format!(
                    "the cgroup v2 hierarchy here does not offer the {controller} controller (a hybrid host keeps it in cgroup v1)"
                ),
                Err(why) => why.to_owned(),
            };
            out.add(
                crate::diag::Path::root()
                    .key("spec")
                    .key("services")
                    .index(i)
                    .key("limits")
                    .key(controller),
                format!("local mode cannot enforce this limit here: {why}"),
            );
        }
    }
    out
}

/// The checks of `spec` that name a service `topology` does not run, each
/// at its `service` field with a "did you mean" when one is close: in
/// local mode such a check could never be judged, so the run does not
/// start.
pub fn unknown_services(spec: &crate::ExperimentSpec, topology: &Topology) -> crate::Problems {
    let names: Vec<&str> = topology
        .spec
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let lists = [("hypothesis", &spec.hypothesis), ("abort", &spec.abort)];
    let mut out = crate::Problems::default();
    for (list, checks) in lists {
        for (i, check) in checks.iter().enumerate() {
            // The service, and the one an error rate narrows to.
            let to = match &check.kind {
                crate::CheckKind::ErrorRate(e) => e.to.as_deref(),
                _ => None,
            };
            let named = check
                .kind
                .service()
                .map(|s| ("service", s))
                .into_iter()
                .chain(to.map(|t| ("to", t)));
            for (field, service) in named {
                if names.contains(&service) {
                    // Calls only go along dependsOn edges: no other `to`
                    // can ever have figures.
                    let caller = topology
                        .spec
                        .services
                        .iter()
                        .find(|s| Some(s.name.as_str()) == check.kind.service());
                    if field == "to"
                        && let Some(caller) = caller
                        && !caller.depends_on.iter().any(|d| d == service)
                    {
                        out.add(
                            crate::diag::Path::root()
                                .key("spec")
                                .key(list)
                                .index(i)
                                .key(check.kind.key())
                                .key(field),
                            format!(
                                "{} never calls {service:?} (its dependsOn: {})",
                                caller.name,
                                if caller.depends_on.is_empty() {
                                    "none".to_owned()
                                } else {
                                    caller.depends_on.join(", ")
                                }
                            ),
                        );
                    }
                    continue;
                }
                let hint = match crate::diag::did_you_mean(service, names.iter().copied()) {
                    Some(n) => format!(" (did you mean {n}?)"),
                    None => format!("; it runs {}", names.join(", ")),
                };
                let path = crate::diag::Path::root()
                    .key("spec")
                    .key(list)
                    .index(i)
                    .key(check.kind.key())
                    .key(field);
                out.add(
                    path,
                    format!(
                        "{service:?} is no service of topology {}{hint}",
                        topology.metadata.name.as_deref().unwrap_or("")
                    ),
                );
            }
        }
    }
    out
}

/// What of an experiment's faults local mode cannot do honestly: services
/// talk through Faultline's TCP proxies, which see connections and bytes,
/// never packets, so packet corruption, duplication, reordering and bursts
/// of loss need a cluster's node agent (or the standalone agent) — a rate
/// they can hold; stress needs cgroups,
/// and `stress` says why this host cannot give them (Err) or that it can.
/// Refused before the run, each at its field.
pub fn local_refusals(spec: &crate::ExperimentSpec, stress: Result<(), &str>) -> crate::Problems {
    let mut out = crate::Problems::default();
    for (i, f) in spec.faults.iter().enumerate() {
        if let crate::FaultAction::Stress(_) = &f.action {
            if let Err(why) = stress {
                out.add(
                    crate::diag::Path::root()
                        .key("spec")
                        .key("faults")
                        .index(i)
                        .key("stress"),
                    format!(
                        "local mode cannot do this here: stress workers run in the service's own cgroup, and {why}; a cluster (the node agent) or the standalone agent can"
                    ),
                );
            }
            continue;
        }
        let crate::FaultAction::Network(n) = &f.action else {
            continue;
        };
        let path = crate::diag::Path::root()
            .key("spec")
            .key("faults")
            .index(i)
            .key("network");
        for (field, set, what) in [
            ("corrupt", n.corrupt.is_some(), "corrupts packets"),
            ("duplicate", n.duplicate.is_some(), "duplicates packets"),
            ("reorder", n.reorder.is_some(), "reorders packets"),
            (
                "lossCorrelation",
                n.loss_correlation.is_some(),
                "loses packets in bursts",
            ),
        ] {
            if set {
                out.add(
                    path.key(field),
                    format!(
                        "local mode cannot do this: it {what}, which needs a cluster (the node agent) or the standalone agent; local services talk through proxies that see connections, not packets"
                    ),
                );
            }
        }
    }
    out
}
