//! `faultline-controller`: runs in the cluster (the Helm chart's
//! Deployment), turns Experiments into NodeFaults entries and judges them.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use clap::Parser;
use faultline_controller::leader::Elector;
use faultline_controller::{
    metrics::Metrics,
    observe::ObserverClient,
    reconcile::{self, Settings},
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Faultline's controller: Experiments become faults on the nodes' agents.
#[derive(Debug, Parser)]
#[command(name = "faultline-controller", version, about)]
struct Args {
    /// The observer's live API, read by hypothesis and abort checks
    /// (e.g. http://faultline-observer.faultline:9464). Without it, checks
    /// other than `http` are not evaluated.
    #[arg(long, env = "FAULTLINE_OBSERVER", value_name = "URL")]
    observer: Option<String>,
    /// A file holding the observer's bearer token (a mounted Secret).
    #[arg(long, value_name = "PATH")]
    observer_token_file: Option<std::path::PathBuf>,
    /// The observer attributes spans to their sender's namespace (its
    /// --attribute-namespaces): a check's `service` is read as
    /// `NAMESPACE/SERVICE`, the Experiment's namespace unless the service
    /// names another (`other-namespace/service`).
    #[arg(long)]
    observer_namespaced: bool,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "FAULTLINE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Take a coordination.k8s.io Lease before acting, so that of several
    /// replicas only one writes.
    #[arg(long, env = "FAULTLINE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// The Lease's namespace (the controller's own: its pods are never targets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "faultline")]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "faultline-controller")]
    lease_name: String,
    /// This replica's identity in the Lease and in Events (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holds without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// How often a running experiment is stepped (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    tick: Duration,
    /// How often due checks read the observer.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    check_every: Duration,
    /// How long into a run a check's service may stay unknown to the
    /// observer before an UnseenService Event names it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    unseen_grace: Duration,
    /// The dead-man's switch: no entry expires later than this after the
    /// controller last renewed it (renewed every half lease), so every
    /// fault ends within one lease of the controller or the API going.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    fault_lease: Duration,
    /// The cluster's ceiling on pods per run: the limit of every
    /// Experiment that sets none, and the highest one may set.
    #[arg(long)]
    max_targets: Option<u32>,
    /// How often the leader takes off the entries of Experiments that no
    /// longer exist and deletes empty NodeFaults objects.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    sweep_every: Duration,
    /// The cluster's ceiling on the share of a target's pods one run may
    /// take, in percent: a run that would take more does not start.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_percent: Option<u32>,
    /// Instead of running: delete every NodeFaults object, record every
    /// run in progress as aborted and remove every Experiment's finalizer
    /// (the chart's post-delete hook, once the controller and agents are gone).
    #[arg(long)]
    uninstall: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<faultline_api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    faultline_telemetry::init_logs();
    // Renewed every half lease, on a tick: a shorter one could lapse
    // between two renewals and end faults the run still wants.
    let shortest = (args.tick * 4).max(Duration::from_secs(2));
    if args.fault_lease < shortest {
        tracing::error!(
            "--fault-lease {:?} is too short: at least {shortest:?} (4 ticks, and 2s)",
            args.fault_lease
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "faultline-controller stopped");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The telemetry guard flushes spans when the controller stops.
    let _telemetry = faultline_telemetry::init("faultline-controller")?;
    let client = Client::try_default()
        .await
        .context("cannot set up a Kubernetes client (in-cluster config or KUBECONFIG)")?;
    if args.uninstall {
        let done = faultline_controller::uninstall::uninstall(client)
            .await
            .context("cannot clean up after the uninstall")?;
        tracing::info!(
            nodefaults_deleted = done.nodefaults_deleted,
            runs_ended = done.runs_ended,
            finalizers_removed = done.finalizers_removed,
            "cleaned up: nothing of Faultline's is left running"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tokio::spawn(serve(listener, Arc::new(registry), ready.clone()));

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("faultline-controller-{}", std::process::id()));
    // SIGTERM stops the reconciles first, then the election lets go of
    // the Lease: nothing is written once a standby may lead.
    let (terminate, terminated) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        terminate.send_replace(true);
    });
    let (leading_tx, leading) = watch::channel(!args.leader_elect);
    let (released_tx, released) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    if args.leader_elect {
        let elector = Elector::new(
            Api::<Lease>::namespaced(client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds),
        );
        tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "standing by for the leader lease");
        tokio::spawn(async move {
            elector
                .run(leading_tx, async {
                    let _ = done.await;
                })
                .await;
            let _ = released_tx.send(());
        });
    } else {
        drop(released_tx);
        drop(leading_tx);
    }
    let mut stop_on = terminated.clone();
    let stop = async move {
        let _ = stop_on.wait_for(|t| *t).await;
    };
    let mut observer = ObserverClient::new(args.observer.clone());
    if args.observer_namespaced {
        observer = observer.namespaced();
    }
    if let Some(path) = &args.observer_token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("--observer-token-file {}", path.display()))?;
        observer = observer.with_token(token.trim().to_owned());
    }
    let (ctx, task) = reconcile::start_replica(
        client,
        observer,
        Arc::new(jiff::Timestamp::now),
        Settings {
            tick: args.tick,
            check_every: args.check_every,
            unseen_grace: args.unseen_grace,
            fault_lease: args.fault_lease,
            sweep_every: args.sweep_every,
            ceilings: faultline_controller::plan::Ceilings {
                max_targets: args.max_targets,
                max_percent: args.max_percent,
            },
            protected_namespaces: faultline_controller::plan::ALWAYS_PROTECTED
                .iter()
                .map(|s| (*s).to_owned())
                .chain([args.lease_namespace.clone()])
                .collect(),
            ..Settings::default()
        },
        metrics.clone(),
        reconcile::Replica {
            instance: Some(identity),
            leading,
        },
        stop,
    );
    tokio::spawn(async move {
        // /readyz: once the watches have listed and reconciling has begun.
        if ctx.wait_ready(Duration::MAX).await {
            ready.store(true, Ordering::Relaxed);
        }
    });
    if let Err(e) = task.await {
        tracing::error!(error = %e, "the controller's task failed");
    }
    // The reconciles are over: the Lease may go.
    let _ = done_tx.send(());
    let _ = released.await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>, ready: Arc<AtomicBool>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the watches have not listed yet",
                        )
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}
