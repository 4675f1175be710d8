//! `faultline-observer`: the observer as a process.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use faultline_observer::{Addresses, ForwardConfig, ForwardProtocol, Limits};

/// Receives OTLP traces and serves live RED figures and breaker states.
#[derive(Debug, Parser)]
#[command(name = "faultline-observer", version, about)]
struct Cli {
    /// OTLP over gRPC.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4317")]
    otlp_grpc: SocketAddr,
    /// OTLP over HTTP (POST /v1/traces).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4318")]
    otlp_http: SocketAddr,
    /// The live API (/api/v1/services, /api/v1/stream, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    api: SocketAddr,
    /// Pass every span on to this OTLP receiver too (e.g. Jaeger at http://jaeger:4317).
    #[arg(long, value_name = "URL")]
    forward: Option<String>,
    /// grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc).
    #[arg(long, value_name = "PROTOCOL")]
    forward_protocol: Option<String>,
    /// Spans queued for forwarding at most; more are dropped and counted.
    #[arg(long, default_value_t = 100_000)]
    forward_queue: usize,
    /// Encoded bytes queued for forwarding at most (default 64 MiB); more
    /// are dropped and counted.
    #[arg(long, default_value_t = 64 << 20)]
    forward_queue_bytes: usize,
    /// Services tracked at most; spans of others are dropped and counted.
    #[arg(long, default_value_t = Limits::default().max_services)]
    max_services: usize,
    /// A file holding a bearer token (a mounted Secret): every OTLP export
    /// and API call but /health must then carry `authorization: Bearer TOKEN`.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// On a cluster: record each span as `NAMESPACE/SERVICE`, NAMESPACE
    /// being the sending pod's (its IP, from a watch of every pod through
    /// the in-cluster config or KUBECONFIG). Spans claiming another
    /// namespace (`k8s.namespace.name`) are dropped; spans from an IP no
    /// pod owns keep their bare name.
    #[arg(long)]
    attribute_namespaces: bool,
    /// With --attribute-namespaces: a namespace whose pods relay others'
    /// spans (an OpenTelemetry Collector), whose `k8s.namespace.name`
    /// claims are believed. Repeatable.
    #[arg(long, value_name = "NAMESPACE", requires = "attribute_namespaces")]
    relay_namespace: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    faultline_telemetry::init_logs();
    // Our own spans go where OTEL_EXPORTER_OTLP_ENDPOINT says (not to this
    // observer itself, or forwarding would feed on its own spans).
    let _telemetry = match faultline_telemetry::init("faultline-observer") {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot set up telemetry: {:#}", anyhow::Error::new(e));
            return ExitCode::from(2);
        }
    };
    let addresses = Addresses {
        otlp_grpc: cli.otlp_grpc,
        otlp_http: cli.otlp_http,
        api: cli.api,
    };
    let limits = Limits {
        max_services: cli.max_services,
        ..Limits::default()
    };
    let mut observer = faultline_observer::Observer::new(limits);
    if let Some(path) = &cli.token_file {
        match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => observer = observer.require_token(t.trim()),
            Ok(_) => {
                tracing::error!("--token-file {}: the file is empty", path.display());
                return ExitCode::from(2);
            }
            Err(e) => {
                tracing::error!("--token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Some(endpoint) = cli.forward {
        let protocol = match cli.forward_protocol.as_deref() {
            None => ForwardProtocol::from_env(),
            Some(p) => match ForwardProtocol::parse(p) {
                Some(p) => p,
                None => {
                    tracing::error!("--forward-protocol {p:?}: use grpc or http/protobuf");
                    return ExitCode::from(2);
                }
            },
        };
        let mut config = ForwardConfig::new(endpoint, protocol);
        config.queue_spans = cli.forward_queue;
        config.queue_bytes = cli.forward_queue_bytes;
        observer = observer.forward_to(config);
    }
    if cli.attribute_namespaces {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "--attribute-namespaces: cannot set up a Kubernetes client (in-cluster config or KUBECONFIG): {e}"
                );
                return ExitCode::from(2);
            }
        };
        let ips = faultline_observer::PodIps::default();
        tokio::spawn(faultline_observer::pods::follow(
            kube::Api::all(client),
            ips.clone(),
        ));
        observer = observer.attribute(faultline_observer::Attribution {
            senders: std::sync::Arc::new(ips),
            relays: cli.relay_namespace.into_iter().collect(),
        });
    }
    let running = match faultline_observer::start_with(&addresses, observer).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::from(4);
        }
    };
    let a = &running.addresses;
    tracing::info!(
        otlp_grpc = %a.otlp_grpc,
        otlp_http = %a.otlp_http,
        api = %format!("http://{}/api/v1/services", a.api),
        "listening"
    );
    tokio::select! {
        r = running.wait() => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("a server failed: {:#}", anyhow::Error::new(e));
                ExitCode::from(4)
            }
        },
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
    }
}
