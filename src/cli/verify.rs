//! `writeback verify`: check a plan's signature, signer, format version and expiry, and say who signed what
//! and when.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::approvals;
use crate::cli::Context;
use crate::error::{Error, Result};
use crate::plan::timestamp;
use crate::terminal::Escaped;
use crate::trust::{self, VerifiedPlan};

/// Arguments of `writeback verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The plan file (JSON or CSV).
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,

    /// Whose signatures to trust.
    #[command(flatten)]
    pub trust: crate::cli::options::TrustOptions,

    /// The signature file (default: PLAN.sig).
    #[arg(long, value_name = "SIG")]
    pub signature: Option<PathBuf>,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,

    /// Check as of this time instead of now (RFC 3339, e.g. 2026-01-15T10:00:00Z): were the keys trusted, and
    /// was the plan valid, then?
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<DateTime<Utc>>,
}

fn parse_at(raw: &str) -> std::result::Result<DateTime<Utc>, String> {
    timestamp::parse(raw).map_err(|e| format!("{e} (write it like 2026-01-15T10:00:00Z)"))
}

/// Runs `writeback verify`. Exit 0 only for a valid, unexpired plan; an expired plan is described, then
/// exits 12. With `--json`, a plan that fails a check prints a JSON result as well: the check, its exit code and
/// the message.
pub fn run(args: VerifyArgs, ctx: &Context) -> Result<()> {
    let checked = match check(&args, ctx) {
        Ok(checked) => checked,
        Err(e) => {
            if args.json {
                crate::outln!("{}", serde_json::to_string_pretty(&failure_json(&args, &e)).unwrap_or_default());
            }
            return Err(e);
        }
    };
    let Checked { allowed, verified, approval_files, report, at } = checked;
    let sig_path = args.signature.clone().unwrap_or_else(|| crate::archive::signature_path(&args.plan));
    if args.json {
        let mut value = as_json(&args, &allowed, &sig_path, &verified, at);
        if let Some(map) = value.as_object_mut() {
            map.insert("approvals".into(), serde_json::to_value(&report).unwrap_or_default());
        }
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        print_text(&args, &allowed, &sig_path, &verified, at);
        crate::out!("{}", approvals::render_section(&approval_files, Some(&report)));
    }
    verified.ensure_unexpired(&args.plan, at)
}

/// What the checks found, for printing.
struct Checked {
    allowed: std::path::PathBuf,
    verified: VerifiedPlan,
    approval_files: Vec<std::path::PathBuf>,
    report: approvals::ApprovalReport,
    at: DateTime<Utc>,
}

/// The checks in the order docs/exit-codes.md gives, up to the plan's times; expiry is checked after printing.
fn check(args: &VerifyArgs, ctx: &Context) -> Result<Checked> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed = args.trust.require_allowed_signers(config.as_ref(), "verify")?;
    let max_lifetime = crate::config::max_plan_lifetime(config.as_ref())?;
    // Keys are trusted, and the plan valid, at the time of the check: now, or the time asked about.
    let at = args.at.unwrap_or(ctx.now);
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed, at)?;
    verified.check_times(&args.plan, at, max_lifetime)?;
    // Approvals are listed, not required: `apply` and `export` enforce `--require-approvals`.
    let approval_files = crate::archive::approval_files(&args.plan);
    let signer = approvals::PlanSigner::of(&verified);
    let bytes = std::fs::read(&args.plan).map_err(|e| crate::Error::read(&args.plan, e))?;
    let report = approvals::evaluate(&bytes, &signer, &approval_files, &trust::AllowedSigners::load(&allowed)?, at);
    Ok(Checked { allowed, verified, approval_files, report, at })
}

/// The JSON result of a plan that failed a check: which check, its exit code and the message.
fn failure_json(args: &VerifyArgs, e: &Error) -> serde_json::Value {
    let check = match e {
        Error::BadSignature { .. } => "signature",
        Error::UnsupportedVersion { .. } | Error::MalformedPlan { .. } | Error::PlanMismatch(_) => "plan",
        Error::UntrustedSigner { .. } => "signer",
        Error::PlanTimes { .. } => "times",
        Error::Expired { .. } => "expiry",
        Error::Usage(_) => "arguments",
        _ => "files",
    };
    json!({
        "valid": false,
        "plan_file": args.plan.display().to_string(),
        "check": check,
        "exit_code": e.exit_code(),
        "message": e.to_string(),
    })
}

fn as_json(
    args: &VerifyArgs,
    allowed: &std::path::Path,
    sig_path: &std::path::Path,
    v: &VerifiedPlan,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let (adds, removes) = v.plan.totals();
    json!({
        "valid": !v.expired,
        "signature_valid": true,
        "expired": v.expired,
        "plan_file": args.plan.display().to_string(),
        "signature_file": sig_path.display().to_string(),
        "allowed_signers": allowed.display().to_string(),
        "principal": v.principal,
        "fingerprint": v.fingerprint,
        "plan_id": v.plan.plan_id,
        "sha256": v.sha256,
        "format_version": v.plan.format_version,
        "tool_version": v.plan.tool_version,
        "tenant_id": v.plan.tenant_id,
        "entra_actor": v.plan.entra_actor,
        "created_at": timestamp::format(&v.plan.created_at),
        "expires_at": timestamp::format(&v.plan.expires_at),
        "checked_at": timestamp::format(&now),
        "adds": adds,
        "removes": removes,
        "groups": v.plan.groups.iter().map(|g| json!({
            "group_id": g.group_id,
            "display_name": g.display_name,
            "adds": g.counts.add,
            "removes": g.counts.remove,
        })).collect::<Vec<_>>(),
    })
}

fn print_text(
    args: &VerifyArgs,
    allowed: &std::path::Path,
    sig_path: &std::path::Path,
    v: &VerifiedPlan,
    now: DateTime<Utc>,
) {
    let (adds, removes) = v.plan.totals();
    crate::outln!("Plan:        {}", args.plan.display());
    crate::outln!("Signature:   good ({}, namespace {})", sig_path.display(), trust::PLAN_NAMESPACE);
    crate::outln!("Signed by:   {} (key {})", Escaped(&v.principal), v.fingerprint);
    crate::outln!("Entra actor: {}", crate::report::review::entra_actor_line(&v.plan));
    crate::outln!("Trusted by:  {}", allowed.display());
    crate::outln!("Plan id:     {}", v.plan.plan_id);
    crate::outln!("SHA-256:     {}", v.sha256);
    crate::outln!("Format:      {} ({})", v.plan.format_version, Escaped(&v.plan.tool_version));
    if let Some(tenant) = &v.plan.tenant_id {
        crate::outln!("Tenant:      {}", Escaped(tenant));
    }
    crate::outln!("Created:     {}", timestamp::format(&v.plan.created_at));
    if args.at.is_some() {
        crate::outln!(
            "Checked as of {} (--at): the keys' validity and the expiry below are judged then",
            timestamp::format(&now)
        );
    }
    let status = if v.expired {
        format!("EXPIRED {} ago", crate::plan::human_duration(now - v.plan.expires_at))
    } else {
        format!("valid for {} more", crate::plan::human_duration(v.plan.expires_at - now))
    };
    crate::outln!("Expires:     {} ({status})", timestamp::format(&v.plan.expires_at));
    crate::outln!("Groups:      {}", v.plan.groups.len());
    for g in &v.plan.groups {
        crate::outln!("  {}: {} to add, {} to remove", Escaped(&g.label()), g.counts.add, g.counts.remove);
    }
    crate::outln!("Changes:     {adds} to add, {removes} to remove");
    if v.expired {
        crate::outln!("Result:      the signature is good but the plan has EXPIRED; it cannot be applied");
    } else {
        crate::outln!("Result:      OK, the plan is signed by a trusted signer and has not expired");
    }
}
