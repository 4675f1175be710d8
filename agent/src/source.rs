//! The standalone desired-state source: a NodeFaults file, followed as it
//! changes.
//!
//! The file is polled (every 50 ms by default), which sees every way a file
//! changes — written in place, replaced by rename, deleted and recreated, on
//! a bind mount or a ConfigMap's symlink swap, where inotify watches go stale
//! — and costs a `stat` per poll. The content is re-read whenever the
//! metadata changes and at least once a second anyway, because two writes
//! within one timestamp tick leave the metadata unchanged.
//!
//! An inotify watch on the file's directory comes on top, for speed: a file
//! closed after writing, or renamed, created or deleted there, is read at
//! once (within a millisecond rather than half a poll period). Closed, not
//! modified: a file being written is read when its writer is done with it.

use std::{
    fs::File,
    io::Read,
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc::Sender},
    time::{Duration, Instant},
};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::sync::Notify;

use faultline_api::{NodeFaults, parse_one, yaml::MAX_INPUT_BYTES};

use crate::{agent::Event, log, reconcile::Desired};

const REREAD_AT_LEAST: Duration = Duration::from_secs(1);

/// Reads and validates the desired file. Every problem is logged with its
/// line and column; the result is `Unknown` with a short reason.
pub fn read_desired(path: &Path) -> (Desired, Option<Vec<u8>>) {
    let bytes = match read_limited(path) {
        Ok(b) => b,
        Err(e) => {
            return (
                Desired::Unknown(format!("cannot read {}: {e}", path.display())),
                None,
            );
        }
    };
    let d = parse(path, &bytes);
    (d, Some(bytes))
}

fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    // One byte more than the parser accepts, so it reports the file as too large.
    File::open(path)?
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses desired-file bytes, logging every located problem.
pub fn parse(path: &Path, bytes: &[u8]) -> Desired {
    match parse_one::<NodeFaults>(bytes) {
        Ok(nf) => Desired::Faults(nf.spec.faults),
        Err(diags) => {
            let name = path.display().to_string();
            for d in &diags {
                log(d.display_in(&name));
            }
            Desired::Unknown(format!(
                "{} has {} problem(s)",
                path.display(),
                diags.len().max(1)
            ))
        }
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Follows a desired file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    last_stamp: Option<Stamp>,
    last_bytes: Option<Vec<u8>>,
    last_read: Instant,
    last_unreadable: Option<String>,
}

impl FileSource {
    /// Starts following from what was read at startup.
    pub fn new(path: PathBuf, initial: Option<Vec<u8>>) -> Self {
        FileSource {
            last_stamp: stamp(&path),
            last_bytes: initial,
            last_read: Instant::now(),
            last_unreadable: None,
            path,
        }
    }

    /// One poll: the new desired state when the file changed.
    pub fn poll(&mut self) -> Option<Desired> {
        self.check(false)
    }

    /// `force`: read the content even when the metadata looks unchanged
    /// (inotify said something happened).
    fn check(&mut self, force: bool) -> Option<Desired> {
        let s = stamp(&self.path);
        if !force
            && s.is_some()
            && s == self.last_stamp
            && self.last_read.elapsed() < REREAD_AT_LEAST
        {
            return None;
        }
        self.last_stamp = s;
        self.last_read = Instant::now();
        match read_limited(&self.path) {
            Ok(bytes) => {
                self.last_unreadable = None;
                if self.last_bytes.as_deref() == Some(&bytes[..]) {
                    return None;
                }
                let d = parse(&self.path, &bytes);
                self.last_bytes = Some(bytes);
                Some(d)
            }
            Err(e) => {
                let why = format!("cannot read {}: {e}", self.path.display());
                // Say it once, not twenty times a second.
                if self.last_unreadable.as_deref() == Some(&why) {
                    return None;
                }
                self.last_unreadable = Some(why.clone());
                self.last_bytes = None;
                Some(Desired::Unknown(why))
            }
        }
    }

    /// Polls, and reads at once when inotify reports a change, until the
    /// loop is gone.
    pub async fn follow(mut self, every: Duration, tx: Sender<Event>) {
        let mut watch = DirWatch::new(&self.path);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                woke = DirWatch::wait(watch.as_ref()) => match woke {
                    Ok(()) => true,
                    Err(e) => {
                        log(format_args!("inotify failed, polling only: {e}"));
                        watch = None;
                        false
                    }
                },
            };
            if let Some(d) = self.check(forced)
                && tx.send(Event::Desired(d)).is_err()
            {
                return;
            }
        }
    }
}

/// An inotify watch on the directory of the desired file. A thread blocks
/// on it and wakes the follower (async registration of the descriptor would
/// need unsafe code, which this crate forbids).
#[derive(Debug)]
struct DirWatch {
    woken: Arc<Notify>,
    /// Set by the thread when reading fails; the follower falls back to polling.
    failed: Arc<Mutex<Option<String>>>,
}

impl DirWatch {
    fn new(path: &Path) -> Option<DirWatch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let made = inotify::init(CreateFlags::CLOEXEC).and_then(|fd| {
            inotify::add_watch(
                &fd,
                dir,
                WatchFlags::CLOSE_WRITE
                    | WatchFlags::MOVED_TO
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::CREATE
                    | WatchFlags::DELETE
                    | WatchFlags::ATTRIB,
            )?;
            Ok(fd)
        });
        let fd = match made {
            Ok(fd) => fd,
            Err(e) => {
                log(format_args!(
                    "cannot watch {} with inotify, polling only: {e}",
                    dir.display()
                ));
                return None;
            }
        };
        let watch = DirWatch {
            woken: Arc::new(Notify::new()),
            failed: Arc::new(Mutex::new(None)),
        };
        let (woken, failed) = (watch.woken.clone(), watch.failed.clone());
        // Only events about the file itself wake the follower (a writer's
        // temporary file in the same directory would make it read the
        // unchanged file again), and about `..data`, whose swap replaces
        // what a ConfigMap's symlinks point to.
        let names: Vec<Vec<u8>> = path
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .into_iter()
            .chain([b"..data".to_vec()])
            .collect();
        let spawned = std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || read_events(&fd, &names, &woken, &failed));
        match spawned {
            Ok(_) => Some(watch),
            Err(e) => {
                log(format_args!(
                    "cannot start the inotify thread, polling only: {e}"
                ));
                None
            }
        }
    }

    /// Waits for a change; forever without a watch. Err when the watch broke.
    async fn wait(watch: Option<&DirWatch>) -> Result<(), String> {
        let Some(w) = watch else {
            return std::future::pending().await;
        };
        w.woken.notified().await;
        match w.failed.lock().map(|f| f.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(_) => Err("inotify thread panicked".into()),
        }
    }
}

/// Blocks on the inotify descriptor, waking the follower after each batch of
/// events, until the follower is gone.
fn read_events(
    fd: &OwnedFd,
    names: &[Vec<u8>],
    woken: &Arc<Notify>,
    failed: &Mutex<Option<String>>,
) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut events = inotify::Reader::new(fd, &mut buf);
    let mut relevant = false;
    loop {
        match events.next() {
            Ok(e) => {
                // No name: the event is about the directory itself.
                relevant |= e
                    .file_name()
                    .is_none_or(|n| names.iter().any(|w| w.as_slice() == n.to_bytes()));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e.to_string());
                }
                woken.notify_one();
                return;
            }
        }
        // The rest of a batch is already in the buffer: one wake-up for all.
        if events.is_buffer_empty() {
            if Arc::strong_count(woken) == 1 {
                return;
            }
            if std::mem::take(&mut relevant) {
                woken.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: faultline.dev/v1alpha1
kind: NodeFaults
metadata: {name: node-1}
spec:
  faults:
    - id: a
      target: {netns: /run/netns/x}
      expiresAt: \"2030-01-01T00:00:00Z\"
      partition: {peers: [10.0.0.1/32]}
";

    #[test]
    fn follows_changes_and_reports_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("desired.yaml");
        let (d, bytes) = read_desired(&p);
        assert!(
            matches!(d, Desired::Unknown(ref w) if w.contains("cannot read")),
            "{d:?}"
        );
        let mut src = FileSource::new(p.clone(), bytes);
        std::fs::write(&p, FILE).expect("write");
        match src.poll() {
            Some(Desired::Faults(f)) => assert_eq!(f[0].id, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(src.poll(), None, "unchanged");
        // Same length and, likely, same mtime tick: the content still counts.
        std::fs::write(&p, FILE.replace("id: a", "id: b")).expect("write");
        src.last_stamp = stamp(&p);
        src.last_read = Instant::now() - REREAD_AT_LEAST;
        match src.poll() {
            Some(Desired::Faults(f)) => assert_eq!(f[0].id, "b"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, "kind: [").expect("write");
        assert!(matches!(src.poll(), Some(Desired::Unknown(_))));
        std::fs::remove_file(&p).expect("rm");
        assert!(matches!(src.poll(), Some(Desired::Unknown(ref w)) if w.contains("cannot read")));
        assert_eq!(src.poll(), None, "said once");
    }

    /// With a poll period far longer than the test, only inotify can deliver
    /// the changes: a rename into place and an in-place write.
    #[tokio::test]
    async fn inotify_delivers_changes_between_polls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("desired.yaml");
        std::fs::write(&p, FILE).expect("write");
        let (_, bytes) = read_desired(&p);
        let (tx, rx) = std::sync::mpsc::channel();
        let task =
            tokio::spawn(FileSource::new(p.clone(), bytes).follow(Duration::from_secs(3600), tx));
        // Let the first (immediate) tick pass.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next_id = |rx: &std::sync::mpsc::Receiver<Event>| match rx
            .recv_timeout(Duration::from_secs(20))
        {
            Ok(Event::Desired(Desired::Faults(f))) => f[0].id.clone(),
            other => panic!("{other:?}"),
        };
        let tmp = dir.path().join(".desired.tmp");
        std::fs::write(&tmp, FILE.replace("id: a", "id: b")).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
        let rx = tokio::task::spawn_blocking(move || {
            assert_eq!(next_id(&rx), "b");
            rx
        })
        .await
        .expect("renamed");
        // Same length as before: the metadata may look unchanged, the content is read anyway.
        std::fs::write(&p, FILE.replace("id: a", "id: c")).expect("write");
        tokio::task::spawn_blocking(move || assert_eq!(next_id(&rx), "c"))
            .await
            .expect("written in place");
        task.abort();
    }

    #[test]
    fn invalid_values_are_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("d.yaml");
        std::fs::write(&p, FILE.replace("10.0.0.1/32", "payments")).expect("write");
        let (d, _) = read_desired(&p);
        assert!(
            matches!(d, Desired::Unknown(ref w) if w.contains("1 problem")),
            "{d:?}"
        );
    }
}
