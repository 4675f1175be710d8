//! `faultline-agent`: the node agent binary.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::mpsc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use faultline_agent::{
    agent::{Agent, Event, SystemClock},
    backend::{Kernel, Programs},
    journal::Journal,
    log,
    metrics::Metrics,
    source::{FileSource, read_desired},
    target::Resolver,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
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
        /// Where the journal lives; keep it across restarts.
        #[arg(long)]
        state_dir: PathBuf,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// How often the desired file is checked, in milliseconds.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=10_000))]
        poll_ms: u64,
        #[command(flatten)]
        kernel: KernelArgs,
    },
}

#[derive(clap::Args, Debug)]
struct KernelArgs {
    /// The nft program.
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
    /// The tc program.
    #[arg(long, default_value = "tc")]
    tc: PathBuf,
    /// The ip program.
    #[arg(long, default_value = "ip")]
    ip: PathBuf,
    /// The cgroup v2 mount (found in /proc/self/mountinfo when not given).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            log(format_args!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let Mode::Standalone {
        desired,
        state_dir,
        metrics,
        poll_ms,
        kernel,
    } = cli.mode;
    let _telemetry =
        faultline_telemetry::init("faultline-agent").context("cannot set up telemetry")?;
    let mut resolver = Resolver::default();
    if let Some(root) = kernel.cgroup_root {
        resolver.cgroup_root = root;
    }
    let backend = Kernel {
        resolver,
        programs: Programs {
            nft: kernel.nft,
            tc: kernel.tc,
            ip: kernel.ip,
        },
    };
    let journal = Journal::open(&state_dir)?;
    let (initial, bytes) = read_desired(&desired);
    let registry = Metrics::default();
    // The stale sweep runs here, before any source, signal handler or listener starts.
    let agent = Agent::start(
        backend,
        journal,
        initial,
        registry.clone(),
        jiff::Timestamp::now(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (tx, rx) = mpsc::channel::<Event>();
    let looper = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || agent.run(&rx, &SystemClock))
        .context("cannot start the reconcile thread")?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        if let Some(addr) = metrics {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            log(format_args!("metrics on http://{addr}/metrics"));
            tokio::spawn(serve_metrics(listener, registry));
        }
        tokio::spawn(
            FileSource::new(desired, bytes).follow(Duration::from_millis(poll_ms), tx.clone()),
        );
        tokio::select! {
            _ = term.recv() => log("SIGTERM: removing every fault"),
            _ = int.recv() => log("SIGINT: removing every fault"),
        }
        let _ = tx.send(Event::Shutdown);
        anyhow::Ok(())
    })?;
    let clean = looper
        .join()
        .map_err(|_| anyhow::anyhow!("the reconcile thread panicked"))?;
    // The follower task holds a sender; dropping the runtime stops it.
    drop(rt);
    if clean {
        log("every fault removed; exiting");
    }
    Ok(clean)
}

/// A minimal HTTP/1.1 responder: every request gets the metrics text.
async fn serve_metrics(listener: TcpListener, metrics: Metrics) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            // The request line is all we need; a slow client gets a short wait.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
            let body = metrics.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}
