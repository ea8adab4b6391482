//! The printable report: one self-contained HTML page (inline CSS, no scripts, no external assets) with a plan's
//! summary, its changes and entries not acted on, its approvals, the outcome from an apply receipt, and the
//! results of every check made while writing it.
//!
//! The page is a compile-time template ([`maud::html!`]), which escapes every value it splices in for HTML, so no
//! markup can come from a plan, a receipt or a file name. Those values pass through [`crate::terminal::escape`]
//! first ([`outside`]), so control and bidirectional characters show as visible escapes, as on the terminal.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::apply::receipt::{Receipt, ReceiptMode};
use crate::apply::Outcome;
use crate::approvals::ApprovalReport;
use crate::plan::{timestamp, Action, GroupPlan, Plan};
use crate::report::review::SignatureStatus;

/// The outcome of one check, as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// Worth attention, not a failure (an expired plan, an unsigned receipt).
    Warn,
    /// Not checked (no allowed_signers file was given).
    NotChecked,
}

impl CheckStatus {
    fn label(self) -> &'static str {
        match self {
            CheckStatus::Pass => "PASS",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Warn => "NOTE",
            CheckStatus::NotChecked => "NOT CHECKED",
        }
    }
    fn class(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Fail => "fail",
            CheckStatus::Warn => "warn",
            CheckStatus::NotChecked => "unchecked",
        }
    }
}

/// One line of the verification results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The result.
    pub status: CheckStatus,
    /// Details.
    pub detail: String,
}

/// An apply (or manual-verified) receipt.
#[derive(Debug, Clone)]
pub struct ReceiptView<'a> {
    /// The receipt file's name, for the page.
    pub file: String,
    /// The receipt.
    pub receipt: &'a Receipt,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct ReportInput<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// The plan file's name.
    pub plan_file: String,
    /// SHA-256 of the plan's bytes.
    pub sha256: &'a str,
    /// The signature check.
    pub signature: &'a SignatureStatus,
    /// The approval files' names and, when checked, the judged approvals.
    pub approval_files: Vec<String>,
    /// The approvals, when they could be checked.
    pub approvals: Option<&'a ApprovalReport>,
    /// The receipt, when one was given.
    pub receipt: Option<ReceiptView<'a>>,
    /// The checks made.
    pub checks: &'a [Check],
    /// When the report was made.
    pub generated_at: DateTime<Utc>,
}

/// A string from outside (a plan, a receipt, a file, an error message), with control and bidirectional characters
/// made visible. The template escapes it for HTML.
fn outside(text: &str) -> Cow<'_, str> {
    crate::terminal::escape(text)
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:60em;\
color:#1b1b1b;line-height:1.4;padding:0 1em}h1{font-size:1.6em;border-bottom:2px solid #333}h2{font-size:1.25em;\
margin-top:1.8em;border-bottom:1px solid #999}h3{font-size:1.05em}table{border-collapse:collapse;width:100%;\
margin:.5em 0 1em;font-size:.9em}th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top;\
overflow-wrap:anywhere}th{background:#eee;white-space:nowrap}td.pass,td.fail,td.warn,td.unchecked{white-space:nowrap}td.num{text-align:right}code,.mono{font-family:ui-monospace,Menlo,Consolas,\
monospace;font-size:.9em;overflow-wrap:anywhere}.pass{color:#0a6b0a;font-weight:bold}.fail{color:#b00020;\
font-weight:bold}.warn{color:#8a5a00;font-weight:bold}.unchecked{color:#555;font-weight:bold}dl{display:grid;\
grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}footer{margin-top:3em;\
font-size:.8em;color:#555}@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}tr{page-break-inside:avoid}}";

/// The whole page.
pub fn render(input: &ReportInput<'_>) -> String {
    let plan = input.plan;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "writeback report: plan " (plan.plan_id.to_string()) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "writeback report: plan " span.mono { (plan.plan_id.to_string()) } }
                // Verification first: it says how far the rest can be trusted.
                h2 #verification { "Verification" }
                table {
                    tr { th { "Check" } th { "Result" } th { "Details" } }
                    @for check in input.checks {
                        tr {
                            td { (outside(&check.name)) }
                            td class=(check.status.class()) { (check.status.label()) }
                            td { (outside(&check.detail)) }
                        }
                    }
                }
                (summary(input))
                (approvals(input))
                @if let Some(receipt) = &input.receipt {
                    (outcome(receipt))
                } @else {
                    h2 #outcome { "Outcome" }
                    p { "No receipt was given: this report does not say whether the plan was applied." }
                }
                @for group in &plan.groups {
                    (group_section(group))
                }
                footer {
                    "Made by " (crate::tool_version()) " at " (timestamp::format(&input.generated_at)) " from "
                    (outside(&input.plan_file)) "."
                }
            }
        }
    };
    page.into_string()
}

/// A definition list of label and value pairs; the values come from outside.
fn dl(rows: &[(&str, String)]) -> Markup {
    html! {
        dl {
            @for (k, v) in rows {
                dt { (k) }
                dd { (outside(v)) }
            }
        }
    }
}

/// The plan: who signed it, when, for which tenant, and a row per group.
fn summary(input: &ReportInput<'_>) -> Markup {
    let plan = input.plan;
    let (adds, removes) = plan.totals();
    let signed = match input.signature {
        SignatureStatus::Valid { principal, fingerprint } => {
            format!("{principal} (key {fingerprint}), signature valid")
        }
        SignatureStatus::Invalid { message } => format!("{} (claimed), signature NOT VALID: {message}", plan.signer),
        SignatureStatus::Unchecked => format!("{} (claimed), signature not checked", plan.signer),
    };
    let rows = [
        ("File", input.plan_file.clone()),
        ("SHA-256", input.sha256.to_string()),
        ("Format", format!("{} {}", plan.format, plan.format_version)),
        ("Signed by", signed),
        ("Entra actor", crate::report::review::entra_actor_line(plan)),
        ("Created", format!("{} by {}", timestamp::format(&plan.created_at), plan.tool_version)),
        ("Expires", timestamp::format(&plan.expires_at)),
        ("Tenant", plan.tenant_id.clone().unwrap_or_else(|| "(not recorded: planned from files)".into())),
        ("Changes", format!("{adds} adds, {removes} removes in {} group(s)", plan.groups.len())),
    ];
    html! {
        h2 #summary { "Plan" }
        (dl(&rows))
        table {
            tr { th { "Group" } th { "Members when planned" } th { "Adds" } th { "Removes" } th { "Not acted on" } }
            @for g in &plan.groups {
                tr {
                    td { (outside(&g.label())) }
                    td.num { (g.precondition.member_count) }
                    td.num { (g.counts.add) }
                    td.num { (g.counts.remove) }
                    td.num { (g.counts.not_acted_on_total()) }
                }
            }
        }
    }
}

/// The approval files beside the plan: which count, which do not and why (or unchecked).
fn approvals(input: &ReportInput<'_>) -> Markup {
    html! {
        h2 #approvals { "Approvals" }
        @if input.approval_files.is_empty() {
            p { "No approval files were found beside the plan." }
        } @else {
            table {
                tr { th { "Approver" } th { "Key" } th { "Counts" } th { "File" } }
                @match input.approvals {
                    Some(report) => {
                        @for a in &report.valid {
                            tr {
                                td { (outside(&a.principal)) }
                                td.mono { (outside(&a.fingerprint)) }
                                td.pass { "valid" }
                                td.mono { (outside(&file_name(&a.file))) }
                            }
                        }
                        @for r in &report.rejected {
                            tr {
                                td { (outside(r.principal.as_deref().unwrap_or("unknown signer"))) }
                                td.mono { (outside(r.fingerprint.as_deref().unwrap_or("unknown key"))) }
                                td { span.fail { "not counted" } ": " (outside(&r.reason)) }
                                td.mono { (outside(&file_name(&r.file))) }
                            }
                        }
                    }
                    None => {
                        @for f in &input.approval_files {
                            tr { td {} td {} td.unchecked { "not checked" } td.mono { (outside(f)) } }
                        }
                    }
                }
            }
        }
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// The receipt: how and by whom the plan was applied, the counts, and each change's outcome.
fn outcome(view: &ReceiptView<'_>) -> Markup {
    let receipt = view.receipt;
    let how = match receipt.mode {
        ReceiptMode::Apply => format!("applied by writeback apply in {} run(s)", receipt.runs),
        ReceiptMode::ManualVerified => "applied by hand; every change verified in effect by writeback check".into(),
    };
    let mut rows = vec![
        ("Status", format!("{} ({how})", receipt.status.as_str())),
        ("Applied by", receipt.applier.label()),
        ("Started", timestamp::format(&receipt.started_at)),
        ("Finished", timestamp::format(&receipt.finished_at)),
        ("Tenant", receipt.tenant_id.clone().unwrap_or_else(|| "(not recorded)".into())),
    ];
    if !receipt.journal.is_empty() {
        rows.push((
            "Journal",
            format!("{} (head {}, seq {})", receipt.journal.path, receipt.journal.head, receipt.journal.seq),
        ));
    }
    let c = &receipt.counts;
    html! {
        h2 #outcome { "Outcome (receipt " (outside(&view.file)) ")" }
        (dl(&rows))
        table {
            tr { th { "Applied" } th { "Already a member" } th { "Already absent" } th { "Failed" } }
            tr {
                td.num { (c.applied) }
                td.num { (c.already_member) }
                td.num { (c.already_absent) }
                td.num.fail[c.failed > 0] { (c.failed) }
            }
        }
        @for group in &receipt.groups {
            @let label = match &group.display_name {
                Some(name) => format!("{name} ({})", group.group_id),
                None => group.group_id.to_string(),
            };
            h3 { (outside(&label)) " (" (group.changes.len()) " changes)" }
            table {
                tr { th { "Action" } th { "User" } th { "Outcome" } th { "Graph error (code, message, request-id)" } }
                @for change in &group.changes {
                    tr {
                        td { (change.action.as_str()) }
                        td { (outside(&change.upn)) " " span.mono { (outside(change.user_id.as_str())) } }
                        td class=[outcome_class(change.outcome)] { (change.outcome.as_str()) }
                        td { (outside(&graph_error(change))) }
                    }
                }
            }
        }
    }
}

/// The class of an outcome's cell: failures red, writes green, the rest plain.
fn outcome_class(outcome: Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Failed => Some("fail"),
        Outcome::Applied => Some("pass"),
        _ => None,
    }
}

/// Graph's code, message and request-id for a change, or its detail.
fn graph_error(change: &crate::apply::receipt::ChangeReceipt) -> String {
    change
        .error
        .as_ref()
        .map(|e| {
            [e.code.as_deref(), e.message.as_deref(), e.request_id.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .or_else(|| change.detail.clone())
        .unwrap_or_default()
}

/// One group of the plan: its inputs, its adds and removes, and the entries not acted on.
fn group_section(group: &GroupPlan) -> Markup {
    let mut rows = vec![
        ("Members when planned", group.precondition.member_count.to_string()),
        ("Membership hash", group.precondition.members_sha256.clone()),
    ];
    if group.options.add_only {
        rows.push(("Direction", "adds only (--add-only)".into()));
    }
    if group.options.remove_only {
        rows.push(("Direction", "removes only (--remove-only)".into()));
    }
    for input in &group.inputs {
        rows.push((input.role.as_str(), format!("{} (sha256 {})", input.description, input.sha256)));
    }
    html! {
        h2 { "Group " (outside(&group.label())) }
        (dl(&rows))
        @for (action, title) in [(Action::Add, "Adds"), (Action::Remove, "Removes")] {
            @let changes: Vec<_> = group.changes_of(action).collect();
            h3 { (title) ": " (changes.len()) }
            @if !changes.is_empty() {
                table {
                    tr { th { "User (UPN)" } th { "Name" } th { "Object id" } th { "Line" } th { "Why" } th { "Flags" } }
                    @for c in changes {
                        @let flags: Vec<&str> = c.flags.iter().map(|f| f.as_str()).collect();
                        tr {
                            td { (outside(&c.upn)) }
                            td { (outside(c.display_name.as_deref().unwrap_or(""))) }
                            td.mono { (outside(c.user_id.as_str())) }
                            td.num { (c.source_line.map(|l| l.to_string()).unwrap_or_default()) }
                            td { (outside(&c.reason)) }
                            td { (flags.join(", ")) }
                        }
                    }
                }
            }
        }
        h3 { "Not acted on: " (group.not_acted_on.len()) }
        @if !group.not_acted_on.is_empty() {
            table {
                tr { th { "Why" } th { "Entry" } th { "Line" } th { "Detail" } }
                @for s in &group.not_acted_on {
                    tr {
                        td { (s.kind.label()) }
                        td { (outside(&skipped_entry(s))) }
                        td.num { (s.source_line.map(|l| l.to_string()).unwrap_or_default()) }
                        td { (outside(&s.detail)) }
                    }
                }
            }
        }
    }
}

/// What an entry not acted on is: its address, UPN, name or object id, the first known.
fn skipped_entry(s: &crate::plan::Skipped) -> String {
    s.email
        .clone()
        .or_else(|| s.upn.clone())
        .or_else(|| s.display_name.clone())
        .or_else(|| s.object_id.as_ref().map(|id| id.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_plan;
    use chrono::TimeZone;

    #[test]
    fn outside_text_is_escaped_for_html_and_its_controls_are_made_visible() {
        let mut plan = sample_plan();
        plan.groups[0].changes[0].upn = "<b>\"x\" & y</b>\u{1b}[2K\u{202e}evil".into();
        let html = render(&ReportInput {
            plan: &plan,
            plan_file: "plan.json".into(),
            sha256: "ab",
            signature: &SignatureStatus::Unchecked,
            approval_files: Vec::new(),
            approvals: None,
            receipt: None,
            checks: &[],
            generated_at: Utc.with_ymd_and_hms(2025, 3, 2, 9, 0, 0).unwrap(),
        });
        assert!(html.contains("&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;\\x1b[2K\\u{202e}evil"), "{html}");
        assert!(!html.contains('\u{1b}') && !html.contains('\u{202e}'));
    }

    #[test]
    fn hostile_values_never_reach_the_page_as_markup() {
        let mut plan = sample_plan();
        let hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>";
        plan.groups[0].display_name = Some(hostile.into());
        plan.groups[0].changes[0].display_name = Some(hostile.into());
        plan.groups[0].changes[0].upn = format!("\"'{hostile}");
        let counts = serde_json::json!({"applied": 0, "already_member": 0, "already_absent": 0, "failed": 1});
        let receipt: Receipt = serde_json::from_value(serde_json::json!({
            "format": "writeback-receipt", "format_version": "1.0",
            "plan_id": "00000000-0000-0000-0000-000000001234", "plan_sha256": "ab", "plan_file": hostile,
            "tenant_id": hostile,
            "applier": {"os_user": hostile, "key_principal": hostile, "key_fingerprint": null, "tool_version": hostile},
            "started_at": "2025-03-02T09:00:00Z", "finished_at": "2025-03-02T09:00:00Z", "runs": 1,
            "status": "partial", "counts": counts,
            "groups": [{"group_id": "00000000-0000-0000-0000-000000000100", "display_name": hostile, "counts": counts,
                "changes": [{"action": "add", "user_id": "00000000-0000-0000-0000-000000000001", "upn": hostile,
                    "outcome": "failed",
                    "error": {"status": 400, "code": hostile, "message": hostile, "request_id": hostile}}]}],
            "journal": {"path": hostile, "head": "sha256:00", "seq": 3}
        }))
        .unwrap();
        let checks = vec![Check { name: hostile.into(), status: CheckStatus::Fail, detail: hostile.into() }];
        let html = render(&ReportInput {
            plan: &plan,
            plan_file: hostile.into(),
            sha256: "ab",
            signature: &SignatureStatus::Invalid { message: hostile.into() },
            approval_files: vec![hostile.into()],
            approvals: None,
            receipt: Some(ReceiptView { file: hostile.into(), receipt: &receipt }),
            checks: &checks,
            generated_at: Utc.with_ymd_and_hms(2025, 3, 2, 9, 0, 0).unwrap(),
        });
        assert!(!html.contains("<img") && !html.contains("<script"), "markup leaked");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<link"));
    }
}
