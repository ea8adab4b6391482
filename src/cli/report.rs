//! `writeback report`: one self-contained HTML page about a plan (and, with `--receipt`, its outcome) for the
//! archive.

use std::path::{Path, PathBuf};

use crate::apply::receipt::Receipt;
use clap::Args;

use crate::approvals::{self, PlanSigner};
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::plan;
use crate::report::html::{self, Check, CheckStatus, ReceiptView, ReportInput};
use crate::report::review::SignatureStatus;
use crate::trust::{self, AllowedSigners, RECEIPT_NAMESPACE};

/// Arguments of `writeback report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The plan file.
    pub plan: PathBuf,

    /// The apply receipt (`<plan>.receipt.json`) whose outcome the report shows; its signature, when
    /// `<receipt>.sig` exists, is checked too.
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

fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn reason(error: &Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, reason)) => reason.to_string(),
        None => text,
    }
}

/// Runs `writeback report`. The page is written even when a check fails (it says so, for the archive); the
/// command then exits with that check's code.
pub fn run(args: ReportArgs, ctx: &Context) -> Result<()> {
    let allowed_path = args.trust.allowed_signers(args.trust.load_config(args.plan.parent())?.as_ref());
    let bytes = std::fs::read(&args.plan).map_err(|e| Error::read(&args.plan, e))?;
    let sha256 = plan::precondition::sha256_hex(&bytes);
    let allowed = allowed_path.as_deref().map(AllowedSigners::load).transpose()?;
    let mut checks = Vec::new();
    let mut failure = None;
    let mut signer = None;
    let status = match &allowed_path {
        Some(path) => match trust::verify_plan_files(&args.plan, args.signature.as_deref(), path, ctx.now) {
            Ok(v) => {
                if plan::precondition::sha256_hex(&bytes) != v.sha256 {
                    return Err(Error::input(&args.plan, "the file changed while the report was being made"));
                }
                checks.push(Check {
                    name: "Plan signature and signer".into(),
                    status: CheckStatus::Pass,
                    detail: format!(
                        "signed by {} with key {}, allowed in {}",
                        v.principal,
                        v.fingerprint,
                        name_of(path)
                    ),
                });
                signer = Some(PlanSigner { principal: v.principal.clone(), fingerprint: v.fingerprint.clone() });
                SignatureStatus::Valid { principal: v.principal, fingerprint: v.fingerprint }
            }
            Err(e @ (Error::BadSignature { .. } | Error::UntrustedSigner { .. })) => {
                checks.push(Check {
                    name: "Plan signature and signer".into(),
                    status: CheckStatus::Fail,
                    detail: reason(&e),
                });
                let status = SignatureStatus::Invalid { message: reason(&e) };
                failure = Some(e);
                status
            }
            Err(e) => return Err(e),
        },
        None => {
            checks.push(Check {
                name: "Plan signature and signer".into(),
                status: CheckStatus::NotChecked,
                detail: "no allowed_signers file was given".into(),
            });
            SignatureStatus::Unchecked
        }
    };
    let plan = plan::decode(&bytes).map_err(|e| Error::plan(&args.plan, e))?;
    checks.push(if plan.is_expired(ctx.now) {
        Check {
            name: "Expiry".into(),
            status: CheckStatus::Warn,
            detail: format!("expired at {}; apply refuses it now", plan::timestamp::format(&plan.expires_at)),
        }
    } else {
        Check {
            name: "Expiry".into(),
            status: CheckStatus::Pass,
            detail: format!("valid until {}", plan::timestamp::format(&plan.expires_at)),
        }
    });

    let approval_paths = crate::archive::approval_files(&args.plan);
    let approval_report = match (&allowed, &signer) {
        (Some(allowed), Some(signer)) => Some(approvals::evaluate(&bytes, signer, &approval_paths, allowed, ctx.now)),
        _ => None,
    };
    checks.push(match &approval_report {
        Some(r) => Check {
            name: "Approvals".into(),
            status: if r.rejected.is_empty() { CheckStatus::Pass } else { CheckStatus::Warn },
            detail: if r.valid.is_empty() && r.rejected.is_empty() {
                "none found beside the plan".into()
            } else {
                format!(
                    "{} valid{}, {} not counted",
                    r.valid.len(),
                    if r.valid.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.valid.iter().map(|a| a.principal.as_str()).collect::<Vec<_>>().join(", "))
                    },
                    r.rejected.len()
                )
            },
        },
        None => Check {
            name: "Approvals".into(),
            status: CheckStatus::NotChecked,
            detail: format!("{} approval file(s); not checked without a verified plan signature", approval_paths.len()),
        },
    });

    let receipt_value = match &args.receipt {
        Some(path) => {
            let raw = std::fs::read(path).map_err(|e| Error::read(path, e))?;
            let receipt =
                Receipt::decode(&raw).map_err(|e| Error::input(path, format!("not a writeback receipt: {e}")))?;
            receipt_checks(path, &raw, &receipt, &plan, &sha256, allowed.as_ref(), ctx, &mut checks, &mut failure)?;
            Some(receipt)
        }
        None => None,
    };

    let page = html::render(&ReportInput {
        plan: &plan,
        plan_file: name_of(&args.plan),
        sha256: &sha256,
        signature: &status,
        approval_files: approval_paths.iter().map(|p| name_of(p)).collect(),
        approvals: approval_report.as_ref(),
        receipt: args
            .receipt
            .as_ref()
            .zip(receipt_value.as_ref())
            .map(|(path, receipt)| ReceiptView { file: name_of(path), receipt }),
        checks: &checks,
        generated_at: ctx.now,
    });
    crate::atomic_write::write(&args.out, page.as_bytes())?;
    crate::outln!("Wrote {}", args.out.display());
    for check in &checks {
        let label = match check.status {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Warn => "note",
            CheckStatus::NotChecked => "not checked",
        };
        crate::outln!("  {:<28} {label}: {}", check.name, check.detail);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The receipt's checks: it names this plan (by SHA-256, and by id), and its signature when `<receipt>.sig`
/// exists. A receipt for another plan is refused outright (nothing is written).
#[allow(clippy::too_many_arguments)]
fn receipt_checks(
    path: &Path,
    raw: &[u8],
    receipt: &Receipt,
    plan: &plan::Plan,
    sha256: &str,
    allowed: Option<&AllowedSigners>,
    ctx: &Context,
    checks: &mut Vec<Check>,
    failure: &mut Option<Error>,
) -> Result<()> {
    let recorded = &receipt.plan_sha256;
    if !recorded.eq_ignore_ascii_case(sha256) {
        return Err(Error::input(
            path,
            format!("this receipt is for another plan: it records plan_sha256 {recorded}, but the plan's SHA-256 is {sha256}"),
        ));
    }
    if receipt.plan_id != plan.plan_id {
        return Err(Error::input(
            path,
            format!("the receipt's plan_id {} is not the plan's id {}", receipt.plan_id, plan.plan_id),
        ));
    }
    checks.push(Check {
        name: "Receipt names this plan".into(),
        status: CheckStatus::Pass,
        detail: format!("plan_sha256 {recorded} matches"),
    });
    let sig_path = crate::archive::signature_path(path);
    let check = match (std::fs::read(&sig_path), allowed) {
        (Err(_), _) => Check {
            name: "Receipt signature".into(),
            status: CheckStatus::Warn,
            detail: format!("no {} beside the receipt", name_of(&sig_path)),
        },
        (Ok(_), None) => Check {
            name: "Receipt signature".into(),
            status: CheckStatus::NotChecked,
            detail: "no allowed_signers file was given".into(),
        },
        (Ok(sig), Some(allowed)) => {
            match trust::verify_detached(raw, &sig, RECEIPT_NAMESPACE, allowed, None, ctx.now) {
                Ok(v) => Check {
                    name: "Receipt signature".into(),
                    status: CheckStatus::Pass,
                    detail: format!("signed by {} with key {}", v.principal, v.fingerprint),
                },
                Err(e) => {
                    let detail = e.to_string();
                    *failure = failure.take().or(Some(e.into_error(path)));
                    Check { name: "Receipt signature".into(), status: CheckStatus::Fail, detail }
                }
            }
        }
    };
    checks.push(check);
    Ok(())
}
