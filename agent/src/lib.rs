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
//! **How the kernel is changed.** Partitions are nftables rules written
//! over nf_tables netlink by the agent itself ([`backend::nfnl`], a small
//! client on rustix sockets: one batch per change, acked message by
//! message); latency is netem, prio and filters over rtnetlink
//! ([`backend::rtnl`]: one datagram of tc requests per change, after a
//! link and a qdisc dump). Both share [`backend::netlink`]; their sockets
//! are created inside the target's network namespace by a short-lived
//! thread that `setns`es first (see [`netns`]), and the nftables one is
//! kept while the target holds partitions. The agent runs no other
//! program, and no value reaches anything but a netlink attribute. nftables used to go through `nft -j -f -`, but starting
//! nft costs ~5 ms and a removal took two runs (list, then delete), which
//! kept a change from reaching the kernel within a few milliseconds; the
//! nftables netlink crates (rustables, nftnl) are thinly maintained or bind
//! libnftnl, while the few messages partitions need (table, base chain,
//! rule, anonymous set, chain dump) are a small, stable part of the kernel
//! ABI that nft itself decodes, which the kernel tests use to check the
//! encoding. Latency went the same way for the same reason: running `tc`
//! three to five times per change cost ≈ 60 ms in the kernel lab, against
//! under a millisecond now, and netlink-packet-route has no netem or prio
//! options to build on. Kill faults signal through pidfds (`pidfd_open`,
//! `pidfd_send_signal`), so a reused PID is never hit.

// Modules are private and what the binary, the tests and the benchmarks
// use is re-exported here, so the compiler reports what nothing uses.
mod agent;
mod backend;
pub mod cluster;
mod journal;
mod metrics;
mod netns;
mod reconcile;
pub mod skew;
mod source;
mod spans;
mod status;
mod sweep;
mod target;

pub use agent::{Agent, Clock, Event, Events, SystemClock, Wait};
pub use backend::{
    Backend, BackendError, Call, Kernel, Recording,
    netlink::{NetlinkError, Op},
    nfnl::Socket,
    nft::{Partitions, chain_names},
};
pub use faultline_stress::cgroup::mount as cgroup2_mount;
pub use journal::{Journal, JournalError, Record, RecordState, StateLock};
pub use metrics::{Metrics, serve as serve_metrics};
pub use netns::NetnsError;
pub use reconcile::{Desired, Receipt};
pub use source::{Doorbell, FileEvents, FileSource, read_desired};
pub use sweep::{Swept, sweep};
pub use target::Resolver;

/// An error with its causes, `outer: inner: …`.
pub use faultline_telemetry::error_chain as report;
