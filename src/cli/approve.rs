//! `writeback approve`: add an approval (a detached `writeback-approval` signature over the plan's bytes) beside a
//! plan, after checking the plan itself.

use std::path::PathBuf;

use clap::Args;

use crate::approvals::{self, PlanSigner};
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::trust::{self, AllowedSigners, SigningKey, APPROVAL_NAMESPACE};

/// Arguments of `writeback approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The plan file to approve.
    pub plan: PathBuf,

    /// The approver's private key (OpenSSH ed25519); an encrypted key's passphrase comes from
    /// WRITEBACK_KEY_PASSPHRASE or the terminal.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The plan's signature file [default: PLAN.sig].
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Replace an existing approval file of the same name that does not hold this key's approval of this plan.
    #[arg(long)]
    pub force: bool,
}

/// Runs `writeback approve`.
pub fn run(args: ApproveArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed_path = args.trust.require_allowed_signers(config.as_ref(), "approve")?;
    // The plan first: never approve a plan that is forged, untrusted or expired.
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed_path, ctx.now)?;
    verified.check_times(&args.plan, ctx.now, crate::config::max_plan_lifetime(config.as_ref())?)?;
    verified.ensure_unexpired(&args.plan, ctx.now)?;
    let bytes = std::fs::read(&args.plan).map_err(|e| Error::read(&args.plan, e))?;
    if crate::plan::precondition::sha256_hex(&bytes) != verified.sha256 {
        return Err(Error::input(&args.plan, "the file changed while it was being checked; run approve again"));
    }
    let allowed = AllowedSigners::load(&allowed_path)?;

    let key = SigningKey::load(&args.key)?;
    let fingerprint = key.fingerprint();
    if fingerprint == verified.fingerprint {
        return Err(Error::Approvals(format!(
            "{}: this key ({fingerprint}) signed the plan; an approval must come from someone else",
            args.plan.display()
        )));
    }
    let principal =
        allowed.authorize(key.public_key(), APPROVAL_NAMESPACE, None, ctx.now).map_err(|e| Error::UntrustedSigner {
            path: args.key.clone(),
            message: format!("{e}; ask whoever keeps {} to list it for writeback-approval", allowed_path.display()),
        })?;
    let mut names = vec![principal.clone()];
    names.extend(allowed.principals_of(key.public_key()));
    if let Some((theirs, planners)) = approvals::same_person(&PlanSigner::of(&verified), &names) {
        return Err(Error::Approvals(format!(
            "{}: your key is listed in allowed_signers as '{theirs}', a name of the plan's signer ('{planners}' is \
             listed for the key that signed the plan); an approval must come from someone else, with their own key \
             under their own name",
            args.plan.display()
        )));
    }

    let path = crate::archive::approval_path(&args.plan, &approvals::file_label(Some(&principal), &fingerprint));
    let already = if path.exists() {
        let existing = std::fs::read(&path).map_err(|e| Error::read(&path, e))?;
        match trust::verify_detached(&bytes, &existing, APPROVAL_NAMESPACE, &allowed, None, ctx.now) {
            Ok(v) if v.fingerprint == fingerprint => true,
            _ if args.force => false,
            Ok(v) => {
                return Err(Error::input(
                    &path,
                    format!(
                        "already holds an approval of this plan by {} with another key ({}); remove the file, or pass --force to replace it",
                        v.principal, v.fingerprint
                    ),
                ))
            }
            Err(e) => {
                return Err(Error::input(
                    &path,
                    format!("already exists and is not this key's approval of this plan ({e}); remove the file, or pass --force to replace it"),
                ))
            }
        }
    } else {
        false
    };
    if already {
        crate::outln!("{} already holds your approval of this plan; nothing to do.", path.display());
    } else {
        let signature = key
            .sign(APPROVAL_NAMESPACE, &bytes)
            .map_err(|e| Error::Internal(format!("signing with {} failed: {e}", args.key.display())))?;
        crate::atomic_write::write(&path, signature.as_bytes())?;
        crate::outln!("Wrote {}", path.display());
    }
    crate::outln!(
        "Approved plan {} (SHA-256 {}) as {principal}, key {fingerprint}.",
        verified.plan.plan_id,
        verified.sha256
    );

    let signer = PlanSigner::of(&verified);
    let files = crate::archive::approval_files(&args.plan);
    let report = approvals::evaluate(&bytes, &signer, &files, &allowed, ctx.now);
    crate::out!("{}", approvals::render_section(&files, Some(&report)));
    Ok(())
}
