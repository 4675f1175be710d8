//! The experiment lifecycle, pure: given a validated experiment, the time
//! since the run started, the candidate targets and the figures observed, it
//! decides what to inject, remove and signal, which checks to evaluate, and
//! the run's phase and verdict; and when a scheduled experiment starts next.
//! No I/O, no clock, no sleeping — the local runtime and the controller
//! drive it.

pub mod check;
pub mod run;
pub mod schedule;
pub mod select;
pub mod snapshot;

pub use check::{Baseline, Evaluation, Observed, evaluate, evaluate_against};
pub use run::{
    Action, CheckRef, CheckReport, Effect, Entry, FaultReport, Instance, Resolved, Resume,
    ResumedCheck, Run, resolve_all,
};
pub use schedule::{NextStart, next_start, upcoming};
pub use select::{Candidate, Labels, Plan, PlanError, TargetId, plan};
pub use snapshot::{FaultSnapshot, FaultState, Snapshot};
