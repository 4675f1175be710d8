//! `faultline-control-plane`: the tests' control plane (etcd,
//! kube-apiserver, optionally kube-controller-manager) for a person to play
//! with. `scripts/control-plane.sh` builds the binaries and calls this.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use faultline_testkit::cluster::{ControlPlane, Options, stop_detached};

#[derive(Debug, Parser)]
#[command(name = "faultline-control-plane", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start in the background, write DIR/kubeconfig, wait for /readyz.
    Up {
        /// Where state, logs, pids and the kubeconfig go.
        dir: PathBuf,
        /// The folder holding etcd, kube-apiserver and kube-controller-manager.
        #[arg(long, env = "FAULTLINE_CONTROL_PLANE")]
        bin: PathBuf,
        /// Do not start kube-controller-manager.
        #[arg(long)]
        no_controller_manager: bool,
    },
    /// Stop what `up DIR` started.
    Down { dir: PathBuf },
}

fn main() -> ExitCode {
    // kube's client logs every 500 of /readyz while the server starts.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,kube_client=off"))
        .init();
    match Cli::parse().command {
        Cmd::Up {
            dir,
            bin,
            no_controller_manager,
        } => {
            if dir.join("pids").exists() {
                tracing::error!(
                    "{} already holds a running control plane; `down` it first",
                    dir.display()
                );
                return ExitCode::from(2);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cannot start a runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = Options {
                controller_manager: !no_controller_manager,
                detach: true,
                ..Options::default()
            };
            let started = runtime.block_on(ControlPlane::start_in(&bin, &dir, options, None));
            let cp = match started {
                Ok(cp) => cp,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("kube-apiserver is ready at {}", cp.url);
            println!("export KUBECONFIG={}", cp.kubeconfig.display());
            println!("logs: {}/*.log", cp.dir().display());
            ExitCode::SUCCESS
        }
        Cmd::Down { dir } => match stop_detached(&dir) {
            Ok(n) => {
                println!("stopped {n} processes");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
