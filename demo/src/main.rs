//! `faultline-demo ROLE --listen ADDR`: one service of the demo shop.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "faultline-demo",
    version,
    about = "A service of Faultline's demo shop"
)]
struct Cli {
    #[command(flatten)]
    args: faultline_demo::RoleArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    faultline_telemetry::init_logs();
    let role = cli.args.role.name();
    match faultline_demo::run(cli.args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(role, "{}", faultline_telemetry::error_chain(&e));
            std::process::ExitCode::from(1)
        }
    }
}
