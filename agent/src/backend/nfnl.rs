//! A minimal nf_tables client over netlink: just what partition faults need.
//!
//! - [`Batch`] is a pure encoder: one transaction (batch begin, messages,
//!   batch end) as the bytes the kernel reads, unit-tested on those bytes.
//! - [`Socket`] is a `NETLINK_NETFILTER` socket opened inside a network
//!   namespace (see [`super::netlink`]). It sends a batch in one `sendto`,
//!   with `NLM_F_ACK` on every message, and reads acks until each message
//!   has one or the first error arrives. It also lists a table's chains
//!   with a `GETCHAIN` dump.
//!
//! Sets: nft writes `{…}` as anonymous sets; this client builds anonymous
//! constant sets (`NFT_SET_ANONYMOUS | NFT_SET_CONSTANT`, elements added in
//! the same transaction, bound by a `lookup`) for exact-match keys only
//! (ports, layer 4 protocols). Address prefixes are one rule each instead
//! of an interval set: interval sets need userspace merging of overlapping
//! prefixes and end markers, and a fault holds at most 64 peers
//! (`faultline_api::MAX_PEERS`), so a chain holds at most 64 rules
//! and each rule at most two small sets. Per-rule ports would instead
//! multiply out to 64 × 64 × 3 rules.
//!
//! Numeric values are copied from the kernel's uapi headers, named as there.

use std::{collections::BTreeMap, path::Path};

use rustix::net::netlink;

use super::netlink::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR, NetlinkError,
    Op, Reply, Writer, attr_str, attrs, error_code, replies, set_seq,
};
use crate::netns::{NetnsError, NsId};

/// How errors name this subsystem.
const FAMILY: &str = "nftables";

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNETLINK_V0: u8 = 0;

// linux/netfilter.h
const NFPROTO_UNSPEC: u8 = 0;
pub(crate) const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;

// linux/netfilter/nf_tables.h: enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
// nf_tables.h: attributes
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
pub(crate) const NFT_META_NFPROTO: u32 = 15;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;

// nft's own userdata (libnftnl's udata.h, nftables' datatype.h): how nft
// finds a rule's comment and prints a set's keys.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
pub(crate) const TYPE_INET_PROTOCOL: u32 = 12;
pub(crate) const TYPE_INET_SERVICE: u32 = 13;

/// The kernel numbers an anonymous set itself where the name says `%d`.
const ANON_SET_NAME: &str = "__set%d";
/// nft refuses comments longer than this; the kernel's userdata limit is 256.
pub(crate) const COMMENT_MAX: usize = 128;

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Input,
    Output,
}

/// One rule expression; every load goes to register 1, which the next
/// expression reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `meta KEY` → reg 1.
    Meta { key: u32 },
    /// `len` bytes at `offset` of header `base` → reg 1.
    Payload { base: u32, offset: u32, len: u32 },
    /// reg 1 &= mask (a prefix).
    Mask(Vec<u8>),
    /// reg 1 == data, else the rule stops.
    CmpEq(Vec<u8>),
    /// reg 1 ∈ the anonymous set this batch created under that id.
    Lookup { set_id: u32 },
    /// Counts the packets that got this far (those the rule is about to drop).
    Counter,
    /// Verdict drop.
    Drop,
}

/// nf_tables' fixed header: the objects' family, version 0, and a resource
/// id in network order (the subsystem, in a batch's begin and end).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

/// Network-order data in an `nft_data_attributes` nest.
fn data_value(w: &mut Writer, ty: u16, value: &[u8]) {
    w.nest(ty, |w| w.attr(NFTA_DATA_VALUE, value));
}

/// One nf_tables transaction, encoded.
#[derive(Debug)]
pub(crate) struct Batch {
    w: Writer,
    family: u8,
    /// Start of every message, with what it does (None: begin and end).
    msgs: Vec<(usize, Option<Op>)>,
    next_set_id: u32,
}

impl Batch {
    /// A batch whose objects are in `family` (NFPROTO_*).
    pub fn new(family: u8) -> Batch {
        let mut b = Batch {
            w: Writer::default(),
            family,
            msgs: Vec::new(),
            next_set_id: 1,
        };
        // res_id names the subsystem the batch is for, in network order.
        let start = b.w.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            &nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES),
        );
        b.w.end_msg(start);
        b.msgs.push((start, None));
        b
    }

    fn msg(&mut self, ty: u16, flags: u16, op: Op, body: impl FnOnce(&mut Writer)) {
        let start = self.w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            &nfgenmsg(self.family, 0),
        );
        body(&mut self.w);
        self.w.end_msg(start);
        self.msgs.push((start, Some(op)));
    }

    /// `add table`: created if missing, left as it is otherwise.
    pub(crate) fn add_table(&mut self, table: &str) {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            Op::change(format!("add table {table}")),
            |w| w.str(NFTA_TABLE_NAME, table),
        );
    }

    pub(crate) fn del_table(&mut self, table: &str) {
        self.msg(
            NFT_MSG_DELTABLE,
            0,
            Op::delete(format!("delete table {table}")),
            |w| w.str(NFTA_TABLE_NAME, table),
        );
    }

    /// `add chain` for a filter base chain with policy accept; re-adding
    /// the same chain changes nothing (NLM_F_CREATE without NLM_F_EXCL).
    pub(crate) fn add_base_chain(&mut self, table: &str, chain: &str, hook: Hook, priority: i32) {
        let hooknum = match hook {
            Hook::Input => NF_INET_LOCAL_IN,
            Hook::Output => NF_INET_LOCAL_OUT,
        };
        self.msg(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            Op::change(format!("add chain {table} {chain}")),
            |w| {
                w.str(NFTA_CHAIN_TABLE, table);
                w.str(NFTA_CHAIN_NAME, chain);
                w.nest(NFTA_CHAIN_HOOK, |w| {
                    w.be32(NFTA_HOOK_HOOKNUM, hooknum);
                    // Two's complement, big-endian: the kernel reads it as a be32 s32.
                    w.be32(NFTA_HOOK_PRIORITY, priority as u32);
                });
                w.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                w.str(NFTA_CHAIN_TYPE, "filter");
            },
        );
    }

    /// `flush chain`: DELRULE naming only the table and chain deletes all its rules.
    pub(crate) fn flush_chain(&mut self, table: &str, chain: &str) {
        self.msg(
            NFT_MSG_DELRULE,
            0,
            Op::delete(format!("flush chain {table} {chain}")),
            |w| {
                w.str(NFTA_RULE_TABLE, table);
                w.str(NFTA_RULE_CHAIN, chain);
            },
        );
    }

    pub(crate) fn del_chain(&mut self, table: &str, chain: &str) {
        self.msg(
            NFT_MSG_DELCHAIN,
            0,
            Op::delete(format!("delete chain {table} {chain}")),
            |w| {
                w.str(NFTA_CHAIN_TABLE, table);
                w.str(NFTA_CHAIN_NAME, chain);
            },
        );
    }

    /// An anonymous constant set of `key_len`-byte keys (network order),
    /// filled in the same transaction; returns the id a [`Expr::Lookup`]
    /// in a later rule of this batch binds it by. Each set serves one rule.
    pub(crate) fn anon_set(
        &mut self,
        table: &str,
        key_type: u32,
        key_len: u32,
        keys: &[Vec<u8>],
    ) -> u32 {
        let id = self.next_set_id;
        self.next_set_id = self.next_set_id.wrapping_add(1);
        let size = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        self.msg(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            Op::change(format!("add anonymous set to table {table}")),
            |w| {
                w.str(NFTA_SET_TABLE, table);
                w.str(NFTA_SET_NAME, ANON_SET_NAME);
                w.be32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
                w.be32(NFTA_SET_KEY_TYPE, key_type);
                w.be32(NFTA_SET_KEY_LEN, key_len);
                w.be32(NFTA_SET_ID, id);
                w.nest(NFTA_SET_DESC, |w| w.be32(NFTA_SET_DESC_SIZE, size));
                // nft's TLV: the key's byte order, as a host-order u32.
                let mut ud = vec![NFTNL_UDATA_SET_KEYBYTEORDER, 4];
                ud.extend_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
                w.attr(NFTA_SET_USERDATA, &ud);
            },
        );
        self.msg(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            Op::change(format!("add elements to an anonymous set of table {table}")),
            |w| {
                w.str(NFTA_SET_ELEM_LIST_TABLE, table);
                w.str(NFTA_SET_ELEM_LIST_SET, ANON_SET_NAME);
                w.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
                w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                    for k in keys {
                        w.nest(NFTA_LIST_ELEM, |w| data_value(w, NFTA_SET_ELEM_KEY, k));
                    }
                });
            },
        );
        id
    }

    /// `add rule` at the end of `chain`, with nft's comment userdata.
    pub(crate) fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], comment: &str) {
        self.msg(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            Op::change(format!("add rule to chain {table} {chain}")),
            |w| {
                w.str(NFTA_RULE_TABLE, table);
                w.str(NFTA_RULE_CHAIN, chain);
                w.nest(NFTA_RULE_EXPRESSIONS, |w| {
                    for e in exprs {
                        w.nest(NFTA_LIST_ELEM, |w| expr(w, e));
                    }
                });
                if let Some(ud) = comment_udata(comment) {
                    w.attr(NFTA_RULE_USERDATA, &ud);
                }
            },
        );
    }

    /// Closes the batch: the bytes to send and what each message does.
    pub(crate) fn finish(mut self) -> Result<Encoded, NetlinkError> {
        let start = self.w.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            &nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES),
        );
        self.w.end_msg(start);
        self.msgs.push((start, None));
        if let Some(what) = self.w.too_large {
            return Err(NetlinkError::TooLarge {
                family: FAMILY,
                what,
            });
        }
        Ok(Encoded {
            bytes: self.w.buf,
            msgs: self.msgs,
        })
    }
}

/// nft's comment TLV (type, length, NUL-terminated text); None when empty.
/// Longer comments are cut at a character boundary to nft's limit.
fn comment_udata(comment: &str) -> Option<Vec<u8>> {
    let mut c: String = comment.chars().filter(|&ch| ch != '\0').collect();
    while c.len() + 1 > COMMENT_MAX {
        c.pop();
    }
    if c.is_empty() {
        return None;
    }
    let len = u8::try_from(c.len() + 1).ok()?;
    let mut ud = vec![NFTNL_UDATA_RULE_COMMENT, len];
    ud.extend_from_slice(c.as_bytes());
    ud.push(0);
    Some(ud)
}

fn expr(w: &mut Writer, e: &Expr) {
    let name = match e {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Mask(_) => "bitwise",
        Expr::CmpEq(_) => "cmp",
        Expr::Lookup { .. } => "lookup",
        Expr::Counter => "counter",
        Expr::Drop => "immediate",
    };
    w.str(NFTA_EXPR_NAME, name);
    w.nest(NFTA_EXPR_DATA, |w| match e {
        Expr::Meta { key } => {
            w.be32(NFTA_META_KEY, *key);
            w.be32(NFTA_META_DREG, NFT_REG_1);
        }
        Expr::Payload { base, offset, len } => {
            w.be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.be32(NFTA_PAYLOAD_BASE, *base);
            w.be32(NFTA_PAYLOAD_OFFSET, *offset);
            w.be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Mask(mask) => {
            w.be32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.be32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.be32(NFTA_BITWISE_LEN, u32::try_from(mask.len()).unwrap_or(0));
            data_value(w, NFTA_BITWISE_MASK, mask);
            data_value(w, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
        }
        Expr::CmpEq(data) => {
            w.be32(NFTA_CMP_SREG, NFT_REG_1);
            w.be32(NFTA_CMP_OP, NFT_CMP_EQ);
            data_value(w, NFTA_CMP_DATA, data);
        }
        Expr::Lookup { set_id } => {
            w.str(NFTA_LOOKUP_SET, ANON_SET_NAME);
            w.be32(NFTA_LOOKUP_SET_ID, *set_id);
            w.be32(NFTA_LOOKUP_SREG, NFT_REG_1);
        }
        Expr::Counter => {
            w.attr(NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
            w.attr(NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
        }
        Expr::Drop => {
            w.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            w.nest(NFTA_IMMEDIATE_DATA, |w| {
                w.nest(NFTA_DATA_VERDICT, |w| w.be32(NFTA_VERDICT_CODE, NF_DROP));
            });
        }
    });
}

/// A finished batch.
#[derive(Debug)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    msgs: Vec<(usize, Option<Op>)>,
}

impl Encoded {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The operations, in order.
    #[cfg(test)]
    pub(crate) fn ops(&self) -> impl Iterator<Item = &Op> {
        self.msgs.iter().filter_map(|(_, op)| op.as_ref())
    }

    /// Numbers the messages from `first`; returns the batch begin's seq and
    /// the seq of every message that will be acked.
    fn number(&mut self, first: u32) -> (u32, BTreeMap<u32, Op>) {
        let mut acks = BTreeMap::new();
        let mut seq = first;
        for (start, op) in &self.msgs {
            set_seq(&mut self.bytes, *start, seq);
            if let Some(op) = op {
                acks.insert(seq, op.clone());
            }
            seq = seq.wrapping_add(1);
        }
        (first, acks)
    }
}

/// The attributes after a reply's nfgenmsg.
fn nf_attrs(payload: &[u8]) -> Vec<(u16, &[u8])> {
    attrs(payload.get(4..).unwrap_or(&[]))
}

/// Acks of one batch, as they arrive.
#[derive(Debug)]
struct Acks {
    begin: u32,
    pending: BTreeMap<u32, Op>,
}

impl Acks {
    /// Takes one message; Err on the first refusal, Ok(true) once every
    /// message is acked.
    fn feed(&mut self, r: &Reply<'_>) -> Result<bool, NetlinkError> {
        if r.ty == NLMSG_ERROR {
            let errno = error_code(FAMILY, r)?;
            if let Some(op) = self.pending.remove(&r.seq) {
                if errno != 0 {
                    return Err(NetlinkError::Kernel {
                        family: FAMILY,
                        op,
                        errno,
                    });
                }
            } else if r.seq == self.begin && errno != 0 {
                // The commit itself failed, or the kernel refused the batch as a whole.
                return Err(NetlinkError::Kernel {
                    family: FAMILY,
                    op: Op::change("commit".into()),
                    errno,
                });
            }
        }
        // Anything else (another batch's late acks, notifications) is not ours.
        Ok(self.pending.is_empty())
    }
}

/// The chain a GETCHAIN dump's message names, when it is one of `table`'s.
fn chain_of(table: &str, r: &Reply<'_>) -> Option<String> {
    if r.ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN {
        return None;
    }
    let a = nf_attrs(r.payload);
    let of_table = a
        .iter()
        .any(|(t, d)| *t == NFTA_CHAIN_TABLE && attr_str(d) == table);
    if !of_table {
        return None;
    }
    a.iter()
        .find(|(t, _)| *t == NFTA_CHAIN_NAME)
        .map(|(_, name)| attr_str(name))
}

/// The packets counted by the `counter` expressions of one rule a GETRULE
/// dump answered with (0 for a rule without one).
fn counted_packets(r: &Reply<'_>) -> u64 {
    if r.ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
        return 0;
    }
    let mut total = 0u64;
    for (t, exprs) in nf_attrs(r.payload) {
        if t != NFTA_RULE_EXPRESSIONS {
            continue;
        }
        for (_, e) in attrs(exprs) {
            let e = attrs(e);
            let is_counter = e
                .iter()
                .any(|(t, d)| *t == NFTA_EXPR_NAME && attr_str(d) == "counter");
            let data = e.iter().find(|(t, _)| *t == NFTA_EXPR_DATA);
            let (true, Some((_, data))) = (is_counter, data) else {
                continue;
            };
            let packets = attrs(data)
                .into_iter()
                .find(|(t, _)| *t == NFTA_COUNTER_PACKETS)
                .and_then(|(_, d)| <[u8; 8]>::try_from(d).ok())
                .map_or(0, u64::from_be_bytes);
            total = total.saturating_add(packets);
        }
    }
    total
}

/// A `NETLINK_NETFILTER` socket bound to one network namespace.
#[derive(Debug)]
pub struct Socket(super::netlink::Socket);

impl Socket {
    /// Opens a socket inside the network namespace at `ns`, with the id of
    /// the namespace it is in.
    pub fn open_in(ns: &Path) -> Result<Result<(Socket, NsId), NetlinkError>, NetnsError> {
        Ok(
            super::netlink::Socket::open_in(ns, Some(netlink::NETFILTER), FAMILY)?
                .map(|(s, id)| (Socket(s), id)),
        )
    }

    /// Sends one transaction and waits for its outcome: Ok once every
    /// message is acked (committed), else the first refusal.
    pub(crate) fn transact(&mut self, mut batch: Encoded) -> Result<(), NetlinkError> {
        let first = self.0.take_seqs(batch.msgs.len());
        let (begin, pending) = batch.number(first);
        let n = pending.len();
        if n == 0 {
            return Ok(());
        }
        let bytes = batch.bytes();
        // The batch must fit the send buffer in one datagram, and every ack
        // the receive buffer.
        self.0.make_room(bytes.len(), n);
        self.0.send(bytes)?;
        let mut acks = Acks { begin, pending };
        let mut buf = super::netlink::Socket::recv_buf();
        loop {
            let dgram = self.0.recv(&mut buf)?;
            for r in replies(FAMILY, dgram)? {
                if acks.feed(&r)? {
                    return Ok(());
                }
            }
        }
    }

    /// The names of `table`'s chains (none when the table does not exist).
    pub(crate) fn chains(&mut self, family: u8, table: &str) -> Result<Vec<String>, NetlinkError> {
        // The kernel dumps every chain of the family; ours are picked out.
        let mut w = Writer::default();
        let start = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
            NLM_F_REQUEST | NLM_F_DUMP,
            &nfgenmsg(family, 0),
        );
        w.end_msg(start);
        self.0.dump("list chains", &w.buf, Vec::new, |chains, r| {
            chains.extend(chain_of(table, r));
        })
    }

    /// The packets the rules of `table`'s `chain` have counted; an error
    /// when the chain does not exist (ENOENT).
    pub(crate) fn counted(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
    ) -> Result<u64, NetlinkError> {
        let mut w = Writer::default();
        let start = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            &nfgenmsg(family, 0),
        );
        // The kernel dumps only this chain's rules when both are named.
        w.str(NFTA_RULE_TABLE, table);
        w.str(NFTA_RULE_CHAIN, chain);
        w.end_msg(start);
        self.0.dump(
            &format!("list rules of chain {table} {chain}"),
            &w.buf,
            || 0u64,
            |n, r| {
                *n = n.saturating_add(counted_packets(r));
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::netlink::{
        NLA_F_NESTED, NLMSG_HDRLEN, ne_u16, ne_u32,
        tests::{done_msg, error_msg, msg_at, nest},
    };

    fn hdr(b: &[u8]) -> (u32, u16, u16, u32) {
        (
            ne_u32(b, 0).expect("len"),
            ne_u16(b, 4).expect("type"),
            ne_u16(b, 6).expect("flags"),
            ne_u32(b, 8).expect("seq"),
        )
    }

    #[test]
    fn table_batch_bytes() {
        let mut b = Batch::new(NFPROTO_INET);
        b.add_table("faultline");
        let mut e = b.finish().expect("encodes");
        let (begin, acks) = e.number(7);
        assert_eq!(begin, 7);
        assert_eq!(acks.keys().copied().collect::<Vec<_>>(), [8]);
        let bytes = e.bytes();
        // Batch begin: header, nfgenmsg (AF_UNSPEC, v0, res_id 10 big-endian).
        let mut want = Vec::new();
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&0x10u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 10]);
        // NEWTABLE: type 10<<8|0, REQUEST|ACK|CREATE, inet, name "faultline\0" padded to 12.
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&0x0a00u16.to_ne_bytes());
        want.extend_from_slice(&0x0405u16.to_ne_bytes());
        want.extend_from_slice(&8u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&14u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"faultline\0\0\0");
        // Batch end.
        want.extend_from_slice(&20u32.to_ne_bytes());
        want.extend_from_slice(&0x11u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 10]);
        assert_eq!(bytes, want.as_slice());
    }

    #[test]
    fn base_chain_nests_the_hook_in_network_order() {
        let mut b = Batch::new(NFPROTO_INET);
        b.add_base_chain("t", "c", Hook::Output, -10);
        let e = b.finish().expect("encodes");
        let m = msg_at(e.bytes(), 1);
        let (len, ty, flags, _) = hdr(m);
        assert_eq!(len as usize, m.len());
        assert_eq!(ty, 0x0a03);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        let a = nf_attrs(&m[NLMSG_HDRLEN..]);
        let types: Vec<u16> = a.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                NFTA_CHAIN_TABLE,
                NFTA_CHAIN_NAME,
                NFTA_CHAIN_HOOK,
                NFTA_CHAIN_POLICY,
                NFTA_CHAIN_TYPE
            ]
        );
        assert_eq!(a[0].1, b"t\0");
        // The nest flag is on the wire (attrs() masks it off).
        let hook_at = NLMSG_HDRLEN + 4 + 8 + 8;
        assert_eq!(ne_u16(m, hook_at + 2), Some(NFTA_CHAIN_HOOK | NLA_F_NESTED));
        let hook = nest(a[2].1);
        assert_eq!(
            hook,
            [
                (NFTA_HOOK_HOOKNUM, vec![0, 0, 0, 3]),
                (NFTA_HOOK_PRIORITY, vec![0xff, 0xff, 0xff, 0xf6]),
            ]
        );
        assert_eq!(a[3].1, [0, 0, 0, 1]);
        assert_eq!(a[4].1, b"filter\0");
    }

    #[test]
    fn rule_with_expressions_and_comment() {
        let mut b = Batch::new(NFPROTO_INET);
        let set = b.anon_set("t", TYPE_INET_SERVICE, 2, &[vec![0, 80], vec![1, 187]]);
        assert_eq!(set, 1);
        b.add_rule(
            "t",
            "c",
            &[
                Expr::Meta {
                    key: NFT_META_NFPROTO,
                },
                Expr::CmpEq(vec![NFPROTO_IPV4]),
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 12,
                    len: 4,
                },
                Expr::Mask(vec![255, 255, 255, 0]),
                Expr::CmpEq(vec![10, 0, 0, 0]),
                Expr::Lookup { set_id: set },
                Expr::Drop,
            ],
            "faultline x",
        );
        let e = b.finish().expect("encodes");
        let ops: Vec<&str> = e.ops().map(|o| o.what.as_str()).collect();
        assert_eq!(
            ops,
            [
                "add anonymous set to table t",
                "add elements to an anonymous set of table t",
                "add rule to chain t c"
            ]
        );
        let set_msg = msg_at(e.bytes(), 1);
        let a = nf_attrs(&set_msg[NLMSG_HDRLEN..]);
        assert_eq!(a[1].1, b"__set%d\0");
        assert_eq!(a[2].1, [0, 0, 0, 3], "anonymous | constant");
        assert_eq!(a[3].1, [0, 0, 0, 13]);
        assert_eq!(a[4].1, [0, 0, 0, 2]);
        assert_eq!(a[5].1, [0, 0, 0, 1], "set id");
        let elems = msg_at(e.bytes(), 2);
        let a = nf_attrs(&elems[NLMSG_HDRLEN..]);
        assert_eq!(a[2].1, [0, 0, 0, 1], "elements find the set by id");
        // Two elements: LIST_ELEM { KEY { VALUE 2 bytes padded } } = 16 bytes each.
        assert_eq!(a[3].1.len(), 32);
        assert_eq!(&a[3].1[12..14], &[0, 80]);

        let rule = msg_at(e.bytes(), 3);
        let (_, ty, flags, _) = hdr(rule);
        assert_eq!(ty, 0x0a06);
        assert_eq!(
            flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND
        );
        let a = nf_attrs(&rule[NLMSG_HDRLEN..]);
        assert_eq!(a[2].0, NFTA_RULE_EXPRESSIONS);
        let list = nest(a[2].1);
        assert_eq!(list.len(), 7);
        let names: Vec<String> = list.iter().map(|(_, d)| attr_str(&nest(d)[0].1)).collect();
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "lookup",
                "immediate"
            ]
        );
        // The verdict: DREG 0, DATA { VERDICT { CODE be32 0 } }.
        let imm = nest(&nest(&list[6].1)[1].1);
        assert_eq!(imm[0], (NFTA_IMMEDIATE_DREG, vec![0, 0, 0, 0]));
        let verdict = nest(&nest(&imm[1].1)[0].1);
        assert_eq!(verdict, [(NFTA_VERDICT_CODE, vec![0, 0, 0, 0])]);
        // The mask and a zero xor, each in a data nest.
        let bitwise = nest(&nest(&list[3].1)[1].1);
        assert_eq!(bitwise[2], (NFTA_BITWISE_LEN, vec![0, 0, 0, 4]));
        assert_eq!(
            nest(&bitwise[3].1),
            [(NFTA_DATA_VALUE, vec![255, 255, 255, 0])]
        );
        assert_eq!(nest(&bitwise[4].1), [(NFTA_DATA_VALUE, vec![0, 0, 0, 0])]);
        // nft's comment TLV.
        assert_eq!(a[3].0, NFTA_RULE_USERDATA);
        assert_eq!(a[3].1, b"\x00\x0cfaultline x\0");
    }

    #[test]
    fn comments_are_cut_to_nfts_limit() {
        let ud = comment_udata(&"é".repeat(100)).expect("udata");
        assert!(ud.len() - 2 <= COMMENT_MAX);
        assert_eq!(usize::from(ud[1]), ud.len() - 2);
        assert_eq!(ud.last(), Some(&0));
        assert!(std::str::from_utf8(&ud[2..ud.len() - 1]).is_ok());
        assert_eq!(comment_udata(""), None);
        assert_eq!(comment_udata("a\0b").expect("udata"), b"\x00\x03ab\0");
    }

    #[test]
    fn oversized_attributes_are_an_error() {
        let mut b = Batch::new(NFPROTO_INET);
        let keys = vec![vec![0u8; 2]; 5000];
        b.anon_set("t", TYPE_INET_SERVICE, 2, &keys);
        assert!(matches!(b.finish(), Err(NetlinkError::TooLarge { .. })));
    }

    fn acks_for(e: &mut Encoded) -> Acks {
        let (begin, pending) = e.number(100);
        Acks { begin, pending }
    }

    #[test]
    fn acks_complete_or_name_the_first_refusal() {
        let mut b = Batch::new(NFPROTO_INET);
        b.add_table("t");
        b.del_chain("t", "c");
        let mut e = b.finish().expect("encodes");
        let mut acks = acks_for(&mut e);
        let d = [error_msg(101, 0), error_msg(102, 0)].concat();
        let r = replies(FAMILY, &d).expect("parses");
        assert!(!acks.feed(&r[0]).expect("ack"));
        assert!(acks.feed(&r[1]).expect("ack"), "all acked");

        let mut acks = acks_for(&mut e);
        let d = [error_msg(101, 0), error_msg(102, 2)].concat();
        let r = replies(FAMILY, &d).expect("parses");
        assert!(!acks.feed(&r[0]).expect("ack"));
        let err = acks.feed(&r[1]).expect_err("refused");
        assert!(err.is_absent_on_delete(), "{err}");
        assert!(
            err.to_string()
                .starts_with("nftables: delete chain t c failed: No such file or directory"),
            "{err}"
        );

        // A failed commit is reported on the batch begin.
        let mut acks = acks_for(&mut e);
        let d = error_msg(100, 1);
        let err = acks
            .feed(&replies(FAMILY, &d).expect("parses")[0])
            .expect_err("refused");
        assert!(err.to_string().contains("commit failed"), "{err}");
        assert!(!err.is_absent_on_delete());
        // Strangers' messages are ignored.
        let mut acks = acks_for(&mut e);
        assert!(
            !acks
                .feed(&replies(FAMILY, &error_msg(5, 1)).expect("parses")[0])
                .expect("ignored")
        );
    }

    fn chain_msg(seq: u32, table: &str, name: &str) -> Vec<u8> {
        let mut w = Writer::default();
        let start = w.begin_msg(0x0a03, 0x02, &nfgenmsg(NFPROTO_INET, 0));
        w.str(NFTA_CHAIN_TABLE, table);
        w.str(NFTA_CHAIN_NAME, name);
        w.end_msg(start);
        set_seq(&mut w.buf, start, seq);
        w.buf
    }

    fn rule_msg(seq: u32, exprs: &[(&str, Option<u64>)]) -> Vec<u8> {
        let mut w = Writer::default();
        let start = w.begin_msg(0x0a06, 0x02, &nfgenmsg(NFPROTO_INET, 0));
        w.str(NFTA_RULE_TABLE, "faultline");
        w.nest(NFTA_RULE_EXPRESSIONS, |w| {
            for (name, packets) in exprs {
                w.nest(NFTA_LIST_ELEM, |w| {
                    w.str(NFTA_EXPR_NAME, name);
                    w.nest(NFTA_EXPR_DATA, |w| {
                        if let Some(p) = packets {
                            w.attr(NFTA_COUNTER_BYTES, &(p * 60).to_be_bytes());
                            w.attr(NFTA_COUNTER_PACKETS, &p.to_be_bytes());
                        } else {
                            w.be32(NFTA_META_KEY, 15);
                        }
                    });
                });
            }
        });
        w.end_msg(start);
        set_seq(&mut w.buf, start, seq);
        w.buf
    }

    #[test]
    fn rule_dump_sums_counters() {
        let d = [
            rule_msg(
                4,
                &[("meta", None), ("counter", Some(7)), ("immediate", None)],
            ),
            rule_msg(4, &[("counter", Some(5)), ("counter", Some(1))]),
            // No counter, or a counter without data: nothing counted.
            rule_msg(4, &[("meta", None)]),
            chain_msg(4, "faultline", "fa-in"),
        ]
        .concat();
        let r = replies(FAMILY, &d).expect("parses");
        let n: Vec<u64> = r.iter().map(counted_packets).collect();
        assert_eq!(n, [7, 6, 0, 0]);
        // The counter is encoded zeroed, right where the rule puts it.
        let mut w = Writer::default();
        expr(&mut w, &Expr::Counter);
        let a = attrs(&w.buf);
        assert_eq!(attr_str(a[0].1), "counter");
        let data = attrs(a[1].1);
        assert_eq!(
            data.iter().map(|(t, d)| (*t, d.len())).collect::<Vec<_>>(),
            [(NFTA_COUNTER_BYTES, 8), (NFTA_COUNTER_PACKETS, 8)]
        );
    }

    #[test]
    fn chain_dump_keeps_our_table_only() {
        let d = [
            chain_msg(9, "faultline", "fa-in"),
            chain_msg(9, "theirs", "c"),
            chain_msg(9, "faultline", "fb-out"),
            done_msg(9, 0),
        ]
        .concat();
        let r = replies(FAMILY, &d).expect("parses");
        let chains: Vec<Option<String>> = r.iter().map(|m| chain_of("faultline", m)).collect();
        assert_eq!(
            chains,
            [Some("fa-in".into()), None, Some("fb-out".into()), None]
        );
    }
}
