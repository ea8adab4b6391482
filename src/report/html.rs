//! The printable report: one self-contained HTML page (inline CSS, no scripts, no external assets) with a plan's
//! summary, its changes and entries not acted on, its approvals, the outcome from an apply receipt, and the
//! results of every check made while writing it.
//!
//! Every value from a plan, a receipt or a file name goes through [`escape`].

use chrono::{DateTime, Utc};

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

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    // Controls and bidirectional overrides first become visible escapes (a U+202E in a UPN would reorder the
    // page's text just as it would a terminal's), then the markup characters are escaped.
    let text = crate::terminal::escape(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
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
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!("<title>writeback report: plan {}</title>\n", escape(&plan.plan_id.to_string())));
    h.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    h.push_str(&format!("<h1>writeback report: plan <span class=\"mono\">{}</span></h1>\n", plan.plan_id));

    // Verification first: it says how far the rest can be trusted.
    h.push_str(
        "<h2 id=\"verification\">Verification</h2>\n<table>\n<tr><th>Check</th><th>Result</th><th>Details</th></tr>\n",
    );
    for check in input.checks {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>\n",
            escape(&check.name),
            check.status.class(),
            check.status.label(),
            escape(&check.detail)
        ));
    }
    h.push_str("</table>\n");

    summary(&mut h, input);
    approvals(&mut h, input);
    if let Some(receipt) = &input.receipt {
        outcome(&mut h, receipt);
    } else {
        h.push_str("<h2 id=\"outcome\">Outcome</h2>\n<p>No receipt was given: this report does not say whether the plan was applied.</p>\n");
    }
    for group in &plan.groups {
        group_section(&mut h, group);
    }
    h.push_str(&format!(
        "<footer>Made by {} at {} from {}.</footer>\n</body>\n</html>\n",
        escape(&crate::tool_version()),
        escape(&timestamp::format(&input.generated_at)),
        escape(&input.plan_file)
    ));
    h
}

fn dl(h: &mut String, rows: &[(&str, String)]) {
    h.push_str("<dl>\n");
    for (k, v) in rows {
        h.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", escape(k), escape(v)));
    }
    h.push_str("</dl>\n");
}

fn summary(h: &mut String, input: &ReportInput<'_>) {
    let plan = input.plan;
    let (adds, removes) = plan.totals();
    h.push_str("<h2 id=\"summary\">Plan</h2>\n");
    let signed = match input.signature {
        SignatureStatus::Valid { principal, fingerprint } => {
            format!("{principal} (key {fingerprint}), signature valid")
        }
        SignatureStatus::Invalid { message } => format!("{} (claimed), signature NOT VALID: {message}", plan.signer),
        SignatureStatus::Unchecked => format!("{} (claimed), signature not checked", plan.signer),
    };
    dl(
        h,
        &[
            ("File", input.plan_file.clone()),
            ("SHA-256", input.sha256.to_string()),
            ("Format", format!("{} {}", plan.format, plan.format_version)),
            ("Signed by", signed),
            ("Entra actor", crate::report::review::entra_actor_line(plan)),
            ("Created", format!("{} by {}", timestamp::format(&plan.created_at), plan.tool_version)),
            ("Expires", timestamp::format(&plan.expires_at)),
            ("Tenant", plan.tenant_id.clone().unwrap_or_else(|| "(not recorded: planned from files)".into())),
            ("Changes", format!("{adds} adds, {removes} removes in {} group(s)", plan.groups.len())),
        ],
    );
    h.push_str("<table>\n<tr><th>Group</th><th>Members when planned</th><th>Adds</th><th>Removes</th><th>Not acted on</th></tr>\n");
    for g in &plan.groups {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&g.label()),
            g.precondition.member_count,
            g.counts.add,
            g.counts.remove,
            g.counts.not_acted_on_total()
        ));
    }
    h.push_str("</table>\n");
}

fn approvals(h: &mut String, input: &ReportInput<'_>) {
    h.push_str("<h2 id=\"approvals\">Approvals</h2>\n");
    if input.approval_files.is_empty() {
        h.push_str("<p>No approval files were found beside the plan.</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th>Approver</th><th>Key</th><th>Counts</th><th>File</th></tr>\n");
    match input.approvals {
        Some(report) => {
            for a in &report.valid {
                h.push_str(&format!(
                    "<tr><td>{}</td><td class=\"mono\">{}</td><td class=\"pass\">valid</td><td class=\"mono\">{}</td></tr>\n",
                    escape(&a.principal),
                    escape(&a.fingerprint),
                    escape(&file_name(&a.file))
                ));
            }
            for r in &report.rejected {
                h.push_str(&format!(
                    "<tr><td>{}</td><td class=\"mono\">{}</td><td><span class=\"fail\">not counted</span>: {}</td><td class=\"mono\">{}</td></tr>\n",
                    escape(r.principal.as_deref().unwrap_or("unknown signer")),
                    escape(r.fingerprint.as_deref().unwrap_or("unknown key")),
                    escape(&r.reason),
                    escape(&file_name(&r.file))
                ));
            }
        }
        None => {
            for f in &input.approval_files {
                h.push_str(&format!(
                    "<tr><td></td><td></td><td class=\"unchecked\">not checked</td><td class=\"mono\">{}</td></tr>\n",
                    escape(f)
                ));
            }
        }
    }
    h.push_str("</table>\n");
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

fn outcome(h: &mut String, view: &ReceiptView<'_>) {
    let receipt = view.receipt;
    h.push_str(&format!("<h2 id=\"outcome\">Outcome (receipt {})</h2>\n", escape(&view.file)));
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
    dl(h, &rows);
    let c = &receipt.counts;
    h.push_str("<table>\n<tr><th>Applied</th><th>Already a member</th><th>Already absent</th><th>Failed</th></tr>\n");
    h.push_str(&format!(
        "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num{}\">{}</td></tr>\n</table>\n",
        c.applied,
        c.already_member,
        c.already_absent,
        if c.failed > 0 { " fail" } else { "" },
        c.failed
    ));
    for group in &receipt.groups {
        let label = match &group.display_name {
            Some(name) => format!("{name} ({})", group.group_id),
            None => group.group_id.to_string(),
        };
        h.push_str(&format!("<h3>{} ({} changes)</h3>\n", escape(&label), group.changes.len()));
        h.push_str("<table>\n<tr><th>Action</th><th>User</th><th>Outcome</th><th>Graph error (code, message, request-id)</th></tr>\n");
        for change in &group.changes {
            let class = match change.outcome {
                Outcome::Failed => " class=\"fail\"",
                Outcome::Applied => " class=\"pass\"",
                _ => "",
            };
            let error = change
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
                .unwrap_or_default();
            h.push_str(&format!(
                "<tr><td>{}</td><td>{} <span class=\"mono\">{}</span></td><td{class}>{}</td><td>{}</td></tr>\n",
                change.action.as_str(),
                escape(&change.upn),
                escape(change.user_id.as_str()),
                change.outcome.as_str(),
                escape(&error)
            ));
        }
        h.push_str("</table>\n");
    }
}

fn group_section(h: &mut String, group: &GroupPlan) {
    h.push_str(&format!("<h2>Group {}</h2>\n", escape(&group.label())));
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
    dl(h, &rows);
    for (action, title) in [(Action::Add, "Adds"), (Action::Remove, "Removes")] {
        let changes: Vec<_> = group.changes_of(action).collect();
        h.push_str(&format!("<h3>{title}: {}</h3>\n", changes.len()));
        if changes.is_empty() {
            continue;
        }
        h.push_str("<table>\n<tr><th>User (UPN)</th><th>Name</th><th>Object id</th><th>Line</th><th>Why</th><th>Flags</th></tr>\n");
        for c in changes {
            let flags: Vec<&str> = c.flags.iter().map(|f| f.as_str()).collect();
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&c.upn),
                escape(c.display_name.as_deref().unwrap_or("")),
                escape(c.user_id.as_str()),
                c.source_line.map(|l| l.to_string()).unwrap_or_default(),
                escape(&c.reason),
                escape(&flags.join(", "))
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str(&format!("<h3>Not acted on: {}</h3>\n", group.not_acted_on.len()));
    if group.not_acted_on.is_empty() {
        return;
    }
    h.push_str("<table>\n<tr><th>Why</th><th>Entry</th><th>Line</th><th>Detail</th></tr>\n");
    for s in &group.not_acted_on {
        let what = s
            .email
            .clone()
            .or_else(|| s.upn.clone())
            .or_else(|| s.display_name.clone())
            .or_else(|| s.object_id.as_ref().map(|id| id.to_string()))
            .unwrap_or_default();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
            escape(s.kind.label()),
            escape(&what),
            s.source_line.map(|l| l.to_string()).unwrap_or_default(),
            escape(&s.detail)
        ));
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests_support::sample_plan;
    use chrono::TimeZone;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        // Controls and bidirectional overrides are shown as what they are, never obeyed by the browser.
        assert_eq!(escape("a\u{0}b\u{1b}[2K"), "a\\x00b\\x1b[2K");
        assert_eq!(escape("evil\u{202e}gnp.exe"), "evil\\u{202e}gnp.exe");
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
