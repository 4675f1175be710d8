//! Services of a topology as supervised local processes: started from an
//! argument vector (never a shell) in their own process group, waited for
//! on their port, restarted with backoff when they die (as kubelet would),
//! and stopped with their whole group. What they print is kept: the last
//! lines in memory (shown when a service dies or never comes up) and, when
//! asked, everything in a log file per service.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use faultline_api::Service;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
    sync::watch,
    task::JoinHandle,
};

/// Lines of output kept per service, and the longest line kept whole.
const TAIL_LINES: usize = 20;
const TAIL_LINE_BYTES: usize = 512;

/// The last lines a service printed on stdout and stderr, bounded in lines
/// and line length whatever it prints.
#[derive(Debug, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Tail {
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.partial.len() < TAIL_LINE_BYTES {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).trim_end().to_owned();
        self.partial.clear();
        if line.is_empty() {
            return;
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The last `n` lines, oldest first (an unfinished line included).
    pub fn last(&self, n: usize) -> Vec<String> {
        let mut all: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            all.push(String::from_utf8_lossy(&self.partial).trim_end().to_owned());
        }
        let skip = all.len().saturating_sub(n);
        all.split_off(skip)
    }
}

/// How a service's process is launched.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    /// Append everything the service prints to this file.
    pub log_file: Option<PathBuf>,
    /// Run it in this cgroup (v2 directory): every start is moved there.
    pub cgroup: Option<PathBuf>,
}

impl Launch {
    /// From a topology service; the program `faultline` is this executable,
    /// so a plain checkout runs with nothing installed on the PATH.
    pub fn from_service(service: &Service, env: BTreeMap<String, String>) -> Launch {
        let program = match service.command.first().map(String::as_str) {
            Some("faultline") => {
                std::env::current_exe().unwrap_or_else(|_| PathBuf::from("faultline"))
            }
            Some(p) => PathBuf::from(p),
            None => PathBuf::new(),
        };
        let mut all_env = service.env.clone();
        all_env.extend(env);
        Launch {
            name: service.name.clone(),
            program,
            args: service.command.iter().skip(1).cloned().collect(),
            env: all_env,
            port: service.port,
            log_file: None,
            cgroup: None,
        }
    }
}

/// A supervised service; dropping it does not stop it — call `stop`.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU64>,
    tail: Arc<Mutex<Tail>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// The current process id (0 between restarts).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// The last lines the service printed.
    pub fn last_output(&self, n: usize) -> Vec<String> {
        self.tail.lock().map(|t| t.last(n)).unwrap_or_default()
    }

    /// Sends a signal to the service's whole process group.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        let pid = self.pid();
        let (Some(pid), Some(sig)) = (Pid::from_raw(pid as i32), Signal::from_named_raw(signal))
        else {
            return Err(std::io::Error::other(format!(
                "{} is not running",
                self.name
            )));
        };
        kill_process_group(pid, sig).map_err(std::io::Error::from)
    }

    /// Stops the service: SIGTERM to its group, SIGKILL after 3 s.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts a service and keeps it running until stopped.
pub fn supervise(launch: Launch, log: Arc<Mutex<Vec<String>>>) -> Supervised {
    let pid = Arc::new(AtomicU32::new(0));
    let restarts = Arc::new(AtomicU64::new(0));
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (stop, mut stopped) = watch::channel(false);
    let (p, r, t) = (pid.clone(), restarts.clone(), tail.clone());
    let name = launch.name.clone();
    let file = launch
        .log_file
        .as_deref()
        .and_then(|path| match open_log(path) {
            Ok(f) => Some(Arc::new(Mutex::new(f))),
            Err(e) => {
                push(
                    &log,
                    format!("{}: cannot write {}: {e}", launch.name, path.display()),
                );
                None
            }
        });
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut cmd = Command::new(&launch.program);
            cmd.args(&launch.args)
                .envs(&launch.env)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let started = tokio::time::Instant::now();
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    push(
                        &log,
                        format!(
                            "{}: cannot start {}: {e}",
                            launch.name,
                            launch.program.display()
                        ),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            p.store(child.id().unwrap_or(0), Ordering::SeqCst);
            if let (Some(cg), Some(pid)) = (&launch.cgroup, child.id())
                && let Err(e) = crate::stress::place(pid, cg)
            {
                push(
                    &log,
                    format!(
                        "{}: cannot move it into cgroup {}: {e}",
                        launch.name,
                        cg.display()
                    ),
                );
            }
            if let Some(f) = &file
                && let Ok(mut f) = f.lock()
            {
                let _ = writeln!(
                    f,
                    "--- {} started at {} (pid {}) ---",
                    launch.name,
                    jiff::Timestamp::now(),
                    child.id().unwrap_or(0)
                );
            }
            let readers = [
                child
                    .stdout
                    .take()
                    .map(|o| tokio::spawn(keep_output(o, t.clone(), file.clone()))),
                child
                    .stderr
                    .take()
                    .map(|e| tokio::spawn(keep_output(e, t.clone(), file.clone()))),
            ];
            tokio::select! {
                status = child.wait() => {
                    p.store(0, Ordering::SeqCst);
                    // What it printed last, before saying why it ended.
                    for reader in readers.into_iter().flatten() {
                        let _ = tokio::time::timeout(Duration::from_millis(200), reader).await;
                    }
                    if *stopped.borrow() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let last = t.lock().map(|t| t.last(3)).unwrap_or_default();
                    let said = if last.is_empty() {
                        String::new()
                    } else {
                        format!("; its last output: {}", last.join(" | "))
                    };
                    push(&log, format!("{} exited ({}); restarting in {:?}{said}", launch.name,
                        status.map_or("unknown".into(), |s| s.to_string()), backoff));
                    // A process that ran a while gets a fresh backoff.
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(500);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                _ = stopped.changed() => {
                    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
                        let _ = kill_process_group(pid, Signal::TERM);
                        if tokio::time::timeout(Duration::from_secs(3), child.wait()).await.is_err() {
                            let _ = kill_process_group(pid, Signal::KILL);
                        }
                    }
                    let _ = child.wait().await;
                    p.store(0, Ordering::SeqCst);
                    return;
                }
            }
        }
    });
    Supervised {
        name,
        pid,
        restarts,
        tail,
        stop,
        task,
    }
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Reads one output stream of a service to its end, into the tail and the
/// log file. Reading never stops early, so a chatty service never blocks on
/// a full pipe.
async fn keep_output(
    mut from: impl AsyncRead + Unpin,
    tail: Arc<Mutex<Tail>>,
    file: Option<Arc<Mutex<std::fs::File>>>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Ok(mut t) = tail.lock() {
            t.push(&buf[..n]);
        }
        if let Some(f) = &file
            && let Ok(mut f) = f.lock()
        {
            let _ = f.write_all(&buf[..n]);
        }
    }
}

fn push(log: &Mutex<Vec<String>>, line: String) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// Waits until something accepts connections on `port` on loopback.
pub async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_bounded_in_lines_and_length() {
        let mut t = Tail::default();
        for i in 0..50 {
            t.push(format!("line {i}\n").as_bytes());
        }
        assert_eq!(t.last(2), ["line 48", "line 49"]);
        assert_eq!(t.last(100).len(), TAIL_LINES);
        t.push(&[b'x'; 5000]);
        t.push(b"\n\n\nhalf");
        let last = t.last(2);
        assert_eq!(last[0].len(), TAIL_LINE_BYTES);
        assert_eq!(last[1], "half", "an unfinished line counts");
    }
}
