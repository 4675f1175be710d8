//! The on-disk journal: which faults the agent is about to apply or has
//! applied, so an agent killed with SIGKILL can undo them when it restarts.
//!
//! The journal is a log of JSON lines, `journal.log`: a header with the
//! version and boot id, then one line per change (`put` a record, `delete`
//! an id), each appended with one `write`. Reading replays the lines. A kill
//! can only tear the last line, which then has no newline and is ignored,
//! and ignoring it is safe whatever it was: a torn `applying` record was
//! never followed by a kernel change (that waits for the write to return), a
//! torn `applied` leaves the `applying` record standing, and a torn `delete`
//! leaves a record whose removal the next agent repeats. A complete line
//! that does not parse is corruption, and the agent refuses to start.
//!
//! Appending is what keeps the journal off the apply path's clock: a
//! rewrite-and-rename per change made ext4 start writing the new file out at
//! every rename (its `auto_da_alloc` safeguard), twice per apply. The log is
//! rewritten (temporary file, rename) only when it is opened and when it
//! holds more than twice as many lines as live records plus 64, from
//! [`Journal::tidy`], which the agent calls once its changes are done. An
//! append that fails is cut back to the last whole line; if even that
//! fails, the next append rewrites the log from memory first.
//!
//! It is not fsynced, on purpose. What it records — nftables rules, qdiscs,
//! signals due — lives in the running kernel and ends with it, and within
//! one boot the page cache is what every process reads, so a write that
//! returned is what the next agent sees. Across a reboot there is nothing
//! left to undo: the journal carries the boot id it was written in, and one
//! from an earlier boot is set aside on open (as is one left unreadable by a
//! power loss, when the file predates the boot). Syncing each change to the
//! disk would only add the disk's latency, milliseconds on a busy node, to
//! every fault applied.
//!
//! `journal.json`, the single-document journal of earlier agents, is read
//! when no log exists yet, or when it is the newer of the two (after a
//! rollback to an older agent), and replaced by the log, so an agent
//! upgraded while faults are active still removes them.
//!
//! One agent per state directory: a second one would rewrite the log
//! under the first, so [`StateLock`] holds an exclusive `flock` on
//! `agent.lock` there for the agent's whole life, and a second agent waits
//! for it (the kernel drops the lock when the holder exits, however it ends).

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use faultline_api::NodeFault;
use serde::{Deserialize, Serialize};

use crate::reconcile::Receipt;

pub(crate) const FILE_NAME: &str = "journal.log";
/// The file whose `flock` marks the state directory as taken.
pub(crate) const LOCK_FILE_NAME: &str = "agent.lock";
/// The single-document journal written by earlier agents.
pub(crate) const OLD_FILE_NAME: &str = "journal.json";
const VERSION: u32 = 2;
const OLD_VERSION: u32 = 1;
/// Lines of removed records tolerated before [`Journal::tidy`] rewrites.
const SLACK_LINES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use state directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot read journal {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("journal {path} is not readable ({message})")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write journal {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot lock the state directory with {path}")]
    Lock { path: PathBuf, source: io::Error },
}

/// An exclusive claim on a state directory, held until dropped (or until the
/// process ends: the lock goes with the last descriptor of the open file).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the directory's lock (creating the directory if needed),
    /// waiting as long as another agent holds it; `on_wait` runs once,
    /// before the wait, so the wait is never silent.
    pub fn acquire(dir: &Path, on_wait: impl FnOnce(&Path)) -> Result<StateLock, JournalError> {
        use rustix::fs::{FlockOperation, flock};
        fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOCK_FILE_NAME);
        let lock_err = |source: io::Error| JournalError::Lock {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                on_wait(&path);
                // flock restarts after signals with SA_RESTART; EINTR only
                // comes from a handler without it, so retrying is right.
                loop {
                    match flock(&file, FlockOperation::LockExclusive) {
                        Ok(()) => break,
                        Err(e) if e == rustix::io::Errno::INTR => continue,
                        Err(e) => return Err(lock_err(e.into())),
                    }
                }
            }
            Err(e) => return Err(lock_err(e.into())),
        }
        Ok(StateLock { _file: file })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RecordState {
    /// Written before the kernel is touched.
    Applying,
    /// Written after the backend reported success.
    Applied,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub state: RecordState,
    pub fault: NodeFault,
    #[serde(default)]
    pub receipt: Receipt,
}

/// The log's first line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    version: u32,
    boot_id: String,
}

/// Every later line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Line {
    Put(Box<Record>),
    Delete(String),
}

/// The journal of earlier agents: one JSON document.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OldJournal {
    version: u32,
    /// Absent in the oldest journals, which count as this boot's.
    #[serde(default)]
    boot_id: Option<String>,
    records: Vec<Record>,
}

/// Which boot of the kernel this is, to tell a journal of an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Boot {
    /// `/proc/sys/kernel/random/boot_id`.
    pub id: String,
    /// When it booted, from `/proc/stat`'s `btime`.
    pub at: SystemTime,
}

impl Boot {
    /// This machine's current boot.
    pub(crate) fn current() -> Result<Boot, io::Error> {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned();
        let stat = fs::read_to_string("/proc/stat")?;
        let secs = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            .ok_or_else(|| io::Error::other("/proc/stat has no btime"))?;
        Ok(Boot {
            id,
            at: UNIX_EPOCH + std::time::Duration::from_secs(secs),
        })
    }
}

/// What a journal file held, as read.
struct Contents {
    records: BTreeMap<String, Record>,
    /// Faults of an earlier boot's journal, which ended with that boot.
    set_aside: usize,
}

/// The journal, kept in memory and appended to on every change.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    boot_id: String,
    records: BTreeMap<String, Record>,
    set_aside: usize,
    /// The log, opened for appending.
    file: File,
    /// Bytes of whole lines in the log: a failed append is cut back to it.
    len: u64,
    /// Lines in the log after the header.
    lines: usize,
    /// No rewrite before the log has this many lines (pushed on after a
    /// failed rewrite, so it is not retried on every turn of the loop).
    tidy_after: usize,
    /// A failed append could not be cut back: the log may end in a partial
    /// line, so it is rewritten from memory before anything is appended.
    torn: bool,
}

impl Journal {
    /// Opens (creating the directory if needed) and reads the journal.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Journal::open_in_boot(dir, &current_boot()?)
    }

    /// Opens the journal as seen from `boot`, and rewrites it compactly
    /// under this boot's id.
    pub(crate) fn open_in_boot(dir: &Path, boot: &Boot) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let old = dir.join(OLD_FILE_NAME);
        let found = read_in_boot(dir, boot)?;
        let (records, set_aside) = (found.records, found.set_aside);
        let (file, len) = rewrite(dir, &boot.id, &records)?;
        let records_len = records.len();
        // The log now holds what the old journal did.
        match fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(JournalError::Write { path: old, source }),
        }
        Ok(Journal {
            dir: dir.to_owned(),
            boot_id: boot.id.clone(),
            records,
            set_aside,
            file,
            len,
            lines: records_len,
            tidy_after: 0,
            torn: false,
        })
    }

    /// Moves an unreadable journal aside (`journal.log.corrupt-SECONDS`,
    /// kept for a person to read), so the next open starts empty.
    pub fn set_aside_corrupt(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut moved = Vec::new();
        for name in [FILE_NAME, OLD_FILE_NAME] {
            let from = dir.join(name);
            let to = dir.join(format!("{name}.corrupt-{stamp}"));
            match fs::rename(&from, &to) {
                Ok(()) => moved.push(to),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(JournalError::Write { path: from, source }),
            }
        }
        Ok(moved)
    }

    /// The records a journal holds, read without changing it (for tools
    /// and tests looking at a running agent's journal).
    pub fn peek(dir: &Path) -> Result<Vec<Record>, JournalError> {
        Ok(read_in_boot(dir, &current_boot()?)?
            .records
            .into_values()
            .collect())
    }

    /// How many faults a journal of an earlier boot held (they ended with it).
    pub(crate) fn set_aside(&self) -> usize {
        self.set_aside
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Records a fault (replacing any record of the same id).
    pub fn put(&mut self, record: Record) -> Result<(), JournalError> {
        self.append(&Line::Put(Box::new(record.clone())))?;
        self.records.insert(record.fault.id.clone(), record);
        Ok(())
    }

    /// Forgets a fault.
    pub(crate) fn delete(&mut self, id: &str) -> Result<(), JournalError> {
        if !self.records.contains_key(id) {
            return Ok(());
        }
        self.append(&Line::Delete(id.to_owned()))?;
        self.records.remove(id);
        Ok(())
    }

    /// Rewrites the log when it holds more than twice as many lines as live
    /// records plus SLACK_LINES; cheap to call after every batch of changes.
    pub(crate) fn tidy(&mut self) -> Result<(), JournalError> {
        if self.lines <= (2 * self.records.len() + SLACK_LINES).max(self.tidy_after) {
            return Ok(());
        }
        match rewrite(&self.dir, &self.boot_id, &self.records) {
            Ok((file, len)) => {
                (self.file, self.len, self.lines) = (file, len, self.records.len());
                (self.tidy_after, self.torn) = (0, false);
                Ok(())
            }
            Err(e) => {
                self.tidy_after = self.lines + SLACK_LINES;
                Err(e)
            }
        }
    }

    /// One line, one `write`. Memory changes only after it succeeded, so it
    /// never claims what the disk does not say.
    fn append(&mut self, line: &Line) -> Result<(), JournalError> {
        let path = self.path();
        let err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let mut bytes = serde_json::to_vec(line).map_err(|e| err(io::Error::other(e)))?;
        bytes.push(b'\n');
        if self.torn {
            let (file, len) = rewrite(&self.dir, &self.boot_id, &self.records)?;
            (self.file, self.len, self.lines, self.torn) = (file, len, self.records.len(), false);
        }
        if let Err(e) = self.file.write_all(&bytes) {
            // A partial line would swallow the next one: cut it off, or
            // failing that, rewrite the log before the next append.
            self.torn = self.file.set_len(self.len).is_err();
            return Err(err(e));
        }
        self.len += bytes.len() as u64;
        self.lines += 1;
        Ok(())
    }
}

fn current_boot() -> Result<Boot, JournalError> {
    Boot::current().map_err(|source| JournalError::Read {
        path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
        source,
    })
}

/// What the journal in `dir` holds as seen from `boot`: the log, or the old
/// single-document journal when there is no log yet.
fn read_in_boot(dir: &Path, boot: &Boot) -> Result<Contents, JournalError> {
    let empty = Contents {
        records: BTreeMap::new(),
        set_aside: 0,
    };
    let path = dir.join(FILE_NAME);
    let old = dir.join(OLD_FILE_NAME);
    // Both exist after a kill between taking the old journal over and
    // deleting it (the log then holds the same), or after a rollback to an
    // older agent, which wrote only the old file: the newer one is the truth.
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(log), Some(json)) = (modified(&path), modified(&old))
        && json > log
    {
        return read_old(&old, boot);
    }
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return read_old(&old, boot),
        Err(source) => return Err(JournalError::Read { path, source }),
    };
    let corrupt = |message: String| JournalError::Corrupt {
        path: path.clone(),
        message,
    };
    // Only whole lines count: a kill mid-append leaves a tail without a newline.
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => &[][..],
    };
    let mut lines = whole.split(|&b| b == b'\n');
    // The log is only ever put in place whole (see `rewrite`), so a
    // missing or unreadable header is corruption, unless the file predates
    // this boot and a power loss cut it short.
    let header = match serde_json::from_slice::<Header>(lines.next().unwrap_or_default()) {
        Ok(h) => h,
        Err(_) if modified_before(&path, boot.at) => return Ok(empty),
        Err(e) => return Err(corrupt(format!("line 1: {e}"))),
    };
    if header.version != VERSION {
        return Err(corrupt(format!(
            "version {} is not {VERSION}",
            header.version
        )));
    }
    // A log of an earlier boot is not replayed: what it names ended with it.
    let earlier = header.boot_id != boot.id;
    let mut records = BTreeMap::new();
    for (n, l) in lines.enumerate() {
        match serde_json::from_slice::<Line>(l) {
            Ok(Line::Put(r)) => {
                records.insert(r.fault.id.clone(), *r);
            }
            Ok(Line::Delete(id)) => {
                records.remove(&id);
            }
            Err(_) if earlier => break,
            Err(_) if modified_before(&path, boot.at) => return Ok(empty),
            Err(e) => return Err(corrupt(format!("line {}: {e}", n + 2))),
        }
    }
    if earlier {
        return Ok(Contents {
            set_aside: records.len(),
            records: BTreeMap::new(),
        });
    }
    Ok(Contents {
        records,
        set_aside: 0,
    })
}

fn read_old(path: &Path, boot: &Boot) -> Result<Contents, JournalError> {
    let empty = Contents {
        records: BTreeMap::new(),
        set_aside: 0,
    };
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(empty),
        Err(source) => {
            return Err(JournalError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let old: OldJournal = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        // Torn by a power loss before this boot: nothing it named survived.
        Err(_) if modified_before(path, boot.at) => return Ok(empty),
        Err(e) => {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
    };
    if old.version != OLD_VERSION {
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            message: format!("version {} is not {OLD_VERSION}", old.version),
        });
    }
    if old.boot_id.as_deref().is_some_and(|b| b != boot.id) {
        return Ok(Contents {
            set_aside: old.records.len(),
            records: BTreeMap::new(),
        });
    }
    Ok(Contents {
        records: old
            .records
            .into_iter()
            .map(|r| (r.fault.id.clone(), r))
            .collect(),
        set_aside: 0,
    })
}

/// Writes a log holding just `records` (temporary file, rename: a kill
/// leaves the old log or the new one) and returns it open for appending.
/// The handle is the temporary file's own, so it follows the rename: no
/// open after it can fail and leave appends going to a file with no name.
fn rewrite(
    dir: &Path,
    boot_id: &str,
    records: &BTreeMap<String, Record>,
) -> Result<(File, u64), JournalError> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| JournalError::Write { path, source }
    };
    let mut bytes = serde_json::to_vec(&Header {
        version: VERSION,
        boot_id: boot_id.to_owned(),
    })
    .map_err(|e| err(&tmp)(io::Error::other(e)))?;
    bytes.push(b'\n');
    for r in records.values() {
        serde_json::to_writer(&mut bytes, &Line::Put(Box::new(r.clone())))
            .map_err(|e| err(&tmp)(io::Error::other(e)))?;
        bytes.push(b'\n');
    }
    // A temporary file left by a killed agent is only an unfinished rewrite.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&tmp)(e)),
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&tmp)
        .map_err(err(&tmp))?;
    file.write_all(&bytes).map_err(err(&tmp))?;
    fs::rename(&tmp, &path).map_err(err(&path))?;
    Ok((file, bytes.len() as u64))
}

fn modified_before(path: &Path, t: SystemTime) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m < t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::partition;

    #[test]
    fn errors_print_their_cause_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, "").expect("write");
        // A state directory under a regular file cannot be created.
        let e = Journal::open(&file.join("state")).expect_err("not a directory");
        let whole = crate::report(&e);
        assert!(whole.starts_with("cannot use state directory"), "{whole}");
        assert_eq!(whole.matches("Not a directory").count(), 1, "{whole}");
        assert!(!e.to_string().contains("Not a directory"), "{e}");
        // anyhow, as main prints it, gives the same single chain.
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), whole);
    }

    #[test]
    fn a_second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let mut waited = false;
        let first = StateLock::acquire(&state, |_| waited = true).expect("first");
        assert!(!waited, "a free directory is taken at once");
        let (tx, rx) = std::sync::mpsc::channel();
        let second = {
            let state = state.clone();
            std::thread::spawn(move || {
                let lock = StateLock::acquire(&state, |p| {
                    let _ = tx.send(p.to_owned());
                });
                (lock, std::time::Instant::now())
            })
        };
        let told = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second one says it waits");
        assert_eq!(told, state.join(LOCK_FILE_NAME));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!second.is_finished(), "it must wait while the first holds");
        let released = std::time::Instant::now();
        drop(first);
        let (lock, got) = second.join().expect("thread");
        lock.expect("the second takes it once the first is gone");
        assert!(got >= released);
    }

    #[test]
    fn survives_reopen_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        assert_eq!(j.records().count(), 0);
        let a = partition("a", "/run/netns/x", "10.0.0.1", 5);
        let b = partition("b", "/run/netns/x", "10.0.0.2", 5);
        j.put(Record {
            state: RecordState::Applying,
            fault: a.clone(),
            receipt: Receipt::None,
        })
        .expect("put");
        j.put(Record {
            state: RecordState::Applied,
            fault: b.clone(),
            receipt: Receipt::Latency { band: 3 },
        })
        .expect("put");
        let got = Journal::peek(dir.path()).expect("peek");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].fault, a);
        assert_eq!(got[0].state, RecordState::Applying);
        assert_eq!(got[1].receipt, Receipt::Latency { band: 3 });
        j.delete("a").expect("delete");
        j.delete("nope").expect("absent is fine");
        let ids = peek_ids(dir.path());
        assert_eq!(ids, ["b"]);
        drop(j);
        // Reopened, the same records (and a compacted log).
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.records().count(), 1);
        assert!(!dir.path().join("journal.log.tmp").exists());
    }

    fn boot(id: &str, at_secs: u64) -> Boot {
        Boot {
            id: id.into(),
            at: UNIX_EPOCH + std::time::Duration::from_secs(at_secs),
        }
    }

    #[test]
    fn a_journal_of_an_earlier_boot_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = boot("boot-1", 0);
        let mut j = Journal::open_in_boot(dir.path(), &first).expect("open");
        j.put(Record {
            state: RecordState::Applied,
            fault: partition("a", "/run/netns/x", "10.0.0.1", 5),
            receipt: Receipt::None,
        })
        .expect("put");
        drop(j);
        let same = Journal::open_in_boot(dir.path(), &first).expect("same boot");
        assert_eq!((same.records().count(), same.set_aside()), (1, 0));
        drop(same);
        let later = Journal::open_in_boot(dir.path(), &boot("boot-2", 0)).expect("later boot");
        assert_eq!((later.records().count(), later.set_aside()), (0, 1));
        drop(later);
        // Set aside for good: the log was rewritten under the new boot.
        let again = Journal::open_in_boot(dir.path(), &boot("boot-2", 0)).expect("again");
        assert_eq!((again.records().count(), again.set_aside()), (0, 0));
    }

    const OLD_JOURNAL: &str = r#"{"version":1,"records":[{"state":"applied","fault":{"id":"a","target":{"netns":"/run/netns/x"},"expiresAt":"2030-01-01T00:00:00Z","partition":{"peers":["10.0.0.1/32"]}}}]}"#;

    /// An agent upgraded while faults are active: its predecessor's
    /// journal.json is read and replaced by the log.
    #[test]
    fn the_old_single_document_journal_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(OLD_FILE_NAME), OLD_JOURNAL).expect("write");
        let j = Journal::open_in_boot(dir.path(), &boot("boot-1", 0)).expect("open");
        let ids: Vec<_> = j.records().map(|r| r.fault.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        assert!(!dir.path().join(OLD_FILE_NAME).exists());
        drop(j);
        let mut j = Journal::open_in_boot(dir.path(), &boot("boot-1", 0)).expect("reopen");
        assert_eq!(j.records().count(), 1, "now in the log");
        j.delete("a").expect("delete");
        drop(j);
        // Rolled back to an older agent, which wrote only journal.json: the
        // newer of the two files is read.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(dir.path().join(OLD_FILE_NAME), OLD_JOURNAL).expect("write");
        let j = Journal::open_in_boot(dir.path(), &boot("boot-1", 0)).expect("after rollback");
        assert_eq!(j.records().count(), 1, "the older agent's record");
        assert!(!dir.path().join(OLD_FILE_NAME).exists());
        // With a boot id of another boot, it is set aside.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(OLD_FILE_NAME),
            OLD_JOURNAL.replace(r#""version":1,"#, r#""version":1,"bootId":"boot-0","#),
        )
        .expect("write");
        let j = Journal::open_in_boot(dir.path(), &boot("boot-1", 0)).expect("open");
        assert_eq!((j.records().count(), j.set_aside()), (0, 1));
    }

    fn peek_ids(dir: &Path) -> Vec<String> {
        Journal::peek(dir)
            .expect("peek")
            .into_iter()
            .map(|r| r.fault.id)
            .collect()
    }

    fn put(j: &mut Journal, id: &str, state: RecordState) {
        j.put(Record {
            state,
            fault: partition(id, "/run/netns/x", "10.0.0.1", 5),
            receipt: Receipt::None,
        })
        .expect("put");
    }

    /// A kill in the middle of an append leaves a line without its newline:
    /// it is ignored, and what came before stands.
    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        put(&mut j, "a", RecordState::Applying);
        put(&mut j, "a", RecordState::Applied);
        put(&mut j, "b", RecordState::Applied);
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let full = fs::read(&path).expect("read");
        // Tear a `delete b` and an `applying c` at every length short of whole.
        let applying_c = serde_json::to_vec(&Line::Put(Box::new(Record {
            state: RecordState::Applying,
            fault: partition("c", "/run/netns/x", "10.0.0.3", 5),
            receipt: Receipt::None,
        })))
        .expect("line");
        for line in [br#"{"delete":"b"}"#.to_vec(), applying_c] {
            for cut in 0..=line.len() {
                let mut torn = full.clone();
                torn.extend_from_slice(&line[..cut]);
                fs::write(&path, &torn).expect("write");
                let got = Journal::peek(dir.path()).expect("a torn tail is no corruption");
                let states: Vec<_> = got.iter().map(|r| (r.fault.id.as_str(), r.state)).collect();
                assert_eq!(
                    states,
                    [("a", RecordState::Applied), ("b", RecordState::Applied)],
                    "cut at {cut}"
                );
            }
        }
        // A whole line that does not parse is corruption.
        let mut bad = full.clone();
        bad.extend_from_slice(b"{\"put\":1}\n");
        fs::write(&path, &bad).expect("write");
        let e = Journal::open(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("line 5"), "{e}");
    }

    /// Removed records are dropped from the log once they outweigh the
    /// live ones, and nothing live is lost on the way.
    #[test]
    fn tidy_compacts_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        put(&mut j, "keep", RecordState::Applied);
        for i in 0..100 {
            let id = format!("f{i}");
            put(&mut j, &id, RecordState::Applying);
            put(&mut j, &id, RecordState::Applied);
            j.delete(&id).expect("delete");
            j.tidy().expect("tidy");
        }
        let lines = fs::read_to_string(dir.path().join(FILE_NAME))
            .expect("read")
            .lines()
            .count();
        assert!(lines <= 2 + SLACK_LINES + 3, "{lines} lines");
        let ids = peek_ids(dir.path());
        assert_eq!(ids, ["keep"]);
        // Appends after a rewrite go to the new log.
        j.delete("keep").expect("delete");
        assert!(Journal::peek(dir.path()).expect("peek").is_empty());
    }

    #[test]
    fn a_journal_torn_before_this_boot_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), b"").expect("write");
        // Booted after the file was written: a power loss left it empty.
        let far_future = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let j = Journal::open_in_boot(dir.path(), &boot("b", far_future)).expect("set aside");
        assert_eq!(j.records().count(), 0);
        // Written during this boot, it is refused.
        drop(j);
        fs::write(dir.path().join(FILE_NAME), b"").expect("write");
        assert!(Journal::open_in_boot(dir.path(), &boot("b", 0)).is_err());
    }

    #[test]
    fn corrupt_journal_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), b"{not json\n").expect("write");
        let e = Journal::open(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("is not readable"), "{e}");
    }

    #[test]
    fn failed_write_leaves_memory_as_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        // A log opened read-only makes every append fail.
        j.file = File::open(j.path()).expect("open read-only");
        let a = partition("a", "/n", "10.0.0.1", 5);
        let r = j.put(Record {
            state: RecordState::Applying,
            fault: a,
            receipt: Receipt::None,
        });
        assert!(r.is_err());
        assert_eq!(j.records().count(), 0);
        // A rewrite that fails (a directory where its temporary file goes)
        // is not retried at once.
        fs::create_dir(dir.path().join("journal.log.tmp")).expect("mkdir");
        j.lines = 1000;
        assert!(j.tidy().is_err());
        assert!(j.tidy().is_ok(), "waits for more lines");
        // The failed append could not be cut back (a read-only handle):
        // the next one rewrites the log from memory first.
        assert!(j.torn);
        fs::remove_dir(dir.path().join("journal.log.tmp")).expect("rmdir");
        put(&mut j, "b", RecordState::Applied);
        let ids = peek_ids(dir.path());
        assert_eq!(ids, ["b"]);
    }
}
