//! Doing something inside another network namespace: opening a netlink
//! socket there (nf_tables', rtnetlink's).
//!
//! A network namespace belongs to a thread, not a process, and a socket
//! stays in the namespace it was created in. So a fresh thread opens the
//! namespace file, `setns`es into it, creates the socket and exits; the
//! agent's other threads never change namespace and no `unsafe` is needed.

use std::{
    fs::File,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} is gone")]
    Gone { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}")]
    Enter { path: PathBuf, source: io::Error },
    #[error("cannot start a thread to enter a network namespace")]
    Thread { source: io::Error },
}

/// Runs `f` on a short-lived thread inside the network namespace at `ns`
/// and returns what it returns; the namespace change dies with the thread.
/// `f` gets the id of the namespace that was entered (the path may name
/// another one by the time anyone looks again).
pub(crate) fn within<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce(NsId) -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let ns = ns.to_owned();
    let worker = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let file = enter(&ns)?;
            let id = file.metadata().map_err(|source| NetnsError::Gone {
                path: ns.clone(),
                source,
            })?;
            Ok(f(ns_id(&id)))
        });
    match worker {
        Ok(h) => h.join().unwrap_or_else(|_| {
            Err(NetnsError::Thread {
                source: io::Error::other("the thread panicked"),
            })
        }),
        Err(source) => Err(NetnsError::Thread { source }),
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
    std::fs::metadata(ns)
        .map(|m| ns_id(&m))
        .map_err(|source| NetnsError::Gone {
            path: ns.to_owned(),
            source,
        })
}

fn ns_id(m: &std::fs::Metadata) -> NsId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_gone() {
        let e = within(Path::new("/nonexistent/netns"), |_| ()).expect_err("gone");
        assert!(matches!(e, NetnsError::Gone { .. }), "{e}");
        // The cause is printed once: by the chain, not also by the message.
        let cause = "No such file or directory";
        assert!(!e.to_string().contains(cause), "{e}");
        let whole = crate::report(&e);
        assert_eq!(whole.matches(cause).count(), 1, "{whole}");
        let gone = crate::backend::BackendError::from(e);
        assert_eq!(gone.to_string().matches(cause).count(), 1, "{gone}");
    }
}
