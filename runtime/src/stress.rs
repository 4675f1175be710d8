//! Cgroups in local mode: each service in a cgroup of its own for the run
//! (with the topology's limits, as a pod's), and a stress worker (this
//! binary's `stress-worker`) started in a service's cgroup while a stress
//! fault holds the service — as the node agent does in a pod's.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use faultline_api::{ExperimentSpec, FaultAction, ResourceLimits};
use faultline_engine::{Instance, Resolved};
use faultline_stress::{Load, Worker};

/// Whether stress faults can run here: as root, with a cgroup v2
/// hierarchy mounted writable. Err says why not, for the refusal.
pub fn support() -> Result<PathBuf, String> {
    if !rustix::process::geteuid().is_root() {
        return Err(
            "it needs root here (each service runs in a cgroup of its own, and cgroups are root's)"
                .into(),
        );
    }
    let mount = faultline_stress::cgroup::mount()
        .ok_or("this host has no cgroup v2 hierarchy mounted (a cgroup v1-only host)")?;
    rustix::fs::access(&mount, rustix::fs::Access::WRITE_OK).map_err(|e| {
        format!(
            "the cgroup v2 hierarchy at {} is not writable: {e}",
            mount.display()
        )
    })?;
    Ok(mount)
}

/// The cgroup controllers local mode can use here for limits (of `cpu`
/// and `memory`); Err says why there are none.
pub fn controllers() -> Result<Vec<&'static str>, String> {
    Ok(hand_down(&support()?))
}

/// Hands `cpu` and `memory` down from the hierarchy's root where it offers
/// them (systemd's root already does; inside a container's cgroup
/// namespace the write may be refused): the ones the root's children get.
fn hand_down(mount: &Path) -> Vec<&'static str> {
    let listed = |file: &str| fs::read_to_string(mount.join(file)).unwrap_or_default();
    let offered = listed("cgroup.controllers");
    for c in ["cpu", "memory"] {
        if offered.split_whitespace().any(|o| o == c) {
            let _ = fs::write(mount.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let handed = listed("cgroup.subtree_control");
    ["cpu", "memory"]
        .into_iter()
        .filter(|c| handed.split_whitespace().any(|o| o == *c))
        .collect()
}

/// Whether `spec` has a stress fault.
pub(crate) fn wanted(spec: &ExperimentSpec) -> bool {
    spec.faults
        .iter()
        .any(|f| matches!(f.action, FaultAction::Stress(_)))
}

const PREFIX: &str = "faultline-local-";

/// The period of a CPU limit's quota (the kernel's and the kubelet's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Removes what runs that were killed left: empty cgroups of processes
/// that are gone (a cgroup still holding a process is left alone).
fn sweep_stale(mount: &Path) {
    let Ok(dir) = fs::read_dir(mount) else { return };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(e.path()) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(c.path());
                }
            }
        }
        if fs::remove_dir(e.path()).is_ok() {
            tracing::info!("removed cgroup {} of an earlier run", e.path().display());
        }
    }
}

/// The run's cgroups: `<mount>/faultline-local-<pid>/<service>`, removed
/// when the run ends.
#[derive(Debug)]
pub(crate) struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    pub(crate) fn create() -> Result<Cgroups, String> {
        let mount = support()?;
        sweep_stale(&mount);
        let root = mount.join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create cgroup {}: {e}", root.display()))?;
        // Accounting and limits below, where the host offers them (on a
        // hybrid host the v2 hierarchy has neither; CPU time is still
        // counted per cgroup). A controller reaches the services only when
        // every level above hands it down; systemd's root already does.
        for c in hand_down(&mount) {
            let _ = fs::write(root.join("cgroup.subtree_control"), format!("+{c}"));
        }
        Ok(Cgroups { root })
    }

    /// The cgroup of a service (created on first use).
    pub(crate) fn service(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The cgroup of a service with its limits set, before it starts.
    pub(crate) fn limited(&self, name: &str, limits: &ResourceLimits) -> Result<PathBuf, String> {
        let dir = self.service(name)?;
        let set = |file: &str, value: String| {
            fs::write(dir.join(file), &value).map_err(|e| {
                format!(
                    "cannot limit {name}: writing {value:?} to {}: {e}",
                    dir.join(file).display()
                )
            })
        };
        if let Some(cpu) = limits.cpu {
            // Quota per 100 ms period, as the kubelet writes a CPU limit.
            set(
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", u64::from(cpu.millicores()) * 100),
            )?;
        }
        if let Some(memory) = limits.memory {
            set("memory.max", memory.bytes().to_string())?;
            // As on a node without swap: the limit is what the service
            // has, not where it starts paging.
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        Ok(dir)
    }

    /// Removes the cgroups once every process has left them (a process
    /// leaves its cgroup when reaped, a moment after it was killed).
    pub(crate) async fn remove(self) {
        for _ in 0..40 {
            let children: Vec<PathBuf> = fs::read_dir(&self.root)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default();
            for c in &children {
                // A service's stray process (one that left its process
                // group) would keep the cgroup; it goes with it.
                if fs::remove_dir(c).is_err() {
                    let _ = fs::write(c.join("cgroup.kill"), "1");
                }
            }
            if fs::remove_dir(&self.root).is_ok() || !self.root.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            "cgroup {} still holds processes; left in place",
            self.root.display()
        );
    }
}

/// The workers of a run's stress faults.
#[derive(Debug)]
pub(crate) struct Stressing {
    exe: PathBuf,
    workers: BTreeMap<Instance, Worker>,
    /// CPU milliseconds of each running worker, as last read.
    live: BTreeMap<Instance, u64>,
    /// CPU milliseconds per fault of its workers already gone.
    banked: BTreeMap<String, u64>,
    /// Instances whose OOM kill was said.
    told: BTreeSet<Instance>,
    /// Instances whose worker would not start, and when to try again: a
    /// start can take up to 2 s, and the run's loop must not spend every
    /// tick on one that keeps failing.
    retry_at: BTreeMap<Instance, std::time::Instant>,
}

/// How long after a failed start a worker is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl Stressing {
    pub(crate) fn new(exe: PathBuf) -> Stressing {
        Stressing {
            exe,
            workers: BTreeMap::new(),
            live: BTreeMap::new(),
            banked: BTreeMap::new(),
            told: BTreeSet::new(),
            retry_at: BTreeMap::new(),
        }
    }

    /// Brings the workers to the stress instances `resolved` holds: starts
    /// the missing ones (and ones that died of anything but an OOM kill),
    /// stops the rest, in the services' `cgroups`. `started` is when the
    /// run's clock read zero; what went wrong is returned for the run's log.
    pub(crate) fn reconcile(
        &mut self,
        resolved: &[Resolved<'_>],
        started: SystemTime,
        cgroups: &Cgroups,
    ) -> Vec<String> {
        let mut said = Vec::new();
        let mut held = BTreeSet::new();
        for r in resolved {
            let FaultAction::Stress(stress) = &r.fault.action else {
                continue;
            };
            let instance = Instance::new(&r.fault.name, r.target);
            held.insert(instance.clone());
            if let Some(w) = self.workers.get_mut(&instance) {
                if let Some(ms) = w.cpu_ms() {
                    self.live.insert(instance.clone(), ms);
                }
                match w.poll() {
                    Ok(None) => continue,
                    Ok(Some(end)) if end.is_oom() => {
                        if self.told.insert(instance.clone()) {
                            said.push(format!(
                                "{} on {}: {end} (not started again)",
                                r.fault.name, r.target
                            ));
                        }
                        continue;
                    }
                    // Its deadline, on the wall clock, a moment before the
                    // run's: started again quietly for what is left, if any
                    // (a worker past its deadline would end at once, and
                    // be started again every tick).
                    // Kept, as an OOM-killed one is, until the instance goes.
                    Ok(Some(faultline_stress::End::Finished))
                        if SystemTime::now() >= started + r.until =>
                    {
                        continue;
                    }
                    Ok(Some(faultline_stress::End::Finished)) => {}
                    Ok(Some(end)) => said.push(format!(
                        "{} on {}: {end} early; starting it again",
                        r.fault.name, r.target
                    )),
                    Err(e) => said.push(format!("{} on {}: {e}", r.fault.name, r.target)),
                }
                // Its CPU time stays counted; a new worker adds to it.
                self.bank(&instance);
            }
            if self
                .retry_at
                .get(&instance)
                .is_some_and(|t| *t > std::time::Instant::now())
            {
                continue;
            }
            let until = started + r.until;
            let until_ms = until
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let started_worker = cgroups.service(r.target).and_then(|cg| {
                let load = Load::of(
                    stress,
                    format!("{}/{}", r.fault.name, r.target),
                    cg,
                    until_ms,
                );
                Worker::start(&self.exe, &load)
            });
            match started_worker {
                Ok(w) => {
                    self.retry_at.remove(&instance);
                    self.workers.insert(instance, w);
                }
                Err(e) => {
                    said.push(format!("{} on {}: {e}", r.fault.name, r.target));
                    self.retry_at
                        .insert(instance, std::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
        let gone: Vec<Instance> = self
            .workers
            .keys()
            .filter(|i| !held.contains(*i))
            .cloned()
            .collect();
        for i in gone {
            self.bank(&i);
        }
        said
    }

    /// Stops an instance's worker; what it spent stays counted for its fault.
    fn bank(&mut self, i: &Instance) {
        if let Some(ms) = self.workers.get(i).and_then(Worker::cpu_ms) {
            self.live.insert(i.clone(), ms);
        }
        self.workers.remove(i);
        if let Some(ms) = self.live.remove(i) {
            *self.banked.entry(i.fault.to_string()).or_default() += ms;
        }
    }

    /// Whether the instance's worker is in its cgroup (or was OOM-killed
    /// there: it was in place).
    pub(crate) fn in_place(&self, i: &Instance) -> bool {
        self.workers.contains_key(i)
    }

    /// CPU milliseconds the fault's workers used; None before any ran.
    pub(crate) fn effect(&self, fault: &str) -> Option<u64> {
        let banked = self.banked.get(fault).copied();
        let running = self.workers.keys().any(|i| *i.fault == *fault);
        if banked.is_none() && !running {
            return None;
        }
        let live: u64 = self
            .live
            .iter()
            .filter(|(i, _)| *i.fault == *fault)
            .map(|(_, ms)| *ms)
            .sum();
        Some(banked.unwrap_or(0).saturating_add(live))
    }

    /// Stops every worker (their CPU time stays counted).
    pub(crate) fn stop_all(&mut self) {
        let all: Vec<Instance> = self.workers.keys().cloned().collect();
        for i in all {
            self.bank(&i);
        }
    }
}

/// Moves a service's process into its cgroup (its children follow).
pub(crate) fn place(pid: u32, cgroup: &Path) -> std::io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), pid.to_string())
}
