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
            let mut said = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                said.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("faultline-demo {role}: {said}");
            std::process::ExitCode::from(1)
        }
    }
}
