//! A minimal traffic-control client over rtnetlink: just what latency
//! faults need (links, qdiscs, prio/netem qdiscs, u32 and matchall filters).
//!
//! - [`Requests`] is a pure encoder: tc requests concatenated into one
//!   datagram, each with `NLM_F_ACK`. rtnetlink has no transactions, but
//!   the kernel handles every message of a datagram in turn and acks each,
//!   a refusal included, so one `sendto` carries a whole change and its
//!   acks say which parts were refused.
//! - [`Rtnl`] is a `NETLINK_ROUTE` socket inside the target's network
//!   namespace, with link and qdisc dumps.
//!
//! This replaced running `tc` three to five times per change (≈ 60 ms of
//! guest time in the kernel lab) and `ip` every two seconds per fault. The
//! encodings follow the uapi headers (linux/rtnetlink.h, pkt_sched.h,
//! pkt_cls.h); the kernel lab checks them by reading the result back with
//! the real `tc`.

use std::path::Path;

use super::netlink::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR,
    NetlinkError, Op, Reply, Socket, Writer, attr_str, attrs, error_code, ne_u32, replies, set_seq,
};
use crate::netns::NetnsError;

/// How errors name this subsystem.
const FAMILY: &str = "rtnetlink";

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
// linux/gen_stats.h
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_PKT64: u16 = 8;
// linux/if_link.h, linux/if.h
const IFLA_IFNAME: u16 = 3;
const IFF_LOOPBACK: u32 = 0x8;
/// sizeof(struct ifinfomsg), sizeof(struct tcmsg).
const IFINFOMSG_LEN: usize = 16;
const TCMSG_LEN: usize = 20;
// linux/pkt_sched.h
pub(crate) const TC_H_ROOT: u32 = 0xffff_ffff;
/// The parent of ingress and clsact qdiscs.
pub(crate) const TC_H_INGRESS: u32 = 0xffff_fff1;
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// netem's queue limit in packets, tc's default: a limit of 0 would drop
/// every packet.
const NETEM_DEFAULT_LIMIT: u32 = 1000;
/// Nanoseconds per psched tick (PSCHED_SHIFT).
const PSCHED_SHIFT: u32 = 6;
// linux/pkt_cls.h
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
const TCA_MATCHALL_CLASSID: u16 = 1;
// linux/if_ether.h
pub(crate) const ETH_P_ALL: u16 = 0x0003;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

/// A network interface of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: i32,
    pub name: String,
}

/// A qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Qdisc {
    pub ifindex: i32,
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    /// Packets it has sent on (0 when the kernel gave no statistics).
    pub packets: u64,
}

/// A handle as tc writes it: `fa00:`, `fa00:2`.
pub(crate) fn handle_text(h: u32) -> String {
    match h & 0xffff {
        0 => format!("{:x}:", h >> 16),
        minor => format!("{:x}:{minor:x}", h >> 16),
    }
}

/// netem's settings: times in nanoseconds, probabilities as fractions of
/// `u32::MAX`, as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Netem {
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub delay_corr: u32,
    pub loss: u32,
    pub loss_corr: u32,
    pub duplicate: u32,
    pub corrupt: u32,
    /// Share of packets sent at once, ahead of the delayed others.
    pub reorder: u32,
    /// Bytes per second; 0 for no limit.
    pub rate_bytes: u64,
    /// The queue, in packets.
    pub limit: u32,
}

/// A probability in percent as netem's fraction of `u32::MAX`.
pub(crate) fn probability(percent: f64) -> u32 {
    (percent.clamp(0.0, 100.0) / 100.0 * f64::from(u32::MAX)).round() as u32
}

/// One u32 match: `(packet word at off) & mask == value`, network order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct U32Key {
    pub mask: [u8; 4],
    pub value: [u8; 4],
    pub off: i32,
}

fn tcmsg(ifindex: i32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG_LEN] {
    let mut m = [0u8; TCMSG_LEN];
    // family AF_UNSPEC and padding stay 0.
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

/// A filter's tcm_info: its prio in the upper half, the protocol (network
/// order) in the lower, as TC_H_MAKE(prio << 16, htons(proto)).
fn filter_info(prio: u16, proto: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(proto.to_be())
}

/// tc requests to send in one datagram, each acked on its own.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    w: Writer,
    /// Start of every message, with what it does and whether a refusal
    /// of it is an error.
    msgs: Vec<(usize, Op, Need)>,
}

/// A numbered request: its seq, what it does, whether its refusal counts.
type Numbered = (u32, Op, Need);

/// Whether a request's refusal is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    /// Cleaning up what may already be gone: a refusal is no error.
    BestEffort,
}

impl Requests {
    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// What the messages do, in order.
    #[cfg(test)]
    pub(crate) fn ops(&self) -> impl Iterator<Item = &Op> {
        self.msgs.iter().map(|(_, op, _)| op)
    }

    /// Makes a refusal of the last request no error: it cleans up what
    /// may already be gone.
    pub(crate) fn last_best_effort(&mut self) {
        if let Some(last) = self.msgs.last_mut() {
            last.2 = Need::BestEffort;
        }
    }

    fn msg(
        &mut self,
        ty: u16,
        flags: u16,
        tcm: [u8; TCMSG_LEN],
        op: Op,
        body: impl FnOnce(&mut Writer),
    ) {
        let start = self
            .w
            .begin_msg(ty, NLM_F_REQUEST | NLM_F_ACK | flags, &tcm);
        body(&mut self.w);
        self.w.end_msg(start);
        self.msgs.push((start, op, Need::Required));
    }

    /// `tc qdisc add dev L root handle H prio bands B priomap 0…`: every
    /// priority to the first band.
    pub(crate) fn add_root_prio(&mut self, link: &Link, handle: u32, bands: u8) {
        let mut qopt = [0u8; 20]; // struct tc_prio_qopt { int bands; __u8 priomap[16]; }
        qopt[..4].copy_from_slice(&i32::from(bands).to_ne_bytes());
        self.msg(
            RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            tcmsg(link.index, handle, TC_H_ROOT, 0),
            Op::change(format!(
                "add root prio qdisc {} on {}",
                handle_text(handle),
                link.name
            )),
            |w| {
                w.str(TCA_KIND, "prio");
                w.attr(TCA_OPTIONS, &qopt);
            },
        );
    }

    /// `tc qdisc replace dev L parent P handle H netem …`.
    pub(crate) fn replace_netem(&mut self, link: &Link, parent: u32, handle: u32, n: &Netem) {
        let ticks = |ns: u64| u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX);
        let words = |vs: &[u32]| -> Vec<u8> { vs.iter().flat_map(|v| v.to_ne_bytes()).collect() };
        // Reordering as tc sets it: gap 1 makes each packet go ahead with
        // the reorder probability, instead of every gap-th one.
        let gap = u32::from(n.reorder > 0);
        // struct tc_netem_qopt { latency, limit, loss, gap, duplicate, jitter }
        let qopt = words(&[
            ticks(n.delay_ns),
            if n.limit == 0 {
                NETEM_DEFAULT_LIMIT
            } else {
                n.limit
            },
            n.loss,
            gap,
            n.duplicate,
            ticks(n.jitter_ns),
        ]);
        // Every attribute below is always sent, zero included: a replace
        // keeps the old setting of one left out.
        // struct tc_netem_corr { delay_corr, loss_corr, dup_corr }
        let corr = words(&[n.delay_corr, n.loss_corr, 0]);
        // struct tc_netem_reorder / tc_netem_corrupt { probability, correlation }
        let reorder = words(&[n.reorder, 0]);
        let corrupt = words(&[n.corrupt, 0]);
        // struct tc_netem_rate { rate, packet_overhead, cell_size,
        // cell_overhead }; a rate past 32 bits goes in RATE64 as well.
        let rate32 = u32::try_from(n.rate_bytes).unwrap_or(u32::MAX);
        let rate = words(&[rate32, 0, 0, 0]);
        let i64_of = |ns: u64| i64::try_from(ns).unwrap_or(i64::MAX).to_ne_bytes();
        self.msg(
            RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_REPLACE,
            tcmsg(link.index, handle, parent, 0),
            Op::change(format!(
                "set netem qdisc {} under {} on {}",
                handle_text(handle),
                handle_text(parent),
                link.name
            )),
            |w| {
                w.str(TCA_KIND, "netem");
                // netem's options are its struct followed by attributes,
                // not a nest.
                w.wrap(TCA_OPTIONS, 0, |w| {
                    w.raw(&qopt);
                    w.attr(TCA_NETEM_CORR, &corr);
                    w.attr(TCA_NETEM_REORDER, &reorder);
                    w.attr(TCA_NETEM_CORRUPT, &corrupt);
                    w.attr(TCA_NETEM_RATE, &rate);
                    if rate32 == u32::MAX {
                        w.attr(TCA_NETEM_RATE64, &n.rate_bytes.to_ne_bytes());
                    }
                    // The 64-bit times override the struct's 32-bit ticks.
                    w.attr(TCA_NETEM_LATENCY64, &i64_of(n.delay_ns));
                    w.attr(TCA_NETEM_JITTER64, &i64_of(n.jitter_ns));
                });
            },
        );
    }

    /// `tc filter add dev L parent P protocol PROTO prio N u32 match … flowid C`.
    pub(crate) fn add_u32(
        &mut self,
        link: &Link,
        parent: u32,
        prio: u16,
        proto: u16,
        keys: &[U32Key],
        classid: u32,
    ) {
        // struct tc_u32_sel: flags, offshift, nkeys, pad, offmask, off,
        // offoff, hoff, hmask; then the keys { mask, val, off, offmask }.
        let mut sel = vec![0u8; 16];
        sel[0] = TC_U32_TERMINAL;
        sel[2] = u8::try_from(keys.len()).unwrap_or(u8::MAX);
        for k in keys {
            sel.extend_from_slice(&k.mask);
            sel.extend_from_slice(&k.value);
            sel.extend_from_slice(&k.off.to_ne_bytes());
            sel.extend_from_slice(&0i32.to_ne_bytes());
        }
        self.msg(
            RTM_NEWTFILTER,
            NLM_F_CREATE | NLM_F_EXCL,
            tcmsg(link.index, 0, parent, filter_info(prio, proto)),
            Op::change(format!(
                "add u32 filter at prio {prio} to {} on {}",
                handle_text(classid),
                link.name
            )),
            |w| {
                w.str(TCA_KIND, "u32");
                w.nest(TCA_OPTIONS, |w| {
                    w.ne32(TCA_U32_CLASSID, classid);
                    w.attr(TCA_U32_SEL, &sel);
                });
            },
        );
    }

    /// `tc filter add dev L parent P protocol all prio N matchall flowid C`.
    pub(crate) fn add_matchall(&mut self, link: &Link, parent: u32, prio: u16, classid: u32) {
        self.msg(
            RTM_NEWTFILTER,
            NLM_F_CREATE | NLM_F_EXCL,
            tcmsg(link.index, 0, parent, filter_info(prio, ETH_P_ALL)),
            Op::change(format!(
                "add matchall filter at prio {prio} to {} on {}",
                handle_text(classid),
                link.name
            )),
            |w| {
                w.str(TCA_KIND, "matchall");
                w.nest(TCA_OPTIONS, |w| w.ne32(TCA_MATCHALL_CLASSID, classid));
            },
        );
    }

    /// `tc filter del dev L parent P prio N`: every filter at that prio,
    /// whatever its protocol.
    pub(crate) fn del_filters(&mut self, link: &Link, parent: u32, prio: u16) {
        self.msg(
            RTM_DELTFILTER,
            0,
            tcmsg(link.index, 0, parent, filter_info(prio, 0)),
            Op::delete(format!("delete filters at prio {prio} on {}", link.name)),
            |_| {},
        );
    }

    /// `tc qdisc del dev L parent P handle H` (`root`: P = [`TC_H_ROOT`], H = 0).
    pub(crate) fn del_qdisc(&mut self, link: &Link, parent: u32, handle: u32) {
        let what = if parent == TC_H_ROOT {
            format!("delete the root qdisc of {}", link.name)
        } else {
            format!("delete qdisc {} on {}", handle_text(handle), link.name)
        };
        self.msg(
            RTM_DELQDISC,
            0,
            tcmsg(link.index, handle, parent, 0),
            Op::delete(what),
            |_| {},
        );
    }

    /// The bytes to send, numbered from `first`.
    fn encode(self, first: u32) -> Result<(Vec<u8>, Vec<Numbered>), NetlinkError> {
        if let Some(what) = self.w.too_large {
            return Err(NetlinkError::TooLarge {
                family: FAMILY,
                what,
            });
        }
        let mut bytes = self.w.buf;
        let mut seq = first;
        let mut ops = Vec::with_capacity(self.msgs.len());
        for (start, op, need) in self.msgs {
            set_seq(&mut bytes, start, seq);
            ops.push((seq, op, need));
            seq = seq.wrapping_add(1);
        }
        Ok((bytes, ops))
    }
}

/// The answers to one datagram of requests, as they arrive.
#[derive(Debug)]
struct Outcomes {
    pending: Vec<Numbered>,
    /// The refusals of required requests, by seq.
    refused: Vec<(u32, NetlinkError)>,
}

impl Outcomes {
    /// Takes one message; true once every request is answered.
    fn feed(&mut self, r: &Reply<'_>) -> Result<bool, NetlinkError> {
        if r.ty == NLMSG_ERROR
            && let Some(i) = self.pending.iter().position(|(seq, _, _)| *seq == r.seq)
        {
            let (seq, op, need) = self.pending.swap_remove(i);
            match error_code(FAMILY, r)? {
                0 => {}
                _ if need == Need::BestEffort => {}
                errno => self.refused.push((
                    seq,
                    NetlinkError::Kernel {
                        family: FAMILY,
                        op,
                        errno,
                    },
                )),
            }
        }
        Ok(self.pending.is_empty())
    }

    /// The first refusal, in the order sent.
    fn finish(mut self) -> Result<(), NetlinkError> {
        self.refused.sort_by_key(|(seq, _)| *seq);
        match self.refused.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

fn link_of(r: &Reply<'_>) -> Option<(Link, bool)> {
    if r.ty != RTM_NEWLINK {
        return None;
    }
    let index = i32::from_ne_bytes(r.payload.get(4..8)?.try_into().ok()?);
    let flags = ne_u32(r.payload, 8)?;
    let name = attrs(r.payload.get(IFINFOMSG_LEN..)?)
        .into_iter()
        .find(|(t, _)| *t == IFLA_IFNAME)
        .map(|(_, d)| attr_str(d))?;
    Some((Link { index, name }, flags & IFF_LOOPBACK != 0))
}

fn qdisc_of(r: &Reply<'_>) -> Option<Qdisc> {
    if r.ty != RTM_NEWQDISC {
        return None;
    }
    let p = r.payload;
    let a = attrs(p.get(TCMSG_LEN..)?);
    Some(Qdisc {
        ifindex: i32::from_ne_bytes(p.get(4..8)?.try_into().ok()?),
        handle: ne_u32(p, 8)?,
        parent: ne_u32(p, 12)?,
        kind: a
            .iter()
            .find(|(t, _)| *t == TCA_KIND)
            .map(|(_, d)| attr_str(d))?,
        packets: a
            .iter()
            .find(|(t, _)| *t == TCA_STATS2)
            .map_or(0, |(_, d)| stats_packets(d)),
    })
}

/// The packet count of a TCA_STATS2 nest: the 64-bit counter where the
/// kernel sends one, else the 32-bit one of `struct gnet_stats_basic`
/// (a u64 of bytes, then a u32 of packets).
fn stats_packets(nest: &[u8]) -> u64 {
    let a = attrs(nest);
    let wide = a
        .iter()
        .find(|(t, _)| *t == TCA_STATS_PKT64)
        .and_then(|(_, d)| <[u8; 8]>::try_from(*d).ok())
        .map(u64::from_ne_bytes);
    let basic = || {
        a.iter()
            .find(|(t, _)| *t == TCA_STATS_BASIC)
            .and_then(|(_, d)| ne_u32(d, 8))
            .map(u64::from)
    };
    wide.or_else(basic).unwrap_or(0)
}

/// A `NETLINK_ROUTE` socket inside one network namespace.
#[derive(Debug)]
pub(crate) struct Rtnl(Socket);

impl Rtnl {
    /// Opens a socket inside the network namespace at `ns`.
    pub(crate) fn open_in(ns: &Path) -> Result<Result<Rtnl, NetlinkError>, NetnsError> {
        Ok(Socket::open_in(ns, None, FAMILY)?.map(|(s, _)| Rtnl(s)))
    }

    fn dump_request(ty: u16, header: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        let start = w.begin_msg(ty, NLM_F_REQUEST | NLM_F_DUMP, header);
        w.end_msg(start);
        w.buf
    }

    /// The interfaces but loopback, by index.
    pub(crate) fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let req = Self::dump_request(RTM_GETLINK, &[0; IFINFOMSG_LEN]);
        let mut links: Vec<Link> = self.0.dump("list links", &req, Vec::new, |out, r| {
            if let Some((link, false)) = link_of(r) {
                out.push(link);
            }
        })?;
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Every qdisc of the namespace.
    pub(crate) fn qdiscs(&mut self) -> Result<Vec<Qdisc>, NetlinkError> {
        let req = Self::dump_request(RTM_GETQDISC, &[0; TCMSG_LEN]);
        self.0.dump("list qdiscs", &req, Vec::new, |out, r| {
            out.extend(qdisc_of(r));
        })
    }

    /// Sends every request in one datagram and waits for every answer;
    /// Err with the first refusal of a required request (the kernel goes
    /// on with the others), or when the exchange itself failed.
    pub(crate) fn send(&mut self, reqs: Requests) -> Result<(), NetlinkError> {
        if reqs.is_empty() {
            return Ok(());
        }
        let first = self.0.take_seqs(reqs.msgs.len());
        let (bytes, pending) = reqs.encode(first)?;
        self.0.make_room(bytes.len(), pending.len());
        self.0.send(&bytes)?;
        let mut outcomes = Outcomes {
            pending,
            refused: Vec::new(),
        };
        let mut buf = Socket::recv_buf();
        loop {
            let dgram = self.0.recv(&mut buf)?;
            for r in replies(FAMILY, dgram)? {
                if outcomes.feed(&r)? {
                    return outcomes.finish();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netlink::{
        NLA_HDRLEN, NLMSG_HDRLEN, ne_u16,
        tests::{error_msg, msg_at, nest},
    };

    fn eth0() -> Link {
        Link {
            index: 7,
            name: "eth0".into(),
        }
    }

    /// Type, flags, tcmsg fields (ifindex, handle, parent, info) and
    /// attributes of a message.
    type Decoded = (u16, u16, [u32; 4], Vec<(u16, Vec<u8>)>);

    fn decode(bytes: &[u8], n: usize) -> Decoded {
        let m = msg_at(bytes, n);
        let p = &m[NLMSG_HDRLEN..];
        let f = |at| ne_u32(p, at).expect("field");
        (
            ne_u16(m, 4).expect("type"),
            ne_u16(m, 6).expect("flags"),
            [f(4), f(8), f(12), f(16)],
            nest(&p[TCMSG_LEN..]),
        )
    }

    #[test]
    fn root_prio_and_netem_bytes() {
        let mut r = Requests::default();
        r.add_root_prio(&eth0(), 0xfa00_0000, 16);
        r.replace_netem(
            &eth0(),
            0xfa00_0002,
            0xfb02_0000,
            &Netem {
                delay_ns: 300_000_000,
                jitter_ns: 50_000_000,
                delay_corr: probability(25.0),
                loss: probability(0.5),
                ..Netem::default()
            },
        );
        let ops: Vec<&str> = r.ops().map(|o| o.what.as_str()).collect();
        assert_eq!(
            ops,
            [
                "add root prio qdisc fa00: on eth0",
                "set netem qdisc fb02: under fa00:2 on eth0"
            ]
        );
        let (bytes, seqs) = r.encode(40).expect("encodes");
        assert_eq!(
            seqs.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
            [40, 41]
        );
        let (ty, flags, tcm, a) = decode(&bytes, 0);
        assert_eq!(ty, RTM_NEWQDISC);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(tcm, [7, 0xfa00_0000, TC_H_ROOT, 0]);
        assert_eq!(a[0], (TCA_KIND, b"prio\0".to_vec()));
        let mut qopt = 16i32.to_ne_bytes().to_vec();
        qopt.extend_from_slice(&[0; 16]);
        assert_eq!(a[1], (TCA_OPTIONS, qopt));

        let (_, flags, tcm, a) = decode(&bytes, 1);
        assert_eq!(
            flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(tcm, [7, 0xfb02_0000, 0xfa00_0002, 0]);
        assert_eq!(a[0], (TCA_KIND, b"netem\0".to_vec()));
        let opts = &a[1].1;
        let word = |i: usize| ne_u32(opts, i * 4).expect("word");
        assert_eq!(word(0), 300_000_000 >> 6, "latency in ticks");
        assert_eq!(word(1), 1000, "limit: 0 would drop every packet");
        assert_eq!(word(2), 21_474_836, "0.5 % of u32::MAX");
        assert_eq!([word(3), word(4)], [0, 0]);
        assert_eq!(word(5), 50_000_000 >> 6);
        let inner = nest(&opts[24..]);
        let corr: Vec<u8> = [1_073_741_824u32, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(inner[0], (TCA_NETEM_CORR, corr));
        // Reorder, corrupt and rate are sent as zero, so a replace clears them.
        let zeros = |n: usize| vec![0u8; n];
        assert_eq!(inner[1], (TCA_NETEM_REORDER, zeros(8)));
        assert_eq!(inner[2], (TCA_NETEM_CORRUPT, zeros(8)));
        assert_eq!(inner[3], (TCA_NETEM_RATE, zeros(16)));
        assert_eq!(
            inner[4],
            (TCA_NETEM_LATENCY64, 300_000_000i64.to_ne_bytes().to_vec())
        );
        assert_eq!(
            inner[5],
            (TCA_NETEM_JITTER64, 50_000_000i64.to_ne_bytes().to_vec())
        );
        // The options attribute is not flagged as a nest.
        let m = msg_at(&bytes, 1);
        let opt_at = NLMSG_HDRLEN + TCMSG_LEN + NLA_HDRLEN + 8;
        assert_eq!(ne_u16(m, opt_at + 2), Some(TCA_OPTIONS));
    }

    #[test]
    fn netem_impairment_bytes() {
        let mut r = Requests::default();
        r.replace_netem(
            &eth0(),
            0xfa00_0002,
            0xfb02_0000,
            &Netem {
                delay_ns: 10_000_000,
                loss: probability(10.0),
                loss_corr: probability(25.0),
                duplicate: probability(2.0),
                corrupt: probability(1.0),
                reorder: probability(30.0),
                // 40 gbit: past what 32 bits hold.
                rate_bytes: 5_000_000_000,
                limit: 2000,
                ..Netem::default()
            },
        );
        let (bytes, _) = r.encode(1).expect("encodes");
        let (_, _, _, a) = decode(&bytes, 0);
        let opts = &a[1].1;
        let word = |i: usize| ne_u32(opts, i * 4).expect("word");
        assert_eq!(word(1), 2000, "limit");
        assert_eq!(word(2), probability(10.0), "loss");
        assert_eq!(word(3), 1, "gap 1: each packet may go ahead");
        assert_eq!(word(4), probability(2.0), "duplicate");
        let inner = nest(&opts[24..]);
        let words = |vs: &[u32]| -> Vec<u8> { vs.iter().flat_map(|v| v.to_ne_bytes()).collect() };
        assert_eq!(
            inner[0],
            (TCA_NETEM_CORR, words(&[0, probability(25.0), 0]))
        );
        assert_eq!(
            inner[1],
            (TCA_NETEM_REORDER, words(&[probability(30.0), 0]))
        );
        assert_eq!(inner[2], (TCA_NETEM_CORRUPT, words(&[probability(1.0), 0])));
        assert_eq!(inner[3], (TCA_NETEM_RATE, words(&[u32::MAX, 0, 0, 0])));
        assert_eq!(
            inner[4],
            (TCA_NETEM_RATE64, 5_000_000_000u64.to_ne_bytes().to_vec())
        );
    }

    #[test]
    fn filters_bytes() {
        let mut r = Requests::default();
        let key = U32Key {
            mask: [255, 0, 0, 0],
            value: [10, 0, 0, 0],
            off: 16,
        };
        r.add_u32(&eth0(), 0xfa00_0000, 3, ETH_P_IP, &[key], 0xfa00_0003);
        r.add_matchall(&eth0(), 0xfa00_0000, 104, 0xfa00_0004);
        r.del_filters(&eth0(), 0xfa00_0000, 36);
        r.del_qdisc(&eth0(), TC_H_ROOT, 0xfa00_0000);
        let (bytes, _) = r.encode(1).expect("encodes");
        let (ty, flags, tcm, a) = decode(&bytes, 0);
        assert_eq!(ty, RTM_NEWTFILTER);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        // prio 3, protocol 0x0800 in network order.
        assert_eq!(
            tcm,
            [7, 0, 0xfa00_0000, (3 << 16) | u32::from(0x0800u16.to_be())]
        );
        assert_eq!(a[0], (TCA_KIND, b"u32\0".to_vec()));
        let opts = nest(&a[1].1);
        assert_eq!(
            opts[0],
            (TCA_U32_CLASSID, 0xfa00_0003u32.to_ne_bytes().to_vec())
        );
        let sel = &opts[1].1;
        assert_eq!(opts[1].0, TCA_U32_SEL);
        assert_eq!(sel.len(), 32);
        assert_eq!(&sel[..3], [TC_U32_TERMINAL, 0, 1]);
        assert_eq!(&sel[16..24], [255, 0, 0, 0, 10, 0, 0, 0]);
        assert_eq!(&sel[24..28], 16i32.to_ne_bytes());

        let (_, _, tcm, a) = decode(&bytes, 1);
        assert_eq!(tcm[3], (104 << 16) | u32::from(3u16.to_be()));
        assert_eq!(a[0], (TCA_KIND, b"matchall\0".to_vec()));
        assert_eq!(
            nest(&a[1].1),
            [(TCA_MATCHALL_CLASSID, 0xfa00_0004u32.to_ne_bytes().to_vec())]
        );

        let (ty, flags, tcm, a) = decode(&bytes, 2);
        assert_eq!((ty, flags), (RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(tcm, [7, 0, 0xfa00_0000, 36 << 16]);
        assert!(a.is_empty());
        let (ty, _, tcm, _) = decode(&bytes, 3);
        assert_eq!((ty, tcm), (RTM_DELQDISC, [7, 0xfa00_0000, TC_H_ROOT, 0]));
    }

    fn outcomes(r: Requests, answers: &[Vec<u8>]) -> (Vec<bool>, Result<(), NetlinkError>) {
        let (_, pending) = r.encode(10).expect("encodes");
        let mut o = Outcomes {
            pending,
            refused: Vec::new(),
        };
        let d = answers.concat();
        let fed = replies(FAMILY, &d)
            .expect("parses")
            .iter()
            .map(|m| o.feed(m).expect("fine"))
            .collect();
        (fed, o.finish())
    }

    #[test]
    fn the_first_required_refusal_is_the_error() {
        let three = || {
            let mut r = Requests::default();
            r.del_filters(&eth0(), 0xfa00_0000, 2);
            r.last_best_effort();
            r.add_matchall(&eth0(), 0xfa00_0000, 102, 0xfa00_0002);
            r.del_qdisc(&eth0(), TC_H_ROOT, 0);
            r
        };
        // Answers in any order, a stranger's ignored; a best-effort refusal is fine.
        let (fed, out) = outcomes(
            three(),
            &[
                error_msg(99, 0),
                error_msg(11, 0),
                error_msg(12, 0),
                error_msg(10, 2),
            ],
        );
        assert_eq!(fed, [false, false, false, true]);
        assert!(out.is_ok());
        let (_, out) = outcomes(
            three(),
            &[error_msg(12, 2), error_msg(11, 17), error_msg(10, 0)],
        );
        let err = out.expect_err("refused");
        assert_eq!(
            err.to_string(),
            "rtnetlink: add matchall filter at prio 102 to fa00:2 on eth0 failed: File exists"
        );
        let (_, out) = outcomes(
            three(),
            &[error_msg(10, 0), error_msg(11, 0), error_msg(12, 2)],
        );
        assert!(out.expect_err("refused").is_absent_on_delete());
    }

    fn answer(ty: u16, header: &[u8], kind_or_name: (u16, &str)) -> Vec<u8> {
        let mut w = Writer::default();
        let start = w.begin_msg(ty, 0x02, header);
        w.str(kind_or_name.0, kind_or_name.1);
        w.end_msg(start);
        w.buf
    }

    #[test]
    fn reads_links_and_qdiscs() {
        let mut info = [0u8; IFINFOMSG_LEN];
        info[4..8].copy_from_slice(&3i32.to_ne_bytes());
        let eth = answer(RTM_NEWLINK, &info, (IFLA_IFNAME, "eth0"));
        info[4..8].copy_from_slice(&1i32.to_ne_bytes());
        info[8..12].copy_from_slice(&(IFF_LOOPBACK | 1).to_ne_bytes());
        let lo = answer(RTM_NEWLINK, &info, (IFLA_IFNAME, "lo"));
        let q = answer(
            RTM_NEWQDISC,
            &tcmsg(3, 0xfb02_0000, 0xfa00_0002, 1),
            (TCA_KIND, "netem"),
        );
        let d = [eth, lo, q].concat();
        let r = replies(FAMILY, &d).expect("parses");
        assert_eq!(
            link_of(&r[0]),
            Some((
                Link {
                    index: 3,
                    name: "eth0".into()
                },
                false
            ))
        );
        assert_eq!(link_of(&r[1]).map(|(l, lo)| (l.index, lo)), Some((1, true)));
        assert_eq!(link_of(&r[2]), None);
        assert_eq!(
            qdisc_of(&r[2]),
            Some(Qdisc {
                ifindex: 3,
                handle: 0xfb02_0000,
                parent: 0xfa00_0002,
                kind: "netem".into(),
                packets: 0,
            })
        );
        // Statistics: the 64-bit count wins over the basic one.
        let mut w = Writer::default();
        let start = w.begin_msg(RTM_NEWQDISC, 0x02, &tcmsg(3, 0xfb02_0000, 0xfa00_0002, 1));
        w.str(TCA_KIND, "netem");
        w.nest(TCA_STATS2, |w| {
            let mut basic = 9000u64.to_ne_bytes().to_vec();
            basic.extend(17u32.to_ne_bytes());
            basic.extend([0; 4]);
            w.attr(TCA_STATS_BASIC, &basic);
        });
        w.end_msg(start);
        let basic_only = w.buf;
        let mut w = Writer::default();
        let start = w.begin_msg(RTM_NEWQDISC, 0x02, &tcmsg(3, 0xfb02_0000, 0xfa00_0002, 1));
        w.str(TCA_KIND, "netem");
        w.nest(TCA_STATS2, |w| {
            w.attr(TCA_STATS_BASIC, &[0; 16]);
            w.attr(TCA_STATS_PKT64, &(5u64 << 33).to_ne_bytes());
        });
        w.end_msg(start);
        let d = [basic_only, w.buf].concat();
        let r = replies(FAMILY, &d).expect("parses");
        let packets: Vec<Option<u64>> = r.iter().map(|m| qdisc_of(m).map(|q| q.packets)).collect();
        assert_eq!(packets, [Some(17), Some(5 << 33)]);
        // Truncated answers are skipped, not a panic.
        let short = Reply {
            ty: RTM_NEWQDISC,
            flags: 0,
            seq: 0,
            payload: &[0; 6],
        };
        assert_eq!(qdisc_of(&short), None);
        assert_eq!(handle_text(0xfa00_0000), "fa00:");
        assert_eq!(handle_text(0xfa00_0010), "fa00:10");
        assert_eq!(handle_text(0), "0:");
        assert_eq!(probability(100.0), u32::MAX);
        assert_eq!(probability(-1.0), 0);
    }
}
