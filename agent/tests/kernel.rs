//! The real agent binary against the host kernel: partitions in network
//! namespaces and kills in cgroups that each test creates for itself.

mod common;

use std::time::Duration;

use common::*;
use faultline_agent::chain_names;
use faultline_testkit::KillOnDrop;
use serde_json::{Value, json};

const SEC: Duration = Duration::from_secs(1);

/// A target, a listener in it and an agent that has cut the peer off from
/// it with one partition (`cut`, a minute long).
fn cut_by_a_running_agent() -> (NetPair, std::net::SocketAddr, AgentProc) {
    let net = NetPair::new();
    let addr = net.listen();
    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[partition("cut", &net.target_path(), &far, "")]);
    agent.start();
    net.expect_reachable(addr, false, 3 * SEC, &agent);
    (net, addr, agent)
}

#[test]
fn partition_cuts_exactly_while_active_and_leaves_other_tables() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let addr = net.listen();
    // Someone else's table in the target: the agent must never touch it.
    net.nft(&["add", "table", "inet", "theirs"]);
    net.nft(&[
        "add",
        "chain",
        "inet",
        "theirs",
        "c",
        "{ type filter hook input priority 0 ; policy accept ; }",
    ]);
    assert!(net.reachable(addr), "baseline connectivity");

    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[partition("cut", &net.target_path(), &far, "")]);
    agent.start();
    net.expect_reachable(addr, false, 3 * SEC, &agent);
    let rules = net.ruleset();
    assert!(
        rules.contains("table inet faultline") && rules.contains("table inet theirs"),
        "{rules}"
    );
    // nft itself decodes what the agent wrote over netlink: both chains
    // (direction both), each with one rule matching the peer, then drop.
    let [cut_in, cut_out] = chain_names("cut");
    for (chain, field) in [(&cut_in, "saddr"), (&cut_out, "daddr")] {
        let rules = net.our_rules(chain);
        assert_eq!(rules.len(), 1, "{chain}: {rules:?}");
        let mut r = rules[0].clone();
        assert_eq!(r["comment"], json!("faultline cut"), "{r}");
        // Packets of the test's own first probe may have been counted already.
        r["expr"][1]["counter"] = json!({"packets": 0, "bytes": 0});
        assert_eq!(
            r["expr"],
            json!([
                {"match": {"op": "==",
                    "left": {"payload": {"protocol": "ip", "field": field}},
                    "right": PEER_IP}},
                {"counter": {"packets": 0, "bytes": 0}},
                {"drop": null}
            ]),
            "{r}"
        );
    }
    let chains: Vec<Value> = net.our_table_json()["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i.get("chain").cloned())
        .collect();
    assert_eq!(chains.len(), 2, "{chains:?}");
    for c in &chains {
        let hook = if c["name"] == json!(cut_in) {
            "input"
        } else {
            "output"
        };
        assert_eq!(
            (&c["type"], &c["hook"], &c["prio"], &c["policy"]),
            (
                &json!("filter"),
                &json!(hook),
                &json!(-10),
                &json!("accept")
            ),
            "{c}"
        );
    }

    // Every connection attempt meanwhile was dropped and counted.
    for _ in 0..3 {
        assert!(!net.reachable(addr));
    }

    // Removed from the desired file: reachable again, only our table gone,
    // and what the rules dropped said as they go.
    agent.write_faults(&[]);
    net.expect_reachable(addr, true, 3 * SEC, &agent);
    let dropped = effect_in_log(&agent, "cut", "packets dropped");
    assert!(
        dropped >= 3,
        "{dropped} packets dropped; log:\n{}",
        agent.log()
    );
    let rules = net.ruleset();
    assert!(
        !rules.contains("faultline") && rules.contains("table inet theirs"),
        "{rules}"
    );

    // Expiry without touching the file.
    let (deadline, soon) = in_ms(1500);
    agent.write_faults(&[partition("cut2", &net.target_path(), &soon, "")]);
    assert!(
        wait_for(SEC, || !net.reachable(addr)).is_some(),
        "second partition never took effect"
    );
    assert!(wait_for(3 * SEC, || !net.ruleset().contains("faultline")).is_some());
    let late = jiff::Timestamp::now().duration_since(deadline);
    // The agent removes within a few ms of the deadline (it logs how late);
    // the margin covers this test's own polling on a loaded machine.
    assert!(
        late < jiff::SignedDuration::from_millis(300),
        "removed {late:?} after the deadline; log:\n{}",
        agent.log()
    );
    assert!(net.reachable(addr));
    agent.wait_log("cut2: removed partition at its deadline", SEC);

    let status = agent.sigterm();
    assert!(status.success(), "{status:?}");
    assert!(net.ruleset().contains("table inet theirs"));
}

#[test]
fn partition_by_port_and_direction_and_two_faults_coexist() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let cut = net.listen();
    let open = net.listen();
    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    let ingress_port = format!(", direction: ingress, ports: [{}]", cut.port());
    agent.write_faults(&[partition("port", &net.target_path(), &far, &ingress_port)]);
    agent.start();
    net.expect_reachable(cut, false, 3 * SEC, &agent);
    assert!(net.reachable(open), "other ports stay open");
    // As nft decodes it: from the peer, TCP/UDP/SCTP, to the cut port, drop.
    let [port_in, port_out] = chain_names("port");
    let rules = net.our_rules(&port_in);
    assert_eq!(rules.len(), 1, "{rules:?}");
    let expr = rules[0]["expr"].as_array().expect("expr");
    assert_eq!(expr.len(), 5, "{expr:?}");
    assert_eq!(
        expr[0],
        json!({"match": {"op": "==",
            "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": PEER_IP}})
    );
    assert_eq!(
        expr[1],
        json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
            "right": {"set": ["tcp", "udp", "sctp"]}}})
    );
    let dport = &expr[2]["match"];
    assert_eq!(
        dport["left"],
        json!({"payload": {"protocol": "th", "field": "dport"}})
    );
    // A one-element set may print as its element.
    assert!(
        dport["right"] == json!({"set": [cut.port()]}) || dport["right"] == json!(cut.port()),
        "{dport}"
    );
    assert_eq!(
        expr[3]["counter"]["packets"].as_u64().map(|_| ()),
        Some(()),
        "{expr:?}"
    );
    assert_eq!(expr[4], json!({"drop": null}));
    assert!(net.our_rules(&port_out).is_empty(), "ingress only");

    // A second fault on the same target cuts everything; removing it leaves the first.
    agent.write_faults(&[
        partition("port", &net.target_path(), &far, &ingress_port),
        partition("all", &net.target_path(), &far, ", direction: egress"),
    ]);
    assert!(wait_for(3 * SEC, || !net.reachable(open)).is_some());
    let [all_in, all_out] = chain_names("all");
    let rules = net.ruleset();
    assert!(
        rules.contains(&all_out) && !rules.contains(&all_in),
        "{rules}"
    );
    agent.write_faults(&[partition("port", &net.target_path(), &far, &ingress_port)]);
    assert!(wait_for(3 * SEC, || net.reachable(open)).is_some());
    assert!(
        !net.reachable(cut),
        "the first fault survives the second's removal"
    );
    assert!(agent.sigterm().success());
    assert!(
        !net.ruleset().contains("faultline"),
        "SIGTERM removes everything"
    );
    assert!(net.reachable(cut));
}

#[test]
fn a_changed_partition_is_replaced_in_one_transaction() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut agent) = cut_by_a_running_agent();
    // nft monitor prints a line per committed nf_tables transaction.
    let out = agent.dir.path().join("monitor.txt");
    let monitor = KillOnDrop(
        std::process::Command::new("ip")
            .args(["netns", "exec", &net.target, "nft", "monitor"])
            .stdout(std::fs::File::create(&out).expect("monitor file"))
            .spawn()
            .expect("nft monitor"),
    );
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    // A transaction of the test's own marks where the monitor is listening
    // (re-adding a table that exists would report nothing).
    assert!(
        wait_for(5 * SEC, || {
            net.nft(&["add", "table", "inet", "probe"]);
            net.nft(&["delete", "table", "inet", "probe"]);
            text().contains("add table inet probe")
        })
        .is_some(),
        "nft monitor never started: {}",
        text()
    );
    // Commits by the agent only (named after its thread, not nft), however
    // late the test's own nft calls show up.
    let generations = || {
        text()
            .lines()
            .filter(|l| l.starts_with("# new generation") && !l.ends_with("(nft)"))
            .count()
    };
    let before = generations();
    // Both directions become ingress only, to the listener's port.
    let (_, far) = in_ms(60_000);
    let changed = format!(", direction: ingress, ports: [{}]", addr.port());
    agent.write_faults(&[partition("cut", &net.target_path(), &far, &changed)]);
    let [cut_in, cut_out] = chain_names("cut");
    assert!(
        wait_for(3 * SEC, || !net.ruleset().contains(&cut_out)).is_some(),
        "the egress chain stayed; log:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(monitor);
    assert_eq!(
        generations() - before,
        1,
        "one transaction, not a removal and an apply:\n{}",
        text()
    );
    let rules = net.our_rules(&cut_in);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0]["expr"].as_array().map(Vec::len),
        Some(5),
        "{rules:?}"
    );
    assert!(!net.reachable(addr), "still cut");
    assert!(agent.sigterm().success());
    assert!(!net.ruleset().contains("faultline"));
}

/// How many sockets the process holds.
/// The count of the agent's `ID: effect: N UNIT` log line.
fn effect_in_log(agent: &AgentProc, id: &str, unit: &str) -> u64 {
    let log = agent.log();
    let prefix = format!("{id}: effect: ");
    log.lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(unit).map(|(n, _)| n))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no {prefix}N {unit} in the log:\n{log}"))
}

fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn netlink_sockets_live_only_while_their_target_holds_partitions() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let mut agent = AgentProc::new();
    agent.write_faults(&[]);
    agent.start();
    agent.wait_log("started:", 3 * SEC);
    let pid = agent.pid().expect("running");
    let idle = sockets(pid);
    let (_, far) = in_ms(60_000);
    let a = partition("a", &net.target_path(), &far, "");
    let b = partition("b", &net.target_path(), &far, ", direction: ingress");
    agent.write_faults(&[a.clone(), b]);
    agent.wait_log("b: applied partition", 3 * SEC);
    assert_eq!(sockets(pid), idle + 1, "one socket per target");
    agent.write_faults(&[a]);
    agent.wait_log("b: removed partition", 3 * SEC);
    assert_eq!(sockets(pid), idle + 1, "kept for the other fault");
    // The target vanishes: its removal counts as done, and the socket,
    // which would keep the dead namespace alive, is closed (after a
    // 2-second linger, off the loop).
    run("ip", &["netns", "del", &net.target]);
    agent.write_faults(&[]);
    agent.wait_log("a: removed partition", 3 * SEC);
    assert!(
        wait_for(4 * SEC, || sockets(pid) == idle).is_some(),
        "{} sockets, {idle} when idle",
        sockets(pid)
    );
    assert!(agent.sigterm().success());
}

#[test]
fn expired_faults_are_never_applied() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let mut agent = AgentProc::new();
    let (_, past) = in_ms(-1000);
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[
        partition("old", &net.target_path(), &past, ""),
        partition("new", &net.target_path(), &far, ""),
    ]);
    agent.start();
    agent.wait_log("new: applied partition", 3 * SEC);
    let rules = net.ruleset();
    let [old_in, _] = chain_names("old");
    let [new_in, _] = chain_names("new");
    assert!(
        rules.contains(&new_in) && !rules.contains(&old_in),
        "{rules}"
    );
    assert!(!agent.log().contains("old: applied"));
    assert!(agent.sigterm().success());
}

#[test]
fn crash_recovery_removes_what_is_no_longer_desired_first() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut agent) = cut_by_a_running_agent();
    agent.sigkill();
    assert!(
        net.ruleset().contains("table inet faultline"),
        "SIGKILL left the rule, as a crash does"
    );
    agent.write_faults(&[]);
    agent.start();
    agent.wait_log(
        "started: 1 fault(s) in the journal, 1 stale removed before anything else",
        3 * SEC,
    );
    assert!(!net.ruleset().contains("faultline"), "{}", net.ruleset());
    assert!(net.reachable(addr));
    assert!(agent.sigterm().success());
}

/// A journal that cannot be read: the agent sweeps every network namespace
/// for Faultline's own table and qdiscs, sets the journal aside and starts
/// clean, rather than crash-looping with the fault in the kernel.
#[test]
fn an_unreadable_journal_is_swept_clean_not_crash_looped() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut agent) = cut_by_a_running_agent();
    net.nft(&["add", "table", "inet", "theirs"]);
    agent.sigkill();
    let journal = agent.state.join("journal.log");
    std::fs::write(&journal, "{not a journal\n").expect("corrupt the journal");
    agent.write_faults(&[]);
    // Swept: this test's namespace only (other tests run beside it), as
    // if it were the node's one pod namespace and no process ran.
    let scope = tempfile::tempdir().expect("tempdir");
    let (procs, bound) = (scope.path().join("proc"), scope.path().join("netns"));
    std::fs::create_dir_all(&procs).expect("mkdir");
    std::fs::create_dir_all(&bound).expect("mkdir");
    std::os::unix::fs::symlink(net.target_path(), bound.join(&net.target)).expect("symlink");
    agent.start_with(&[
        "--proc-root",
        procs.to_str().expect("path"),
        "--netns-dir",
        bound.to_str().expect("path"),
    ]);
    agent.wait_log("removed 1 nftables table(s)", 5 * SEC);
    net.expect_reachable(addr, true, 3 * SEC, &agent);
    let rules = net.ruleset();
    assert!(
        !rules.contains("table inet faultline") && rules.contains("table inet theirs"),
        "only ours removed: {rules}"
    );
    let kept = std::fs::read_dir(&agent.state)
        .expect("state dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("journal.log.corrupt-")
        });
    assert!(kept, "the unreadable journal is kept for a person to read");
    // It runs on, as any agent does.
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[partition("again", &net.target_path(), &far, "")]);
    net.expect_reachable(addr, false, 3 * SEC, &agent);
    assert!(agent.sigterm().success(), "log:\n{}", agent.log());
    assert!(net.reachable(addr));
}

#[test]
fn crash_recovery_keeps_what_is_still_desired() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut agent) = cut_by_a_running_agent();
    agent.sigkill();
    agent.start();
    agent.wait_log("started: 1 fault(s) in the journal, 0 stale", 3 * SEC);
    assert!(!net.reachable(addr));
    assert!(agent.sigterm().success());
    assert!(net.reachable(addr));
}

/// The qdiscs of the target, as tc lists them.
fn qdiscs(net: &NetPair) -> String {
    let out = std::process::Command::new("tc")
        .args(["-n", &net.target, "qdisc", "show"])
        .output()
        .expect("tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Latency over rtnetlink on the host kernel. Ours has neither sch_prio nor
/// sch_netem (the kernel lab tests latency itself): the refusal names the
/// missing module and what the agent did before it is undone. On a host
/// that has them the delay is applied and removed instead.
#[test]
fn latency_on_the_host_kernel_is_applied_or_refused_and_undone() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let before = qdiscs(&net);
    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    let lat = fault(
        "lat",
        &net.target_path(),
        &far,
        &format!("latency: {{delay: 20ms, to: [{PEER_IP}/32, \"fd00::/8\"]}}"),
    );
    agent.write_faults(&[lat]);
    agent.start();
    assert!(
        wait_for(5 * SEC, || {
            let log = agent.log();
            log.contains("lat: applied latency") || log.contains("lat: cannot apply latency")
        })
        .is_some(),
        "{}",
        agent.log()
    );
    if agent.log().contains("lat: applied latency") {
        assert!(qdiscs(&net).contains("netem"), "{}", qdiscs(&net));
    } else {
        let log = agent.log();
        assert!(
            log.contains("rtnetlink: add root prio qdisc fa00: on fva")
                && log.contains("(does the kernel have the sch_prio module?)")
                || log.contains("(does the kernel have the sch_netem module?)"),
            "the refusal names the request and the module: {log}"
        );
    }
    agent.write_faults(&[]);
    assert!(
        wait_for(3 * SEC, || qdiscs(&net) == before).is_some(),
        "qdiscs as before: {}\nwere: {before}",
        qdiscs(&net)
    );
    assert!(agent.sigterm().success());
    assert_eq!(qdiscs(&net), before);
}

#[test]
fn malformed_desired_file_keeps_faults_until_their_deadline() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let addr = net.listen();
    let mut agent = AgentProc::new();
    let (deadline, soon) = in_ms(2500);
    agent.write_faults(&[partition("cut", &net.target_path(), &soon, "")]);
    agent.start();
    net.expect_reachable(addr, false, 2 * SEC, &agent);
    agent.write_raw(
        "apiVersion: faultline.dev/v1alpha1\nkind: NodeFaults\nspec: {faults: [{id: 1}\n",
    );
    agent.wait_log(
        "desired state unusable, keeping 1 applied fault(s)",
        2 * SEC,
    );
    assert!(
        agent.log().contains("desired.yaml:"),
        "problems are located: {}",
        agent.log()
    );
    std::fs::remove_file(agent.desired()).expect("rm");
    agent.wait_log("cannot read", 2 * SEC);
    assert!(
        jiff::Timestamp::now() < deadline,
        "the test is too slow to check the interval"
    );
    assert!(
        net.ruleset().contains("table inet faultline"),
        "kept while the file is bad"
    );
    assert!(
        wait_for(4 * SEC, || net.reachable(addr)).is_some(),
        "removed at its deadline anyway"
    );
    assert!(jiff::Timestamp::now() >= deadline);
    assert!(agent.sigterm().success());
}

#[test]
fn kill_signals_every_process_repeatedly_until_the_deadline() {
    if !kernel_ready() {
        return;
    }
    let mut cg = TestCgroup::new();
    let first = cg.spawn_sleep();
    let mut agent = AgentProc::new();
    let (deadline, soon) = in_ms(2500);
    agent.write_faults(&[format!(
        "    - id: kill\n      target: {{cgroup: {}}}\n      expiresAt: \"{soon}\"\n      kill: {{signal: SIGKILL, every: 300ms}}\n",
        cg.path.display()
    )]);
    agent.start();
    assert!(
        wait_for(2 * SEC, || cg.ended_by(first).is_some()).is_some(),
        "log:\n{}",
        agent.log()
    );
    assert_eq!(cg.ended_by(first), Some(9));
    // Repeated: a process that joins later is killed at the next round.
    let second = cg.spawn_sleep();
    assert!(
        wait_for(SEC, || cg.ended_by(second).is_some()).is_some(),
        "no repeat; log:\n{}",
        agent.log()
    );
    assert_eq!(cg.ended_by(second), Some(9));
    // After the deadline nothing is signalled any more.
    let wait = deadline
        .duration_since(jiff::Timestamp::now())
        .as_millis()
        .max(0) as u64
        + 200;
    std::thread::sleep(Duration::from_millis(wait));
    let third = cg.spawn_sleep();
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(cg.ended_by(third), None, "signalled after its deadline");
    agent.wait_log("kill: removed kill at its deadline", SEC);
    // The two sleeps (one signalled twice should a repeat catch it dying).
    let signalled = effect_in_log(&agent, "kill", "processes signalled");
    assert!((2..=4).contains(&signalled), "{signalled}");
    assert!(agent.sigterm().success());
}

#[test]
fn sighup_removes_everything_like_sigterm() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut agent) = cut_by_a_running_agent();
    let status = agent.stop_with(rustix::process::Signal::HUP);
    assert!(status.success(), "{status:?}; log:\n{}", agent.log());
    assert!(net.reachable(addr), "the partition went with the agent");
    assert!(!net.ruleset().contains("faultline"));
}

#[test]
fn a_second_agent_on_the_same_state_waits_for_the_first() {
    if !kernel_ready() {
        return;
    }
    let (net, addr, mut first) = cut_by_a_running_agent();
    let mut second = AgentProc::new();
    second.state = first.state.clone();
    let (_, far) = in_ms(60_000);
    second.write_faults(&[partition("cut", &net.target_path(), &far, "")]);
    second.start();
    second.wait_log("waiting for it to exit", 10 * SEC);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        second
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok())
            .flatten()
            .is_none(),
        "the second agent must wait, not exit; log:\n{}",
        second.log()
    );
    assert!(first.sigterm().success(), "log:\n{}", first.log());
    // The second agent goes on once the first is gone, and cuts again.
    net.expect_reachable(addr, false, 5 * SEC, &second);
    assert!(second.sigterm().success(), "log:\n{}", second.log());
    assert!(net.reachable(addr));
}

/// `pod: {uid}` targets, found through real cgroups in the layouts of the
/// systemd driver (containerd) and the cgroupfs driver (Docker's ids):
/// a partition enters the pod's network namespace, a kill reaches its
/// processes.
#[test]
fn pod_targets_resolve_through_the_kubelets_cgroup_layouts() {
    if !kernel_ready() {
        return;
    }
    let net = NetPair::new();
    let addr = net.listen();
    let mut tree = KubeletTree::new();
    let systemd_uid = "0b9a3c1e-5f3d-4b7a-9c1e-2d4f6a8b0c1d";
    tree.pod_process(
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-4f1c.scope",
            systemd_uid.replace('-', "_")
        ),
        &net.target,
    );
    let cgroupfs_uid = "7e2d9f40-1a6b-4c3e-8d5f-0a1b2c3d4e5f";
    let victim = tree.pod_process(
        &format!("kubepods/besteffort/pod{cgroupfs_uid}/9d8e7f6a5b4c"),
        &net.peer,
    );
    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[
        format!(
            "    - id: pod-cut\n      target: {{pod: {{uid: {systemd_uid}}}}}\n      expiresAt: \"{far}\"\n      partition: {{peers: [{PEER_IP}/32]}}\n"
        ),
        format!(
            "    - id: pod-kill\n      target: {{pod: {{uid: {cgroupfs_uid}}}}}\n      expiresAt: \"{far}\"\n      kill: {{signal: SIGTERM}}\n"
        ),
    ]);
    let root = tree.root.display().to_string();
    agent.start_with(&["--cgroup-root", &root]);
    net.expect_reachable(addr, false, 3 * SEC, &agent);
    assert!(
        wait_for(3 * SEC, || tree.ended_by(victim).is_some()).is_some(),
        "the pod's process was not signalled; log:\n{}",
        agent.log()
    );
    assert_eq!(tree.ended_by(victim), Some(15));
    // The peer was cut off above, so the rule is in the pod's namespace.
    assert!(agent.log().contains("pod-cut: applied partition"));
    agent.write_faults(&[]);
    net.expect_reachable(addr, true, 3 * SEC, &agent);
    // A pod that is not on this node is reported, not guessed at.
    agent.write_faults(&[format!(
        "    - id: elsewhere\n      target: {{pod: {{uid: 11111111-2222-3333-4444-555555555555}}}}\n      expiresAt: \"{far}\"\n      partition: {{peers: [{PEER_IP}/32]}}\n"
    )]);
    agent.wait_log(
        "no cgroup for pod 11111111-2222-3333-4444-555555555555",
        3 * SEC,
    );
    // A pod in the node's own network namespace (hostNetwork): a partition
    // there would cut the node, so it is refused and the host untouched.
    let host_uid = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
    tree.host_pod_process(&format!("kubepods/besteffort/pod{host_uid}/5e6f"));
    agent.write_faults(&[format!(
        "    - id: host-cut\n      target: {{pod: {{uid: {host_uid}}}}}\n      expiresAt: \"{far}\"\n      partition: {{peers: [{PEER_IP}/32]}}\n"
    )]);
    agent.wait_log("(hostNetwork): refused", 3 * SEC);
    let host_rules = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(
        !String::from_utf8_lossy(&host_rules.stdout).contains("faultline"),
        "nothing in the host's own namespace"
    );
    assert!(agent.sigterm().success());
}

/// The state letter of a process (`T` stopped, `S` sleeping, ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command in parentheses, which may itself hold spaces.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// SIGSTOP is taken back: SIGCONT when the fault ends, and from a restarted
/// agent that finds the fault in its journal. A pod's sandbox (`pause`)
/// process is never signalled, so the kubelet does not recreate the pod.
#[test]
fn a_stopped_process_is_continued_and_the_sandbox_left_alone() {
    if !kernel_ready() {
        return;
    }
    let mut cg = TestCgroup::new();
    let i = cg.spawn_sleep();
    let pid = cg.children[i].id();
    let stop = |id: &str, ms: i64| {
        let (_, until) = in_ms(ms);
        format!(
            "    - id: {id}\n      target: {{cgroup: {}}}\n      expiresAt: \"{until}\"\n      kill: {{signal: SIGSTOP}}\n",
            cg.path.display()
        )
    };
    let mut agent = AgentProc::new();
    agent.write_faults(&[stop("freeze", 1500)]);
    agent.start();
    assert!(
        wait_for(3 * SEC, || proc_state(pid) == Some('T')).is_some(),
        "never stopped; log:\n{}",
        agent.log()
    );
    agent.wait_log("freeze: removed kill at its deadline", 3 * SEC);
    assert!(
        wait_for(SEC, || proc_state(pid) == Some('S')).is_some(),
        "still stopped after the fault: {:?}",
        proc_state(pid)
    );
    assert!(
        agent
            .log()
            .contains("freeze: SIGCONT to 1 stopped process(es)")
    );

    // Stopped, then the agent dies; the next one finds the fault no longer
    // desired in its journal and lets the process go on first thing.
    agent.write_faults(&[stop("freeze2", 60_000)]);
    assert!(wait_for(3 * SEC, || proc_state(pid) == Some('T')).is_some());
    agent.sigkill();
    assert_eq!(proc_state(pid), Some('T'), "stopped with its agent gone");
    agent.write_faults(&[]);
    agent.start();
    assert!(
        wait_for(3 * SEC, || proc_state(pid) == Some('S')).is_some(),
        "the restarted agent left it stopped; log:\n{}",
        agent.log()
    );
    assert!(agent.sigterm().success());

    // A pod: its container process is killed, its `pause` is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let pause = dir.path().join("pause");
    std::fs::copy("/bin/sleep", &pause).expect("a pause binary");
    let net = NetPair::new();
    let mut tree = KubeletTree::new();
    let uid = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
    let app = tree.pod_process(&format!("kubepods/besteffort/pod{uid}/a1b2"), &net.target);
    let sandbox = tree.command_in(
        &format!("kubepods/besteffort/pod{uid}/c3d4"),
        std::process::Command::new(&pause).arg("60"),
    );
    let mut agent = AgentProc::new();
    let (_, far) = in_ms(60_000);
    agent.write_faults(&[format!(
        "    - id: pod-kill\n      target: {{pod: {{uid: {uid}}}}}\n      expiresAt: \"{far}\"\n      kill: {{signal: SIGKILL}}\n"
    )]);
    let root = tree.root.display().to_string();
    agent.start_with(&["--cgroup-root", &root]);
    assert!(
        wait_for(3 * SEC, || tree.ended_by(app).is_some()).is_some(),
        "log:\n{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tree.ended_by(sandbox), None, "the sandbox was signalled");
    // Asked for the whole pod, the sandbox gets it too.
    agent.write_faults(&[format!(
        "    - id: pod-kill-whole\n      target: {{pod: {{uid: {uid}}}}}\n      expiresAt: \"{far}\"\n      kill: {{signal: SIGKILL, sandbox: true}}\n"
    )]);
    assert!(
        wait_for(3 * SEC, || tree.ended_by(sandbox).is_some()).is_some(),
        "the sandbox was spared; log:\n{}",
        agent.log()
    );
    assert!(agent.sigterm().success());
}
