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
//!
//! The agent loop's own thread waits on both ([`FileEvents`]): a change
//! wakes the one thread that applies it, where a watcher thread handing
//! over to an async task handing over to the loop cost three wake-ups
//! (about a millisecond on a busy two-core VM, and most of the tail).

use std::{
    fs::File,
    io::Read,
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        mpsc::{self, Receiver, Sender, TryRecvError},
    },
    time::{Duration, Instant},
};

use rustix::{
    event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll},
    fs::inotify::{self, CreateFlags, WatchFlags},
};

use faultline_api::{MAX_INPUT_BYTES, NodeFaults, parse_one};

use crate::{
    agent::{Event, Events, Wait},
    reconcile::Desired,
};

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
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Desired {
    match parse_one::<NodeFaults>(bytes) {
        Ok(nf) => Desired::Faults(nf.spec.faults),
        Err(diags) => {
            let name = path.display().to_string();
            for d in &diags {
                tracing::warn!("{}", d.display_in(&name));
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
    #[cfg(test)]
    pub(crate) fn poll(&mut self) -> Option<Desired> {
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
}

/// Sends events to a loop waiting on [`FileEvents`] (the signal handler's
/// Shutdown): the channel carries the event, the eventfd wakes the wait.
#[derive(Debug, Clone)]
pub struct Doorbell {
    tx: Sender<Event>,
    bell: Arc<OwnedFd>,
}

impl Drop for Doorbell {
    /// The last doorbell gone means nobody can stop the loop: ringing lets
    /// it see that at once rather than at its next tick.
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.bell, &1u64.to_ne_bytes());
    }
}

impl Doorbell {
    /// False when the loop is gone.
    pub fn send(&self, e: Event) -> bool {
        let sent = self.tx.send(e).is_ok();
        // Adds 1 to the counter; the loop reads it back to zero.
        let _ = rustix::io::write(&*self.bell, &1u64.to_ne_bytes());
        sent
    }
}

/// The desired file as the loop's [`Events`]: the loop's own thread blocks
/// in `poll` on the inotify descriptor, the doorbell and the next poll tick,
/// so a change to the file wakes exactly one thread, the one that applies it.
#[derive(Debug)]
pub struct FileEvents {
    source: FileSource,
    every: Duration,
    next_poll: Instant,
    watch: Option<DirWatch>,
    bell: Arc<OwnedFd>,
    inbox: Receiver<Event>,
}

impl FileEvents {
    /// Follows `source`, checking it every `every` besides inotify's wake-ups.
    pub fn new(source: FileSource, every: Duration) -> std::io::Result<(FileEvents, Doorbell)> {
        let bell = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let (tx, inbox) = mpsc::channel();
        let watch = DirWatch::new(&source.path);
        let events = FileEvents {
            source,
            // A zero period would make every wait a spin.
            every: every.clamp(Duration::from_millis(1), Duration::from_secs(3600)),
            // The first check comes at once, as the first tick of a timer would.
            next_poll: Instant::now(),
            watch,
            bell: bell.clone(),
            inbox,
        };
        Ok((events, Doorbell { tx, bell }))
    }

    /// Blocks until the doorbell rings, inotify reports something or
    /// `wait` has passed.
    fn block(&mut self, wait: Duration) -> Woke {
        let timeout = Timespec::try_from(wait).ok();
        let mut fds = vec![PollFd::new(&*self.bell, PollFlags::IN)];
        if let Some(w) = &self.watch {
            fds.push(PollFd::new(&w.fd, PollFlags::IN));
        }
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Woke::Nothing,
            Err(e) => {
                // Not expected with valid descriptors; sleeping keeps the
                // loop from spinning while the tick still checks the file.
                tracing::warn!("poll failed: {e}");
                std::thread::sleep(wait.min(self.every));
                return Woke::Nothing;
            }
        }
        let rang = !fds[0].revents().is_empty();
        let watched = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        drop(fds);
        if rang {
            // Reads the counter back to zero; the event itself is in the inbox.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&*self.bell, &mut count);
        }
        match (&self.watch, watched) {
            (Some(w), true) => match w.drain() {
                Ok(true) => Woke::FileChanged,
                Ok(false) => Woke::Nothing,
                Err(e) => Woke::WatchBroke(e),
            },
            _ => Woke::Nothing,
        }
    }
}

enum Woke {
    /// The doorbell, a timeout, or events about other files.
    Nothing,
    FileChanged,
    WatchBroke(rustix::io::Errno),
}

impl Events for FileEvents {
    fn wait(&mut self, timeout: Duration) -> Wait {
        // Waits past what an Instant can hold are a wait for an event.
        let until = Instant::now().checked_add(timeout);
        loop {
            match self.inbox.try_recv() {
                Ok(e) => return Wait::Event(e),
                // The doorbell is gone: nobody can stop the loop any more.
                Err(TryRecvError::Disconnected) => return Wait::Closed,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= self.next_poll {
                self.next_poll = now + self.every;
                if let Some(d) = self.source.check(false) {
                    return Wait::Event(Event::Desired(d));
                }
            }
            if until.is_some_and(|u| now >= u) {
                return Wait::Timeout;
            }
            let wait = until
                .map_or(self.next_poll, |u| u.min(self.next_poll))
                .saturating_duration_since(now);
            match self.block(wait) {
                Woke::FileChanged => {
                    if let Some(d) = self.source.check(true) {
                        return Wait::Event(Event::Desired(d));
                    }
                }
                Woke::WatchBroke(e) => {
                    tracing::warn!("inotify failed, polling only: {e}");
                    self.watch = None;
                }
                Woke::Nothing => {}
            }
        }
    }
}

/// An inotify watch on the directory of the desired file.
#[derive(Debug)]
struct DirWatch {
    fd: OwnedFd,
    /// Names whose events matter: the file itself, and `..data`, whose
    /// swap replaces what a ConfigMap's symlinks point to. A writer's
    /// temporary file in the same directory would only make the loop read
    /// the unchanged file again.
    names: Vec<Vec<u8>>,
}

impl DirWatch {
    fn new(path: &Path) -> Option<DirWatch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let made = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).and_then(|fd| {
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
        match made {
            Ok(fd) => Some(DirWatch {
                fd,
                names: path
                    .file_name()
                    .map(|n| n.as_encoded_bytes().to_vec())
                    .into_iter()
                    .chain([b"..data".to_vec()])
                    .collect(),
            }),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} with inotify, polling only: {e}",
                    dir.display()
                );
                None
            }
        }
    }

    /// Reads every queued event; Ok(true) when one is about a watched name
    /// (or the directory itself), Err when the descriptor broke.
    fn drain(&self) -> Result<bool, rustix::io::Errno> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.fd, &mut buf);
        let mut relevant = false;
        loop {
            match events.next() {
                Ok(e) => {
                    relevant |= e
                        .file_name()
                        .is_none_or(|n| self.names.iter().any(|w| w.as_slice() == n.to_bytes()));
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(relevant),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e),
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

    /// A desired file holding FILE, followed with a tick of `every`.
    fn followed(every: Duration) -> (tempfile::TempDir, PathBuf, FileEvents, Doorbell) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("desired.yaml");
        std::fs::write(&p, FILE).expect("write");
        let (_, bytes) = read_desired(&p);
        let (events, bell) =
            FileEvents::new(FileSource::new(p.clone(), bytes), every).expect("events");
        (dir, p, events, bell)
    }

    fn next_id(events: &mut FileEvents) -> String {
        match events.wait(Duration::from_secs(20)) {
            Wait::Event(Event::Desired(Desired::Faults(f))) => f[0].id.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// With a poll period far longer than the test, only inotify can deliver
    /// the changes: a rename into place and an in-place write.
    #[test]
    fn inotify_delivers_changes_between_polls() {
        let (dir, p, mut events, _bell) = followed(Duration::from_secs(3600));
        // The first (immediate) check finds the file unchanged.
        assert_eq!(events.wait(Duration::from_millis(50)), Wait::Timeout);
        let tmp = dir.path().join(".desired.tmp");
        std::fs::write(&tmp, FILE.replace("id: a", "id: b")).expect("write");
        std::fs::rename(&tmp, &p).expect("rename");
        assert_eq!(next_id(&mut events), "b");
        // Same length as before: the metadata may look unchanged, the content is read anyway.
        std::fs::write(&p, FILE.replace("id: a", "id: c")).expect("write");
        assert_eq!(next_id(&mut events), "c");
        // Another file in the directory wakes the wait, but is no change of ours.
        std::fs::write(dir.path().join("other"), "x").expect("write");
        assert!(matches!(
            events.block(Duration::from_secs(20)),
            Woke::Nothing
        ));
    }

    /// Without inotify's help (a directory it cannot see into, such as some
    /// bind mounts), the poll tick alone finds the change.
    #[test]
    fn the_tick_finds_changes_without_inotify() {
        let (_dir, p, mut events, _bell) = followed(Duration::from_millis(20));
        events.watch = None;
        // The immediate first check has passed: only a tick can see what follows.
        assert_eq!(events.wait(Duration::from_millis(50)), Wait::Timeout);
        std::fs::write(&p, FILE.replace("id: a", "id: bb")).expect("write");
        assert_eq!(next_id(&mut events), "bb");
    }

    /// The doorbell wakes a wait that would otherwise last an hour, and the
    /// loop sees the event; once the doorbell is gone the wait says closed.
    #[test]
    fn the_doorbell_wakes_the_wait() {
        let (_dir, _, mut events, bell) = followed(Duration::from_secs(3600));
        let ringer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            assert!(bell.send(Event::Shutdown));
        });
        // Without the ring the wait would end in a timeout, well after the ring.
        assert_eq!(
            events.wait(Duration::from_secs(30)),
            Wait::Event(Event::Shutdown)
        );
        ringer.join().expect("ringer");
        assert_eq!(events.wait(Duration::from_secs(30)), Wait::Closed);
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
