//! Netlink plumbing shared by the agent's two kernel clients, nf_tables
//! ([`super::nfnl`]) and traffic control ([`super::rtnl`]):
//!
//! - [`Writer`] encodes messages and attributes (4-byte aligned, lengths
//!   filled in when a message or nest ends);
//! - [`replies`], [`attrs`] and [`error_code`] read what the kernel sends,
//!   refusing malformed input rather than panicking;
//! - [`Socket`] is a netlink socket opened inside a network namespace (a
//!   socket stays bound to the namespace it was created in, so only its
//!   creation needs the `setns` thread), with bounded waits and dumps that
//!   are repeated when a concurrent change interrupts them.
//!
//! Numeric values are copied from the kernel's uapi headers, named as there.

use std::{io, os::fd::OwnedFd, path::Path, time::Duration};

use rustix::net::{
    AddressFamily, Protocol, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, recv, sendto,
    socket_with, sockopt,
};

use crate::netns::{self, NetnsError, NsId};

// linux/netlink.h
pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLM_F_REQUEST: u16 = 0x01;
pub(crate) const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLMSG_ERROR: u16 = 0x2;
pub(crate) const NLMSG_DONE: u16 = 0x3;
pub(crate) const NLA_F_NESTED: u16 = 1 << 15;
const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
pub(crate) const NLA_HDRLEN: usize = 4;
// asm-generic/errno-base.h
pub(crate) const ENOENT: i32 = 2;

/// Large enough for any datagram the kernel sends (dumps use at most 32 KiB).
const RECV_BUF: usize = 128 * 1024;
/// The longest the agent waits for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// What one message does, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub what: String,
    /// A delete, whose ENOENT a removal may treat as done.
    pub delete: bool,
}

impl Op {
    pub(crate) fn change(what: String) -> Op {
        Op {
            what,
            delete: false,
        }
    }

    pub(crate) fn delete(what: String) -> Op {
        Op { what, delete: true }
    }
}

/// A netlink failure; `family` names the kernel subsystem spoken to
/// ("nftables", "rtnetlink").
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{family} socket: {what}")]
    Io {
        family: &'static str,
        what: &'static str,
        source: io::Error,
    },
    /// The kernel refused an operation.
    #[error("{family}: {} failed: {}", op.what, errno_text(*errno))]
    Kernel {
        family: &'static str,
        op: Op,
        errno: i32,
    },
    #[error("{family}: {message}")]
    Protocol {
        family: &'static str,
        message: String,
    },
    #[error("{family} message too large: {what}")]
    TooLarge { family: &'static str, what: String },
}

impl NetlinkError {
    /// ENOENT from a delete: what was to be deleted is not there.
    pub(crate) fn is_absent_on_delete(&self) -> bool {
        matches!(self, NetlinkError::Kernel { op, errno, .. } if op.delete && *errno == ENOENT)
    }
}

/// The C library's text for an errno, without std's " (os error N)".
pub(crate) fn errno_text(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// Writes netlink messages and attributes: headers in host order, values
/// in the order each subsystem wants ([`Writer::be32`] for nf_tables,
/// [`Writer::ne32`] for rtnetlink), 4-byte alignment throughout.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
    /// Set when an attribute outgrew its 16-bit length.
    pub(crate) too_large: Option<String>,
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Writer {
    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Starts a message: nlmsghdr (length filled in by `end_msg`, seq by
    /// [`set_seq`]) and the subsystem's fixed header.
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, header: &[u8]) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it
        self.buf.extend_from_slice(header);
        self.pad();
        start
    }

    pub(crate) fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) {
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

    /// A u32 in network order (nf_tables values).
    pub(crate) fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A u32 in host order (rtnetlink values).
    pub(crate) fn ne32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string, as the kernel's NLA_STRING attributes want.
    pub(crate) fn str(&mut self, ty: u16, s: &str) {
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        self.attr(ty, &b);
    }

    /// An attribute holding what `body` writes; `flags` is `NLA_F_NESTED`
    /// for a nest of attributes, 0 for a struct followed by attributes (as
    /// netem's options are).
    pub(crate) fn wrap(&mut self, ty: u16, flags: u16, body: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(ty | flags).to_ne_bytes());
        body(self);
        self.pad();
        let len = self.buf.len() - start;
        match u16::try_from(len) {
            Ok(l) => self.buf[start..start + 2].copy_from_slice(&l.to_ne_bytes()),
            Err(_) => self.too_large = Some(format!("nested attribute {ty} of {len} bytes")),
        }
    }

    pub(crate) fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Writer)) {
        self.wrap(ty, NLA_F_NESTED, body);
    }

    /// Raw bytes inside the current attribute (a struct).
    pub(crate) fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }
}

/// Numbers the message starting at `start` of `buf`.
pub(crate) fn set_seq(buf: &mut [u8], start: usize, seq: u32) {
    if let Some(b) = buf.get_mut(start + 8..start + 12) {
        b.copy_from_slice(&seq.to_ne_bytes());
    }
}

/// One message of a datagram from the kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// After the nlmsghdr.
    pub(crate) payload: &'a [u8],
}

pub(crate) fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into messages; a malformed one is an error, not a panic.
pub(crate) fn replies<'a>(
    family: &'static str,
    mut buf: &'a [u8],
) -> Result<Vec<Reply<'a>>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let bad = || NetlinkError::Protocol {
            family,
            message: "malformed message from the kernel".into(),
        };
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
pub(crate) fn error_code(family: &'static str, r: &Reply<'_>) -> Result<i32, NetlinkError> {
    let raw = r
        .payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| NetlinkError::Protocol {
            family,
            message: "truncated error message".into(),
        })?;
    Ok(raw.checked_neg().unwrap_or(i32::MAX))
}

/// The attributes in `b`: (type without flags, data). Parsing stops at
/// the first malformed one.
pub(crate) fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
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

pub(crate) fn attr_str(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// What one message of a dump's answer is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DumpStep {
    /// Another request's message: not for this dump.
    Other,
    /// An object of the dump.
    Item,
    Done,
}

/// Sorts one answer message of the dump numbered `seq`; the kernel's
/// refusal of the dump is an error naming `what`, whether it comes as an
/// NLMSG_ERROR or, as dumps that fail midway report it, as a negative
/// errno in NLMSG_DONE (a failed dump must not read as a complete list).
pub(crate) fn dump_step(
    family: &'static str,
    what: &str,
    seq: u32,
    r: &Reply<'_>,
) -> Result<DumpStep, NetlinkError> {
    if r.seq != seq {
        return Ok(DumpStep::Other);
    }
    let refused = |errno| NetlinkError::Kernel {
        family,
        op: Op::change(what.to_owned()),
        errno,
    };
    match r.ty {
        // An empty NLMSG_DONE (old kernels) is a success.
        NLMSG_DONE if r.payload.len() < 4 => Ok(DumpStep::Done),
        NLMSG_DONE => match error_code(family, r)? {
            0 => Ok(DumpStep::Done),
            errno => Err(refused(errno)),
        },
        NLMSG_ERROR => match error_code(family, r)? {
            0 => Ok(DumpStep::Other),
            errno => Err(refused(errno)),
        },
        _ => Ok(DumpStep::Item),
    }
}

/// A netlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    family: &'static str,
}

fn io_err(
    family: &'static str,
    what: &'static str,
) -> impl FnOnce(rustix::io::Errno) -> NetlinkError {
    move |e| NetlinkError::Io {
        family,
        what,
        source: e.into(),
    }
}

impl Socket {
    fn io_err(&self, what: &'static str) -> impl FnOnce(rustix::io::Errno) -> NetlinkError {
        io_err(self.family, what)
    }

    /// Opens a `protocol` socket (None: `NETLINK_ROUTE`) in the caller's
    /// network namespace.
    fn open(protocol: Option<Protocol>, family: &'static str) -> Result<Socket, NetlinkError> {
        let io = |what| io_err(family, what);
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            protocol,
        )
        .map_err(io("socket"))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(RECV_TIMEOUT))
            .map_err(io("receive timeout"))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(RECV_TIMEOUT))
            .map_err(io("send timeout"))?;
        // Distinct from any earlier socket's numbers, as nft does, though
        // replies only ever reach the socket that asked.
        let seq = jiff::Timestamp::now().as_second() as u32;
        Ok(Socket { fd, seq, family })
    }

    /// Opens a socket inside the network namespace at `ns` (from a thread
    /// that enters it and exits; the socket keeps the namespace), with the
    /// id of the namespace it is in.
    pub fn open_in(
        ns: &Path,
        protocol: Option<Protocol>,
        family: &'static str,
    ) -> Result<Result<(Socket, NsId), NetlinkError>, NetnsError> {
        netns::within(ns, move |id| Ok((Socket::open(protocol, family)?, id)))
    }

    /// Reserves `n` sequence numbers; returns the first.
    pub(crate) fn take_seqs(&mut self, n: usize) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        first
    }

    /// Makes room for a `bytes`-long request and `acks` acks: past the
    /// defaults, asks for more (CAP_NET_ADMIN may exceed the sysctl caps).
    pub(crate) fn make_room(&self, bytes: usize, acks: usize) {
        if bytes > 128 * 1024 {
            let want = bytes + 4096;
            if sockopt::set_socket_send_buffer_size_force(&self.fd, want).is_err() {
                let _ = sockopt::set_socket_send_buffer_size(&self.fd, want);
            }
        }
        // Each ack costs ~1 KiB of the receive buffer.
        if acks > 64 {
            let want = acks * 2048;
            if sockopt::set_socket_recv_buffer_size_force(&self.fd, want).is_err() {
                let _ = sockopt::set_socket_recv_buffer_size(&self.fd, want);
            }
        }
    }

    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let kernel = netlink::SocketAddrNetlink::new(0, 0);
        let sent =
            sendto(&self.fd, bytes, SendFlags::empty(), &kernel).map_err(self.io_err("send"))?;
        if sent != bytes.len() {
            return Err(NetlinkError::Protocol {
                family: self.family,
                message: format!("sent {sent} of {} bytes", bytes.len()),
            });
        }
        Ok(())
    }

    /// A buffer for [`Socket::recv`].
    pub(crate) fn recv_buf() -> Vec<u8> {
        vec![0u8; RECV_BUF]
    }

    /// Receives one datagram into `buf`; a timeout is an error.
    pub(crate) fn recv<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], NetlinkError> {
        loop {
            match recv(&self.fd, &mut *buf, RecvFlags::TRUNC) {
                Ok((_, full)) if full > buf.len() => {
                    return Err(NetlinkError::Protocol {
                        family: self.family,
                        message: format!("a {full}-byte answer did not fit the receive buffer"),
                    });
                }
                Ok((n, _)) => return Ok(&buf[..n]),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => {
                    return Err(NetlinkError::Protocol {
                        family: self.family,
                        message: format!(
                            "no answer from the kernel within {} s",
                            RECV_TIMEOUT.as_secs()
                        ),
                    });
                }
                Err(e) => return Err(self.io_err("receive")(e)),
            }
        }
    }

    /// Sends the dump request `request` (one message, flags included) and
    /// feeds every object of the answer to `item`, whose state `fresh`
    /// makes; a dump interrupted by a concurrent change is repeated.
    pub(crate) fn dump<T>(
        &mut self,
        what: &str,
        request: &[u8],
        mut fresh: impl FnMut() -> T,
        mut item: impl FnMut(&mut T, &Reply<'_>),
    ) -> Result<T, NetlinkError> {
        let mut buf = Socket::recv_buf();
        for _ in 0..3 {
            let seq = self.take_seqs(1);
            let mut req = request.to_vec();
            set_seq(&mut req, 0, seq);
            self.send(&req)?;
            let mut out = fresh();
            let mut interrupted = false;
            'dump: loop {
                let dgram = self.recv(&mut buf)?;
                for r in replies(self.family, dgram)? {
                    let step = dump_step(self.family, what, seq, &r)?;
                    // The kernel may flag the items or only the end.
                    if step != DumpStep::Other && r.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match step {
                        DumpStep::Other => {}
                        DumpStep::Done => break 'dump,
                        DumpStep::Item => item(&mut out, &r),
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(NetlinkError::Protocol {
            family: self.family,
            message: format!("{what}: the answer kept changing under concurrent updates"),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An NLMSG_ERROR answer to `seq` (errno 0: an ack).
    pub(crate) fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
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

    /// The end of a dump, with its errno (0: complete).
    pub(crate) fn done_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&0x02u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m
    }

    /// The message `n` (from 0) of a concatenation.
    pub(crate) fn msg_at(bytes: &[u8], n: usize) -> &[u8] {
        let mut at = 0;
        for _ in 0..n {
            at += align4(ne_u32(bytes, at).expect("len") as usize);
        }
        let len = ne_u32(bytes, at).expect("len") as usize;
        &bytes[at..at + len]
    }

    /// The attributes inside a nested attribute's data, owned.
    pub(crate) fn nest(data: &[u8]) -> Vec<(u16, Vec<u8>)> {
        attrs(data)
            .into_iter()
            .map(|(t, d)| (t, d.to_vec()))
            .collect()
    }

    #[test]
    fn malformed_replies_do_not_panic() {
        assert!(replies("t", &[0u8; 3]).expect("short tail").is_empty());
        let mut m = error_msg(1, 0);
        m[0] = 200; // longer than the datagram
        assert!(replies("t", &m).is_err());
        let mut m = error_msg(1, 0);
        m[..4].copy_from_slice(&16u32.to_ne_bytes()); // an error without its code
        let r = replies("t", &m[..16]).expect("parses");
        assert!(error_code("t", &r[0]).is_err());
        assert!(attrs(&[1, 2, 3, 4, 0xff, 0xff]).is_empty());
        assert!(attrs(&[8, 0, 1, 0, 1]).is_empty(), "longer than the data");
    }

    #[test]
    fn dump_steps() {
        let d = [error_msg(7, 0), error_msg(8, 0), done_msg(8, 0)].concat();
        let r = replies("t", &d).expect("parses");
        let steps: Vec<DumpStep> = r
            .iter()
            .map(|m| dump_step("t", "list", 8, m).expect("fine"))
            .collect();
        assert_eq!(steps, [DumpStep::Other, DumpStep::Other, DumpStep::Done]);
        let refused = error_msg(8, 1);
        let err = dump_step(
            "rt",
            "list links",
            8,
            &replies("t", &refused).expect("parses")[0],
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "rt: list links failed: Operation not permitted"
        );
        // A dump that failed midway says so in its end, not in an error.
        let cut = done_msg(8, 90);
        let err = dump_step(
            "rt",
            "list qdiscs",
            8,
            &replies("t", &cut).expect("parses")[0],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("list qdiscs failed"), "{err}");
        // An end without a payload (old kernels) is complete.
        let mut old = done_msg(8, 0);
        old.truncate(16);
        old[..4].copy_from_slice(&16u32.to_ne_bytes());
        let r = replies("t", &old).expect("parses");
        assert_eq!(dump_step("t", "x", 8, &r[0]).expect("done"), DumpStep::Done);
    }

    #[test]
    fn nests_and_structs_get_their_lengths() {
        let mut w = Writer::default();
        let start = w.begin_msg(36, NLM_F_REQUEST, &[0; 20]);
        w.wrap(2, 0, |w| {
            w.raw(&[1, 2, 3, 4, 5]);
            w.ne32(1, 7);
        });
        w.end_msg(start);
        assert_eq!(ne_u32(&w.buf, 0), Some(w.buf.len() as u32));
        let a = attrs(&w.buf[NLMSG_HDRLEN + 20..]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, 2);
        // The struct padded to 8, then the attribute.
        assert_eq!(a[0].1.len(), 16);
        assert_eq!(nest(&a[0].1[8..]), [(1, 7u32.to_ne_bytes().to_vec())]);
        let mut w = Writer::default();
        w.attr(1, &vec![0; 70_000]);
        assert!(w.too_large.is_some());
    }
}
