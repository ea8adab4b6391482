//! What `check` prints: a table per group of the plan's changes and whether each is in effect, the changes since
//! planning that the plan did not ask for, and what became of the receipt (or the same as JSON).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::audit::check::{Checked, ReceiptWrite};
use crate::audit::effect::GroupCheck;
use crate::identity::ObjectId;
use crate::plan::{timestamp, Action};
use crate::report::review::group_heading;
use crate::terminal::{table, Column};

/// `check --json`: the plan, each group's changes and what became of the receipt.
pub fn as_json(plan_file: &Path, checked: &Checked, now: DateTime<Utc>) -> serde_json::Value {
    let (v, report, receipt) = (&checked.verified, &checked.report, &checked.receipt);
    let (receipt_file, signature_file) = match receipt {
        ReceiptWrite::Written { path, signature } => {
            (Some(path.display().to_string()), signature.as_ref().map(|s| s.display().to_string()))
        }
        _ => (None, None),
    };
    json!({
        "plan_file": plan_file.display().to_string(),
        "plan_id": v.plan.plan_id,
        "sha256": v.sha256,
        "principal": v.principal,
        "fingerprint": v.fingerprint,
        "expired": v.expired,
        "checked_at": timestamp::format(&now),
        "all_in_effect": report.all_in_effect(),
        "changes": report.changes(),
        "not_in_effect": report.not_in_effect(),
        "unrequested": report.unrequested(),
        "groups": report.groups,
        "receipt_file": receipt_file,
        "receipt_signature_file": signature_file,
    })
}

/// A user as the tables show one: UPN and name, with the short id in its own column ([`ObjectId::short`]).
fn user_label(upn: Option<&str>, name: Option<&str>, id: &ObjectId) -> String {
    let (upn, name) = (upn.map(crate::terminal::escape), name.map(crate::terminal::escape));
    match (upn, name) {
        (Some(upn), Some(name)) => format!("{upn} ({name})"),
        (Some(upn), None) => upn.to_string(),
        (None, Some(name)) => format!("{name} ({id})"),
        (None, None) => id.to_string(),
    }
}

fn group_section(out: &mut String, g: &GroupCheck, width: Option<u16>) {
    out.push_str(&format!(
        "\nGroup {}: {} user members when planned, {} now\n",
        group_heading(g.display_name.as_deref(), g.live_name.as_deref(), &g.group_id),
        g.members_then,
        g.members_now
    ));
    if g.changes.is_empty() {
        out.push_str("  The plan has no changes for this group.\n");
    } else {
        let columns = [Column::keep("Change"), Column::keep("User"), Column::keep("Id"), Column::keep("In effect")];
        let rows: Vec<Vec<String>> = g
            .changes
            .iter()
            .map(|c| {
                vec![
                    c.action.as_str().to_string(),
                    user_label(Some(&c.upn), c.display_name.as_deref(), &c.user_id),
                    c.user_id.short(),
                    if c.in_effect { "yes".to_string() } else { "NO".to_string() },
                ]
            })
            .collect();
        let t = table(&columns, &rows, width);
        out.push_str(&t.to_string());
        out.push('\n');
    }
    if g.unrequested.is_empty() {
        out.push_str("  No changes since planning other than the plan's.\n");
    } else {
        out.push_str(&format!("  Changes since planning that the plan did not ask for: {}\n", g.unrequested.len()));
        let columns = [Column::keep("Since planning"), Column::keep("User"), Column::keep("Id")];
        let rows: Vec<Vec<String>> = g
            .unrequested
            .iter()
            .map(|u| {
                let what = match u.action {
                    Action::Add => "joined",
                    Action::Remove => "left",
                };
                vec![
                    what.to_string(),
                    user_label(u.upn.as_deref(), u.display_name.as_deref(), &u.user_id),
                    u.user_id.short(),
                ]
            })
            .collect();
        let t = table(&columns, &rows, width);
        out.push_str(&t.to_string());
        out.push('\n');
    }
}

/// `check`'s text: the plan and its signer, a table per group, the result and what became of the receipt.
pub fn render(plan_file: &Path, checked: &Checked, now: DateTime<Utc>, width: Option<u16>) -> String {
    let (v, report, receipt) = (&checked.verified, &checked.report, &checked.receipt);
    let mut out = String::new();
    out.push_str(&format!("Plan:      {} (id {})\n", plan_file.display(), v.plan.plan_id));
    out.push_str(&format!("Signed by: {} (key {}), signature good\n", v.principal, v.fingerprint));
    out.push_str(&format!("Checked:   {} against Microsoft Graph\n", timestamp::format(&now)));
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
