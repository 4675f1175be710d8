//! Stress workers: CPU and memory load run inside a target's cgroup, so the
//! target's own limits (CPU throttling, the OOM killer) meet it exactly as
//! if the target's processes did the work.
//!
//! A worker is a process of Faultline's own binary (`faultline-agent
//! stress-worker …` on a node, `faultline stress-worker …` locally), not a
//! third-party program: it moves itself into the cgroup before it allocates
//! or computes anything, then runs until its deadline, or until the process
//! that started it is gone — whichever comes first. A worker therefore never
//! outlives the fault it belongs to, even when nobody is left to stop it.

pub mod cgroup;
mod spawn;
mod work;

use std::{ffi::OsString, path::PathBuf};

pub use spawn::{End, Worker};
pub use work::run;

/// What one worker process does; its command-line flags.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// The cgroup v2 directory the worker joins before doing anything.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// A cgroup namespace file to enter before joining (`/proc/1/ns/cgroup`
    /// for an agent in a container of its own cgroup namespace, from which
    /// the kernel refuses moves into cgroups outside it).
    #[arg(long)]
    pub cgroupns: Option<PathBuf>,
    /// The fault this worker belongs to: how a later agent finds it.
    #[arg(long)]
    pub fault: String,
    /// Stop at this time (Unix milliseconds).
    #[arg(long)]
    pub until_ms: u64,
    /// Stop as soon as this process is no longer the worker's parent.
    #[arg(long)]
    pub parent: u32,
    /// Busy threads.
    #[arg(long, default_value_t = 0)]
    pub cpu_workers: u32,
    /// How busy each thread keeps one core, in thousandths.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub cpu_load_permille: u32,
    /// Memory to allocate, touch and hold.
    #[arg(long, default_value_t = 0)]
    pub memory_bytes: u64,
    /// Reach `memory_bytes` evenly over this long.
    #[arg(long, default_value_t = 0)]
    pub ramp_up_ms: u64,
}

/// The subcommand both binaries give the worker.
pub const SUBCOMMAND: &str = "stress-worker";

impl Load {
    /// A worker of `stress` for fault `fault`, joining `cgroup`, until
    /// `until_ms`, its parent this process.
    pub fn of(
        stress: &faultline_api::Stress,
        fault: String,
        cgroup: PathBuf,
        until_ms: u64,
    ) -> Load {
        Load {
            cgroup,
            cgroupns: None,
            fault,
            until_ms,
            parent: std::process::id(),
            cpu_workers: stress.cpu.as_ref().map_or(0, |c| c.workers),
            cpu_load_permille: stress.cpu.as_ref().map_or(1000, |c| {
                (c.load.fraction() * 1000.0).round().clamp(1.0, 1000.0) as u32
            }),
            memory_bytes: stress.memory.as_ref().map_or(0, |m| m.size.bytes()),
            ramp_up_ms: stress
                .memory
                .as_ref()
                .and_then(|m| m.ramp_up)
                .map_or(0, |r| r.as_millis()),
        }
    }

    /// The worker's arguments, subcommand first.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![SUBCOMMAND.into(), "--cgroup".into()];
        a.push(self.cgroup.clone().into_os_string());
        if let Some(ns) = &self.cgroupns {
            a.push("--cgroupns".into());
            a.push(ns.clone().into_os_string());
        }
        for (flag, value) in [
            ("--fault", self.fault.clone()),
            ("--until-ms", self.until_ms.to_string()),
            ("--parent", self.parent.to_string()),
            ("--cpu-workers", self.cpu_workers.to_string()),
            ("--cpu-load-permille", self.cpu_load_permille.to_string()),
            ("--memory-bytes", self.memory_bytes.to_string()),
            ("--ramp-up-ms", self.ramp_up_ms.to_string()),
        ] {
            a.push(flag.into());
            a.push(value.into());
        }
        a
    }
}

/// Whether a process's `/proc/PID/cmdline` is a worker of `fault`: its
/// arguments hold the subcommand and `--fault <fault>` (NUL-separated).
pub fn is_worker_of(cmdline: &[u8], fault: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.get(1) == Some(&SUBCOMMAND.as_bytes())
        && args
            .windows(2)
            .any(|w| w[0] == b"--fault" && w[1] == fault.as_bytes())
}

/// CPU time a process (all its threads) has used, in milliseconds, from
/// `/proc/PID/stat`.
pub fn process_cpu_ms(proc_root: &std::path::Path, pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks.saturating_mul(1000) / rustix::param::clock_ticks_per_second().max(1))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable stat"))
}

/// utime + stime, the 14th and 15th fields; the name (2nd) may hold spaces
/// and parentheses, so fields are counted from its closing one.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot enter cgroup namespace {ns}")]
    Namespace { ns: String, source: std::io::Error },
    #[error("cannot join cgroup {cgroup}")]
    Join {
        cgroup: String,
        source: std::io::Error,
    },
    #[error("cannot start a CPU worker thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot allocate {0} bytes")]
    Allocate(u64),
}

/// A load that does nothing, for tests to change what they need.
#[cfg(test)]
pub(crate) fn idle_load() -> Load {
    Load {
        cgroup: "/".into(),
        cgroupns: None,
        fault: "f".into(),
        until_ms: 0,
        parent: 1,
        cpu_workers: 0,
        cpu_load_permille: 1000,
        memory_bytes: 0,
        ramp_up_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        StressWorker(Load),
    }

    fn load() -> Load {
        Load {
            cgroup: "/sys/fs/cgroup/kubepods/pod1/c1".into(),
            cgroupns: Some("/proc/1/ns/cgroup".into()),
            fault: "exp/uid/cpu/pod-1".into(),
            until_ms: 1_800_000_000_000,
            parent: 42,
            cpu_workers: 2,
            cpu_load_permille: 500,
            memory_bytes: 64 << 20,
            ramp_up_ms: 10_000,
        }
    }

    #[test]
    fn arguments_read_back_as_written() {
        let l = load();
        let mut argv: Vec<OsString> = vec!["faultline-agent".into()];
        argv.extend(l.args());
        let Cmd::StressWorker(back) = Cli::try_parse_from(argv).expect("parses").cmd;
        assert_eq!(back, l);
    }

    #[test]
    fn a_fault_becomes_a_load() {
        let stress: faultline_api::Stress = serde_json::from_str(
            r#"{"cpu": {"workers": 3, "load": "37.5%"}, "memory": {"size": "64Mi", "rampUp": "10s"}}"#,
        )
        .expect("stress");
        let l = Load::of(&stress, "f".into(), "/cg".into(), 42);
        assert_eq!(
            (
                l.cpu_workers,
                l.cpu_load_permille,
                l.memory_bytes,
                l.ramp_up_ms
            ),
            (3, 375, 64 << 20, 10_000)
        );
        assert_eq!((l.until_ms, l.parent), (42, std::process::id()));
        let memory_only: faultline_api::Stress =
            serde_json::from_str(r#"{"memory": {"size": "1Gi"}}"#).expect("stress");
        let l = Load::of(&memory_only, "f".into(), "/cg".into(), 42);
        assert_eq!(
            (l.cpu_workers, l.memory_bytes, l.ramp_up_ms),
            (0, 1 << 30, 0)
        );
    }

    #[test]
    fn cpu_time_from_stat() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
        assert!(process_cpu_ms(std::path::Path::new("/proc"), me).is_ok());
    }

    #[test]
    fn workers_are_found_by_fault() {
        let mut cmdline = b"/usr/bin/faultline-agent".to_vec();
        for a in load().args() {
            cmdline.push(0);
            cmdline.extend(a.as_encoded_bytes());
        }
        cmdline.push(0);
        assert!(is_worker_of(&cmdline, "exp/uid/cpu/pod-1"));
        assert!(!is_worker_of(&cmdline, "exp/uid/cpu/pod-2"));
        assert!(!is_worker_of(&cmdline, "exp/uid/cpu"));
        // The fault named anywhere else is not a worker of it.
        assert!(!is_worker_of(
            b"/bin/sh\0-c\0--fault\0exp/uid/cpu/pod-1\0",
            "exp/uid/cpu/pod-1"
        ));
        assert!(!is_worker_of(b"", "x"));
    }
}
