//! `writeback export`: after the same signature, signer, expiry and approval checks as `apply`, write the plan as
//! Entra admin center bulk CSVs or as a Microsoft Graph PowerShell script.

use std::path::PathBuf;

use clap::Args;

use crate::approvals;
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::export::{self, bulk, powershell, ExportFormat};
use crate::plan::Action;
use crate::trust;

/// Arguments of `writeback export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The signed plan file.
    pub plan: PathBuf,

    /// What to write: the Entra bulk add or bulk remove CSV template, or a PowerShell script.
    #[arg(long, value_enum, value_name = "KIND")]
    pub to: ExportFormat,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The plan's signature file [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Start each CSV with the older `version:v1.0` line.
    #[arg(long)]
    pub version_row: bool,

    /// Where to write the files [default: the plan's folder].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,

    /// How many approvals (from allowed signers other than the plan's signer) the plan needs [default: the
    /// config's require_approvals, else 0].
    #[arg(long, value_name = "N")]
    pub require_approvals: Option<u32>,
}

/// Runs `writeback export`.
pub fn run(args: ExportArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed_path = args.trust.require_allowed_signers(config.as_ref(), "export")?;
    let max_lifetime = crate::config::max_plan_lifetime(config.as_ref())?;
    let defaults = config.map(|c| c.defaults).unwrap_or_default();
    let required = args.require_approvals.or(defaults.require_approvals).unwrap_or(0);

    // The same checks as apply, in the same order: signature, signer (trusted now), version, times, expiry,
    // approvals.
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed_path, ctx.now)?;
    verified.check_times(&args.plan, ctx.now, max_lifetime)?;
    verified.ensure_unexpired(&args.plan, ctx.now)?;
    let report = approvals::require_for(&args.plan, &verified, &allowed_path, required, ctx.now)?;

    let plan = &verified.plan;
    let stem = export::plan_stem(&args.plan);
    let out = match args.to {
        ExportFormat::EntraBulkAdd => bulk::export(plan, &stem, Action::Add, args.version_row),
        ExportFormat::EntraBulkRemove => bulk::export(plan, &stem, Action::Remove, args.version_row),
        ExportFormat::Powershell => {
            let header = powershell::ScriptHeader {
                sha256: &verified.sha256,
                signer: &verified.principal,
                fingerprint: &verified.fingerprint,
                approvers: report.valid.iter().map(|a| format!("{} ({})", a.principal, a.fingerprint)).collect(),
                generated_at: ctx.now,
            };
            export::Export { files: vec![powershell::export(plan, &stem, &header)], notes: vec![] }
        }
    };

    let dir = match &args.out_dir {
        Some(dir) => dir.clone(),
        None => args.plan.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
    };
    if !out.files.is_empty() {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            path: dir.clone(),
            action: "create the folder",
            source: e,
        })?;
    }
    let paths: Vec<PathBuf> = out.files.iter().map(|f| dir.join(&f.name)).collect();
    let writes: Vec<(&std::path::Path, &[u8])> =
        paths.iter().zip(&out.files).map(|(p, f)| (p.as_path(), f.bytes.as_slice())).collect();
    crate::atomic_write::write_together(&writes)?;

    crate::outln!(
        "Plan {} (SHA-256 {}) signed by {}, valid until {}; {} valid approval{} ({} required).",
        plan.plan_id,
        verified.sha256,
        crate::terminal::Escaped(&verified.principal),
        crate::plan::timestamp::format(&plan.expires_at),
        report.valid.len(),
        if report.valid.len() == 1 { "" } else { "s" },
        required
    );
    for (path, file) in paths.iter().zip(&out.files) {
        match &file.group {
            Some(group) => crate::outln!(
                "Wrote {} ({} members, {})",
                path.display(),
                file.changes,
                crate::terminal::Escaped(group)
            ),
            None => crate::outln!("Wrote {} ({} changes)", path.display(), file.changes),
        }
    }
    for note in &out.notes {
        crate::outln!("{}", crate::terminal::Escaped(note));
    }
    if out.files.is_empty() {
        crate::outln!("Nothing written: the plan has no changes of this kind.");
    }
    Ok(())
}
