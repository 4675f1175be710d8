//! `faultline validate`: every problem of every input, located; exit 2 if any.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

use faultline_api::{MAX_INPUT_BYTES, parse_documents};

use crate::EXIT_INVALID;

/// One input to check: a display name and its bytes (or why they could not be read).
struct Input {
    name: String,
    bytes: Result<Vec<u8>, String>,
}

pub fn run(paths: &[PathBuf], quiet: bool) -> ExitCode {
    let mut inputs = Vec::new();
    let mut stdin_read = false;
    for p in paths {
        if p.as_os_str() == "-" {
            // A second read would see an empty stream and report it as an empty input.
            if stdin_read {
                inputs.push(Input {
                    name: "<stdin>".into(),
                    bytes: Err("stdin given twice; pass - once".into()),
                });
                continue;
            }
            stdin_read = true;
        }
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

/// Reads at most one byte past the input limit, so an endless source
/// (`/dev/zero`, `yes |`) ends with the size error instead of filling memory.
fn read_limited(source: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_INPUT_BYTES).map_or(u64::MAX, |n| n.saturating_add(1));
    source.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `named` is true for paths given on the command line: an empty directory
/// named there is a mistake, an empty subdirectory is not. Symlinks named
/// there are followed; symlinked directories met while walking are not,
/// so a link loop cannot make the walk endless.
fn collect(path: &Path, named: bool, out: &mut Vec<Input>) {
    if path.as_os_str() == "-" {
        let bytes =
            read_limited(std::io::stdin().lock()).map_err(|e| format!("cannot read stdin: {e}"));
        out.push(Input {
            name: "<stdin>".into(),
            bytes,
        });
        return;
    }
    let name = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut entries: Vec<(PathBuf, std::fs::FileType)> = match std::fs::read_dir(path) {
                Ok(rd) => rd
                    .filter_map(|e| {
                        let e = e.ok()?;
                        // The entry's own type: a symlink is not followed here.
                        Some((e.path(), e.file_type().ok()?))
                    })
                    .collect(),
                Err(e) => {
                    out.push(Input {
                        name,
                        bytes: Err(format!("cannot read directory: {e}")),
                    });
                    return;
                }
            };
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let before = out.len();
            for (entry, file_type) in entries {
                let is_yaml = entry.extension().is_some_and(|e| e == "yaml" || e == "yml");
                // Hidden entries (.git, editor files) are not inputs.
                let hidden = entry
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if hidden {
                    continue;
                }
                if file_type.is_dir() || (is_yaml && is_regular_file(&entry, file_type)) {
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
            bytes: File::open(path)
                .and_then(read_limited)
                .map_err(|e| format!("cannot read: {e}")),
            name,
        }),
        Err(e) => out.push(Input {
            name,
            bytes: Err(format!("cannot read: {e}")),
        }),
    }
}

/// Whether a directory entry is a file to read: a regular file, or a symlink
/// to one. Symlinks to directories (possible loops) and special files (a FIFO
/// would block) found while walking are skipped.
fn is_regular_file(path: &Path, file_type: std::fs::FileType) -> bool {
    if file_type.is_symlink() {
        // A dangling link is read, so it is reported rather than skipped silently.
        std::fs::metadata(path).map_or(true, |m| m.is_file())
    } else {
        file_type.is_file()
    }
}
