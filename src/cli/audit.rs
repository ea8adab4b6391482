//! `writeback audit`: verify an archive folder of plans, approvals, receipts and journals, and print who planned,
//! approved and applied each plan, then one line per finding.

use std::path::PathBuf;

use serde_json::json;

use crate::audit::folder::audit_folder;
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::plan::timestamp;
use crate::report::audit::{render, to_csv};
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

/// Runs `writeback audit`. Exit 0 when the archive adds up, 31 on any finding.
pub fn run(args: AuditArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(Some(&args.dir))?;
    let allowed_path = args.trust.require_allowed_signers(config.as_ref(), "audit")?;
    let allowed = AllowedSigners::load(&allowed_path)?;
    let report = audit_folder(&args.dir, &allowed, ctx.now)?;

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
