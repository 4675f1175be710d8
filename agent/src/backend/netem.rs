//! Latency and network faults: netem on the egress of every interface (but
//! loopback) of the target's network namespace, set over rtnetlink
//! ([`super::rtnl`]). A latency fault is a network fault with a delay.
//!
//! Layout per interface, so several latency faults coexist on one target:
//!
//! ```text
//! root fa00: prio bands 16, priomap all → band fa00:1 (untouched traffic)
//!   fa00:N  (N = the fault's band, 2..=16) → netem, handle (fb00+N):
//!   filters on fa00: send each fault's traffic to its band:
//!     with `to`: u32 `ip dst` CIDR matches at filter prio N,
//!                u32 `ip6 dst` CIDR matches at filter prio 32+N
//!     without:  matchall, filter prio 100+N (so specific faults win)
//! ```
//!
//! IPv4 and IPv6 matches need prios of their own: the kernel keeps one
//! protocol per filter prio, so an `ipv6` filter at a prio that already holds
//! `ip` filters is refused ("Filter with specified priority/protocol not
//! found").
//!
//! The band is chosen before applying and journaled, so removal after a
//! crash deletes exactly that fault's filters and netem. The root is only
//! replaced when the interface has the kernel's default qdisc (handle `0:`),
//! and is deleted (restoring that default) with the last latency fault: an
//! interface someone configured is refused rather than changed beyond repair.
//!
//! Each change is planned from one link dump and one qdisc dump (pure
//! functions, unit-tested) and sent as one datagram of tc requests. The
//! host kernel of our CI lacks `sch_netem`, so the whole path is tested
//! against a stock kernel in the lab.

use std::path::Path;

use faultline_api::{Network, parse_cidr};

use super::{
    BackendError,
    netlink::{ENOENT, NetlinkError},
    rtnl::{
        ETH_P_IP, ETH_P_IPV6, Link, Netem, Qdisc, Requests, Rtnl, TC_H_INGRESS, TC_H_ROOT, U32Key,
        handle_text, probability,
    },
};

pub(crate) const FIRST_BAND: u8 = 2;
pub(crate) const LAST_BAND: u8 = 16;
/// Our root qdisc's handle, `fa00:`.
pub(crate) const ROOT: u32 = 0xfa00_0000;
/// Filter prio offsets from the band: IPv4 `to` at +0, IPv6 `to` at
/// +32, catch-all at +100 (tried last).
const IPV6_PRIO: u16 = 32;
const CATCH_ALL_PRIO: u16 = 100;
/// Where the destination address is in an IPv4 and an IPv6 header.
const IPV4_DST_OFFSET: i32 = 16;
const IPV6_DST_OFFSET: i32 = 24;

/// The prio class of a band, `fa00:N`.
fn class(band: u8) -> u32 {
    ROOT | u32::from(band)
}

/// The handle of a band's netem, `fb0N:`.
fn handle(band: u8) -> u32 {
    (0xfb00 + u32::from(band)) << 16
}

/// Every filter prio a fault in `band` may use.
fn prios(band: u8) -> [u16; 3] {
    let b = u16::from(band);
    [b, IPV6_PRIO + b, CATCH_ALL_PRIO + b]
}

/// netem's queue: its default of 1000 packets, or with a rate, about a
/// second of traffic at that rate besides what the delay holds (full-size
/// packets), so a slow link queues as a real one would instead of holding
/// minutes of traffic; never under 100 packets, so TCP can fill the link.
fn queue_limit(n: &Network) -> u32 {
    const DEFAULT: u32 = 1000;
    const MTU: u64 = 1500;
    let Some(rate) = n.rate else {
        return DEFAULT;
    };
    let held_ms =
        1000 + n.delay.map_or(0, |d| d.as_millis()) + n.jitter.map_or(0, |d| d.as_millis());
    let packets = rate.bytes_per_second().saturating_mul(held_ms) / 1000 / MTU;
    u32::try_from(packets)
        .unwrap_or(u32::MAX)
        .clamp(100, 100_000)
}

fn netem_of(n: &Network) -> Netem {
    let ns = |d: faultline_api::Duration| d.as_millis().saturating_mul(1_000_000);
    let p = |p: Option<faultline_api::Percent>| p.map_or(0, |p| probability(p.points()));
    Netem {
        delay_ns: n.delay.map_or(0, ns),
        jitter_ns: n.jitter.map_or(0, ns),
        delay_corr: p(n.correlation),
        loss: p(n.loss),
        loss_corr: p(n.loss_correlation),
        duplicate: p(n.duplicate),
        corrupt: p(n.corrupt),
        reorder: p(n.reorder),
        rate_bytes: n.rate.map_or(0, |r| r.bytes_per_second()),
        limit: queue_limit(n),
    }
}

/// u32 keys matching a destination prefix: one per 32-bit word the prefix
/// covers (none for a zero-length prefix, which matches every packet).
fn dst_keys(cidr: &str) -> Result<(u16, Vec<U32Key>), BackendError> {
    let net =
        parse_cidr(cidr).ok_or_else(|| BackendError::Failed(format!("{cidr:?} is not a CIDR")))?;
    let (proto, base, addr, mask) = match (net.network(), net.netmask()) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(m)) => (
            ETH_P_IP,
            IPV4_DST_OFFSET,
            a.octets().to_vec(),
            m.octets().to_vec(),
        ),
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(m)) => (
            ETH_P_IPV6,
            IPV6_DST_OFFSET,
            a.octets().to_vec(),
            m.octets().to_vec(),
        ),
        _ => {
            return Err(BackendError::Failed(format!(
                "{cidr:?} mixes address families"
            )));
        }
    };
    let keys = addr
        .chunks_exact(4)
        .zip(mask.chunks_exact(4))
        .zip((base..).step_by(4))
        .filter(|((_, m), _)| m.iter().any(|&b| b != 0))
        .map(|((a, m), off)| U32Key {
            mask: [m[0], m[1], m[2], m[3]],
            value: [a[0], a[1], a[2], a[3]],
            off,
        })
        .collect();
    Ok((proto, keys))
}

/// Sets the fault up on one interface: the root when `add_root`, the
/// band's netem, then its filters (an earlier, half-done apply's go first,
/// so there is one set).
fn setup(
    reqs: &mut Requests,
    link: &Link,
    band: u8,
    l: &Network,
    add_root: bool,
) -> Result<(), BackendError> {
    if add_root {
        reqs.add_root_prio(link, ROOT, LAST_BAND);
    }
    reqs.replace_netem(link, class(band), handle(band), &netem_of(l));
    let [v4, v6, all] = prios(band);
    for p in [v4, v6, all] {
        reqs.del_filters(link, ROOT, p);
        reqs.last_best_effort();
    }
    if l.to.is_empty() {
        reqs.add_matchall(link, ROOT, all, class(band));
    }
    for cidr in &l.to {
        let (proto, keys) = dst_keys(cidr)?;
        let prio = if proto == ETH_P_IP { v4 } else { v6 };
        reqs.add_u32(link, ROOT, prio, proto, &keys, class(band));
    }
    Ok(())
}

/// What the root qdisc of an interface is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Root {
    /// The kernel's default (handle `0:`): ours to replace and restore.
    Default,
    Ours,
    Foreign(String),
}

pub(crate) fn classify_root(qdiscs: &[Qdisc], link: &Link) -> Root {
    let on_link = || qdiscs.iter().filter(|q| q.ifindex == link.index);
    match on_link().find(|q| q.parent == TC_H_ROOT) {
        Some(q) if q.kind == "prio" && q.handle == ROOT => Root::Ours,
        Some(q) if q.handle != 0 => {
            Root::Foreign(format!("root qdisc {} {}", q.kind, handle_text(q.handle)))
        }
        // A default root (mq has handle 0 too) may still hold someone's
        // qdiscs, which replacing the root would throw away. Ingress and
        // clsact hang off their own parent, not the root.
        _ => match on_link()
            .find(|q| q.handle != 0 && q.parent != TC_H_ROOT && q.parent != TC_H_INGRESS)
        {
            Some(q) => Root::Foreign(format!(
                "qdisc {} {} under its default root",
                q.kind,
                handle_text(q.handle)
            )),
            None => Root::Default,
        },
    }
}

/// Bands of ours on the interface that hold a netem child.
pub(crate) fn bands_in_use(qdiscs: &[Qdisc], link: &Link) -> Vec<u8> {
    qdiscs
        .iter()
        .filter(|q| q.ifindex == link.index && q.kind == "netem" && q.parent & 0xffff_0000 == ROOT)
        .filter_map(|q| u8::try_from(q.parent & 0xffff).ok())
        .collect()
}

/// The requests applying the fault on every interface; refused, with
/// nothing sent, when an interface has someone else's root qdisc.
pub(crate) fn plan_apply(
    links: &[Link],
    qdiscs: &[Qdisc],
    band: u8,
    l: &Network,
) -> Result<Requests, BackendError> {
    let mut reqs = Requests::default();
    for link in links {
        let add_root = match classify_root(qdiscs, link) {
            Root::Ours => false,
            Root::Default => true,
            Root::Foreign(what) => {
                return Err(BackendError::Failed(format!(
                    "interface {} has {what}, which the agent could not restore; not changing it",
                    link.name
                )));
            }
        };
        setup(&mut reqs, link, band, l, add_root)?;
    }
    Ok(reqs)
}

/// The requests covering interfaces that lack the fault's netem, leaving
/// those that have it alone (a refresh never interrupts the delay), and
/// interfaces with someone else's root.
pub(crate) fn plan_refresh(
    links: &[Link],
    qdiscs: &[Qdisc],
    band: u8,
    l: &Network,
) -> Result<Requests, BackendError> {
    let mut reqs = Requests::default();
    for link in links {
        match classify_root(qdiscs, link) {
            Root::Ours if bands_in_use(qdiscs, link).contains(&band) => {}
            Root::Ours => setup(&mut reqs, link, band, l, false)?,
            Root::Default => setup(&mut reqs, link, band, l, true)?,
            Root::Foreign(_) => {}
        }
    }
    Ok(reqs)
}

/// The requests removing the fault: its filters and netem, or the whole
/// root (restoring the kernel's default) where it was the last band.
pub(crate) fn plan_remove(links: &[Link], qdiscs: &[Qdisc], band: u8) -> Requests {
    let mut reqs = Requests::default();
    for link in links {
        if classify_root(qdiscs, link) != Root::Ours {
            continue;
        }
        // Restoring the default root must not fail; the band's own parts
        // may already be gone (a half-done apply, a second removal).
        // Naming our handle, so a root someone put there since is refused.
        if bands_in_use(qdiscs, link).iter().all(|&b| b == band) {
            reqs.del_qdisc(link, TC_H_ROOT, ROOT);
            continue;
        }
        for p in prios(band) {
            reqs.del_filters(link, ROOT, p);
            reqs.last_best_effort();
        }
        reqs.del_qdisc(link, class(band), handle(band));
        reqs.last_best_effort();
    }
    reqs
}

fn failed(e: NetlinkError) -> BackendError {
    // "Specified qdisc kind is unknown" and "TC classifier not found" both
    // arrive as ENOENT: name the module that is likely missing.
    let module = match &e {
        NetlinkError::Kernel { op, errno, .. } if *errno == ENOENT => [
            ("prio qdisc", "sch_prio"),
            ("netem qdisc", "sch_netem"),
            ("u32 filter", "cls_u32"),
            ("matchall filter", "cls_matchall"),
        ]
        .into_iter()
        .find(|(what, _)| op.what.contains(what))
        .map(|(_, module)| module),
        _ => None,
    };
    let text = crate::report(&e);
    BackendError::Failed(match module {
        Some(m) => format!("{text} (does the kernel have the {m} module?)"),
        None => text,
    })
}

fn open(ns: &Path) -> Result<Rtnl, BackendError> {
    Rtnl::open_in(ns)?.map_err(failed)
}

fn names(links: &[Link]) -> Vec<String> {
    links.iter().map(|l| l.name.clone()).collect()
}

/// Applies on every interface; returns the interfaces it saw, for
/// [`refresh`] to tell new ones.
pub fn apply(ns: &Path, band: u8, l: &Network) -> Result<Vec<String>, BackendError> {
    let mut sock = open(ns)?;
    let links = sock.links().map_err(failed)?;
    let qdiscs = sock.qdiscs().map_err(failed)?;
    sock.send(plan_apply(&links, &qdiscs, band, l)?)
        .map_err(failed)?;
    Ok(names(&links))
}

/// Covers interfaces created in the target since `known` was seen. When
/// the interfaces are still `known` it costs one link dump and nothing
/// else. Returns the interfaces when they changed, and whether one was
/// set up.
pub(crate) fn refresh(
    ns: &Path,
    band: u8,
    l: &Network,
    known: &[String],
) -> Result<(Option<Vec<String>>, bool), BackendError> {
    let mut sock = open(ns)?;
    let links = sock.links().map_err(failed)?;
    let now = names(&links);
    if now == known {
        return Ok((None, false));
    }
    let qdiscs = sock.qdiscs().map_err(failed)?;
    let reqs = plan_refresh(&links, &qdiscs, band, l)?;
    let changed = !reqs.is_empty();
    sock.send(reqs).map_err(failed)?;
    Ok((Some(now), changed))
}

/// The packets the band's netem qdiscs have sent on, over every
/// interface: those the fault delayed.
pub fn delayed(ns: &Path, band: u8) -> Result<u64, BackendError> {
    let mut sock = open(ns)?;
    let qdiscs = sock.qdiscs().map_err(failed)?;
    Ok(delayed_by(&qdiscs, band))
}

fn delayed_by(qdiscs: &[Qdisc], band: u8) -> u64 {
    qdiscs
        .iter()
        .filter(|q| q.kind == "netem" && q.handle == handle(band) && q.parent == class(band))
        .fold(0u64, |n, q| n.saturating_add(q.packets))
}

pub fn remove(ns: &Path, band: u8) -> Result<(), BackendError> {
    let mut sock = open(ns)?;
    let links = sock.links().map_err(failed)?;
    let qdiscs = sock.qdiscs().map_err(failed)?;
    sock.send(plan_remove(&links, &qdiscs, band))
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_api::{Duration, Percent};

    fn lat(to: &[&str]) -> Network {
        Network {
            delay: Duration::from_millis(300),
            to: to.iter().map(|s| s.to_string()).collect(),
            ..Network::default()
        }
    }

    fn link(index: i32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
        }
    }

    fn q(ifindex: i32, kind: &str, handle: u32, parent: u32) -> Qdisc {
        Qdisc {
            ifindex,
            handle,
            parent,
            kind: kind.into(),
            packets: 0,
        }
    }

    fn ops(r: &Requests) -> Vec<String> {
        r.ops().map(|o| o.what.clone()).collect()
    }

    #[test]
    fn netem_settings() {
        let mut l = lat(&[]);
        assert_eq!(
            netem_of(&l),
            Netem {
                delay_ns: 300_000_000,
                limit: 1000,
                ..Netem::default()
            }
        );
        l.jitter = Duration::from_millis(50);
        l.correlation = Percent::new(25.0);
        l.loss = Percent::new(0.5);
        let n = netem_of(&l);
        assert_eq!(n.jitter_ns, 50_000_000);
        assert_eq!(n.delay_corr, probability(25.0));
        assert_eq!(n.loss, probability(0.5));
    }

    #[test]
    fn network_settings_and_the_queue_a_rate_gets() {
        let rate = |r: &str| r.parse::<faultline_api::Rate>().ok();
        let n = Network {
            loss: Percent::new(10.0),
            loss_correlation: Percent::new(25.0),
            corrupt: Percent::new(1.0),
            duplicate: Percent::new(2.0),
            rate: rate("1mbit"),
            ..Network::default()
        };
        let got = netem_of(&n);
        assert_eq!(got.delay_ns, 0);
        assert_eq!(got.loss, probability(10.0));
        assert_eq!(got.loss_corr, probability(25.0));
        assert_eq!(got.corrupt, probability(1.0));
        assert_eq!(got.duplicate, probability(2.0));
        assert_eq!(got.reorder, 0);
        assert_eq!(got.rate_bytes, 125_000);
        // A second at 1mbit is 83 full-size packets: the floor holds.
        assert_eq!(got.limit, 100);
        // At 1gbit, a second plus a 100ms delay.
        let fast = Network {
            delay: Duration::from_millis(100),
            rate: rate("1gbit"),
            ..Network::default()
        };
        assert_eq!(netem_of(&fast).limit, 91_666);
        // Without a rate: netem's default, as tc sets it.
        assert_eq!(queue_limit(&lat(&[])), 1000);
    }

    #[test]
    fn destination_keys() {
        let (proto, keys) = dst_keys("10.1.0.0/16").expect("v4");
        assert_eq!(proto, ETH_P_IP);
        assert_eq!(
            keys,
            [U32Key {
                mask: [255, 255, 0, 0],
                value: [10, 1, 0, 0],
                off: 16
            }]
        );
        // Host bits are cleared, as tc does.
        assert_eq!(
            dst_keys("10.1.2.3/8").expect("v4").1[0].value,
            [10, 0, 0, 0]
        );
        let (proto, keys) = dst_keys("fd00:201:1::2/128").expect("v6");
        assert_eq!(proto, ETH_P_IPV6);
        assert_eq!(keys.len(), 4);
        assert_eq!(
            keys.iter().map(|k| k.off).collect::<Vec<_>>(),
            [24, 28, 32, 36]
        );
        assert_eq!(keys[0].value, [0xfd, 0, 0x02, 0x01]);
        assert_eq!(keys[3].value, [0, 0, 0, 2]);
        // A /40 covers one word and a half: two keys, the second masked.
        let (_, keys) = dst_keys("fd00:201:1::/40").expect("v6");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].mask, [255, 0, 0, 0]);
        assert!(dst_keys("0.0.0.0/0").expect("all").1.is_empty());
        assert!(dst_keys("x").is_err());
    }

    #[test]
    fn apply_sets_up_every_interface() {
        let links = [link(2, "eth0"), link(3, "veth1")];
        // eth0 has the default root, veth1 already ours with band 2 in use.
        let qdiscs = [
            q(2, "noqueue", 0, TC_H_ROOT),
            q(3, "prio", ROOT, TC_H_ROOT),
            q(3, "netem", handle(2), class(2)),
        ];
        let r = plan_apply(&links, &qdiscs, 3, &lat(&["10.0.0.0/8", "fd00::/8"])).expect("plan");
        assert_eq!(
            ops(&r),
            [
                "add root prio qdisc fa00: on eth0",
                "set netem qdisc fb03: under fa00:3 on eth0",
                "delete filters at prio 3 on eth0",
                "delete filters at prio 35 on eth0",
                "delete filters at prio 103 on eth0",
                "add u32 filter at prio 3 to fa00:3 on eth0",
                "add u32 filter at prio 35 to fa00:3 on eth0",
                "set netem qdisc fb03: under fa00:3 on veth1",
                "delete filters at prio 3 on veth1",
                "delete filters at prio 35 on veth1",
                "delete filters at prio 103 on veth1",
                "add u32 filter at prio 3 to fa00:3 on veth1",
                "add u32 filter at prio 35 to fa00:3 on veth1",
            ]
        );
        let all = plan_apply(&links[..1], &qdiscs, 4, &lat(&[])).expect("plan");
        assert_eq!(
            ops(&all).last().map(String::as_str),
            Some("add matchall filter at prio 104 to fa00:4 on eth0")
        );
        assert!(plan_apply(&links, &qdiscs, 4, &lat(&["x"])).is_err());
    }

    #[test]
    fn a_foreign_root_is_refused_before_anything_changes() {
        let links = [link(2, "t1"), link(3, "t2")];
        let qdiscs = [q(3, "pfifo", 0x0001_0000, TC_H_ROOT)];
        let err = plan_apply(&links, &qdiscs, 2, &lat(&[])).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "interface t2 has root qdisc pfifo 1:, which the agent could not restore; not changing it"
        );
        // A refresh leaves it alone and covers the rest.
        let r = plan_refresh(&links, &qdiscs, 2, &lat(&[])).expect("plan");
        assert!(
            ops(&r).iter().all(|o| o.ends_with("on t1")),
            "{:?}",
            ops(&r)
        );
        // Ingress qdiscs are not roots.
        let ingress = [q(2, "ingress", 0xffff_0000, 0xffff_fff1)];
        assert_eq!(classify_root(&ingress, &links[0]), Root::Default);
        // A default mq root with someone's fq under it is not ours to replace.
        let mq = [
            q(2, "mq", 0, TC_H_ROOT),
            q(2, "pfifo_fast", 0, 0x0000_0001),
            q(2, "fq", 0x8001_0000, 0x0000_0002),
        ];
        assert_eq!(
            classify_root(&mq, &links[0]),
            Root::Foreign("qdisc fq 8001: under its default root".into())
        );
        assert_eq!(classify_root(&mq[..2], &links[0]), Root::Default);
    }

    #[test]
    fn refresh_covers_only_interfaces_without_the_band() {
        let links = [link(2, "eth0"), link(5, "new")];
        let qdiscs = [
            q(2, "prio", ROOT, TC_H_ROOT),
            q(2, "netem", handle(2), class(2)),
        ];
        let r = plan_refresh(&links, &qdiscs, 2, &lat(&[])).expect("plan");
        assert_eq!(ops(&r)[0], "add root prio qdisc fa00: on new");
        assert!(ops(&r).iter().all(|o| o.ends_with("on new")));
        let covered = [
            q(5, "prio", ROOT, TC_H_ROOT),
            q(5, "netem", handle(2), class(2)),
        ];
        let all = [qdiscs.as_slice(), covered.as_slice()].concat();
        assert!(
            plan_refresh(&links, &all, 2, &lat(&[]))
                .expect("plan")
                .is_empty()
        );
    }

    #[test]
    fn delayed_counts_the_bands_netems_on_every_interface() {
        let counted = |ifindex, band: u8, packets| Qdisc {
            packets,
            ..q(ifindex, "netem", handle(band), class(band))
        };
        let qdiscs = [
            q(2, "prio", ROOT, TC_H_ROOT),
            counted(2, 2, 40),
            counted(3, 2, 2),
            // Another band, and a netem of someone else's under our class.
            counted(2, 3, 1000),
            Qdisc {
                packets: 7,
                ..q(2, "netem", 0x0010_0000, class(2))
            },
        ];
        assert_eq!(delayed_by(&qdiscs, 2), 42);
        assert_eq!(delayed_by(&qdiscs, 4), 0);
    }

    #[test]
    fn removal_restores_the_default_with_the_last_band() {
        let links = [link(2, "eth0"), link(3, "eth1"), link(4, "theirs")];
        let qdiscs = [
            q(2, "prio", ROOT, TC_H_ROOT),
            q(2, "netem", handle(2), class(2)),
            q(2, "netem", handle(16), class(16)),
            q(3, "prio", ROOT, TC_H_ROOT),
            q(3, "netem", handle(2), class(2)),
            q(4, "fq", 0x8001_0000, TC_H_ROOT),
        ];
        assert_eq!(bands_in_use(&qdiscs, &links[0]), [2, 16]);
        let r = plan_remove(&links, &qdiscs, 2);
        assert_eq!(
            ops(&r),
            [
                "delete filters at prio 2 on eth0",
                "delete filters at prio 34 on eth0",
                "delete filters at prio 102 on eth0",
                "delete qdisc fb02: on eth0",
                "delete the root qdisc of eth1",
            ]
        );
        // Every prio a filter of the band is added at is deleted again.
        for l in [lat(&["10.0.0.0/8", "fd00::/8"]), lat(&[])] {
            let added = plan_apply(&links[..1], &qdiscs, 2, &l).expect("plan");
            for op in ops(&added)
                .iter()
                .filter(|o| o.contains(" filter at prio "))
            {
                let prio = op.split(" prio ").nth(1).and_then(|t| t.split(' ').next());
                assert!(
                    ops(&r).iter().any(|d| d
                        .starts_with(&format!("delete filters at prio {}", prio.unwrap_or("?")))),
                    "{op}"
                );
            }
        }
        // No prio is shared between bands (2..=16).
        let mut all: Vec<u16> = (FIRST_BAND..=LAST_BAND).flat_map(prios).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(plan_remove(&links, &[], 2).is_empty());
    }
}
