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
//! Rules go to `nft -j -f -` as JSON on stdin: one batch is one atomic
//! transaction, the JSON schema is nft's stable machine interface, and no
//! value is ever parsed as nft syntax, let alone by a shell.

use std::{net::IpAddr, path::Path};

use faultline_api::{Direction, Partition, fault::parse_cidr};
use serde_json::{Value, json};

use super::BackendError;
use crate::netns::{self, NetnsError};

pub const TABLE: &str = "faultline";
pub const FAMILY: &str = "inet";
/// Before the usual filter priority (0), so an accept elsewhere cannot come first.
pub const PRIORITY: i32 = -10;

/// A stable 64-bit FNV-1a hash: chain names must be the same in every
/// version of the agent, which `std`'s hasher does not promise.
pub fn id_hash(id: &str) -> u64 {
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
    let (addr, len) = parse_cidr(cidr)?;
    let masked = match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & mask).into())
        }
    };
    Some((masked, len))
}

fn prefix(addr: IpAddr, len: u8) -> Value {
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if len == full {
        json!(addr.to_string())
    } else {
        json!({"prefix": {"addr": addr.to_string(), "len": len}})
    }
}

fn chain_ref(name: &str) -> Value {
    json!({"family": FAMILY, "table": TABLE, "name": name})
}

/// The rules of one direction: one per address family that has peers.
fn rules(chain: &str, id: &str, field: &str, p: &Partition) -> Result<Vec<Value>, BackendError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for peer in &p.peers {
        let (addr, len) =
            network(peer).ok_or_else(|| BackendError::Failed(format!("{peer:?} is not a CIDR")))?;
        if addr.is_ipv4() {
            v4.push(prefix(addr, len));
        } else {
            v6.push(prefix(addr, len));
        }
    }
    // nft comments hold at most 128 bytes; ids may be longer (the chain name
    // is what identifies the fault, the comment is for people).
    let mut comment = format!("faultline {id}");
    while comment.len() > 127 {
        comment.pop();
    }
    let mut out = Vec::new();
    for (proto, set) in [("ip", v4), ("ip6", v6)] {
        if set.is_empty() {
            continue;
        }
        let mut expr = vec![json!({"match": {"op": "==",
            "left": {"payload": {"protocol": proto, "field": field}},
            "right": {"set": set}}})];
        if !p.ports.is_empty() {
            // Only protocols with ports: `th dport` would read ICMP bytes otherwise.
            expr.push(json!({"match": {"op": "==",
                "left": {"meta": {"key": "l4proto"}},
                "right": {"set": ["tcp", "udp", "sctp"]}}}));
            expr.push(json!({"match": {"op": "==",
                "left": {"payload": {"protocol": "th", "field": "dport"}},
                "right": {"set": p.ports}}}));
        }
        expr.push(json!({"drop": null}));
        out.push(json!({"add": {"rule": {"family": FAMILY, "table": TABLE,
            "chain": chain, "comment": comment, "expr": expr}}}));
    }
    Ok(out)
}

/// The transaction that makes the fault's chains exactly what `p` says:
/// created if missing, emptied and refilled if present (idempotent).
pub fn apply_batch(id: &str, p: &Partition) -> Result<Value, BackendError> {
    let [inc, outc] = chain_names(id);
    let mut cmds = vec![json!({"add": {"table": {"family": FAMILY, "name": TABLE}}})];
    let dirs: &[(&str, &str, &str)] = match p.direction {
        Direction::Ingress => &[("input", "saddr", "in")],
        Direction::Egress => &[("output", "daddr", "out")],
        Direction::Both => &[("input", "saddr", "in"), ("output", "daddr", "out")],
    };
    for (hook, field, which) in dirs {
        let name = if *which == "in" { &inc } else { &outc };
        cmds.push(
            json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name,
            "type": "filter", "hook": hook, "prio": PRIORITY, "policy": "accept"}}}),
        );
        cmds.push(json!({"flush": {"chain": chain_ref(name)}}));
        cmds.extend(rules(name, id, field, p)?);
    }
    Ok(json!({"nftables": cmds}))
}

/// Chain names in a `nft -j list table` answer.
pub fn listed_chains(listing: &Value) -> Vec<String> {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("chain")?.get("name")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The transaction that removes the fault's chains given what the table
/// holds now; None when there is nothing of it. The table goes with its
/// last chain.
pub fn remove_batch(id: &str, chains: &[String]) -> Option<Value> {
    let ours = chain_names(id);
    let present: Vec<&String> = chains.iter().filter(|c| ours.contains(c)).collect();
    let others = chains.iter().filter(|c| !ours.contains(c)).count();
    if others == 0 {
        // Nothing else lives in the table: deleting it removes all at once.
        return Some(json!({"nftables": [
            {"delete": {"table": {"family": FAMILY, "name": TABLE}}}]}));
    }
    if present.is_empty() {
        return None;
    }
    let mut cmds = Vec::new();
    for c in present {
        // A chain that holds rules cannot be deleted; flush it first, in the same transaction.
        cmds.push(json!({"flush": {"chain": chain_ref(c)}}));
        cmds.push(json!({"delete": {"chain": chain_ref(c)}}));
    }
    Some(json!({"nftables": cmds}))
}

fn run(nft: &Path, ns: &Path, batch: &Value) -> Result<(), BackendError> {
    let bytes = serde_json::to_vec(batch).map_err(|e| BackendError::Failed(e.to_string()))?;
    netns::run_in(
        ns,
        nft,
        &["-j".into(), "-f".into(), "-".into()],
        Some(&bytes),
    )?;
    Ok(())
}

pub fn apply(nft: &Path, ns: &Path, id: &str, p: &Partition) -> Result<(), BackendError> {
    run(nft, ns, &apply_batch(id, p)?)
}

/// Our table as nft lists it, or None when it does not exist.
pub fn list(nft: &Path, ns: &Path) -> Result<Option<Value>, BackendError> {
    let args = [
        "-j".into(),
        "list".into(),
        "table".into(),
        FAMILY.into(),
        TABLE.into(),
    ];
    match netns::run_in(ns, nft, &args, None) {
        Ok(ran) => serde_json::from_slice(&ran.stdout)
            .map(Some)
            .map_err(|e| BackendError::Failed(format!("nft printed unreadable JSON: {e}"))),
        Err(NetnsError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn remove(nft: &Path, ns: &Path, id: &str) -> Result<(), BackendError> {
    let Some(listing) = list(nft, ns)? else {
        return Ok(());
    };
    match remove_batch(id, &listed_chains(&listing)) {
        Some(batch) => run(nft, ns, &batch),
        None => Ok(()),
    }
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
    fn both_directions_with_ports_and_families() {
        let b = apply_batch(
            "shop/x/0",
            &part(
                Direction::Both,
                &["10.77.1.9/24", "fd00::1/8", "10.1.2.3"],
                &[80, 443],
            ),
        )
        .expect("batch");
        let s = b.to_string();
        let [i, o] = chain_names("shop/x/0");
        assert!(s.contains(&format!(r#""hook":"input","name":"{i}""#)) || s.contains(&i));
        assert!(s.contains(&o));
        // Host bits are cleared; a full-length prefix is a plain address.
        assert!(
            s.contains(r#"{"prefix":{"addr":"10.77.1.0","len":24}}"#),
            "{s}"
        );
        assert!(s.contains(r#"{"prefix":{"addr":"fd00::","len":8}}"#), "{s}");
        assert!(s.contains(r#""10.1.2.3""#), "{s}");
        let cmds = b["nftables"].as_array().expect("array");
        // table, then per direction: chain, flush, ip rule, ip6 rule.
        assert_eq!(cmds.len(), 1 + 2 * 4);
        let rule = &cmds[3]["add"]["rule"];
        assert_eq!(rule["chain"], json!(i));
        assert_eq!(
            rule["expr"][0]["match"]["left"]["payload"]["field"],
            json!("saddr")
        );
        assert_eq!(rule["expr"][2]["match"]["right"]["set"], json!([80, 443]));
        assert_eq!(rule["expr"][3], json!({"drop": null}));
        let out_rule = &cmds[7]["add"]["rule"];
        assert_eq!(
            out_rule["expr"][0]["match"]["left"]["payload"]["field"],
            json!("daddr")
        );
    }

    #[test]
    fn one_direction_no_ports() {
        let b = apply_batch("a", &part(Direction::Egress, &["10.0.0.0/8"], &[])).expect("batch");
        let cmds = b["nftables"].as_array().expect("array");
        assert_eq!(cmds.len(), 4);
        assert_eq!(cmds[1]["add"]["chain"]["hook"], json!("output"));
        assert_eq!(
            cmds[3]["add"]["rule"]["expr"].as_array().map(Vec::len),
            Some(2)
        );
        assert!(apply_batch("a", &part(Direction::Egress, &["nope"], &[])).is_err());
    }

    #[test]
    fn removal_touches_only_our_chains() {
        let [ai, ao] = chain_names("a");
        let [bi, _] = chain_names("b");
        let only_a = [ai.clone(), ao.clone()];
        assert_eq!(
            remove_batch("a", &only_a),
            Some(
                json!({"nftables": [{"delete": {"table": {"family": "inet", "name": "faultline"}}}]})
            )
        );
        let both = [ai.clone(), bi.clone(), ao.clone()];
        let s = remove_batch("a", &both).expect("batch").to_string();
        assert!(
            s.contains(&ai) && s.contains(&ao) && !s.contains(&bi),
            "{s}"
        );
        assert!(!s.contains(r#""table":{"#), "{s}");
        assert_eq!(remove_batch("a", &[bi]), None);
    }

    #[test]
    fn long_ids_fit_comments() {
        let id = "x".repeat(253);
        let b = apply_batch(&id, &part(Direction::Ingress, &["10.0.0.1"], &[])).expect("batch");
        let c = b["nftables"][3]["add"]["rule"]["comment"]
            .as_str()
            .expect("comment");
        assert!(c.len() <= 127);
    }

    #[test]
    fn listing() {
        let l = json!({"nftables": [{"metainfo": {}}, {"table": {"name": "faultline"}},
            {"chain": {"name": "fabc-in"}}, {"rule": {"chain": "fabc-in"}}]});
        assert_eq!(listed_chains(&l), ["fabc-in"]);
        assert!(listed_chains(&json!(null)).is_empty());
    }
}
