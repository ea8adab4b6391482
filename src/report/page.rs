//! `report` as a library operation: check a plan (signature, expiry, approvals) and, when given, its receipt,
//! then write one HTML page that shows the plan, the outcome and every check. The page is written even when a
//! check fails (it says so, for the archive); the failure is handed back so the command exits with its code.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::html::{self, Check, CheckStatus, ReceiptView, ReportInput};
use super::review::SignatureStatus;
use crate::apply::receipt::Receipt;
use crate::approvals::{self, ApprovalReport, PlanSigner};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::trust::{self, AllowedSigners, RECEIPT_NAMESPACE};

/// What to report on, and where the page goes.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// The plan file.
    pub plan: PathBuf,
    /// Its signature [`None`: beside the plan].
    pub signature: Option<PathBuf>,
    /// The apply receipt whose outcome the page shows.
    pub receipt: Option<PathBuf>,
    /// Whose signatures to trust; without it nothing is verified (the page says so).
    pub allowed_signers: Option<PathBuf>,
    /// Where to write the page.
    pub out: PathBuf,
    /// When the report is made.
    pub now: DateTime<Utc>,
}

/// A written page and what its checks found.
#[derive(Debug)]
pub struct Page {
    /// The checks, in the order the page lists them.
    pub checks: Vec<Check>,
    /// The first check that failed, as the error the command exits with.
    pub failure: Option<Error>,
}

/// Checks the plan and the receipt and writes the page.
pub fn write(request: &PageRequest) -> Result<Page> {
    let bytes = std::fs::read(&request.plan).map_err(|e| Error::read(&request.plan, e))?;
    let sha256 = plan::precondition::sha256_hex(&bytes);
    let allowed = request.allowed_signers.as_deref().map(AllowedSigners::load).transpose()?;
    let mut checks = Vec::new();
    let mut failure = None;
    let (status, signer) = signature_check(request, &sha256, &mut checks, &mut failure)?;
    let plan = plan::decode(&bytes).map_err(|e| Error::plan(&request.plan, e))?;
    checks.push(expiry_check(&plan, request.now));
    let approval_paths = crate::archive::approval_files(&request.plan);
    let approval_report = match (&allowed, &signer) {
        (Some(allowed), Some(signer)) => {
            Some(approvals::evaluate(&bytes, signer, &approval_paths, allowed, request.now))
        }
        _ => None,
    };
    checks.push(approvals_check(approval_report.as_ref(), approval_paths.len()));
    let receipt = match &request.receipt {
        Some(path) => {
            let raw = std::fs::read(path).map_err(|e| Error::read(path, e))?;
            let receipt =
                Receipt::decode(&raw).map_err(|e| Error::input(path, format!("not a writeback receipt: {e}")))?;
            check_names_plan(path, &receipt, &plan, &sha256)?;
            checks.push(Check {
                name: "Receipt names this plan".into(),
                status: CheckStatus::Pass,
                detail: format!("plan_sha256 {} matches", receipt.plan_sha256),
            });
            checks.push(receipt_signature_check(path, &raw, allowed.as_ref(), request.now, &mut failure));
            Some(receipt)
        }
        None => None,
    };
    let page = html::render(&ReportInput {
        plan: &plan,
        plan_file: name_of(&request.plan),
        sha256: &sha256,
        signature: &status,
        approval_files: approval_paths.iter().map(|p| name_of(p)).collect(),
        approvals: approval_report.as_ref(),
        receipt: request
            .receipt
            .as_ref()
            .zip(receipt.as_ref())
            .map(|(path, receipt)| ReceiptView { file: name_of(path), receipt }),
        checks: &checks,
        generated_at: request.now,
    });
    crate::atomic_write::write(&request.out, page.as_bytes())?;
    Ok(Page { checks, failure })
}

/// The file's name, for the page (the folders are the reader's own).
fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// An error's message without the file name in front.
fn reason(error: &Error) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((_, reason)) => reason.to_string(),
        None => text,
    }
}

/// The plan's signature and signer. A bad signature or an untrusted signer is a failed check (the page is still
/// written); any other error ends the report.
fn signature_check(
    request: &PageRequest,
    sha256: &str,
    checks: &mut Vec<Check>,
    failure: &mut Option<Error>,
) -> Result<(SignatureStatus, Option<PlanSigner>)> {
    const NAME: &str = "Plan signature and signer";
    let Some(path) = &request.allowed_signers else {
        checks.push(Check {
            name: NAME.into(),
            status: CheckStatus::NotChecked,
            detail: "no allowed_signers file was given".into(),
        });
        return Ok((SignatureStatus::Unchecked, None));
    };
    match trust::verify_plan_files(&request.plan, request.signature.as_deref(), path, request.now) {
        Ok(v) => {
            if sha256 != v.sha256 {
                return Err(Error::input(&request.plan, "the file changed while the report was being made"));
            }
            checks.push(Check {
                name: NAME.into(),
                status: CheckStatus::Pass,
                detail: format!("signed by {} with key {}, allowed in {}", v.principal, v.fingerprint, name_of(path)),
            });
            let signer = PlanSigner::of(&v);
            Ok((SignatureStatus::Valid { principal: v.principal, fingerprint: v.fingerprint }, Some(signer)))
        }
        Err(e @ (Error::BadSignature { .. } | Error::UntrustedSigner { .. })) => {
            checks.push(Check { name: NAME.into(), status: CheckStatus::Fail, detail: reason(&e) });
            let status = SignatureStatus::Invalid { message: reason(&e) };
            *failure = Some(e);
            Ok((status, None))
        }
        Err(e) => Err(e),
    }
}

/// Expiry: a note, not a failure (an archived plan has usually expired).
fn expiry_check(plan: &Plan, now: DateTime<Utc>) -> Check {
    let expires = plan::timestamp::format(&plan.expires_at);
    if plan.is_expired(now) {
        Check {
            name: "Expiry".into(),
            status: CheckStatus::Warn,
            detail: format!("expired at {expires}; apply refuses it now"),
        }
    } else {
        Check { name: "Expiry".into(), status: CheckStatus::Pass, detail: format!("valid until {expires}") }
    }
}

/// The approvals found beside the plan, when the plan's signer is known.
fn approvals_check(report: Option<&ApprovalReport>, files: usize) -> Check {
    let Some(r) = report else {
        return Check {
            name: "Approvals".into(),
            status: CheckStatus::NotChecked,
            detail: format!("{files} approval file(s); not checked without a verified plan signature"),
        };
    };
    let detail = if r.valid.is_empty() && r.rejected.is_empty() {
        "none found beside the plan".into()
    } else {
        let names = if r.valid.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.valid.iter().map(|a| a.principal.as_str()).collect::<Vec<_>>().join(", "))
        };
        format!("{} valid{names}, {} not counted", r.valid.len(), r.rejected.len())
    };
    Check {
        name: "Approvals".into(),
        status: if r.rejected.is_empty() { CheckStatus::Pass } else { CheckStatus::Warn },
        detail,
    }
}

/// A receipt for another plan (by SHA-256 or by id) is refused outright: nothing is written.
fn check_names_plan(path: &Path, receipt: &Receipt, plan: &Plan, sha256: &str) -> Result<()> {
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
    Ok(())
}

/// The receipt's signature, when `<receipt>.sig` exists. A bad one is a failed check.
fn receipt_signature_check(
    path: &Path,
    raw: &[u8],
    allowed: Option<&AllowedSigners>,
    now: DateTime<Utc>,
    failure: &mut Option<Error>,
) -> Check {
    const NAME: &str = "Receipt signature";
    let sig_path = crate::archive::signature_path(path);
    match (std::fs::read(&sig_path), allowed) {
        (Err(_), _) => Check {
            name: NAME.into(),
            status: CheckStatus::Warn,
            detail: format!("no {} beside the receipt", name_of(&sig_path)),
        },
        (Ok(_), None) => Check {
            name: NAME.into(),
            status: CheckStatus::NotChecked,
            detail: "no allowed_signers file was given".into(),
        },
        (Ok(sig), Some(allowed)) => match trust::verify_detached(raw, &sig, RECEIPT_NAMESPACE, allowed, None, now) {
            Ok(v) => Check {
                name: NAME.into(),
                status: CheckStatus::Pass,
                detail: format!("signed by {} with key {}", v.principal, v.fingerprint),
            },
            Err(e) => {
                let detail = e.to_string();
                *failure = failure.take().or(Some(e.into_error(path)));
                Check { name: NAME.into(), status: CheckStatus::Fail, detail }
            }
        },
    }
}
