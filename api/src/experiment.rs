//! The `Experiment` kind: what to break, where, when, and what must hold.
//! Every field is documented in `docs/experiment.md`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    cron::CronSchedule,
    decode::{Cx, Decode, Fields},
    diag::{Path, did_you_mean},
    fault::FaultAction,
    string_enum,
    units::{Duration, Percent},
    validate::{Problems, dns_label, label_key, label_value, max_chars, unique},
    yaml::{Node, quote},
};

pub const MAX_TARGETS: usize = 32;
pub const MAX_FAULTS: usize = 32;
pub const MAX_CHECKS: usize = 32;
/// Limits the CRD's schema also enforces (`maxLength`, `maxItems`).
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_CHECK_NAME_CHARS: usize = 128;
pub const MAX_URL_CHARS: usize = 2048;
pub const MAX_NAMESPACES: usize = 64;
pub const MAX_LABELS: usize = 32;

/// A chaos experiment: faults injected into selected targets for a while,
/// and the hypothesis that must hold meanwhile.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "faultline.dev",
    version = "v1alpha1",
    kind = "Experiment",
    namespaced,
    status = "ExperimentStatus",
    shortname = "fx",
    category = "faultline",
    derive = "PartialEq",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(name = "Targets", type_ = "integer", json_path = ".status.targets"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("experiment names are at most 63 characters")
)]
#[x_kube(
    validation = Rule::new("self.faults.all(f, f.target in self.targets)").message("every fault's target must name an entry of spec.targets"),
    validation = Rule::new("!has(self.hypothesis) || self.hypothesis.all(c, !has(c.breaker) || !has(c.breaker.fault) || self.faults.exists(f, f.name == c.breaker.fault))").message("a breaker check's fault must name a fault of this experiment"),
    validation = Rule::new("self.faults.all(f, !has(f.start) || duration(f.start) < duration(self.duration))").message("a fault's start must fall inside the experiment's duration"),
    validation = Rule::new("self.faults.all(f, !has(f.duration) || duration(has(f.start) ? f.start : '0s') + duration(f.duration) <= duration(self.duration))").message("a fault's start + duration must not run past the experiment's duration")
)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// What the experiment proves, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DESCRIPTION_CHARS))]
    pub description: Option<String>,
    /// How long faults are active, from the start of the run (at most 24h).
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("the duration must be greater than 0s"))]
    pub duration: Duration,
    /// A 5-field cron schedule (UTC); without it the experiment runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<CronSchedule>,
    /// Named selections of pods (or local services) that faults act on.
    // schemars' `length` sets no minProperties/maxProperties on maps, so CEL bounds the size.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 32").message("targets has 1 to 32 entries"))]
    pub targets: BTreeMap<String, TargetSelector>,
    /// What to break. Names are unique.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub faults: Vec<Fault>,
    /// Checks that must hold for the experiment to pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub hypothesis: Vec<Check>,
    /// Checks that stop the run and remove every fault at once when they fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub abort: Vec<Check>,
    /// Blast-radius limits checked before anything is injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// While faults are active, an abort check that cannot be judged this
    /// long (observer unreachable, too little traffic) aborts the run
    /// (default 10s): an abort check nobody can read protects nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_grace: Option<Duration>,
    /// How long a fault may wait for its node agent (or, locally, its
    /// proxy) to confirm it applied before the run ends broken (default
    /// 30s): a fault nobody confirmed was not injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_timeout: Option<Duration>,
}

/// How long an abort check may go unjudged while faults are active, when
/// the experiment does not say.
pub fn default_abort_grace() -> Duration {
    Duration::from_secs(10).unwrap_or_default()
}

/// How long a fault may go unconfirmed, when the experiment does not say.
pub fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30).unwrap_or_default()
}

string_enum! {
    /// How many of the matching pods a target selects.
    #[derive(Default)]
    pub enum SelectionMode ("a selection mode") {
        #[default]
        All = "all",
        One = "one",
        Fixed = "fixed",
        Percent = "percent",
    }
}

/// Which pods (or local services) a target name stands for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("self.mode in ['fixed', 'percent'] ? has(self.value) : !has(self.value)").message("value is required with mode fixed or percent, and not allowed otherwise"),
    validation = Rule::new("self.mode != 'percent' || !has(self.value) || self.value <= 100").message("with mode percent, value is 1 to 100")
)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// Namespaces to select from (default: the experiment's own namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NAMESPACES))]
    pub namespaces: Vec<String>,
    /// Labels a pod must carry, all of them.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 32").message("labels has 1 to 32 entries"))]
    pub labels: BTreeMap<String, String>,
    /// all (default), one, fixed (`value` pods) or percent (`value`% of pods, rounded up).
    #[serde(default)]
    pub mode: SelectionMode,
    /// A count for fixed, 1 to 100 for percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub value: Option<u32>,
}

/// One fault: what is done to which target, and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Unique within the experiment.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The name of an entry in `targets`.
    pub target: String,
    /// Offset from the start of the run (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Duration>,
    /// How long the fault lasts (default: until the experiment ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Fail the run when no effect of the fault was observed (no traffic
    /// delayed or dropped, no process signalled): a fault that touched
    /// nothing proved nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_effect: bool,
    #[serde(flatten)]
    pub action: FaultAction,
}

impl Fault {
    /// When the fault starts, as an offset from the run's start.
    pub fn start(&self) -> Duration {
        self.start.unwrap_or(Duration::ZERO)
    }

    /// When the fault ends, as an offset from the run's start.
    pub fn end(&self, experiment: Duration) -> Duration {
        match self.duration {
            Some(d) => self
                .start()
                .checked_add(d)
                .unwrap_or(experiment)
                .min(experiment),
            None => experiment,
        }
    }
}

string_enum! {
    /// Moments of a run at which a hypothesis check is evaluated.
    pub enum CheckPhase ("a check phase") {
        /// Before any fault is injected: confirms the steady state.
        Before = "before",
        /// Continuously while faults are active.
        During = "during",
        /// Once, after every fault is removed.
        After = "after",
    }
}

string_enum! {
    /// Circuit-breaker states, as applications report them.
    pub enum BreakerState ("a breaker state") {
        Closed = "closed",
        Open = "open",
        HalfOpen = "half_open",
    }
}

/// A check on what the system under test does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// Shown in reports (default: derived from the check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CHECK_NAME_CHARS))]
    pub name: Option<String>,
    /// When a hypothesis check is evaluated (default depends on the kind; see docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub when: Vec<CheckPhase>,
    #[serde(flatten)]
    pub kind: CheckKind,
}

/// Exactly one kind of check, written as its key next to `name` and `when`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CheckKind {
    ErrorRate(ErrorRateCheck),
    Latency(LatencyCheck),
    Breaker(BreakerCheck),
    Http(HttpCheck),
}

impl CheckKind {
    pub const KEYS: [&'static str; 4] = ["errorRate", "latency", "breaker", "http"];

    pub fn key(&self) -> &'static str {
        match self {
            CheckKind::ErrorRate(_) => "errorRate",
            CheckKind::Latency(_) => "latency",
            CheckKind::Breaker(_) => "breaker",
            CheckKind::Http(_) => "http",
        }
    }

    /// The sliding window of a rate or latency check.
    pub fn window(&self) -> Option<Duration> {
        match self {
            CheckKind::ErrorRate(c) => Some(c.window),
            CheckKind::Latency(c) => Some(c.window),
            CheckKind::Breaker(_) | CheckKind::Http(_) => None,
        }
    }

    /// The same check over another window (rate and latency checks).
    pub fn with_window(&self, window: Duration) -> CheckKind {
        let mut kind = self.clone();
        match &mut kind {
            CheckKind::ErrorRate(c) => c.window = window,
            CheckKind::Latency(c) => c.window = window,
            CheckKind::Breaker(_) | CheckKind::Http(_) => {}
        }
        kind
    }

    /// The service whose figures the check reads (none for `http`).
    pub fn service(&self) -> Option<&str> {
        match self {
            CheckKind::ErrorRate(c) => Some(&c.service),
            CheckKind::Latency(c) => Some(&c.service),
            CheckKind::Breaker(c) => Some(&c.service),
            CheckKind::Http(_) => None,
        }
    }
}

impl Check {
    /// The phases this check runs in, defaults applied.
    pub fn phases(&self) -> Vec<CheckPhase> {
        if !self.when.is_empty() {
            return self.when.clone();
        }
        match self.kind {
            CheckKind::Http(_) => vec![CheckPhase::Before, CheckPhase::During, CheckPhase::After],
            _ => vec![CheckPhase::During],
        }
    }

    /// The check's name, or one derived from what it checks.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match &self.kind {
            CheckKind::ErrorRate(c) => match &c.to {
                Some(to) => format!("{} → {to} error rate {}", c.service, c.limit()),
                None => format!("{} error rate {}", c.service, c.limit()),
            },
            CheckKind::Latency(c) => format!("{} {}", c.service, c.limit()),
            CheckKind::Breaker(c) => format!("{} breaker {} is {}", c.service, c.name, c.state),
            CheckKind::Http(c) => format!("GET {} answers {}", c.url, c.status),
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(30).unwrap_or_default()
}

fn default_timeout() -> Duration {
    Duration::from_secs(2).unwrap_or_default()
}

fn default_status() -> u16 {
    200
}

/// The share of a service's requests that fail, over a sliding window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.max) || has(self.maxIncrease)").message("an errorRate check needs max or maxIncrease"))]
#[serde(rename_all = "camelCase")]
pub struct ErrorRateCheck {
    /// The service (OpenTelemetry `service.name`).
    pub service: String,
    /// Only the service's calls to this one (its client spans to it, each
    /// call once however often it was retried), rather than the requests
    /// the service served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The highest acceptable error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Percent>,
    /// The highest acceptable rise above the baseline measured before the
    /// first fault, in percentage points (`2%`: 0.5% before, at most 2.5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<Percent>,
    /// The sliding window (default 30s).
    #[serde(default = "default_window")]
    pub window: Duration,
    /// Fewer requests than this in the window is no evidence: the check is
    /// not judged then (default 10; 0 judges an empty window as met).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
}

/// How many requests a window needs before a rate or latency check is
/// judged on it, when the check does not say.
pub const DEFAULT_MIN_REQUESTS: u32 = 10;

impl ErrorRateCheck {
    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }

    /// What it accepts, as people read it: `<= 5%`, `<= baseline + 2%`.
    pub fn limit(&self) -> String {
        let parts: Vec<String> = self
            .max
            .map(|m| format!("<= {m}"))
            .into_iter()
            .chain(self.max_increase.map(|i| format!("<= baseline + {i}")))
            .collect();
        parts.join(" and ")
    }
}

impl LatencyCheck {
    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS)
    }

    /// What it accepts, as people read it: `p99 <= 300ms`, `p99 <= 1.5x baseline`.
    pub fn limit(&self) -> String {
        let parts: Vec<String> = self
            .max
            .map(|m| format!("<= {m}"))
            .into_iter()
            .chain(self.max_ratio.map(|r| format!("<= {r}x baseline")))
            .collect();
        format!("p{} {}", self.percentile, parts.join(" and "))
    }
}

impl CheckKind {
    /// Whether the check compares with a baseline measured before the
    /// first fault (`maxIncrease`, `maxRatio`).
    pub fn is_relative(&self) -> bool {
        match self {
            CheckKind::ErrorRate(c) => c.max_increase.is_some(),
            CheckKind::Latency(c) => c.max_ratio.is_some(),
            CheckKind::Breaker(_) | CheckKind::Http(_) => false,
        }
    }
}

/// A latency percentile of a service, over a sliding window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.max) || has(self.maxRatio)").message("a latency check needs max or maxRatio"))]
#[serde(rename_all = "camelCase")]
pub struct LatencyCheck {
    pub service: String,
    /// Greater than 0 and at most 100, e.g. 99 or 99.9.
    #[schemars(range(min = 0, max = 100))]
    // OpenAPI's exclusiveMinimum is not generated; CEL says "greater than 0".
    #[x_kube(validation = Rule::new("self > 0.0").message("the percentile must be greater than 0"))]
    pub percentile: f64,
    /// The highest acceptable latency at that percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    /// The highest acceptable ratio to the baseline measured before the
    /// first fault (`1.5`: at most 1.5 times the baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_ratio: Option<f64>,
    /// The sliding window (default 30s).
    #[serde(default = "default_window")]
    pub window: Duration,
    /// Fewer requests than this in the window is no evidence: the check is
    /// not judged then (default 10; 0 judges an empty window as met).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
}

/// A circuit breaker of a service must reach (or be in) a state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerCheck {
    pub service: String,
    /// The breaker's name (`circuit_breaker.name`).
    pub name: String,
    pub state: BreakerState,
    /// The state must be reached within this long of the fault's start;
    /// without it, the breaker must be in the state whenever checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
    /// The fault whose start `within` counts from (default: the earliest fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// An HTTP GET must answer with a status in time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    /// An http:// or https:// URL.
    #[schemars(length(min = 1, max = MAX_URL_CHARS))]
    pub url: String,
    /// The expected status (default 200).
    #[serde(default = "default_status")]
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// How long to wait for the answer (default 2s).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Allow a link-local or cloud metadata address (169.254.0.0/16,
    /// fe80::/10, metadata.google.internal, ...), refused otherwise: a
    /// check is no way to reach a node's credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_link_local: bool,
}

/// Blast-radius limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// The run does not start if its targets select more pods than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_targets: Option<u32>,
    /// The run does not start if a target would take more than this share
    /// (in percent) of the pods it matches: 50 keeps half of every
    /// workload, whatever its mode and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_percent: Option<u32>,
}

string_enum! {
    /// The lifecycle of one run.
    pub enum Phase ("an experiment phase") {
        Pending = "Pending",
        Injecting = "Injecting",
        Running = "Running",
        Recovering = "Recovering",
        Completed = "Completed",
        Aborted = "Aborted",
        Recovered = "Recovered",
        /// Refused by validation (a spec that got past the CRD's checks); nothing injected.
        Invalid = "Invalid",
    }
}

string_enum! {
    pub enum Verdict ("a verdict") {
        Passed = "Passed",
        Failed = "Failed",
        Aborted = "Aborted",
        /// Nothing failed, but a hypothesis check was never judged in a
        /// phase it names (too few requests, a service never seen).
        Inconclusive = "Inconclusive",
        /// The run could not be carried out as written: a fault no agent
        /// (or local proxy) confirmed in time. Every fault was removed.
        Broken = "Broken",
    }
}

/// What the controller reports. Small by design: counts, never one entry per pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Running` and `Succeeded` (the run), and `Degraded` while the
    /// controller's calls for this experiment are refused; keyed by type,
    /// so each has its own field manager.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Pods selected by the current run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<u32>,
    /// Fault instances currently applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<u32>,
    /// Fault instances that could not be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<Time>,
    /// Runs started so far (a scheduled experiment runs many times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u32>,
    /// Start times of the schedule that passed while a run was going on,
    /// or while the controller was away (never run late, never overlapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_runs: Option<u32>,
    /// W3C trace context of the current run's `experiment` span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 55))]
    pub traceparent: Option<String>,
    /// The latest result of each check, one entry per check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
    /// Where each fault was placed and confirmed, and what it did: one
    /// entry per fault of the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FAULTS))]
    pub faults: Vec<FaultStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FaultStatus {
    #[schemars(length(max = 63))]
    pub name: String,
    /// Instances applied now, as their agents confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected: Option<u32>,
    /// Written to some node during this run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub placed: bool,
    /// Confirmed applied on some target during this run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmed: bool,
    /// Targets whose window ended before their agent confirmed the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed_targets: Option<u32>,
    /// What the fault did so far, summed over its targets; absent when
    /// nothing could be counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<FaultEffect>,
    /// Evictions the API refused (PodDisruptionBudgets), for `kill.method: delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evictions_refused: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultEffect {
    #[schemars(range(min = 0))]
    pub count: i64,
    /// What was counted, in the plural: "packets dropped".
    #[schemars(length(max = 64))]
    pub what: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// The last observed value, e.g. "3.2%" or "open".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// What the check wants, e.g. "<= 5%" or "open".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// How often it has been evaluated in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<u32>,
    /// The phases in which it was judged on enough evidence so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub judged: Vec<CheckPhase>,
    /// Why it was last not judged (e.g. "3 requests, fewer than 10").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub not_judged: Option<String>,
    /// When it was last judged: for an abort check, so that a restarted
    /// controller goes on counting its grace, not anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_judged_at: Option<Time>,
    /// A relative check's baseline, measured before the first fault
    /// (e.g. "42.000ms over 230 requests"), or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub baseline: Option<String>,
    /// An abort check (it stops the run when it fails).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// ---- decoding from located YAML ----

impl Decode for ExperimentSpec {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &[
                "description",
                "duration",
                "schedule",
                "targets",
                "faults",
                "hypothesis",
                "abort",
                "limits",
                "abortGrace",
                "confirmTimeout",
            ],
        )?;
        let description = f.opt(cx, "description");
        let duration = f.req(cx, "duration");
        let schedule = f.opt(cx, "schedule");
        let targets = f.req(cx, "targets");
        let faults = f.req(cx, "faults");
        let hypothesis = f.list(cx, "hypothesis");
        let abort = f.list(cx, "abort");
        let limits = f.opt(cx, "limits");
        let abort_grace = f.opt(cx, "abortGrace");
        let confirm_timeout = f.opt(cx, "confirmTimeout");
        Some(ExperimentSpec {
            description: description?,
            duration: duration?,
            schedule: schedule?,
            targets: targets?,
            faults: faults?,
            hypothesis: hypothesis?,
            abort: abort?,
            limits: limits?,
            abort_grace: abort_grace?,
            confirm_timeout: confirm_timeout?,
        })
    }
}

impl Decode for TargetSelector {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["namespaces", "labels", "mode", "value"])?;
        let namespaces = f.list(cx, "namespaces");
        let labels = f.req(cx, "labels");
        let mode = f.opt(cx, "mode");
        let value = f.opt(cx, "value");
        Some(TargetSelector {
            namespaces: namespaces?,
            labels: labels?,
            mode: mode?.unwrap_or_default(),
            value: value?,
        })
    }
}

impl Decode for Fault {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &FaultAction::keys_with(&["name", "target", "start", "duration", "requireEffect"]),
        )?;
        let name = f.req(cx, "name");
        let target = f.req(cx, "target");
        let start = f.opt(cx, "start");
        let duration = f.opt(cx, "duration");
        let require_effect = f.opt(cx, "requireEffect");
        let action = FaultAction::decode_in(cx, &f, "a fault");
        Some(Fault {
            name: name?,
            target: target?,
            start: start?,
            duration: duration?,
            require_effect: require_effect?.unwrap_or(false),
            action: action?,
        })
    }
}

impl Decode for Check {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let mut known = vec!["name", "when"];
        known.extend(CheckKind::KEYS);
        let f = Fields::new(cx, node, path, &known)?;
        let name = f.opt(cx, "name");
        let when = f.list(cx, "when");
        let present = f.present(&CheckKind::KEYS);
        let kind = match present.as_slice() {
            [] if f.suggested_any(&CheckKind::KEYS) => None,
            [] => {
                cx.error(
                    f.pos(),
                    path,
                    "a check needs one kind: errorRate, latency, breaker or http",
                );
                None
            }
            ["errorRate"] => f.req(cx, "errorRate").map(CheckKind::ErrorRate),
            ["latency"] => f.req(cx, "latency").map(CheckKind::Latency),
            ["breaker"] => f.req(cx, "breaker").map(CheckKind::Breaker),
            ["http"] => f.req(cx, "http").map(CheckKind::Http),
            [first, rest @ ..] => {
                for other in rest {
                    let pos = f.key_pos(other);
                    cx.error(
                        pos,
                        &path.key(other),
                        format!("a check has one kind only; it already has {first}"),
                    );
                }
                None
            }
        };
        Some(Check {
            name: name?,
            when: when?,
            kind: kind?,
        })
    }
}

impl Decode for ErrorRateCheck {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &[
                "service",
                "to",
                "max",
                "maxIncrease",
                "window",
                "minRequests",
            ],
        )?;
        let service = f.req(cx, "service");
        let to = f.opt(cx, "to");
        let max = f.opt(cx, "max");
        let max_increase = f.opt(cx, "maxIncrease");
        let window = f.opt(cx, "window");
        let min_requests = f.opt(cx, "minRequests");
        Some(ErrorRateCheck {
            service: service?,
            to: to?,
            max: max?,
            max_increase: max_increase?,
            window: window?.unwrap_or_else(default_window),
            min_requests: min_requests?,
        })
    }
}

impl Decode for LatencyCheck {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &[
                "service",
                "percentile",
                "max",
                "maxRatio",
                "window",
                "minRequests",
            ],
        )?;
        let service = f.req(cx, "service");
        let percentile = f.req(cx, "percentile");
        let max = f.opt(cx, "max");
        let max_ratio = f.opt(cx, "maxRatio");
        let window = f.opt(cx, "window");
        let min_requests = f.opt(cx, "minRequests");
        Some(LatencyCheck {
            service: service?,
            percentile: percentile?,
            max: max?,
            max_ratio: max_ratio?,
            window: window?.unwrap_or_else(default_window),
            min_requests: min_requests?,
        })
    }
}

impl Decode for BreakerCheck {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &["service", "name", "state", "within", "fault"],
        )?;
        let service = f.req(cx, "service");
        let name = f.req(cx, "name");
        let state = f.req(cx, "state");
        let within = f.opt(cx, "within");
        let fault = f.opt(cx, "fault");
        Some(BreakerCheck {
            service: service?,
            name: name?,
            state: state?,
            within: within?,
            fault: fault?,
        })
    }
}

impl Decode for HttpCheck {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(
            cx,
            node,
            path,
            &["url", "status", "timeout", "allowLinkLocal"],
        )?;
        let url = f.req(cx, "url");
        let status = f.opt(cx, "status");
        let timeout = f.opt(cx, "timeout");
        let allow_link_local = f.opt(cx, "allowLinkLocal");
        Some(HttpCheck {
            url: url?,
            status: status?.unwrap_or_else(default_status),
            timeout: timeout?.unwrap_or_else(default_timeout),
            allow_link_local: allow_link_local?.unwrap_or(false),
        })
    }
}

impl Decode for Limits {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let f = Fields::new(cx, node, path, &["maxTargets", "maxPercent"])?;
        let max_targets = f.opt(cx, "maxTargets");
        let max_percent = f.opt(cx, "maxPercent");
        Some(Limits {
            max_targets: max_targets?,
            max_percent: max_percent?,
        })
    }
}

// ---- semantic validation ----

impl ExperimentSpec {
    /// Every problem with an otherwise well-typed spec; paths start at `spec`.
    pub fn validate(&self, p: &mut Problems) {
        let spec = Path::root().key("spec");
        if let Some(d) = &self.description
            && let Err(e) = max_chars(d, MAX_DESCRIPTION_CHARS)
        {
            p.add(spec.key("description"), e);
        }
        if self.duration.is_zero() {
            p.add(spec.key("duration"), "must be greater than 0s");
        }
        // 0s would break every run at its first step; past an hour, a
        // fault nobody applied would go unnoticed for most of a game day.
        if let Some(t) = self.confirm_timeout
            && (t.is_zero() || t.as_millis() > 3_600_000)
        {
            p.add(spec.key("confirmTimeout"), format!("{t} is not 1s to 1h"));
        }
        if let Some(t) = self.abort_grace
            && t.is_zero()
        {
            p.add(spec.key("abortGrace"), "must be greater than 0s");
        }
        self.validate_targets(&spec, p);
        self.validate_faults(&spec, p);
        // Over a list's limit, one report says it all and per-item checks are skipped.
        let checks = spec.key("hypothesis");
        if self.hypothesis.len() > MAX_CHECKS {
            p.add(checks.clone(), format!("has more than {MAX_CHECKS} checks"));
        } else {
            for (i, c) in self.hypothesis.iter().enumerate() {
                self.validate_check(c, &checks.index(i), false, p);
            }
            unique(
                p,
                self.hypothesis
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((checks.index(i).key("name"), c.name.as_deref()?))),
                "check name",
            );
        }
        let abort = spec.key("abort");
        if self.abort.len() > MAX_CHECKS {
            p.add(abort.clone(), format!("has more than {MAX_CHECKS} checks"));
        } else {
            for (i, c) in self.abort.iter().enumerate() {
                self.validate_check(c, &abort.index(i), true, p);
            }
        }
        if let Some(limits) = &self.limits {
            if limits.max_targets == Some(0) {
                p.add(spec.key("limits").key("maxTargets"), "must be at least 1");
            }
            if let Some(m) = limits.max_percent
                && !(1..=100).contains(&m)
            {
                p.add(
                    spec.key("limits").key("maxPercent"),
                    format!("{m} is not 1 to 100"),
                );
            }
        }
    }

    fn validate_targets(&self, spec: &Path, p: &mut Problems) {
        let path = spec.key("targets");
        if self.targets.is_empty() {
            p.add(path.clone(), "needs at least one target");
        }
        if self.targets.len() > MAX_TARGETS {
            p.add(path.clone(), format!("has more than {MAX_TARGETS} targets"));
            return;
        }
        for (name, t) in &self.targets {
            let tp = path.key(name);
            if let Err(e) = dns_label(name) {
                p.add(tp.clone(), format!("target name {e}"));
            }
            if t.namespaces.len() > MAX_NAMESPACES {
                p.add(
                    tp.key("namespaces"),
                    format!("has more than {MAX_NAMESPACES} namespaces"),
                );
            } else {
                for (i, ns) in t.namespaces.iter().enumerate() {
                    if let Err(e) = dns_label(ns) {
                        p.add(tp.key("namespaces").index(i), format!("namespace {e}"));
                    }
                }
                unique(
                    p,
                    t.namespaces
                        .iter()
                        .enumerate()
                        .map(|(i, ns)| (tp.key("namespaces").index(i), ns.as_str())),
                    "namespace",
                );
            }
            if t.labels.is_empty() {
                p.add(
                    tp.key("labels"),
                    "needs at least one label; an empty selector would select every pod",
                );
            } else if t.labels.len() > MAX_LABELS {
                p.add(
                    tp.key("labels"),
                    format!("has more than {MAX_LABELS} labels"),
                );
            } else {
                for (k, v) in &t.labels {
                    if let Err(e) = label_key(k).and_then(|_| label_value(v)) {
                        p.add(tp.key("labels").key(k), e);
                    }
                }
            }
            match (t.mode, t.value) {
                (SelectionMode::Fixed, None) => {
                    p.add(tp.key("mode"), "mode fixed needs a value: how many pods")
                }
                (SelectionMode::Percent, None) => {
                    p.add(tp.key("mode"), "mode percent needs a value: 1 to 100")
                }
                (SelectionMode::Fixed, Some(0)) => p.add(tp.key("value"), "must be at least 1"),
                (SelectionMode::Percent, Some(v)) if !(1..=100).contains(&v) => p.add(
                    tp.key("value"),
                    format!("{v} is not a percentage of pods; use 1 to 100"),
                ),
                (SelectionMode::All | SelectionMode::One, Some(_)) => p.add(
                    tp.key("value"),
                    format!(
                        "value only applies to modes fixed and percent, not {}",
                        t.mode
                    ),
                ),
                _ => {}
            }
        }
    }

    fn validate_faults(&self, spec: &Path, p: &mut Problems) {
        let path = spec.key("faults");
        if self.faults.is_empty() {
            p.add(path.clone(), "needs at least one fault");
        }
        if self.faults.len() > MAX_FAULTS {
            p.add(path.clone(), format!("has more than {MAX_FAULTS} faults"));
            return;
        }
        unique(
            p,
            self.faults
                .iter()
                .enumerate()
                .map(|(i, f)| (path.index(i).key("name"), f.name.as_str())),
            "fault name",
        );
        for (i, f) in self.faults.iter().enumerate() {
            let fp = path.index(i);
            if let Err(e) = dns_label(&f.name) {
                p.add(fp.key("name"), format!("fault name {e}"));
            }
            if !self.targets.contains_key(&f.target) {
                p.add(fp.key("target"), self.unknown_target(&f.target));
            }
            let start = f.start();
            if start >= self.duration && !self.duration.is_zero() {
                p.add(
                    fp.key("start"),
                    format!(
                        "starts at {start}, not before the experiment's duration of {} ends",
                        self.duration
                    ),
                );
            }
            if let Some(d) = f.duration {
                if d.is_zero() {
                    p.add(fp.key("duration"), "must be greater than 0s");
                } else if start.checked_add(d).is_none_or(|end| end > self.duration) {
                    p.add(
                        fp.key("duration"),
                        format!(
                            "start {start} + duration {d} runs past the experiment's duration of {}",
                            self.duration
                        ),
                    );
                }
            }
            if let FaultAction::Kill(k) = &f.action
                && let Some(every) = k.every
            {
                let window = f
                    .end(self.duration)
                    .as_millis()
                    .saturating_sub(start.as_millis());
                if !every.is_zero() && every.as_millis() >= window && window > 0 {
                    p.add(
                        fp.key("kill").key("every"),
                        format!(
                            "{every} is not shorter than the fault's active time; the signal would be sent once (drop every)"
                        ),
                    );
                }
            }
            let own = f.target.as_str();
            let peer_ok = |peer: &str| -> Result<(), String> {
                if peer == own {
                    Err(format!("{} is the fault's own target", quote(peer)))
                } else if self.targets.contains_key(peer) {
                    Ok(())
                } else {
                    Err(self.unknown_target(peer) + " or a CIDR")
                }
            };
            f.action.validate(&fp, p, &peer_ok);
        }
    }

    fn unknown_target(&self, name: &str) -> String {
        let hint = match did_you_mean(name, self.targets.keys().map(String::as_str)) {
            Some(s) => format!(" (did you mean {s}?)"),
            None => String::new(),
        };
        format!("{} is not a target of this experiment{hint}", quote(name))
    }

    fn validate_check(&self, c: &Check, path: &Path, abort: bool, p: &mut Problems) {
        if let Some(name) = &c.name
            && let Err(e) = max_chars(name, MAX_CHECK_NAME_CHARS)
        {
            p.add(path.key("name"), e);
        }
        if abort && !c.when.is_empty() {
            p.add(
                path.key("when"),
                "abort checks are evaluated throughout the run; when does not apply",
            );
        }
        unique(
            p,
            c.when
                .iter()
                .enumerate()
                .map(|(i, w)| (path.key("when").index(i), w.as_str())),
            "phase",
        );
        let kp = path.key(c.kind.key());
        if c.kind.is_relative() {
            let field = match c.kind {
                CheckKind::Latency(_) => "maxRatio",
                _ => "maxIncrease",
            };
            let first = self.faults.iter().map(|f| f.start()).min();
            if first.is_some_and(|s| s.is_zero()) {
                p.add(
                    kp.key(field),
                    "compares with a baseline measured before the first fault, and a fault starts at 0s; give every fault a start (e.g. start: 30s) to leave room for one",
                );
            }
            if !abort && c.phases().contains(&CheckPhase::Before) {
                p.add(
                    kp.key(field),
                    "compares with the baseline, measured while no fault has started, so `before` has nothing to compare with; use when: [during], [after] or both",
                );
            }
        }
        let window_ok = |p: &mut Problems, w: Duration| {
            if w.as_millis() < 1000 {
                p.add(
                    kp.key("window"),
                    format!("{w} is too short; windows are 1s to 1h"),
                );
            } else if w.as_millis() > 3_600_000 {
                p.add(
                    kp.key("window"),
                    format!("{w} is too long; windows are 1s to 1h"),
                );
            }
        };
        let service_ok = |p: &mut Problems, s: &str| {
            if s.trim().is_empty() {
                p.add(kp.key("service"), "must not be empty");
            }
        };
        match &c.kind {
            CheckKind::ErrorRate(e) => {
                service_ok(p, &e.service);
                match e.to.as_deref() {
                    Some(to) if to.trim().is_empty() => {
                        p.add(kp.key("to"), "must not be empty (or left out)");
                    }
                    Some(to) if to == e.service => p.add(
                        kp.key("to"),
                        "names the service itself; a service's calls go to others",
                    ),
                    _ => {}
                }
                window_ok(p, e.window);
                if e.max.is_none() && e.max_increase.is_none() {
                    p.add(
                        kp.clone(),
                        "needs max (an error rate) or maxIncrease (a rise above the baseline), or both",
                    );
                }
            }
            CheckKind::Latency(l) => {
                service_ok(p, &l.service);
                window_ok(p, l.window);
                if !(l.percentile > 0.0 && l.percentile <= 100.0) {
                    p.add(
                        kp.key("percentile"),
                        format!(
                            "{} is not a percentile; use a number above 0 and at most 100",
                            l.percentile
                        ),
                    );
                }
                if l.max.is_some_and(|m| m.is_zero()) {
                    p.add(kp.key("max"), "must be greater than 0s");
                }
                match l.max_ratio {
                    Some(r) if !(r.is_finite() && r > 0.0 && r <= 1000.0) => p.add(
                        kp.key("maxRatio"),
                        format!("{r} is not a ratio; use a number above 0 and at most 1000"),
                    ),
                    None if l.max.is_none() => p.add(
                        kp.clone(),
                        "needs max (a latency) or maxRatio (a multiple of the baseline), or both",
                    ),
                    _ => {}
                }
            }
            CheckKind::Breaker(b) => {
                service_ok(p, &b.service);
                if b.name.trim().is_empty() {
                    p.add(kp.key("name"), "must not be empty");
                }
                if let Some(w) = b.within {
                    if w.is_zero() {
                        p.add(kp.key("within"), "must be greater than 0s");
                    } else if w > self.duration {
                        p.add(
                            kp.key("within"),
                            format!(
                                "{w} is longer than the experiment's duration of {}",
                                self.duration
                            ),
                        );
                    }
                }
                if let Some(fault) = &b.fault
                    && !self.faults.iter().any(|f| &f.name == fault)
                {
                    let hint = did_you_mean(fault, self.faults.iter().map(|f| f.name.as_str()))
                        .map(|s| format!(" (did you mean {s}?)"))
                        .unwrap_or_default();
                    p.add(
                        kp.key("fault"),
                        format!("{} is not a fault of this experiment{hint}", quote(fault)),
                    );
                }
            }
            CheckKind::Http(h) => {
                match url_host(&h.url) {
                    Err(e) => p.add(kp.key("url"), e),
                    Ok(host) if !h.allow_link_local && forbidden_host(&host) => p.add(
                        kp.key("url"),
                        format!(
                            "{} names a link-local or cloud metadata address; set allowLinkLocal: true on this check to allow it",
                            quote(&h.url)
                        ),
                    ),
                    Ok(_) => {}
                }
                if !(100..=599).contains(&h.status) {
                    p.add(
                        kp.key("status"),
                        format!("{} is not an HTTP status (100 to 599)", h.status),
                    );
                }
                if h.timeout.is_zero() {
                    p.add(kp.key("timeout"), "must be greater than 0s");
                } else if h.timeout.as_millis() > 60_000 {
                    p.add(kp.key("timeout"), "must be at most 1m");
                }
            }
        }
    }
}

/// Link-local and cloud metadata addresses (169.254.0.0/16 holds AWS's,
/// GCP's and Azure's 169.254.169.254; fe80::/10; AWS's fd00:ec2::254;
/// Alibaba's 100.100.100.200), IPv4-mapped ones included: an http check
/// reaches them only when it says so.
pub fn forbidden_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_ip(IpAddr::V4(v4)),
            None => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
        },
    }
}

/// A URL host (a name or an address, without brackets) that is a
/// link-local or metadata address, or a metadata service's well-known name.
pub fn forbidden_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => forbidden_ip(ip),
        Err(_) => matches!(
            host.as_str(),
            "metadata.google.internal" | "metadata.goog" | "instance-data.ec2.internal"
        ),
    }
}

/// The host of an absolute http(s) URL with a host (a name, an IPv4
/// address or a bracketed IPv6 address, returned without brackets) and an
/// optional port; path, query and fragment are not interpreted.
pub fn url_host(url: &str) -> Result<String, String> {
    if let Err(e) = max_chars(url, MAX_URL_CHARS) {
        return Err(format!("the URL {e}"));
    }
    // Schemes are case-insensitive (RFC 3986 3.1).
    let rest = url
        .split_once("://")
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
        })
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{} is not an http:// or https:// URL", quote(url)))?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} contains spaces or control characters",
            quote(url)
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = match authority.rsplit_once('@') {
        Some((_, h)) => h,
        None => authority,
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((inner, after)) = bracketed.split_once(']') else {
            return Err(format!("{} has an unclosed [ in its host", quote(url)));
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "{} has an invalid IPv6 address in its host",
                quote(url)
            ));
        }
        match after {
            "" => (inner, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inner, Some(port)),
                None => return Err(format!("{} has an invalid port", quote(url))),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((h, port)) => (h, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{} has no host", quote(url)));
    }
    if host.contains(['[', ']']) {
        return Err(format!("{} has an invalid host", quote(url)));
    }
    // Digits only (no sign, no second colon), 1 to 65535.
    if let Some(port) = port
        && !(port.len() <= 5
            && !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(format!("{} has an invalid port", quote(url)));
    }
    Ok(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_hosts_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "metadata.google.internal",
            "Metadata.Google.Internal.",
        ] {
            assert!(forbidden_host(bad), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.0.0.1",
            "fec0::1",
            "::1",
            "checkout.shop.svc",
            "100.100.100.201",
        ] {
            assert!(!forbidden_host(ok), "{ok}");
        }
        assert_eq!(url_host("http://[fe80::1]:80/x").as_deref(), Ok("fe80::1"));
    }

    #[test]
    fn urls() {
        for ok in [
            "http://frontend.shop:8080/health",
            "HTTPS://example.com",
            "Http://example.com?x=1",
            "http://user:pw@example.com:1/",
            "http://[::1]/",
            "http://[fd00::1]:65535/x",
            "http://10.0.0.1:80",
        ] {
            assert!(url_host(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("ftp://example.com", "is not an http:// or https:// URL"),
            ("frontend:8080/health", "is not an http:// or https:// URL"),
            ("http://", "has no host"),
            ("http://:80/", "has no host"),
            ("http://a:b:c/", "has an invalid port"),
            ("http://x:+80/", "has an invalid port"),
            ("http://x:0/", "has an invalid port"),
            ("http://x:65536/", "has an invalid port"),
            ("http://x:/", "has an invalid port"),
            ("http://[::1/", "unclosed ["),
            ("http://[::1]x/", "has an invalid port"),
            ("http://[::1]:+1/", "has an invalid port"),
            ("http://[::1]:99999/", "has an invalid port"),
            ("http://[nope]/", "invalid IPv6 address"),
            ("http://a]b/", "has an invalid host"),
            ("http://a b/", "contains spaces"),
        ] {
            let err = url_host(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = format!("http://x/{}", "a".repeat(MAX_URL_CHARS));
        assert!(url_host(&long).is_err());
    }
}
