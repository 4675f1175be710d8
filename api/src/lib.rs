//! Faultline's user-facing schemas: `Experiment` and `NodeFaults` (CRDs) and
//! `Topology` (local mode), with parsing that reports every problem at its
//! file line and column, and validation usable at admission time.
//!
//! Nothing here does I/O: callers pass bytes in and get typed values or
//! diagnostics out.
//!
//! The modules are private: what other crates use is re-exported here, so
//! the compiler reports whatever nothing uses. A validation problem's field
//! path (`Problem::path`) is shown, never built, outside this crate, so its
//! type is not exported (as `Path` it would read like `std::path::Path`).

mod crd;
mod cron;
mod decode;
mod diag;
mod document;
mod experiment;
mod fault;
mod nodefaults;
mod topology;
mod units;
mod validate;
mod yaml;

pub use crd::{crd_yaml, crds};
pub use cron::CronSchedule;
pub use diag::{Diagnostic, Pos, did_you_mean};
pub use document::{
    API_VERSION, FromResource, Parsed, Resource, locate, parse_documents, parse_one,
};
pub use experiment::{
    BreakerCheck, BreakerState, Check, CheckKind, CheckPhase, CheckStatus, DEFAULT_MIN_REQUESTS,
    ErrorRateCheck, Experiment, ExperimentSpec, ExperimentStatus, Fault, FaultEffect, FaultStatus,
    HttpCheck, LatencyCheck, Limits, Phase, SelectionMode, TargetSelector, Verdict,
    default_abort_grace, default_confirm_timeout, forbidden_host, forbidden_ip, url_host,
};
pub use fault::{
    CpuStress, Direction, FaultAction, Kill, KillMethod, Latency, MAX_PEERS, MAX_STRESS_WORKERS,
    MemoryStress, Network, Partition, Signal, Stress, parse_cidr,
};
pub use nodefaults::{
    FaultState, MAX_NODE_FAULTS, NodeFault, NodeFaultStatus, NodeFaults, NodeFaultsSpec,
    NodeFaultsStatus, NodeTarget, PodRef, validate_faults,
};
pub use topology::{
    ResourceLimits, Service, Topology, TopologySpec, addr_var, limit_refusals, local_refusals,
    unknown_services,
};
pub use units::{Cpu, Duration, Percent, Rate, Size, UnitError};
pub use validate::{Problem, Problems, dns_subdomain};
pub use yaml::MAX_INPUT_BYTES;
