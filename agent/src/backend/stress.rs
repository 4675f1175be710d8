//! Stress faults: a worker process of the agent's own binary, moved into
//! the target's cgroup before it does anything (see `faultline_stress`).
//!
//! A worker stops by itself at the fault's deadline and as soon as this
//! agent is gone, so an agent SIGKILL leaves no load behind; the next agent
//! sweeps any worker of a fault it removes and starts the ones still due.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use faultline_api::{NodeFault, NodeTarget, Stress};
use faultline_stress::{Load, Worker};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::BackendError;
use crate::target::{Resolver, TargetError, cgroup_procs};

#[derive(Debug)]
pub struct Stressors {
    /// The program workers run: this agent's own binary.
    pub exe: PathBuf,
    running: HashMap<String, Running>,
    /// CPU milliseconds of a fault's earlier workers (started again after
    /// its deadline moved, or after they died), so its effect never goes
    /// down.
    banked: HashMap<String, u64>,
}

impl Default for Stressors {
    fn default() -> Self {
        Stressors {
            exe: PathBuf::from("/proc/self/exe"),
            running: HashMap::new(),
            banked: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Running {
    worker: Worker,
    /// CPU time it used, as last read (kept once it ended).
    cpu_ms: u64,
    /// Its OOM kill was logged.
    told: bool,
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
        let until_ms = u64::try_from(fault.expires_at.0.as_millisecond()).unwrap_or(0);
        let load = Load {
            cgroupns: host_cgroupns(resolver),
            ..Load::of(stress, fault.id.clone(), cg, until_ms)
        };
        let worker = Worker::start(&self.exe, &load).map_err(BackendError::Failed)?;
        tracing::debug!(fault = %fault.id, "{}: stress worker {} in {}", fault.id, worker.pid(), worker.cgroup().display());
        self.running.insert(
            fault.id.clone(),
            Running {
                worker,
                cpu_ms: 0,
                told: false,
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
        self.banked.remove(&fault.id);
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
        let Some(r) = self.running.get_mut(&fault.id) else {
            self.start(resolver, fault, stress)?;
            return Ok(true);
        };
        if let Some(ms) = r.worker.cpu_ms() {
            r.cpu_ms = r.cpu_ms.max(ms);
        }
        let end = match r.worker.poll() {
            Ok(None) => return Ok(false),
            Ok(Some(end)) => end.clone(),
            Err(e) => {
                return Err(BackendError::Failed(format!(
                    "cannot wait for the stress worker: {e}"
                )));
            }
        };
        if end.is_oom() {
            if !r.told {
                r.told = true;
                tracing::warn!(fault = %fault.id, "{}: {end} (not started again)", fault.id);
            }
            return Ok(false);
        }
        if fault.expires_at.0 <= jiff::Timestamp::now() {
            return Ok(false);
        }
        if end == faultline_stress::End::Finished {
            // It met the deadline it was given; the fault's has moved since.
            tracing::info!(fault = %fault.id, "{}: stress goes on until {}", fault.id, fault.expires_at.0);
        } else {
            tracing::warn!(fault = %fault.id, "{}: {end} early; starting it again", fault.id);
        }
        self.start(resolver, fault, stress)?;
        Ok(true)
    }

    /// CPU time the fault's worker has used, in milliseconds.
    pub(crate) fn cpu_ms(&mut self, id: &str) -> Option<u64> {
        let banked = self.banked.get(id).copied().unwrap_or(0);
        let r = self.running.get_mut(id)?;
        if let Some(ms) = r.worker.cpu_ms() {
            r.cpu_ms = r.cpu_ms.max(ms);
        }
        Some(banked.saturating_add(r.cpu_ms))
    }

    /// Why the fault's workers ended for good, if they did.
    pub(crate) fn ended(&mut self, id: &str) -> Option<String> {
        let r = self.running.get_mut(id)?;
        match r.worker.poll() {
            Ok(Some(end)) if end.is_oom() => Some(format!("{end} (not started again)")),
            _ => None,
        }
    }

    /// Stops and reaps this agent's worker of the fault; the cgroup it was in.
    fn forget(&mut self, id: &str) -> Option<PathBuf> {
        let r = self.running.remove(id)?;
        let last = r.worker.cpu_ms().unwrap_or(0).max(r.cpu_ms);
        *self.banked.entry(id.to_owned()).or_default() += last;
        Some(r.worker.cgroup().to_owned())
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
