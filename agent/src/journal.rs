//! The on-disk journal: which faults the agent is about to apply or has
//! applied, so an agent killed with SIGKILL can undo them when it restarts.
//!
//! The whole journal is one small JSON file rewritten atomically on every
//! change (write a temporary file, rename it over the old one): after the
//! agent dies, however it dies, the next agent reads either the old or the
//! new version, never a torn one.
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

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use faultline_api::NodeFault;
use serde::{Deserialize, Serialize};

use crate::reconcile::Receipt;

pub const FILE_NAME: &str = "journal.json";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use state directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot read journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "journal {path} is not readable JSON ({message}); refusing to start, since the faults it records could not be removed"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write journal {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnDisk {
    version: u32,
    /// The boot it was written in (absent in journals of older agents,
    /// which count as this boot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    records: Vec<Record>,
}

/// Which boot of the kernel this is, to tell a journal of an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// `/proc/sys/kernel/random/boot_id`.
    pub id: String,
    /// When it booted, from `/proc/stat`'s `btime`.
    pub at: SystemTime,
}

impl Boot {
    /// This machine's current boot.
    pub fn current() -> Result<Boot, io::Error> {
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

/// The journal, kept in memory and written through on every change.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    boot_id: String,
    records: BTreeMap<String, Record>,
    /// Faults a journal of an earlier boot held, set aside on open.
    set_aside: usize,
}

impl Journal {
    /// Opens (creating the directory if needed) and reads the journal.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let boot = Boot::current().map_err(|source| JournalError::Read {
            path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            source,
        })?;
        Journal::open_in_boot(dir, &boot)
    }

    /// Opens the journal as seen from `boot`.
    pub fn open_in_boot(dir: &Path, boot: &Boot) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let mut journal = Journal {
            dir: dir.to_owned(),
            boot_id: boot.id.clone(),
            records: BTreeMap::new(),
            set_aside: 0,
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(journal),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        let disk: OnDisk = match serde_json::from_slice(&bytes) {
            Ok(d) => d,
            // Torn by a power loss before this boot: nothing it named survived.
            Err(_) if modified_before(&path, boot.at) => return Ok(journal),
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path,
                    message: e.to_string(),
                });
            }
        };
        if disk.version != VERSION {
            return Err(JournalError::Corrupt {
                path,
                message: format!("version {} is not {VERSION}", disk.version),
            });
        }
        if disk.boot_id.as_deref().is_some_and(|b| b != boot.id) {
            journal.set_aside = disk.records.len();
            return Ok(journal);
        }
        journal.records = disk
            .records
            .into_iter()
            .map(|r| (r.fault.id.clone(), r))
            .collect();
        Ok(journal)
    }

    /// How many faults a journal of an earlier boot held (they ended with it).
    pub fn set_aside(&self) -> usize {
        self.set_aside
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Records a fault (replacing any record of the same id).
    pub fn put(&mut self, record: Record) -> Result<(), JournalError> {
        let old = self.records.insert(record.fault.id.clone(), record.clone());
        self.persist().inspect_err(|_| {
            // Memory must not claim what the disk does not say.
            match old {
                Some(o) => self.records.insert(record.fault.id.clone(), o),
                None => self.records.remove(&record.fault.id),
            };
        })
    }

    /// Forgets a fault.
    pub fn delete(&mut self, id: &str) -> Result<(), JournalError> {
        let Some(old) = self.records.remove(id) else {
            return Ok(());
        };
        self.persist().inspect_err(|_| {
            self.records.insert(id.to_owned(), old);
        })
    }

    fn persist(&self) -> Result<(), JournalError> {
        let path = self.path();
        let err = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let disk = OnDisk {
            version: VERSION,
            boot_id: Some(self.boot_id.clone()),
            records: self.records.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| err(io::Error::other(e)))?;
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }
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
        let j2 = Journal::open(dir.path()).expect("reopen");
        let got: Vec<_> = j2.records().cloned().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].fault, a);
        assert_eq!(got[0].state, RecordState::Applying);
        assert_eq!(got[1].receipt, Receipt::Latency { band: 3 });
        j.delete("a").expect("delete");
        j.delete("nope").expect("absent is fine");
        let ids: Vec<_> = Journal::open(dir.path())
            .expect("reopen")
            .records()
            .map(|r| r.fault.id.clone())
            .collect();
        assert_eq!(ids, ["b"]);
        assert!(!dir.path().join("journal.json.tmp").exists());
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
        let same = Journal::open_in_boot(dir.path(), &first).expect("same boot");
        assert_eq!((same.records().count(), same.set_aside()), (1, 0));
        let later = Journal::open_in_boot(dir.path(), &boot("boot-2", 0)).expect("later boot");
        assert_eq!((later.records().count(), later.set_aside()), (0, 1));
        // A journal of an older agent (no boot id) counts as this boot's.
        fs::write(dir.path().join(FILE_NAME), br#"{"version":1,"records":[]}"#).expect("write");
        let old = Journal::open_in_boot(dir.path(), &boot("boot-2", 0)).expect("old format");
        assert_eq!(old.set_aside(), 0);
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
        // Written during this boot, it is refused as before.
        assert!(Journal::open_in_boot(dir.path(), &boot("b", 0)).is_err());
    }

    #[test]
    fn corrupt_journal_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), b"{not json").expect("write");
        let e = Journal::open(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("refusing to start"), "{e}");
    }

    #[test]
    fn failed_write_leaves_memory_as_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        // A directory where the temporary file goes makes the write fail.
        fs::create_dir(dir.path().join("journal.json.tmp")).expect("mkdir");
        let a = partition("a", "/n", "10.0.0.1", 5);
        let r = j.put(Record {
            state: RecordState::Applying,
            fault: a,
            receipt: Receipt::None,
        });
        assert!(r.is_err());
        assert_eq!(j.records().count(), 0);
    }
}
