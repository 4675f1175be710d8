//! `faultline`: the user's binary.

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
    /// Print the CustomResourceDefinitions, for `kubectl apply -f -`.
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Exit codes shared by every command (see DESIGN.md).
pub const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, quiet } => Ok(validate::run(&paths, quiet)),
        Command::Crd { out_dir } => crd(out_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn crd(out_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let crds = faultline_api::crd::crds();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (file, crd) in &crds {
                let path = dir.join(file);
                std::fs::write(&path, faultline_api::crd::crd_yaml(crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let docs: Vec<String> = crds
                .iter()
                .map(|(_, crd)| faultline_api::crd::crd_yaml(crd))
                .collect::<Result<_, _>>()?;
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
