//! Faultline's node agent: converges a node's kernel to a desired list of
//! faults, each with an id, a target, one kind and an absolute deadline.
//!
//! - [`reconcile`] is the pure core: desired faults + applied set + now →
//!   actions. [`agent`] drives it from events and deadlines and writes the
//!   [`journal`] around every change; [`source`] is the standalone file
//!   source and [`cluster`] the Kubernetes one (a watch on the node's
//!   NodeFaults object, status by server-side apply); both feed the same
//!   [`agent::Event`]s, and [`status`] builds what is reported.
//! - [`backend`] holds the only code that changes the kernel, behind the
//!   [`backend::Backend`] trait with a real ([`backend::Kernel`]) and a
//!   recording implementation.
//!
//! **How the kernel is changed.** Partitions are nftables rules written by
//! running `nft -j -f -` with a JSON batch on stdin; latency is netem set up
//! by running `tc` with argument vectors. Both programs are started inside the
//! target's network namespace from a short-lived thread that `setns`es first
//! (see [`netns`]); no shell is ever involved, and no value reaches anything
//! but a JSON string or a single argument. We chose the `nft`/`tc` programs
//! over netlink crates because the nftables netlink crates (rustables, nftnl)
//! are thinly maintained and their expression coverage lags nft's, while
//! nft's JSON interface is nft's own stable, documented contract and gives
//! atomic transactions; `tc`'s argument syntax for prio/u32/netem has been
//! stable for decades. Kill faults use `kill(2)` through rustix.

pub mod agent;
pub mod backend;
pub mod cluster;
pub mod journal;
pub mod metrics;
pub mod netns;
pub mod reconcile;
pub mod source;
pub mod spans;
pub mod status;
pub mod target;

/// Logs one line to stderr, with the time, for people and log collectors.
pub fn log(msg: impl std::fmt::Display) {
    eprintln!("{} faultline-agent: {msg}", jiff::Timestamp::now());
}
