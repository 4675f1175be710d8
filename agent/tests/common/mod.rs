//! Helpers for kernel tests: network namespaces, cgroups and agent processes
//! that belong to one test and are cleaned up even when it fails.

#![allow(dead_code)]

use std::{
    fs::File,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (in this or another process) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{:x}{:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when this test can run: root, with `ip` and `nft`. In CI
/// (FAULTLINE_REQUIRE_PEERS set by scripts/test.sh) a missing piece fails
/// the test instead of skipping it.
pub fn kernel_ready() -> bool {
    let root = rustix::process::geteuid().is_root();
    let missing: Vec<&str> = [("root", root), ("ip", have("ip")), ("nft", have("nft"))]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n)
        .collect();
    if missing.is_empty() {
        return true;
    }
    faultline_testkit::skip_without_peer(&format!("kernel test needs {}", missing.join(", ")));
    false
}

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the network namespace file `ns`.
pub fn in_netns<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let file = File::open(&ns).expect("open netns");
        move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

pub const TARGET_IP: &str = "10.77.0.1";
pub const PEER_IP: &str = "10.77.0.2";

/// Two namespaces joined by a veth pair: the target (10.77.0.1) and a peer
/// (10.77.0.2). Their traffic never leaves them; both go on drop.
#[derive(Debug)]
pub struct NetPair {
    pub target: String,
    pub peer: String,
}

impl NetPair {
    pub fn new() -> NetPair {
        let target = unique("flt-t-");
        let peer = unique("flt-p-");
        let pair = NetPair {
            target: target.clone(),
            peer: peer.clone(),
        };
        run("ip", &["netns", "add", &target]);
        run("ip", &["netns", "add", &peer]);
        let va = unique("fva");
        let vb = unique("fvb");
        run(
            "ip",
            &[
                "link", "add", &va, "netns", &target, "type", "veth", "peer", "name", &vb, "netns",
                &peer,
            ],
        );
        run(
            "ip",
            &["-n", &target, "addr", "add", "10.77.0.1/30", "dev", &va],
        );
        run(
            "ip",
            &["-n", &peer, "addr", "add", "10.77.0.2/30", "dev", &vb],
        );
        for (ns, dev) in [(&target, &va), (&peer, &vb)] {
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    pub fn target_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.target))
    }

    pub fn peer_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.peer))
    }

    /// A TCP listener in the target that accepts (and drops) connections forever.
    pub fn listen(&self) -> SocketAddr {
        let l = in_netns(&self.target_path(), || {
            TcpListener::bind((TARGET_IP, 0)).expect("bind in target")
        });
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
        addr
    }

    /// Whether the peer can open a TCP connection to `addr` in the target.
    pub fn reachable(&self, addr: SocketAddr) -> bool {
        in_netns(&self.peer_path(), move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
        })
    }

    /// Waits up to `within` until the peer can (or cannot) reach `addr`;
    /// on a timeout the agent's log goes with the failure.
    pub fn expect_reachable(
        &self,
        addr: SocketAddr,
        reachable: bool,
        within: Duration,
        agent: &AgentProc,
    ) {
        assert!(
            wait_for(within, || self.reachable(addr) == reachable).is_some(),
            "{addr} never became {}; log:\n{}",
            if reachable {
                "reachable"
            } else {
                "unreachable"
            },
            agent.log()
        );
    }

    /// What `nft ARGS` prints in the target (it must succeed).
    fn nft_in_target(&self, args: &'static [&'static str]) -> Vec<u8> {
        in_netns(&self.target_path(), move || {
            let out = Command::new("nft").args(args).output().expect("nft");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
    }

    /// `nft list ruleset` in the target.
    pub fn ruleset(&self) -> String {
        String::from_utf8_lossy(&self.nft_in_target(&["list", "ruleset"])).into_owned()
    }

    /// `nft -j list table inet faultline` in the target: how nft decodes
    /// what the agent wrote over netlink.
    pub fn our_table_json(&self) -> serde_json::Value {
        let out = self.nft_in_target(&["-j", "list", "table", "inet", "faultline"]);
        serde_json::from_slice(&out).expect("nft prints JSON")
    }

    /// The rules of `chain` in our table, as nft's JSON objects.
    pub fn our_rules(&self, chain: &str) -> Vec<serde_json::Value> {
        self.our_table_json()["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["chain"] == chain)
            .cloned()
            .collect()
    }

    pub fn nft(&self, script_args: &[&'static str]) {
        let args: Vec<&'static str> = script_args.to_vec();
        in_netns(&self.target_path(), move || run("nft", &args));
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.target, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Polls `cond` until it holds or `within` passes; returns how long it took.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An RFC 3339 time `ms` milliseconds from now (negative: in the past).
pub fn in_ms(ms: i64) -> (jiff::Timestamp, String) {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(ms);
    // Whole milliseconds: the API accepts 1 to 9 fraction digits.
    let t = t.round(jiff::Unit::Millisecond).expect("round");
    (t, t.to_string())
}

/// A desired file and a state directory in a temporary directory, and the
/// agent process following them.
#[derive(Debug)]
pub struct AgentProc {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// Extra environment for the agent process.
    pub env: Vec<(String, String)>,
    /// The state directory (in `dir` unless shared with another agent).
    pub state: PathBuf,
}

impl AgentProc {
    pub fn new() -> AgentProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        AgentProc {
            dir,
            child: None,
            env: Vec::new(),
            state,
        }
    }

    pub fn desired(&self) -> PathBuf {
        self.dir.path().join("desired.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Replaces the desired file atomically with these fault entries (YAML
    /// list items, already indented by six spaces).
    pub fn write_faults(&self, faults: &[String]) {
        self.write_faults_at(faults);
    }

    /// Writes the desired faults; returns when the change became visible
    /// (just before the rename that puts the new file in place).
    pub fn write_faults_at(&self, faults: &[String]) -> Instant {
        let mut s = String::from(
            "apiVersion: faultline.dev/v1alpha1\nkind: NodeFaults\nmetadata: {name: test-node}\nspec:\n  faults:",
        );
        if faults.is_empty() {
            s.push_str(" []\n");
        } else {
            s.push('\n');
            for f in faults {
                s.push_str(f);
            }
        }
        self.write_raw_at(&s)
    }

    pub fn write_raw(&self, content: &str) {
        self.write_raw_at(content);
    }

    fn write_raw_at(&self, content: &str) -> Instant {
        let tmp = self.dir.path().join("desired.yaml.tmp");
        std::fs::write(&tmp, content).expect("write desired");
        let at = Instant::now();
        std::fs::rename(&tmp, self.desired()).expect("rename desired");
        at
    }

    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the agent with extra arguments after the standard ones.
    pub fn start_with(&mut self, extra: &[&str]) {
        let desired = self.desired().display().to_string();
        self.start_mode(&["standalone", "--desired", &desired], extra);
    }

    /// Kube mode: follows node `node`'s NodeFaults object on the API
    /// server `kubeconfig` names.
    pub fn start_kube(&mut self, node: &str, kubeconfig: &Path, extra: &[&str]) {
        self.env
            .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        self.start_mode(&["kube", "--node", node], extra);
    }

    fn start_mode(&mut self, mode: &[&str], extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_faultline-agent"))
            .args(mode)
            .arg("--state-dir")
            .arg(&self.state)
            // The test's own network namespace is the host's; PID 1's may
            // be out of reach in a sandbox.
            .args(["--host-netns", "/proc/self/ns/net"])
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the agent's log to contain `text`.
    pub fn wait_log(&self, text: &str, within: Duration) {
        assert!(
            wait_for(within, || self.log().contains(text)).is_some(),
            "agent never logged {text:?}; log:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        self.stop_with(rustix::process::Signal::TERM)
    }

    /// Sends `signal` and returns the exit status.
    pub fn stop_with(&mut self, signal: rustix::process::Signal) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&c);
        rustix::process::kill_process(pid, signal).expect("signal");
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent ignored {signal:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGTERM first so it removes what it applied; then make sure it is gone.
            let pid = rustix::process::Pid::from_child(c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = wait_for(Duration::from_secs(3), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A partition fault entry for the desired file.
pub fn partition(id: &str, netns: &Path, expires: &str, extra: &str) -> String {
    fault(
        id,
        netns,
        expires,
        &format!("partition: {{peers: [{PEER_IP}/32]{extra}}}"),
    )
}

/// A desired fault entry on the target `netns`; `body` holds its kind (and
/// any other field), one line each, unindented.
pub fn fault(id: &str, netns: &Path, expires: &str, body: &str) -> String {
    let mut entry = format!(
        "    - id: {id}\n      target: {{netns: {}}}\n      expiresAt: \"{expires}\"\n",
        netns.display()
    );
    for line in body.lines() {
        entry.push_str(&format!("      {line}\n"));
    }
    entry
}

/// A cgroup v2 directory owned by one test, removed on drop with its processes killed.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
    pub children: Vec<Child>,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let root = cgroup2_root();
        let path = root.join(unique("faultline-test-"));
        std::fs::create_dir(&path).expect("create cgroup");
        TestCgroup {
            path,
            children: Vec::new(),
        }
    }

    /// Starts `sleep 60` and moves it into this cgroup; returns its index.
    pub fn spawn_sleep(&mut self) -> usize {
        let child = Command::new("sleep").arg("60").spawn().expect("sleep");
        std::fs::write(self.path.join("cgroup.procs"), child.id().to_string())
            .expect("move into cgroup");
        self.children.push(child);
        self.children.len() - 1
    }

    /// The signal that ended child `i`, once it has ended.
    pub fn ended_by(&mut self, i: usize) -> Option<i32> {
        ended_by(&mut self.children[i])
    }
}

/// The signal that ended `child` (0 for a plain exit), once it has ended.
pub fn ended_by(child: &mut Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    child
        .try_wait()
        .ok()
        .flatten()
        .map(|st| st.signal().unwrap_or(0))
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = wait_for(Duration::from_secs(2), || {
            std::fs::remove_dir(&self.path).is_ok()
        });
    }
}

pub fn cgroup2_root() -> PathBuf {
    faultline_agent::cgroup2_mount().expect("a cgroup v2 mount")
}

/// The cgroup the kubelet's systemd driver gives a burstable pod's
/// container, relative to the cgroup root.
pub fn pod_cgroup(uid: &str, container: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
        uid.replace('-', "_")
    )
}

/// A cgroup tree laid out as the kubelet lays out pods (one pod per cgroup
/// driver), each pod's process in a namespace this test made; removed
/// deepest first on drop, its processes killed.
pub struct KubeletTree {
    pub root: std::path::PathBuf,
    leaves: Vec<std::path::PathBuf>,
    children: Vec<std::process::Child>,
}

impl KubeletTree {
    pub fn new() -> KubeletTree {
        let root = cgroup2_root().join(unique("faultline-test-"));
        std::fs::create_dir(&root).expect("cgroup root");
        KubeletTree {
            root,
            leaves: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Creates `rel` under the root and starts a `sleep` in it, inside the
    /// network namespace `netns` (by name); returns the child's index.
    pub fn pod_process(&mut self, rel: &str, netns: &str) -> usize {
        let leaf = self.root.join(rel);
        std::fs::create_dir_all(&leaf).expect("pod cgroup");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "sleep", "60"])
            .spawn()
            .expect("sleep in the namespace");
        // In the cgroup only once `ip` has entered the namespace (and exec'd
        // sleep), so the agent cannot find it in the host's namespace.
        let ns_id = |p: &str| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok()
        };
        let want = ns_id(&format!("/run/netns/{netns}"));
        let entered = wait_for(Duration::from_secs(5), || {
            ns_id(&format!("/proc/{}/ns/net", child.id())) == want
        });
        assert!(entered.is_some(), "the pod process never entered {netns}");
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).expect("join cgroup");
        self.leaves.push(leaf);
        self.children.push(child);
        self.children.len() - 1
    }

    /// As [`KubeletTree::pod_process`], the process left in the host's
    /// own network namespace, as a `hostNetwork` pod's is.
    pub fn host_pod_process(&mut self, rel: &str) -> usize {
        self.command_in(rel, std::process::Command::new("sleep").arg("60"))
    }

    /// Starts `command` (in the host's namespaces) in cgroup `rel`.
    pub fn command_in(&mut self, rel: &str, command: &mut std::process::Command) -> usize {
        let leaf = self.root.join(rel);
        std::fs::create_dir_all(&leaf).expect("pod cgroup");
        let child = command.spawn().expect("start the pod's process");
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).expect("join cgroup");
        self.leaves.push(leaf);
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn ended_by(&mut self, i: usize) -> Option<i32> {
        ended_by(&mut self.children[i])
    }
}

impl Drop for KubeletTree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for leaf in &self.leaves {
            let mut dir = leaf.as_path();
            while dir != self.root {
                let _ = wait_for(Duration::from_secs(2), || {
                    std::fs::remove_dir(dir).is_ok() || !dir.exists()
                });
                dir = dir.parent().unwrap_or(&self.root);
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Waits until `collector` holds one whole trace of a fault: the `fault`
/// span the entry's `traceparent` names, its `experiment` parent, and the
/// agent's `inject` and `recover` under it; panics with every span after
/// ten seconds.
pub async fn expect_one_trace(collector: &mock_collector::ServerHandle, entry_tp: &str) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // (name, trace, span, parent)
    let spans = |c: &mock_collector::MockCollector| -> Vec<(String, String, String, String)> {
        c.spans()
            .iter()
            .map(|s| {
                let sp = s.span();
                (
                    sp.name.clone(),
                    hex(&sp.trace_id),
                    hex(&sp.span_id),
                    hex(&sp.parent_span_id),
                )
            })
            .collect()
    };
    let complete = |all: &[(String, String, String, String)]| {
        all.iter().filter(|f| f.0 == "fault").any(|fault| {
            entry_tp == format!("00-{}-{}-01", fault.1, fault.2)
                && all
                    .iter()
                    .any(|e| e.0 == "experiment" && e.1 == fault.1 && e.2 == fault.3)
                && ["inject", "recover"].iter().all(|op| {
                    all.iter()
                        .any(|s| s.0 == *op && s.1 == fault.1 && s.3 == fault.2)
                })
        })
    };
    let found = collector
        .wait_until(|c| complete(&spans(c)), Duration::from_secs(10))
        .await;
    let all = collector.with_collector(|c| spans(c)).await;
    assert!(
        found.is_ok(),
        "spans: {all:?}\nentry traceparent {entry_tp}"
    );
}
