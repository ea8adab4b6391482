//! `writeback cancel`: record a signed cancellation of a plan in the ledger, so that `apply` refuses it.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Context;
use crate::error::Result;
use crate::ledger::cancel::{self, Cancelled};
use crate::ledger::Ledger;
use crate::trust::{self, AllowedSigners, SigningKey};

/// Arguments of `writeback cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The plan to cancel.
    pub plan: PathBuf,

    /// Your private key: a planner's, approver's or admin's key listed in allowed_signers.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,

    /// Why, in a few words (recorded in the cancellation).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// The ledger to record the cancellation in [default: ledger in the config, else the user's state folder].
    #[arg(long, value_name = "DIR")]
    pub ledger: Option<PathBuf>,

    /// The plan's signature file [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,
}

/// Runs `writeback cancel`.
pub fn run(args: CancelArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed_path = args.trust.require_allowed_signers(config.as_ref(), "cancel")?;
    // The plan must be a genuine signed plan (expired or not): the cancellation records its SHA-256.
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed_path, ctx.now)?;
    let allowed = AllowedSigners::load(&allowed_path)?;
    let key = SigningKey::load(&args.key)?;
    let ledger = Ledger::open(&crate::ledger::resolve_dir(args.ledger.as_deref(), config.as_ref())?)?;
    match cancel::cancel(&ledger, &verified, &key, &args.key, &allowed, args.reason.clone(), ctx.now)? {
        Cancelled::Written(path, c) => crate::outln!(
            "Cancelled plan {} (SHA-256 {}) as {}; recorded in {}. apply now refuses this plan (exit 28).",
            c.plan_id,
            c.plan_sha256,
            crate::terminal::escape(&c.cancelled_by),
            path.display()
        ),
        Cancelled::Already(path, c) => crate::outln!(
            "Plan {} was already cancelled by {} at {} ({}); nothing to do.",
            c.plan_id,
            crate::terminal::escape(&c.cancelled_by),
            crate::plan::timestamp::format(&c.cancelled_at),
            path.display()
        ),
    }
    Ok(())
}
