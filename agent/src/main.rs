//! `faultline-agent`: the node agent binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::mpsc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use faultline_agent::{
    Agent, Desired, Doorbell, Event, Events, FileEvents, FileSource, Journal, JournalError, Kernel,
    Metrics, Resolver, StateLock, SystemClock, cluster, read_desired,
};
use faultline_api::NodeFaults;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

#[derive(Parser, Debug)]
#[command(
    name = "faultline-agent",
    version,
    about = "Faultline's node agent: injects faults into this node's kernel, each until its deadline"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Follow a NodeFaults file (no cluster needed).
    Standalone {
        /// The NodeFaults YAML file to follow.
        #[arg(long)]
        desired: PathBuf,
        /// How often the desired file is checked, in milliseconds.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=10_000))]
        poll_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// One stress fault's worker, started by the agent itself inside the
    /// target's cgroup (not for people to run).
    #[command(hide = true)]
    StressWorker(faultline_stress::Load),
    /// Follow the NodeFaults object named after this node through the
    /// Kubernetes API (in-cluster config or kubeconfig) and write its status.
    Kube {
        /// This node's name (the NodeFaults object's name).
        #[arg(long, env = "NODE_NAME", value_parser = node_name)]
        node: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Where the journal lives; keep it across the agent's restarts (it
    /// only matters until the node reboots: /run/faultline-agent is fine).
    #[arg(long)]
    state_dir: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    kernel: KernelArgs,
}

#[derive(clap::Args, Debug)]
struct KernelArgs {
    /// The cgroup v2 mount (found in /proc/self/mountinfo when not given).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// The node's own network namespace: a pod found in it (hostNetwork)
    /// is never partitioned or delayed. PID 1's needs hostPID and
    /// CAP_SYS_PTRACE, as the chart gives; unreadable, pods are refused.
    #[arg(long, default_value = "/proc/1/ns/net")]
    host_netns: PathBuf,
    /// The host's /proc (mounted elsewhere when the agent has no hostPID).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Where container runtimes bind pod network namespaces: swept, with
    /// every process's, for Faultline's tables and qdiscs when the journal
    /// cannot be read.
    #[arg(long, default_value = "/run/netns")]
    netns_dir: PathBuf,
}

/// A node name as Kubernetes accepts it (a DNS subdomain).
fn node_name(s: &str) -> Result<String, String> {
    faultline_api::dns_subdomain(s)
        .map(|()| s.to_owned())
        .map_err(|e| format!("{s:?} is not a node name: {e}"))
}

fn main() -> ExitCode {
    faultline_telemetry::init_logs();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

/// How the loop is told to stop.
enum Stop {
    Doorbell(Doorbell),
    Channel(mpsc::Sender<Event>),
}

impl Stop {
    fn send(&self) {
        match self {
            Stop::Doorbell(bell) => {
                bell.send(Event::Shutdown);
            }
            Stop::Channel(tx) => {
                let _ = tx.send(Event::Shutdown);
            }
        }
    }
}

/// Where the desired state comes from.
enum Source {
    File {
        path: PathBuf,
        bytes: Option<Vec<u8>>,
        poll: Duration,
    },
    Kube {
        node: String,
    },
}

fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let (common, source, initial) = match cli.mode {
        Mode::StressWorker(load) => {
            faultline_stress::run(&load)?;
            return Ok(true);
        }
        Mode::Standalone {
            desired,
            poll_ms,
            common,
        } => {
            let (initial, bytes) = read_desired(&desired);
            let source = Source::File {
                path: desired,
                bytes,
                poll: Duration::from_millis(poll_ms),
            };
            (common, source, initial)
        }
        // Until the API answers, journaled faults stay until their deadlines.
        Mode::Kube { node, common } => (
            common,
            Source::Kube { node },
            Desired::Unknown("waiting for the Kubernetes API".into()),
        ),
    };
    // The OTLP exporter (tonic, hyper) needs a runtime to exist when it is
    // built and while it exports, so the runtime comes first and outlives it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let telemetry = {
        let _in_runtime = rt.enter();
        faultline_telemetry::init("faultline-agent").context("cannot set up telemetry")?
    };
    let mut resolver = Resolver::default();
    if let Some(root) = common.kernel.cgroup_root {
        resolver.cgroup_root = root;
    }
    resolver.host_netns = common.kernel.host_netns;
    resolver.proc_root = common.kernel.proc_root;
    let netns_dir = common.kernel.netns_dir;
    let resolver_proc_root = resolver.proc_root.clone();
    let backend = Kernel {
        resolver,
        ..Kernel::default()
    };
    // Held until the process ends, after the last fault is removed.
    let _state_lock = StateLock::acquire(&common.state_dir, |path| {
        tracing::warn!(
            "another agent holds {}; waiting for it to exit",
            path.display()
        );
    })?;
    // Caught from here on: a SIGTERM during the recovery below (which may
    // continue stopped processes, remove rules) is acted on once it is
    // done, instead of ending the agent halfway by default.
    let signals = {
        let _in_runtime = rt.enter();
        Signals::new()?
    };
    let journal = match Journal::open(&common.state_dir) {
        Ok(j) => j,
        // What was applied is unknown: remove all of Faultline's that can be
        // found on the node and start clean, rather than crash-loop with
        // faults in the kernel.
        Err(e @ JournalError::Corrupt { .. }) => {
            tracing::error!(
                "{}: what it recorded is unknown, so everything of Faultline's on the node is removed",
                faultline_agent::report(&e)
            );
            let swept = faultline_agent::sweep(&resolver_proc_root, &netns_dir);
            tracing::warn!(
                "swept {} network namespace(s): removed {} nftables table(s) and {} netem root(s) of Faultline's",
                swept.namespaces,
                swept.tables,
                swept.qdiscs
            );
            for f in &swept.failures {
                tracing::error!("sweep: {f}");
            }
            // Not clean for sure: keep the journal and stop (fail safe),
            // rather than forget what may still be in the kernel.
            if !swept.failures.is_empty() {
                anyhow::bail!(
                    "{} namespace(s) could not be swept; the journal stays, and the agent stops",
                    swept.failures.len()
                );
            }
            for moved in Journal::set_aside_corrupt(&common.state_dir)? {
                tracing::warn!("the unreadable journal is kept as {}", moved.display());
            }
            Journal::open(&common.state_dir)?
        }
        Err(e) => return Err(e.into()),
    };
    let registry = Metrics::default();
    // The stale sweep runs here, before any source or listener starts (a
    // signal meanwhile is acted on once the loop runs).
    let mut agent = Agent::start(
        backend,
        journal,
        initial,
        registry.clone(),
        jiff::Timestamp::now(),
    );
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    if matches!(source, Source::Kube { .. }) {
        agent.report_to(status_tx);
        agent.cluster_mode();
    }

    // The file source is waited on by the loop's thread itself; the
    // Kubernetes source runs as tasks that send to the loop over a channel.
    let (mut events, stop, kube): (Box<dyn Events + Send>, Stop, _) = match source {
        Source::File { path, bytes, poll } => {
            let (events, bell) = FileEvents::new(FileSource::new(path, bytes), poll)
                .context("cannot set up the desired-file source")?;
            (Box::new(events), Stop::Doorbell(bell), None)
        }
        Source::Kube { node } => {
            let (tx, rx) = mpsc::channel::<Event>();
            (Box::new(rx), Stop::Channel(tx.clone()), Some((node, tx)))
        }
    };
    // Kube mode: deadlines by the later of this node's clock and the API
    // server's (see `skew`); standalone, the node's own.
    let clock = faultline_agent::skew::ServerAware::default();
    let skew = clock.skew.clone();
    let kube_mode = kube.is_some();
    let looper = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || {
            if kube_mode {
                agent.run(&mut *events, &clock)
            } else {
                agent.run(&mut *events, &SystemClock)
            }
        })
        .context("cannot start the reconcile thread")?;
    let served = rt.block_on(async move {
        if let Some(addr) = common.metrics {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            tracing::info!("metrics on http://{addr}/metrics");
            tokio::spawn(faultline_agent::serve_metrics(listener, registry));
        }
        if let Some((node, tx)) = kube {
            // kube's errors already carry their causes in their text.
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!("cannot set up a Kubernetes client (in-cluster or kubeconfig): {e}")
            })?;
            let (skew_tx, skew_rx) = tokio::sync::watch::channel(None);
            tokio::spawn(faultline_agent::skew::measure(
                client.clone(),
                skew,
                skew_tx,
            ));
            let api: kube::Api<NodeFaults> = kube::Api::all(client);
            tracing::info!("following NodeFaults {node}");
            tokio::spawn(cluster::follow(api.clone(), node.clone(), tx));
            tokio::spawn(cluster::write_status(api, node, status_rx, skew_rx));
        }
        signals.wait().await;
        anyhow::Ok(())
    });
    // Whatever stopped the serving side, the loop removes everything it applied.
    stop.send();
    let clean = looper
        .join()
        .map_err(|_| anyhow::anyhow!("the reconcile thread panicked"))?;
    // The last spans (the removals) are exported while the runtime still runs.
    {
        let _in_runtime = rt.enter();
        drop(telemetry);
    }
    // The source tasks hold senders; dropping the runtime stops them.
    drop(rt);
    served?;
    if clean {
        tracing::info!("every fault removed; exiting");
    }
    Ok(clean)
}

/// The signals that end the agent, every fault removed first.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime.
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            // A closed terminal would otherwise end the agent with its
            // faults in place until the next start.
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// Until one arrives (at once if one came since `new`).
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: removing every fault"),
            _ = self.int.recv() => tracing::info!("SIGINT: removing every fault"),
            _ = self.hup.recv() => tracing::info!("SIGHUP: removing every fault"),
        }
    }
}
