//! `writeback show`: the approver's review of a plan.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Context;
use crate::error::{Error, Result};
use crate::plan;
use crate::report::review::{render_review, ReviewJson, SignatureStatus};

/// Arguments of `writeback show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The plan file (JSON or CSV).
    pub plan: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The signature file [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Print a stable JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs `writeback show`. Expired plans are shown (with the expiry called out) and exit 0; a signature that was
/// checked and failed is shown as such, then the command exits with the verification's code.
pub fn run(args: ShowArgs, ctx: &Context) -> Result<()> {
    let allowed = args.trust.allowed_signers(args.trust.load_config(args.plan.parent())?.as_ref());
    let bytes = std::fs::read(&args.plan).map_err(|e| Error::read(&args.plan, e))?;
    let sha256 = plan::precondition::sha256_hex(&bytes);
    let mut signer = None;
    let (status, failure) = match &allowed {
        Some(allowed) => {
            match crate::trust::verify_plan_files(&args.plan, args.signature.as_deref(), allowed, ctx.now) {
                Ok(verified) => {
                    signer = Some(crate::approvals::PlanSigner::of(&verified));
                    (SignatureStatus::Valid { principal: verified.principal, fingerprint: verified.fingerprint }, None)
                }
                Err(e @ (Error::BadSignature { .. } | Error::UntrustedSigner { .. })) => {
                    (SignatureStatus::Invalid { message: short_reason(&e) }, Some(e))
                }
                Err(e) => return Err(e),
            }
        }
        None => (SignatureStatus::Unchecked, None),
    };
    let plan = plan::decode(&bytes).map_err(|e| Error::plan(&args.plan, e))?;
    let approval_files = crate::archive::approval_files(&args.plan);
    let approvals = match (&allowed, &signer) {
        (Some(path), Some(signer)) => {
            let allowed = crate::trust::AllowedSigners::load(path)?;
            Some(crate::approvals::evaluate(&bytes, signer, &approval_files, &allowed, ctx.now))
        }
        _ => None,
    };
    if args.json {
        let doc = ReviewJson::new(&plan, &sha256, &status, ctx.now);
        let mut value = serde_json::to_value(&doc).map_err(|e| Error::Internal(e.to_string()))?;
        if let (Some(map), Some(report)) = (value.as_object_mut(), &approvals) {
            map.insert("approvals".into(), serde_json::to_value(report).map_err(|e| Error::Internal(e.to_string()))?);
        }
        crate::outln!("{}", serde_json::to_string_pretty(&value).map_err(|e| Error::Internal(e.to_string()))?);
    } else {
        crate::out!("{}", render_review(&plan, &sha256, &status, ctx.now, crate::terminal::table_width()));
        crate::out!("\n{}", crate::approvals::render_section(&approval_files, approvals.as_ref()));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn short_reason(error: &Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, reason)) => reason.to_string(),
        None => text,
    }
}
