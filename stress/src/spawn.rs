//! Starting a worker and knowing it is in place: the side of whoever runs
//! stress faults (the node agent, local mode).

use std::{
    io::Read,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{Load, cgroup};

/// How long a new worker has to show up in its cgroup before its start
/// counts as failed.
const JOIN_WITHIN: Duration = Duration::from_secs(2);

/// A worker process; killed and reaped when dropped, so a fault's load
/// never outlives the value that holds it.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    cgroup: PathBuf,
    /// The cgroup's OOM kills before the worker started.
    oom_before: Option<u64>,
    end: Option<End>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The OOM killer of its cgroup took it (SIGKILL while the cgroup's
    /// `oom_kill` count grew): the target's own limit was reached.
    OomKilled { limit: Option<u64> },
    /// It stopped by itself: its deadline, or its parent's end.
    Finished,
    /// Anything else: a signal from someone, an error (its status).
    Exited(String),
}

impl End {
    pub fn is_oom(&self) -> bool {
        matches!(self, End::OomKilled { .. })
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::OomKilled { limit } => {
                let limit = limit.map_or(String::new(), |b| format!(" of {} MiB", b >> 20));
                write!(
                    f,
                    "stress workers OOM-killed: the target reached its memory limit{limit}, as its own processes would have"
                )
            }
            End::Finished => write!(f, "the stress worker stopped by itself"),
            End::Exited(status) => write!(f, "the stress worker ended ({status})"),
        }
    }
}

impl Worker {
    /// Runs `exe stress-worker …` for `load`; Ok once the kernel lists the
    /// worker in `load.cgroup` (or it was OOM-killed there at once: in
    /// place, and already over).
    pub fn start(exe: &Path, load: &Load) -> Result<Worker, String> {
        let cg = load.cgroup.clone();
        let oom_before = cgroup::oom_kills(&cg);
        let child = Command::new(exe)
            .args(load.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a stress worker ({}): {e}", exe.display()))?;
        let mut w = Worker {
            child,
            cgroup: cg,
            oom_before,
            end: None,
        };
        let pid = w.child.id();
        let started = Instant::now();
        loop {
            if cgroup::procs(&w.cgroup).is_ok_and(|p| p.contains(&pid)) {
                return Ok(w);
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                let end = w.ended(status);
                if end.is_oom() {
                    w.end = Some(end);
                    return Ok(w);
                }
                let mut said = String::new();
                if let Some(mut err) = w.child.stderr.take() {
                    let _ = err.read_to_string(&mut said);
                }
                // Reaped: nothing left for Drop to kill.
                w.end = Some(end);
                return Err(format!(
                    "the stress worker ended before it joined {} ({status}){}",
                    w.cgroup.display(),
                    last_line(&said)
                ));
            }
            if started.elapsed() > JOIN_WITHIN {
                return Err(format!(
                    "the stress worker did not join {} within {JOIN_WITHIN:?}",
                    w.cgroup.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// How it ended, once it has (None while it runs).
    pub fn poll(&mut self) -> std::io::Result<Option<&End>> {
        if self.end.is_none()
            && let Some(status) = self.child.try_wait()?
        {
            self.end = Some(self.ended(status));
        }
        Ok(self.end.as_ref())
    }

    /// CPU time it has used so far, in milliseconds (None once it ended).
    pub fn cpu_ms(&self) -> Option<u64> {
        if self.end.is_some() {
            return None;
        }
        crate::process_cpu_ms(Path::new("/proc"), self.pid()).ok()
    }

    fn ended(&self, status: ExitStatus) -> End {
        let grew = matches!(
            (self.oom_before, cgroup::oom_kills(&self.cgroup)),
            (Some(before), Some(now)) if now > before
        );
        if status.signal() == Some(rustix::process::Signal::KILL.as_raw()) && grew {
            End::OomKilled {
                limit: cgroup::memory_max(&self.cgroup),
            }
        } else if status.success() {
            End::Finished
        } else {
            End::Exited(status.to_string())
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.end.is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(String::new(), |l| format!(": {}", l.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_read_as_said() {
        assert_eq!(
            End::OomKilled {
                limit: Some(32 << 20)
            }
            .to_string(),
            "stress workers OOM-killed: the target reached its memory limit of 32 MiB, as its own processes would have"
        );
        assert!(End::OomKilled { limit: None }.is_oom());
        assert!(!End::Exited("exit status: 0".into()).is_oom());
    }

    #[test]
    fn a_worker_that_cannot_start_says_why() {
        let load = Load {
            cgroup: "/nonexistent".into(),
            ..crate::idle_load()
        };
        let e =
            Worker::start(Path::new("/nonexistent/faultline"), &load).expect_err("no such program");
        assert!(e.contains("cannot start a stress worker"), "{e}");
        // A program that exits at once never joins.
        let e = Worker::start(Path::new("/bin/true"), &load).expect_err("exits");
        assert!(e.contains("ended before it joined /nonexistent"), "{e}");
    }
}
