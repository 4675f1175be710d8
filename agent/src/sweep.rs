//! The last resort when the journal cannot be read: the agent no longer
//! knows what it applied, so it removes everything of Faultline's it can
//! identify in every network namespace on the node — the `inet faultline`
//! nftables table and a `prio` root qdisc with our handle (`fa00:`), which
//! holds the netem children — and starts clean, rather than crash-loop
//! with faults left in the kernel. Nothing else is touched: both names are
//! the agent's own.

use std::{collections::BTreeSet, path::Path};

use crate::{
    backend::{
        netem::ROOT,
        netlink::{ENOENT, NetlinkError},
        nfnl::{Batch, NFPROTO_INET, Socket},
        nft::TABLE,
        rtnl::{Requests, Rtnl, TC_H_ROOT},
    },
    netns,
};

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Distinct network namespaces looked at.
    pub namespaces: usize,
    pub tables: usize,
    pub qdiscs: usize,
    /// What could not be looked at or removed.
    pub failures: Vec<String>,
}

/// Sweeps the network namespace of every process under `proc_root`
/// (with the chart's hostPID, every pod's and the node's) and every
/// namespace bound in `netns_dir` (`/run/netns`: the runtimes' pod
/// namespaces, and those with no process left).
pub fn sweep(proc_root: &Path, netns_dir: &Path) -> Swept {
    let mut out = Swept::default();
    let mut seen = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        out.failures
            .push(format!("cannot list {}", proc_root.display()));
        return out;
    };
    let processes = entries.flatten().filter_map(|e| {
        let is_pid = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid.then(|| e.path().join("ns/net"))
    });
    let bound = std::fs::read_dir(netns_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for ns in processes.chain(bound) {
        // A process gone meanwhile is skipped; one we may not look into
        // is a failure: its namespace could hold what we look for.
        let id = match netns::id_of(&ns) {
            Ok(id) => id,
            Err(netns::NetnsError::Gone { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => {
                out.failures
                    .push(format!("{}: {}", ns.display(), crate::report(&e)));
                continue;
            }
        };
        if !seen.insert(id) {
            continue;
        }
        out.namespaces += 1;
        sweep_one(&ns, &mut out);
    }
    out
}

fn sweep_one(ns: &Path, out: &mut Swept) {
    match Socket::open_in(ns) {
        Ok(Ok((mut sock, _))) => {
            let mut b = Batch::new(NFPROTO_INET);
            b.del_table(TABLE);
            match b.finish().map(|batch| sock.transact(batch)) {
                Ok(Ok(())) => out.tables += 1,
                Ok(Err(NetlinkError::Kernel { errno, .. })) if errno == ENOENT => {}
                Ok(Err(e)) | Err(e) => {
                    out.failures
                        .push(format!("{}: {}", ns.display(), crate::report(&e)))
                }
            }
        }
        Ok(Err(e)) => out
            .failures
            .push(format!("{}: {}", ns.display(), crate::report(&e))),
        Err(e) => out.failures.push(crate::report(&e)),
    }
    let mut rtnl = match Rtnl::open_in(ns) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return out
                .failures
                .push(format!("{}: {}", ns.display(), crate::report(&e)));
        }
        Err(e) => return out.failures.push(crate::report(&e)),
    };
    let (links, qdiscs) = match (rtnl.links(), rtnl.qdiscs()) {
        (Ok(l), Ok(q)) => (l, q),
        (Err(e), _) | (_, Err(e)) => {
            return out
                .failures
                .push(format!("{}: {}", ns.display(), crate::report(&e)));
        }
    };
    let mut reqs = Requests::default();
    let mut n = 0;
    for link in &links {
        let ours = qdiscs.iter().any(|q| {
            q.ifindex == link.index && q.parent == TC_H_ROOT && q.handle == ROOT && q.kind == "prio"
        });
        if ours {
            reqs.del_qdisc(link, TC_H_ROOT, ROOT);
            n += 1;
        }
    }
    match rtnl.send(reqs) {
        Ok(()) => out.qdiscs += n,
        Err(e) => out
            .failures
            .push(format!("{}: {}", ns.display(), crate::report(&e))),
    }
}
