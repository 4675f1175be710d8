//! Local mode: an experiment run against a topology of local processes. The
//! runtime starts and supervises the services, puts a userspace fault proxy
//! on every dependency edge, embeds the observer, and drives the engine.

pub mod local;
mod plan;
pub mod processes;
mod stress;

pub use local::{Options, Outcome, Progress, local_mode_notes, run};
pub use plan::{Edge, LocalPlan, plan};
pub use stress::{controllers as cgroup_controllers, support as stress_support};
