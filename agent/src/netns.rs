//! Doing something inside another network namespace: running a program
//! (tc) or opening a socket (nftables' netlink).
//!
//! A network namespace belongs to a thread, not a process; a child inherits
//! the namespaces of the thread that forks it, and a socket stays in the
//! namespace it was created in. So a fresh thread opens the namespace file,
//! `setns`es into it, spawns the program by argument vector (or creates the
//! socket) and exits; the agent's other threads never change namespace, no
//! `pre_exec` hook or `unsafe` is needed, and no shell sees any value.

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Write},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} is gone")]
    Gone { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("cannot run {program}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

/// A program run to completion: what it printed.
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    pub stdout: Vec<u8>,
}

/// Runs `program args…` inside the network namespace at `ns` (a file such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`), feeding `stdin`, and returns its
/// output when it exits 0.
pub(crate) fn run_in(
    ns: &Path,
    program: &Path,
    args: &[OsString],
    stdin: Option<&[u8]>,
) -> Result<Ran, NetnsError> {
    let program = program.to_owned();
    let args = args.to_vec();
    let stdin = stdin.map(<[u8]>::to_vec);
    within(ns, move |_| run_program(&program, &args, stdin.as_deref()))?
}

/// Runs `f` on a short-lived thread inside the network namespace at `ns`
/// and returns what it returns; the namespace change dies with the thread.
/// `f` gets the namespace file that was entered (to tell which namespace
/// it was, should the path be reused).
pub(crate) fn within<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce(&File) -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = ns.to_owned();
    let worker = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let file = enter(&ns)?;
            Ok(f(&file))
        });
    match worker {
        Ok(h) => h.join().unwrap_or_else(|_| {
            Err(NetnsError::Spawn {
                program: "netns worker".into(),
                source: io::Error::other("the worker thread panicked"),
            })
        }),
        Err(source) => Err(NetnsError::Spawn {
            program: "netns worker thread".into(),
            source,
        }),
    }
}

/// Moves the calling thread into the network namespace at `ns`.
fn enter(ns: &Path) -> Result<File, NetnsError> {
    let file = File::open(ns).map_err(|source| NetnsError::Gone {
        path: ns.to_owned(),
        source,
    })?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
        NetnsError::Enter {
            path: ns.to_owned(),
            source: e.into(),
        }
    })?;
    Ok(file)
}

/// Which namespace a namespace file is: its nsfs device and inode. The
/// inode is unique while the namespace lives, and a namespace lives at
/// least as long as a socket in it.
pub(crate) type NsId = (u64, u64);

/// The namespace the file at `ns` is now.
pub(crate) fn id_of(ns: &Path) -> Result<NsId, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(ns)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| NetnsError::Gone {
            path: ns.to_owned(),
            source,
        })
}

/// Runs a program in the caller's namespaces.
pub(crate) fn run_program(
    program: &Path,
    args: &[OsString],
    stdin: Option<&[u8]>,
) -> Result<Ran, NetnsError> {
    let name = program.display().to_string();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| NetnsError::Spawn {
        program: name.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The program reads all input before writing much, so writing first
        // cannot deadlock. One that exits without reading (bad arguments)
        // closes the pipe: its exit status and stderr say why, not EPIPE.
        match pipe.write_all(input) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(source) => {
                return Err(NetnsError::Spawn {
                    program: name.clone(),
                    source,
                });
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetnsError::Spawn {
            program: name.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(Ran { stdout: out.stdout })
    } else {
        Err(NetnsError::Failed {
            program: name,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_gone() {
        let e = run_in(
            Path::new("/nonexistent/netns"),
            Path::new("true"),
            &[],
            None,
        )
        .expect_err("gone");
        assert!(matches!(e, NetnsError::Gone { .. }), "{e}");
        // The cause is printed once: by the chain, not also by the message.
        let cause = "No such file or directory";
        assert!(!e.to_string().contains(cause), "{e}");
        let whole = crate::report(&e);
        assert_eq!(whole.matches(cause).count(), 1, "{whole}");
        let gone = crate::backend::BackendError::from(e);
        assert_eq!(gone.to_string().matches(cause).count(), 1, "{gone}");
    }

    #[test]
    fn failures_carry_stderr() {
        let e = run_program(
            Path::new("ls"),
            &["/nonexistent-faultline".into()],
            Some(b"x"),
        )
        .expect_err("fails");
        assert!(e.to_string().contains("nonexistent-faultline"), "{e}");
        let ok = run_program(Path::new("cat"), &[], Some(b"hello")).expect("cat");
        assert_eq!(ok.stdout, b"hello");
    }
}
