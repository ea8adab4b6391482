//! `writeback audit`: verify an archive folder of plans, approvals, receipts and journals, and print who planned,
//! approved and applied each plan, then one line per finding.

use std::path::{Path, PathBuf};

use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use serde_json::json;

use crate::audit::{self, ArchiveFile, AuditReport, Finding};
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::plan::csv::neutralize;
use crate::plan::timestamp;
use crate::trust::AllowedSigners;

/// Arguments of `writeback audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The archive folder (searched recursively).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// Print the result as JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,

    /// Also write the table and the findings as a CSV file for spreadsheets.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// The extensions the audit reads; other files are not opened.
const READ: [&str; 4] = ["json", "csv", "jsonl", "sig"];

/// Runs `writeback audit`. Exit 0 when the archive adds up, 31 on any finding.
pub fn run(args: AuditArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(Some(&args.dir))?;
    let allowed_path = args.trust.require_allowed_signers(config.as_ref(), "audit")?;
    let allowed = AllowedSigners::load(&allowed_path)?;
    if !args.dir.is_dir() {
        return Err(Error::input(&args.dir, "not a folder; give the archive folder to audit"));
    }
    let mut unreadable = Vec::new();
    let mut files = Vec::new();
    walk(&args.dir, &args.dir, &mut files, &mut unreadable);
    let mut report = audit::audit(&files, &allowed, ctx.now);
    report.findings.extend(unreadable);
    report.findings.sort();

    if args.json {
        let value = json!({
            "dir": args.dir.display().to_string(),
            "allowed_signers": allowed_path.display().to_string(),
            "checked_at": timestamp::format(&ctx.now),
            "files": report.files,
            "plans": report.plans,
            "findings": report.findings.iter().map(|f| json!({
                "file": f.file, "line": f.line, "seq": f.seq, "message": f.message, "text": f.to_string(),
            })).collect::<Vec<_>>(),
        });
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        crate::out!("{}", render(&args.dir, &report, crate::terminal::table_width()));
    }
    if let Some(path) = &args.csv {
        crate::atomic_write::write(path, &to_csv(&report))?;
        if !args.json {
            crate::outln!("CSV written to {}", path.display());
        }
    }
    if report.findings.is_empty() {
        Ok(())
    } else {
        Err(Error::AuditFindings(format!("the archive has {} finding(s)", report.findings.len())))
    }
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

fn day(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

fn count(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn render(dir: &Path, report: &AuditReport, width: u16) -> String {
    let f = &report.files;
    let mut out = format!(
        "Archive: {} ({} plans, {} approvals, {} receipts, {} journals, {} signature files)\n",
        dir.display(),
        f.plans,
        f.approvals,
        f.receipts,
        f.journals,
        f.signatures
    );
    if report.plans.is_empty() {
        out.push_str("No plans found.\n");
    } else {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(width)
            .set_header([
                "Plan\ncreated (UTC)",
                "Signer",
                "Approvers",
                "Applied by\nat (UTC)",
                "Applied\nfailed\nskipped",
            ]);
        for row in &report.plans {
            let approvers = if row.approvers.is_empty() { "-".to_string() } else { row.approvers.join("\n") };
            let applied_by = match (&row.applied_by, row.mode.as_deref()) {
                (Some(by), Some("manual-verified")) => format!("{by}\n(manual, verified)"),
                (Some(by), _) => by.clone(),
                (None, _) => "not applied".into(),
            };
            let at = row.applied_at.as_ref().map(day).unwrap_or_else(|| "-".into());
            table.add_row(vec![
                Cell::new(format!("{}\n{}", row.plan_file, day(&row.created_at))),
                Cell::new(&row.signer),
                Cell::new(approvers),
                Cell::new(format!("{applied_by}\n{at}")),
                Cell::new(format!("{}\n{}\n{}", count(row.applied), count(row.failed), count(row.skipped)))
                    .set_alignment(CellAlignment::Right),
            ]);
        }
        out.push_str(&table.to_string());
        out.push('\n');
    }
    if report.findings.is_empty() {
        out.push_str("Findings: none. Every signature is valid and allowed, and the archive adds up.\n");
    } else {
        out.push_str(&format!("Findings: {}\n", report.findings.len()));
        for finding in &report.findings {
            out.push_str(&format!("{finding}\n"));
        }
    }
    out
}

/// The CSV: one `plan` record per plan, then one `finding` record per finding, in one set of columns. Every cell
/// is neutralized against spreadsheet formula injection.
fn to_csv(report: &AuditReport) -> Vec<u8> {
    const HEADER: [&str; 17] = [
        "record",
        "plan_file",
        "plan_id",
        "plan_sha256",
        "signer",
        "signature_valid",
        "created_at",
        "approvers",
        "receipt_file",
        "mode",
        "applied_by",
        "applied_at",
        "applied",
        "failed",
        "skipped",
        "location",
        "finding",
    ];
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|s| s.to_string()).collect()];
    let opt = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for p in &report.plans {
        rows.push(vec![
            "plan".into(),
            p.plan_file.clone(),
            p.plan_id.to_string(),
            p.sha256.clone(),
            p.signer.clone(),
            p.signature_valid.to_string(),
            timestamp::format(&p.created_at),
            p.approvers.join("; "),
            p.receipt_file.clone().unwrap_or_default(),
            p.mode.clone().unwrap_or_default(),
            p.applied_by.clone().unwrap_or_default(),
            p.applied_at.as_ref().map(timestamp::format).unwrap_or_default(),
            opt(p.applied),
            opt(p.failed),
            opt(p.skipped),
            String::new(),
            String::new(),
        ]);
    }
    for f in &report.findings {
        let mut row = vec![String::new(); HEADER.len()];
        if let Some(cell) = row.first_mut() {
            *cell = "finding".into();
        }
        if let Some(cell) = row.get_mut(HEADER.len() - 2) {
            *cell = f.location();
        }
        if let Some(cell) = row.last_mut() {
            *cell = f.message.clone();
        }
        rows.push(row);
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in &rows {
        // Writing to memory does not fail; a failure would only drop the row.
        let _ = writer.write_record(row.iter().map(|c| neutralize(c).into_owned()));
    }
    writer.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::PlanRow;

    #[test]
    fn csv_neutralizes_formulas_and_keeps_one_column_set() {
        let report = AuditReport {
            plans: vec![PlanRow {
                plan_file: "=HYPERLINK(\"x\").json".into(),
                plan_id: uuid::Uuid::from_u128(1),
                sha256: "ab".into(),
                signer: "@evil".into(),
                signature_valid: true,
                created_at: timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
                approvers: vec!["a@x".into(), "b@x".into()],
                receipt_file: None,
                mode: None,
                applied_by: None,
                applied_at: None,
                applied: Some(3),
                failed: None,
                skipped: None,
            }],
            findings: vec![Finding { file: "j.jsonl".into(), line: Some(3), seq: Some(2), message: "-bad".into() }],
            files: Default::default(),
        };
        let text = String::from_utf8(to_csv(&report)).unwrap();
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(&records[0][1], "'=HYPERLINK(\"x\").json");
        assert_eq!(&records[0][4], "'@evil");
        assert_eq!(&records[0][7], "a@x; b@x");
        assert_eq!(&records[1][0], "finding");
        assert_eq!(&records[1][15], "j.jsonl, line 3 (seq 2)");
        assert_eq!(&records[1][16], "'-bad");
    }
}
