//! Services of a topology as supervised local processes: started from an
//! argument vector (never a shell) in their own process group, waited for
//! on their port, restarted with backoff when they die (as kubelet would),
//! and stopped with their whole group.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use faultline_api::topology::Service;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::{process::Command, sync::watch, task::JoinHandle};

/// How a service's process is launched.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub port: u16,
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
        }
    }
}

/// A supervised service; dropping it does not stop it — call `stop`.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    pid: Arc<AtomicU32>,
    restarts: Arc<AtomicU64>,
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
    let (stop, mut stopped) = watch::channel(false);
    let (p, r) = (pid.clone(), restarts.clone());
    let name = launch.name.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut cmd = Command::new(&launch.program);
            cmd.args(&launch.args)
                .envs(&launch.env)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
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
            tokio::select! {
                status = child.wait() => {
                    p.store(0, Ordering::SeqCst);
                    if *stopped.borrow() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    push(&log, format!("{} exited ({}); restarting in {:?}", launch.name,
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
        stop,
        task,
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
