//! From a fault's target to what the kernel acts on: a network namespace file
//! and a set of processes.
//!
//! Pods are found through the cgroup tree the kubelet lays out, for both
//! cgroup drivers and every common runtime:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/`
//!   (guaranteed pods: `kubepods.slice/kubepods-pod<uid>.slice/`), holding
//!   `cri-containerd-<id>.scope`, `crio-<id>.scope` or `docker-<id>.scope`;
//! - cgroupfs: `kubepods/<qos>/pod<uid>/<container id>/` (guaranteed:
//!   `kubepods/pod<uid>/`).
//!
//! Every container of a pod shares its network namespace, so any process in
//! the pod's cgroup names it (`/proc/PID/ns/net`).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use faultline_api::NodeTarget;

/// How deep under the cgroup root a pod's cgroup may be; kind and k3s nest
/// the kubelet's tree a level or two below the usual place.
const MAX_POD_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// The target does not exist (any more): nothing to apply to, nothing to remove.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
}

/// Where cgroups and processes are read; tests point both at fixture trees.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    /// The node's own network namespace file, which no pod's may be.
    pub host_netns: PathBuf,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            cgroup_root: faultline_stress::cgroup::mount()
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            proc_root: PathBuf::from("/proc"),
            host_netns: PathBuf::from("/proc/1/ns/net"),
        }
    }
}

impl Resolver {
    /// The network namespace file of a target.
    pub(crate) fn netns(&self, target: &NodeTarget) -> Result<PathBuf, TargetError> {
        match target {
            NodeTarget::Netns(p) => {
                let p = PathBuf::from(p);
                if p.exists() {
                    Ok(p)
                } else {
                    Err(TargetError::Gone(format!(
                        "network namespace {} does not exist",
                        p.display()
                    )))
                }
            }
            NodeTarget::Pid(pid) => self.pid_netns(*pid),
            NodeTarget::Cgroup(cg) => self.netns_of_cgroup(Path::new(cg)),
            NodeTarget::Pod(pod) => {
                let dir = self.pod_cgroup(&pod.uid)?;
                self.netns_of_cgroup(&dir)
            }
        }
    }

    /// The processes a kill fault signals: the process itself for a pid, every
    /// process in the cgroup and its descendants for a cgroup or a pod.
    pub(crate) fn processes(&self, target: &NodeTarget) -> Result<Vec<u32>, TargetError> {
        match target {
            NodeTarget::Pid(pid) => {
                if self.proc_root.join(pid.to_string()).exists() {
                    Ok(vec![*pid])
                } else {
                    Err(TargetError::Gone(format!("process {pid} does not exist")))
                }
            }
            NodeTarget::Cgroup(cg) => cgroup_procs(Path::new(cg)),
            NodeTarget::Pod(pod) => cgroup_procs(&self.pod_cgroup(&pod.uid)?),
            NodeTarget::Netns(p) => Err(TargetError::Unsupported(format!(
                "network namespace {p} has no processes to signal; kill needs a pid, cgroup or pod target"
            ))),
        }
    }

    /// The cgroup a stress fault's workers join: a leaf the target's own
    /// processes are in, so their limits apply to the workers too. For a
    /// pod, its first application container (by cgroup name; the sandbox's
    /// is skipped): cgroup v2 admits processes only in leaves.
    pub(crate) fn stress_cgroup(&self, target: &NodeTarget) -> Result<PathBuf, TargetError> {
        match target {
            NodeTarget::Cgroup(cg) => {
                let dir = PathBuf::from(cg);
                if dir.is_dir() {
                    Ok(dir)
                } else {
                    Err(TargetError::Gone(format!("cgroup {cg} does not exist")))
                }
            }
            NodeTarget::Pid(pid) => {
                faultline_stress::cgroup::of_process(&self.proc_root, *pid, &self.cgroup_root)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::NotFound => {
                            TargetError::Gone(format!("process {pid} does not exist"))
                        }
                        _ => TargetError::Unsupported(format!(
                            "cannot find process {pid}'s cgroup: {e}"
                        )),
                    })
            }
            NodeTarget::Pod(pod) => {
                let dir = self.pod_cgroup(&pod.uid)?;
                let mut containers: Vec<PathBuf> = fs::read_dir(&dir)
                    .map_err(|e| TargetError::Io(format!("cannot read {}: {e}", dir.display())))?
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect();
                containers.sort();
                containers
                    .into_iter()
                    .find(|c| {
                        cgroup_procs(c)
                            .is_ok_and(|procs| procs.iter().any(|p| !is_pause(&self.proc_root, *p)))
                    })
                    .ok_or_else(|| {
                        TargetError::Gone(format!(
                            "pod {} has no running container on this node",
                            pod.uid
                        ))
                    })
            }
            NodeTarget::Netns(p) => Err(TargetError::Unsupported(format!(
                "network namespace {p} has no cgroup to stress; stress needs a pid, cgroup or pod target"
            ))),
        }
    }

    fn pid_netns(&self, pid: u32) -> Result<PathBuf, TargetError> {
        let p = self.proc_root.join(pid.to_string()).join("ns").join("net");
        if p.exists() {
            Ok(p)
        } else {
            Err(TargetError::Gone(format!("process {pid} does not exist")))
        }
    }

    fn netns_of_cgroup(&self, dir: &Path) -> Result<PathBuf, TargetError> {
        let procs = cgroup_procs(dir)?;
        // A process may exit between listing and opening; try the others.
        procs
            .iter()
            .find_map(|pid| self.pid_netns(*pid).ok())
            .ok_or_else(|| {
                TargetError::Gone(format!(
                    "cgroup {} has no running process, so no network namespace",
                    dir.display()
                ))
            })
    }

    /// Finds the cgroup directory of the pod with this UID.
    pub(crate) fn pod_cgroup(&self, uid: &str) -> Result<PathBuf, TargetError> {
        let systemd = format!("-pod{}.slice", uid.replace('-', "_"));
        let cgroupfs = format!("pod{uid}");
        let mut found = None;
        walk(&self.cgroup_root, 0, &mut |dir, name, in_kubepods| {
            let hit = (name.starts_with("kubepods") && name.ends_with(&systemd))
                || (in_kubepods && name == cgroupfs);
            if hit {
                found = Some(dir.to_owned());
            }
            hit
        });
        found.ok_or_else(|| {
            TargetError::Gone(format!(
                "no cgroup for pod {uid} under {} (is the pod on this node?)",
                self.cgroup_root.display()
            ))
        })
    }
}

/// A pod's sandbox process: the `pause` binary every runtime starts to
/// hold the pod's namespaces.
pub(crate) fn is_pause(proc_root: &Path, pid: u32) -> bool {
    fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .is_ok_and(|c| c.trim_end() == "pause")
}

/// Depth-first walk of directories; `visit` returns true to stop.
fn walk(dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path, &str, bool) -> bool) -> bool {
    if depth > MAX_POD_DEPTH {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let in_kubepods = dir.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s.starts_with("kubepods"))
    });
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if visit(&path, name, in_kubepods) || walk(&path, depth + 1, visit) {
            return true;
        }
    }
    false
}

/// Every process in a cgroup and its descendants, except the agent itself.
pub(crate) fn cgroup_procs(dir: &Path) -> Result<Vec<u32>, TargetError> {
    if !dir.is_dir() {
        return Err(TargetError::Gone(format!(
            "cgroup {} does not exist",
            dir.display()
        )));
    }
    let me = rustix::process::getpid().as_raw_nonzero().get() as u32;
    let mut out = Vec::new();
    collect_procs(dir, 0, &mut out)
        .map_err(|e| TargetError::Io(format!("cannot read processes of {}: {e}", dir.display())))?;
    out.retain(|p| *p != me);
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn collect_procs(dir: &Path, depth: usize, out: &mut Vec<u32>) -> io::Result<()> {
    // Bounded: cgroup trees are shallow, and a loop of bind mounts must not hang us.
    if depth > 32 {
        return Ok(());
    }
    match fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        // A child cgroup removed while we walk is not an error.
        Err(e) if e.kind() == io::ErrorKind::NotFound && depth > 0 => return Ok(()),
        Err(e) => return Err(e),
    }
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&e.path(), depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_api::PodRef;

    const UID: &str = "6f1c2d3e-0000-4000-8000-000000000001";

    fn mk(root: &Path, rel: &str, procs: &str) {
        let d = root.join(rel);
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("cgroup.procs"), procs).expect("write");
    }

    fn resolver(root: &Path) -> Resolver {
        let proc_root = root.join("proc");
        for pid in ["101", "102", "201"] {
            fs::create_dir_all(proc_root.join(pid).join("ns")).expect("mkdir");
            fs::write(proc_root.join(pid).join("ns/net"), "").expect("write");
        }
        Resolver {
            cgroup_root: root.join("cg"),
            host_netns: proc_root.join("1/ns/net"),
            proc_root,
        }
    }

    fn pod() -> NodeTarget {
        NodeTarget::Pod(PodRef { uid: UID.into() })
    }

    #[test]
    fn systemd_driver_runtimes() {
        let u = UID.replace('-', "_");
        for (qos, scope) in [
            (
                "kubepods-burstable.slice/kubepods-burstable",
                "cri-containerd-abc.scope",
            ),
            (
                "kubepods-besteffort.slice/kubepods-besteffort",
                "crio-abc.scope",
            ),
            ("kubepods", "docker-abc.scope"),
        ] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let r = resolver(tmp.path());
            let pod_dir = format!("cg/kubepods.slice/{qos}-pod{u}.slice");
            mk(tmp.path(), &pod_dir, "");
            mk(tmp.path(), &format!("{pod_dir}/{scope}"), "101\n102\n");
            // Another pod must not match.
            mk(
                tmp.path(),
                "cg/kubepods.slice/kubepods-pod00000000_0000_4000_8000_000000000002.slice/x.scope",
                "201\n",
            );
            assert_eq!(
                r.pod_cgroup(UID).expect("found"),
                tmp.path().join(&pod_dir),
                "{qos}"
            );
            assert_eq!(r.processes(&pod()).expect("procs"), [101, 102]);
            assert_eq!(
                r.netns(&pod()).expect("netns"),
                tmp.path().join("proc/101/ns/net")
            );
        }
    }

    #[test]
    fn stress_joins_the_first_application_container() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = resolver(tmp.path());
        let pod_dir = format!("cg/kubepods/burstable/pod{UID}");
        mk(tmp.path(), &pod_dir, "");
        // The sandbox sorts first; an exited container's cgroup is empty.
        mk(tmp.path(), &format!("{pod_dir}/0aaa"), "101\n");
        fs::write(tmp.path().join("proc/101/comm"), "pause\n").expect("write");
        mk(tmp.path(), &format!("{pod_dir}/1bbb"), "");
        mk(tmp.path(), &format!("{pod_dir}/2ccc"), "102\n");
        mk(tmp.path(), &format!("{pod_dir}/3ddd"), "201\n");
        assert_eq!(
            r.stress_cgroup(&pod()).expect("found"),
            tmp.path().join(format!("{pod_dir}/2ccc"))
        );
        // A pod whose only process is its sandbox has nothing to stress.
        fs::write(tmp.path().join(format!("{pod_dir}/2ccc/cgroup.procs")), "").expect("write");
        fs::write(tmp.path().join(format!("{pod_dir}/3ddd/cgroup.procs")), "").expect("write");
        assert!(matches!(r.stress_cgroup(&pod()), Err(TargetError::Gone(_))));
        assert!(matches!(
            r.stress_cgroup(&NodeTarget::Netns("/run/netns/x".into())),
            Err(TargetError::Unsupported(_))
        ));
        let cg = tmp.path().join(&pod_dir).display().to_string();
        assert_eq!(
            r.stress_cgroup(&NodeTarget::Cgroup(cg.clone())).ok(),
            Some(PathBuf::from(cg))
        );
    }

    #[test]
    fn cgroupfs_driver_nested() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = resolver(tmp.path());
        // As under kind: the kubelet's tree below another level.
        let pod_dir = format!("cg/kubelet/kubepods/burstable/pod{UID}");
        mk(tmp.path(), &pod_dir, "");
        mk(tmp.path(), &format!("{pod_dir}/0123456789abcdef"), "102\n");
        // A pod<uid> outside kubepods is not a pod.
        mk(tmp.path(), &format!("cg/other/pod{UID}"), "201\n");
        assert_eq!(r.pod_cgroup(UID).expect("found"), tmp.path().join(pod_dir));
        assert_eq!(r.processes(&pod()).expect("procs"), [102]);
    }

    #[test]
    fn missing_things_are_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = resolver(tmp.path());
        fs::create_dir_all(tmp.path().join("cg")).expect("mkdir");
        assert!(matches!(r.netns(&pod()), Err(TargetError::Gone(_))));
        mk(tmp.path(), "cg/empty", "");
        let empty = NodeTarget::Cgroup(tmp.path().join("cg/empty").display().to_string());
        assert!(matches!(r.netns(&empty), Err(TargetError::Gone(_))));
        assert_eq!(r.processes(&empty), Ok(vec![]));
        assert!(matches!(
            r.processes(&NodeTarget::Pid(999_999)),
            Err(TargetError::Gone(_))
        ));
        assert_eq!(r.processes(&NodeTarget::Pid(201)), Ok(vec![201]));
        assert!(matches!(
            r.processes(&NodeTarget::Netns("/run/netns/x".into())),
            Err(TargetError::Unsupported(_))
        ));
        assert!(matches!(
            r.netns(&NodeTarget::Netns("/nonexistent/x".into())),
            Err(TargetError::Gone(_))
        ));
    }
}
