//! Stress faults: a worker process of the agent's own binary, moved into
//! the target's cgroup before it does anything (see `faultline_stress`).
//!
//! A worker stops by itself at the fault's deadline and as soon as this
//! agent is gone, so an agent SIGKILL leaves no load behind; the next agent
//! sweeps any worker of a fault it removes and starts the ones still due.

use std::{
    collections::HashMap,
    io::Read,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use faultline_api::{NodeFault, NodeTarget, Stress};
use faultline_stress::{Load, cgroup};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::BackendError;
use crate::target::{Resolver, TargetError, cgroup_procs};

/// How long a new worker has to show up in its cgroup before the apply
/// counts as failed.
const JOIN_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Stressors {
    /// The program workers run: this agent's own binary.
    pub exe: PathBuf,
    running: HashMap<String, Worker>,
}

impl Default for Stressors {
    fn default() -> Self {
        Stressors {
            exe: PathBuf::from("/proc/self/exe"),
            running: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Worker {
    child: Child,
    cgroup: PathBuf,
    /// The cgroup's OOM kills before the worker started.
    oom_before: Option<u64>,
    /// CPU time it used, as last read.
    cpu_ms: u64,
    /// Why it ended for good (the OOM killer); it is not started again.
    ended: Option<String>,
}

impl Stressors {
    /// Starts the fault's worker; Ok once the kernel lists it in the
    /// target's cgroup.
    pub(crate) fn start(
        &mut self,
        resolver: &Resolver,
        fault: &NodeFault,
        stress: &Stress,
    ) -> Result<(), BackendError> {
        self.forget(&fault.id);
        let cg = resolver.stress_cgroup(&fault.target)?;
        sweep(resolver, &fault.target, Some(&cg), &fault.id)?;
        let load = Load {
            cgroup: cg.clone(),
            cgroupns: host_cgroupns(resolver),
            fault: fault.id.clone(),
            until_ms: u64::try_from(fault.expires_at.0.as_millisecond()).unwrap_or(0),
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
        };
        let oom_before = cgroup::oom_kills(&cg);
        let mut child = Command::new(&self.exe)
            .args(load.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                BackendError::Failed(format!(
                    "cannot start a stress worker ({}): {e}",
                    self.exe.display()
                ))
            })?;
        let pid = child.id();
        let started = Instant::now();
        loop {
            if cgroup_procs(&cg).is_ok_and(|p| p.contains(&pid)) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Joined and at once killed by the target's OOM killer:
                // applied, and already over.
                if let Some(why) = oom_killed(status, oom_before, &cg) {
                    tracing::warn!(fault = %fault.id, "{}: {why}", fault.id);
                    self.running.insert(
                        fault.id.clone(),
                        Worker {
                            child,
                            cgroup: cg,
                            oom_before,
                            cpu_ms: 0,
                            ended: Some(why),
                        },
                    );
                    return Ok(());
                }
                let mut said = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                return Err(BackendError::Failed(format!(
                    "the stress worker ended before it joined {} ({status}){}",
                    cg.display(),
                    last_line(&said)
                )));
            }
            if started.elapsed() > JOIN_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BackendError::Failed(format!(
                    "the stress worker did not join {} within {JOIN_WITHIN:?}",
                    cg.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::debug!(fault = %fault.id, "{}: stress worker {pid} in {}", fault.id, cg.display());
        self.running.insert(
            fault.id.clone(),
            Worker {
                child,
                cgroup: cg,
                oom_before,
                cpu_ms: 0,
                ended: None,
            },
        );
        Ok(())
    }

    /// Stops the fault's worker, and any an earlier agent left in the target.
    pub(crate) fn stop(
        &mut self,
        resolver: &Resolver,
        fault: &NodeFault,
    ) -> Result<(), BackendError> {
        let cg = self.forget(&fault.id);
        match sweep(resolver, &fault.target, cg.as_deref(), &fault.id) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(fault = %fault.id, "{}: stopped {n} stress worker(s) an earlier agent left", fault.id);
                }
                Ok(())
            }
            // Nothing left where it ran.
            Err(BackendError::Gone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Looks at the worker: starts it again when it died of anything but
    /// the target's OOM killer (or was started by an earlier agent, which
    /// took its workers with it); true when it started one.
    pub(crate) fn check(
        &mut self,
        resolver: &Resolver,
        fault: &NodeFault,
        stress: &Stress,
    ) -> Result<bool, BackendError> {
        let Some(w) = self.running.get_mut(&fault.id) else {
            self.start(resolver, fault, stress)?;
            return Ok(true);
        };
        if w.ended.is_some() {
            return Ok(false);
        }
        let status = match w.child.try_wait() {
            Ok(None) => {
                if let Ok(ms) = faultline_stress::process_cpu_ms(&resolver.proc_root, w.child.id())
                {
                    w.cpu_ms = ms;
                }
                return Ok(false);
            }
            Ok(Some(status)) => status,
            Err(e) => {
                return Err(BackendError::Failed(format!(
                    "cannot wait for the stress worker: {e}"
                )));
            }
        };
        if let Some(why) = oom_killed(status, w.oom_before, &w.cgroup) {
            tracing::warn!(fault = %fault.id, "{}: {why}", fault.id);
            w.ended = Some(why);
            return Ok(false);
        }
        if fault.expires_at.0 <= jiff::Timestamp::now() {
            return Ok(false);
        }
        tracing::warn!(fault = %fault.id, "{}: the stress worker ended early ({status}); starting it again", fault.id);
        self.start(resolver, fault, stress)?;
        Ok(true)
    }

    /// CPU time the fault's worker has used, in milliseconds.
    pub(crate) fn cpu_ms(&mut self, resolver: &Resolver, id: &str) -> Option<u64> {
        let w = self.running.get_mut(id)?;
        if let Ok(ms) = faultline_stress::process_cpu_ms(&resolver.proc_root, w.child.id()) {
            w.cpu_ms = w.cpu_ms.max(ms);
        }
        Some(w.cpu_ms)
    }

    /// Why the fault's workers ended for good, if they did.
    pub(crate) fn ended(&self, id: &str) -> Option<String> {
        self.running.get(id)?.ended.clone()
    }

    /// Kills and reaps this agent's worker of the fault; the cgroup it was in.
    fn forget(&mut self, id: &str) -> Option<PathBuf> {
        let mut w = self.running.remove(id)?;
        if w.ended.is_none() {
            let _ = w.child.kill();
        }
        let _ = w.child.wait();
        Some(w.cgroup)
    }
}

/// The node's cgroup namespace, when this agent is in another one (a
/// container's own, the default under cgroup v2): with `nsdelegate` (as
/// systemd mounts cgroup2) the kernel refuses moves into cgroups outside
/// the mover's namespace, so the worker enters the node's first. None when
/// they are the same, or the node's is unreadable (the join then says why
/// it failed).
fn host_cgroupns(resolver: &Resolver) -> Option<PathBuf> {
    let host = resolver.proc_root.join("1/ns/cgroup");
    let own = crate::netns::id_of(Path::new("/proc/self/ns/cgroup")).ok()?;
    let theirs = crate::netns::id_of(&host).ok()?;
    (own != theirs).then_some(host)
}

/// Why a worker that ended with `status` ended for good: SIGKILL while
/// the cgroup's OOM kills grew.
fn oom_killed(status: ExitStatus, before: Option<u64>, cg: &Path) -> Option<String> {
    let grew = matches!(
        (before, cgroup::oom_kills(cg)),
        (Some(before), Some(now)) if now > before
    );
    (status.signal() == Some(Signal::KILL.as_raw()) && grew).then(|| {
        let limit = cgroup::memory_max(cg).map_or(String::new(), |b| format!(" of {} MiB", b >> 20));
        format!(
            "stress workers OOM-killed: the target reached its memory limit{limit}, as its own processes would have (not started again)"
        )
    })
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(String::new(), |l| format!(": {}", l.trim()))
}

/// Kills every worker of fault `id` in the target (and in `also`, the
/// cgroup one was started in); how many it killed.
fn sweep(
    resolver: &Resolver,
    target: &NodeTarget,
    also: Option<&Path>,
    id: &str,
) -> Result<u64, BackendError> {
    let mut pids = match target {
        // Every container of the pod: the one a worker joined may differ
        // from the one chosen now.
        NodeTarget::Pod(_) => match resolver.processes(target) {
            Ok(p) => p,
            Err(TargetError::Gone(_)) if also.is_some() => Vec::new(),
            Err(e) => return Err(e.into()),
        },
        _ => match resolver.stress_cgroup(target) {
            Ok(cg) => cgroup_procs(&cg)?,
            Err(TargetError::Gone(_)) if also.is_some() => Vec::new(),
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(cg) = also {
        pids.extend(cgroup_procs(cg).unwrap_or_default());
    }
    pids.sort_unstable();
    pids.dedup();
    let is_worker = |pid: u32| {
        std::fs::read(resolver.proc_root.join(pid.to_string()).join("cmdline"))
            .is_ok_and(|c| faultline_stress::is_worker_of(&c, id))
    };
    let mut killed = 0;
    for pid in pids {
        if !is_worker(pid) {
            continue;
        }
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        // Opened, then looked at again: the pidfd pins the process, so a
        // number reused in between is never hit.
        let Ok(fd) = pidfd_open(p, PidfdFlags::empty()) else {
            continue;
        };
        if is_worker(pid) {
            match pidfd_send_signal(&fd, Signal::KILL) {
                Ok(()) => killed += 1,
                Err(rustix::io::Errno::SRCH) => {}
                Err(e) => {
                    return Err(BackendError::Failed(format!(
                        "cannot stop stress worker {pid}: {e}"
                    )));
                }
            }
        }
    }
    Ok(killed)
}
