//! Faultline's user-facing schemas: `Experiment` and `NodeFaults` (CRDs) and
//! `Topology` (local mode), with parsing that reports every problem at its
//! file line and column, and validation usable at admission time.
//!
//! Nothing here does I/O: callers pass bytes in and get typed values or
//! diagnostics out.

pub mod crd;
pub mod cron;
pub mod decode;
pub mod diag;
pub mod document;
pub mod experiment;
pub mod fault;
pub mod nodefaults;
pub mod topology;
pub mod units;
pub mod validate;
pub mod yaml;

pub use cron::CronSchedule;
pub use diag::{Diagnostic, Pos};
pub use document::{API_VERSION, Parsed, Resource, parse_documents, parse_one};
pub use experiment::{Experiment, ExperimentSpec, ExperimentStatus};
pub use fault::{Direction, FaultAction, Kill, KillMethod, Latency, Partition, Signal};
pub use nodefaults::{NodeFault, NodeFaults, NodeFaultsSpec, NodeTarget};
pub use topology::{Service, Topology, TopologySpec};
pub use units::{Duration, Percent};
