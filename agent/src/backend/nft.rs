//! Partition faults: nftables rules in `table inet faultline`, which the
//! agent owns, inside the target's network namespace.
//!
//! Each fault gets its own base chains (`f<hash>-in` on the input hook for
//! ingress, `f<hash>-out` on output for egress). A drop in any base chain is
//! final, so faults on one target coexist without ordering between them, and
//! removing a fault deletes exactly its chains: other faults' chains and
//! other tables are never touched. The table itself is deleted with its last
//! chain so a node without faults holds no trace of the agent.
//!
//! Changes go to the kernel over nf_tables netlink ([`super::nfnl`]), one
//! batch per apply and per removal: each is one atomic transaction. What a
//! rule matches is written here as expressions; no value is ever parsed as
//! nft syntax, let alone by a shell.
//!
//! Each peer is one rule: `meta nfproto`, then the source (ingress) or
//! destination (egress) address, masked for a prefix; with `ports`, also
//! `meta l4proto` in an anonymous set {tcp, udp, sctp} and `th dport` in an
//! anonymous set of the ports. nft would write `ip saddr { … }` as one rule
//! per family over an interval set; one rule per peer drops exactly the
//! same packets without interval sets (see [`super::nfnl`]), and a fault has
//! at most 64 peers.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use faultline_api::{Direction, MAX_PEERS, Partition, parse_cidr};

use super::{
    BackendError,
    netlink::{ENOENT, NetlinkError},
    nfnl::{
        Batch, Encoded, Expr, Hook, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, NFT_META_L4PROTO,
        NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER, Socket,
        TYPE_INET_PROTOCOL, TYPE_INET_SERVICE,
    },
};
use crate::netns::{self, NsId};

pub(crate) const TABLE: &str = "faultline";
/// nft's name for the table's family (NFPROTO_INET).
pub(crate) const FAMILY: &str = "inet";
/// Before the usual filter priority (0), so an accept elsewhere cannot come first.
pub(crate) const PRIORITY: i32 = -10;

/// A stable 64-bit FNV-1a hash: chain names must be the same in every
/// version of the agent, which `std`'s hasher does not promise.
pub(crate) fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn chain_names(id: &str) -> [String; 2] {
    let h = id_hash(id);
    [format!("f{h:016x}-in"), format!("f{h:016x}-out")]
}

/// A CIDR with its host bits cleared, as nft wants prefixes.
fn network(cidr: &str) -> Option<(IpAddr, u8)> {
    let net = parse_cidr(cidr)?.trunc();
    Some((net.addr(), net.prefix_len()))
}

/// The mask of a `len`-bit prefix of `addr`'s family, as bytes.
fn prefix_mask(addr: IpAddr, len: u8) -> Vec<u8> {
    // `len` came from a parsed CIDR of this family; clamp it all the same.
    let net = ipnet::IpNet::new(addr, len).unwrap_or_else(|_| ipnet::IpNet::from(addr));
    match net.netmask() {
        IpAddr::V4(m) => m.octets().to_vec(),
        IpAddr::V6(m) => m.octets().to_vec(),
    }
}

/// Expressions matching one peer network as the packet's source (ingress)
/// or destination (egress), including its address family.
pub(crate) fn peer_exprs(addr: IpAddr, len: u8, source: bool) -> Vec<Expr> {
    let (nfproto, bytes, offset) = match addr {
        // IPv4 header: saddr at 12, daddr at 16; IPv6: at 8 and 24.
        IpAddr::V4(a) => (
            NFPROTO_IPV4,
            a.octets().to_vec(),
            if source { 12 } else { 16 },
        ),
        IpAddr::V6(a) => (
            NFPROTO_IPV6,
            a.octets().to_vec(),
            if source { 8 } else { 24 },
        ),
    };
    let mut e = vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
        },
        Expr::CmpEq(vec![nfproto]),
    ];
    let full = bytes.len() * 8;
    if len == 0 {
        // /0: every address of the family.
        return e;
    }
    e.push(Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset,
        len: bytes.len() as u32,
    });
    if usize::from(len) < full {
        e.push(Expr::Mask(prefix_mask(addr, len)));
    }
    e.push(Expr::CmpEq(bytes));
    e
}

/// The transaction that makes the fault's chains exactly what `p` says:
/// created if missing, emptied and refilled if present (idempotent), and
/// the chain of a direction `p` does not cut deleted. A partition changed
/// under the same id is thus replaced in this one transaction, never
/// removed first: the target is cut by the old rules or the new ones at
/// every instant.
pub(crate) fn apply_batch(id: &str, p: &Partition) -> Result<Encoded, BackendError> {
    if p.peers.len() > MAX_PEERS || p.ports.len() > MAX_PEERS {
        return Err(BackendError::Failed(format!(
            "a partition holds at most {MAX_PEERS} peers and {MAX_PEERS} ports"
        )));
    }
    let mut peers: Vec<(IpAddr, u8)> = Vec::new();
    for peer in &p.peers {
        let net =
            network(peer).ok_or_else(|| BackendError::Failed(format!("{peer:?} is not a CIDR")))?;
        if !peers.contains(&net) {
            peers.push(net);
        }
    }
    let mut ports = p.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let comment = format!("faultline {id}");
    let [inc, outc] = chain_names(id);
    // (hook, matches the source address, chain) per direction cut.
    type Cut<'a> = (Hook, bool, &'a str);
    let (dirs, unused): (&[Cut], Option<(Hook, &str)>) = match p.direction {
        Direction::Ingress => (&[(Hook::Input, true, &inc)], Some((Hook::Output, &outc))),
        Direction::Egress => (&[(Hook::Output, false, &outc)], Some((Hook::Input, &inc))),
        Direction::Both => (
            &[(Hook::Input, true, &inc), (Hook::Output, false, &outc)],
            None,
        ),
    };
    let mut b = Batch::new(NFPROTO_INET);
    b.add_table(TABLE);
    if let Some((hook, chain)) = unused {
        // Left by an earlier version of the fault that cut both ways. A
        // delete of a missing chain would fail the whole transaction, so it
        // is added (a no-op when present) and then deleted.
        b.add_base_chain(TABLE, chain, hook, PRIORITY);
        b.flush_chain(TABLE, chain);
        b.del_chain(TABLE, chain);
    }
    for (hook, source, chain) in dirs {
        b.add_base_chain(TABLE, chain, *hook, PRIORITY);
        b.flush_chain(TABLE, chain);
        for (addr, len) in &peers {
            let mut exprs = peer_exprs(*addr, *len, *source);
            if !ports.is_empty() {
                // Only protocols with ports: `th dport` would read ICMP bytes otherwise.
                let protos = [6u8, 17, 132].map(|p| vec![p]);
                let l4 = b.anon_set(TABLE, TYPE_INET_PROTOCOL, 1, &protos);
                let keys: Vec<Vec<u8>> = ports.iter().map(|p| p.to_be_bytes().to_vec()).collect();
                let dports = b.anon_set(TABLE, TYPE_INET_SERVICE, 2, &keys);
                exprs.extend([
                    Expr::Meta {
                        key: NFT_META_L4PROTO,
                    },
                    Expr::Lookup { set_id: l4 },
                    Expr::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset: 2,
                        len: 2,
                    },
                    Expr::Lookup { set_id: dports },
                ]);
            }
            // Counted as it is dropped: the fault's evidence of effect.
            exprs.extend([Expr::Counter, Expr::Drop]);
            b.add_rule(TABLE, chain, &exprs, &comment);
        }
    }
    b.finish().map_err(|e| BackendError::Failed(e.to_string()))
}

/// What removing a fault deletes, given the chains our table holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Nothing else lives in the table: deleting it removes all at once.
    Table,
    /// These chains of the fault, with the table left to other faults.
    Chains(Vec<String>),
}

/// None when nothing of the fault is there.
pub(crate) fn removal(id: &str, chains: &[String]) -> Option<Removal> {
    let ours = chain_names(id);
    let present: Vec<String> = chains
        .iter()
        .filter(|c| ours.contains(c))
        .cloned()
        .collect();
    let others = chains.iter().filter(|c| !ours.contains(c)).count();
    if others == 0 {
        return Some(Removal::Table);
    }
    if present.is_empty() {
        return None;
    }
    Some(Removal::Chains(present))
}

pub(crate) fn removal_batch(r: &Removal) -> Result<Encoded, BackendError> {
    let mut b = Batch::new(NFPROTO_INET);
    match r {
        Removal::Table => b.del_table(TABLE),
        Removal::Chains(chains) => {
            for c in chains {
                // A chain that holds rules cannot be deleted on every
                // kernel; flush it first, in the same transaction.
                b.flush_chain(TABLE, c);
                b.del_chain(TABLE, c);
            }
        }
    }
    b.finish().map_err(|e| BackendError::Failed(e.to_string()))
}

fn failed(e: NetlinkError) -> BackendError {
    BackendError::Failed(crate::report(&e))
}

/// The netlink sockets of targets with partitions, so that a change needs
/// no thread to enter the namespace, and no socket is closed on the way:
/// closing a netfilter socket after a deletion waits out an RCU grace
/// period in the kernel (nf_tables flushes its destroy work on release),
/// 10–20 ms here, holding the namespace's commit lock — a close per change
/// stalled one change in four. So a socket stays while its target's faults
/// come and go, and is closed (off the loop, see [`close_later`]) [`IDLE`]
/// after the target's last partition went, or as soon as the namespace is
/// gone, since a socket would keep it alive.
#[derive(Debug, Default)]
pub struct Partitions {
    open: HashMap<NsId, Held>,
}

#[derive(Debug)]
struct Held {
    sock: Socket,
    /// Ids of the faults applied through it.
    faults: BTreeSet<String>,
    /// The namespace file it was opened for, to see the namespace go.
    path: PathBuf,
    /// Since when no fault has used it.
    idle_since: Option<Instant>,
}

impl Partitions {
    /// The socket for the namespace at `ns` now, opened if needed.
    fn socket(&mut self, ns: &Path) -> Result<(NsId, &mut Socket), BackendError> {
        let mut id = netns::id_of(ns)?;
        if !self.open.contains_key(&id) {
            let (sock, entered) = Socket::open_in(ns)?.map_err(|e| {
                BackendError::Failed(format!("{} (in {})", crate::report(&e), ns.display()))
            })?;
            // The path may have been given another namespace meanwhile: the
            // socket is wherever the thread went.
            id = entered;
            self.open.entry(id).or_insert(Held {
                sock,
                faults: BTreeSet::new(),
                path: ns.to_owned(),
                idle_since: Some(Instant::now()),
            });
        }
        match self.open.get_mut(&id) {
            Some(h) => Ok((id, &mut h.sock)),
            None => Err(BackendError::Failed("netlink socket vanished".into())),
        }
    }

    /// Closes a socket that may hold stray replies or a pending error
    /// after a failure that was not the kernel's answer: the next call
    /// opens a fresh one.
    fn discard(&mut self, id: NsId) {
        if let Some(h) = self.open.remove(&id) {
            close_later(h.sock);
        }
    }

    /// Closes the sockets no applied fault has used for [`IDLE`], and at
    /// once those whose namespace is gone (a socket would keep it alive).
    /// Closing is what costs (see [`close_later`]): a target whose faults
    /// come and go keeps its socket.
    pub(crate) fn prune(&mut self) {
        let now = Instant::now();
        let unused: Vec<NsId> = self
            .open
            .iter()
            .filter(|(id, h)| {
                h.faults.is_empty()
                    && (h.idle_since.is_some_and(|t| now.duration_since(t) >= IDLE)
                        || netns::id_of(&h.path).ok() != Some(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in unused {
            self.discard(id);
        }
    }

    pub fn apply(&mut self, ns: &Path, id: &str, p: &Partition) -> Result<(), BackendError> {
        let batch = apply_batch(id, p)?;
        let (nsid, sock) = self.socket(ns)?;
        match sock.transact(batch) {
            Ok(()) => {}
            // The kernel refused: the socket is fine, and the agent's undo
            // (a removal) comes next.
            Err(e @ NetlinkError::Kernel { .. }) => return Err(failed(e)),
            Err(e) => {
                self.discard(nsid);
                return Err(failed(e));
            }
        }
        for (other, h) in &mut self.open {
            if *other == nsid {
                h.faults.insert(id.to_owned());
                h.idle_since = None;
            } else if h.faults.remove(id) && h.faults.is_empty() {
                // Its target's path now names another namespace.
                h.idle_since = Some(Instant::now());
            }
        }
        self.prune();
        Ok(())
    }

    pub fn remove(&mut self, ns: &Path, id: &str) -> Result<(), BackendError> {
        let r = match self.socket(ns) {
            Ok((nsid, sock)) => {
                let r = remove_with(sock, id);
                if r.is_err() {
                    self.discard(nsid);
                }
                r
            }
            Err(e) => Err(e),
        };
        if matches!(r, Ok(()) | Err(BackendError::Gone(_))) {
            self.forget(id);
        }
        r
    }

    /// The packets the fault's rules have dropped since they were last
    /// written (a chain of a direction the fault does not cut counts 0).
    pub fn dropped(&mut self, ns: &Path, id: &str) -> Result<u64, BackendError> {
        let (nsid, sock) = self.socket(ns)?;
        let mut total = 0u64;
        for chain in chain_names(id) {
            match sock.counted(NFPROTO_INET, TABLE, &chain) {
                Ok(n) => total = total.saturating_add(n),
                Err(NetlinkError::Kernel { errno, .. }) if errno == ENOENT => {}
                Err(e) => {
                    self.discard(nsid);
                    return Err(failed(e));
                }
            }
        }
        Ok(total)
    }

    /// The fault is gone from the kernel (removed, or its target is): its
    /// socket idles unless another fault still uses it.
    pub(crate) fn forget(&mut self, id: &str) {
        for h in self.open.values_mut() {
            if h.faults.remove(id) && h.faults.is_empty() {
                h.idle_since = Some(Instant::now());
            }
        }
        self.prune();
    }
}

/// How long a socket no fault uses stays open before it is closed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a socket of a live namespace stays open without faults.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Closes a socket on a thread of its own, a little later: the release
/// waits out an RCU grace period while holding the namespace's nf_tables
/// commit lock, which would stall the loop, and the next transaction in
/// that namespace if it came right away (a fault replaced is a removal and
/// an apply).
fn close_later(sock: Socket) {
    // Should the thread not start, the socket is closed here instead.
    let _ = std::thread::Builder::new()
        .name("nfnl-close".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            std::thread::sleep(LINGER);
            drop(sock);
        });
}

fn remove_with(sock: &mut Socket, id: &str) -> Result<(), BackendError> {
    // Bounded: only someone else deleting our objects meanwhile repeats it.
    for _ in 0..3 {
        let chains = sock.chains(NFPROTO_INET, TABLE).map_err(failed)?;
        let Some(r) = removal(id, &chains) else {
            return Ok(());
        };
        match sock.transact(removal_batch(&r)?) {
            Ok(()) => return Ok(()),
            // No table: nothing of the fault is left (or ever was).
            Err(e) if e.is_absent_on_delete() && r == Removal::Table => return Ok(()),
            // A chain vanished meanwhile, which undid the whole
            // transaction: look again at what is left.
            Err(e) if e.is_absent_on_delete() => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(BackendError::Failed(format!(
        "nftables: table {FAMILY} {TABLE} kept changing while the fault was removed"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(direction: Direction, peers: &[&str], ports: &[u16]) -> Partition {
        Partition {
            direction,
            peers: peers.iter().map(|s| s.to_string()).collect(),
            ports: ports.to_vec(),
        }
    }

    fn ops(e: &Encoded) -> Vec<String> {
        e.ops().map(|o| o.what.clone()).collect()
    }

    #[test]
    fn hashes_are_stable() {
        // FNV-1a test vectors: the chain names of journaled faults depend on them.
        assert_eq!(id_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(id_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let [i, o] = chain_names("a");
        assert_eq!(
            (i.as_str(), o.as_str()),
            ("faf63dc4c8601ec8c-in", "faf63dc4c8601ec8c-out")
        );
    }

    #[test]
    fn peers_match_family_address_and_prefix() {
        let (a, l) = network("10.77.1.9/24").expect("cidr");
        assert_eq!(a.to_string(), "10.77.1.0", "host bits cleared");
        assert_eq!(
            peer_exprs(a, l, true),
            [
                Expr::Meta {
                    key: NFT_META_NFPROTO
                },
                Expr::CmpEq(vec![NFPROTO_IPV4]),
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 12,
                    len: 4
                },
                Expr::Mask(vec![255, 255, 255, 0]),
                Expr::CmpEq(vec![10, 77, 1, 0]),
            ]
        );
        // A full-length prefix needs no mask; egress reads the destination.
        let (a, l) = network("10.1.2.3").expect("cidr");
        let e = peer_exprs(a, l, false);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[2],
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset: 16,
                len: 4
            }
        );
        let (a, l) = network("fd00::1/9").expect("cidr");
        let e = peer_exprs(a, l, false);
        assert_eq!(e[1], Expr::CmpEq(vec![NFPROTO_IPV6]));
        assert_eq!(
            e[2],
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset: 24,
                len: 16
            }
        );
        let mut mask = vec![0xff, 0x80];
        mask.resize(16, 0);
        assert_eq!(e[3], Expr::Mask(mask));
        // /0 is the whole family.
        let (a, l) = network("::/0").expect("cidr");
        assert_eq!(peer_exprs(a, l, true).len(), 2);
    }

    #[test]
    fn both_directions_with_ports_and_families() {
        let b = apply_batch(
            "shop/x/0",
            &part(
                Direction::Both,
                &["10.77.1.9/24", "fd00::1/8", "10.1.2.3", "10.77.1.0/24"],
                &[443, 80, 443],
            ),
        )
        .expect("batch");
        let [i, o] = chain_names("shop/x/0");
        let got = ops(&b);
        let mut want = vec!["add table faultline".to_owned()];
        for c in [&i, &o] {
            want.push(format!("add chain faultline {c}"));
            want.push(format!("flush chain faultline {c}"));
            // Three distinct peers, each with its protocol and port sets.
            for _ in 0..3 {
                want.push("add anonymous set to table faultline".into());
                want.push("add elements to an anonymous set of table faultline".into());
                want.push("add anonymous set to table faultline".into());
                want.push("add elements to an anonymous set of table faultline".into());
                want.push(format!("add rule to chain faultline {c}"));
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn one_direction_no_ports() {
        let b = apply_batch("a", &part(Direction::Egress, &["10.0.0.0/8"], &[])).expect("batch");
        let [i, o] = chain_names("a");
        assert_eq!(
            ops(&b),
            [
                "add table faultline".to_owned(),
                // The other direction's chain goes, should it be there.
                format!("add chain faultline {i}"),
                format!("flush chain faultline {i}"),
                format!("delete chain faultline {i}"),
                format!("add chain faultline {o}"),
                format!("flush chain faultline {o}"),
                format!("add rule to chain faultline {o}"),
            ]
        );
        assert!(apply_batch("a", &part(Direction::Egress, &["nope"], &[])).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(apply_batch("a", &part(Direction::Egress, &many, &[])).is_err());
    }

    #[test]
    fn the_largest_partition_encodes() {
        let peers: Vec<String> = (0..64).map(|i| format!("fd00::{i:x}/128")).collect();
        let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
        let ports: Vec<u16> = (1..=64).collect();
        let b =
            apply_batch(&"x".repeat(253), &part(Direction::Both, &peers, &ports)).expect("batch");
        assert_eq!(b.ops().count(), 1 + 2 * (2 + 64 * 5));
    }

    #[test]
    fn removal_touches_only_our_chains() {
        let [ai, ao] = chain_names("a");
        let [bi, _] = chain_names("b");
        assert_eq!(
            removal("a", &[ai.clone(), ao.clone()]),
            Some(Removal::Table)
        );
        assert_eq!(removal("a", &[]), Some(Removal::Table));
        assert_eq!(
            removal("a", &[ai.clone(), bi.clone(), ao.clone()]),
            Some(Removal::Chains(vec![ai.clone(), ao.clone()]))
        );
        assert_eq!(removal("a", &[bi]), None);
        let b = removal_batch(&Removal::Chains(vec![ai.clone()])).expect("batch");
        assert_eq!(
            ops(&b),
            [
                format!("flush chain faultline {ai}"),
                format!("delete chain faultline {ai}")
            ]
        );
        let b = removal_batch(&Removal::Table).expect("batch");
        assert_eq!(ops(&b), ["delete table faultline"]);
        assert!(b.ops().all(|o| o.delete));
    }

    #[test]
    fn prefix_masks() {
        let v4: IpAddr = [10, 0, 0, 0].into();
        assert_eq!(prefix_mask(v4, 0), [0, 0, 0, 0]);
        assert_eq!(prefix_mask(v4, 12), [255, 0xf0, 0, 0]);
        assert_eq!(prefix_mask(v4, 32), [255; 4]);
        assert_eq!(prefix_mask(v4, 200), [255; 4]);
        let v6: IpAddr = "fd00::".parse().expect("v6");
        let mut m = vec![0xff, 0x80];
        m.resize(16, 0);
        assert_eq!(prefix_mask(v6, 9), m);
    }
}
