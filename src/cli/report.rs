//! `writeback report`: one self-contained HTML page about a plan (and, with `--receipt`, its outcome) for the
//! archive.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Context;
use crate::error::Result;
use crate::report::html::CheckStatus;
use crate::report::page::{self, PageRequest};

/// Arguments of `writeback report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The plan file.
    pub plan: PathBuf,

    /// The apply receipt whose outcome the report shows [default: PLAN.receipt.json, when it exists]; its
    /// signature, when `<receipt>.sig` exists, is checked too.
    #[arg(long, value_name = "R")]
    pub receipt: Option<PathBuf>,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The plan's signature file [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Where to write the HTML page.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Runs `writeback report`. The page is written even when a check fails (it says so, for the archive); the
/// command then exits with that check's code.
pub fn run(args: ReportArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    // The receipt beside the plan, where apply and check write it, unless another is named.
    let receipt = args.receipt.or_else(|| Some(crate::archive::receipt_path(&args.plan)).filter(|r| r.exists()));
    let request = PageRequest {
        allowed_signers: args.trust.allowed_signers(config.as_ref()),
        plan: args.plan,
        signature: args.signature,
        receipt,
        out: args.out,
        now: ctx.now,
    };
    let page = page::write(&request)?;
    crate::outln!("Wrote {}", request.out.display());
    for check in &page.checks {
        let label = match check.status {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Warn => "note",
            CheckStatus::NotChecked => "not checked",
        };
        crate::outln!("  {:<28} {label}: {}", check.name, crate::terminal::Escaped(&check.detail));
    }
    match page.failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
