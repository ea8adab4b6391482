//! Exactly once, across folders: `apply`'s use of the [`crate::ledger`].
//!
//! Before any request (after the signature, format, expiry and approvals), the ledger is read: a plan it has as
//! finished is refused wherever its file sits now (22), a cancelled plan is refused (28), and a plan it has as
//! started resumes only with the journal it was started with (22). Then the run takes the plan's lock (29 when
//! another apply holds it). The run records the start in the ledger right after its `apply-started` line reached
//! the journal, and the finish after the receipt was written.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::gates;
use super::journal::PlanProgress;
use super::receipt::Receipt;
use crate::error::Result;
use crate::ledger::{cancel, lock, Finished, Ledger, Record, Started};
use crate::plan::Plan;
use crate::trust::AllowedSigners;

/// The ledger as one apply sees it.
#[derive(Debug)]
pub struct Once {
    ledger: Ledger,
    record: Option<Record>,
}

/// An absolute form of `path` (its folder resolved when it exists), for comparing journal paths.
pub fn absolute(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::canonicalize(&parent) {
        Ok(dir) => dir.join(name),
        Err(_) => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

impl Once {
    /// Opens the ledger in `dir` and runs the ledger gate for `plan`: refuses a plan finished (22) or cancelled
    /// (28) in this ledger. A cancellation's signature is checked against `allowed` at `now`. `rebuilding`: the
    /// plan's own journal has it as finished and only its receipt is missing (that run sends nothing).
    pub fn check(
        dir: &Path,
        plan: &Plan,
        plan_sha256: &str,
        allowed: &AllowedSigners,
        now: DateTime<Utc>,
        rebuilding: bool,
    ) -> Result<Once> {
        let ledger = Ledger::open(dir)?;
        let record = ledger.record(plan.plan_id)?;
        let cancellation = ledger.cancellation(plan.plan_id)?.map(|stored| {
            let verified = cancel::verify_stored(&stored, plan.plan_id, allowed, now);
            (stored.path, verified)
        });
        let finished_ok = rebuilding.then_some(());
        gates::check_ledger(plan, plan_sha256, ledger.dir(), record.as_ref(), cancellation.as_ref(), finished_ok)?;
        Ok(Once { ledger, record })
    }

    /// The `doctor`-style warning when the ledger holds nothing yet.
    pub fn warning(&self) -> Option<String> {
        self.ledger.is_fresh().then(|| self.ledger.fresh_warning())
    }

    /// The ledger folder.
    pub fn dir(&self) -> &Path {
        self.ledger.dir()
    }

    /// A plan started with this ledger resumes only with its own journal (22 otherwise).
    pub fn check_journal(&self, plan: &Plan, journal: &Path, progress: &PlanProgress) -> Result<()> {
        gates::check_ledger_journal(plan, self.record.as_ref(), &absolute(journal), progress)
    }

    /// Takes the plan's lock (29 when another apply holds it).
    pub fn lock(&self, plan: &Plan, now: DateTime<Utc>) -> Result<lock::Held> {
        self.ledger.lock(plan.plan_id, lock::Owner::this_process(now))
    }

    /// Records the start, once the run's `apply-started` line is in the journal (a resumed run keeps the first
    /// start).
    pub fn record_started(
        &self,
        plan: &Plan,
        plan_sha256: &str,
        plan_file: &Path,
        journal: &Path,
        at: DateTime<Utc>,
    ) -> Result<()> {
        if self.ledger.record(plan.plan_id)?.is_some() {
            return Ok(());
        }
        let started = Started {
            at,
            by: crate::ledger::who(),
            plan_file: plan_file.display().to_string(),
            journal: absolute(journal).display().to_string(),
        };
        self.ledger.save(&Record::started(plan.plan_id, plan_sha256, started))
    }

    /// Records the finish, once the receipt is written. A plan whose run finished before this ledger knew it
    /// (an older writeback, or a crash before this line) gets its record now.
    pub fn record_finished(&self, receipt: &Receipt, receipt_path: &Path, journal: &Path) -> Result<()> {
        let mut record = match self.ledger.record(receipt.plan_id)? {
            Some(r) => r,
            None => Record::started(
                receipt.plan_id,
                &receipt.plan_sha256,
                Started {
                    at: receipt.started_at,
                    by: receipt.applier.os_user.clone().unwrap_or_else(|| "unknown".into()),
                    plan_file: receipt.plan_file.clone(),
                    journal: absolute(journal).display().to_string(),
                },
            ),
        };
        if record.finished.is_some() {
            return Ok(());
        }
        record.finished = Some(Finished {
            at: receipt.finished_at,
            status: receipt.status,
            receipt: absolute(receipt_path).display().to_string(),
        });
        self.ledger.save(&record)
    }
}
