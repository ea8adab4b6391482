//! `writeback check`: did the groups end up where the plan said? Reads each group's members from Graph (read-only
//! rights), shows whether each change is in effect and what changed that the plan did not ask for, and, when every
//! change is in effect, writes a receipt marked `manual-verified` (signed with `--key`).

use std::path::PathBuf;

use crate::audit::check::{self, CheckRequest, ReceiptWrite};
use crate::cli::Context;
use crate::error::Result;
use crate::report::check::{as_json, render};

/// Arguments of `writeback check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plan file (JSON or CSV). An expired plan is fine: checking comes after applying.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The plan's signature file (default: PLAN.sig).
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Sign the receipt with this key (SSHSIG, namespace writeback-receipt) into RECEIPT.sig.
    #[arg(long, value_name = "KEY")]
    pub key: Option<PathBuf>,

    /// Where to write the receipt when every change is in effect [default: PLAN.receipt.json]. An existing file
    /// is never replaced.
    #[arg(long, value_name = "FILE")]
    pub receipt_out: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,

    /// Where Microsoft Graph is.
    #[command(flatten)]
    pub graph: crate::cli::options::GraphOptions,
}

/// Runs `writeback check`. Exit 0 when every change is in effect, 30 otherwise.
pub fn run(args: CheckArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed_signers = args.trust.require_allowed_signers(config.as_ref(), "check")?;
    let sign_in = args.graph.resolve(config.as_ref());
    let request = CheckRequest {
        plan: args.plan.clone(),
        signature: args.signature.clone(),
        allowed_signers,
        key: args.key.clone(),
        receipt_out: args.receipt_out.clone(),
        sign_in,
        now: ctx.now,
    };
    let checked = check::check(&request)?;
    if args.json {
        let value = as_json(&args.plan, &checked, ctx.now);
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        crate::out!("{}", render(&args.plan, &checked, ctx.now, crate::terminal::table_width()));
    }
    if let ReceiptWrite::Exists(path) = &checked.receipt {
        crate::eoutln!(
            "note: no receipt written: {} exists already (give --receipt-out FILE to write one elsewhere)",
            path.display()
        );
    }
    checked.in_effect()
}
