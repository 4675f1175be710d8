//! The on-disk journal: which faults the agent is about to apply or has
//! applied, so an agent killed with SIGKILL can undo them when it restarts.
//!
//! The whole journal is one small JSON file rewritten atomically on every
//! change (write a temporary file, fsync it, rename it over the old one,
//! fsync the directory): a reader after any crash sees either the old or the
//! new version, never a torn one, and a rename that returned is durable.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
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
struct OnDisk {
    version: u32,
    records: Vec<Record>,
}

/// The journal, kept in memory and written through on every change.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    records: BTreeMap<String, Record>,
}

impl Journal {
    /// Opens (creating the directory if needed) and reads the journal.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let records = match fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if disk.version != VERSION {
                    return Err(JournalError::Corrupt {
                        path,
                        message: format!("version {} is not {VERSION}", disk.version),
                    });
                }
                disk.records
                    .into_iter()
                    .map(|r| (r.fault.id.clone(), r))
                    .collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        Ok(Journal {
            dir: dir.to_owned(),
            records,
        })
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Records a fault (replacing any record of the same id), durably.
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

    /// Forgets a fault, durably.
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
            records: self.records.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| err(io::Error::other(e)))?;
        let tmp = self.dir.join(format!("{FILE_NAME}.tmp"));
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
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
