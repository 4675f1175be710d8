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
    let role = cli.args.role.name();
    match faultline_demo::run(cli.args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-demo {role}: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
