//! `export`: a verified plan as files an admin can act on without writeback's write path.
//!
//! - [`bulk`]: the Entra admin center's bulk add / bulk remove member CSV templates, one file per group per
//!   action, split at [`bulk::MAX_ROWS`] rows.
//! - [`powershell`]: a Microsoft Graph PowerShell script that makes every change of the plan, tolerating users
//!   already added or already removed, so that running it twice is harmless.
//!
//! The functions here are pure: they turn a plan into named byte buffers. The command writes them atomically.

pub mod bulk;
pub mod powershell;

use std::path::Path;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The Entra admin center "Bulk operations > Import members" CSV (the plan's adds).
    EntraBulkAdd,
    /// The Entra admin center "Bulk operations > Remove members" CSV (the plan's removes).
    EntraBulkRemove,
    /// A Microsoft Graph PowerShell script with every add and remove.
    Powershell,
}

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// The file name (no folder).
    pub name: String,
    /// The content.
    pub bytes: Vec<u8>,
    /// How many changes the file carries.
    pub changes: usize,
    /// The group the file is for, or `None` for a file covering the whole plan.
    pub group: Option<String>,
}

/// What an export produced: the files, and notes for groups that got none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// The files to write, in order.
    pub files: Vec<ExportFile>,
    /// One line per group that has no change of the exported kind.
    pub notes: Vec<String>,
}

/// The stem export files are named after: the plan's file name without its last extension
/// (`plan-20250301.json` → `plan-20250301`).
pub fn plan_stem(plan_path: &Path) -> String {
    plan_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "plan".to_string())
}
