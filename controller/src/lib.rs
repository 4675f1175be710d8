//! Faultline's Kubernetes controller: Experiments become NodeFaults entries
//! for the node agents, checks are judged against the observer, and the
//! verdict, phase and counts go to the Experiment's status.
//!
//! `plan`, `decide` and `status` are pure (pods, time and the engine's run
//! in; entries, pods to take away, status and Events out); `reconcile`
//! reads the cluster, asks them, and does the API calls.

mod context;
mod decide;
mod errors;
pub mod leader;
mod live;
pub mod metrics;
mod nodes;
pub mod observe;
pub mod plan;
pub mod pods;
pub mod reconcile;
pub mod status;
mod sweep;
pub mod uninstall;
