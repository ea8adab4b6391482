//! Reading an archive folder for [`super::audit`]: every file with an audited extension, recursively, in name
//! order. Symbolic links to folders are not followed (no loops); a file that cannot be read becomes a finding.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{audit, ArchiveFile, AuditReport, Finding};
use crate::error::{Error, Result};
use crate::trust::AllowedSigners;

/// The extensions the audit reads; other files are not opened.
const READ: [&str; 4] = ["json", "csv", "jsonl", "sig"];

/// Audits the archive in `dir` (see [`super::audit`]); unreadable files are findings too.
pub fn audit_folder(dir: &Path, allowed: &AllowedSigners, now: DateTime<Utc>) -> Result<AuditReport> {
    if !dir.is_dir() {
        return Err(Error::input(dir, "not a folder; give the archive folder to audit"));
    }
    let mut unreadable = Vec::new();
    let mut files = Vec::new();
    walk(dir, dir, &mut files, &mut unreadable);
    let mut report = audit(&files, allowed, now);
    report.findings.extend(unreadable);
    report.findings.sort();
    Ok(report)
}

/// Reads every file with an audited extension under `dir`, in name order. Symbolic links to folders are not
/// followed (no loops); unreadable entries become findings.
fn walk(root: &Path, dir: &Path, files: &mut Vec<ArchiveFile>, unreadable: &mut Vec<Finding>) {
    let shown = |p: &Path| {
        let rel = p.strip_prefix(root).unwrap_or(p);
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
    };
    let finding = |p: &Path, e: std::io::Error| Finding {
        file: shown(p),
        line: None,
        seq: None,
        message: format!("cannot read it: {e}"),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return unreadable.push(finding(dir, e)),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            walk(root, &path, files, unreadable);
            continue;
        }
        let wanted = path.extension().and_then(|e| e.to_str()).is_some_and(|e| READ.contains(&e));
        if !wanted || !(meta.is_file() || path.is_file()) {
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) => files.push(ArchiveFile { path: shown(&path), bytes }),
            Err(e) => unreadable.push(finding(&path, e)),
        }
    }
}
