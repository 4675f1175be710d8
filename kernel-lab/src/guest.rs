//! `/init` of the kernel lab (kernel-lab/src/boot.rs builds the initramfs and
//! boots it under qemu): runs the real faultline-agent against a stock
//! kernel and prints one machine-readable line per result on the console,
//! parsed by kernel-lab/tests/kernel_lab.rs and kernel-lab/benches/kernel_lab.rs:
//!
//! ```text
//! FLTLAB config delay_ms=50 samples=20
//! FLTLAB rtt phase=PHASE dst=ADDR ms=0.412        one per ping reply
//! FLTLAB check name=NAME ok|fail detail=TEXT      one per boolean check
//! FLTLAB bench i=I op=apply|remove at_us=TIME     with fltlab.bench=N only
//! FLTLAB agentlog LINE                            with fltlab.bench=N only
//! FLTLAB done                                     the end was reached
//! ```
//!
//! RTT phases: baseline (no fault), to (latency to 10.201.1.2 only),
//! restored (after its removal), all (latency without `to`), dual (latency to
//! 10.201.1.2 and fd00:201:1::2), pair (two faults on the target: the delay
//! to 10.201.1.2, half of it to 10.201.1.3 and fd00:201:1::3, on the same
//! interface), pair-one (the first of them removed), recovered (after a
//! SIGKILL and a restart that swept the journal).
//!
//! Network, all inside the guest (which has no network device of its own):
//!
//! ```text
//! tgt t1 10.201.1.1/24 fd00:201:1::1/64 ── p1 pa: 10.201.1.2 10.201.1.3 fd00:201:1::2 fd00:201:1::3
//! tgt t2 10.201.2.1/24                  ── p2 pb: 10.201.2.2
//! ```
//!
//! Every command runs as an argument vector (the real ip/tc/nft under
//! /lab/bin, busybox applets by `/bin/busybox NAME`): no shell anywhere,
//! as in the agent itself.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const IP: &str = "/lab/bin/ip";
const TC: &str = "/lab/bin/tc";
const NFT: &str = "/lab/bin/nft";
const UNSHARE: &str = "/lab/bin/unshare";
const AGENT: &str = "/lab/bin/faultline-agent";
const FAULTLINE: &str = "/lab/bin/faultline";
const BUSYBOX: &str = "/bin/busybox";
const DESIRED: &str = "/tmp/desired.yaml";
const STATE: &str = "/tmp/agent-state";
const LOG: &str = "/tmp/agent.log";
const DELAYED: &str = "10.201.1.2";
const SAME_LINK: &str = "10.201.1.3";
const OTHER_LINK: &str = "10.201.2.2";
const DELAYED6: &str = "fd00:201:1::2";
const SAME_LINK6: &str = "fd00:201:1::3";
const ALL: [&str; 5] = [DELAYED, SAME_LINK, OTHER_LINK, DELAYED6, SAME_LINK6];

/// Runs a command; true when it exits 0. Its output is discarded; a
/// failure is noted on the console for people reading it.
fn run(argv: &[&str]) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            println!(
                "# {} ({}): {}",
                argv.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("# {}: {e}", argv.join(" "));
            false
        }
    }
}

/// A command's stdout (empty when it cannot run).
fn output(argv: &[&str]) -> String {
    let Some((program, args)) = argv.split_first() else {
        return String::new();
    };
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn in_tgt<'a>(argv: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![IP, "netns", "exec", "tgt"];
    v.extend_from_slice(argv);
    v
}

fn out(line: &str) {
    println!("FLTLAB {line}");
}

fn check(name: &str, detail: &str, ok: bool) {
    out(&format!(
        "check name={name} {} detail={detail}",
        if ok { "ok" } else { "fail" }
    ));
}

/// Lines for people reading the console, not for the parser.
fn info(label: &str, text: &str) {
    for line in text.lines() {
        println!("# {label}: {line}");
    }
}

fn stamp(what: &str) {
    let up = fs::read_to_string("/proc/uptime").unwrap_or_default();
    println!("# t={} {what}", up.split_whitespace().next().unwrap_or("?"));
}

/// `fltlab.NAME=N` from the kernel command line.
fn arg(name: &str) -> Option<u64> {
    let cmdline = fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("fltlab.{name}="))?.parse().ok())
}

fn setup_filesystems() {
    // /dev first, with the console inherited: `run` opens /dev/null, which
    // only exists once devtmpfs is mounted.
    let dev = Command::new(BUSYBOX)
        .args(["mount", "-t", "devtmpfs", "dev", "/dev"])
        .status();
    if !dev.as_ref().is_ok_and(|s| s.success()) {
        println!("# cannot mount /dev: {dev:?}");
    }
    for (kind, what, at) in [
        ("proc", "proc", "/proc"),
        ("sysfs", "sys", "/sys"),
        ("tmpfs", "tmp", "/tmp"),
        ("tmpfs", "run", "/run"),
    ] {
        run(&[BUSYBOX, "mount", "-t", kind, what, at]);
    }
    // udev's links, for programs that open /dev/stdin and the like.
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, link);
    }
    let _ = fs::create_dir_all("/run/netns");
    let _ = fs::create_dir_all("/sys/fs/cgroup");
    // nsdelegate, as systemd mounts it: cgroup namespaces are delegation
    // boundaries, as on the nodes the agent runs on.
    run(&[
        BUSYBOX,
        "mount",
        "-t",
        "cgroup2",
        "-o",
        "nsdelegate",
        "cgroup2",
        "/sys/fs/cgroup",
    ]);
}

fn netup() -> bool {
    let steps: &[&[&str]] = &[
        &[IP, "netns", "add", "tgt"],
        &[IP, "netns", "add", "pa"],
        &[IP, "netns", "add", "pb"],
        &[
            IP, "link", "add", "t1", "netns", "tgt", "type", "veth", "peer", "name", "p1", "netns",
            "pa",
        ],
        &[
            IP, "link", "add", "t2", "netns", "tgt", "type", "veth", "peer", "name", "p2", "netns",
            "pb",
        ],
        &[IP, "-n", "tgt", "addr", "add", "10.201.1.1/24", "dev", "t1"],
        &[IP, "-n", "tgt", "addr", "add", "10.201.2.1/24", "dev", "t2"],
        &[IP, "-n", "pa", "addr", "add", "10.201.1.2/24", "dev", "p1"],
        &[IP, "-n", "pa", "addr", "add", "10.201.1.3/24", "dev", "p1"],
        &[IP, "-n", "pb", "addr", "add", "10.201.2.2/24", "dev", "p2"],
        &[
            IP,
            "-n",
            "tgt",
            "addr",
            "add",
            "fd00:201:1::1/64",
            "dev",
            "t1",
            "nodad",
        ],
        &[
            IP,
            "-n",
            "pa",
            "addr",
            "add",
            "fd00:201:1::2/64",
            "dev",
            "p1",
            "nodad",
        ],
        &[
            IP,
            "-n",
            "pa",
            "addr",
            "add",
            "fd00:201:1::3/64",
            "dev",
            "p1",
            "nodad",
        ],
    ];
    let links = [
        ("tgt", "t1"),
        ("tgt", "t2"),
        ("pa", "p1"),
        ("pb", "p2"),
        ("tgt", "lo"),
        ("pa", "lo"),
        ("pb", "lo"),
    ];
    steps.iter().all(|s| run(s))
        && links
            .iter()
            .all(|(ns, dev)| run(&[IP, "-n", ns, "link", "set", dev, "up"]))
}

fn reachable(dst: &str) -> bool {
    run(&in_tgt(&[
        BUSYBOX, "ping", "-c", "2", "-i", "0.2", "-W", "1", "-w", "3", dst,
    ]))
}

fn qdiscs() -> String {
    output(&[TC, "-n", "tgt", "qdisc", "show"])
}

fn ruleset() -> String {
    output(&in_tgt(&[NFT, "list", "ruleset"]))
}

/// A `netem … delay Nms` line in `tc qdisc show` output.
fn netem_delay(show: &str, delay_ms: u64) -> bool {
    let want = format!("delay {delay_ms}ms");
    show.lines()
        .any(|l| l.contains("netem") && l.contains(&want))
}

fn has_table() -> bool {
    ruleset().contains("table inet faultline")
}

/// `samples` pings from the target, one line per reply.
fn rtt(phase: &str, dst: &str, samples: u64) {
    // The neighbour entry first, so no sample pays for it.
    run(&in_tgt(&[BUSYBOX, "ping", "-c", "1", "-W", "2", dst]));
    let n = samples.to_string();
    let replies = output(&in_tgt(&[
        BUSYBOX, "ping", "-c", &n, "-i", "0.05", "-W", "3", dst,
    ]));
    for line in replies.lines() {
        if let Some(ms) = line
            .split_once("time=")
            .and_then(|(_, r)| r.split_whitespace().next())
        {
            out(&format!("rtt phase={phase} dst={dst} ms={ms}"));
        }
    }
}

fn rtt_all(phase: &str, samples: u64) {
    for d in ALL {
        rtt(phase, d, samples);
    }
}

/// The desired file, replaced atomically, with these fault entries.
fn desired(entries: &[String]) {
    let mut doc =
        "apiVersion: faultline.dev/v1alpha1\nkind: NodeFaults\nmetadata: {name: kernel-lab}\nspec:\n"
            .to_owned();
    if entries.is_empty() {
        doc.push_str("  faults: []\n");
    } else {
        doc.push_str("  faults:\n");
        for e in entries {
            doc.push_str(e);
        }
    }
    let tmp = format!("{DESIRED}.tmp");
    if fs::write(&tmp, doc).is_ok() {
        let _ = fs::rename(&tmp, DESIRED);
    }
}

struct Faults {
    expires: String,
    delay_ms: u64,
}

impl Faults {
    fn entry(&self, id: &str, action: &str) -> String {
        format!(
            "    - id: {id}\n      target: {{netns: /run/netns/tgt}}\n      expiresAt: \"{}\"\n      {action}\n",
            self.expires
        )
    }
    fn latency_to(&self, id: &str) -> String {
        let d = self.delay_ms;
        self.entry(
            id,
            &format!("latency: {{delay: {d}ms, to: [\"{DELAYED}/32\"]}}"),
        )
    }
    fn latency_dual(&self, id: &str) -> String {
        let d = self.delay_ms;
        self.entry(
            id,
            &format!("latency: {{delay: {d}ms, to: [\"{DELAYED}/32\", \"{DELAYED6}/128\"]}}"),
        )
    }
    /// Latency of `delay_ms` to these destinations only.
    fn latency_of(&self, id: &str, delay_ms: u64, to: &[&str]) -> String {
        let to: Vec<String> = to.iter().map(|d| format!("\"{d}\"")).collect();
        self.entry(
            id,
            &format!("latency: {{delay: {delay_ms}ms, to: [{}]}}", to.join(", ")),
        )
    }
    fn latency_all(&self, id: &str) -> String {
        let d = self.delay_ms;
        self.entry(id, &format!("latency: {{delay: {d}ms}}"))
    }
    /// A network fault with these settings (a flow mapping's inside) to
    /// `dst` only.
    fn network_to(&self, id: &str, settings: &str, dst: &str) -> String {
        self.entry(id, &format!("network: {{{settings}, to: [\"{dst}/32\"]}}"))
    }
    fn partition(&self, id: &str) -> String {
        self.entry(id, &format!("partition: {{peers: [\"{OTHER_LINK}/32\"]}}"))
    }
}

/// busybox ping's summary: (transmitted, received, duplicates).
fn ping_summary(text: &str) -> Option<(u64, u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let before = |what: &str| -> Option<u64> {
        let at = line.find(what)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    Some((
        before("packets transmitted")?,
        before("packets received")?,
        before("duplicates").unwrap_or(0),
    ))
}

/// `count` pings from the target to `dst`, `interval` seconds apart.
fn ping_stats(dst: &str, count: u64, interval: &str) -> Option<(u64, u64, u64)> {
    run(&in_tgt(&[BUSYBOX, "ping", "-c", "1", "-W", "2", dst]));
    let n = count.to_string();
    ping_summary(&output(&in_tgt(&[
        BUSYBOX, "ping", "-q", "-c", &n, "-i", interval, "-W", "3", dst,
    ])))
}

/// A namespace's `/proc/net/snmp` counters, as `Icmp.InCsumErrors` → n,
/// read by a thread inside it (a thread's `net` is its own namespace's).
fn snmp(ns: &'static str) -> std::collections::BTreeMap<String, u64> {
    let text = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/snmp").ok())
        .join()
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) =
            (names.split_once(": "), values.split_once(": "))
        else {
            continue;
        };
        for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{proto}.{k}"), v);
            }
        }
    }
    out
}

/// Runs `f` on a thread of its own inside network namespace `ns`
/// (sockets it opens live there).
fn in_netns<T: Send + 'static>(
    ns: &'static str,
    f: impl FnOnce() -> Option<T> + Send + 'static,
) -> std::thread::JoinHandle<Option<T>> {
    std::thread::spawn(move || {
        let file = fs::File::open(format!("/run/netns/{ns}")).ok()?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .ok()?;
        f()
    })
}

/// TCP goodput from the target to `dst` in bits per second: a sender in
/// the target writes as fast as it can; the receiver in `pa` counts what
/// arrives over `secs` seconds after one of warm-up (slow start).
fn tcp_goodput(dst: &'static str, secs: u64) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    const PORT: u16 = 5001;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = in_netns("pa", move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", PORT)).ok()?;
        let _ = ready_tx.send(());
        let (mut conn, _) = listener.accept().ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let start = std::time::Instant::now();
        let (warm, end) = (Duration::from_secs(1), Duration::from_secs(1 + secs));
        let mut counted = 0u64;
        let mut since = None;
        while start.elapsed() < end {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            if start.elapsed() >= warm {
                since.get_or_insert_with(std::time::Instant::now);
                counted += n as u64;
            }
        }
        let took = since?.elapsed().as_secs_f64();
        Some(counted as f64 * 8.0 / took)
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).ok()?;
    let source = in_netns("tgt", move || {
        let mut conn = std::net::TcpStream::connect((dst, PORT)).ok()?;
        let chunk = vec![0u8; 64 * 1024];
        let start = std::time::Instant::now();
        // Until the receiver hangs up (or long after it should have).
        while start.elapsed() < Duration::from_secs(secs + 10) {
            if conn.write_all(&chunk).is_err() {
                break;
            }
        }
        Some(())
    });
    let got = sink.join().ok()?;
    let _ = source.join();
    got
}

fn start_agent() -> Option<Child> {
    launch_agent(AGENT, &[])
}

/// The agent as in a container under cgroup v2: in a cgroup of its own
/// (`AGENT_CG`) and in a cgroup namespace rooted there, from which the
/// kernel refuses moves into other cgroups unless the mover enters the
/// node's namespace first. This program sets that up and execs the agent
/// (see `IN_OWN_CGROUPNS`).
fn start_agent_in_own_cgroupns() -> Option<Child> {
    fs::create_dir_all(AGENT_CG).ok()?;
    launch_agent("/proc/self/exe", &[IN_OWN_CGROUPNS, AGENT])
}

/// `PROGRAM BEFORE… standalone …`, the agent's arguments after `before`;
/// its log appended to `LOG`.
fn launch_agent(program: &str, before: &[&str]) -> Option<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOG)
        .ok()?;
    Command::new(program)
        .args(before)
        .args([
            "standalone",
            "--desired",
            DESIRED,
            "--state-dir",
            STATE,
            "--poll-ms",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ok()
}

/// `/init IN_OWN_CGROUPNS PROGRAM ARGS…`: joins `AGENT_CG`, then becomes
/// util-linux `unshare --cgroup PROGRAM ARGS…`, whose new cgroup namespace
/// is rooted there.
const IN_OWN_CGROUPNS: &str = "--in-own-cgroupns";

fn exec_in_own_cgroupns(program: &str, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    if let Err(e) = fs::write(format!("{AGENT_CG}/cgroup.procs"), "0") {
        return e;
    }
    Command::new(UNSHARE)
        .arg("--cgroup")
        .arg(program)
        .args(args)
        .exec()
}

/// Waits up to 10 s for the agent to log `text`.
fn logged(text: &str) -> bool {
    for _ in 0..100 {
        if fs::read_to_string(LOG).is_ok_and(|l| l.contains(text)) {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    false
}

/// Whether the agent has logged `text` so far (no waiting).
fn logged_now(text: &str) -> bool {
    fs::read_to_string(LOG).is_ok_and(|l| l.contains(text))
}

/// The count of the agent's last `ID: effect: N UNIT` log line.
fn effect_logged(id: &str, unit: &str) -> Option<u64> {
    let prefix = format!("{id}: effect: ");
    if !logged(&prefix) {
        return None;
    }
    let log = fs::read_to_string(LOG).ok()?;
    log.lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(unit).map(|(n, _)| n.trim().parse().ok()))
        .next_back()
        .flatten()
}

fn sigterm(agent: &mut Child) -> Option<i32> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(agent.id()).ok()?)?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).ok()?;
    agent.wait().ok()?.code()
}

fn same_qdiscs(before: &str) -> bool {
    qdiscs() == before
}

fn bench(f: &Faults, n: u64) {
    stamp("bench");
    desired(&[]);
    let agent = start_agent();
    check(
        "bench-agent",
        "the agent started",
        agent.is_some() && logged("started:"),
    );
    let now_us = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    };
    for i in 1..=n {
        out(&format!("bench i={i} op=apply at_us={}", now_us()));
        desired(&[f.latency_to(&format!("b{i}"))]);
        if !logged(&format!("b{i}: applied latency")) {
            check(&format!("bench-apply-{i}"), "never applied", false);
        }
        out(&format!("bench i={i} op=remove at_us={}", now_us()));
        desired(&[]);
        if !logged(&format!("b{i}: removed latency")) {
            check(&format!("bench-remove-{i}"), "never removed", false);
        }
    }
    if let Some(mut a) = agent {
        let _ = sigterm(&mut a);
    }
    for line in fs::read_to_string(LOG).unwrap_or_default().lines() {
        out(&format!("agentlog {line}"));
    }
}

fn scenarios(f: &Faults, samples: u64) {
    let d = f.delay_ms;
    let before = qdiscs();
    info("qdisc before", &before);

    stamp("baseline");
    rtt_all("baseline", samples);

    // Latency to one destination.
    desired(&[f.latency_to("lat-to")]);
    let mut agent = start_agent();
    check(
        "agent-applied-to",
        "the agent logged lat-to: applied latency",
        logged("lat-to: applied latency"),
    );
    check(
        "netem-present-to",
        &format!("tc shows netem delay {d}ms in the target"),
        netem_delay(&qdiscs(), d),
    );
    info("qdisc with lat-to", &qdiscs());
    info(
        "filters on t1",
        &output(&[TC, "-n", "tgt", "filter", "show", "dev", "t1"]),
    );
    stamp("to");
    rtt_all("to", samples);
    desired(&[]);
    check(
        "agent-removed-to",
        "the agent logged lat-to: removed latency",
        logged("lat-to: removed latency"),
    );
    // Every echo request to the delayed peer went through its netem.
    let delayed = effect_logged("lat-to", "packets delayed");
    check(
        "latency-effect-to",
        &format!("the agent counted at least {samples} packets delayed: {delayed:?}"),
        delayed.is_some_and(|n| n >= samples),
    );
    check(
        "qdisc-restored-to",
        "tc qdisc show equals what was there before lat-to",
        same_qdiscs(&before),
    );
    stamp("restored");
    rtt_all("restored", samples);

    // Latency to every destination, on every interface; an interface made
    // while it is active is covered at the next refresh (every 2 s).
    desired(&[f.latency_all("lat-all")]);
    check(
        "agent-applied-all",
        "the agent logged lat-all: applied latency",
        logged("lat-all: applied latency"),
    );
    check(
        "netem-present-all",
        &format!("tc shows netem delay {d}ms in the target"),
        netem_delay(&qdiscs(), d),
    );
    stamp("all");
    rtt_all("all", samples);
    let new_link = run(&[IP, "netns", "add", "pc"])
        && run(&[
            IP, "link", "add", "t3", "netns", "tgt", "type", "veth", "peer", "name", "p3", "netns",
            "pc",
        ])
        && run(&[IP, "-n", "tgt", "link", "set", "t3", "up"])
        && run(&[IP, "-n", "pc", "link", "set", "p3", "up"]);
    check(
        "agent-refreshed-all",
        "the agent logged lat-all: latency extended to interfaces created since",
        new_link && logged("lat-all: latency extended to interfaces created since"),
    );
    check(
        "netem-on-new-interface",
        &format!("tc shows netem delay {d}ms on t3, created after lat-all"),
        netem_delay(&output(&[TC, "-n", "tgt", "qdisc", "show", "dev", "t3"]), d),
    );
    run(&[IP, "-n", "tgt", "link", "del", "t3"]);
    run(&[IP, "netns", "del", "pc"]);
    desired(&[]);
    check(
        "agent-removed-all",
        "the agent logged lat-all: removed latency",
        logged("lat-all: removed latency"),
    );
    check(
        "qdisc-restored-all",
        "tc qdisc show equals what was there before lat-all",
        same_qdiscs(&before),
    );

    // One IPv4 and one IPv6 destination (the kernel wants one filter prio
    // per protocol).
    desired(&[f.latency_dual("lat-dual")]);
    check(
        "agent-applied-dual",
        "the agent logged lat-dual: applied latency",
        logged("lat-dual: applied latency"),
    );
    info(
        "filters on t1",
        &output(&[TC, "-n", "tgt", "filter", "show", "dev", "t1"]),
    );
    stamp("dual");
    rtt_all("dual", samples);
    desired(&[]);
    check(
        "agent-removed-dual",
        "the agent logged lat-dual: removed latency",
        logged("lat-dual: removed latency"),
    );
    check(
        "qdisc-restored-dual",
        "tc qdisc show equals what was there before lat-dual",
        same_qdiscs(&before),
    );

    // Two latency faults on one target with different `to` sets (and
    // delays) coexist, on the same interface; removing one leaves the other.
    let pair_a = f.latency_of("lat-pair-a", d, &[&format!("{DELAYED}/32")]);
    let pair_b = f.latency_of(
        "lat-pair-b",
        (d / 2).max(1),
        &[&format!("{SAME_LINK}/32"), &format!("{SAME_LINK6}/128")],
    );
    desired(&[pair_a, pair_b.clone()]);
    check(
        "agent-applied-pair",
        "the agent logged lat-pair-a and lat-pair-b: applied latency",
        logged("lat-pair-a: applied latency") && logged("lat-pair-b: applied latency"),
    );
    info("qdisc with the pair", &qdiscs());
    info(
        "filters on t1",
        &output(&[TC, "-n", "tgt", "filter", "show", "dev", "t1"]),
    );
    stamp("pair");
    rtt_all("pair", samples);
    desired(&[pair_b]);
    check(
        "agent-removed-pair-a",
        "the agent logged lat-pair-a: removed latency",
        logged("lat-pair-a: removed latency"),
    );
    stamp("pair-one");
    rtt_all("pair-one", samples);
    desired(&[]);
    check(
        "agent-removed-pair-b",
        "the agent logged lat-pair-b: removed latency",
        logged("lat-pair-b: removed latency"),
    );
    check(
        "qdisc-restored-pair",
        "tc qdisc show equals what was there before the pair",
        same_qdiscs(&before),
    );

    // A root qdisc someone else configured is refused, and what was done on
    // the other interface before the refusal is undone.
    run(&[
        TC, "-n", "tgt", "qdisc", "add", "dev", "t2", "root", "handle", "1:", "pfifo",
    ]);
    let foreign = qdiscs();
    desired(&[f.latency_all("lat-foreign")]);
    check(
        "foreign-refused",
        "the agent refused lat-foreign (t2 has root pfifo 1:)",
        logged("lat-foreign: cannot apply latency: interface t2 has root qdisc pfifo 1:"),
    );
    desired(&[]);
    sleep(Duration::from_secs(1)); // a retry in flight finishes (apply, then its undo)
    check(
        "foreign-untouched",
        "tc qdisc show unchanged: nothing left on t1, pfifo 1: kept on t2",
        same_qdiscs(&foreign),
    );
    run(&[TC, "-n", "tgt", "qdisc", "del", "dev", "t2", "root"]);

    // Partition (nftables over netlink).
    stamp("partition");
    check(
        "partition-baseline",
        &format!("{OTHER_LINK} reachable before the partition"),
        reachable(OTHER_LINK),
    );
    desired(&[f.partition("part")]);
    check(
        "agent-applied-partition",
        "the agent logged part: applied partition",
        logged("part: applied partition"),
    );
    check(
        "partition-table",
        "table inet faultline exists in the target",
        has_table(),
    );
    for (name, dir) in [
        ("partition-rule-in", "saddr"),
        ("partition-rule-out", "daddr"),
    ] {
        // The counter's figures vary: only its place in the rule is checked.
        let (head, tail) = (
            format!("ip {dir} {OTHER_LINK} counter packets "),
            " drop comment \"faultline part\"",
        );
        check(
            name,
            &format!("nft lists {head}N bytes N{tail}"),
            ruleset()
                .lines()
                .any(|l| l.trim().starts_with(&head) && l.trim_end().ends_with(tail)),
        );
    }
    check(
        "partition-cuts",
        &format!("{OTHER_LINK} unreachable while partitioned"),
        !reachable(OTHER_LINK),
    );
    check(
        "partition-scoped",
        &format!("{DELAYED} still reachable while {OTHER_LINK} is partitioned"),
        reachable(DELAYED),
    );
    desired(&[]);
    check(
        "agent-removed-partition",
        "the agent logged part: removed partition",
        logged("part: removed partition"),
    );
    let dropped = effect_logged("part", "packets dropped");
    check(
        "partition-effect",
        &format!("the agent counted the probes it dropped: {dropped:?}"),
        dropped.is_some_and(|n| n > 0),
    );
    check(
        "partition-table-gone",
        "no table inet faultline after removal",
        !has_table(),
    );
    check(
        "partition-healed",
        &format!("{OTHER_LINK} reachable after removal"),
        reachable(OTHER_LINK),
    );

    network(f);
    stress(&mut agent);

    // Crash recovery: SIGKILL with latency, network and partition faults
    // applied, nothing desired any more, restart with the same state
    // directory.
    stamp("crash");
    desired(&[
        f.latency_to("crash-lat"),
        f.partition("crash-part"),
        f.network_to("crash-net", "loss: 5%, rate: 10mbit", SAME_LINK),
    ]);
    check(
        "crash-applied-latency",
        "the agent logged crash-lat: applied latency",
        logged("crash-lat: applied latency"),
    );
    check(
        "crash-applied-partition",
        "the agent logged crash-part: applied partition",
        logged("crash-part: applied partition"),
    );
    check(
        "crash-applied-network",
        "the agent logged crash-net: applied network",
        logged("crash-net: applied network"),
    );
    if let Some(a) = agent.as_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    check(
        "crash-left-netem",
        "SIGKILL left the netem qdisc, as a crash does",
        qdiscs().contains("netem"),
    );
    check(
        "crash-left-table",
        "SIGKILL left table inet faultline, as a crash does",
        has_table(),
    );
    desired(&[]);
    agent = start_agent();
    check(
        "crash-restart-swept",
        "the restarted agent removed all three from its journal first",
        logged("started: 3 fault(s) in the journal, 3 stale removed before anything else"),
    );
    check(
        "crash-no-netem",
        "no netem qdisc left after the restart",
        !qdiscs().contains("netem"),
    );
    check(
        "crash-qdisc-restored",
        "tc qdisc show equals what was there before any fault",
        same_qdiscs(&before),
    );
    check(
        "crash-no-table",
        "no table inet faultline left after the restart",
        !has_table(),
    );
    check(
        "crash-peer-reachable",
        &format!("{OTHER_LINK} reachable after the restart"),
        reachable(OTHER_LINK),
    );
    rtt("recovered", DELAYED, samples);
    rtt("recovered", DELAYED6, samples);

    let rc = agent.as_mut().and_then(sigterm);
    check(
        "agent-sigterm",
        &format!("the agent exits 0 on SIGTERM (exit {rc:?})"),
        rc == Some(0),
    );
    bulkhead();
    info("lsmod", &output(&[BUSYBOX, "lsmod"]));
    info("agent log", &fs::read_to_string(LOG).unwrap_or_default());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, program, rest @ ..] = args.as_slice()
        && mode == IN_OWN_CGROUPNS
    {
        let e = exec_in_own_cgroupns(program, rest);
        // Into the agent's log, which the lab prints at its end (this
        // process's console output goes nowhere).
        if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(LOG) {
            let _ = writeln!(
                log,
                "cannot start {program} in its own cgroup namespace: {e}"
            );
        }
        std::process::exit(1);
    }
    setup_filesystems();
    let delay_ms = arg("delay_ms").unwrap_or(50);
    let samples = arg("samples").unwrap_or(20);
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let faults = Faults { expires, delay_ms };

    stamp("init");
    out(&format!("config delay_ms={delay_ms} samples={samples}"));
    check(
        "net-setup",
        "three namespaces joined by two veth pairs",
        netup(),
    );
    info("kernel", &output(&[BUSYBOX, "uname", "-r"]));
    match arg("bench") {
        Some(n) if n > 0 => bench(&faults, n),
        _ => scenarios(&faults, samples),
    }
    stamp("done");
    out("done");
    let _ = std::io::stdout().flush();
    run(&[BUSYBOX, "sync"]);
    run(&[BUSYBOX, "poweroff", "-f"]);
    // PID 1 must not exit (the kernel would panic); poweroff ends us.
    loop {
        sleep(Duration::from_secs(60));
    }
}

/// Network faults measured: loss, duplication and corruption over 2 000
/// pings each (counted at the receiver), a bandwidth limit over TCP, each
/// scoped to one destination; gone on removal and at expiry.
fn network(f: &Faults) {
    stamp("network");
    const PINGS: u64 = 2000;
    let share = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;

    desired(&[f.network_to("net-loss", "loss: 10%", DELAYED)]);
    check(
        "network-applied",
        "the agent logged net-loss: applied network",
        logged("net-loss: applied network"),
    );
    let lossy = ping_stats(DELAYED, PINGS, "0.002");
    let lost = lossy.map(|(sent, got, _)| share(sent - got.min(sent), sent));
    info("network loss", &format!("{lossy:?} → {lost:?} %"));
    check(
        "network-loss-measured",
        &format!("10% loss to {DELAYED}: {lost:?} % of {PINGS} pings lost (7 to 13)"),
        lossy.is_some_and(|(sent, _, _)| sent >= PINGS)
            && lost.is_some_and(|l| (7.0..=13.0).contains(&l)),
    );
    let spared = ping_stats(SAME_LINK, 200, "0.002");
    check(
        "network-loss-scoped",
        &format!("{SAME_LINK}, on the same link, loses nothing: {spared:?}"),
        spared.is_some_and(|(sent, got, _)| sent == 200 && got == 200),
    );

    desired(&[f.network_to("net-dup", "duplicate: 20%, corrupt: 10%", DELAYED)]);
    check(
        "network-replaced",
        "the agent logged net-dup: applied network",
        logged("net-dup: applied network") && logged("net-loss: removed network"),
    );
    let before = snmp("pa");
    let stats = ping_stats(DELAYED, PINGS, "0.002");
    let after = snmp("pa");
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let echoes = grew("Icmp.InEchos");
    // A flipped bit fails the IP header's checksum or the ICMP one (or
    // lands in the Ethernet header, where no counter sees it).
    let corrupted = grew("Icmp.InCsumErrors") + grew("Ip.InHdrErrors") + grew("Ip.InAddrErrors");
    info(
        "network duplicate+corrupt",
        &format!("ping {stats:?}, receiver: {echoes} echo requests, {corrupted} failed checksums"),
    );
    // What arrived: the good echo requests and the corrupted ones.
    let arrived = echoes + corrupted;
    let dups = share(arrived.saturating_sub(PINGS), PINGS);
    check(
        "network-duplicate-counted",
        &format!(
            "20% duplication: {dups:.1} % more packets arrived at the receiver than were sent (12 to 28)"
        ),
        (12.0..=28.0).contains(&dups),
    );
    let bad = share(corrupted, arrived);
    check(
        "network-corrupt-counted",
        &format!(
            "10% corruption: {bad:.1} % of what arrived failed a checksum at the receiver (4 to 13)"
        ),
        (4.0..=13.0).contains(&bad),
    );

    let baseline = tcp_goodput(SAME_LINK, 3);
    desired(&[f.network_to("net-rate", "rate: 1mbit", DELAYED)]);
    check(
        "network-rate-applied",
        "the agent logged net-rate: applied network",
        logged("net-rate: applied network"),
    );
    let limited = tcp_goodput(DELAYED, 5);
    let free = tcp_goodput(SAME_LINK, 3);
    info(
        "network rate",
        &format!(
            "1mbit to {DELAYED}: {limited:?} bit/s; {SAME_LINK}: {free:?} bit/s (before: {baseline:?})"
        ),
    );
    check(
        "network-rate-measured",
        &format!("TCP goodput under rate 1mbit: {limited:?} bit/s (850 000 to 1 150 000)"),
        limited.is_some_and(|b| (850_000.0..=1_150_000.0).contains(&b)),
    );
    check(
        "network-rate-scoped",
        &format!("{SAME_LINK} keeps its speed: {free:?} bit/s, over 5 times the limit"),
        free.is_some_and(|b| b > 5_000_000.0),
    );
    desired(&[]);
    check(
        "network-removed",
        "the agent logged net-rate: removed network, no netem left",
        logged("net-rate: removed network") && !qdiscs().contains("netem"),
    );

    // At its expiry the agent takes it away by itself.
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let expiring = Faults {
        expires: soon,
        delay_ms: f.delay_ms,
    };
    desired(&[expiring.network_to("net-expiring", "loss: 50%", DELAYED)]);
    check(
        "network-expiring-applied",
        "the agent logged net-expiring: applied network",
        logged("net-expiring: applied network"),
    );
    check(
        "network-expired",
        "at its expiry the agent removed it: no netem left",
        logged("net-expiring: removed network") && !qdiscs().contains("netem"),
    );
    desired(&[]);
}

/// Where the stress scenario's cgroups live.
const APP_CG: &str = "/sys/fs/cgroup/lab-app";
const SMALL_CG: &str = "/sys/fs/cgroup/lab-small";
const AGENT_CG: &str = "/sys/fs/cgroup/lab-agent";

fn stress_entry(id: &str, cgroup: &str, expires: &str, stress: &str) -> String {
    format!(
        "    - id: {id}\n      target: {{cgroup: {cgroup}}}\n      expiresAt: \"{expires}\"\n      stress: {stress}\n"
    )
}

fn in_ten_minutes() -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(600))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The processes of a cgroup, as the kernel lists them.
fn procs_of(cg: &str) -> Vec<u32> {
    fs::read_to_string(format!("{cg}/cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Processes of `cg` running the agent's binary: stress workers.
fn workers_in(cg: &str) -> usize {
    procs_of(cg)
        .into_iter()
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(&b"stress-worker"[..]))
        })
        .count()
}

/// Waits up to `secs` for `cond`.
fn within(secs: u64, cond: impl Fn() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    cond()
}

/// Stress faults in real cgroup v2 groups of the stock kernel: CPU load
/// measured in cpu.stat, memory in memory.current, the OOM killer under a
/// memory.max, and no worker left after removal, expiry, or an agent SIGKILL.
fn stress(agent: &mut Option<Child>) {
    stamp("stress");
    let cgroups = fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory")
        .and_then(|()| fs::create_dir_all(APP_CG))
        .and_then(|()| fs::create_dir_all(SMALL_CG))
        .and_then(|()| fs::write(format!("{SMALL_CG}/memory.max"), "33554432"))
        .and_then(|()| fs::write(format!("{SMALL_CG}/memory.swap.max"), "0").or(Ok(())));
    // The target's own process, as a pod's would be.
    let app = Command::new(BUSYBOX)
        .args(["sleep", "3600"])
        .stdin(Stdio::null())
        .spawn();
    let joined = app
        .as_ref()
        .is_ok_and(|a| fs::write(format!("{APP_CG}/cgroup.procs"), a.id().to_string()).is_ok());
    check(
        "stress-cgroups",
        &format!(
            "cgroups {APP_CG} and {SMALL_CG} (memory.max 32Mi) with cpu and memory: {cgroups:?}, app joined: {joined}"
        ),
        cgroups.is_ok() && joined,
    );
    let expires = in_ten_minutes();
    let cpu = || {
        stress_entry(
            "stress-cpu",
            APP_CG,
            &expires,
            "{cpu: {workers: 1, load: 50%}}",
        )
    };

    desired(&[cpu()]);
    check(
        "stress-cpu-applied",
        "the agent logged stress-cpu: applied stress, one worker in the cgroup",
        logged("stress-cpu: applied stress") && workers_in(APP_CG) == 1,
    );
    let usage = || faultline_stress::cgroup::cpu_usage_usec(std::path::Path::new(APP_CG)).ok();
    let t0 = std::time::Instant::now();
    let u0 = usage();
    sleep(Duration::from_secs(5));
    let u1 = usage();
    let secs = t0.elapsed().as_secs_f64();
    let load = u0
        .zip(u1)
        .map(|(a, b)| (b.saturating_sub(a)) as f64 / 1e6 / secs * 100.0);
    info(
        "stress cpu",
        &format!("{u0:?} → {u1:?} µs over {secs:.2} s: {load:?} % of a core"),
    );
    check(
        "stress-cpu-measured",
        &format!(
            "load 50% with one worker: the cgroup used {load:?} % of a core over 5 s (40 to 60)"
        ),
        load.is_some_and(|l| (40.0..=60.0).contains(&l)),
    );

    desired(&[
        cpu(),
        stress_entry("stress-mem", APP_CG, &expires, "{memory: {size: 64Mi}}"),
    ]);
    let current =
        || faultline_stress::cgroup::memory_current(std::path::Path::new(APP_CG)).unwrap_or(0);
    let held = within(10, || current() >= 64 << 20);
    check(
        "stress-memory-measured",
        &format!(
            "64Mi of memory stress: memory.current {} MiB (at least 64)",
            current() >> 20
        ),
        logged("stress-mem: applied stress") && held,
    );
    desired(&[cpu()]);
    let freed = within(10, || current() < 32 << 20);
    check(
        "stress-memory-removed",
        &format!(
            "removed: memory.current back to {} MiB, one worker left (the CPU one)",
            current() >> 20
        ),
        logged("stress-mem: removed stress") && freed && workers_in(APP_CG) == 1,
    );

    desired(&[
        cpu(),
        stress_entry("stress-oom", SMALL_CG, &expires, "{memory: {size: 64Mi}}"),
    ]);
    let ooms = || faultline_stress::cgroup::oom_kills(std::path::Path::new(SMALL_CG));
    check(
        "stress-oom-killed",
        &format!(
            "64Mi in a cgroup of memory.max 32Mi: the OOM killer took the worker (oom_kill {:?}) and the agent said so",
            ooms()
        ),
        logged("stress-oom: stress workers OOM-killed") && ooms().is_some_and(|n| n >= 1),
    );
    check(
        "stress-oom-not-restarted",
        "no worker in the small cgroup a few seconds on: an OOM-killed stress is not started again",
        logged("stress-oom: stress workers OOM-killed") && {
            sleep(Duration::from_secs(3));
            workers_in(SMALL_CG) == 0 && !logged_now("stress-oom: the stress worker ended early")
        },
    );

    // Crash: the worker goes with its agent; the next agent starts the
    // still-desired fault again and removes what is no longer desired.
    desired(&[cpu()]);
    let before_kill = workers_in(APP_CG);
    if let Some(a) = agent.as_mut() {
        let _ = a.kill();
        let _ = a.wait();
    }
    check(
        "stress-crash-stopped",
        &format!(
            "within 2 s of the agent's SIGKILL no stress worker is left ({before_kill} before)"
        ),
        before_kill == 1 && within(2, || workers_in(APP_CG) == 0),
    );
    // Restarted as in a container: its own cgroup and cgroup namespace.
    *agent = start_agent_in_own_cgroupns();
    let pid = agent.as_ref().map_or(0, Child::id);
    let ns = |pid: &str| {
        fs::metadata(format!("/proc/{pid}/ns/cgroup"))
            .ok()
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino()
            })
    };
    // Once the helper has exec'd into the agent.
    let own_ns = within(3, || {
        let mine = ns(&pid.to_string());
        mine.is_some() && mine != ns("1")
    });
    check(
        "stress-crash-restarted",
        &format!(
            "the agent, restarted in a cgroup namespace of its own ({own_ns}), starts the still-desired stress again in the target's cgroup within 5 s"
        ),
        own_ns && within(5, || workers_in(APP_CG) == 1),
    );
    desired(&[]);
    check(
        "stress-removed",
        "removed: no stress worker left in either cgroup, the app still runs",
        logged("stress-cpu: removed stress")
            && within(2, || workers_in(APP_CG) == 0 && workers_in(SMALL_CG) == 0)
            && app
                .as_ref()
                .is_ok_and(|a| procs_of(APP_CG).contains(&a.id())),
    );

    // At its expiry the worker stops by itself, and the agent removes it.
    let soon = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    desired(&[stress_entry(
        "stress-expiring",
        APP_CG,
        &soon,
        "{cpu: {workers: 2}}",
    )]);
    check(
        "stress-expiring-applied",
        "the agent logged stress-expiring: applied stress",
        logged("stress-expiring: applied stress") && workers_in(APP_CG) == 1,
    );
    check(
        "stress-expired",
        "at its expiry the agent removed it: no worker left",
        logged("stress-expiring: removed stress") && within(2, || workers_in(APP_CG) == 0),
    );
    desired(&[]);
    if let Ok(mut a) = app {
        let _ = a.kill();
        let _ = a.wait();
    }
}

/// The bulkhead of experiments/demo/payments-starved.yaml, run by the real
/// `faultline run --local` with payments under the CPU limit of
/// limited-topology.yaml: the run must pass, and payments' cgroup must
/// show the limit throttling it (else the pass proves nothing).
fn bulkhead() {
    stamp("bulkhead");
    let lo = run(&[IP, "link", "set", "lo", "up"]);
    let report = "/tmp/bulkhead.json";
    let log = "/tmp/bulkhead.log";
    let child = fs::File::create(log).and_then(|f| {
        let err = f.try_clone()?;
        Command::new(FAULTLINE)
            .args([
                "run",
                "/lab/demo/payments-starved.yaml",
                "--local",
                "/lab/demo/limited-topology.yaml",
                "--no-dashboard",
                "--json",
                report,
            ])
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(err)
            .spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            check(
                "bulkhead-passed",
                &format!("cannot start {FAULTLINE}: {e}"),
                false,
            );
            return;
        }
    };
    // payments' cgroup while the run lasts: its limit, and how often and
    // how long the limit held it back (the last reading before it went).
    let mut limit = String::new();
    let mut throttled: Option<(u64, u64)> = None;
    let mut status = None;
    for _ in 0..1800 {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        if let Some(cg) = payments_cgroup() {
            if let Ok(max) = fs::read_to_string(cg.join("cpu.max")) {
                limit = max.trim().to_owned();
            }
            let stat = fs::read_to_string(cg.join("cpu.stat")).unwrap_or_default();
            let field = |name: &str| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            if let (Some(n), Some(us)) = (field("nr_throttled "), field("throttled_usec ")) {
                throttled = Some((n, us));
            }
        }
        sleep(Duration::from_millis(100));
    }
    if status.is_none() {
        let _ = child.kill();
        status = child.wait().ok();
    }
    let said = fs::read_to_string(log).unwrap_or_default();
    info("bulkhead run", &said);
    let journal: serde_json::Value = fs::read(report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    // Each check's last figure against its threshold, and the workers' CPU.
    let figures: Vec<String> = journal["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}: {} ({})",
                c["name"].as_str().unwrap_or("?"),
                match &c["observed"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
                if c["passed"] == true {
                    "held"
                } else {
                    "failed"
                }
            )
        })
        .collect();
    let spent = journal["effects"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["fault"] == "starve-payments")
        .and_then(|e| e["count"].as_u64());
    let verdict = journal["verdict"].as_str().unwrap_or("none");
    check(
        "bulkhead-run-measured",
        &format!(
            "faultline run payments-starved.yaml --local limited-topology.yaml (lo up: {lo}) exited {status:?}, verdict {verdict}; {}; stress workers spent {spent:?} CPU-ms",
            figures.join("; ")
        ),
        status.is_some_and(|s| s.success())
            && verdict == "Passed"
            && figures.len() == 3
            && spent.is_some_and(|ms| ms > 0),
    );
    let seconds = throttled.map_or(0.0, |(_, us)| us as f64 / 1e6);
    info(
        "bulkhead payments",
        &format!("cpu.max {limit:?}, throttled {throttled:?} (periods, µs)"),
    );
    check(
        "bulkhead-throttled-measured",
        &format!(
            "payments' cgroup had cpu.max {limit:?} and was throttled {} times, {seconds:.1} s in all (at least 10 s of the 30 s stress)",
            throttled.map_or(0, |(n, _)| n)
        ),
        limit == "10000 100000" && seconds >= 10.0,
    );
    check(
        "bulkhead-no-cgroup-left",
        "no faultline-local cgroup is left after the run",
        payments_cgroup().is_none()
            && !fs::read_dir("/sys/fs/cgroup").is_ok_and(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("faultline-local-")
                })
            }),
    );
}

/// `faultline run --local`'s cgroup of payments, while a run has one.
fn payments_cgroup() -> Option<std::path::PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .ok()?
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("faultline-local-")
        })
        .map(|e| e.path().join("payments"))
        .filter(|p| p.exists())
}
