//! `faultline validate`: every problem of every input, located; exit 2 if any.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use faultline_api::parse_documents;

use crate::EXIT_INVALID;

/// One input to check: a display name and its bytes (or why they could not be read).
struct Input {
    name: String,
    bytes: Result<Vec<u8>, String>,
}

pub fn run(paths: &[PathBuf], quiet: bool) -> ExitCode {
    let mut inputs = Vec::new();
    for p in paths {
        collect(p, true, &mut inputs);
    }
    let mut problems = 0usize;
    let mut documents = 0usize;
    for input in &inputs {
        let bytes = match &input.bytes {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{}: {e}", input.name);
                problems += 1;
                continue;
            }
        };
        for doc in parse_documents(bytes) {
            documents += 1;
            match doc.result {
                Ok(resource) => {
                    if !quiet {
                        println!(
                            "{}:{}: {} {} is valid",
                            input.name,
                            doc.pos.line,
                            resource.kind(),
                            resource.display_name()
                        );
                    }
                }
                Err(diags) => {
                    for d in &diags {
                        eprintln!("{}", d.display_in(&input.name));
                    }
                    problems += diags.len();
                }
            }
        }
    }
    if problems > 0 {
        eprintln!(
            "faultline validate: {problems} problem{} in {} input{}; nothing was applied",
            if problems == 1 { "" } else { "s" },
            inputs.len(),
            if inputs.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(EXIT_INVALID)
    } else {
        if !quiet {
            println!(
                "{documents} document{} valid",
                if documents == 1 { "" } else { "s" }
            );
        }
        ExitCode::SUCCESS
    }
}

/// `named` is true for paths given on the command line: an empty directory
/// named there is a mistake, an empty subdirectory is not.
fn collect(path: &Path, named: bool, out: &mut Vec<Input>) {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        let bytes = std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map(|_| buf)
            .map_err(|e| format!("cannot read stdin: {e}"));
        out.push(Input {
            name: "<stdin>".into(),
            bytes,
        });
        return;
    }
    let name = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    out.push(Input {
                        name,
                        bytes: Err(format!("cannot read directory: {e}")),
                    });
                    return;
                }
            };
            entries.sort();
            let before = out.len();
            for entry in entries {
                let is_yaml = entry.extension().is_some_and(|e| e == "yaml" || e == "yml");
                // Hidden entries (.git, editor files) are not inputs.
                let hidden = entry
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if hidden {
                    continue;
                }
                if entry.is_dir() || is_yaml {
                    collect(&entry, false, out);
                }
            }
            if out.len() == before && named {
                out.push(Input {
                    name,
                    bytes: Err("the directory holds no .yaml or .yml files".into()),
                });
            }
        }
        Ok(_) => out.push(Input {
            bytes: std::fs::read(path).map_err(|e| format!("cannot read: {e}")),
            name,
        }),
        Err(e) => out.push(Input {
            name,
            bytes: Err(format!("cannot read: {e}")),
        }),
    }
}
