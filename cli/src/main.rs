//! `faultline`: the user's binary.

/// `println!` that never panics: a terminal closed under a run (SIGHUP) or
/// a closed pipe must not stop faultline while it removes faults.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics, for the same reason.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cluster;
mod dashboard;
mod local;
mod plan;
mod report;
mod validate;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Chaos experiments for Kubernetes and local processes.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check Faultline files (Experiment, NodeFaults, Topology) without applying anything.
    ///
    /// Exit 0 when every document is valid, 2 otherwise; every problem is
    /// printed as FILE:LINE:COL: field.path: what is wrong.
    Validate {
        /// Files or directories (searched recursively for .yaml/.yml); `-` reads stdin.
        #[arg(required = true, value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// Print nothing for valid documents.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run an experiment: on the cluster of the current kubeconfig (the
    /// controller runs it; this follows its status), or with --local against
    /// a topology of local processes.
    ///
    /// Exit 0 when the hypothesis held, 1 when it did not, 2 on invalid
    /// input (nothing started), 3 when aborted (every fault removed; Ctrl-C
    /// aborts), 4 when the run itself broke (no cluster, no controller, a fault
    /// nobody confirmed in place), 5
    /// when nothing failed but a check was never judged on enough evidence
    /// (too few requests, a service never seen).
    Run {
        /// The Experiment file.
        experiment: PathBuf,
        /// The Topology file of the local services.
        #[arg(long, value_name = "TOPOLOGY")]
        local: Option<PathBuf>,
        /// Fixes which targets are chosen (modes one, fixed, percent) in
        /// local mode; in a cluster the controller seeds from the
        /// experiment's uid.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// On a cluster: how long to wait for the controller to take the
        /// experiment up before giving up (exit 4).
        #[arg(long, default_value = "60s", value_parser = faultline_demo::parse_duration)]
        start_timeout: std::time::Duration,
        /// Write a JUnit XML report (one test case per check).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write the run's journal as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write each service's output to DIR/<service>.log (appended, a
        /// header at each start). Without it, the last lines are shown when
        /// a service dies or never comes up.
        #[arg(long, value_name = "DIR")]
        logs: Option<PathBuf>,
        /// Wait for each start time of the experiment's `schedule` (UTC) and
        /// run then, until Ctrl-C, instead of running once now. Runs never
        /// overlap: start times passing during a run are skipped. Reports are
        /// rewritten after each run.
        #[arg(long)]
        follow_schedule: bool,
        /// With --follow-schedule: stop after this many runs; the exit code
        /// is then the worst of theirs.
        #[arg(long, value_name = "N", requires = "follow_schedule", value_parser = clap::value_parser!(u32).range(1..))]
        runs: Option<u32>,
        /// In local mode, print plain progress lines instead of opening the
        /// dashboard (it opens only when stdin and stdout are a terminal).
        #[arg(long)]
        no_dashboard: bool,
        /// Forward every span the local services send to this OTLP/gRPC
        /// receiver as well, e.g. Jaeger's `http://127.0.0.1:4317` (its UI
        /// at :16686 then shows the run's traces).
        #[arg(long, value_name = "URL")]
        otlp_forward: Option<String>,
    },
    /// Run the demo shop with payments slowed by 300 ms: checkout's breaker
    /// must open and frontend's error rate stay under 5 %.
    Demo {
        /// How long the experiment runs (at least 30s).
        #[arg(long, default_value = "60s", value_parser = faultline_demo::parse_duration)]
        duration: std::time::Duration,
        /// Run checkout without its circuit breaker (the hypothesis fails).
        #[arg(long)]
        no_breaker: bool,
        /// Print plain progress lines instead of opening the dashboard (it
        /// opens only when stdin and stdout are a terminal).
        #[arg(long)]
        no_dashboard: bool,
        /// Write a JUnit XML report (one test case per check).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write the run's journal as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write each service's output to DIR/<service>.log (appended, a
        /// header at each start). Without it, the last lines are shown when
        /// a service dies or never comes up.
        #[arg(long, value_name = "DIR")]
        logs: Option<PathBuf>,
        /// Forward every span the local services send to this OTLP/gRPC
        /// receiver as well, e.g. Jaeger's `http://127.0.0.1:4317` (its UI
        /// at :16686 then shows the run's traces).
        #[arg(long, value_name = "URL")]
        otlp_forward: Option<String>,
    },
    /// The terminal dashboard: services, circuit breakers, edges and error
    /// rates from an observer, live; with --experiment, that Experiment's
    /// run on the cluster, which `a` aborts.
    ///
    /// For an observer in a cluster: `kubectl -n faultline port-forward
    /// svc/faultline-observer 9464` first.
    Dashboard {
        /// The observer's live API.
        #[arg(long, default_value = "http://127.0.0.1:9464", value_name = "URL")]
        observer: String,
        /// Follow this Experiment on the cluster of the current kubeconfig.
        #[arg(long, value_name = "NAME")]
        experiment: Option<String>,
        /// The Experiment's namespace (default: the kubeconfig's).
        #[arg(short, long, requires = "experiment")]
        namespace: Option<String>,
    },
    /// One service of the demo shop (used by `faultline demo` and demo topologies).
    #[command(hide = true)]
    DemoRole {
        #[command(flatten)]
        args: faultline_demo::RoleArgs,
    },
    /// One stress fault's worker, started by a local run inside a
    /// service's cgroup (not for people to run).
    #[command(hide = true)]
    StressWorker(faultline_stress::Load),
    /// Stop a running experiment on the cluster at once: every fault it
    /// placed is removed. Exit 0 once the controller confirms.
    Abort {
        /// The Experiment's name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every running Experiment: in NAMESPACE with -n, else in every namespace.
        #[arg(long)]
        all: bool,
        /// Its namespace (default: the kubeconfig's; with --all, every one).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Why, for its status and Events.
        #[arg(long, default_value = "aborted with faultline abort")]
        reason: String,
        /// How long to wait for the controller to confirm.
        #[arg(long, default_value = "60s", value_parser = faultline_demo::parse_duration)]
        wait: std::time::Duration,
    },
    /// Show what an experiment would touch on the cluster of the current
    /// kubeconfig, applying nothing: the pods each fault hits and on which
    /// nodes, the pods skipped and why, what each node's agent would change
    /// in its kernel, and whether the limits pass. With --local, what
    /// `faultline run --local` would do: the services each fault hits, what
    /// each proxied edge and process gets. Exit 0 when the run would start,
    /// 2 when it would be refused (each reason printed).
    Plan {
        /// The Experiment file.
        experiment: PathBuf,
        /// Plan a local run against this Topology file instead.
        #[arg(long, value_name = "TOPOLOGY")]
        local: Option<PathBuf>,
        /// With --local: the seed `faultline run --local` would be given.
        #[arg(long, default_value_t = 0, requires = "local")]
        seed: u64,
        /// Its namespace (default: the file's, else the kubeconfig's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Faultline's own namespace, never a target.
        #[arg(long, default_value = "faultline")]
        release_namespace: String,
        /// The cluster's ceiling on target pods (chart ceilings.maxTargets).
        #[arg(long)]
        max_targets: Option<u32>,
        /// The cluster's ceiling on a target's share of its pods, in
        /// percent (chart ceilings.maxPercent).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        max_percent: Option<u32>,
        #[arg(short, long, value_enum, default_value = "text")]
        output: plan::Output,
    },
    /// Print the CustomResourceDefinitions, for `kubectl apply -f -`.
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Exit code 2, shared by every command (see docs/architecture.md).
pub(crate) use local::EXIT_INVALID;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, quiet } => Ok(validate::run(&paths, quiet)),
        Command::Crd { out_dir } => crd(out_dir),
        Command::Plan {
            experiment,
            local: Some(topology),
            seed,
            output,
            ..
        } => Ok(plan::run_local(&experiment, &topology, seed, output)),
        Command::Plan {
            experiment,
            local: None,
            namespace,
            release_namespace,
            max_targets,
            max_percent,
            output,
            ..
        } => Ok(plan::run(
            &experiment,
            namespace.as_deref(),
            &plan::Cluster {
                release_namespace: &release_namespace,
                ceilings: faultline_controller::plan::Ceilings {
                    max_targets,
                    max_percent,
                },
            },
            output,
        )),
        Command::Run {
            experiment,
            local: Some(topology),
            seed,
            junit,
            json,
            logs,
            follow_schedule,
            runs,
            no_dashboard,
            otlp_forward,
            ..
        } => Ok(local::run_files(
            &experiment,
            &topology,
            seed,
            &local::Reports {
                junit,
                json,
                logs,
                otlp_forward,
            },
            follow_schedule.then_some(local::Follow { runs }),
            local::Ui::choose(no_dashboard),
        )),
        Command::Run {
            local: None,
            otlp_forward: Some(_),
            ..
        } => {
            tell!(
                "faultline run: --otlp-forward is for local mode; on a cluster the chart's observer forwards spans (--set observer.forward=URL)"
            );
            Ok(ExitCode::from(EXIT_INVALID))
        }
        Command::Run {
            local: None,
            follow_schedule: true,
            ..
        } => {
            tell!(
                "faultline run: --follow-schedule is for local mode; on a cluster the controller runs a scheduled experiment at each start time (kubectl apply it)"
            );
            Ok(ExitCode::from(EXIT_INVALID))
        }
        Command::Run {
            experiment,
            local: None,
            junit,
            json,
            logs,
            start_timeout,
            ..
        } => Ok(cluster::run_file(
            &experiment,
            &local::Reports {
                junit,
                json,
                logs,
                otlp_forward: None,
            },
            cluster::Waits {
                start: start_timeout,
            },
        )),
        Command::Abort {
            name,
            all,
            namespace,
            reason,
            wait,
        } => Ok(match (name, all) {
            (Some(name), false) => cluster::abort(&name, namespace.as_deref(), &reason, wait),
            _ => cluster::abort_all(namespace.as_deref(), &reason, wait),
        }),
        Command::Demo {
            duration,
            no_breaker,
            no_dashboard,
            junit,
            json,
            logs,
            otlp_forward,
        } => Ok(local::demo(
            duration,
            no_breaker,
            &local::Reports {
                junit,
                json,
                logs,
                otlp_forward,
            },
            local::Ui::choose(no_dashboard),
        )),
        Command::Dashboard {
            observer,
            experiment,
            namespace,
        } => Ok(dashboard::run(
            &observer,
            experiment.as_deref(),
            namespace.as_deref(),
        )),
        Command::DemoRole { args } => demo_role(args),
        Command::StressWorker(load) => faultline_stress::run(&load)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tell!("faultline: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn demo_role(args: faultline_demo::RoleArgs) -> anyhow::Result<ExitCode> {
    // A service of its own, whose output the runtime keeps: it logs.
    faultline_telemetry::init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(faultline_demo::run(args))?;
    Ok(ExitCode::SUCCESS)
}

fn crd(out_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let crds = faultline_api::crds();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, crd) in &crds {
                let path = dir.join(file);
                std::fs::write(&path, faultline_api::crd_yaml(crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                say!("wrote {}", path.display());
            }
        }
        None => {
            let docs: Vec<String> = crds
                .iter()
                .map(|(_, crd)| faultline_api::crd_yaml(crd))
                .collect::<Result<_, _>>()?;
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
