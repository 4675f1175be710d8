//! A minimal nf_tables client over netlink: just what partition faults need.
//!
//! - [`Batch`] is a pure encoder: one transaction (batch begin, messages,
//!   batch end) as the bytes the kernel reads, unit-tested on those bytes.
//! - [`Socket`] is a `NETLINK_NETFILTER` socket opened inside a network
//!   namespace (a socket stays bound to the namespace it was created in, so
//!   only its creation needs the `setns` thread). It sends a batch in one
//!   `sendto`, with `NLM_F_ACK` on every message, and reads acks until each
//!   message has one or the first error arrives; a receive timeout bounds
//!   every wait. It also lists a table's chains with a `GETCHAIN` dump.
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

use std::{collections::BTreeMap, io, os::fd::OwnedFd, path::Path, time::Duration};

use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, sendto,
    socket_with, sockopt,
};

use crate::netns::{self, NetnsError, NsId};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
const NLA_HDRLEN: usize = 4;

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
/// How long any answer from the kernel may take.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Large enough for any datagram the kernel sends (dumps use at most 32 KiB).
const RECV_BUF: usize = 128 * 1024;

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
    /// Verdict drop.
    Drop,
}

/// What one message of a batch does, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub what: String,
    /// A delete, whose ENOENT a removal may treat as done.
    pub delete: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("nftables message too large: {0}")]
    TooLarge(String),
}

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("nftables netlink {what}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The kernel refused an operation (the whole transaction is undone).
    #[error("nftables: {} failed: {}", op.what, errno_text(*errno))]
    Kernel { op: Op, errno: i32 },
    #[error("nftables netlink: {0}")]
    Protocol(String),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl NfnlError {
    /// ENOENT from a delete: what was to be deleted is not there.
    pub(crate) fn is_absent_on_delete(&self) -> bool {
        matches!(self, NfnlError::Kernel { op, errno } if op.delete && *errno == ENOENT)
    }
}

// asm-generic/errno-base.h
const ENOENT: i32 = 2;

/// The C library's text for an errno, without std's " (os error N)".
fn errno_text(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Writes netlink messages and attributes (host order for netlink headers,
/// network order for nf_tables values, 4-byte alignment throughout).
#[derive(Debug, Default)]
struct Writer {
    buf: Vec<u8>,
    /// Set when an attribute outgrew its 16-bit length.
    too_large: Option<String>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Writer {
    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Starts a message: nlmsghdr (length filled in by `end_msg`, seq by
    /// the socket) and nfgenmsg.
    fn begin_msg(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        let Ok(len16) = u16::try_from(len) else {
            self.too_large = Some(format!("attribute {ty} of {len} bytes"));
            return;
        };
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING attributes want.
    fn str(&mut self, ty: u16, s: &str) {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        self.attr(ty, &b);
    }

    fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = self.buf.len() - start;
        match u16::try_from(len) {
            Ok(l) => self.buf[start..start + 2].copy_from_slice(&l.to_ne_bytes()),
            Err(_) => self.too_large = Some(format!("nested attribute {ty} of {len} bytes")),
        }
    }

    /// Network-order data in an `nft_data_attributes` nest.
    fn data_value(&mut self, ty: u16, value: &[u8]) {
        self.nest(ty, |w| w.attr(NFTA_DATA_VALUE, value));
    }
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
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        b.w.end_msg(start);
        b.msgs.push((start, None));
        b
    }

    fn msg(&mut self, ty: u16, flags: u16, op: Op, body: impl FnOnce(&mut Writer)) {
        let start = self.w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.family,
            0,
        );
        body(&mut self.w);
        self.w.end_msg(start);
        self.msgs.push((start, Some(op)));
    }

    fn op(what: String) -> Op {
        Op {
            what,
            delete: false,
        }
    }

    fn del(what: String) -> Op {
        Op { what, delete: true }
    }

    /// `add table`: created if missing, left as it is otherwise.
    pub(crate) fn add_table(&mut self, table: &str) {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            Self::op(format!("add table {table}")),
            |w| w.str(NFTA_TABLE_NAME, table),
        );
    }

    pub(crate) fn del_table(&mut self, table: &str) {
        self.msg(
            NFT_MSG_DELTABLE,
            0,
            Self::del(format!("delete table {table}")),
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
            Self::op(format!("add chain {table} {chain}")),
            |w| {
                w.str(NFTA_CHAIN_TABLE, table);
                w.str(NFTA_CHAIN_NAME, chain);
                w.nest(NFTA_CHAIN_HOOK, |w| {
                    w.u32(NFTA_HOOK_HOOKNUM, hooknum);
                    // Two's complement, big-endian: the kernel reads it as a be32 s32.
                    w.u32(NFTA_HOOK_PRIORITY, priority as u32);
                });
                w.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                w.str(NFTA_CHAIN_TYPE, "filter");
            },
        );
    }

    /// `flush chain`: DELRULE naming only the table and chain deletes all its rules.
    pub(crate) fn flush_chain(&mut self, table: &str, chain: &str) {
        self.msg(
            NFT_MSG_DELRULE,
            0,
            Self::del(format!("flush chain {table} {chain}")),
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
            Self::del(format!("delete chain {table} {chain}")),
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
            Self::op(format!("add anonymous set to table {table}")),
            |w| {
                w.str(NFTA_SET_TABLE, table);
                w.str(NFTA_SET_NAME, ANON_SET_NAME);
                w.u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
                w.u32(NFTA_SET_KEY_TYPE, key_type);
                w.u32(NFTA_SET_KEY_LEN, key_len);
                w.u32(NFTA_SET_ID, id);
                w.nest(NFTA_SET_DESC, |w| w.u32(NFTA_SET_DESC_SIZE, size));
                // nft's TLV: the key's byte order, as a host-order u32.
                let mut ud = vec![NFTNL_UDATA_SET_KEYBYTEORDER, 4];
                ud.extend_from_slice(&BYTEORDER_BIG_ENDIAN.to_ne_bytes());
                w.attr(NFTA_SET_USERDATA, &ud);
            },
        );
        self.msg(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            Self::op(format!("add elements to an anonymous set of table {table}")),
            |w| {
                w.str(NFTA_SET_ELEM_LIST_TABLE, table);
                w.str(NFTA_SET_ELEM_LIST_SET, ANON_SET_NAME);
                w.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
                w.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                    for k in keys {
                        w.nest(NFTA_LIST_ELEM, |w| w.data_value(NFTA_SET_ELEM_KEY, k));
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
            Self::op(format!("add rule to chain {table} {chain}")),
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
    pub(crate) fn finish(mut self) -> Result<Encoded, EncodeError> {
        let start = self.w.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.w.end_msg(start);
        self.msgs.push((start, None));
        if let Some(what) = self.w.too_large {
            return Err(EncodeError::TooLarge(what));
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
        Expr::Drop => "immediate",
    };
    w.str(NFTA_EXPR_NAME, name);
    w.nest(NFTA_EXPR_DATA, |w| match e {
        Expr::Meta { key } => {
            w.u32(NFTA_META_KEY, *key);
            w.u32(NFTA_META_DREG, NFT_REG_1);
        }
        Expr::Payload { base, offset, len } => {
            w.u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.u32(NFTA_PAYLOAD_BASE, *base);
            w.u32(NFTA_PAYLOAD_OFFSET, *offset);
            w.u32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Mask(mask) => {
            w.u32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.u32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.u32(NFTA_BITWISE_LEN, u32::try_from(mask.len()).unwrap_or(0));
            w.data_value(NFTA_BITWISE_MASK, mask);
            w.data_value(NFTA_BITWISE_XOR, &vec![0; mask.len()]);
        }
        Expr::CmpEq(data) => {
            w.u32(NFTA_CMP_SREG, NFT_REG_1);
            w.u32(NFTA_CMP_OP, NFT_CMP_EQ);
            w.data_value(NFTA_CMP_DATA, data);
        }
        Expr::Lookup { set_id } => {
            w.str(NFTA_LOOKUP_SET, ANON_SET_NAME);
            w.u32(NFTA_LOOKUP_SET_ID, *set_id);
            w.u32(NFTA_LOOKUP_SREG, NFT_REG_1);
        }
        Expr::Drop => {
            w.u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            w.nest(NFTA_IMMEDIATE_DATA, |w| {
                w.nest(NFTA_DATA_VERDICT, |w| w.u32(NFTA_VERDICT_CODE, NF_DROP));
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
            self.bytes[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
            if let Some(op) = op {
                acks.insert(seq, op.clone());
            }
            seq = seq.wrapping_add(1);
        }
        (first, acks)
    }
}

/// One message of a datagram from the kernel.
#[derive(Debug, Clone, Copy)]
struct Reply<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    /// After the nlmsghdr.
    payload: &'a [u8],
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into messages; a malformed one is an error, not a panic.
fn replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, NfnlError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let bad = || NfnlError::Protocol("malformed message from the kernel".into());
        let len = ne_u32(buf, 0).ok_or_else(bad)? as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad());
        }
        out.push(Reply {
            ty: ne_u16(buf, 4).ok_or_else(bad)?,
            flags: ne_u16(buf, 6).ok_or_else(bad)?,
            seq: ne_u32(buf, 8).ok_or_else(bad)?,
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = buf.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR (0 for an ack), positive.
fn error_code(r: &Reply<'_>) -> Result<i32, NfnlError> {
    let raw = r
        .payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| NfnlError::Protocol("truncated error message".into()))?;
    Ok(raw.checked_neg().unwrap_or(i32::MAX))
}

/// The attributes after a reply's nfgenmsg: (type without flags, data).
fn attrs(payload: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut b = payload.get(4..).unwrap_or(&[]);
    while b.len() >= NLA_HDRLEN {
        let (Some(len), Some(ty)) = (ne_u16(b, 0), ne_u16(b, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || len > b.len() {
            break;
        }
        out.push((ty & NLA_TYPE_MASK, &b[NLA_HDRLEN..len]));
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    out
}

fn attr_str(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
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
    fn feed(&mut self, r: &Reply<'_>) -> Result<bool, NfnlError> {
        if r.ty == NLMSG_ERROR {
            let errno = error_code(r)?;
            if let Some(op) = self.pending.remove(&r.seq) {
                if errno != 0 {
                    return Err(NfnlError::Kernel { op, errno });
                }
            } else if r.seq == self.begin && errno != 0 {
                // The commit itself failed, or the kernel refused the batch as a whole.
                return Err(NfnlError::Kernel {
                    op: Op {
                        what: "commit".into(),
                        delete: false,
                    },
                    errno,
                });
            }
        }
        // Anything else (another batch's late acks, notifications) is not ours.
        Ok(self.pending.is_empty())
    }
}

/// Chain names of `table` from a GETCHAIN dump, as they arrive.
#[derive(Debug, Default)]
struct ChainDump {
    chains: Vec<String>,
    interrupted: bool,
}

impl ChainDump {
    /// Ok(true) at the end of the dump.
    fn feed(&mut self, seq: u32, table: &str, r: &Reply<'_>) -> Result<bool, NfnlError> {
        if r.seq != seq {
            return Ok(false);
        }
        if r.flags & NLM_F_DUMP_INTR != 0 {
            self.interrupted = true;
        }
        match r.ty {
            NLMSG_DONE => Ok(true),
            NLMSG_ERROR => match error_code(r)? {
                0 => Ok(false),
                errno => Err(NfnlError::Kernel {
                    op: Op {
                        what: "list chains".into(),
                        delete: false,
                    },
                    errno,
                }),
            },
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN => {
                let a = attrs(r.payload);
                let of_table = a
                    .iter()
                    .any(|(t, d)| *t == NFTA_CHAIN_TABLE && attr_str(d) == table);
                if of_table && let Some((_, name)) = a.iter().find(|(t, _)| *t == NFTA_CHAIN_NAME) {
                    self.chains.push(attr_str(name));
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}

/// A `NETLINK_NETFILTER` socket bound to one network namespace.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

fn io_err(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> NfnlError {
    move |e| NfnlError::Io {
        what,
        source: e.into(),
    }
}

impl Socket {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> Result<Socket, NfnlError> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::NETFILTER),
        )
        .map_err(io_err("socket"))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(RECV_TIMEOUT))
            .map_err(io_err("receive timeout"))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(RECV_TIMEOUT))
            .map_err(io_err("send timeout"))?;
        // Distinct from any earlier socket's numbers, as nft does, though
        // replies only ever reach the socket that asked.
        let seq = jiff::Timestamp::now().as_second() as u32;
        Ok(Socket { fd, seq })
    }

    /// Opens a socket inside the network namespace at `ns` (from a thread
    /// that enters it and exits; the socket keeps the namespace), with the
    /// id of the namespace it is in.
    pub fn open_in(ns: &Path) -> Result<Result<(Socket, NsId), NfnlError>, NetnsError> {
        netns::within(ns, |file| {
            use std::os::unix::fs::MetadataExt;
            let id = file
                .metadata()
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| NfnlError::Io {
                    what: "namespace file",
                    source,
                })?;
            Ok((Socket::open()?, id))
        })
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NfnlError> {
        let kernel = netlink::SocketAddrNetlink::new(0, 0);
        let sent = sendto(&self.fd, bytes, SendFlags::empty(), &kernel).map_err(io_err("send"))?;
        if sent != bytes.len() {
            return Err(NfnlError::Protocol(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`; a timeout is an error.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], NfnlError> {
        loop {
            match recv(&self.fd, &mut *buf, RecvFlags::TRUNC) {
                Ok((_, full)) if full > buf.len() => {
                    return Err(NfnlError::Protocol(format!(
                        "a {full}-byte answer did not fit the receive buffer"
                    )));
                }
                Ok((n, _)) => return Ok(&buf[..n]),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(NfnlError::Protocol(format!(
                        "no answer from the kernel within {} s",
                        RECV_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(io_err("receive")(e)),
            }
        }
    }

    /// Sends one transaction and waits for its outcome: Ok once every
    /// message is acked (committed), else the first refusal.
    pub(crate) fn transact(&mut self, mut batch: Encoded) -> Result<(), NfnlError> {
        let (begin, pending) = batch.number(self.seq);
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(batch.msgs.len()).unwrap_or(0));
        let n = pending.len();
        if n == 0 {
            return Ok(());
        }
        let bytes = batch.bytes();
        // The batch must fit the send buffer in one datagram, and every
        // ack the receive buffer (each costs ~1 KiB there): past the
        // defaults, ask for more (CAP_NET_ADMIN may exceed the sysctl caps).
        if bytes.len() > 128 * 1024 {
            let want = bytes.len() + 4096;
            if sockopt::set_socket_send_buffer_size_force(&self.fd, want).is_err() {
                let _ = sockopt::set_socket_send_buffer_size(&self.fd, want);
            }
        }
        if n > 64 {
            let want = n * 2048;
            if sockopt::set_socket_recv_buffer_size_force(&self.fd, want).is_err() {
                let _ = sockopt::set_socket_recv_buffer_size(&self.fd, want);
            }
        }
        self.send(bytes)?;
        let mut acks = Acks { begin, pending };
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let dgram = self.recv(&mut buf)?;
            for r in replies(dgram)? {
                if acks.feed(&r)? {
                    return Ok(());
                }
            }
        }
    }

    /// The names of `table`'s chains (none when the table does not exist).
    pub(crate) fn chains(&mut self, family: u8, table: &str) -> Result<Vec<String>, NfnlError> {
        // A dump interrupted by a concurrent change is repeated.
        for _ in 0..3 {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let mut w = Writer::default();
            // The kernel dumps every chain of the family; ours are picked out.
            let start = w.begin_msg(
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
                0,
            );
            w.end_msg(start);
            w.buf[start + 8..start + 12].copy_from_slice(&seq.to_ne_bytes());
            self.send(&w.buf)?;
            let mut dump = ChainDump::default();
            let mut buf = vec![0u8; RECV_BUF];
            'dump: loop {
                let dgram = self.recv(&mut buf)?;
                for r in replies(dgram)? {
                    if dump.feed(seq, table, &r)? {
                        break 'dump;
                    }
                }
            }
            if !dump.interrupted {
                return Ok(dump.chains);
            }
        }
        Err(NfnlError::Protocol(
            "the chain listing kept changing under concurrent updates".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(b: &[u8]) -> (u32, u16, u16, u32) {
        (
            ne_u32(b, 0).expect("len"),
            ne_u16(b, 4).expect("type"),
            ne_u16(b, 6).expect("flags"),
            ne_u32(b, 8).expect("seq"),
        )
    }

    /// The attributes inside a nested attribute's data.
    fn nest(data: &[u8]) -> Vec<(u16, Vec<u8>)> {
        attrs(&[&[0u8; 4][..], data].concat())
            .into_iter()
            .map(|(t, d)| (t, d.to_vec()))
            .collect()
    }

    fn msg_at(bytes: &[u8], n: usize) -> &[u8] {
        let mut at = 0;
        for _ in 0..n {
            at += align4(ne_u32(bytes, at).expect("len") as usize);
        }
        let len = ne_u32(bytes, at).expect("len") as usize;
        &bytes[at..at + len]
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
        let a = attrs(&m[NLMSG_HDRLEN..]);
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
        let a = attrs(&set_msg[NLMSG_HDRLEN..]);
        assert_eq!(a[1].1, b"__set%d\0");
        assert_eq!(a[2].1, [0, 0, 0, 3], "anonymous | constant");
        assert_eq!(a[3].1, [0, 0, 0, 13]);
        assert_eq!(a[4].1, [0, 0, 0, 2]);
        assert_eq!(a[5].1, [0, 0, 0, 1], "set id");
        let elems = msg_at(e.bytes(), 2);
        let a = attrs(&elems[NLMSG_HDRLEN..]);
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
        let a = attrs(&rule[NLMSG_HDRLEN..]);
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
        assert!(matches!(b.finish(), Err(EncodeError::TooLarge(_))));
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // the original header
        m
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
        let r = replies(&d).expect("parses");
        assert!(!acks.feed(&r[0]).expect("ack"));
        assert!(acks.feed(&r[1]).expect("ack"), "all acked");

        let mut acks = acks_for(&mut e);
        let d = [error_msg(101, 0), error_msg(102, 2)].concat();
        let r = replies(&d).expect("parses");
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
            .feed(&replies(&d).expect("parses")[0])
            .expect_err("refused");
        assert!(err.to_string().contains("commit failed"), "{err}");
        assert!(!err.is_absent_on_delete());
        // Strangers' messages are ignored.
        let mut acks = acks_for(&mut e);
        assert!(
            !acks
                .feed(&replies(&error_msg(5, 1)).expect("parses")[0])
                .expect("ignored")
        );
    }

    #[test]
    fn malformed_replies_do_not_panic() {
        assert!(replies(&[0u8; 3]).expect("short tail").is_empty());
        let mut m = error_msg(1, 0);
        m[0] = 200; // longer than the datagram
        assert!(replies(&m).is_err());
        let mut m = error_msg(1, 0);
        m[..4].copy_from_slice(&16u32.to_ne_bytes()); // an error without its code
        let r = replies(&m[..16]).expect("parses");
        assert!(error_code(&r[0]).is_err());
        assert!(attrs(&[1, 2, 3, 4, 0xff, 0xff]).is_empty());
    }

    fn chain_msg(seq: u32, table: &str, name: &str) -> Vec<u8> {
        let mut w = Writer::default();
        let start = w.begin_msg(0x0a03, 0x02, NFPROTO_INET, 0);
        w.str(NFTA_CHAIN_TABLE, table);
        w.str(NFTA_CHAIN_NAME, name);
        w.end_msg(start);
        w.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        w.buf
    }

    #[test]
    fn chain_dump_keeps_our_table_only() {
        let mut done = Vec::new();
        done.extend_from_slice(&20u32.to_ne_bytes());
        done.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        done.extend_from_slice(&0x02u16.to_ne_bytes());
        done.extend_from_slice(&9u32.to_ne_bytes());
        done.extend_from_slice(&[0; 8]);
        let d = [
            chain_msg(9, "faultline", "fa-in"),
            chain_msg(9, "theirs", "c"),
            chain_msg(8, "faultline", "stale"),
            chain_msg(9, "faultline", "fb-out"),
            done,
        ]
        .concat();
        let mut dump = ChainDump::default();
        let r = replies(&d).expect("parses");
        let ends: Vec<bool> = r
            .iter()
            .map(|m| dump.feed(9, "faultline", m).expect("fine"))
            .collect();
        assert_eq!(ends, [false, false, false, false, true]);
        assert_eq!(dump.chains, ["fa-in", "fb-out"]);
        assert!(!dump.interrupted);
        let err = ChainDump::default()
            .feed(
                9,
                "faultline",
                &replies(&error_msg(9, 1)).expect("parses")[0],
            )
            .expect_err("refused");
        assert!(err.to_string().contains("list chains failed"), "{err}");
    }
}
