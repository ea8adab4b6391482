//! The archive's file names: which files belong to a plan, and how each is named from the plan's path.
//!
//! Every file that travels with a plan sits beside it and is named by appending a suffix to the plan's own name:
//!
//! ```text
//! plan.json                               the plan (JSON or CSV)
//! plan.json.sig                           the planner's signature            (SIGNATURE_SUFFIX)
//! plan.json.approval-<label>.sig          one approval per approver          (APPROVAL_INFIX … SIGNATURE_SUFFIX)
//! plan.json.journal.jsonl                 apply's hash-chained journal       (JOURNAL_SUFFIX)
//! plan.json.receipt.json                  apply's (or check's) receipt       (RECEIPT_SUFFIX)
//! plan.json.receipt.json.sig              the admin's signature of it
//! ```
//!
//! This module is the one place these names are spelled; commands, `audit` and `report` all ask it.

use std::path::{Path, PathBuf};

/// The suffix of a detached SSH signature: `<file>.sig`.
pub const SIGNATURE_SUFFIX: &str = ".sig";
/// The infix between a plan's file name and an approver label: `<plan>.approval-<label>.sig`.
pub const APPROVAL_INFIX: &str = ".approval-";
/// The suffix of a plan's receipt: `<plan>.receipt.json`.
pub const RECEIPT_SUFFIX: &str = ".receipt.json";
/// The suffix of a plan's journal: `<plan>.journal.jsonl`.
pub const JOURNAL_SUFFIX: &str = ".journal.jsonl";

/// The file beside `path` whose name is `path`'s name with `suffix` appended (`plan.json` → `plan.json.sig`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The detached signature of any signed file (a plan, a receipt): `<file>.sig`.
pub fn signature_path(signed: &Path) -> PathBuf {
    beside(signed, SIGNATURE_SUFFIX)
}

/// The receipt of a plan: `<plan>.receipt.json`.
pub fn receipt_path(plan: &Path) -> PathBuf {
    beside(plan, RECEIPT_SUFFIX)
}

/// The default journal of a plan: `<plan>.journal.jsonl`.
pub fn journal_path(plan: &Path) -> PathBuf {
    beside(plan, JOURNAL_SUFFIX)
}

/// The approval file of a plan for an approver `label` (already made safe for a file name):
/// `<plan>.approval-<label>.sig`.
pub fn approval_path(plan: &Path, label: &str) -> PathBuf {
    beside(plan, &format!("{APPROVAL_INFIX}{label}{SIGNATURE_SUFFIX}"))
}

/// The approval files beside `plan` (`<plan>.approval-*.sig`), sorted by name. An unreadable folder gives no
/// files (so an approvals requirement then fails, never passes).
pub fn approval_files(plan: &Path) -> Vec<PathBuf> {
    let Some(plan_name) = plan.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{plan_name}{APPROVAL_INFIX}");
    let dir = match plan.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.starts_with(&prefix)
                && name.ends_with(SIGNATURE_SUFFIX)
                && name.len() > prefix.len() + SIGNATURE_SUFFIX.len())
            .then(|| plan.with_file_name(name))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_plan_name_plus_a_suffix() {
        let plan = Path::new("handoff/plan.json");
        assert_eq!(signature_path(plan), Path::new("handoff/plan.json.sig"));
        assert_eq!(receipt_path(plan), Path::new("handoff/plan.json.receipt.json"));
        assert_eq!(signature_path(&receipt_path(plan)), Path::new("handoff/plan.json.receipt.json.sig"));
        assert_eq!(journal_path(plan), Path::new("handoff/plan.json.journal.jsonl"));
        assert_eq!(approval_path(plan, "bob@x"), Path::new("handoff/plan.json.approval-bob@x.sig"));
    }

    #[test]
    fn approval_files_are_found_beside_the_plan_only() {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.json");
        for name in [
            "plan.json.approval-b.sig",
            "plan.json.approval-a.sig",
            "plan.json.approval-.sig",
            "other.json.approval-a.sig",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let names: Vec<String> =
            approval_files(&plan).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["plan.json.approval-a.sig", "plan.json.approval-b.sig"]);
    }
}
