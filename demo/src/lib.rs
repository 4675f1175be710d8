//! A small shop that behaves like a real one under faults: frontend →
//! checkout → payments and inventory, built on `faultline-resilience`, with
//! W3C trace-context propagation and OTLP export. See the crate README for
//! what it does under latency, kills and partitions.
//!
//! The roles are a library so that the `faultline` binary can serve them
//! itself (`faultline demo` needs no other binary).

pub mod http;
pub mod load;
pub mod shop;

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};

/// Why a role could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{var} is not set: where is {dependency}?")]
    MissingAddress { var: String, dependency: String },
    #[error("load needs --target or FRONTEND_ADDR")]
    NoTarget,
    #[error("{role} needs --listen ADDR")]
    NoListen { role: &'static str },
    #[error("{role} cannot listen on {addr}")]
    Listen {
        role: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{role} stopped serving")]
    Serve {
        role: &'static str,
        source: std::io::Error,
    },
    #[error("the inventory retry policy is invalid")]
    RetryPolicy(#[source] tower::retry::backoff::InvalidBackoff),
    #[error("cannot set up telemetry")]
    Telemetry(#[from] faultline_telemetry::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Frontend,
    Checkout,
    Payments,
    Inventory,
    /// Sends a steady request rate to the frontend and prints a summary.
    Load,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Checkout => "checkout",
            Role::Payments => "payments",
            Role::Inventory => "inventory",
            Role::Load => "load",
        }
    }
}

/// Arguments of one role; dependencies come from `<NAME>_ADDR` variables.
#[derive(Debug, Clone, Args)]
pub struct RoleArgs {
    #[arg(value_enum)]
    pub role: Role,
    /// Where to listen (every role but load).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// checkout: how long a payments call may take.
    #[arg(long, value_parser = parse_duration, default_value = "250ms")]
    pub payments_timeout: Duration,
    /// checkout: how long the payments breaker stays open before trial calls.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub breaker_wait: Duration,
    /// checkout: call payments without a circuit breaker.
    #[arg(long)]
    pub no_breaker: bool,
    /// load: the frontend's address (default: FRONTEND_ADDR).
    #[arg(long, value_name = "ADDR")]
    pub target: Option<String>,
    /// load: requests per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// load: how long to send.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
}

/// `250ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (use 250ms, 5s, 2m)");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(bad()),
    }
}

/// Runs one role until it is done (load) or until SIGINT/SIGTERM (services).
pub async fn run(args: RoleArgs) -> Result<(), Error> {
    let _telemetry = faultline_telemetry::init(args.role.name())?;
    let router = match args.role {
        Role::Load => {
            let target = match args.target.clone() {
                Some(t) => t,
                None => std::env::var("FRONTEND_ADDR").map_err(|_| Error::NoTarget)?,
            };
            // With --listen, answer /health meanwhile, so a runtime that
            // waits for every service's port can run load as a service.
            if let Some(listen) = args.listen {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| Error::Listen {
                        role: "load",
                        addr: listen,
                        source,
                    })?;
                let health =
                    axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
                tokio::spawn(async move { axum::serve(listener, health).await });
            }
            let summary = load::run(&load::LoadOptions {
                target,
                path: "/order".into(),
                rate: args.rate,
                duration: args.duration,
                timeout: Duration::from_secs(5),
            })
            .await;
            println!("{summary}");
            return Ok(());
        }
        Role::Payments => shop::payments(),
        Role::Inventory => shop::inventory(),
        Role::Checkout => {
            let mut opts = shop::CheckoutOptions {
                payments_timeout: args.payments_timeout,
                ..shop::CheckoutOptions::default()
            };
            opts.breaker = (!args.no_breaker).then(|| faultline_resilience::breaker::Config {
                wait_in_open: args.breaker_wait,
                ..faultline_resilience::breaker::Config::default()
            });
            shop::checkout(&opts)?
        }
        Role::Frontend => shop::frontend()?,
    };
    let role = args.role.name();
    let listen = args.listen.ok_or(Error::NoListen { role })?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            role,
            addr: listen,
            source,
        })?;
    tracing::info!(role, %listen, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| Error::Serve { role, source })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
