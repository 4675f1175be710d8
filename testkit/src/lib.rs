//! Test support for Faultline's crates; a dev-dependency only.

pub mod kube;
