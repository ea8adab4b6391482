//! The ledger: the plans `apply` has started and finished, and the plans someone cancelled, kept in a folder of
//! its own so that a plan is applied once wherever its file sits.
//!
//! The folder is `--ledger DIR`, else `ledger = DIR` in the config, else `ledger/` in the user's state folder
//! ([`crate::folders::state_dir`]). A folder shared by the team makes the rule team-wide. Per plan, named by its
//! id:
//!
//! ```text
//! <plan_id>.json          the record: started (when, by whom, which journal), then finished (status, receipt)
//! <plan_id>.cancel.json   a signed cancellation (`writeback cancel`), its SSH signature beside it
//! <plan_id>.lock          held by the apply that runs the plan (see [`lock`])
//! ```
//!
//! Every file is written atomically, the way the journal is made durable: a temporary file, fsync, rename, fsync
//! of the folder. This module reads and writes those files; the decisions (refuse a finished or cancelled plan,
//! resume only with the plan's own journal) are pure functions in [`crate::apply::gates`].

pub mod cancel;
pub mod lock;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::plan::timestamp;

/// How a plan's apply ended: the ledger's finished record, the journal's last line and the receipt say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishStatus {
    /// Every change is applied, or was not needed.
    Complete,
    /// Some changes failed; the receipt lists them.
    Partial,
}

impl FinishStatus {
    /// `complete` or `partial`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishStatus::Complete => "complete",
            FinishStatus::Partial => "partial",
        }
    }
}

/// The `format` marker of a ledger record.
pub const LEDGER_FORMAT: &str = "writeback-ledger";
/// The record format version this build writes.
pub const LEDGER_VERSION: &str = "1.0";
/// The suffix of a plan's record: `<plan_id>.json`.
pub const RECORD_SUFFIX: &str = ".json";
/// The suffix of a plan's cancellation: `<plan_id>.cancel.json` (its signature: [`crate::archive::signature_path`]).
pub const CANCEL_SUFFIX: &str = ".cancel.json";
/// The suffix of a plan's lock file: `<plan_id>.lock`.
pub const LOCK_SUFFIX: &str = ".lock";

/// What the ledger knows about one plan that `apply` started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Always [`LEDGER_FORMAT`].
    pub format: String,
    /// `MAJOR.MINOR`.
    pub format_version: String,
    /// The plan's id.
    pub plan_id: Uuid,
    /// SHA-256 (hex) of the plan file's bytes.
    pub plan_sha256: String,
    /// The first run that reached the journal.
    pub started: Started,
    /// Set when the plan finished (every change has an outcome).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
}

/// When and where a plan was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Started {
    /// When the first run wrote its `apply-started` line.
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    /// Who ran it: `user@host`.
    pub by: String,
    /// The plan file, as given then.
    pub plan_file: String,
    /// The plan's journal (an absolute path): the only journal a resumed run may use.
    pub journal: String,
}

/// How a plan finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finished {
    /// When the last change got its outcome.
    #[serde(with = "timestamp")]
    pub at: DateTime<Utc>,
    /// Complete, or partial when some changes failed.
    pub status: FinishStatus,
    /// The receipt (an absolute path).
    pub receipt: String,
}

impl Record {
    /// A new record for a plan whose first run just started.
    pub fn started(plan_id: Uuid, plan_sha256: &str, started: Started) -> Record {
        Record {
            format: LEDGER_FORMAT.into(),
            format_version: LEDGER_VERSION.into(),
            plan_id,
            plan_sha256: plan_sha256.to_string(),
            started,
            finished: None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// A cancellation file as found in the ledger (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCancellation {
    /// The file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its SSH signature, when the `.sig` file is there.
    pub signature: Option<Vec<u8>>,
}

/// One plan in the ledger, for `writeback ledger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// The plan id.
    pub plan_id: Uuid,
    /// The record, when the plan was started.
    pub record: Option<Record>,
    /// The cancellation, when the plan was cancelled and it verifies; `None` otherwise.
    pub cancellation: Option<cancel::Cancellation>,
    /// Why a cancellation file that is there did not verify.
    pub cancellation_problem: Option<String>,
}

/// An open ledger folder.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
    fresh: bool,
}

/// The ledger folder: `flag`, else the config's `ledger`, else `ledger/` in the user's state folder.
pub fn resolve_dir(flag: Option<&Path>, config: Option<&crate::config::Config>) -> Result<PathBuf> {
    if let Some(dir) = flag.map(Path::to_path_buf).or_else(|| config.and_then(|c| c.defaults.ledger.clone())) {
        return Ok(dir);
    }
    crate::folders::state_dir().map(|d| d.join("ledger")).ok_or_else(|| {
        Error::Usage(
            "there is no home folder to keep the ledger of applied plans in; give --ledger DIR (or ledger = DIR \
             in the config)"
                .into(),
        )
    })
}

impl Ledger {
    /// Opens the ledger in `dir`, creating the folder when it does not exist.
    pub fn open(dir: &Path) -> Result<Ledger> {
        let existed = dir.is_dir();
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            action: "create the ledger folder",
            source: e,
        })?;
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut ledger = Ledger { dir, fresh: false };
        ledger.fresh = !existed || ledger.plan_ids()?.is_empty();
        Ok(ledger)
    }

    /// Opens the ledger in `dir` for reading only: a missing folder is an empty ledger.
    pub fn open_existing(dir: &Path) -> Result<Ledger> {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut ledger = Ledger { dir, fresh: false };
        ledger.fresh = ledger.plan_ids()?.is_empty();
        Ok(ledger)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the folder was just made, or holds no plan yet: nothing was ever recorded here.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The warning `apply` prints when the ledger is fresh, in `doctor`'s words: what is wrong, then the fix.
    pub fn fresh_warning(&self) -> String {
        format!(
            "warning: the ledger {} is new or empty: it has no record of any plan applied before. A plan is refused \
             as already applied only when it was applied with this same ledger (or its journal or receipt is \
             beside it). fix: if plans are also applied from another machine, account or CI runner, point \
             `ledger` (config) or --ledger at one persistent folder they all share; see docs/apply.md",
            self.dir.display()
        )
    }

    fn path(&self, plan_id: Uuid, suffix: &str) -> PathBuf {
        self.dir.join(format!("{plan_id}{suffix}"))
    }

    /// The record of a plan, when it was started with this ledger.
    pub fn record(&self, plan_id: Uuid) -> Result<Option<Record>> {
        let path = self.path(plan_id, RECORD_SUFFIX);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::read(&path, e)),
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
            Error::input_at(
                &path,
                e.line() as u64,
                format!(
                    "not a ledger record ({}); the ledger must only be written by writeback. Restore it from a backup",
                    crate::plan::json::error_text(&e)
                ),
            )
        })?;
        if record.format != LEDGER_FORMAT || record.plan_id != plan_id {
            return Err(Error::input(&path, "not this plan's ledger record; restore the ledger from a backup"));
        }
        Ok(Some(record))
    }

    /// Writes a plan's record (atomically, fsynced with its folder).
    pub fn save(&self, record: &Record) -> Result<()> {
        crate::atomic_write::write(&self.path(record.plan_id, RECORD_SUFFIX), &record.encode())
    }

    /// The cancellation file of a plan, when there is one.
    pub fn cancellation(&self, plan_id: Uuid) -> Result<Option<StoredCancellation>> {
        let path = self.path(plan_id, CANCEL_SUFFIX);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::read(&path, e)),
        };
        let sig_path = crate::archive::signature_path(&path);
        let signature = match std::fs::read(&sig_path) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::read(&sig_path, e)),
        };
        Ok(Some(StoredCancellation { path, bytes, signature }))
    }

    /// Writes a cancellation and its signature together (atomically). Returns the cancellation's path.
    pub fn save_cancellation(&self, plan_id: Uuid, bytes: &[u8], signature: &[u8]) -> Result<PathBuf> {
        let path = self.path(plan_id, CANCEL_SUFFIX);
        let sig_path = crate::archive::signature_path(&path);
        crate::atomic_write::write_together(&[(&path, bytes), (&sig_path, signature)])?;
        Ok(path)
    }

    /// Takes the lock of a plan, or says who holds it ([`Error::Locked`]).
    pub fn lock(&self, plan_id: Uuid, owner: lock::Owner) -> Result<lock::Held> {
        lock::acquire(&self.path(plan_id, LOCK_SUFFIX), plan_id, owner)
    }

    /// The ids of the plans the ledger holds a record or a cancellation for, sorted.
    pub fn plan_ids(&self) -> Result<Vec<Uuid>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::read(&self.dir, e)),
        };
        let mut ids = std::collections::BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(CANCEL_SUFFIX).or_else(|| name.strip_suffix(RECORD_SUFFIX));
            if let Some(id) = stem.and_then(|s| Uuid::parse_str(s).ok()) {
                ids.insert(id);
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Every plan in the ledger, with its record and its verified cancellation.
    pub fn list(&self, allowed: Option<&crate::trust::AllowedSigners>, now: DateTime<Utc>) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for plan_id in self.plan_ids()? {
            let record = self.record(plan_id)?;
            let (cancellation, cancellation_problem) = match self.cancellation(plan_id)? {
                None => (None, None),
                Some(stored) => match allowed {
                    Some(allowed) => match cancel::verify_stored(&stored, plan_id, allowed, now) {
                        Ok(c) => (Some(c), None),
                        Err(problem) => (None, Some(problem)),
                    },
                    None => match cancel::Cancellation::decode(&stored.bytes) {
                        Ok(c) => (Some(c), Some("signature not checked (give --allowed-signers)".into())),
                        Err(problem) => (None, Some(problem)),
                    },
                },
            };
            out.push(Listed { plan_id, record, cancellation, cancellation_problem });
        }
        Ok(out)
    }
}

/// `user@host` for the records and the lock: the operating-system account and the machine's name.
pub fn who() -> String {
    format!("{}@{}", lock::os_user(), lock::host_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(journal: &str) -> Started {
        Started {
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            by: "admin@host".into(),
            plan_file: "plan.json".into(),
            journal: journal.into(),
        }
    }

    #[test]
    fn records_round_trip_and_a_new_folder_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger")).unwrap();
        assert!(ledger.is_fresh());
        assert!(ledger.fresh_warning().contains("fix:"));
        let id = Uuid::new_v4();
        assert_eq!(ledger.record(id).unwrap(), None);
        let mut record = Record::started(id, "ab", started("/j"));
        ledger.save(&record).unwrap();
        assert_eq!(ledger.record(id).unwrap().as_ref(), Some(&record));
        record.finished = Some(Finished {
            at: DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
            status: FinishStatus::Complete,
            receipt: "/r".into(),
        });
        ledger.save(&record).unwrap();
        assert_eq!(ledger.record(id).unwrap(), Some(record));
        let again = Ledger::open(&dir.path().join("ledger")).unwrap();
        assert!(!again.is_fresh());
        assert_eq!(again.plan_ids().unwrap(), vec![id]);
        // Only the record: no temporary files are left behind.
        assert_eq!(std::fs::read_dir(again.dir()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_record_is_an_input_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        std::fs::write(dir.path().join(format!("{id}.json")), "{\"format\": 1").unwrap();
        let err = ledger.record(id).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::INPUT);
        assert!(err.to_string().contains(&id.to_string()), "{err}");
    }
}
