//! The few cgroup v2 files stress needs: joining a cgroup, and what it has
//! used (CPU time, memory, OOM kills).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::Error;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mount(&info)
}

fn parse_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split(' ').next()?;
        let mount_point = left.split(' ').nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The processes in `cgroup` itself (not its descendants).
pub fn procs(cgroup: &Path) -> io::Result<Vec<u32>> {
    Ok(fs::read_to_string(cgroup.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Moves the calling process (all its threads) into `cgroup`.
pub fn join(cgroup: &Path) -> Result<(), Error> {
    // "0" is the writer itself.
    fs::write(cgroup.join("cgroup.procs"), "0\n").map_err(|source| Error::Join {
        cgroup: cgroup.display().to_string(),
        source,
    })
}

/// Moves the calling thread into the cgroup namespace at `ns` (before any
/// other thread exists, so the whole worker is in it).
pub fn enter_namespace(ns: &Path) -> Result<(), Error> {
    use std::os::fd::AsFd;
    let failed = |source: io::Error| Error::Namespace {
        ns: ns.display().to_string(),
        source,
    };
    let file = fs::File::open(ns).map_err(failed)?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::ControlGroup),
    )
    .map_err(|e| failed(e.into()))
}

/// A `key value` line of a flat-keyed cgroup file (`cpu.stat`,
/// `memory.events`).
fn keyed(cgroup: &Path, file: &str, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(cgroup.join(file))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no {key}", cgroup.join(file).display()),
            )
        })
}

/// CPU time used by everything in the cgroup, in microseconds.
pub fn cpu_usage_usec(cgroup: &Path) -> io::Result<u64> {
    keyed(cgroup, "cpu.stat", "usage_usec")
}

/// Memory charged to the cgroup now, in bytes.
pub fn memory_current(cgroup: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(cgroup.join("memory.current"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "memory.current: not a number"))
}

/// How many processes the OOM killer has killed in the cgroup (and below);
/// None where the memory controller is not enabled for it.
pub fn oom_kills(cgroup: &Path) -> Option<u64> {
    keyed(cgroup, "memory.events", "oom_kill").ok()
}

/// The limit the OOM killer enforces on the cgroup itself (`memory.max`);
/// None when unlimited or unreadable.
pub fn memory_max(cgroup: &Path) -> Option<u64> {
    fs::read_to_string(cgroup.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The cgroup v2 directory of a process, from `/proc/PID/cgroup` (its
/// `0::/path` line) under the hierarchy mounted at `mount`.
pub fn of_process(proc_root: &Path, pid: u32, mount: &Path) -> io::Result<PathBuf> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("process {pid} is in no cgroup v2 (a cgroup v1 host?)"),
            )
        })?;
    Ok(mount.join(rel.trim().trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let info = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    26 25 0:23 / /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(parse_mount("garbage\n - \n"), None);
    }

    #[test]
    fn reads_flat_keyed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n",
        )
        .expect("write");
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n",
        )
        .expect("write");
        fs::write(dir.path().join("memory.current"), "67108864\n").expect("write");
        fs::write(dir.path().join("memory.max"), "max\n").expect("write");
        assert_eq!(cpu_usage_usec(dir.path()).ok(), Some(1_234_567));
        assert_eq!(oom_kills(dir.path()), Some(2));
        assert_eq!(memory_current(dir.path()).ok(), Some(64 << 20));
        assert_eq!(memory_max(dir.path()), None);
        fs::write(dir.path().join("memory.max"), "33554432\n").expect("write");
        assert_eq!(memory_max(dir.path()), Some(32 << 20));
        let other = tempfile::tempdir().expect("tempdir");
        assert_eq!(oom_kills(other.path()), None);
        assert!(cpu_usage_usec(other.path()).is_err());
    }

    #[test]
    fn finds_a_process_cgroup() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        let p = proc_root.path().join("77");
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(
            p.join("cgroup"),
            "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope\n",
        )
        .expect("write");
        assert_eq!(
            of_process(proc_root.path(), 77, Path::new("/sys/fs/cgroup")).ok(),
            Some(PathBuf::from(
                "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"
            ))
        );
        fs::write(p.join("cgroup"), "4:memory:/x\n").expect("write");
        assert_eq!(
            of_process(proc_root.path(), 77, Path::new("/sys/fs/cgroup"))
                .map_err(|e| e.kind())
                .err(),
            Some(io::ErrorKind::Unsupported)
        );
    }
}
