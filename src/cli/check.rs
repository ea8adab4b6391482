//! `writeback check`: did the groups end up where the plan said? Reads each group's members from Graph (read-only
//! rights), shows whether each change is in effect and what changed that the plan did not ask for, and, when every
//! change is in effect, writes a receipt marked `manual-verified` (signed with `--key`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use comfy_table::{presets, ContentArrangement, Table};
use serde_json::json;

use crate::apply::receipt::{Receipt, RECEIPT_NAMESPACE};
use crate::apply::Applier;
use crate::audit::effect::{self, CheckReport, GroupCheck, ManualReceiptInput};
use crate::cli::Context;
use crate::directory::graph::GraphClient;
use crate::error::{Error, Result};
use crate::identity::ObjectId;
use crate::plan::{timestamp, Action};
use crate::trust::{self, SigningKey, VerifiedPlan};

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

/// What became of the receipt.
enum ReceiptWrite {
    Written { path: PathBuf, signature: Option<PathBuf> },
    Exists(PathBuf),
    NotInEffect,
}

/// Runs `writeback check`. Exit 0 when every change is in effect, 30 otherwise.
pub fn run(args: CheckArgs, ctx: &Context) -> Result<()> {
    let config = args.trust.load_config(args.plan.parent())?;
    let allowed = args.trust.require_allowed_signers(config.as_ref(), "check")?;
    let (graph_url, login_url) = args.graph.resolve(config.as_ref());
    let verified = trust::verify_plan_files(&args.plan, args.signature.as_deref(), &allowed, ctx.now)?;
    // Load the key before any request, so that a bad key fails fast.
    let key = match &args.key {
        Some(path) => Some(SigningKey::load(path)?),
        None => None,
    };
    let client = GraphClient::from_env(graph_url.as_deref(), login_url.as_deref())?;
    let runtime = crate::http::runtime()?;
    let (tenant, members) = runtime.block_on(read_groups(&client, &verified))?;
    let report = CheckReport::build(&verified.plan, &members);

    let receipt = if report.all_in_effect() {
        let path = args.receipt_out.clone().unwrap_or_else(|| crate::archive::receipt_path(&args.plan));
        if path.exists() {
            ReceiptWrite::Exists(path)
        } else {
            let receipt = effect::manual_receipt(
                ManualReceiptInput {
                    plan: &verified.plan,
                    plan_sha256: &verified.sha256,
                    plan_file: args.plan.display().to_string(),
                    tenant_id: Some(tenant),
                    applier: applier(key.as_ref()),
                    checked_at: ctx.now,
                },
                &report,
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
            let signature = write_receipt(&path, &receipt, key.as_ref())?;
            ReceiptWrite::Written { path, signature }
        }
    } else {
        ReceiptWrite::NotInEffect
    };

    if args.json {
        let value = as_json(&args, &verified, &report, &receipt, ctx);
        crate::outln!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        crate::out!("{}", render(&args, &verified, &report, &receipt, ctx, crate::terminal::table_width()));
    }
    if let ReceiptWrite::Exists(path) = &receipt {
        crate::eoutln!(
            "note: no receipt written: {} exists already (give --receipt-out FILE to write one elsewhere)",
            path.display()
        );
    }
    if report.all_in_effect() {
        Ok(())
    } else {
        Err(Error::NotInEffect(format!(
            "{} of the plan's {} changes are not in effect; no receipt was written",
            report.not_in_effect(),
            report.changes()
        )))
    }
}

async fn read_groups(
    client: &GraphClient,
    verified: &VerifiedPlan,
) -> Result<(String, BTreeMap<ObjectId, Vec<crate::directory::GroupMember>>)> {
    let tenant = client.tenant_id().await?;
    if let Some(planned) = &verified.plan.tenant_id {
        if !planned.eq_ignore_ascii_case(&tenant) {
            return Err(Error::TenantMismatch(format!(
                "the plan was made for tenant {planned}, but the credentials sign in to tenant {tenant}; check \
                 AZURE_TENANT_ID"
            )));
        }
    }
    let mut members = BTreeMap::new();
    for group in &verified.plan.groups {
        let list = client.list_members(&group.group_id).await?;
        members.insert(group.group_id.clone(), list);
    }
    Ok((tenant, members))
}

fn applier(key: Option<&SigningKey>) -> Applier {
    let os_user = ["USER", "USERNAME", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    Applier {
        os_user,
        key_principal: key.map(|k| k.comment().to_string()).filter(|c| !c.is_empty()),
        key_fingerprint: key.map(SigningKey::fingerprint),
        tool_version: crate::tool_version(),
    }
}

/// Writes the receipt, and its signature beside it when there is a key (both or neither).
fn write_receipt(path: &Path, receipt: &Receipt, key: Option<&SigningKey>) -> Result<Option<PathBuf>> {
    let bytes = receipt.encode();
    match key {
        Some(key) => {
            let sig = key
                .sign(RECEIPT_NAMESPACE, &bytes)
                .map_err(|e| Error::Internal(format!("cannot sign the receipt: {e}")))?;
            let sig_path = crate::archive::signature_path(path);
            crate::atomic_write::write_together(&[(path, &bytes), (&sig_path, sig.as_bytes())])?;
            Ok(Some(sig_path))
        }
        None => {
            crate::atomic_write::write(path, &bytes)?;
            Ok(None)
        }
    }
}

fn as_json(
    args: &CheckArgs,
    v: &VerifiedPlan,
    report: &CheckReport,
    receipt: &ReceiptWrite,
    ctx: &Context,
) -> serde_json::Value {
    let (receipt_file, signature_file) = match receipt {
        ReceiptWrite::Written { path, signature } => {
            (Some(path.display().to_string()), signature.as_ref().map(|s| s.display().to_string()))
        }
        _ => (None, None),
    };
    json!({
        "plan_file": args.plan.display().to_string(),
        "plan_id": v.plan.plan_id,
        "sha256": v.sha256,
        "principal": v.principal,
        "fingerprint": v.fingerprint,
        "expired": v.expired,
        "checked_at": timestamp::format(&ctx.now),
        "all_in_effect": report.all_in_effect(),
        "changes": report.changes(),
        "not_in_effect": report.not_in_effect(),
        "unrequested": report.unrequested(),
        "groups": report.groups,
        "receipt_file": receipt_file,
        "receipt_signature_file": signature_file,
    })
}

fn table(width: u16) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
    table
}

fn user_label(upn: Option<&str>, name: Option<&str>, id: &ObjectId) -> String {
    match (upn, name) {
        (Some(upn), Some(name)) => format!("{upn} ({name})"),
        (Some(upn), None) => upn.to_string(),
        (None, Some(name)) => format!("{name} ({id})"),
        (None, None) => id.to_string(),
    }
}

fn group_section(out: &mut String, g: &GroupCheck, width: u16) {
    out.push_str(&format!(
        "\nGroup {}: {} user members when planned, {} now\n",
        g.label(),
        g.members_then,
        g.members_now
    ));
    if g.changes.is_empty() {
        out.push_str("  The plan has no changes for this group.\n");
    } else {
        let mut t = table(width);
        t.set_header(["Change", "User", "In effect"]);
        for c in &g.changes {
            t.add_row([
                c.action.as_str().to_string(),
                user_label(Some(&c.upn), c.display_name.as_deref(), &c.user_id),
                if c.in_effect { "yes".to_string() } else { "NO".to_string() },
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    if g.unrequested.is_empty() {
        out.push_str("  No changes since planning other than the plan's.\n");
    } else {
        out.push_str(&format!("  Changes since planning that the plan did not ask for: {}\n", g.unrequested.len()));
        let mut t = table(width);
        t.set_header(["Since planning", "User"]);
        for u in &g.unrequested {
            let what = match u.action {
                Action::Add => "joined",
                Action::Remove => "left",
            };
            t.add_row([what.to_string(), user_label(u.upn.as_deref(), u.display_name.as_deref(), &u.user_id)]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
}

fn render(
    args: &CheckArgs,
    v: &VerifiedPlan,
    report: &CheckReport,
    receipt: &ReceiptWrite,
    ctx: &Context,
    width: u16,
) -> String {
    let mut out = String::new();
    out.push_str(&format!("Plan:      {} (id {})\n", args.plan.display(), v.plan.plan_id));
    out.push_str(&format!("Signed by: {} (key {}), signature good\n", v.principal, v.fingerprint));
    out.push_str(&format!("Checked:   {} against Microsoft Graph\n", timestamp::format(&ctx.now)));
    for g in &report.groups {
        group_section(&mut out, g, width);
    }
    out.push('\n');
    if report.all_in_effect() {
        out.push_str(&format!("Result:    all {} changes are in effect\n", report.changes()));
    } else {
        out.push_str(&format!(
            "Result:    {} of {} changes are NOT in effect\n",
            report.not_in_effect(),
            report.changes()
        ));
    }
    if report.unrequested() > 0 {
        out.push_str(&format!("           {} changes since planning were not in the plan\n", report.unrequested()));
    }
    match receipt {
        ReceiptWrite::Written { path, signature: Some(sig) } => {
            out.push_str(&format!("Receipt:   {} (manual-verified), signed in {}\n", path.display(), sig.display()))
        }
        ReceiptWrite::Written { path, signature: None } => out.push_str(&format!(
            "Receipt:   {} (manual-verified), NOT signed (give --key to sign it)\n",
            path.display()
        )),
        ReceiptWrite::Exists(path) => {
            out.push_str(&format!("Receipt:   not written, {} exists already\n", path.display()))
        }
        ReceiptWrite::NotInEffect => out.push_str("Receipt:   not written, the plan is not in effect\n"),
    }
    out
}
