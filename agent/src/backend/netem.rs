//! Latency faults: netem on the egress of every interface (but `lo`) of the
//! target's network namespace, through `tc` argument vectors.
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
//! The host kernel of our CI lacks `sch_netem`, so this module's commands are
//! tested as argument vectors here and against a stock kernel in the lab.

use std::{ffi::OsString, path::Path};

use faultline_api::{Latency, parse_cidr};
use serde_json::Value;

use super::{BackendError, Programs};
use crate::netns::{self, NetnsError};

pub(crate) const FIRST_BAND: u8 = 2;
pub(crate) const LAST_BAND: u8 = 16;
pub(crate) const ROOT: &str = "fa00:";
/// Filter prio offsets from the band: IPv4 `to` at +0, IPv6 `to` at
/// +32, catch-all at +100 (tried last).
const IPV6_PRIO: u32 = 32;
const CATCH_ALL_PRIO: u32 = 100;

fn class(band: u8) -> String {
    format!("fa00:{band:x}")
}

fn handle(band: u8) -> String {
    format!("{:x}:", 0xfb00u32 + u32::from(band))
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Adds our prio root, everything to band 1 by default.
pub(crate) fn root_cmd(dev: &str) -> Vec<String> {
    let mut c = v(&[
        "qdisc", "add", "dev", dev, "root", "handle", ROOT, "prio", "bands", "16", "priomap",
    ]);
    c.extend(std::iter::repeat_n("0".to_string(), 16));
    c
}

fn ms(d: faultline_api::Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The netem child of one band (replace: applying twice is one netem).
pub(crate) fn netem_cmd(dev: &str, band: u8, l: &Latency) -> Vec<String> {
    let mut c = v(&[
        "qdisc",
        "replace",
        "dev",
        dev,
        "parent",
        &class(band),
        "handle",
        &handle(band),
        "netem",
        "delay",
    ]);
    c.push(ms(l.delay));
    if l.jitter.is_some() || l.correlation.is_some() {
        // netem reads correlation only after a jitter.
        c.push(ms(l.jitter.unwrap_or_default()));
        if let Some(corr) = l.correlation {
            c.push(format!("{}%", corr.points()));
        }
    }
    if let Some(loss) = l.loss.filter(|p| p.points() > 0.0) {
        c.extend(v(&["loss", "random"]));
        c.push(format!("{}%", loss.points()));
    }
    c
}

/// Every filter prio a fault in `band` may use.
fn prios(band: u8) -> [u32; 3] {
    let b = u32::from(band);
    [b, IPV6_PRIO + b, CATCH_ALL_PRIO + b]
}

/// Filters steering the fault's traffic to its band.
pub(crate) fn filter_cmds(
    dev: &str,
    band: u8,
    l: &Latency,
) -> Result<Vec<Vec<String>>, BackendError> {
    let [v4, v6, all] = prios(band).map(|p| p.to_string());
    let flow = class(band);
    if l.to.is_empty() {
        return Ok(vec![v(&[
            "filter", "add", "dev", dev, "parent", ROOT, "protocol", "all", "prio", &all,
            "matchall", "flowid", &flow,
        ])]);
    }
    l.to.iter()
        .map(|cidr| {
            let net = parse_cidr(cidr)
                .ok_or_else(|| BackendError::Failed(format!("{cidr:?} is not a CIDR")))?;
            let (addr, len) = (net.addr(), net.prefix_len());
            let (proto, m, p) = if addr.is_ipv4() {
                ("ip", "ip", v4.as_str())
            } else {
                ("ipv6", "ip6", v6.as_str())
            };
            let dst = format!("{addr}/{len}");
            Ok(v(&[
                "filter", "add", "dev", dev, "parent", ROOT, "protocol", proto, "prio", p, "u32",
                "match", m, "dst", &dst, "flowid", &flow,
            ]))
        })
        .collect()
}

/// Deletes the fault's filters (every protocol at each of its prios).
pub(crate) fn filter_remove_cmds(dev: &str, band: u8) -> Vec<Vec<String>> {
    prios(band)
        .iter()
        .map(|p| {
            v(&[
                "filter",
                "del",
                "dev",
                dev,
                "parent",
                ROOT,
                "prio",
                &p.to_string(),
            ])
        })
        .collect()
}

/// Deletes the fault's filters and its netem.
pub(crate) fn remove_cmds(dev: &str, band: u8) -> Vec<Vec<String>> {
    let mut out = filter_remove_cmds(dev, band);
    out.push(v(&[
        "qdisc",
        "del",
        "dev",
        dev,
        "parent",
        &class(band),
        "handle",
        &handle(band),
    ]));
    out
}

/// What the root qdisc of an interface is, from `tc -j qdisc show dev X root`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Root {
    /// The kernel's default (handle `0:`): ours to replace and restore.
    Default,
    Ours,
    Foreign(String),
}

pub(crate) fn classify_root(show: &Value) -> Root {
    let Some(q) = show.as_array().and_then(|a| {
        a.iter()
            .find(|q| q.get("root").and_then(Value::as_bool) == Some(true))
            .or_else(|| a.first())
    }) else {
        return Root::Default;
    };
    let kind = q.get("kind").and_then(Value::as_str).unwrap_or("?");
    let handle = q.get("handle").and_then(Value::as_str).unwrap_or("");
    match (kind, handle) {
        ("prio", ROOT) => Root::Ours,
        (_, "0:") => Root::Default,
        (k, h) => Root::Foreign(format!("{k} {h}")),
    }
}

/// Bands of ours that still hold a netem child, from `tc -j qdisc show dev X`.
pub(crate) fn bands_in_use(show: &Value) -> Vec<u8> {
    show.as_array()
        .map(|a| {
            a.iter()
                .filter(|q| q.get("kind").and_then(Value::as_str) == Some("netem"))
                .filter_map(|q| {
                    q.get("parent")?
                        .as_str()?
                        .strip_prefix(ROOT)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Interface names from `ip -j link show`, without `lo`.
pub(crate) fn interfaces(links: &Value) -> Vec<String> {
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname")?.as_str())
                .filter(|n| *n != "lo")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn json_of(program: &Path, ns: &Path, args: &[String]) -> Result<Value, BackendError> {
    let ran = netns::run_in(ns, program, &os(args), None)?;
    serde_json::from_slice(&ran.stdout).map_err(|e| {
        BackendError::Failed(format!(
            "{} printed unreadable JSON: {e}",
            program.display()
        ))
    })
}

fn tc(p: &Programs, ns: &Path, args: &[String]) -> Result<(), BackendError> {
    netns::run_in(ns, &p.tc, &os(args), None)?;
    Ok(())
}

fn links(p: &Programs, ns: &Path) -> Result<Vec<String>, BackendError> {
    Ok(interfaces(&json_of(
        &p.ip,
        ns,
        &v(&["-j", "link", "show"]),
    )?))
}

/// Applies on every interface; returns the interfaces it saw, for
/// [`refresh`] to tell new ones.
pub fn apply(p: &Programs, ns: &Path, band: u8, l: &Latency) -> Result<Vec<String>, BackendError> {
    let devs = links(p, ns)?;
    for dev in &devs {
        match classify_root(&json_of(
            &p.tc,
            ns,
            &v(&["-j", "qdisc", "show", "dev", dev, "root"]),
        )?) {
            Root::Ours => {}
            Root::Default => tc(p, ns, &root_cmd(dev))?,
            Root::Foreign(what) => {
                return Err(BackendError::Failed(format!(
                    "interface {dev} has root qdisc {what}, which the agent could not restore; not changing it"
                )));
            }
        }
        tc(p, ns, &netem_cmd(dev, band, l))?;
        // Filters of an earlier, half-done apply go first, so there is one set.
        for cmd in filter_remove_cmds(dev, band) {
            let _ = tc(p, ns, &cmd);
        }
        for cmd in filter_cmds(dev, band, l)? {
            tc(p, ns, &cmd)?;
        }
    }
    Ok(devs)
}

/// Covers interfaces created in the target since `known` was seen: set up
/// as `apply` would, leaving the interfaces that have this fault's netem
/// alone, so a refresh never interrupts the delay. Interfaces with someone
/// else's root qdisc are not touched. When the interfaces are still `known`
/// it costs one `ip` run and nothing else. Returns the interfaces when they
/// changed, and whether one was set up.
pub(crate) fn refresh(
    p: &Programs,
    ns: &Path,
    band: u8,
    l: &Latency,
    known: &[String],
) -> Result<(Option<Vec<String>>, bool), BackendError> {
    let devs = links(p, ns)?;
    if devs == known {
        return Ok((None, false));
    }
    let mut changed = false;
    for dev in &devs {
        let show = json_of(&p.tc, ns, &v(&["-j", "qdisc", "show", "dev", dev]))?;
        match classify_root(&show) {
            Root::Ours if bands_in_use(&show).contains(&band) => continue,
            Root::Ours => {}
            Root::Default => tc(p, ns, &root_cmd(dev))?,
            Root::Foreign(_) => continue,
        }
        tc(p, ns, &netem_cmd(dev, band, l))?;
        for cmd in filter_remove_cmds(dev, band) {
            let _ = tc(p, ns, &cmd);
        }
        for cmd in filter_cmds(dev, band, l)? {
            tc(p, ns, &cmd)?;
        }
        changed = true;
    }
    Ok((Some(devs), changed))
}

pub fn remove(p: &Programs, ns: &Path, band: u8) -> Result<(), BackendError> {
    for dev in links(p, ns)? {
        if classify_root(&json_of(
            &p.tc,
            ns,
            &v(&["-j", "qdisc", "show", "dev", &dev, "root"]),
        )?) != Root::Ours
        {
            continue;
        }
        for cmd in remove_cmds(&dev, band) {
            // Each may already be gone (a half-done apply, a second removal).
            match tc(p, ns, &cmd) {
                Ok(()) | Err(BackendError::Failed(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if bands_in_use(&json_of(
            &p.tc,
            ns,
            &v(&["-j", "qdisc", "show", "dev", &dev]),
        )?)
        .is_empty()
        {
            match netns::run_in(
                ns,
                &p.tc,
                &os(&v(&["qdisc", "del", "dev", &dev, "root"])),
                None,
            ) {
                Ok(_) => {}
                Err(NetnsError::Failed { stderr, .. }) => {
                    return Err(BackendError::Failed(format!(
                        "cannot restore the root qdisc of {dev}: {stderr}"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_api::{Duration, Percent};
    use serde_json::json;

    fn lat(to: &[&str]) -> Latency {
        Latency {
            delay: Duration::from_millis(300).expect("ms"),
            jitter: None,
            correlation: None,
            loss: None,
            to: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn root_and_netem() {
        let r = root_cmd("eth0");
        assert_eq!(
            &r[..11],
            [
                "qdisc", "add", "dev", "eth0", "root", "handle", "fa00:", "prio", "bands", "16",
                "priomap"
            ]
        );
        assert_eq!(r.len(), 27);
        assert_eq!(
            netem_cmd("eth0", 2, &lat(&[])),
            [
                "qdisc", "replace", "dev", "eth0", "parent", "fa00:2", "handle", "fb02:", "netem",
                "delay", "300ms"
            ]
        );
        let mut l = lat(&[]);
        l.jitter = Duration::from_millis(50);
        l.correlation = Percent::new(25.0);
        l.loss = Percent::new(0.5);
        assert_eq!(
            netem_cmd("v", 16, &l)[5..],
            [
                "fa00:10", "handle", "fb10:", "netem", "delay", "300ms", "50ms", "25%", "loss",
                "random", "0.5%"
            ]
        );
        l.jitter = None;
        assert_eq!(netem_cmd("v", 3, &l)[10..13], ["300ms", "0ms", "25%"]);
    }

    #[test]
    fn filters_by_destination() {
        let f = filter_cmds("eth0", 3, &lat(&["10.0.0.0/8", "fd00::/8"])).expect("filters");
        assert_eq!(
            f[0],
            [
                "filter",
                "add",
                "dev",
                "eth0",
                "parent",
                "fa00:",
                "protocol",
                "ip",
                "prio",
                "3",
                "u32",
                "match",
                "ip",
                "dst",
                "10.0.0.0/8",
                "flowid",
                "fa00:3"
            ]
        );
        assert_eq!(f[1][7], "ipv6");
        assert_eq!(f[1][12], "ip6");
        // The kernel holds one protocol per filter prio: a v6 filter at the
        // v4 filters' prio is refused, so a dual-stack `to` needs two prios.
        assert_eq!(f[1][9], "35");
        assert_eq!(f[1][14], "fd00::/8");
        let dual = filter_cmds(
            "eth0",
            2,
            &lat(&["10.1.0.0/16", "fd00::1/128", "10.2.0.0/16", "fd00::2/128"]),
        )
        .expect("filters");
        let prio_of = |proto: &str| -> Vec<&str> {
            dual.iter()
                .filter(|c| c[7] == proto)
                .map(|c| c[9].as_str())
                .collect()
        };
        assert_eq!(prio_of("ip"), ["2", "2"]);
        assert_eq!(prio_of("ipv6"), ["34", "34"]);
        let all = filter_cmds("eth0", 4, &lat(&[])).expect("filters");
        assert_eq!(
            all,
            [[
                "filter", "add", "dev", "eth0", "parent", "fa00:", "protocol", "all", "prio",
                "104", "matchall", "flowid", "fa00:4"
            ]]
        );
        assert!(filter_cmds("eth0", 4, &lat(&["x"])).is_err());
        let r = remove_cmds("eth0", 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0][7], "4");
        assert_eq!(r[1][7], "36");
        assert_eq!(r[2][7], "104");
        assert_eq!(filter_remove_cmds("eth0", 4), r[..3]);
        // Every prio a filter of the band is added at is deleted again.
        for l in [lat(&["10.0.0.0/8", "fd00::/8"]), lat(&[])] {
            for add in filter_cmds("eth0", 4, &l).expect("filters") {
                assert!(r.iter().any(|del| del[7] == add[9]), "{add:?}");
            }
        }
        // No prio is shared between bands (2..=16).
        let mut all: Vec<u32> = (FIRST_BAND..=LAST_BAND).flat_map(prios).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(
            r[3],
            [
                "qdisc", "del", "dev", "eth0", "parent", "fa00:4", "handle", "fb04:"
            ]
        );
    }

    #[test]
    fn reads_kernel_state() {
        assert_eq!(
            classify_root(&json!([{"kind": "noqueue", "handle": "0:", "root": true}])),
            Root::Default
        );
        assert_eq!(
            classify_root(&json!([{"kind": "prio", "handle": "fa00:", "root": true}])),
            Root::Ours
        );
        assert_eq!(
            classify_root(&json!([{"kind": "fq", "handle": "8001:", "root": true}])),
            Root::Foreign("fq 8001:".into())
        );
        let show = json!([{"kind": "prio", "handle": "fa00:", "root": true},
            {"kind": "netem", "handle": "fb02:", "parent": "fa00:2"},
            {"kind": "netem", "handle": "fb10:", "parent": "fa00:10"},
            {"kind": "pfifo", "handle": "8001:", "parent": "fa00:1"}]);
        assert_eq!(bands_in_use(&show), [2, 16]);
        let links = json!([{"ifname": "lo"}, {"ifname": "eth0"}, {"ifname": "veth1"}]);
        assert_eq!(interfaces(&links), ["eth0", "veth1"]);
    }
}
