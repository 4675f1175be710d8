//! The standalone desired-state source: a NodeFaults file, followed as it
//! changes.
//!
//! The file is polled (every 50 ms by default) rather than watched with
//! inotify: polling sees every way a file changes — written in place,
//! replaced by rename, deleted and recreated, on a bind mount or a
//! ConfigMap's symlink swap, where inotify watches go stale — and costs a
//! `stat` per poll. The content is re-read whenever the metadata changes and
//! at least once a second anyway, because two writes within one timestamp
//! tick leave the metadata unchanged.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc::Sender,
    time::{Duration, Instant},
};

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
        let s = stamp(&self.path);
        if s.is_some() && s == self.last_stamp && self.last_read.elapsed() < REREAD_AT_LEAST {
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

    /// Polls until the loop is gone.
    pub async fn follow(mut self, every: Duration, tx: Sender<Event>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(d) = self.poll()
                && tx.send(Event::Desired(d)).is_err()
            {
                return;
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
